//! Shared helpers for the whole-dataflow tests: fixtures, running the binary (also as a
//! cluster), the Python reference implementation, and result comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod kafka;
pub mod postgres;

pub const STREAMS: [&str; 7] = [
    "binance",
    "polymarket_books",
    "polymarket_trades",
    "polymarket_tokens",
    "correlations",
    "updown",
    "alerts",
];

/// The `speed-layer` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_speed-layer"))
}

/// The recorded market data (`shared/data` beside the checkout).
pub fn shared_data() -> PathBuf {
    std::env::var_os("SPEED_LAYER_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

fn support(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script)
}

/// Runs a command to completion, failing the test on a non-zero exit.
pub fn check(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a Python helper from `tests/support`.
pub fn python(script: &str, args: &[&str]) -> Output {
    check(Command::new("python3").arg(support(script)).args(args))
}

/// Test inputs: files per topic, one file per partition.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub binance: Vec<PathBuf>,
    pub polymarket: Vec<PathBuf>,
    pub metadata: Vec<PathBuf>,
}

impl Inputs {
    /// `--input` arguments for `speed-layer run`.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for p in &self.binance {
            a.push("--input".into());
            a.push(format!("binance={}", p.display()));
        }
        for p in &self.polymarket {
            a.push("--input".into());
            a.push(format!("polymarket_trade={}", p.display()));
        }
        for p in &self.metadata {
            a.push("--input".into());
            a.push(format!("polymarket_metadata={}", p.display()));
        }
        a
    }
}

/// The real recorded data as topic files: BTC klines, ETH klines, Polymarket frames.
pub fn real_inputs(dir: &Path) -> Inputs {
    let data = shared_data();
    let klines = data.join("binance-klines");
    let mut csvs: Vec<PathBuf> = std::fs::read_dir(&klines)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", klines.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    csvs.sort();
    let mut inputs = Inputs::default();
    for sym in ["BTCUSDT", "ETHUSDT"] {
        let out = dir.join(format!("binance-{sym}.jsonl"));
        let mut args = vec!["klines".to_string(), out.display().to_string()];
        args.extend(
            csvs.iter()
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(sym))
                .map(|p| p.display().to_string()),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python("fixtures.py", &args);
        inputs.binance.push(out);
    }
    let recording = data.join("polymarket-ws/market_channel_frames_20260924T162939Z.jsonl");
    let out = dir.join("polymarket.jsonl");
    python(
        "fixtures.py",
        &[
            "frames",
            &out.display().to_string(),
            &recording.display().to_string(),
        ],
    );
    inputs.polymarket.push(out);
    inputs
}

/// Simulated data with bounded disorder, garbage lines and late replays mixed in.
pub fn garbled_sim_inputs(dir: &Path, duration: &str) -> Inputs {
    sim_inputs_through(dir, duration, "garble")
}

/// Simulated data with hostile records mixed in (`fixtures.py hostile`).
pub fn hostile_sim_inputs(dir: &Path, duration: &str) -> Inputs {
    sim_inputs_through(dir, duration, "hostile")
}

/// Generated files, each passed through `fixtures.py <command>`.
fn sim_inputs_through(dir: &Path, duration: &str, command: &str) -> Inputs {
    let gen = dir.join("gen");
    check(
        Command::new(bin())
            .args([
                "generate",
                "--sim-seed",
                "11",
                "--sim-start",
                "1790000000000",
                "--sim-duration",
                duration,
                "--out-dir",
            ])
            .arg(&gen),
    );
    let mut inputs = Inputs::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&gen)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("polymarket_metadata") {
            // Metadata goes in as generated (its bad inputs are the decoder's unit tests).
            inputs.metadata.push(f.clone());
            continue;
        }
        let topic = if name.starts_with("binance") {
            "binance"
        } else {
            "polymarket_trade"
        };
        let out = dir.join(format!("{command}-{name}"));
        python(
            "fixtures.py",
            &[
                command,
                &f.display().to_string(),
                &out.display().to_string(),
                "--topic",
                topic,
                "--seed",
                &i.to_string(),
            ],
        );
        if topic == "binance" {
            inputs.binance.push(out)
        } else {
            inputs.polymarket.push(out)
        }
    }
    inputs
}

/// A finished run: its output folder and what it printed.
pub struct Run {
    pub dir: PathBuf,
    pub stderr: String,
}

/// Waits for a child with a deadline; a hung run fails the test instead of hanging CI.
pub fn wait(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start speed-layer")
}

