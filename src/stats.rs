//! Process-wide counters: records in, malformed and late records by reason, ignored events by
//! type, window results out. Sources keep local tallies and fold them in once per activation, so
//! the shared lock is off the per-record path.

use std::collections::BTreeMap;

use crate::result::ResultLine;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Counts for one input topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicCounts {
    /// Messages read (Kafka messages, file lines, simulator messages).
    pub messages: u64,
    /// Well-formed records counted in a window.
    pub records: u64,
    /// Late records (dead-lettered).
    pub late: u64,
    /// Records that arrived after their window's final result, within the allowed lateness.
    pub corrections: u64,
    /// Malformed records by reason (dead-lettered).
    pub malformed: BTreeMap<String, u64>,
    /// Events the metrics do not use, by event type (only counted).
    pub ignored: BTreeMap<String, u64>,
}

impl TopicCounts {
    /// Adds another tally into this one.
    pub fn absorb(&mut self, o: &TopicCounts) {
        self.messages += o.messages;
        self.records += o.records;
        self.late += o.late;
        self.corrections += o.corrections;
        for (k, v) in &o.malformed {
            *self.malformed.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.ignored {
            *self.ignored.entry(k.clone()).or_default() += v;
        }
    }

    /// Total malformed records.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.values().sum()
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == TopicCounts::default()
    }
}

/// Shared counters of one process.
#[derive(Clone, Default)]
pub struct RunStats {
    inner: Arc<Mutex<StatsInner>>,
}

#[derive(Default)]
struct StatsInner {
    topics: BTreeMap<String, TopicCounts>,
    results: BTreeMap<String, u64>,
    partitions: BTreeMap<(String, String), PartitionStatus>,
    /// Each source worker's capability (its watermark); `None` once the source ended.
    watermarks: BTreeMap<(String, usize), Option<u64>>,
    /// Open windows and keys held by each window operator worker.
    open: BTreeMap<(String, usize), (u64, u64)>,
    latency: Histogram,
    /// The latest final result per (stream, key).
    latest: BTreeMap<(String, String), ResultLine>,
    /// The most recent results of each stream, oldest first (`/history`).
    recent: BTreeMap<String, std::collections::VecDeque<ResultLine>>,
    /// Sinks that write in the background (PostgreSQL), by name.
    sinks: BTreeMap<String, SinkStatus>,
    /// Transactional sinks (exactly-once Kafka), by name.
    transactions: BTreeMap<String, TransactionStatus>,
    /// The job's key groups and those of each of this process's workers.
    key_groups: Option<KeyGroupStatus>,
}

/// A transactional sink's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionStatus {
    /// The transactional id.
    pub id: String,
    /// Transactions committed by this run.
    pub commits: u64,
    /// Every result of checkpoint epochs up to this one is committed (ms of event time).
    pub committed_epoch: u64,
    /// Spooled bytes waiting for a complete checkpoint and their transaction.
    pub waiting: u64,
}

/// How the job's keys are spread: the key groups, the workers, and the groups of each of this
/// process's workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyGroupStatus {
    /// Key groups of the job.
    pub groups: u64,
    /// Workers of the job (all processes).
    pub workers: usize,
    /// (worker, groups it owns) for this process's workers.
    pub local: Vec<(usize, u64)>,
    /// The worker count of the checkpoint this run rescaled from.
    pub rescaled_from: Option<usize>,
}

/// A sink writing in the background: whether its destination takes writes, and what waits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStatus {
    /// The destination answered the last attempt.
    pub up: bool,
    /// Bytes of results waiting (spooled on disk).
    pub backlog_bytes: u64,
    /// Failed attempts so far.
    pub failures: u64,
}

/// Upper bounds (seconds) of the emit-latency histogram buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A cumulative histogram in the Prometheus sense.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound of [`LATENCY_BUCKETS`].
    pub buckets: [u64; 14],
    /// Number of observations.
    pub count: u64,
    /// Sum of observations (seconds).
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        self.count += 1;
        self.sum += secs;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i] += 1;
            }
        }
    }

    /// The bucket bound below which a fraction `q` of observations fall (an upper estimate).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let want = (self.count as f64 * q).ceil() as u64;
        (self.count > 0).then(|| {
            LATENCY_BUCKETS
                .iter()
                .zip(self.buckets)
                .find(|(_, n)| *n >= want)
                .map_or(f64::INFINITY, |(b, _)| *b)
        })
    }
}

/// Most (stream, key) pairs whose latest result is kept for `/status`.
const LATEST_MAX: usize = 2000;

/// Results kept per stream for `/history`.
const RECENT_MAX: usize = 5000;

