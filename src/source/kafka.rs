//! Kafka inputs: a plan made once at start-up (partitions, start and end offsets), then one
//! `BaseConsumer` per worker with an explicit `assign()` of the partitions that worker owns.
//! No consumer-group rebalancing: the assignment rule is fixed, so every (key, window) result
//! is the same whatever the number of workers. Workers never block: polls use a zero timeout.

use std::time::Duration;

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::kafka::KafkaSettings;

use super::{owns, Origin, PartitionInfo, ReadStatus, Reader, ReaderFactory, ResumePoint};

/// Longest wait before a source re-polls an empty consumer queue (the non-empty callback
/// usually wakes it first; it can miss, so this bounds the extra latency).
const IDLE_BACKSTOP_MS: u64 = 20;

/// How long start-up waits for broker metadata before reporting the broker unreachable.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a run starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest retained offset of each partition.
    Earliest,
    /// The end of each partition at start-up (only new messages).
    Latest,
}

/// A consumer for reading: manual assignment, offsets committed by us, librdkafka statistics on.
fn consumer(
    settings: &KafkaSettings,
    context: StatsContext,
) -> anyhow::Result<BaseConsumer<StatsContext>> {
    settings
        .config(&[
            ("group.id", &settings.group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("statistics.interval.ms", "1000"),
            // librdkafka 2.x pauses a partition's fetching for this long (default 1 s) once
            // its local queue passes `queued.min.messages` or `queued.max.messages.kbytes`.
            // A backfill of large messages hits that at once and then idles 1 s in 3: 10 ms
            // reads the same data 2.7× faster (measured: 28 811 messages on 4 partitions of a
            // local Apache Kafka 4.1, 3.0 s → 1.1 s; a bare consume loop 0.27 s).
            ("fetch.queue.backoff.ms", "10"),
        ])
        .create_with_context(context)
        .context("cannot create a Kafka consumer (check the -X settings)")
}

/// One partition to read: from `start` up to `end` (exclusive) when the run is bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartitionPlan {
    /// Partition number.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// Stop before this offset (`--until-end`), or read forever.
    pub end: Option<i64>,
}

/// The partitions of one topic and where to read them.
#[derive(Clone, Debug)]
pub(crate) struct TopicPlan {
    /// Topic name.
    pub topic: String,
    /// Its partitions, by partition number.
    pub partitions: Vec<PartitionPlan>,
}

/// Asks the brokers for a topic's partitions and offsets. Fails with a clear message when the
/// brokers cannot be reached or the topic does not exist.
pub(crate) fn plan_topic(
    settings: &KafkaSettings,
    topic: &str,
    start: StartFrom,
    until_end: bool,
) -> anyhow::Result<TopicPlan> {
    let consumer = consumer(settings, StatsContext::default())?;
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

/// How a Kafka source treats quiet partitions and offsets.
#[derive(Clone, Debug)]
pub(crate) struct ReadOptions {
    /// A partition caught up and quiet this long stops holding the watermark back.
    pub idle_timeout: Duration,
    /// How often consumed offsets are committed to the consumer group (zero: never).
    pub commit_interval: Duration,
    /// How often topic metadata is checked for partitions added while running.
    pub refresh_interval: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(10),
        }
    }
}

/// Opens per-worker consumers for one topic plan.
pub(crate) struct KafkaFactory {
    settings: KafkaSettings,
    plan: TopicPlan,
    topic_ordinal: usize,
    options: ReadOptions,
    /// Partitions known now; grows when partitions are added (unbounded runs only).
    known: Arc<Mutex<Vec<i32>>>,
}

impl KafkaFactory {
    /// A factory for `plan`; `topic_ordinal` spreads topics over workers (see [`owns`]).
    /// Unbounded runs watch the topic for new partitions on a background thread.
    pub fn new(
        settings: KafkaSettings,
        plan: TopicPlan,
        topic_ordinal: usize,
        options: ReadOptions,
    ) -> Self {
        let known = Arc::new(Mutex::new(
            plan.partitions
                .iter()
                .map(|p| p.partition)
                .collect::<Vec<_>>(),
        ));
        let bounded = plan.partitions.iter().any(|p| p.end.is_some());
        if !bounded && !options.refresh_interval.is_zero() {
            watch_partitions(
                settings.clone(),
                plan.topic.clone(),
                Arc::clone(&known),
                options.refresh_interval,
            );
        }
        Self {
            settings,
            plan,
            topic_ordinal,
            options,
            known,
        }
    }
}

