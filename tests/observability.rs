//! Seeing it live: `/metrics` and `/status` scraped during a run move exactly as data is fed, and
//! the status page renders charts and results in headless Chromium (a screenshot is kept in
//! `target/ci-artifacts/status-page.png`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A plain HTTP/1.0 GET; returns (status code, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn status(addr: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(addr, "/status")?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// Polls `/status` until `check` holds (or fails the test after 30 s).
fn wait_for(
    addr: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(s) = status(addr) {
            if check(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: last status {s}"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: no status"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of one sample line of the Prometheus text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

struct Job(Child);
impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_and_status_follow_the_data_as_it_is_fed() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = real_inputs(tmp.path());
    let lines: Vec<String> = std::fs::read_to_string(&inputs.binance[0])
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let rows_in = |ls: &[String]| -> u64 {
        ls.iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .map_or(1, |v| v.as_array().map_or(1, |a| a.len() as u64))
            })
            .sum()
    };
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut child = Command::new(bin())
        .args([
            "run",
            "--input",
            "binance=-",
            "--metrics-addr",
            &addr,
            "--output",
        ])
        .arg(tmp.path().join("out"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let job = Job(child);

    let (first, second) = (&lines[..100], &lines[100..250]);
    stdin
        .write_all((first.join("\n") + "\n").as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    let s = wait_for(&addr, "first batch counted", |s| {
        s["topics"]["binance"]["messages"] == 100
    });
    assert_eq!(
        s["topics"]["binance"]["records"].as_u64(),
        Some(rows_in(first))
    );
    let (code, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &metrics,
            "speed_layer_messages_in_total{topic=\"binance\",partition=\"-\"}"
        ),
        Some(100.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "speed_layer_records_in_total{topic=\"binance\",partition=\"-\"}"
        ),
        Some(rows_in(first) as f64)
    );
    // Results follow once the watermark reaches the sinks (klines span hours, so windows
    // finalise during the run): wait for them rather than race them.
    let results = |s: &serde_json::Value| s["outputs"]["binance"]["results"].as_u64().unwrap_or(0);
    let out_before = results(&wait_for(&addr, "first results", |s| results(s) > 0));
    let wm_before = s["watermark_ms"].as_u64().unwrap();

    stdin
        .write_all((second.join("\n") + "\n").as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    let s = wait_for(&addr, "second batch counted", |s| {
        s["topics"]["binance"]["messages"] == 250
    });
    assert_eq!(
        s["topics"]["binance"]["records"].as_u64(),
        Some(rows_in(first) + rows_in(second))
    );
    assert!(
        s["watermark_ms"].as_u64().unwrap() > wm_before,
        "the watermark moved"
    );
    assert!(s["watermark_lag_seconds"].as_f64().unwrap() > 0.0);
    wait_for(&addr, "more results", |s| results(s) > out_before);
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    assert!(
        sample(
            &metrics,
            "speed_layer_records_out_total{stream=\"binance\"}"
        )
        .unwrap()
            > out_before as f64
    );
    assert!(sample(&metrics, "speed_layer_emit_latency_seconds_count").unwrap() > 0.0);
    assert!(sample(&metrics, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(metrics.contains("speed_layer_open_windows{stream=\"binance\"}"));
    assert!(metrics.contains("speed_layer_watermark_lag_seconds{topic=\"binance\"}"));
    // One worker owns every key group.
    assert_eq!(
        sample(&metrics, "speed_layer_key_groups{worker=\"0\"}"),
        Some(720.0)
    );
    assert_eq!(s["key_groups"]["groups"].as_u64(), Some(720));
    assert_eq!(s["key_groups"]["per_worker"]["0"].as_u64(), Some(720));
    let latest = s["latest"]["binance"].as_array().unwrap();
    assert_eq!(latest.len(), 1, "one symbol in this file");
    assert_eq!(latest[0]["symbol"], "BTCUSDT");
    assert!(s["emit_latency"]["p99_seconds"].as_f64().is_some());

    let (code, page) = http_get(&addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains("<canvas id=\"chart-throughput\"")
            && !page.contains("http://")
            && !page.contains("https://"),
        "self-contained page"
    );
    assert_eq!(http_get(&addr, "/nope").unwrap().0, 404);
    drop(stdin);
    drop(job);
}

fn chromium() -> PathBuf {
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if !path.exists() {
        // A fresh machine: install Debian's package (tests run as root here, as in CI).
        let ok = Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && path.exists(),
            "headless Chromium is needed: apt-get install chromium (or set CHROMIUM)"
        );
    }
    path
}

fn browser_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "npm ci in tests/browser failed (node and npm are needed)"
        );
    }
    dir
}

/// A simulator job serving its metrics at a free address, `speed` times faster than the clock.
fn sim_job(speed: &str) -> (Job, String) {
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let child = Command::new(bin())
        .args([
            "run",
            "--sim-speed",
            speed,
            "--sim-start",
            "1790000000000",
            "--metrics-addr",
            &addr,
            "--output",
        ])
        .arg(tempfile::tempdir().unwrap().keep())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Job(child), addr)
}

