//! Kafka runs: against librdkafka's in-process mock cluster and against a real
//! Apache Kafka broker started by the test. Topics have several partitions; `polymarket_trade`
//! values hold several frames, as the real producer writes them. `--start-from earliest
//! --until-end` runs must equal the file run of the same partitions.

mod common;

use common::kafka::*;
use common::*;

/// Runs the file reference and a Kafka run for each (name, extra args), comparing all.
fn kafka_runs_equal_file_run(
    bootstrap: &str,
    tmp: &std::path::Path,
    inputs: &Inputs,
    runs: &[(&str, Vec<String>, usize)],
) {
    let (want, _) = reference(&tmp.join("reference"), inputs);
    let file_run = run(&tmp.join("files"), &inputs.args());
    assert_same_results(&read_results(&file_run.dir), &want, "file run");
    let dead = read_dead_letters(&file_run.dir).len();
    for (name, extra, processes) in runs {
        let mut args: Vec<String> = [
            "--brokers",
            bootstrap,
            "--start-from",
            "earliest",
            "--until-end",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let r = if *processes > 1 {
            run_cluster(&tmp.join(name), *processes, 1, &args)
        } else {
            run(&tmp.join(name), &args)
        };
        assert_same_results(&read_results(&r.dir), &want, name);
        assert_eq!(
            read_dead_letters(&r.dir).len(),
            dead,
            "{name}: dead letters"
        );
    }
}

#[test]
fn mock_cluster_run_equals_file_run() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "15m");
    let (_mock, bootstrap) = mock_with(&inputs, 10);
    kafka_runs_equal_file_run(
        &bootstrap,
        tmp.path(),
        &inputs,
        &[("mock-w2", vec!["-w".into(), "2".into()], 1)],
    );
}

#[test]
fn real_broker_run_equals_file_run_on_any_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "20m");
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let values = load_inputs(&bootstrap, &inputs, 10);
    assert!(values > 100);
    kafka_runs_equal_file_run(
        &bootstrap,
        tmp.path(),
        &inputs,
        &[
            ("kafka-w1", vec![], 1),
            ("kafka-w2", vec!["-w".into(), "2".into()], 1),
            ("kafka-n2", vec![], 2),
        ],
    );
}

#[test]
fn unreachable_broker_and_missing_topic_are_clear_errors() {
    // Port 1: nothing listens there, and no broker a concurrent test starts can take it (a port
    // found free a moment ago can be).
    let out = std::process::Command::new(bin())
        .args([
            "run",
            "--brokers",
            "127.0.0.1:1",
            "--until-end",
            "-X",
            "socket.connection.setup.timeout.ms=2000",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("error: cannot reach Kafka at 127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("panicked"));

    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("binance", 1, 1).unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "run",
            "--brokers",
            &mock.bootstrap_servers(),
            "--topic-polymarket",
            "nope",
            "--until-end",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("error: Kafka topic 'nope'"), "{err}");
}
