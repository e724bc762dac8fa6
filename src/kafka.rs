//! Kafka plumbing shared by the engine's Kafka parts: connection settings (`--brokers`, `-X`),
//! topic administration, producers with delivery accounting, and the Kafka sink for window
//! results and dead letters. The Kafka *source* lives in `source/kafka.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

use crate::result::{DeadLetter, ResultLine};
use crate::sink::ResultSink;
use crate::time::EventTime;

/// How long admin and metadata requests wait for the brokers.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A librdkafka configuration: the brokers, then `defaults`, then the `-X` overrides.
    pub fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        c
    }

    /// A plain consumer for metadata and offset queries.
    pub fn metadata_consumer(&self) -> anyhow::Result<BaseConsumer<QuietContext>> {
        self.config(&[("group.id", &self.group_id)])
            .create_with_context(QuietContext)
            .context("cannot create a Kafka client (check the -X settings)")
    }
}

/// A client context that sends librdkafka's own log lines to debug: they repeat on every
/// reconnect attempt (and warn about `-X` properties meant for other client kinds), while the
/// errors that matter reach the caller as results.
#[derive(Clone, Copy, Default)]
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, facility = fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, "librdkafka: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Parses a `-X key=value` argument.
pub(crate) fn parse_override(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected key=value (a librdkafka property), got '{s}'"
        )),
    }
}

/// The outcome of creating one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The topic was created.
    Created,
    /// It existed already (not an error: creation is idempotent).
    Exists,
}

/// A topic to create: name, partitions, replication factor and topic configs.
pub struct TopicSpec<'a> {
    /// Topic name.
    pub name: &'a str,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// Topic configs (for example `cleanup.policy=compact`).
    pub config: Vec<(&'a str, &'a str)>,
}

/// Creates topics; a topic that already exists is reported, not an error.
pub fn create_topics(
    settings: &KafkaSettings,
    topics: &[TopicSpec<'_>],
) -> anyhow::Result<Vec<(String, Created)>> {
    let admin: AdminClient<QuietContext> = settings
        .config(&[])
        .create_with_context(QuietContext)
        .context("cannot create a Kafka admin client")?;
    reachable(settings)?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            t.config.iter().fold(
                NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(t.replication)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(REQUEST_TIMEOUT))
        .request_timeout(Some(REQUEST_TIMEOUT));
    let results = futures_executor::block_on(admin.create_topics(&new, &opts))
        .map_err(|e| anyhow::anyhow!("cannot create topics at {}: {e}", settings.brokers))?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, Created::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, Created::Exists)),
            Err((name, e)) => bail!("cannot create topic '{name}': {e}"),
        }
    }
    Ok(out)
}

/// Fails with a clear message when no broker answers.
pub(crate) fn reachable(settings: &KafkaSettings) -> anyhow::Result<()> {
    settings
        .metadata_consumer()?
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {} ({e})", settings.brokers))
}

/// One partition as `topics describe` shows it.
#[derive(Clone, Debug)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: i32,
    /// Leader broker id.
    pub leader: i32,
    /// Oldest retained offset.
    pub low: i64,
    /// End offset (next offset to be written).
    pub high: i64,
    /// Offset committed by the consumer group, if any.
    pub committed: Option<i64>,
}

/// Topics and their partition counts (all topics when `names` is empty).
pub(crate) fn list_topics(settings: &KafkaSettings) -> anyhow::Result<Vec<(String, usize)>> {
    let md = settings
        .metadata_consumer()?
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {} ({e})", settings.brokers))?;
    let mut topics: Vec<(String, usize)> = md
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    topics.sort();
    Ok(topics)
}