fn expect_success(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({}): {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    stderr
}

/// Runs `speed-layer run <args> --output DIR` in one process.
pub fn run(dir: &Path, args: &[String]) -> Run {
    let mut all = vec![
        "run".to_string(),
        "--output".into(),
        dir.display().to_string(),
    ];
    all.extend(args.iter().cloned());
    let out = wait(spawn(&all), Duration::from_secs(300), "speed-layer run");
    Run {
        dir: dir.to_path_buf(),
        stderr: expect_success(&out, "speed-layer run"),
    }
}

/// Free local TCP ports for a cluster's hostfile.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Runs `speed-layer run` as a cluster of `n` local processes with `w` workers each.
pub fn run_cluster(dir: &Path, n: usize, w: usize, args: &[String]) -> Run {
    let hostfile = dir.with_extension("hosts");
    let hosts: Vec<String> = free_ports(n)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    std::fs::write(&hostfile, hosts.join("\n") + "\n").unwrap();
    let children: Vec<Child> = (0..n)
        .map(|p| {
            let mut all = vec![
                "run".to_string(),
                "--output".into(),
                dir.display().to_string(),
            ];
            all.extend(args.iter().cloned());
            all.extend([
                "-n".into(),
                n.to_string(),
                "-p".into(),
                p.to_string(),
                "-w".into(),
                w.to_string(),
            ]);
            all.extend(["--hostfile".into(), hostfile.display().to_string()]);
            spawn(&all)
        })
        .collect();
    let mut stderr = String::new();
    for (p, c) in children.into_iter().enumerate() {
        let out = wait(c, Duration::from_secs(300), &format!("cluster process {p}"));
        stderr += &expect_success(&out, &format!("cluster process {p}"));
    }
    Run {
        dir: dir.to_path_buf(),
        stderr,
    }
}

/// Window results keyed by (stream, key, window_start).
pub type Results = BTreeMap<(String, String, u64), serde_json::Map<String, serde_json::Value>>;

/// The key of a result row: its key column's value; for an alert, `rule/key`.
pub fn result_id(row: &serde_json::Map<String, serde_json::Value>) -> String {
    let key = row
        .get("symbol")
        .or_else(|| row.get("asset_id"))
        .or_else(|| row.get("pair"))
        .or_else(|| row.get("market_id"))
        .or_else(|| row.get("key"))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("a result without a key: {row:?}"));
    match row.get("rule").and_then(|v| v.as_str()) {
        Some(rule) => format!("{rule}/{key}"),
        None => key.to_string(),
    }
}

/// Reads every `<stream>*.jsonl` file of a run folder; a window seen twice fails the test.
pub fn read_results(dir: &Path) -> Results {
    let mut all = Results::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(stream) = STREAMS
            .iter()
            .find(|s| name.starts_with(*s) && name.ends_with(".jsonl"))
        else {
            continue;
        };
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad line in {name}: {e}: {line}"));
            let key = result_id(&row);
            let start = row["window_start"].as_u64().unwrap();
            let prev = all.insert((stream.to_string(), key.clone(), start), row);
            assert!(
                prev.is_none(),
                "window {stream}/{key}/{start} written twice"
            );
        }
    }
    all
}

/// Dead-letter records of a run folder.
pub fn read_dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("dead_letter")
        {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                all.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    all
}

/// Compares two result sets: same windows and keys, counts and chosen values (min, max,
/// current) equal, sums, averages and standard deviations within 1e-9 relative.
pub fn assert_same_results(got: &Results, want: &Results, what: &str) {
    let gk: Vec<_> = got.keys().collect();
    let wk: Vec<_> = want.keys().collect();
    if gk != wk {
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !got.contains_key(*k))
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .keys()
            .filter(|k| !want.contains_key(*k))
            .take(5)
            .collect();
        panic!(
            "{what}: {} windows vs {} expected; missing {missing:?}; extra {extra:?}",
            got.len(),
            want.len()
        );
    }
    for (k, w) in want {
        let g = &got[k];
        let gf: Vec<_> = g.keys().collect();
        let wf: Vec<_> = w.keys().collect();
        assert_eq!(gf, wf, "{what}: columns of {k:?}");
        for (field, wv) in w {
            let gv = &g[field];
            if field == "message" {
                continue; // free text
            }
            let approx = field.starts_with("avg_")
                || field.starts_with("total_")
                || field.ends_with("_shares")
                || [
                    "volatility",
                    "shares_traded",
                    "vwap",
                    "correlation",
                    "sigma",
                    "fair_prob",
                    "edge",
                ]
                .contains(&field.as_str())
                || (field == "value" && w.get("rule").is_some_and(|r| r != "book_mismatch"));
            let ok = match (gv.as_f64(), wv.as_f64()) {
                (Some(a), Some(b)) if approx => {
                    a == b
                        || ((a - b) / b.abs().max(a.abs())).abs() <= 1e-9
                        || (a - b).abs() < 1e-12
                }
                (Some(a), Some(b)) => a == b,
                _ => gv == wv,
            };
            assert!(ok, "{what}: {k:?} {field}: got {gv}, expected {wv}");
        }
    }
}

/// Runs the Python reference implementation on `inputs`.
pub fn reference(dir: &Path, inputs: &Inputs) -> (Results, serde_json::Value) {
    let mut args = vec!["--out".to_string(), dir.display().to_string()];
    for p in &inputs.binance {
        args.extend(["--binance".into(), p.display().to_string()]);
    }
    for p in &inputs.polymarket {
        args.extend(["--polymarket".into(), p.display().to_string()]);
    }
    for p in &inputs.metadata {
        args.extend(["--metadata".into(), p.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python("reference.py", &args);
    let summary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    (read_results(dir), summary)
}
