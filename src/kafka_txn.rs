//! The exactly-once Kafka sink (`--sink-kafka … --exactly-once`): a spool, Kafka transactions
//! released by complete checkpoints, and a commit log.
//!
//! Records are not sent when the job writes them. They are appended to a spool file per stream
//! (`<checkpoint>/kafka-spool/<stream>.jsonl`) whose length the checkpoint records at every epoch,
//! as for a JSON-lines output (and fsynced before the part that records it). A publisher thread
//! watches the checkpoint: once an epoch is complete, every stream's spool up to its length at
//! that epoch is final — a restart resumes at or after it and never writes it again — and is
//! sent in **one Kafka transaction**. The transaction also commits, as the offset of partition 0
//! of the first output topic for the transactional id's own consumer group, the number `N` of
//! the commit; `commits.log` (fsynced before the transaction commits) says which spool offsets
//! commit `N` reached. So Kafka and the spool agree atomically on what was published.
//!
//! A restart cuts the spools back to the checkpoint, fences the crashed producer (its open
//! transaction is aborted: a `read_committed` consumer never sees it), reads `N` from Kafka and
//! the offsets of commit `N` from the log, and publishes the rest. The transactional id derives
//! from the checkpoint's job instance: stable across restarts, new for a new job.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::checkpoint::Checkpoints;
use crate::kafka::{DeliveryCounter, ExactlyOnce, Held, KafkaSettings, QuietContext};
use crate::stats::{RunStats, TransactionStatus};
use crate::time::EventTime;

/// How long a transaction's steps wait for the brokers before they are tried again.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the publisher looks for a newly complete checkpoint.
const POLL: Duration = Duration::from_millis(50);

/// What the job side and the publisher share.
struct Shared {
    /// Per stream: (epoch, spool length then), in epoch order, not yet published.
    marks: Mutex<BTreeMap<String, VecDeque<(EventTime, u64)>>>,
    /// Set once every stream ended or the sink closes: publish what is covered, then stop.
    closing: AtomicBool,
    /// Per stream: spool bytes committed to Kafka.
    published: Mutex<BTreeMap<String, u64>>,
    /// Set while the publisher sends a transaction.
    busy: AtomicBool,
}

impl Shared {
    /// Whether spooled records wait for a complete checkpoint.
    fn waiting(&self) -> bool {
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|m| !m.is_empty())
    }

    /// Per stream: spool bytes committed to Kafka.
    fn published(&self) -> BTreeMap<String, u64> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The job side of the sink: appends to the spools and hands their lengths to the publisher.
pub(crate) struct Transactions {
    dir: PathBuf,
    files: BTreeMap<String, (BufWriter<File>, u64)>,
    shared: Arc<Shared>,
    publisher: Option<std::thread::JoinHandle<()>>,
    /// The input ended (a stream finished): the last records wait for the final checkpoint.
    ended: bool,
}

/// The publisher's state.
struct Publisher {
    dir: PathBuf,
    producer: Arc<BaseProducer<DeliveryCounter>>,
    group: rdkafka::consumer::ConsumerGroupMetadata,
    marker_topic: String,
    id: String,
    /// The number of the last commit.
    commit: u64,
    /// Commits made by this run.
    commits: u64,
    /// The latest epoch whose records are all in Kafka.
    committed_epoch: EventTime,
    store: Arc<Checkpoints>,
    stats: RunStats,
    shared: Arc<Shared>,
}

/// Runs one transactional step, retrying what librdkafka calls retriable (a broker away).
fn txn_step(what: &str, mut step: impl FnMut() -> KafkaResult<()>) -> anyhow::Result<()> {
    let mut warned = false;
    loop {
        match step() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                if !warned {
                    tracing::warn!(error = %e, "Kafka transaction: {what} is retried");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => bail!("Kafka transaction: {what} failed: {e}"),
        }
    }
}