/// Runs `tests/browser/<script>` on the page at `url` in headless Chromium, keeps its screenshot
/// as `target/ci-artifacts/<shot>`, and returns the facts it printed.
fn browser_check(script: &str, url: &str, shot: &str) -> serde_json::Value {
    let chromium = chromium();
    let dir = browser_dir();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join(shot);
    let out = Command::new("node")
        .arg(dir.join(script))
        .arg(url)
        .arg(&shot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node is needed for the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser check failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot written"
    );
    println!("screenshot: {}", shot.display());
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn status_page_shows_live_charts_and_results_in_headless_chromium() {
    let (_job, addr) = sim_job("30");
    wait_for(&addr, "first results", |s| {
        s["latest"]["binance"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    // Outcome tokens carry their market's title and outcome once metadata is known.
    let s = wait_for(&addr, "token results with titles", |s| {
        s["latest"]["polymarket_tokens"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["label"].is_string()))
    });
    let labels: Vec<&str> = s["latest"]["polymarket_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["label"].as_str())
        .collect();
    assert!(
        labels
            .iter()
            .all(|l| l.contains(" Up or Down ") && (l.ends_with(" · Up") || l.ends_with(" · Down"))),
        "{labels:?}"
    );
    let facts = browser_check(
        "status_page.mjs",
        &format!("http://{addr}/"),
        "status-page.png",
    );
    assert!(
        facts["samples"].as_u64().unwrap() >= 4 && facts["binanceRows"].as_u64().unwrap() == 4,
        "{facts}"
    );
    let names = facts["tokenNames"].as_array().unwrap();
    assert!(
        names.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.contains(" Up or Down ") && n.contains(" · "))),
        "the status page names tokens by market and outcome: {facts}"
    );
}

#[test]
fn market_view_shows_spot_fair_value_edge_and_alerts_in_headless_chromium() {
    // 60 minutes of event time a minute: volatility needs ten minutes of returns.
    let (_job, addr) = sim_job("60");
    let s = wait_for(&addr, "the market view page listed", |s| {
        s["pages"].as_array().is_some_and(|p| !p.is_empty())
    });
    assert_eq!(s["pages"][0]["path"], "/market", "{}", s["pages"]);
    let (code, _) = http_get(&addr, "/history").unwrap();
    assert_eq!(code, 400, "/history without a stream is a clear error");
    let facts = browser_check(
        "market_page.mjs",
        &format!("http://{addr}/market"),
        "market-view.png",
    );
    let underlyings: Vec<&str> = facts["underlyings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert_eq!(
        underlyings,
        ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"],
        "{facts}"
    );
    assert!(
        facts["markets"].as_array().unwrap().iter().all(|m| m
            .as_str()
            .is_some_and(|m| m.contains(" Up or Down ") && m.ends_with(" · Up"))),
        "each underlying shows its current up/down market: {facts}"
    );
}
