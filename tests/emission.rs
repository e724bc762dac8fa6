//! Early, final and corrected results: corrections with increasing revisions and dead letters
//! beyond the allowed lateness (controlled event times, deterministic for any worker count),
//! update cadence and exactly one final per window, and per-sink selection.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

fn row(t: u64, sym: &str, close: f64) -> String {
    format!(
        r#"[{{"snapshot_time":{t},"symbol":"{sym}","close":{close},"quote_asset_volume":100.0,"taker_buy_quote":50.0}}]"#
    )
}

/// Every result line of a stream file, in file order.
fn lines(dir: &Path, stream: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(format!("{stream}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn corrections_follow_the_final_with_increasing_revisions() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("klines.jsonl");
    // Window [0 s, 60 s) of symbol A; the watermark is the largest time seen minus 2 minutes.
    let feed = [
        row(10_000, "A", 1.0),  // on time
        row(200_000, "A", 5.0), // watermark 80 s: window [0, 60 s) is final
        row(30_000, "A", 2.0),  // 60 s ≤ 80 s < 60 s + 60 s allowed: a correction
        row(40_000, "A", 3.0),  // another correction
        row(250_000, "A", 6.0), // watermark 130 s
        row(20_000, "A", 4.0),  // 60 s + 60 s ≤ 130 s: late, dead-lettered
    ];
    std::fs::write(&input, feed.join("\n") + "\n").unwrap();
    let inputs = vec![
        "--input".to_string(),
        format!("binance={}", input.display()),
    ];
    let mut outs = Vec::new();
    for (name, extra) in [("w1", vec![]), ("w2", vec!["-w".to_string(), "2".into()])] {
        let mut args = inputs.clone();
        args.extend(["--allowed-lateness".into(), "60s".into()]);
        args.extend(extra);
        let r = run(&tmp.path().join(name), &args);
        let all = lines(&r.dir, "binance");
        let w0: Vec<&serde_json::Value> = all.iter().filter(|l| l["window_start"] == 0).collect();
        let summary: Vec<(String, u64, Option<u64>, u64)> = w0
            .iter()
            .map(|l| {
                (
                    l["kind"].as_str().unwrap().to_string(),
                    l["revision"].as_u64().unwrap(),
                    l["replaces"].as_u64(),
                    l["ticks"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("final".to_string(), 1, None, 1),
                ("correction".into(), 2, Some(1), 2),
                ("correction".into(), 3, Some(2), 3)
            ],
            "{name}: {w0:?}"
        );
        assert_eq!(
            w0[2]["max_price"], 3.0,
            "the last correction holds every on-time and correcting record"
        );
        let dead = read_dead_letters(&r.dir);
        assert_eq!(dead.len(), 1, "{name}: {dead:?}");
        assert_eq!(
            (dead[0]["reason"].as_str(), dead[0]["line"].as_u64()),
            (Some("late"), Some(6))
        );
        assert!(r.stderr.contains("2 corrections"), "{}", r.stderr);
        outs.push(all);
    }
    assert_eq!(outs[0], outs[1], "identical for 1 and 2 workers");

    // Without allowed lateness the same records are late: one final, three dead letters.
    let r = run(&tmp.path().join("strict"), &inputs);
    let w0: Vec<serde_json::Value> = lines(&r.dir, "binance")
        .into_iter()
        .filter(|l| l["window_start"] == 0)
        .collect();
    assert_eq!(w0.len(), 1);
    assert_eq!(
        (w0[0]["kind"].as_str(), w0[0]["revision"].as_u64()),
        (Some("final"), Some(1))
    );
    assert_eq!(read_dead_letters(&r.dir).len(), 3);
}

#[test]
fn updates_come_before_exactly_one_final_per_window_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--sim-speed",
        "40",
        "--sim-duration",
        "5m",
        "--sim-start",
        "1790000000000",
        "--emit",
        "all",
        "--trigger",
        "100ms",
    ]
    .map(String::from);
    let r = run(&tmp.path().join("all"), &args);
    for stream in ["binance", "polymarket_books"] {
        let all = lines(&r.dir, stream);
        let mut seen: BTreeMap<(String, u64), (u64, bool)> = BTreeMap::new(); // last revision, final seen
        let mut updates = 0;
        for l in &all {
            let key = l
                .get("symbol")
                .or_else(|| l.get("market_id"))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let k = (key, l["window_start"].as_u64().unwrap());
            let rev = l["revision"].as_u64().unwrap();
            let e = seen.entry(k.clone()).or_insert((0, false));
            assert_eq!(rev, e.0 + 1, "{stream} {k:?}: revisions increase by one");
            assert!(
                !e.1,
                "{stream} {k:?}: nothing after the final (no allowed lateness)"
            );
            match l["kind"].as_str().unwrap() {
                "update" => updates += 1,
                "final" => e.1 = true,
                other => panic!("unexpected kind {other}"),
            }
            e.0 = rev;
        }
        assert!(
            updates > seen.len(),
            "{stream}: several updates per window at a 100 ms trigger ({updates})"
        );
        let finals = seen.values().filter(|(_, f)| *f).count();
        assert!(
            finals >= 4 * (if stream == "binance" { 4 } else { 3 }),
            "{stream}: finals {finals}"
        );
    }
}

#[test]
fn each_sink_receives_the_kinds_it_selected() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--sim-speed",
        "40",
        "--sim-duration",
        "4m",
        "--sim-start",
        "1790000000000",
        "--emit-files",
        "updates",
        "--trigger",
        "100ms",
        "--console",
    ]
    .map(String::from);
    let out = std::process::Command::new(bin())
        .arg("run")
        .args(&args)
        .arg("--output")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let kinds: std::collections::BTreeSet<String> = lines(tmp.path(), "binance")
        .iter()
        .map(|l| l["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["update"],
        "files chose updates only"
    );
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        console.contains("| final "),
        "the console kept the default: finals\n{console}"
    );
    assert!(!console.contains("| update "));
}

