//! Whole-dataflow runs on files: the real recorded data and garbled simulated data, with 1 and
//! 2 workers and as a 2-process cluster, each checked window by window against the independent
//! Python reference implementation of formats.md.

mod common;

use common::*;

fn count(v: &serde_json::Value, topic: &str, what: &str) -> u64 {
    v[topic][what].as_u64().unwrap()
}

#[test]
fn real_data_matches_the_reference_on_any_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = real_inputs(tmp.path());
    let (want, summary) = reference(&tmp.path().join("reference"), &inputs);
    assert_eq!(
        count(&summary, "binance", "records"),
        4 * 4320,
        "every real kline is counted"
    );
    assert!(want.keys().filter(|k| k.0 == "polymarket_books").count() > 0);

    let one = run(&tmp.path().join("w1"), &inputs.args());
    assert_same_results(&read_results(&one.dir), &want, "-w 1");
    // Not one malformed or late record in the real data: the 28 books of the subscription
    // snapshot are one message, whose books never make each other late.
    let dead = read_dead_letters(&one.dir);
    assert!(dead.is_empty(), "dead letters from the real data: {dead:?}");
    assert_eq!(count(&summary, "polymarket_trade", "late"), 0);
    let books: u64 = read_results(&one.dir)
        .iter()
        .filter(|(k, _)| k.0 == "polymarket_books")
        .map(|(_, row)| row["num_updates"].as_u64().unwrap())
        .sum();
    assert_eq!(books, 28, "every book of the subscription snapshot counts");
    // The token stream applies every price_change entry too: 28 books and 51 price_change
    // events of two entries each, one book per outcome token, and not one missed delta.
    let tokens: Vec<_> = read_results(&one.dir)
        .into_iter()
        .filter(|(k, _)| k.0 == "polymarket_tokens")
        .collect();
    let sum = |f: &str| -> u64 { tokens.iter().map(|(_, r)| r[f].as_u64().unwrap()).sum() };
    let ids: std::collections::BTreeSet<&String> = tokens.iter().map(|(k, _)| &k.1).collect();
    assert_eq!(
        (ids.len(), sum("updates"), sum("book_mismatches")),
        (28, 130, 0)
    );
    assert!(one.stderr.contains("0 late, 0 malformed"), "{}", one.stderr);

    let mut args = inputs.args();
    args.extend(["-w".into(), "2".into()]);
    let two = run(&tmp.path().join("w2"), &args);
    assert_same_results(&read_results(&two.dir), &want, "-w 2");

    let cluster = run_cluster(&tmp.path().join("n2"), 2, 1, &inputs.args());
    assert_same_results(&read_results(&cluster.dir), &want, "2 processes");
    assert_eq!(read_dead_letters(&cluster.dir).len(), dead.len());
}

#[test]
fn garbled_data_matches_the_reference_and_dead_letters_every_bad_record() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "40m");
    let (want, summary) = reference(&tmp.path().join("reference"), &inputs);
    let bad: u64 = ["binance", "polymarket_trade", "polymarket_metadata"]
        .iter()
        .map(|t| count(&summary, t, "late") + count(&summary, t, "malformed"))
        .sum();
    assert!(count(&summary, "binance", "late") > 0 && count(&summary, "binance", "malformed") > 0);
    assert!(count(&summary, "polymarket_trade", "malformed") > 0);
    assert!(want.keys().any(|k| k.0 == "polymarket_trades"));
    // The cross-market streams are compared with something in them: fair values, and alerts of
    // several rules.
    let fair = want
        .iter()
        .filter(|(k, v)| k.0 == "updown" && v["fair_prob"].is_number() && v["edge"].is_number())
        .count();
    assert!(
        fair > 100,
        "{fair} updown rows with a fair value and an edge"
    );
    let rules: std::collections::BTreeSet<&str> = want
        .iter()
        .filter(|(k, _)| k.0 == "alerts")
        .filter_map(|(_, v)| v["rule"].as_str())
        .collect();
    assert!(rules.len() >= 3, "alert rules fired: {rules:?}");

    for (name, extra) in [("w1", vec![]), ("w2", vec!["-w".to_string(), "2".into()])] {
        let mut args = inputs.args();
        args.extend(extra);
        // The Parquet sink beside the files, in small files (many rolls, dates, schemas).
        let parquet = tmp.path().join(format!("{name}-parquet"));
        args.extend(
            [
                "--sink-parquet",
                &parquet.display().to_string(),
                "--parquet-roll-rows",
                "100",
            ]
            .map(String::from),
        );
        let r = run(&tmp.path().join(name), &args);
        assert_same_results(&read_results(&r.dir), &want, name);
        let back = tmp.path().join(format!("{name}-parquet-read"));
        let summary = python(
            "parquet_read.py",
            &[&parquet.display().to_string(), &back.display().to_string()],
        );
        assert_same_results(&read_results(&back), &want, &format!("{name} Parquet"));
        let summary: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
        assert_eq!(
            summary["dead_letter"]["rows"].as_u64(),
            Some(bad),
            "{name}: Parquet dead letters {summary}"
        );
        assert!(
            summary["binance"]["files"].as_u64().unwrap() > 1,
            "files roll: {summary}"
        );
        assert_eq!(
            read_dead_letters(&r.dir).len() as u64,
            bad,
            "{name}: one dead letter per bad record"
        );
    }
    // In a cluster process 0 writes the Parquet files too.
    let parquet = tmp.path().join("n2-parquet");
    let mut args = inputs.args();
    args.extend(["--sink-parquet".to_string(), parquet.display().to_string()]);
    let cluster = run_cluster(&tmp.path().join("n2"), 2, 2, &args);
    assert_same_results(
        &read_results(&cluster.dir),
        &want,
        "2 processes x 2 workers",
    );
    let back = tmp.path().join("n2-parquet-read");
    python(
        "parquet_read.py",
        &[&parquet.display().to_string(), &back.display().to_string()],
    );
    assert_same_results(&read_results(&back), &want, "2 x 2 Parquet");
    assert_eq!(read_dead_letters(&cluster.dir).len() as u64, bad);
}