/// Partitions, offsets and the group's committed offsets of one topic.
pub(crate) fn describe_topic(
    settings: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<Vec<PartitionInfo>> {
    let consumer = settings.metadata_consumer()?;
    let md = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {} ({e})", settings.brokers))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        bail!("no metadata for topic '{topic}'")
    };
    if t.error().is_some() || t.partitions().is_empty() {
        bail!("Kafka topic '{topic}' does not exist");
    }
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT).ok();
    let mut out = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), REQUEST_TIMEOUT)
            .with_context(|| format!("cannot read the offsets of {topic}/{}", p.id()))?;
        let committed = committed
            .as_ref()
            .and_then(|c| c.find_partition(topic, p.id()))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        out.push(PartitionInfo {
            partition: p.id(),
            leader: p.leader(),
            low,
            high,
            committed,
        });
    }
    out.sort_by_key(|p| p.partition);
    Ok(out)
}

/// Counts failed deliveries so a producer can report them.
#[derive(Clone, Default)]
pub struct DeliveryCounter {
    failed: Arc<AtomicU64>,
}

impl DeliveryCounter {
    /// Deliveries that failed for good.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl ClientContext for DeliveryCounter {
    // Reconnect chatter goes to debug; failures that matter surface as delivery errors.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, facility = fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, "librdkafka: {reason}");
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            if self.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                tracing::error!(topic = m.topic(), error = %e, "Kafka delivery failed");
            }
        }
    }
}

/// A producer with delivery accounting; `defaults` come before the `-X` overrides.
pub fn producer(
    settings: &KafkaSettings,
    defaults: &[(&str, &str)],
) -> anyhow::Result<(BaseProducer<DeliveryCounter>, DeliveryCounter)> {
    let counter = DeliveryCounter::default();
    let p = settings
        .config(defaults)
        .create_with_context(counter.clone())
        .context("cannot create a Kafka producer (check the -X settings)")?;
    Ok((p, counter))
}

/// Sends one record, waiting for room when the local queue is full.
pub fn send(
    producer: &BaseProducer<DeliveryCounter>,
    mut record: BaseRecord<'_, str, str>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(20));
            }
            Err((e, _)) => bail!("cannot produce to Kafka: {e}"),
        }
    }
}

/// Writes final window results (keyed by their serving-layer row key, so a compacted topic
/// keeps one value per window) and/or dead letters (with the reason in a header) to Kafka.
///
/// By default delivery is at-least-once and idempotent by key: the producer is idempotent (no
/// duplicates from its own retries), waits for every in-sync replica, retries without a time
/// limit through broker outages, and each batch is flushed before the sink moves on. With
/// [`ExactlyOnce`] it is exactly-once (see [`crate::kafka_txn`]).
pub(crate) struct KafkaSink {
    producer: Arc<BaseProducer<DeliveryCounter>>,
    counter: DeliveryCounter,
    results_topic: Option<String>,
    dead_letter_topic: Option<String>,
    stream_topics: std::collections::BTreeMap<String, String>,
    txn: Option<crate::kafka_txn::Transactions>,
}

/// A record as the sink sends it: topic, key, value, headers.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Held {
    pub topic: String,
    pub key: Option<String>,
    pub value: String,
    pub headers: Vec<(String, String)>,
}

/// The setting of an exactly-once Kafka sink.
pub(crate) struct ExactlyOnce {
    /// The checkpoint store (its job instance names the transactional id; its complete epochs
    /// release the spooled records).
    pub store: std::sync::Arc<crate::checkpoint::Checkpoints>,
    /// The spool lengths the checkpoint resumed from recorded, by stream.
    pub lengths: Option<BTreeMap<String, u64>>,
    /// For the status page and metrics.
    pub stats: crate::stats::RunStats,
}

