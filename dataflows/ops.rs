//! Kafka operations for the market topics: `speed-layer topics create|list|describe` (replacing
//! the original's setup script) and `speed-layer produce` (replacing its console-producer smoke
//! test; it also feeds demos and benchmarks).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::producer::{BaseRecord, Producer};

use crate::cli::KafkaArgs;
use crate::kafka::{self, Created, KafkaSettings, TopicSpec};
use crate::source::{ReadStatus, ReaderFactory};

use super::sim::SimArgs;
use super::{kafka_topic, topics as input_topics, TopicNames, MARKETS};
/// Default output topic for window results (`--sink-kafka`).
pub(crate) const RESULTS_TOPIC: &str = "processed_metrics";
/// Default output topic for dead letters (`--dead-letter-topic`).
pub(crate) const DEAD_LETTER_TOPIC: &str = "dead_letter";

/// `speed-layer topics ...`
#[derive(clap::Args, Clone, Debug)]
pub struct TopicsArgs {
    #[command(subcommand)]
    pub action: TopicsAction,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// What `topics` does.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum TopicsAction {
    /// Create the input and output topics (existing ones are reported, not an error).
    Create {
        /// Partitions per topic.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// Topics to create (default: every market's topics, processed_metrics, dead_letter).
        topics: Vec<String>,
    },
    /// List topics and their partition counts.
    List,
    /// Show partitions, offsets and the consumer group's committed offsets and lag.
    Describe {
        /// Topics (default: the speed layer's topics).
        topics: Vec<String>,
    },
}

fn settings(k: &KafkaArgs) -> anyhow::Result<KafkaSettings> {
    k.settings()
        .context("--brokers (or KAFKA_BROKERS) is required")
}

/// Every market's Kafka topics, then the output topics.
fn default_topics() -> Vec<String> {
    MARKETS
        .iter()
        .flat_map(|m| m.kafka_topics())
        .chain([RESULTS_TOPIC, DEAD_LETTER_TOPIC])
        .map(str::to_string)
        .collect()
}

/// Runs `speed-layer topics`.
pub fn topics(args: &TopicsArgs) -> anyhow::Result<()> {
    let settings = settings(&args.kafka)?;
    match &args.action {
        TopicsAction::Create {
            partitions,
            replication_factor,
            topics,
        } => {
            anyhow::ensure!(*partitions >= 1, "--partitions must be at least 1");
            anyhow::ensure!(
                *replication_factor >= 1,
                "--replication-factor must be at least 1"
            );
            let names = if topics.is_empty() {
                default_topics()
            } else {
                topics.clone()
            };
            let specs: Vec<TopicSpec> = names
                .iter()
                .map(|n| TopicSpec {
                    name: n,
                    partitions: *partitions,
                    replication: *replication_factor,
                    // Results are keyed per window: compaction keeps the latest value of each.
                    config: if n == RESULTS_TOPIC {
                        vec![("cleanup.policy", "compact")]
                    } else {
                        vec![]
                    },
                })
                .collect();
            for (name, outcome) in kafka::create_topics(&settings, &specs)? {
                match outcome {
                    Created::Created => println!("created {name} ({partitions} partitions, replication {replication_factor})"),
                    Created::Exists => println!("exists  {name}"),
                }
            }
        }
        TopicsAction::List => {
            for (name, n) in kafka::list_topics(&settings)? {
                println!("{name}\t{n} partition{}", if n == 1 { "" } else { "s" });
            }
        }
        TopicsAction::Describe { topics } => {
            let names = if topics.is_empty() {
                default_topics()
            } else {
                topics.clone()
            };
            for name in names {
                match kafka::describe_topic(&settings, &name) {
                    Ok(parts) => {
                        println!(
                            "{name}: {} partitions (group {})",
                            parts.len(),
                            settings.group_id
                        );
                        println!("  partition  leader  low        high       committed  lag");
                        for p in parts {
                            let committed = p.committed.map_or("-".to_string(), |c| c.to_string());
                            let lag = p
                                .committed
                                .map_or("-".to_string(), |c| (p.high - c).max(0).to_string());
                            println!(
                                "  {:<9}  {:<6}  {:<9}  {:<9}  {:<9}  {lag}",
                                p.partition, p.leader, p.low, p.high, committed
                            );
                        }
                    }
                    Err(e) => println!("{name}: {e:#}"),
                }
            }
        }
    }
    Ok(())
}