/// Polls topic metadata and records partitions added while the job runs.
fn watch_partitions(
    settings: KafkaSettings,
    topic: String,
    known: Arc<Mutex<Vec<i32>>>,
    every: Duration,
) {
    std::thread::spawn(move || {
        let Ok(consumer) = consumer(&settings, StatsContext::default()) else {
            return;
        };
        loop {
            std::thread::sleep(every);
            let Ok(md) = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT) else {
                continue;
            };
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                continue;
            };
            let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            ids.sort_unstable();
            let mut k = known.lock().unwrap_or_else(|e| e.into_inner());
            if ids.len() > k.len() {
                tracing::info!(topic = %topic, partitions = ids.len(), "new Kafka partitions found");
                *k = ids;
            }
        }
    });
}

/// Partition facts from librdkafka's statistics: high watermark and consumer lag.
#[derive(Clone, Default)]
pub(crate) struct StatsContext {
    /// (topic, partition) → (high watermark, consumer lag).
    partitions: Arc<Mutex<PartitionFacts>>,
}

type PartitionFacts = HashMap<(String, i32), (i64, i64)>;

impl ClientContext for StatsContext {
    // librdkafka's own log lines repeat every reconnect attempt; the reader reports errors
    // once per distinct error from poll(), so these go to debug.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, facility = fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, "librdkafka: {reason}");
    }

    fn stats(&self, statistics: Statistics) {
        let mut map = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        for (name, t) in statistics.topics {
            for (id, p) in t.partitions {
                if id >= 0 && p.hi_offset >= 0 {
                    map.insert((name.clone(), id), (p.hi_offset, p.consumer_lag));
                }
            }
        }
    }
}

impl ConsumerContext for StatsContext {}

impl StatsContext {
    fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let map = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(topic.to_string(), partition)).map(|(hi, _)| *hi)
    }
}

impl ReaderFactory for KafkaFactory {
    fn topic_ordinal(&self) -> usize {
        self.topic_ordinal
    }

    fn partition_count(&self) -> Option<usize> {
        Some(self.plan.partitions.len())
    }

    fn open(
        &self,
        index: usize,
        peers: usize,
        resume: &[ResumePoint],
    ) -> anyhow::Result<Box<dyn Reader>> {
        let context = StatsContext::default();
        let consumer = consumer(&self.settings, context.clone())?;
        let mut reader = KafkaReader {
            consumer,
            context,
            topic: self.plan.topic.clone(),
            topic_ordinal: self.topic_ordinal,
            worker: (index, peers),
            options: self.options.clone(),
            known: Arc::clone(&self.known),
            known_count: 0,
            plan: Vec::new(),
            parts: Vec::new(),
            state: Vec::new(),
            last_error: None,
            last_commit: Instant::now(),
        };
        // A resumed partition continues after its last message read, up to the end it had.
        let mut plan = self.plan.partitions.clone();
        for p in &mut plan {
            if let Some(at) = resume.iter().find(|r| r.id == p.partition as u32) {
                p.start = at.offset as i64;
                p.end = at.end.map(|e| e as i64);
            }
        }
        reader.adopt(&plan)?;
        reader.known_count = self.plan.partitions.len();
        Ok(Box::new(reader))
    }
}

/// Per-partition progress.
struct SlotState {
    /// Next offset to read (the last read + 1), for commits and catch-up checks.
    next: i64,
    /// Ended (`--until-end`).
    done: bool,
    /// When the partition last delivered a message (or was assigned).
    last_message: Instant,
    /// Whether `next` moved since the last commit.
    dirty: bool,
}

struct KafkaReader {
    consumer: BaseConsumer<StatsContext>,
    context: StatsContext,
    topic: String,
    topic_ordinal: usize,
    worker: (usize, usize),
    options: ReadOptions,
    known: Arc<Mutex<Vec<i32>>>,
    known_count: usize,
    plan: Vec<PartitionPlan>,
    parts: Vec<PartitionInfo>,
    state: Vec<SlotState>,
    last_error: Option<String>,
    last_commit: Instant,
}

impl KafkaReader {
    fn slot(&self, partition: i32) -> Option<usize> {
        self.plan.iter().position(|p| p.partition == partition)
    }

    /// Takes over the partitions of `plans` that this worker owns.
    fn adopt(&mut self, plans: &[PartitionPlan]) -> anyhow::Result<()> {
        let (index, peers) = self.worker;
        let mut tpl = TopicPartitionList::new();
        for p in plans {
            if !owns(self.topic_ordinal + p.partition as usize, index, peers)
                || self.slot(p.partition).is_some()
            {
                continue;
            }
            let empty = p.end.is_some_and(|end| p.start >= end);
            if !empty {
                tpl.add_partition_offset(&self.topic, p.partition, Offset::Offset(p.start))?;
            }
            self.plan.push(p.clone());
            self.parts.push(PartitionInfo {
                id: p.partition as u32,
                origin: Origin::Kafka(p.partition),
            });
            self.state.push(SlotState {
                next: p.start,
                done: empty,
                last_message: Instant::now(),
                dirty: false,
            });
        }
        if tpl.count() > 0 {
            self.consumer
                .incremental_assign(&tpl)
                .context("cannot assign Kafka partitions")?;
        }
        Ok(())
    }

