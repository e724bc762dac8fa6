//! Seeing the job live: `/metrics` (Prometheus text format), `/status` (JSON) and `/` (a status
//! page with live charts), served by the binary itself from the process's [`RunStats`].

use std::time::Instant;

use anyhow::Context;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::TextEncoder;
use serde_json::{json, Map, Value};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::checkpoint::Checkpoints;
use crate::stats::{RunStats, LATENCY_BUCKETS};
use crate::time::{now_ms, EventTime};

/// The status page: one self-contained HTML file, no asset fetched from anywhere.
const STATUS_PAGE: &str = include_str!("status.html");

/// Resolves `--metrics-addr`: a bare port or `:PORT` binds to 127.0.0.1.
pub(crate) fn bind_address(addr: &str) -> String {
    let a = addr.trim();
    if a.parse::<u16>().is_ok() {
        format!("127.0.0.1:{a}")
    } else if let Some(port) = a.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else {
        a.to_string()
    }
}

/// A page a dataflow adds to the status server (a market view): one self-contained HTML file
/// reading `/status` and `/history`.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    /// Its path (`/market`).
    pub path: &'static str,
    /// Its title, linked from the status page.
    pub title: &'static str,
    /// Its HTML.
    pub html: &'static str,
}

/// The value of query parameter `name` in `url`.
fn query<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let (_, q) = url.split_once('?')?;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `/history?stream=NAME&since=MS`: the stream's recent results whose window ends after `since`.
fn history(stats: &RunStats, url: &str) -> (String, u16) {
    let Some(stream) = query(url, "stream") else {
        return ("missing ?stream=NAME\n".into(), 400);
    };
    let since = match query(url, "since").map(str::parse::<EventTime>) {
        None => 0,
        Some(Ok(t)) => t,
        Some(Err(_)) => return ("since must be epoch milliseconds\n".into(), 400),
    };
    let rows: Vec<Value> = stats.recent(stream, since).iter().map(row_json).collect();
    (json!({ "stream": stream, "rows": rows }).to_string(), 200)
}

/// A result as the pages read it: its JSON with its `label`.
fn row_json(line: &crate::result::ResultLine) -> Value {
    let mut row = line.to_json_value();
    if let (Some(label), Value::Object(o)) = (&line.label, &mut row) {
        o.insert("label".into(), label.as_str().into());
    }
    row
}

