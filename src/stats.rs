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
