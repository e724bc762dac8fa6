//! Process-wide counters: records in, malformed and late records by reason, ignored events by
//! type, window results out. Sources keep local tallies and fold them in once per activation, so
//! the shared lock is off the per-record path.

use std::collections::BTreeMap;
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
}

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
            if !c.ignored.is_empty() {
                let ignored: u64 = c.ignored.values().sum();
                let _ = write!(s, ", {ignored} ignored");
            }
            s.push('\n');
            for (reason, n) in &c.malformed {
                let _ = writeln!(s, "    malformed: {reason}: {n}");
            }
            for (kind, n) in &c.ignored {
                let _ = writeln!(s, "    ignored event type {kind}: {n}");
            }
        }
        for (stream, n) in &inner.results {
            let _ = writeln!(s, "  output {stream}: {n} final windows");
        }
        s
    }
}