/// Starts the HTTP server on a background thread. Fails at once if the address cannot be bound.
pub(crate) fn serve(
    addr: &str,
    stats: RunStats,
    process: usize,
    ckpt: Option<Arc<Checkpoints>>,
    pages: Vec<Page>,
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
            let url = request.url().to_string();
            let path = url.split('?').next().unwrap_or("/").to_string();
            let page = pages.iter().find(|p| p.path == path);
            let (body, content_type, code) = match path.as_str() {
                _ if page.is_some() => (
                    page.map_or_else(String::new, |p| p.html.to_string()),
                    "text/html; charset=utf-8",
                    200,
                ),
                "/history" => {
                    let (body, code) = history(&stats, &url);
                    (body, "application/json", code)
                }
                "/metrics" => (
                    prometheus(&stats) + &checkpoint_metrics(ckpt.as_deref()),
                    "text/plain; version=0.0.4; charset=utf-8",
                    200,
                ),
                "/status" => (
                    with_checkpoint(status(&stats, process, started, &pages), ckpt.as_deref())
                        .to_string(),
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

/// The families of one scrape, built from the stats and encoded by the `prometheus` crate's
/// text encoder (types, label escaping and the histogram layout are its business).
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    /// Starts a family; families left without samples are not written.
    fn family(&mut self, name: &str, kind: MetricType, help: &str) -> &mut Self {
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(kind);
        self.0.push(f);
        self
    }

    /// Adds a sample with `labels` to the family started last.
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        // `family` always runs first: there is a last family.
        let f = self.0.last_mut().unwrap();
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        if f.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        f.mut_metric().push(m);
        self
    }

    /// The text exposition (format 0.0.4).
    fn encode(mut self) -> String {
        self.0.retain(|f| !f.get_metric().is_empty());
        // Every family has a name and samples (checked above): encoding cannot fail.
        TextEncoder::new().encode_to_string(&self.0).unwrap()
    }
}

/// The Prometheus text exposition of the stats.
pub(crate) fn prometheus(stats: &RunStats) -> String {
    use MetricType::{COUNTER, GAUGE};
    let mut f = Families::default();
    let parts = stats.partitions();
    let topics = stats.topics();
    f.family(
        "speed_layer_messages_in_total",
        COUNTER,
        "Messages read, per topic and partition.",
    );
    for ((t, p), st) in &parts {
        f.sample(&[("topic", t), ("partition", p)], st.messages as f64);
    }
    f.family(
        "speed_layer_records_in_total",
        COUNTER,
        "Records read (rows and events), per topic and partition.",
    );
    for ((t, p), st) in &parts {
        f.sample(&[("topic", t), ("partition", p)], st.records as f64);
    }
    f.family(
        "speed_layer_records_windowed_total",
        COUNTER,
        "Records counted in a window, per topic.",
    );
    for (t, c) in &topics {
        f.sample(&[("topic", t)], c.records as f64);
    }
    f.family(
        "speed_layer_late_records_total",
        COUNTER,
        "Late records (dead-lettered), per topic.",
    );
    for (t, c) in &topics {
        f.sample(&[("topic", t)], c.late as f64);
    }
    f.family(
        "speed_layer_malformed_records_total",
        COUNTER,
        "Malformed records (dead-lettered), per topic and reason.",
    );
    for (t, c) in &topics {
        for (r, n) in &c.malformed {
            f.sample(&[("topic", t), ("reason", r)], *n as f64);
        }
    }
    f.family(
        "speed_layer_ignored_events_total",
        COUNTER,
        "Events the metrics do not use, per topic and event type.",
    );
    for (t, c) in &topics {
        for (k, n) in &c.ignored {
            f.sample(&[("topic", t), ("type", k)], *n as f64);
        }
    }
    f.family(
        "speed_layer_records_out_total",
        COUNTER,
        "Final window results written, per output stream.",
    );
    for (s, n) in stats.results() {
        f.sample(&[("stream", &s)], n as f64);
    }
    f.family(
        "speed_layer_consumer_lag_messages",
        GAUGE,
        "Messages behind the end of each Kafka partition.",
    );
    for ((t, p), st) in &parts {
        if let Some(lag) = st.lag {
            f.sample(&[("topic", t), ("partition", p)], lag as f64);
        }
    }
    f.family(
        "speed_layer_partition_watermark_ms",
        GAUGE,
        "Each partition's watermark (largest event time minus lateness), epoch ms.",
    );
    for ((t, p), st) in &parts {
        if let Some(wm) = st.watermark {
            f.sample(&[("topic", t), ("partition", p)], wm as f64);
        }
    }
    f.family(
        "speed_layer_partition_idle",
        GAUGE,
        "1 when a partition is idle and does not hold the watermark back.",
    );
    for ((t, p), st) in &parts {
        f.sample(
            &[("topic", t), ("partition", p)],
            f64::from(u8::from(st.idle)),
        );
    }
    let now = now_ms();
    let watermarks: Vec<(String, EventTime)> = stats
        .watermarks()
        .into_iter()
        .filter_map(|(t, wm)| wm.map(|wm| (t, wm)))
        .collect();
    f.family(
        "speed_layer_watermark_ms",
        GAUGE,
        "The job's watermark (the timely frontier) per input topic, epoch ms.",
    );
    for (t, wm) in &watermarks {
        f.sample(&[("topic", t)], *wm as f64);
    }
    f.family(
        "speed_layer_watermark_lag_seconds",
        GAUGE,
        "How far the watermark trails the wall clock, per input topic.",
    );
    for (t, wm) in &watermarks {
        f.sample(&[("topic", t)], now.saturating_sub(*wm) as f64 / 1e3);
    }
    let open = stats.open();
    f.family(
        "speed_layer_open_windows",
        GAUGE,
        "Windows open (not yet final), per output stream.",
    );
    for (s, (w, _)) in &open {
        f.sample(&[("stream", s)], *w as f64);
    }
    f.family(
        "speed_layer_open_keys",
        GAUGE,
        "Keys held in open windows, per output stream.",
    );
    for (s, (_, k)) in &open {
        f.sample(&[("stream", s)], *k as f64);
    }
    let sinks = stats.sinks();
    if !sinks.is_empty() {
        f.family(
            "speed_layer_sink_up",
            GAUGE,
            "1 while a background sink's destination (PostgreSQL) takes writes.",
        );
        for (name, s) in &sinks {
            f.sample(&[("sink", name)], if s.up { 1.0 } else { 0.0 });
        }
        f.family(
            "speed_layer_sink_backlog_bytes",
            GAUGE,
            "Results waiting for a background sink's destination, spooled on disk (bytes).",
        );
        for (name, s) in &sinks {
            f.sample(&[("sink", name)], s.backlog_bytes as f64);
        }
        f.family(
            "speed_layer_sink_failures_total",
            COUNTER,
            "Failed attempts to write to a background sink's destination.",
        );
        for (name, s) in &sinks {
            f.sample(&[("sink", name)], s.failures as f64);
        }
    }
    let txns = stats.transactions();
    if !txns.is_empty() {
        f.family(
            "speed_layer_sink_transactions_total",
            COUNTER,
            "Transactions committed by an exactly-once sink (Kafka) in this run.",
        );
        for (name, t) in &txns {
            f.sample(&[("sink", name)], t.commits as f64);
        }
        f.family(
            "speed_layer_sink_committed_epoch_ms",
            GAUGE,
            "Every result of checkpoint epochs up to this event time is committed by the sink.",
        );
        for (name, t) in &txns {
            f.sample(&[("sink", name)], t.committed_epoch as f64);
        }
        f.family(
            "speed_layer_sink_uncommitted_bytes",
            GAUGE,
            "Spooled results an exactly-once sink holds for a complete checkpoint and its transaction.",
        );
        for (name, t) in &txns {
            f.sample(&[("sink", name)], t.waiting as f64);
        }
    }
    if let Some(k) = stats.key_groups() {
        f.family(
            "speed_layer_key_groups",
            GAUGE,
            "Key groups owned by each worker of this process (keys are routed through them).",
        );
        for (w, n) in &k.local {
            f.sample(&[("worker", &w.to_string())], *n as f64);
        }
    }
    if let Some(m) = crate::stats::memory_bytes() {
        f.family(
            "process_resident_memory_bytes",
            GAUGE,
            "Resident memory of the process.",
        )
        .sample(&[], m as f64);
    }
    f.0.push(latency_histogram(stats));
    f.encode()
}

/// The emit-latency histogram (its buckets are counted by the stats, cumulatively).
fn latency_histogram(stats: &RunStats) -> MetricFamily {
    let h = stats.latency();
    let mut hist = Histogram::default();
    hist.set_sample_count(h.count);
    hist.set_sample_sum(h.sum);
    hist.set_bucket(
        LATENCY_BUCKETS
            .iter()
            .zip(h.buckets)
            .map(|(le, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_histogram(hist);
    let mut f = MetricFamily::default();
    f.set_name("speed_layer_emit_latency_seconds".into());
    f.set_help("From the watermark passing a window's end to its result being written.".into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(vec![m]);
    f
}

/// Checkpoint families: parts written, bytes, write time, the latest complete epoch.
pub(crate) fn checkpoint_metrics(ckpt: Option<&Checkpoints>) -> String {
    use MetricType::{COUNTER, GAUGE};
    let Some(c) = ckpt else {
        return String::new();
    };
    let s = &c.stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut f = Families::default();
    f.family(
        "speed_layer_checkpoint_parts_total",
        COUNTER,
        "Checkpoint part files written by this process.",
    )
    .sample(&[], get(&s.parts) as f64);
    f.family(
        "speed_layer_checkpoint_bytes_total",
        COUNTER,
        "Bytes of checkpoint parts written by this process.",
    )
    .sample(&[], get(&s.bytes) as f64);
    f.family(
        "speed_layer_checkpoint_write_seconds_total",
        COUNTER,
        "Time spent writing checkpoint parts (serialise, write, fsync, rename).",
    )
    .sample(&[], get(&s.write_us) as f64 / 1e6);
    f.family(
        "speed_layer_checkpoint_write_seconds_max",
        GAUGE,
        "Longest single checkpoint part write.",
    )
    .sample(&[], get(&s.max_write_us) as f64 / 1e6);
    f.family(
        "speed_layer_checkpoint_complete_epoch_ms",
        GAUGE,
        "Latest checkpoint epoch (event time, ms) complete on every worker: where a restart resumes.",
    )
    .sample(&[], get(&s.complete_epoch) as f64);
    f.encode()
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
pub fn status(stats: &RunStats, process: usize, started: Instant, pages: &[Page]) -> Value {
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
            rows.push(row_json(&line));
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
        "sinks": stats.sinks().into_iter().map(|(n, s)| (n, json!({
            "up": s.up, "backlog_bytes": s.backlog_bytes, "failures": s.failures,
        }))).collect::<Map<String, Value>>(),
        "transactions": stats.transactions().into_iter().map(|(n, t)| (n, json!({
            "id": t.id, "commits": t.commits, "committed_epoch_ms": t.committed_epoch,
            "uncommitted_bytes": t.waiting,
        }))).collect::<Map<String, Value>>(),
        "key_groups": stats.key_groups().map(|k| json!({
            "groups": k.groups, "workers": k.workers, "rescaled_from": k.rescaled_from,
            "per_worker": k.local.iter().map(|(w, n)| (w.to_string(), json!(n))).collect::<Map<String, Value>>(),
        })),
        "latest": latest,
        "key_columns": key_columns,
        "pages": pages.iter().map(|p| json!({"path": p.path, "title": p.title})).collect::<Vec<_>>(),
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
        stats.add_results("s", 1);
        let text = prometheus(&stats);
        assert!(text.contains(
            "speed_layer_malformed_records_total{topic=\"t1\",reason=\"wrong \\\"type\\\"\"} 2"
        ));
        assert!(text.contains("speed_layer_emit_latency_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("speed_layer_emit_latency_seconds_count 1"));
        assert!(text.contains("# TYPE speed_layer_records_out_total counter"));
        assert!(text.contains("speed_layer_records_out_total{stream=\"s\"} 1"));
        assert!(
            !text.contains("speed_layer_consumer_lag_messages"),
            "a family without samples is left out"
        );
    }
}