    /// Adopts partitions added to the topic since start-up; they are read from the beginning.
    fn pick_up_new_partitions(&mut self) -> anyhow::Result<()> {
        let Ok(known) = self.known.try_lock() else {
            return Ok(());
        };
        if known.len() <= self.known_count {
            return Ok(());
        }
        let added: Vec<PartitionPlan> = known[self.known_count..]
            .iter()
            .map(|&partition| PartitionPlan {
                partition,
                start: 0,
                end: None,
            })
            .collect();
        self.known_count = known.len();
        drop(known);
        self.adopt(&added)
    }

    fn commit(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for (slot, st) in self.state.iter_mut().enumerate() {
            if st.dirty {
                st.dirty = false;
                let _ = tpl.add_partition_offset(
                    &self.topic,
                    self.plan[slot].partition,
                    Offset::Offset(st.next),
                );
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit failed; will retry");
                self.state.iter_mut().for_each(|s| s.dirty = true);
            }
        }
    }
}

impl Reader for KafkaReader {
    fn partitions(&self) -> &[PartitionInfo] {
        &self.parts
    }

    fn refresh(&mut self) -> anyhow::Result<()> {
        self.pick_up_new_partitions()
    }

    fn read(
        &mut self,
        budget: usize,
        out: &mut super::OnMessage<'_>,
    ) -> anyhow::Result<ReadStatus> {
        if !self.options.commit_interval.is_zero()
            && self.last_commit.elapsed() >= self.options.commit_interval
        {
            self.last_commit = Instant::now();
            self.commit();
        }
        let bounded = self.plan.iter().all(|p| p.end.is_some());
        if bounded && self.state.iter().all(|s| s.done) {
            self.commit();
            return Ok(ReadStatus::Done);
        }
        for _ in 0..budget {
            match self.consumer.poll(Duration::ZERO) {
                // The queue's non-empty callback wakes the source; the timer is a backstop.
                None => return Ok(ReadStatus::Idle(Duration::from_millis(IDLE_BACKSTOP_MS))),
                Some(Err(e)) => {
                    // librdkafka reconnects by itself; say so once per distinct error.
                    let msg = e.to_string();
                    if self.last_error.as_deref() != Some(&msg) {
                        tracing::warn!(topic = %self.topic, error = %msg, "Kafka consumer error; retrying");
                        self.last_error = Some(msg);
                    }
                    return Ok(ReadStatus::Idle(Duration::from_millis(50)));
                }
                Some(Ok(m)) => {
                    if self.last_error.take().is_some() {
                        tracing::info!(topic = %self.topic, "Kafka consumer recovered");
                    }
                    let Some(slot) = self.slot(m.partition()) else {
                        continue;
                    };
                    let end = self.plan[slot].end;
                    let st = &mut self.state[slot];
                    if st.done || end.is_some_and(|e| m.offset() >= e) || m.offset() < st.next {
                        continue;
                    }
                    st.next = m.offset() + 1;
                    st.dirty = true;
                    st.last_message = Instant::now();
                    let timestamp = m
                        .timestamp()
                        .to_millis()
                        .and_then(|t| u64::try_from(t).ok());
                    out(
                        slot,
                        m.offset() as u64,
                        m.payload().unwrap_or(b""),
                        timestamp,
                    );
                    let st = &mut self.state[slot];
                    if end.is_some_and(|e| st.next >= e) {
                        st.done = true;
                        if bounded && self.state.iter().all(|s| s.done) {
                            self.commit();
                            return Ok(ReadStatus::Done);
                        }
                    }
                }
            }
        }
        Ok(ReadStatus::More)
    }

    fn is_done(&self, slot: usize) -> bool {
        self.state[slot].done
    }

    fn position(&self, slot: usize) -> ResumePoint {
        ResumePoint {
            id: self.plan[slot].partition as u32,
            offset: self.state[slot].next.max(0) as u64,
            seq: 0,
            end: self.plan[slot].end.map(|e| e.max(0) as u64),
        }
    }

    fn is_idle(&self, slot: usize) -> bool {
        let st = &self.state[slot];
        if self.options.idle_timeout.is_zero()
            || st.last_message.elapsed() < self.options.idle_timeout
        {
            return false;
        }
        // Caught up by the broker's own account (librdkafka statistics), never on silence alone.
        self.context
            .high_watermark(&self.topic, self.plan[slot].partition)
            .is_some_and(|hi| st.next >= hi)
    }

    fn set_waker(&mut self, wake: super::Waker) {
        self.consumer.set_nonempty_callback(move || wake());
    }

    fn lag(&self, slot: usize) -> Option<i64> {
        let hi = self
            .context
            .high_watermark(&self.topic, self.plan[slot].partition)?;
        Some((hi - self.state[slot].next).max(0))
    }
}
