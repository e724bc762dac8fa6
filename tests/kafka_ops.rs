//! Kafka in production: topic admin and the replay producer (CLI), the Kafka sink and dead-letter
//! topic, idle partitions that must not freeze the watermark, and a broker outage mid-run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::*;

fn cli(bootstrap: &str, args: &[&str]) -> String {
    let out =
        check(
            Command::new(bin())
                .args(args)
                .args(["--brokers", bootstrap, "--log-level", "warn"]),
        );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn produce_run_and_kafka_sink_equal_the_file_run() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "15m");
    let file_run = run(&tmp.path().join("files"), &inputs.args());
    let want = read_results(&file_run.dir);
    let dead = read_dead_letters(&file_run.dir);

    let broker = Broker::start();
    let b = broker.bootstrap();
    let created = cli(&b, &["topics", "create", "--partitions", "4", "binance"]);
    assert!(
        created.contains("created binance (4 partitions"),
        "{created}"
    );
    cli(&b, &["topics", "create", "--partitions", "2"]);
    let again = cli(&b, &["topics", "create"]);
    assert!(
        again.contains("exists  polymarket_trade") && again.contains("exists  processed_metrics"),
        "{again}"
    );
    // Topics just created reach the broker's metadata answers a moment later.
    let expected =
        |l: &str| l.contains("binance\t4 partitions") && l.contains("dead_letter\t2 partitions");
    let mut listed = cli(&b, &["topics", "list"]);
    let began = Instant::now();
    while !expected(&listed) && began.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(250));
        listed = cli(&b, &["topics", "list"]);
    }
    assert!(expected(&listed), "{listed}");

    // Batched produces: Apache Kafka's end offsets are exact, so --until-end reads them all.
    let exact = ["-X", "linger.ms=20", "-X", "batch.num.messages=1000"];
    for (topic, files) in [
        ("binance", &inputs.binance),
        ("polymarket_trade", &inputs.polymarket),
        ("polymarket_metadata", &inputs.metadata),
    ] {
        for (p, f) in files.iter().enumerate() {
            let input = format!("{topic}={}", f.display());
            let mut args = vec!["produce", "--input", &input, "--group-frames", "10"];
            let p = p.to_string();
            args.extend(["--partition", &p]);
            args.extend(exact);
            cli(&b, &args);
        }
    }
    let described = cli(&b, &["topics", "describe", "binance"]);
    assert!(described.contains("binance: 4 partitions"), "{described}");

    let out = tmp.path().join("kafka");
    let r = run(
        &out,
        &[
            "--brokers",
            &b,
            "--start-from",
            "earliest",
            "--until-end",
            "--sink-kafka",
            "--dead-letter-topic",
            "dead_letter",
            "-w",
            "2",
        ]
        .map(String::from),
    );
    assert_same_results(&read_results(&r.dir), &want, "kafka run, file sink");

    // The Kafka sink: one message per final window, keyed by the serving-layer row key.
    let msgs = consume_all(&b, "processed_metrics", want.len());
    let mut from_kafka = Results::new();
    for (key, value, headers) in &msgs {
        let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(value).unwrap();
        let stream = headers.get("stream").expect("stream header").clone();
        let id = result_id(&row);
        let end = row["window_end"].as_u64().unwrap();
        let kind = match stream.as_str() {
            "binance" => "BIN",
            "polymarket_books" => "PB",
            "polymarket_tokens" => "PO",
            "correlations" => "COR",
            "updown" => "UD",
            "alerts" => "AL",
            _ => "PT",
        };
        let short: String = match kind {
            "BIN" | "COR" => id.clone(),
            "AL" => id.replacen('/', "#", 1),
            _ => id.chars().take(16).collect(),
        };
        assert_eq!(
            key.as_deref(),
            Some(format!("{kind}#{short}#{:013}", 9_999_999_999_999u64 - end).as_str())
        );
        from_kafka.insert((stream, id, row["window_start"].as_u64().unwrap()), row);
    }
    assert_eq!(msgs.len(), want.len(), "one Kafka message per final window");
    assert_same_results(&from_kafka, &want, "Kafka sink");

    let dl = consume_all(&b, "dead_letter", dead.len());
    assert_eq!(dl.len(), dead.len());
    assert!(dl.iter().all(|(_, v, h)| h
        .get("reason")
        .is_some_and(|r| v.contains(&format!("\"reason\":\"{r}\"")))));
    let described = cli(&b, &["topics", "describe", "binance"]);
    assert!(
        !described.contains("  -  "),
        "offsets were committed for lag tools: {described}"
    );
}

/// Complete result lines written so far in a run folder.
fn results_written(dir: &Path) -> usize {
    STREAMS
        .iter()
        .map(|s| {
            std::fs::read_to_string(dir.join(format!("{s}.jsonl")))
                .map_or(0, |t| t.matches('\n').count())
        })
        .sum()
}