/// What a source knows about one of its partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The partition's watermark (largest event time seen minus lateness), if it has data.
    pub watermark: Option<u64>,
    /// Largest event time seen.
    pub max_event_time: Option<u64>,
    /// Messages behind the end of the partition (Kafka only).
    pub lag: Option<i64>,
    /// Caught up and quiet for the idle timeout: not holding the watermark back.
    pub idle: bool,
    /// Ended (file end, `--until-end` offset, end of a bounded simulation).
    pub done: bool,
    /// Messages read from it.
    pub messages: u64,
    /// Records read from it (in windows, late or malformed).
    pub records: u64,
}

impl RunStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        // A worker that panicked while holding the lock leaves counters that are still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds a source's local tally for `topic` into the process totals and clears it.
    pub fn absorb(&self, topic: &str, tally: &mut TopicCounts) {
        if tally.is_empty() {
            return;
        }
        self.lock()
            .topics
            .entry(topic.to_string())
            .or_default()
            .absorb(tally);
        *tally = TopicCounts::default();
    }

    /// Counts window results written for an output stream.
    pub fn add_results(&self, stream: &str, n: u64) {
        *self.lock().results.entry(stream.to_string()).or_default() += n;
    }

    /// Records the status of a partition, named `label` (a Kafka partition number or a file).
    pub fn set_partition(&self, topic: &str, label: &str, status: PartitionStatus) {
        self.lock()
            .partitions
            .insert((topic.to_string(), label.to_string()), status);
    }

    /// Records a source worker's watermark (`None` when it ended).
    pub fn set_watermark(&self, topic: &str, worker: usize, t: Option<u64>) {
        self.lock()
            .watermarks
            .insert((topic.to_string(), worker), t);
    }

    /// Each topic's watermark in this process: the least over its running source workers
    /// (`None` when every one ended).
    pub fn watermarks(&self) -> BTreeMap<String, Option<u64>> {
        let mut out: BTreeMap<String, Option<u64>> = BTreeMap::new();
        for ((topic, _), t) in &self.lock().watermarks {
            let e = out.entry(topic.clone()).or_insert(None);
            if let Some(t) = t {
                *e = Some(e.map_or(*t, |c| c.min(*t)));
            }
        }
        out
    }

    /// Records how many windows and keys a window operator worker holds open.
    pub fn set_open(&self, stream: &str, worker: usize, windows: u64, keys: u64) {
        self.lock()
            .open
            .insert((stream.to_string(), worker), (windows, keys));
    }

    /// Open windows and keys per stream in this process.
    pub fn open(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((stream, _), (w, k)) in &self.lock().open {
            let e = out.entry(stream.clone()).or_default();
            e.0 = e.0.max(*w);
            e.1 += k;
        }
        out
    }

    /// Records a written result: the latest value for its key and, for a final result, its
    /// emit latency.
    pub fn record_result(&self, line: &ResultLine, latency_secs: Option<f64>) {
        let mut inner = self.lock();
        if let Some(l) = latency_secs {
            inner.latency.observe(l);
        }
        let k = (line.stream.to_string(), line.key.clone());
        if inner.latest.len() < LATEST_MAX || inner.latest.contains_key(&k) {
            inner.latest.insert(k, line.clone());
        }
        let recent = inner.recent.entry(line.stream.to_string()).or_default();
        if recent.len() == RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back(line.clone());
    }

    /// The most recent results of `stream` (up to a few thousand) whose window ends after
    /// `since`, oldest first.
    pub fn recent(&self, stream: &str, since: crate::time::EventTime) -> Vec<ResultLine> {
        let inner = self.lock();
        inner.recent.get(stream).map_or_else(Vec::new, |r| {
            r.iter().filter(|l| l.window_end > since).cloned().collect()
        })
    }

    /// Records the state of a background sink.
    pub fn set_sink(&self, name: &str, status: SinkStatus) {
        self.lock().sinks.insert(name.to_string(), status);
    }

    /// Records a transactional sink's state.
    pub fn set_transactions(&self, name: &str, status: TransactionStatus) {
        self.lock().transactions.insert(name.to_string(), status);
    }

    /// The transactional sinks' states.
    pub fn transactions(&self) -> BTreeMap<String, TransactionStatus> {
        self.lock().transactions.clone()
    }

    /// Records how the job's keys are spread.
    pub fn set_key_groups(&self, status: KeyGroupStatus) {
        self.lock().key_groups = Some(status);
    }

    /// How the job's keys are spread, once the job started.
    pub fn key_groups(&self) -> Option<KeyGroupStatus> {
        self.lock().key_groups.clone()
    }

    /// The background sinks' states.
    pub fn sinks(&self) -> BTreeMap<String, SinkStatus> {
        self.lock().sinks.clone()
    }

    /// The emit-latency histogram.
    pub fn latency(&self) -> Histogram {
        self.lock().latency.clone()
    }

    /// The latest final result per (stream, key).
    pub fn latest(&self) -> BTreeMap<(String, String), ResultLine> {
        self.lock().latest.clone()
    }

    /// A copy of every partition's status, by (topic, partition label).
    pub fn partitions(&self) -> BTreeMap<(String, String), PartitionStatus> {
        self.lock().partitions.clone()
    }

    /// The live partition with the least watermark — the one holding the job back — per topic.
    pub fn holding_back(&self) -> BTreeMap<String, (String, Option<u64>)> {
        let mut out: BTreeMap<String, (String, Option<u64>)> = BTreeMap::new();
        for ((topic, label), st) in &self.lock().partitions {
            if st.done || st.idle {
                continue;
            }
            let wm = st.watermark;
            match out.get(topic) {
                Some((_, cur)) if cur.unwrap_or(0) <= wm.unwrap_or(0) => {}
                _ => {
                    out.insert(topic.clone(), (label.clone(), wm));
                }
            }
        }
        out
    }

    /// One line of progress: per topic records, rate since `prev`, watermark, lag, and the
    /// partition holding the watermark back.
    pub fn progress_line(&self, prev: &BTreeMap<String, TopicCounts>, secs: f64) -> String {
        let topics = self.topics();
        let parts = self.partitions();
        let back = self.holding_back();
        let mut s = String::new();
        for (topic, c) in &topics {
            let before = prev
                .get(topic)
                .map_or(0, |p| p.records + p.late + p.malformed_total());
            let now = c.records + c.late + c.malformed_total();
            let rate = (now - before) as f64 / secs.max(1e-9);
            let lag: i64 = parts
                .iter()
                .filter(|((t, _), _)| t == topic)
                .filter_map(|(_, p)| p.lag)
                .sum();
            let has_lag = parts
                .iter()
                .any(|((t, _), p)| t == topic && p.lag.is_some());
            let _ = write!(
                s,
                "{topic}: {} records ({rate:.0}/s), {} late, {} malformed",
                c.records,
                c.late,
                c.malformed_total()
            );
            if has_lag {
                let _ = write!(s, ", lag {lag}");
            }
            if let Some((label, wm)) = back.get(topic) {
                let wm = wm.map_or("none yet".to_string(), crate::time::format_ms);
                let _ = write!(s, ", watermark {wm} held by partition {label}");
            }
            s.push_str("; ");
        }
        let results: u64 = self.results().values().sum();
        let _ = write!(s, "{results} window results written");
        s
    }

    /// A copy of the per-topic counts.
    pub fn topics(&self) -> BTreeMap<String, TopicCounts> {
        self.lock().topics.clone()
    }

    /// A copy of the per-stream result counts.
    pub fn results(&self) -> BTreeMap<String, u64> {
        self.lock().results.clone()
    }

    /// A multi-line human summary.
    pub fn summary(&self) -> String {
        let inner = self.lock();
        let mut s = String::new();
        for (topic, c) in &inner.topics {
            let _ = write!(
                s,
                "  input {topic}: {} messages, {} records in windows, {} late, {} malformed",
                c.messages,
                c.records,
                c.late,
                c.malformed_total()
            );
            if c.corrections > 0 {
                let _ = write!(s, ", {} corrections", c.corrections);
            }
            if !c.ignored.is_empty() {
                let ignored: u64 = c.ignored.values().sum();
                let _ = write!(s, ", {ignored} ignored");
            }
            s.push('\n');
            for (reason, n) in &c.malformed {
                let _ = writeln!(s, "    malformed: {}: {n}", crate::text::escaped(reason));
            }
            for (kind, n) in &c.ignored {
                let _ = writeln!(
                    s,
                    "    ignored event type {}: {n}",
                    crate::text::escaped(kind)
                );
            }
        }
        for (stream, n) in &inner.results {
            let _ = writeln!(s, "  output {stream}: {n} final windows");
        }
        let h = &inner.latency;
        if let (Some(p50), Some(p99)) = (h.quantile(0.5), h.quantile(0.99)) {
            let _ = writeln!(
                s,
                "  emit latency (watermark reaches window end → result written): p50 ≤ {:.2} ms, p99 ≤ {:.2} ms over {} results",
                p50 * 1e3,
                p99 * 1e3,
                h.count
            );
        }
        if let Some(peak) = peak_memory_bytes() {
            let _ = writeln!(s, "  peak memory: {:.1} MiB", peak as f64 / 1048576.0);
        }
        s
    }
}

/// Resident memory of this process in bytes (Linux), if known.
pub(crate) fn memory_bytes() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

/// Peak resident memory of this process in bytes (Linux), if known.
pub(crate) fn peak_memory_bytes() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