/// `speed-layer produce ...`
#[derive(clap::Args, Clone, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Produce the lines of a file (one message value per line) to a topic; repeatable.
    #[arg(long = "input", value_name = "TOPIC=PATH", value_parser = crate::cli::parse_input)]
    pub inputs: Vec<(String, String)>,
    /// Produce from the built-in simulator instead (every topic; see --sim-*).
    #[arg(long)]
    pub sim: bool,
    /// Pack this many consecutive lines of a multi-frame topic (polymarket_trade) into one
    /// multi-line value, as the real producer does.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub group_frames: usize,
    /// Messages per second over all topics (default: as fast as possible).
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Send every file message to this partition (default: the producer's partitioner).
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
    /// Kafka topic names for the simulator's messages, by input topic: the `--topic-<market>`
    /// options the registry adds, filled in from the command line.
    #[arg(skip)]
    pub topics: TopicNames,
    #[command(flatten)]
    pub sim_args: SimArgs,
}

/// Paces sends to a rate and prints progress once a second.
struct Pace {
    rate: Option<f64>,
    start: Instant,
    last_report: Instant,
    sent: u64,
    tty: bool,
}

impl Pace {
    fn new(rate: Option<f64>) -> Self {
        use std::io::IsTerminal;
        Self {
            rate,
            start: Instant::now(),
            last_report: Instant::now(),
            sent: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self) {
        self.sent += 1;
        if let Some(r) = self.rate.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64(self.sent as f64 / r);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if self.last_report.elapsed() >= Duration::from_secs(1) {
            self.last_report = Instant::now();
            let rate = self.sent as f64 / self.start.elapsed().as_secs_f64();
            if self.tty {
                eprint!("\rproduced {} messages ({rate:.0}/s)   ", self.sent);
            } else {
                eprintln!("produced {} messages ({rate:.0}/s)", self.sent);
            }
        }
    }
}

/// Runs `speed-layer produce`.
pub fn produce(args: &ProduceArgs) -> anyhow::Result<()> {
    let settings = settings(&args.kafka)?;
    if args.sim != args.inputs.is_empty() {
        bail!("give either --input TOPIC=PATH (repeatable) or --sim");
    }
    anyhow::ensure!(args.group_frames >= 1, "--group-frames must be at least 1");
    kafka::reachable(&settings)?;
    let (producer, counter) = kafka::producer(
        &settings,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
        ],
    )?;
    let mut pace = Pace::new(args.rate);
    let mut send = |topic: &str, partition: Option<i32>, value: &str| -> anyhow::Result<()> {
        let mut record = BaseRecord::to(topic).payload(value);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        kafka::send(&producer, record)?;
        producer.poll(Duration::ZERO);
        pace.tick();
        Ok(())
    };
    if args.sim {
        let start = args.sim_args.sim_start.unwrap_or_else(crate::time::now_ms);
        let mut readers = Vec::new();
        for (name, factory) in args.sim_args.factories(start)? {
            let topic = kafka_topic(&args.topics, name).to_string();
            let partitions = kafka::describe_topic(&settings, &topic)?.len() as i32;
            readers.push((topic, partitions, factory.open(0, 1, &[])?));
        }
        loop {
            let mut all_done = true;
            let mut idle = Duration::from_millis(200);
            for (topic, n, reader) in readers.iter_mut() {
                let mut err = None;
                let status = reader.read(256, &mut |slot, _, value, _| {
                    if err.is_none() {
                        let text = String::from_utf8_lossy(value);
                        err = send(topic, Some(slot as i32 % *n), &text).err();
                    }
                })?;
                if let Some(e) = err {
                    return Err(e);
                }
                match status {
                    ReadStatus::Done => {}
                    ReadStatus::More => all_done = false,
                    ReadStatus::Idle(d) => {
                        all_done = false;
                        idle = idle.min(d);
                    }
                }
            }
            if all_done {
                break;
            }
            producer.poll(idle.min(Duration::from_millis(10)));
        }
    } else {
        for (topic, path) in &args.inputs {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read input file '{path}'"))?;
            let lines: Vec<&str> = text
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty())
                .collect();
            let multi_frame = input_topics().any(|(_, t)| {
                t.multi_frame && (topic == t.name || topic == kafka_topic(&args.topics, t.name))
            });
            let group = if multi_frame { args.group_frames } else { 1 };
            for chunk in lines.chunks(group) {
                send(topic, args.partition, &chunk.join("\n"))?;
            }
        }
    }
    while let Err(e) = producer.flush(Duration::from_secs(30)) {
        tracing::warn!(error = %e, "still waiting for Kafka to acknowledge messages");
    }
    let failed = counter.failed();
    eprintln!(
        "{}produced {} messages to Kafka at {}",
        if pace.tty { "\n" } else { "" },
        pace.sent,
        settings.brokers
    );
    anyhow::ensure!(failed == 0, "{failed} messages could not be delivered");
    Ok(())
}