/// Starts an unbounded run and stops it once it has written `want` results.
fn run_until(dir: &Path, args: &[String], want: usize, limit: Duration) -> String {
    let mut all = vec![
        "run".to_string(),
        "--output".into(),
        dir.display().to_string(),
        "--log-interval".into(),
        "1s".into(),
    ];
    all.extend(args.iter().cloned());
    let mut child = Command::new(bin())
        .args(&all)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while results_written(dir) < want {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "run ended early ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "only {} of {want} results after {limit:?}: {}",
                results_written(dir),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500)); // nothing more may come
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_partition_that_receives_nothing_does_not_freeze_the_watermark() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = garbled_sim_inputs(tmp.path(), "10m");
    inputs.binance.truncate(3);
    let file_run = run(&tmp.path().join("files"), &inputs.args());
    let want = read_results(&file_run.dir);

    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("binance", 4, 1).unwrap(); // partition 3 stays empty
    mock.create_topic("polymarket_trade", 2, 1).unwrap();
    mock.create_topic("polymarket_metadata", 1, 1).unwrap();
    let b = mock.bootstrap_servers();
    // Metadata comes every 15 minutes: after its first message the topic is quiet for the rest
    // of these 10 minutes, and the token results (joined with it) must not wait for the next.
    produce_files(&b, "polymarket_metadata", &inputs.metadata, 1);
    produce_files(&b, "binance", &inputs.binance, 1);
    produce_files(&b, "polymarket_trade", &inputs.polymarket, 5);
    let dir = tmp.path().join("kafka");
    let args = [
        "--brokers",
        &b,
        "--start-from",
        "earliest",
        "--idle-timeout",
        "2s",
        "-w",
        "2",
    ]
    .map(String::from);
    let stderr = run_until(&dir, &args, want.len(), Duration::from_secs(90));
    assert_same_results(&read_results(&dir), &want, "idle partition run");
    assert!(stderr.contains("progress: binance:"), "{stderr}");
}

/// A real Apache Kafka broker killed mid-run and started again 5 s later: the checkpointed job
/// with the exactly-once Kafka sink rides through it; its files equal a file run, and a
/// `read_committed` consumer sees every result once.
#[test]
fn a_real_broker_crash_mid_run_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "15m");
    let file_run = run(&tmp.path().join("files"), &inputs.args());
    let want = read_results(&file_run.dir);
    let mut broker = Broker::start();
    let b = broker.bootstrap();
    load_inputs(&b, &inputs, 5);
    create_topics(&b, &[("results_eo", 2)]);
    let dir = tmp.path().join("kafka");
    let child = Command::new(bin())
        .args(["run", "--output"])
        .arg(&dir)
        .args(["--brokers", &b, "--start-from", "earliest", "--until-end"])
        .args([
            "--sink-kafka",
            "results_eo",
            "--exactly-once",
            "--checkpoint",
        ])
        .arg(tmp.path().join("ckpt"))
        // Small fetches: the run is still reading when the broker goes.
        .args([
            "-X",
            "max.partition.fetch.bytes=20000",
            "-X",
            "fetch.max.bytes=1000000",
        ])
        .args(["-X", "message.max.bytes=1000000"])
        .args(["-X", "fetch.wait.max.ms=50", "--log-interval", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let began = Instant::now();
    while results_written(&dir) == 0 && began.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.restart(Duration::from_secs(5));
    let written_during_outage = results_written(&dir);
    let out = wait(
        child,
        Duration::from_secs(180),
        "the run through a broker crash",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        written_during_outage < want.len(),
        "the outage must fall mid-run"
    );
    assert_same_results(&read_results(&dir), &want, "run through a broker crash");
    let msgs = consume_all_with(&b, "results_eo", want.len(), true);
    assert_eq!(
        msgs.len(),
        want.len(),
        "each result once for read_committed"
    );
}

#[test]
fn a_broker_outage_mid_run_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "15m");
    let file_run = run(&tmp.path().join("files"), &inputs.args());
    let want = read_results(&file_run.dir);

    let (mock, b) = mock_with(&inputs, 5);
    let dir = tmp.path().join("kafka");
    let mut child = Command::new(bin())
        .args(["run", "--output"])
        .arg(&dir)
        .args([
            "--brokers",
            &b,
            "--start-from",
            "earliest",
            "--until-end",
            "--log-interval",
            "2s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Start the outage once the run has planned its partitions and begun reading.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("speed-layer starting") {
                let _ = tx.send(());
            }
            all += &line;
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the run never started");
    mock.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let written_during_outage = results_written(&dir);
    mock.broker_up(1).unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Kafka consumer error; retrying"),
        "the outage was not noticed: {stderr}"
    );
    assert!(
        written_during_outage < want.len(),
        "the outage must fall mid-run"
    );
    assert_same_results(&read_results(&dir), &want, "run through a broker outage");
}
