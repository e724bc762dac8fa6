//! Kafka fixtures: a real Apache Kafka 4.x broker (KRaft, one node, on loopback) and a producer
//! that writes topic files into partitions the way the real producers do.
//!
//! The broker's jars come from Maven Central the first time (`mvn dependency:copy-dependencies`
//! into `target/tmp/`, about 45 MB, a few seconds), then from that cache; each test starts its
//! own broker with its own log folder and kills it on drop.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// The Apache Kafka release the tests run.
const KAFKA_VERSION: &str = "4.1.1";

/// The broker's class path: every jar of `kafka_2.13` and its runtime dependencies, assembled
/// once per machine with Maven.
fn kafka_libs() -> &'static Path {
    static LIBS: OnceLock<PathBuf> = OnceLock::new();
    LIBS.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kafka-{KAFKA_VERSION}"));
        let (libs, done) = (root.join("libs"), root.join("complete"));
        if done.exists() {
            return libs;
        }
        std::fs::create_dir_all(&root).unwrap();
        let pom = format!(
            r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>speed-layer.test</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version></dependency>
  </dependencies>
</project>
"#
        );
        std::fs::write(root.join("pom.xml"), pom).unwrap();
        let out = Command::new("mvn")
            .current_dir(&root)
            .args([
                "-q",
                "-B",
                &format!("-Dmaven.repo.local={}", root.join("m2").display()),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                &format!("-DoutputDirectory={}", libs.display()),
            ])
            .output()
            .expect("Maven (mvn) is needed to fetch the Apache Kafka test broker");
        assert!(
            out.status.success(),
            "fetching Apache Kafka {KAFKA_VERSION} from Maven Central failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&done, "").unwrap();
        libs
    })
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|j| j.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// A KRaft cluster id: 16 random bytes in URL-safe base64 without padding (what `random-uuid`
/// prints), never starting with `-` (the storage tool would read it as an option).
fn cluster_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let bits: u128 = fastrand::u128(..);
        // 21 characters of 6 bits from the top, then the last 2 bits in the top of a 22nd.
        let mut id: String = (0..21)
            .map(|i| ALPHABET[((bits >> (122 - 6 * i)) & 63) as usize] as char)
            .collect();
        id.push(ALPHABET[((bits & 3) << 4) as usize] as char);
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// A single-node Apache Kafka broker (combined broker and controller) on free local ports;
/// killed on drop, its log folder removed with it.
pub struct Broker {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Broker {
    pub fn start() -> Broker {
        let libs = kafka_libs();
        let ports = super::free_ports(2);
        let (port, controller) = (ports[0], ports[1]);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("server.properties");
        std::fs::write(
            &config,
            format!(
                "process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let classpath = format!("{}/*", libs.display());
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let format = Command::new(java())
            .args(["-cp", &classpath, "kafka.tools.StorageTool", "format"])
            .args(["--cluster-id", &cluster_id(), "--standalone", "--config"])
            .arg(&config)
            .stdout(log("format.log"))
            .stderr(log("format.err"))
            .status()
            .expect("java is needed to run the Apache Kafka test broker");
        assert!(
            format.success(),
            "formatting the Kafka log folder failed: {}",
            ["format.log", "format.err"]
                .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
                .join("")
        );
        let child = Self::spawn(dir.path(), &config);
        let mut broker = Broker {
            child,
            port,
            dir,
            config,
        };
        broker.wait_ready();
        broker
    }

    fn spawn(dir: &Path, config: &Path) -> Child {
        let classpath = format!("{}/*", kafka_libs().display());
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .unwrap()
        };
        Command::new(java())
            .args(["-Xmx512m", "-cp", &classpath, "kafka.Kafka"])
            .arg(config)
            .stdout(log("broker.log"))
            .stderr(log("broker.err"))
            .spawn()
            .expect("cannot start Apache Kafka")
    }

    /// Kills the broker (SIGKILL, as a crash) and starts it again after `down` on the same ports
    /// and log folder; returns once it answers again.
    pub fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn(self.dir.path(), &self.config);
        self.wait_ready();
    }

    /// Ready when a client gets the cluster's metadata (the listener opens a little earlier).
    fn wait_ready(&mut self) {
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Apache Kafka exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "Apache Kafka did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap();
        use rdkafka::consumer::Consumer;
        while consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map_or(true, |m| m.brokers().is_empty())
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "Apache Kafka never answered a metadata request"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
/// batch. Consecutive `polymarket_trade` lines are
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
    mock.create_topic(
        "polymarket_metadata",
        inputs.metadata.len().max(1) as i32,
        1,
    )
    .unwrap();
    let bootstrap = mock.bootstrap_servers();
    produce_files(&bootstrap, "binance", &inputs.binance, 1);
    produce_files(&bootstrap, "polymarket_trade", &inputs.polymarket, group);
    produce_files(&bootstrap, "polymarket_metadata", &inputs.metadata, 1);
    (mock, bootstrap)
}

/// Creates the three input topics on a real broker (a partition per input file) and produces
/// the files into them (`group` Polymarket frames per message); returns the frame messages.
pub fn load_inputs(bootstrap: &str, inputs: &super::Inputs, group: usize) -> usize {
    create_topics(
        bootstrap,
        &[
            ("binance", inputs.binance.len() as i32),
            ("polymarket_trade", inputs.polymarket.len() as i32),
            ("polymarket_metadata", inputs.metadata.len().max(1) as i32),
        ],
    );
    produce_files(bootstrap, "binance", &inputs.binance, 1);
    produce_files(bootstrap, "polymarket_metadata", &inputs.metadata, 1);
    produce_files(bootstrap, "polymarket_trade", &inputs.polymarket, group)
}

/// A message as a test reads it: key, value, headers.
pub type Consumed = (
    Option<String>,
    String,
    std::collections::BTreeMap<String, String>,
);

/// Reads `topic` from the beginning until `want` messages came, then 2 s more (to see any
/// extra), as a new consumer group; `committed` reads with `isolation.level=read_committed`.
pub fn consume_all_with(
    bootstrap: &str,
    topic: &str,
    want: usize,
    committed: bool,
) -> Vec<Consumed> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", fastrand::u64(..)))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    let mut complete: Option<Instant> = None;
    while start.elapsed() < Duration::from_secs(90)
        && complete.is_none_or(|c| c.elapsed() < Duration::from_secs(2))
    {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or(b"")).to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let key = m.key().map(|k| String::from_utf8_lossy(k).to_string());
            got.push((
                key,
                String::from_utf8_lossy(m.payload().unwrap_or(b"")).to_string(),
                headers,
            ));
        }
        if got.len() >= want && complete.is_none() {
            complete = Some(Instant::now());
        }
    }
    got
}

/// [`consume_all_with`], reading uncommitted messages too.
pub fn consume_all(bootstrap: &str, topic: &str, want: usize) -> Vec<Consumed> {
    consume_all_with(bootstrap, topic, want, false)
}