#[test]
fn hopping_windows_equal_a_naive_recomputation() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = real_inputs(tmp.path());
    // Naive: every row counts in each of the size/slide windows that hold it.
    let (size, slide) = (300_000u64, 60_000u64);
    let mut want: BTreeMap<(String, u64), (u64, f64, f64, f64)> = BTreeMap::new();
    for f in &inputs.binance {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let rows = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
            for r in rows {
                let (t, p) = (
                    r["snapshot_time"].as_u64().unwrap(),
                    r["close"].as_f64().unwrap(),
                );
                let mut start = (t / slide) * slide;
                loop {
                    let e = want
                        .entry((r["symbol"].as_str().unwrap().to_string(), start))
                        .or_insert((0, 0.0, f64::MAX, f64::MIN));
                    *e = (e.0 + 1, e.1 + p, e.2.min(p), e.3.max(p));
                    if start < slide || start + size <= t + slide {
                        break;
                    }
                    start -= slide;
                    if start + size <= t {
                        break;
                    }
                }
            }
        }
    }
    let mut outs = Vec::new();
    for (name, w) in [("w1", "1"), ("w2", "2")] {
        let mut args = inputs.args();
        args.retain(|a| !a.contains("polymarket"));
        let n = args.len();
        args.truncate(n - (n % 2)); // keep --input pairs
        args.extend([
            "--window".into(),
            "5m".into(),
            "--slide".into(),
            "1m".into(),
            "-w".into(),
            w.into(),
        ]);
        let r = run(&tmp.path().join(name), &args);
        let got = read_results(&r.dir);
        let binance: BTreeMap<_, _> = got.iter().filter(|(k, _)| k.0 == "binance").collect();
        assert_eq!(
            binance.len(),
            want.len(),
            "{name}: one result per symbol and hopping window"
        );
        for ((_, sym, start), row) in &binance {
            let (n, sum, min, max) = want[&(sym.clone(), *start)];
            assert_eq!(row["ticks"].as_u64(), Some(n), "{sym} {start}");
            assert_eq!(
                (row["min_price"].as_f64(), row["max_price"].as_f64()),
                (Some(min), Some(max))
            );
            assert!(
                (row["avg_price"].as_f64().unwrap() - sum / n as f64).abs() <= 1e-9 * max.abs()
            );
            assert_eq!(row["window_end"].as_u64(), Some(start + size));
        }
        outs.push(got);
    }
    assert_same_results(&outs[1], &outs[0], "hopping -w 2 vs -w 1");
}

#[test]
fn session_windows_merge_and_split() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("klines.jsonl");
    let feed = [
        row(10_000, "A", 1.0),
        row(20_000, "A", 2.0), // within 30 s of 10 s: the same session
        row(10_000, "B", 1.0),
        row(100_000, "A", 3.0), // 80 s after the last: a second session of A (split)
        row(100_000, "B", 2.0), // B splits too
        row(75_000, "A", 4.0),  // joins A's second session
        row(60_000, "A", 5.0),  // joins it as well
        row(45_000, "A", 6.0),  // bridges both sessions of A: they merge into one
        row(500_000, "A", 7.0), // far later: its own session, and the watermark passes the others
    ];
    std::fs::write(&input, feed.join("\n") + "\n").unwrap();
    let mut outs = Vec::new();
    for (name, w) in [("w1", "1"), ("w2", "2")] {
        let args = [
            "--input".to_string(),
            format!("binance={}", input.display()),
            "--session-gap".into(),
            "30s".into(),
            "-w".into(),
            w.into(),
        ];
        let r = run(&tmp.path().join(name), &args);
        let got: Vec<(String, u64, u64, u64, String)> = lines(&r.dir, "binance")
            .iter()
            .map(|l| {
                (
                    l["symbol"].as_str().unwrap().to_string(),
                    l["window_start"].as_u64().unwrap(),
                    l["window_end"].as_u64().unwrap(),
                    l["ticks"].as_u64().unwrap(),
                    l["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        let f = |s: &str, a, b, n| (s.to_string(), a, b, n, "final".to_string());
        assert_eq!(
            sorted,
            [
                f("A", 10_000, 130_000, 6),
                f("A", 500_000, 530_000, 1),
                f("B", 10_000, 40_000, 1),
                f("B", 100_000, 130_000, 1)
            ],
            "{name}"
        );
        outs.push(sorted);
    }
    assert_eq!(outs[0], outs[1]);
}
