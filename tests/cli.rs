//! The command line: bad arguments and unreadable inputs give one clear error line and a
//! non-zero exit; stdin and the embedded simulator work.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn fails(args: &[&str], expect: &str) {
    let out = Command::new(bin()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        err.contains(expect),
        "{args:?}: expected '{expect}' in: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {err}"
    );
}

#[test]
fn bad_arguments_and_inputs_are_clear_errors() {
    fails(
        &["run", "--input", "binance=/no/such/file.jsonl"],
        "error: cannot read input file '/no/such/file.jsonl'",
    );
    fails(&["run", "--input", "trades=x"], "unknown topic 'trades'");
    fails(&["run", "--input", "binance"], "expected TOPIC=PATH");
    fails(&["run", "--window", "soon"], "invalid duration 'soon'");
    fails(&["run", "--window", "0s"], "--window must be at least 1ms");
    fails(
        &["run", "--streams", "binance,trades"],
        "--streams: there is no output stream 'trades'; the streams are binance, correlations,",
    );
    fails(
        &["run", "-n", "2", "-p", "2"],
        "--process 2 is out of range",
    );
    fails(
        &["run", "-n", "2", "--hostfile", "/no/hosts"],
        "cannot read hostfile /no/hosts",
    );
    fails(
        &["run", "--input", "binance=/dev/null", "--sink-kafka"],
        "--sink-kafka, --dead-letter-topic and --alerts-topic need --brokers",
    );
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ck").display().to_string();
    let files = [
        "run",
        "--input",
        "binance=/dev/null",
        "--brokers",
        "127.0.0.1:1",
    ];
    fails(
        &[&files[..], &["--exactly-once"]].concat(),
        "--exactly-once applies to the Kafka sink: give --sink-kafka",
    );
    fails(
        &[&files[..], &["--sink-kafka", "--exactly-once"]].concat(),
        "--exactly-once commits Kafka transactions at checkpoints: give --checkpoint DIR",
    );
    fails(
        &[
            &files[..],
            &[
                "--sink-kafka",
                "--kafka-delivery",
                "exactly-once",
                "--checkpoint",
                &ckpt,
            ],
            &["--emit-kafka", "all"],
        ]
        .concat(),
        "early updates cannot be",
    );
    fails(
        &["run", "-w", "4", "--key-groups", "3"],
        "4 workers but only 3 key groups",
    );
    fails(&["run", "--key-groups", "0"], "--key-groups");
    fails(
        &[
            "run",
            "--alerts-topic",
            "alerts",
            "--input",
            "binance=/dev/null",
        ],
        "need --brokers",
    );
    fails(
        &["run", "--alerts", "/no/rules.toml"],
        "cannot read /no/rules.toml",
    );
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, "edge:\n  treshold: 0.3\n").unwrap();
    fails(
        &["run", "--alerts", rules.to_str().unwrap()],
        "unknown field `treshold`",
    );
    fails(
        &["produce", "--brokers", "127.0.0.1:9"],
        "either --input TOPIC=PATH",
    );
    fails(
        &["topics", "list"],
        "--brokers (or KAFKA_BROKERS) is required",
    );
    fails(
        &["run", "--until-end", "--input", "binance=/dev/null"],
        "--until-end applies to Kafka",
    );
    fails(&["run", "-X", "nonsense"], "expected key=value");
    fails(&["generate", "--out-dir", "/tmp/x"], "needs --sim-duration");
    let dir = tempfile::tempdir().unwrap();
    fails(
        &[
            "run",
            "--input",
            &format!("binance={}", dir.path().display()),
        ],
        "is a directory",
    );
}

#[test]
fn reads_standard_input() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = [
        r#"[{"snapshot_time":60000,"symbol":"A","close":1.0,"quote_asset_volume":2.0,"taker_buy_quote":1.0}]"#,
        r#"{"snapshot_time":61000,"symbol":"A","close":3.0,"quote_asset_volume":0.0,"taker_buy_quote":0.0}"#,
        "garbage",
    ];
    let mut child = Command::new(bin())
        .args(["run", "--input", "binance=-", "--output"])
        .arg(tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all((rows.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = wait(child, std::time::Duration::from_secs(60), "stdin run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = read_results(tmp.path());
    let w = &results[&("binance".to_string(), "A".to_string(), 60_000)];
    assert_eq!(
        (
            w["ticks"].as_u64(),
            w["avg_price"].as_f64(),
            w["current_sentiment"].is_null()
        ),
        (Some(2), Some(2.0), true)
    );
    let dead = read_dead_letters(tmp.path());
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0]["file"].as_str(),
            dead[0]["line"].as_u64(),
            dead[0]["reason"].as_str()
        ),
        (Some("-"), Some(3), Some("invalid JSON"))
    );
}