/// One line of `commits.log`: the commit's number and the spool offset of each stream.
fn log_line(commit: u64, offsets: &BTreeMap<String, u64>) -> String {
    let mut line = commit.to_string();
    for (s, o) in offsets {
        line.push_str(&format!(" {s}={o}"));
    }
    line.push('\n');
    line
}

/// The offsets of commit `n` in `commits.log` (none for commit 0), and the log cut after it.
fn offsets_of(log: &Path, n: u64) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut kept = String::new();
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let Some(Ok(c)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        if c > n {
            // Written before a transaction that never committed.
            break;
        }
        kept.push_str(line);
        kept.push('\n');
        if c == n {
            found = parts
                .filter_map(|p| p.split_once('='))
                .filter_map(|(s, o)| Some((s.to_string(), o.parse().ok()?)))
                .collect();
        }
    }
    anyhow::ensure!(
        n == 0 || !found.is_empty(),
        "{} has no entry for Kafka commit {n}: the spool and the topic disagree; delete the \
         checkpoint folder to start over",
        log.display()
    );
    crate::checkpoint::write_atomic(log, kept.as_bytes())?;
    Ok(found)
}

impl Transactions {
    /// Opens the spools (cut back to the checkpoint's lengths, or emptied for a new job), fences
    /// an earlier producer of `id`, finds what Kafka already holds, and starts the publisher.
    pub fn open(
        settings: &KafkaSettings,
        producer: Arc<BaseProducer<DeliveryCounter>>,
        id: String,
        marker_topic: String,
        e: ExactlyOnce,
    ) -> anyhow::Result<Self> {
        let dir = e.store.dir().join("kafka-spool");
        if e.store.epoch().is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the Kafka spool {}", dir.display()))?;
        txn_step("initialisation", || producer.init_transactions(TXN_TIMEOUT))?;
        let consumer: BaseConsumer<QuietContext> = settings
            .config(&[("group.id", &id), ("enable.auto.commit", "false")])
            .create_with_context(QuietContext)
            .context("cannot create a Kafka client (check the -X settings)")?;
        let group = consumer
            .group_metadata()
            .context("no consumer group metadata for the transactional id")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&marker_topic, 0);
        let commit = consumer
            .committed_offsets(tpl, crate::kafka::REQUEST_TIMEOUT)
            .with_context(|| format!("cannot read the last commit of {id}"))?
            .find_partition(&marker_topic, 0)
            .and_then(|p| match p.offset() {
                Offset::Offset(o) if o > 0 => Some(o as u64),
                _ => None,
            })
            .unwrap_or(0);
        let published = offsets_of(&dir.join("commits.log"), commit)?;
        let lengths = e.lengths.unwrap_or_default();
        let mut files = BTreeMap::new();
        let mut marks = BTreeMap::new();
        let resumed = e.store.epoch().unwrap_or(0);
        for (stream, len) in &lengths {
            let path = dir.join(format!("{stream}.jsonl"));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            f.set_len(*len)
                .with_context(|| format!("cannot cut {} back", path.display()))?;
            let done = published.get(stream).copied().unwrap_or(0);
            anyhow::ensure!(
                done <= *len,
                "the Kafka spool {} holds {len} bytes but {done} were committed: the spool is \
                 older than the topic; delete the checkpoint folder to start over",
                path.display()
            );
            // The checkpoint resumed from covers all of it.
            marks.insert(stream.clone(), VecDeque::from([(resumed, *len)]));
            files.insert(stream.clone(), (BufWriter::new(f), *len));
        }
        tracing::info!(
            transactional_id = %id,
            commit,
            "exactly-once Kafka sink ready"
        );
        let shared = Arc::new(Shared {
            marks: Mutex::new(marks),
            closing: AtomicBool::new(false),
            published: Mutex::new(published),
            busy: AtomicBool::new(false),
        });
        // A graceful stop ends with a checkpoint: what it covers goes out before the exit.
        let (waiting, store) = (Arc::clone(&shared), Arc::clone(&e.store));
        crate::runtime::before_stop_exit(move || {
            let began = std::time::Instant::now();
            while began.elapsed() < Duration::from_secs(10) {
                let _ = store.commit();
                let complete = store.stats.complete_epoch.load(Ordering::Relaxed);
                let due = waiting
                    .marks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .any(|m| m.front().is_some_and(|(e, _)| *e <= complete));
                if !due && !waiting.busy.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(POLL);
            }
        });
        let mut publisher = Publisher {
            dir: dir.clone(),
            producer,
            group,
            marker_topic,
            id,
            commit,
            commits: 0,
            committed_epoch: resumed,
            store: e.store,
            stats: e.stats,
            shared: Arc::clone(&shared),
        };
        publisher.report();
        let thread = std::thread::Builder::new()
            .name("kafka-publisher".into())
            .spawn(move || {
                if let Err(e) = publisher.run() {
                    crate::runtime::fatal(&format!("the exactly-once Kafka sink failed: {e:#}"));
                }
            })
            .context("cannot start the Kafka publisher")?;
        Ok(Self {
            dir,
            files,
            shared,
            publisher: Some(thread),
            ended: false,
        })
    }

    fn file(&mut self, stream: &str) -> anyhow::Result<&mut (BufWriter<File>, u64)> {
        if !self.files.contains_key(stream) {
            let path = self.dir.join(format!("{stream}.jsonl"));
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            self.files
                .insert(stream.to_string(), (BufWriter::new(f), 0));
        }
        // Inserted above when missing.
        Ok(self.files.get_mut(stream).expect("inserted above"))
    }

    /// Spools one record of `stream`.
    pub fn append(&mut self, stream: &str, r: &Held) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(r).context("cannot encode a Kafka record")?;
        line.push('\n');
        let (w, len) = self.file(stream)?;
        w.write_all(line.as_bytes())
            .context("cannot write the Kafka spool")?;
        *len += line.len() as u64;
        Ok(())
    }

    /// The spool's length at checkpoint `epoch` (handed to the OS), and its path.
    pub fn written(&mut self, stream: &str, epoch: EventTime) -> anyhow::Result<(u64, PathBuf)> {
        let (w, len) = self.file(stream)?;
        w.flush().context("cannot write the Kafka spool")?;
        let len = *len;
        self.shared
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(stream.to_string())
            .or_default()
            .push_back((epoch, len));
        Ok((len, self.dir.join(format!("{stream}.jsonl"))))
    }

    /// `stream` ended (the end of the input).
    pub fn finish(&mut self, _stream: &str) {
        self.ended = true;
    }
}