impl KafkaSink {
    /// A sink for the given topics (any may be absent): results go to `results_topic`, those of
    /// a stream in `stream_topics` to its own topic instead; with `exactly_once`, in
    /// transactions.
    pub fn new(
        settings: &KafkaSettings,
        results_topic: Option<String>,
        dead_letter_topic: Option<String>,
        stream_topics: BTreeMap<String, String>,
        exactly_once: Option<ExactlyOnce>,
    ) -> anyhow::Result<Self> {
        reachable(settings)?;
        let id = exactly_once
            .as_ref()
            .map(|e| format!("speed-layer-{}-sink-w0", e.store.instance()));
        let mut defaults = vec![
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.timeout.ms", "0"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
        ];
        if let Some(id) = &id {
            defaults.extend([
                ("transactional.id", id.as_str()),
                ("transaction.timeout.ms", "300000"),
                ("message.timeout.ms", "300000"),
            ]);
        }
        let (producer, counter) = producer(settings, &defaults)?;
        let producer = Arc::new(producer);
        let txn = match (exactly_once, id) {
            (Some(e), Some(id)) => {
                let topics = results_topic
                    .iter()
                    .chain(dead_letter_topic.iter())
                    .chain(stream_topics.values());
                let Some(marker_topic) = topics.into_iter().next().cloned() else {
                    bail!("the exactly-once Kafka sink has no topic to write");
                };
                Some(crate::kafka_txn::Transactions::open(
                    settings,
                    Arc::clone(&producer),
                    id,
                    marker_topic,
                    e,
                )?)
            }
            _ => None,
        };
        Ok(Self {
            producer,
            counter,
            results_topic,
            dead_letter_topic,
            stream_topics,
            txn,
        })
    }

    /// Sends `r` now, or spools it for its transaction.
    fn emit(&mut self, stream: &str, r: Held) -> anyhow::Result<()> {
        match &mut self.txn {
            Some(t) => t.append(stream, &r),
            None => send_held(&self.producer, &r),
        }
    }
}

/// Sends one record.
pub(crate) fn send_held(producer: &BaseProducer<DeliveryCounter>, r: &Held) -> anyhow::Result<()> {
    let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v.as_str()),
        })
    });
    let mut record = BaseRecord::to(&r.topic)
        .payload(r.value.as_str())
        .headers(headers);
    if let Some(k) = &r.key {
        record = record.key(k.as_str());
    }
    send(producer, record)
}

impl ResultSink for KafkaSink {
    fn write(&mut self, _window_end: EventTime, lines: &[ResultLine]) -> anyhow::Result<()> {
        for l in lines {
            let topic = match self.stream_topics.get(l.stream.as_ref()) {
                Some(t) => t,
                None => match &self.results_topic {
                    Some(t) => t,
                    None => continue,
                },
            };
            let r = Held {
                topic: topic.clone(),
                key: Some(l.row_key.to_string()),
                value: l.to_json(),
                headers: vec![("stream".into(), l.stream.to_string())],
            };
            self.emit(&l.stream, r)?;
        }
        Ok(())
    }

    fn dead_letters(&mut self, lines: &[DeadLetter]) -> anyhow::Result<()> {
        let Some(topic) = &self.dead_letter_topic else {
            return Ok(());
        };
        let topic = topic.clone();
        for l in lines {
            let r = Held {
                topic: topic.clone(),
                key: None,
                value: l.to_json(),
                headers: vec![
                    ("reason".into(), l.reason.to_string()),
                    ("source_topic".into(), l.topic.to_string()),
                ],
            };
            self.emit("dead_letter", r)?;
        }
        Ok(())
    }

    fn written(
        &mut self,
        stream: &str,
        epoch: EventTime,
    ) -> anyhow::Result<Option<(u64, PathBuf)>> {
        match &mut self.txn {
            Some(t) => t.written(stream, epoch).map(Some),
            None => Ok(None),
        }
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn finish(&mut self, stream: &str) -> anyhow::Result<()> {
        if let Some(t) = &mut self.txn {
            t.finish(stream);
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.txn.is_some() {
            // Transactions flush when they commit.
            return Ok(());
        }
        // Waits for the brokers; librdkafka keeps retrying through an outage meanwhile.
        while let Err(e) = self.producer.flush(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "Kafka sink still waiting for delivery");
        }
        anyhow::ensure!(
            self.counter.failed() == 0,
            "{} Kafka deliveries failed",
            self.counter.failed()
        );
        Ok(())
    }
}