/// Twelve minutes of simulated feed, as fast as possible.
fn twelve_minutes() -> Vec<String> {
    [
        "--sim-speed",
        "0",
        "--sim-duration",
        "12m",
        "--sim-start",
        "1790000000000",
        "--sim-seed",
        "3",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn simulator_results_do_not_depend_on_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = twelve_minutes();
    let one = run(&tmp.path().join("w1"), &sim);
    let mut args = sim.to_vec();
    args.extend(["-w".into(), "2".into()]);
    let two = run(&tmp.path().join("w2"), &args);
    let (a, b) = (read_results(&one.dir), read_results(&two.dir));
    // 12 minutes of event time, minus the windows still open: every stream has results.
    for s in STREAMS {
        assert!(
            a.keys().filter(|k| k.0 == s).count() >= 10,
            "{s}: {:?}",
            a.keys().collect::<Vec<_>>()
        );
    }
    assert_same_results(&b, &a, "simulator -w 2 vs -w 1");
    // Zero-volume candles and empty book sides occur and give nulls, never malformed records.
    assert!(read_dead_letters(&one.dir)
        .iter()
        .all(|d| d["reason"] == "late"));
}

#[test]
fn chosen_streams_give_the_same_results_and_build_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = twelve_minutes();
    let all = read_results(&run(&tmp.path().join("all"), &sim).dir);
    let mut args = sim.to_vec();
    args.extend(["--streams".into(), "binance,updown".into()]);
    let chosen = run(&tmp.path().join("chosen"), &args);
    let some = read_results(&chosen.dir);
    let streams: std::collections::BTreeSet<&str> = some.keys().map(|k| k.0.as_str()).collect();
    assert_eq!(
        streams,
        ["binance", "updown"].into(),
        "the chosen streams, and nothing else"
    );
    let wanted = all
        .into_iter()
        .filter(|(k, _)| streams.contains(k.0.as_str()))
        .collect();
    assert_same_results(&some, &wanted, "--streams binance,updown vs every stream");
    assert!(
        !chosen.stderr.contains("output polymarket_books"),
        "no window operator for an unchosen stream: {}",
        chosen.stderr
    );
}

#[test]
fn console_tables_by_default() {
    let out = Command::new(bin())
        .args([
            "run",
            "--sim-speed",
            "0",
            "--sim-duration",
            "4m",
            "--sim-start",
            "1790000000000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("binance · window 2026-09-21T14:13:00.000Z → 2026-09-21T14:14:00.000Z"),
        "{stdout}"
    );
    assert!(stdout.contains("| symbol  | current_price |"), "{stdout}");
    assert!(stdout.contains("polymarket_trades · window"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("input binance:") && stderr.contains("output binance:"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_cleanly_with_whole_output_lines_and_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(bin())
        .args(["run", "--sim-speed", "60", "--output"])
        .arg(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let written = || {
        std::fs::read_to_string(tmp.path().join("binance.jsonl")).map_or(0, |t| t.lines().count())
    };
    while written() == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no results"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait(
        child,
        std::time::Duration::from_secs(20),
        "stopping on SIGTERM",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("speed-layer stopped") && err.contains("output binance:"),
        "{err}"
    );
    for s in STREAMS {
        let text =
            std::fs::read_to_string(tmp.path().join(format!("{s}.jsonl"))).unwrap_or_default();
        assert!(text.is_empty() || text.ends_with('\n'), "{s}: a cut line");
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("{s}: {e}: {l}"));
        }
    }
}

/// The engine (`src/`) knows no market: markets are defined in `dataflows/` only.
#[test]
fn the_engine_names_no_market() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap().to_lowercase();
            for name in ["binance", "polymarket", "btcusdt", "market_id", "kline"] {
                if text.contains(name) {
                    found.push(format!("{} names {name}", path.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}