impl Drop for Transactions {
    /// At the end of the input, the last records wait for the checkpoint that covers them (its
    /// parts are being written by now): they are published once it is complete, within half a
    /// minute; otherwise the next start publishes them. At a stop, what is covered goes out.
    fn drop(&mut self) {
        let ended = self.ended;
        let began = std::time::Instant::now();
        while ended && began.elapsed() < Duration::from_secs(30) {
            if !self.shared.waiting() {
                break;
            }
            std::thread::sleep(POLL);
        }
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Some(t) = self.publisher.take() {
            let _ = t.join();
        }
    }
}

impl Publisher {
    /// Publishes whatever complete checkpoints cover, until the sink closes.
    fn run(&mut self) -> anyhow::Result<()> {
        loop {
            let closing = self.shared.closing.load(Ordering::Relaxed);
            if self.shared.waiting() {
                // The checkpoint writer finds complete epochs as it writes parts, at most ten
                // times a second: look now, or the last parts of a quiet moment wait for the next.
                let _ = self.store.commit();
            }
            self.publish()?;
            if closing {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends, in one transaction, every spooled record a complete checkpoint covers.
    fn publish(&mut self) -> anyhow::Result<()> {
        let complete = self.store.stats.complete_epoch.load(Ordering::Relaxed);
        let mut targets = self.shared.published();
        let mut any = false;
        self.shared.busy.store(true, Ordering::Release);
        {
            let mut marks = self.shared.marks.lock().unwrap_or_else(|e| e.into_inner());
            for (stream, m) in marks.iter_mut() {
                while m.front().is_some_and(|(e, _)| *e <= complete) {
                    let (_, len) = m.pop_front().expect("checked above");
                    let t = targets.entry(stream.clone()).or_insert(0);
                    if len > *t {
                        *t = len;
                        any = true;
                    }
                }
            }
        }
        if !any {
            self.shared.busy.store(false, Ordering::Release);
            return Ok(());
        }
        let published = self.shared.published();
        let next = self.commit + 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("commits.log"))
            .context("cannot open the Kafka commit log")?;
        log.write_all(log_line(next, &targets).as_bytes())
            .and_then(|()| log.sync_data())
            .context("cannot write the Kafka commit log")?;
        let producer = Arc::clone(&self.producer);
        txn_step("begin", || producer.begin_transaction())?;
        let mut records = 0u64;
        for (stream, to) in &targets {
            let from = published.get(stream).copied().unwrap_or(0);
            if *to > from {
                records += self.send_range(stream, from, *to)?;
            }
        }
        let mut marker = TopicPartitionList::new();
        marker.add_partition_offset(&self.marker_topic, 0, Offset::Offset(next as i64))?;
        txn_step("marking the commit", || {
            producer.send_offsets_to_transaction(&marker, &self.group, TXN_TIMEOUT)
        })?;
        txn_step("commit", || producer.commit_transaction(TXN_TIMEOUT))?;
        self.commit = next;
        self.commits += 1;
        self.committed_epoch = complete;
        *self
            .shared
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = targets;
        self.shared.busy.store(false, Ordering::Release);
        tracing::debug!(commit = next, records, "Kafka transaction committed");
        self.report();
        Ok(())
    }

    /// Sends the records of `stream`'s spool in bytes `[from, to)`; returns how many.
    fn send_range(&self, stream: &str, from: u64, to: u64) -> anyhow::Result<u64> {
        let path = self.dir.join(format!("{stream}.jsonl"));
        let mut f = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        f.seek(SeekFrom::Start(from))?;
        let reader = std::io::BufReader::new(f.take(to - from));
        let mut n = 0;
        for line in reader.lines() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            let r: Held = serde_json::from_str(&line)
                .with_context(|| format!("{} is damaged", path.display()))?;
            crate::kafka::send_held(&self.producer, &r)?;
            n += 1;
        }
        Ok(n)
    }

    fn report(&self) {
        let published = self.shared.published();
        let spooled: u64 = self
            .shared
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(s, m)| Some(m.back()?.1.saturating_sub(*published.get(s)?)))
            .sum();
        self.stats.set_transactions(
            "kafka",
            TransactionStatus {
                id: self.id.clone(),
                commits: self.commits,
                committed_epoch: self.committed_epoch,
                waiting: spooled,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_log_gives_a_commits_offsets_and_forgets_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("commits.log");
        let at = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(s, o)| (s.to_string(), *o)).collect()
        };
        let text = [
            log_line(1, &at(&[("prices", 10), ("dead_letter", 0)])),
            log_line(2, &at(&[("prices", 25), ("dead_letter", 7)])),
            // Written before a transaction that never committed.
            log_line(3, &at(&[("prices", 40), ("dead_letter", 7)])),
        ]
        .concat();
        std::fs::write(&log, &text).unwrap();
        assert_eq!(
            offsets_of(&log, 2).unwrap(),
            at(&[("prices", 25), ("dead_letter", 7)])
        );
        // Entry 3 is gone: the next commit writes its own.
        assert!(!std::fs::read_to_string(&log).unwrap().contains("\n3 "));
        assert!(offsets_of(&log, 0).unwrap().is_empty());
        std::fs::write(&log, &text).unwrap();
        let e = offsets_of(&log, 7).unwrap_err().to_string();
        assert!(e.contains("has no entry for Kafka commit 7"), "{e}");
    }
}
