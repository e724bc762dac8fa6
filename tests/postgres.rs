//! The PostgreSQL sink against a real PostgreSQL server (`common::postgres`): rows equal to the
//! JSON-lines output with corrections replacing their finals, and a database outage in the
//! middle of a run that loses nothing. (Crash tests: `recovery.rs`.)

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::{db_results, ordered_like, Postgres};
use common::*;

/// The last revision of each window of a run folder: what the database holds.
fn settled(dir: &std::path::Path) -> Results {
    let mut last = Results::new();
    for stream in STREAMS {
        let text = std::fs::read_to_string(dir.join(format!("{stream}.jsonl"))).unwrap();
        for line in text.lines() {
            let row: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).unwrap();
            let k = (
                stream.to_string(),
                result_id(&row),
                row["window_start"].as_u64().unwrap(),
            );
            if last
                .get(&k)
                .is_none_or(|r| r["revision"].as_u64() < row["revision"].as_u64())
            {
                last.insert(k, row);
            }
        }
    }
    last
}

#[test]
fn rows_equal_the_json_lines_output_and_corrections_replace_their_finals() {
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "40m");
    let mut args = inputs.args();
    args.extend(["--allowed-lateness", "30m", "--sink-postgres", &pg.url()].map(String::from));
    let r = run(&tmp.path().join("run"), &args);
    let want = settled(&r.dir);
    assert!(
        want.values().any(|r| r["kind"] == "correction"),
        "the data has corrections to test"
    );
    let got = ordered_like(db_results(&pg.url(), &STREAMS), &want);
    assert_same_results(&got, &want, "PostgreSQL");
    assert_eq!(
        Postgres::count(&pg.url(), "dead_letter") as usize,
        read_dead_letters(&r.dir).len(),
        "every dead letter in its table"
    );
    // A second run of the same job changes nothing: upserts by row key, newer revisions only.
    let again = run(&tmp.path().join("again"), &args);
    assert!(again.stderr.contains("finished"));
    assert_same_results(
        &ordered_like(db_results(&pg.url(), &STREAMS), &want),
        &want,
        "PostgreSQL after a rerun",
    );
}

#[test]
fn a_database_outage_loses_nothing() {
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // About 40 s of simulated feed; the database goes away for 20 s in the middle.
    let child = Command::new(bin())
        .args([
            "run",
            "--sim-speed",
            "90",
            "--sim-duration",
            "60m",
            "--sim-start",
            "1790000000000",
            "--sink-postgres",
            &pg.url(),
            "--log-interval",
            "0s",
            "--output",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    pg.crash();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    pg.resume();
    let done = wait(child, Duration::from_secs(300), "the job");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL is not taking results"),
        "the outage is in the log: {stderr}"
    );
    assert!(down.elapsed() >= Duration::from_secs(20));
    let want = read_results(&out);
    assert!(want.len() > 500, "too few results to test");
    let got = ordered_like(db_results(&pg.url(), &STREAMS), &want);
    assert_same_results(&got, &want, "after the outage");
}
