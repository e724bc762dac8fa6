//! Hostile input end to end: odd Unicode and terminal escapes in keys, empty keys, event times in
//! µs or past 64 bits, NaN and overflowing numbers, invalid UTF-8 and deep nesting, mixed into
//! simulated data and run on 2 workers with the console and file outputs. Nothing may crash,
//! freeze a watermark, reach the terminal as a control character or be written as NaN; every
//! good window equals the independent reference and every bad record is dead-lettered.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn count(v: &serde_json::Value, topic: &str, what: &str) -> u64 {
    v[topic][what].as_u64().unwrap()
}

/// Control characters other than the newline (tables and logs are plain lines).
fn controls(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .map(|c| format!("U+{:04X}", c as u32))
        .collect()
}

#[test]
fn hostile_records_are_dead_lettered_and_good_windows_match_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = hostile_sim_inputs(tmp.path(), "12m");
    let (want, summary) = reference(&tmp.path().join("reference"), &inputs);
    assert_eq!(
        count(&summary, "binance", "late") + count(&summary, "polymarket_trade", "late"),
        0,
        "records in µs or past 64 bits must not push a watermark ahead"
    );
    let bad =
        count(&summary, "binance", "malformed") + count(&summary, "polymarket_trade", "malformed");
    assert!(bad > 50, "the fixture mixes in hostile records ({bad})");

    let out = tmp.path().join("out");
    let mut args = vec![
        "run".to_string(),
        "--console".into(),
        "-w".into(),
        "2".into(),
        "--output".into(),
        out.display().to_string(),
    ];
    args.extend(inputs.args());
    // The console tables go to a file: a pipe nobody reads while waiting would fill up.
    let console = tmp.path().join("console.txt");
    let child = Command::new(bin())
        .args(&args)
        .stdout(Stdio::from(std::fs::File::create(&console).unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait(child, Duration::from_secs(300), "hostile run");
    let stdout = std::fs::read(&console).unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "exit {}: {stderr}", run.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(controls(&stdout), Vec::<String>::new(), "console output");
    assert_eq!(
        controls(&run.stderr),
        Vec::<String>::new(),
        "log and summary"
    );
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        stdout.contains("\\u{1b}[2J\\u{1b}]0;p…"),
        "the key with terminal escapes is shown, escaped"
    );
    assert!(
        stdout.contains("aÄÄÄ"),
        "a non-ASCII key longer than a cell is shown, cut"
    );

    for stream in STREAMS {
        let text = std::fs::read_to_string(out.join(format!("{stream}.jsonl"))).unwrap();
        for word in ["NaN", "Infinity", "inf"] {
            assert!(!text.contains(word), "{stream}.jsonl holds {word}");
        }
    }
    let got = read_results(&out);
    assert_same_results(&got, &want, "hostile input, -w 2");
    let huge = got
        .iter()
        .find(|(k, _)| k.1 == "HUGE")
        .expect("a window of sums that overflow");
    assert!(
        huge.1["total_usdt_volume"].is_null(),
        "an overflowing sum is null"
    );
    assert_eq!(read_dead_letters(&out).len() as u64, bad);
    for reason in [
        "event time in the future",
        "empty symbol",
        "empty market",
        "value out of range",
        "invalid UTF-8",
    ] {
        assert!(
            read_dead_letters(&out)
                .iter()
                .any(|d| d["reason"] == reason),
            "no dead letter for {reason}"
        );
    }
}
