//! Seeing the job live: `/metrics` (Prometheus text format), `/status` (JSON) and `/` (a status
//! page with live charts), served by the binary itself from the process's [`RunStats`].

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Map, Value};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::checkpoint::Checkpoints;
use crate::stats::{RunStats, LATENCY_BUCKETS};
use crate::time::now_ms;

/// The status page: one self-contained HTML file, no asset fetched from anywhere.
const STATUS_PAGE: &str = include_str!("status.html");

/// Resolves `--metrics-addr`: a bare port or `:PORT` binds to 127.0.0.1.
pub fn bind_address(addr: &str) -> String {
    let a = addr.trim();
    if a.parse::<u16>().is_ok() {
        format!("127.0.0.1:{a}")
    } else if let Some(port) = a.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else {
        a.to_string()
    }
}

/// Starts the HTTP server on a background thread. Fails at once if the address cannot be bound.
pub fn serve(
    addr: &str,
    stats: RunStats,
    process: usize,
    ckpt: Option<Arc<Checkpoints>>,
) -> anyhow::Result<String> {
    let addr = bind_address(addr);
    let server = tiny_http::Server::http(&addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .map_or(addr.clone(), |a| a.to_string());
    let started = Instant::now();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let path = request.url().split('?').next().unwrap_or("/").to_string();
            let (body, content_type, code) = match path.as_str() {
                "/metrics" => (
                    prometheus(&stats) + &checkpoint_metrics(ckpt.as_deref()),
                    "text/plain; version=0.0.4; charset=utf-8",
                    200,
                ),
                "/status" => (
                    with_checkpoint(status(&stats, process, started), ckpt.as_deref()).to_string(),
                    "application/json",
                    200,
                ),
                "/" | "/index.html" => (STATUS_PAGE.to_string(), "text/html; charset=utf-8", 200),
                "/favicon.ico" => (String::new(), "image/x-icon", 204),
                _ => ("not found\n".to_string(), "text/plain", 404),
            };
            let header =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                    .unwrap_or_else(|()| unreachable!("a static, valid header"));
            let response = tiny_http::Response::from_string(body)
                .with_status_code(code)
                .with_header(header);
            let _ = request.respond(response);
        }
    });
    Ok(bound)
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The Prometheus text exposition of the stats.
pub fn prometheus(stats: &RunStats) -> String {
    let mut o = String::new();
    let parts = stats.partitions();
    let topics = stats.topics();
    family(
        &mut o,
        "speed_layer_messages_in_total",
        "counter",
        "Messages read, per topic and partition.",
    );
    for ((t, p), st) in &parts {
        let _ = writeln!(
            o,
            "speed_layer_messages_in_total{{topic=\"{}\",partition=\"{}\"}} {}",
            label(t),
            label(p),
            st.messages
        );
    }
    family(
        &mut o,
        "speed_layer_records_in_total",
        "counter",
        "Records read (rows and events), per topic and partition.",
    );
    for ((t, p), st) in &parts {
        let _ = writeln!(
            o,
            "speed_layer_records_in_total{{topic=\"{}\",partition=\"{}\"}} {}",
            label(t),
            label(p),
            st.records
        );
    }
    family(
        &mut o,
        "speed_layer_records_windowed_total",
        "counter",
        "Records counted in a window, per topic.",
    );
    for (t, c) in &topics {
        let _ = writeln!(
            o,
            "speed_layer_records_windowed_total{{topic=\"{}\"}} {}",
            label(t),
            c.records
        );
    }
    family(
        &mut o,
        "speed_layer_late_records_total",
        "counter",
        "Late records (dead-lettered), per topic.",
    );
    for (t, c) in &topics {
        let _ = writeln!(
            o,
            "speed_layer_late_records_total{{topic=\"{}\"}} {}",
            label(t),
            c.late
        );
    }
    family(
        &mut o,
        "speed_layer_malformed_records_total",
        "counter",
        "Malformed records (dead-lettered), per topic and reason.",
    );
    for (t, c) in &topics {
        for (r, n) in &c.malformed {
            let _ = writeln!(
                o,
                "speed_layer_malformed_records_total{{topic=\"{}\",reason=\"{}\"}} {n}",
                label(t),
                label(r)
            );
        }
    }
    family(
        &mut o,
        "speed_layer_ignored_events_total",
        "counter",
        "Events the metrics do not use, per topic and event type.",
    );
    for (t, c) in &topics {
        for (k, n) in &c.ignored {
            let _ = writeln!(
                o,
                "speed_layer_ignored_events_total{{topic=\"{}\",type=\"{}\"}} {n}",
                label(t),
                label(k)
            );
        }
    }
    family(
        &mut o,
        "speed_layer_records_out_total",
        "counter",
        "Final window results written, per output stream.",
    );
    for (s, n) in stats.results() {
        let _ = writeln!(
            o,
            "speed_layer_records_out_total{{stream=\"{}\"}} {n}",
            label(&s)
        );
    }
    family(
        &mut o,
        "speed_layer_consumer_lag_messages",
        "gauge",
        "Messages behind the end of each Kafka partition.",
    );
    for ((t, p), st) in &parts {
        if let Some(lag) = st.lag {
            let _ = writeln!(
                o,
                "speed_layer_consumer_lag_messages{{topic=\"{}\",partition=\"{}\"}} {lag}",
                label(t),
                label(p)
            );
        }
    }
    family(
        &mut o,
        "speed_layer_partition_watermark_ms",
        "gauge",
        "Each partition's watermark (largest event time minus lateness), epoch ms.",
    );
    family(
        &mut o,
        "speed_layer_partition_idle",
        "gauge",
        "1 when a partition is idle and does not hold the watermark back.",
    );
    for ((t, p), st) in &parts {
        if let Some(wm) = st.watermark {
            let _ = writeln!(
                o,
                "speed_layer_partition_watermark_ms{{topic=\"{}\",partition=\"{}\"}} {wm}",
                label(t),
                label(p)
            );
        }
        let _ = writeln!(
            o,
            "speed_layer_partition_idle{{topic=\"{}\",partition=\"{}\"}} {}",
            label(t),
            label(p),
            u8::from(st.idle)
        );
    }
    let now = now_ms();
    family(
        &mut o,
        "speed_layer_watermark_ms",
        "gauge",
        "The job's watermark (the timely frontier) per input topic, epoch ms.",
    );
    family(
        &mut o,
        "speed_layer_watermark_lag_seconds",
        "gauge",
        "How far the watermark trails the wall clock, per input topic.",
    );
    for (t, wm) in stats.watermarks() {
        if let Some(wm) = wm {
            let _ = writeln!(
                o,
                "speed_layer_watermark_ms{{topic=\"{}\"}} {wm}",
                label(&t)
            );
            let _ = writeln!(
                o,
                "speed_layer_watermark_lag_seconds{{topic=\"{}\"}} {}",
                label(&t),
                now.saturating_sub(wm) as f64 / 1e3
            );
        }
    }
    family(
        &mut o,
        "speed_layer_open_windows",
        "gauge",
        "Windows open (not yet final), per output stream.",
    );
    family(
        &mut o,
        "speed_layer_open_keys",
        "gauge",
        "Keys held in open windows, per output stream.",
    );
    for (s, (w, k)) in stats.open() {
        let _ = writeln!(
            o,
            "speed_layer_open_windows{{stream=\"{}\"}} {w}",
            label(&s)
        );
        let _ = writeln!(o, "speed_layer_open_keys{{stream=\"{}\"}} {k}", label(&s));
    }
    let h = stats.latency();
    family(
        &mut o,
        "speed_layer_emit_latency_seconds",
        "histogram",
        "From the watermark passing a window's end to its result being written.",
    );
    for (b, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
        let _ = writeln!(
            o,
            "speed_layer_emit_latency_seconds_bucket{{le=\"{b}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "speed_layer_emit_latency_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(o, "speed_layer_emit_latency_seconds_sum {}", h.sum);
    let _ = writeln!(o, "speed_layer_emit_latency_seconds_count {}", h.count);
    if let Some(m) = crate::stats::memory_bytes() {
        family(
            &mut o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
        );
        let _ = writeln!(o, "process_resident_memory_bytes {m}");
    }
    o
}

/// Checkpoint families: parts written, bytes, write time, the latest complete epoch.
pub fn checkpoint_metrics(ckpt: Option<&Checkpoints>) -> String {
    let Some(c) = ckpt else {
        return String::new();
    };
    let s = &c.stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut o = String::new();
    for (name, kind, help, value) in [
        (
            "speed_layer_checkpoint_parts_total",
            "counter",
            "Checkpoint part files written by this process.",
            get(&s.parts) as f64,
        ),
        (
            "speed_layer_checkpoint_bytes_total",
            "counter",
            "Bytes of checkpoint parts written by this process.",
            get(&s.bytes) as f64,
        ),
        (
            "speed_layer_checkpoint_write_seconds_total",
            "counter",
            "Time spent writing checkpoint parts (serialise, write, fsync, rename).",
            get(&s.write_us) as f64 / 1e6,
        ),
        (
            "speed_layer_checkpoint_write_seconds_max",
            "gauge",
            "Longest single checkpoint part write.",
            get(&s.max_write_us) as f64 / 1e6,
        ),
        (
            "speed_layer_checkpoint_complete_epoch_ms",
            "gauge",
            "Latest checkpoint epoch (event time, ms) complete on every worker: where a restart resumes.",
            get(&s.complete_epoch) as f64,
        ),
    ] {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {value}");
    }
    o
}

/// Adds the checkpoint facts to a `/status` document.
fn with_checkpoint(mut doc: Value, ckpt: Option<&Checkpoints>) -> Value {
    if let (Some(c), Some(obj)) = (ckpt, doc.as_object_mut()) {
        let s = &c.stats;
        let epoch = s.complete_epoch.load(Ordering::Relaxed);
        obj.insert(
            "checkpoint".into(),
            json!({
                "resumed_from_ms": c.epoch(),
                "complete_epoch_ms": (epoch > 0).then_some(epoch),
                "parts": s.parts.load(Ordering::Relaxed),
                "bytes": s.bytes.load(Ordering::Relaxed),
                "max_write_seconds": s.max_write_us.load(Ordering::Relaxed) as f64 / 1e6,
            }),
        );
    }
    doc
}

/// The `/status` document: the same facts as `/metrics`, plus the latest final results.
pub fn status(stats: &RunStats, process: usize, started: Instant) -> Value {
    let now = now_ms();
    let watermarks = stats.watermarks();
    let global = watermarks.values().flatten().min().copied();
    let mut topics = Map::new();
    for (t, c) in stats.topics() {
        topics.insert(
            t.clone(),
            json!({
                "messages": c.messages, "records": c.records, "late": c.late,
                "malformed": c.malformed, "malformed_total": c.malformed_total(), "ignored": c.ignored,
                "watermark_ms": watermarks.get(&t).copied().flatten(),
            }),
        );
    }
    let partitions: Vec<Value> = stats
        .partitions()
        .into_iter()
        .map(|((t, p), st)| {
            json!({"topic": t, "partition": p, "messages": st.messages, "records": st.records,
                   "watermark_ms": st.watermark, "max_event_time_ms": st.max_event_time,
                   "lag": st.lag, "idle": st.idle, "done": st.done})
        })
        .collect();
    let holding: Map<String, Value> = stats
        .holding_back()
        .into_iter()
        .map(|(t, (p, wm))| (t, json!({"partition": p, "watermark_ms": wm})))
        .collect();
    let open = stats.open();
    let mut outputs = Map::new();
    for (s, n) in stats.results() {
        let (w, k) = open.get(&s).copied().unwrap_or_default();
        outputs.insert(s, json!({"results": n, "open_windows": w, "open_keys": k}));
    }
    for (s, (w, k)) in &open {
        outputs
            .entry(s.clone())
            .or_insert_with(|| json!({"results": 0, "open_windows": w, "open_keys": k}));
    }
    let mut latest: Map<String, Value> = Map::new();
    let mut key_columns: Map<String, Value> = Map::new();
    for ((stream, _), line) in stats.latest() {
        key_columns.insert(stream.clone(), line.key_column.as_ref().into());
        if let Value::Array(rows) = latest
            .entry(stream)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            rows.push(line.to_json_value());
        }
    }
    let h = stats.latency();
    json!({
        "process": process,
        "uptime_seconds": started.elapsed().as_secs_f64(),
        "now_ms": now,
        "watermark_ms": global,
        "watermark_lag_seconds": global.map(|w| now.saturating_sub(w) as f64 / 1e3),
        "topics": topics,
        "partitions": partitions,
        "holding_back": holding,
        "outputs": outputs,
        "emit_latency": {"count": h.count, "p50_seconds": h.quantile(0.5), "p99_seconds": h.quantile(0.99)},
        "memory_bytes": crate::stats::memory_bytes(),
        "latest": latest,
        "key_columns": key_columns,
    })
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    #[test]
    fn checkpoint_families_report_writes_and_the_complete_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::open(dir.path(), 10, 1, 0..1, vec!["op".into()], Map::new()).unwrap();
        assert_eq!(checkpoint_metrics(None), "");
        let entry = crate::checkpoint::Entry {
            lo: 10,
            hi: u64::MAX,
            body: vec![1, 2, 3],
        };
        c.write("op", 0, &[entry]).unwrap();
        let text = checkpoint_metrics(Some(&c));
        assert!(
            text.contains("speed_layer_checkpoint_parts_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("speed_layer_checkpoint_complete_epoch_ms 10\n"),
            "{text}"
        );
        let doc = with_checkpoint(json!({}), Some(&c));
        assert_eq!(doc["checkpoint"]["complete_epoch_ms"], 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_ports_bind_to_loopback() {
        assert_eq!(bind_address("9464"), "127.0.0.1:9464");
        assert_eq!(bind_address(":9464"), "127.0.0.1:9464");
        assert_eq!(bind_address("0.0.0.0:9464"), "0.0.0.0:9464");
    }

    #[test]
    fn exposition_lists_families_and_escapes_labels() {
        let stats = RunStats::default();
        let mut t = crate::stats::TopicCounts::default();
        t.malformed.insert("wrong \"type\"".into(), 2);
        stats.absorb("t1", &mut t);
        let line = crate::result::ResultLine::new("s", "key", "K", ("T", "K"), (0, 60_000), vec![]);
        stats.record_result(&line, Some(0.002));
        let text = prometheus(&stats);
        assert!(text.contains(
            "speed_layer_malformed_records_total{topic=\"t1\",reason=\"wrong \\\"type\\\"\"} 2"
        ));
        assert!(text.contains("speed_layer_emit_latency_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("speed_layer_emit_latency_seconds_count 1"));
        assert!(text.contains("# TYPE speed_layer_records_out_total counter"));
    }
}
