//! Kafka inputs: a plan made once at start-up (partitions, start and end offsets), then one
//! `BaseConsumer` per worker with an explicit `assign()` of the partitions that worker owns.
//! No consumer-group rebalancing: the assignment rule is fixed, so every (key, window) result
//! is the same whatever the number of workers. Workers never block: polls use a zero timeout.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{owns, Origin, PartitionInfo, ReadStatus, Reader, ReaderFactory};

/// How long start-up waits for broker metadata before reporting the broker unreachable.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a run starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    /// The oldest retained offset of each partition.
    Earliest,
    /// The end of each partition at start-up (only new messages).
    Latest,
}

/// Connection settings shared by every Kafka client of the job.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// librdkafka properties given with `-X key=value`, applied last.
    pub overrides: Vec<(String, String)>,
    /// Consumer group id (offsets are committed to it for lag tools; no rebalancing).
    pub group_id: String,
}

impl KafkaSettings {
    /// A librdkafka configuration with the brokers and overrides applied.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        c
    }

    fn consumer(&self) -> anyhow::Result<BaseConsumer> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        c.create()
            .context("cannot create a Kafka consumer (check the -X settings)")
    }
}

/// Parses a `-X key=value` argument.
pub fn parse_override(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected key=value (a librdkafka property), got '{s}'"
        )),
    }
}

/// One partition to read: from `start` up to `end` (exclusive) when the run is bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Partition number.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// Stop before this offset (`--until-end`), or read forever.
    pub end: Option<i64>,
}

/// The partitions of one topic and where to read them.
#[derive(Clone, Debug)]
pub struct TopicPlan {
    /// Topic name.
    pub topic: String,
    /// Its partitions, by partition number.
    pub partitions: Vec<PartitionPlan>,
}

/// Asks the brokers for a topic's partitions and offsets. Fails with a clear message when the
/// brokers cannot be reached or the topic does not exist.
pub fn plan_topic(
    settings: &KafkaSettings,
    topic: &str,
    start: StartFrom,
    until_end: bool,
) -> anyhow::Result<TopicPlan> {
    let consumer = settings.consumer()?;
    let md = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {} ({e})", settings.brokers))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        bail!("Kafka returned no metadata for topic '{topic}'");
    };
    if let Some(err) = t.error() {
        bail!(
            "Kafka topic '{topic}' is not available ({err:?}); create it first \
             (speed-layer topics create) or name another with --topic-*"
        );
    }
    if t.partitions().is_empty() {
        bail!("Kafka topic '{topic}' does not exist (it has no partitions)");
    }
    let mut partitions = Vec::new();
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    for p in ids {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, METADATA_TIMEOUT)
            .with_context(|| format!("cannot read the offsets of {topic}/{p}"))?;
        let first = match start {
            StartFrom::Earliest => low,
            StartFrom::Latest => high,
        };
        partitions.push(PartitionPlan {
            partition: p,
            start: first,
            end: until_end.then_some(high),
        });
    }
    Ok(TopicPlan {
        topic: topic.to_string(),
        partitions,
    })
}

/// Opens per-worker consumers for one topic plan.
pub struct KafkaFactory {
    settings: KafkaSettings,
    plan: TopicPlan,
    base_index: usize,
}

impl KafkaFactory {
    /// A factory for `plan`, whose first partition has global index `base_index`.
    pub fn new(settings: KafkaSettings, plan: TopicPlan, base_index: usize) -> Self {
        Self {
            settings,
            plan,
            base_index,
        }
    }
}

impl ReaderFactory for KafkaFactory {
    fn open(&self, index: usize, peers: usize) -> anyhow::Result<Box<dyn Reader>> {
        let mine: Vec<PartitionPlan> = self
            .plan
            .partitions
            .iter()
            .enumerate()
            .filter(|(i, _)| owns(self.base_index + i, index, peers))
            .map(|(_, p)| p.clone())
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut done = Vec::new();
        for p in &mine {
            let empty = p.end.is_some_and(|end| p.start >= end);
            done.push(empty);
            if !empty {
                tpl.add_partition_offset(&self.plan.topic, p.partition, Offset::Offset(p.start))?;
            }
        }
        let consumer = if mine.is_empty() {
            None
        } else {
            let c = self.settings.consumer()?;
            c.assign(&tpl).context("cannot assign Kafka partitions")?;
            Some(c)
        };
        let parts = mine
            .iter()
            .map(|p| PartitionInfo {
                id: p.partition as u32,
                origin: Origin::Kafka(p.partition),
            })
            .collect();
        Ok(Box::new(KafkaReader {
            consumer,
            plan: mine,
            parts,
            done,
            last_error: None,
        }))
    }
}

struct KafkaReader {
    consumer: Option<BaseConsumer>,
    plan: Vec<PartitionPlan>,
    parts: Vec<PartitionInfo>,
    done: Vec<bool>,
    last_error: Option<String>,
}

impl KafkaReader {
    fn slot(&self, partition: i32) -> Option<usize> {
        self.plan.iter().position(|p| p.partition == partition)
    }
}

impl Reader for KafkaReader {
    fn partitions(&self) -> &[PartitionInfo] {
        &self.parts
    }

    fn read(
        &mut self,
        budget: usize,
        out: &mut dyn FnMut(usize, u64, &[u8]),
    ) -> anyhow::Result<ReadStatus> {
        if self.done.iter().all(|d| *d) {
            return Ok(ReadStatus::Done);
        }
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(ReadStatus::Done);
        };
        for _ in 0..budget {
            match consumer.poll(Duration::ZERO) {
                None => return Ok(ReadStatus::Idle(Duration::from_millis(5))),
                Some(Err(e)) => {
                    // librdkafka reconnects by itself; say so once per distinct error.
                    let msg = e.to_string();
                    if self.last_error.as_deref() != Some(&msg) {
                        tracing::warn!(error = %msg, "Kafka consumer error; retrying");
                        self.last_error = Some(msg);
                    }
                    return Ok(ReadStatus::Idle(Duration::from_millis(50)));
                }
                Some(Ok(m)) => {
                    self.last_error = None;
                    let Some(slot) = self.slot(m.partition()) else {
                        continue;
                    };
                    let end = self.plan[slot].end;
                    if self.done[slot] || end.is_some_and(|e| m.offset() >= e) {
                        continue;
                    }
                    out(slot, m.offset() as u64, m.payload().unwrap_or(b""));
                    if end.is_some_and(|e| m.offset() + 1 >= e) {
                        self.done[slot] = true;
                        if self.done.iter().all(|d| *d) {
                            return Ok(ReadStatus::Done);
                        }
                    }
                }
            }
        }
        Ok(ReadStatus::More)
    }

    fn is_done(&self, slot: usize) -> bool {
        self.done[slot]
    }
}
