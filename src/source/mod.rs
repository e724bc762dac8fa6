//! Sources: readers of raw messages (files, Kafka, generators) and the timely operator that turns
//! them into event-timestamped records.
//!
//! A [`Reader`] owns some partitions of one topic and hands out raw message values. A [`Decoder`]
//! (supplied by a market dataflow) turns a value into records, ignored events and malformed
//! records. The [`source`] (in `operator.rs`: read on a partition's owner, decode on any worker
//! of its process, sequence back on the owner) applies the per-partition watermark and lateness
//! rule of [`crate::time`] in partition order, stamps records at its capability, sends malformed
//! and late records to a dead-letter stream, and holds its capability at the minimum watermark
//! of its live partitions, so the timely frontier is the watermark.

pub mod file;
pub mod generated;
pub mod kafka;
mod operator;

pub use operator::source;

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::ExchangeData;

use crate::result::{DeadLetter, Place};
use crate::time::{EventTime, Timed};

/// Where a partition's messages come from; names the position in dead-letter records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A Kafka partition.
    Kafka(i32),
    /// An input file (`-` is standard input); positions are 1-based line numbers.
    File(String),
    /// A generated stream; positions are message sequence numbers.
    Generated(String),
}

/// One partition owned by a reader.
#[derive(Clone, Debug)]
pub struct PartitionInfo {
    /// Number used to order ties between partitions (Kafka partition, or file index).
    pub id: u32,
    /// Where its messages come from.
    pub origin: Origin,
}

/// What a reader can say after a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// More messages may be ready right away.
    More,
    /// Nothing ready now; try again after at most this long.
    Idle(Duration),
    /// Every partition of this reader has ended.
    Done,
}

/// A per-worker reader of some partitions of one topic.
pub trait Reader {
    /// The partitions this reader owns, indexed by slot.
    fn partitions(&self) -> &[PartitionInfo];
    /// Reads up to `budget` messages, giving each as `(slot, offset, value, timestamp)` (the
    /// Kafka message timestamp, ms, when there is one).
    fn read(&mut self, budget: usize, out: &mut OnMessage<'_>) -> anyhow::Result<ReadStatus>;
    /// Whether the partition in `slot` has ended (it no longer holds the watermark back).
    fn is_done(&self, slot: usize) -> bool;
    /// Takes over partitions that appeared since the last call (appended to `partitions()`);
    /// called before each `read`.
    fn refresh(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Whether the partition in `slot` is idle: caught up and quiet for the idle timeout, so it
    /// does not hold the watermark back until it receives data again.
    fn is_idle(&self, _slot: usize) -> bool {
        false
    }
    /// The reader's clock, which event time follows when every partition is idle: the wall
    /// clock, or a simulation's own clock.
    fn now(&self) -> EventTime {
        crate::time::now_ms()
    }
    /// Messages behind the end of the partition, when the reader knows.
    fn lag(&self, _slot: usize) -> Option<i64> {
        None
    }
    /// Gives the reader a way to wake its source operator from another thread when data
    /// arrives, so that `Idle` can wait long without adding latency.
    fn set_waker(&mut self, _wake: Waker) {}
    /// Where the partition in `slot` stands: reading resumes right after the last message read.
    fn position(&self, slot: usize) -> ResumePoint;
}

/// Takes one message read: `(slot, offset, value, Kafka timestamp)`.
pub type OnMessage<'a> = dyn FnMut(usize, u64, &[u8], Option<EventTime>) + 'a;

/// A partition's reading position, saved in checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The partition ([`PartitionInfo::id`]).
    pub id: u32,
    /// Next Kafka offset to read, or the byte offset in a file.
    pub offset: u64,
    /// Messages before `offset` (file lines), so positions in dead letters stay the same.
    pub seq: u64,
    /// Where a bounded Kafka read stops (`--until-end`), kept so a resumed run stops there too.
    pub end: Option<u64>,
}

/// Wakes a source operator; callable from any thread.
pub(crate) type Waker = std::sync::Arc<dyn Fn() + Send + Sync>;

impl Origin {
    /// Short name of the partition for logs and metrics.
    pub fn label(&self) -> String {
        match self {
            Origin::Kafka(p) => p.to_string(),
            Origin::File(f) => f.clone(),
            Origin::Generated(s) => s.clone(),
        }
    }
}

/// Opens, on each worker, the reader for the partitions that worker owns.
pub trait ReaderFactory: Send + Sync {
    /// The reader for worker `index` of `peers`, resuming its partitions at `resume` (the
    /// partitions it owns that `resume` does not name start as in a fresh run).
    fn open(
        &self,
        index: usize,
        peers: usize,
        resume: &[ResumePoint],
    ) -> anyhow::Result<Box<dyn Reader>>;
    /// The topic's ordinal in the job (see [`owns`]).
    fn topic_ordinal(&self) -> usize;
    /// How many partitions the topic has, when known before reading: the source spreads
    /// decoding over all workers unless they divide evenly among them.
    fn partition_count(&self) -> Option<usize> {
        None
    }
    /// Whether a run over this input can be resumed from a checkpoint (it can be read again
    /// from a saved position); a clear error when not.
    fn resumable(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The fixed partition assignment rule: partition `p` of the topic with ordinal `t` (0 for the
/// first topic of the job, 1 for the second, ...) belongs to worker `(t + p) % peers`. Topics
/// start on different workers, and partitions added later never move existing ones.
pub(crate) fn owns(topic_ordinal_plus_partition: usize, worker: usize, peers: usize) -> bool {
    topic_ordinal_plus_partition % peers == worker
}

/// One outcome of decoding a message value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Decoded<R> {
    /// A well-formed record for the metrics.
    Record {
        /// Position of the record within the message.
        index: u32,
        /// Event time (ms).
        time: EventTime,
        /// The record.
        rec: R,
    },
    /// A well-formed event the metrics do not use: only counted. It still advances the
    /// partition's watermark when it has an event time.
    Ignored {
        /// Position within the message.
        index: u32,
        /// The event type, for the counters.
        kind: Cow<'static, str>,
        /// Its event time, when it has a valid key and time.
        time: Option<EventTime>,
    },
    /// A malformed record: counted by `reason` and dead-lettered.
    Malformed {
        /// Position within the message.
        index: u32,
        /// Short, stable reason used for counting (e.g. `invalid JSON`).
        reason: Cow<'static, str>,
        /// Details for the dead-letter record (parser message).
        detail: String,
        /// The offending part of the message, when it is not the whole value.
        excerpt: Option<String>,
    },
}

impl<R> Decoded<R> {
    /// A malformed record at `index`, counted under `reason`.
    pub fn malformed(
        index: u32,
        reason: impl Into<Cow<'static, str>>,
        detail: String,
        excerpt: Option<String>,
    ) -> Self {
        Decoded::Malformed {
            index,
            reason: reason.into(),
            detail,
            excerpt,
        }
    }
}

/// Turns one message value into records.
pub trait Decoder: 'static {
    /// The record type produced.
    type Record: ExchangeData + Clone;
    /// Records of this topic are never late: each one counts whenever it arrives, stamped at
    /// the watermark (reference data such as metadata, which a late arrival must still correct).
    const NEVER_LATE: bool = false;
    /// Decodes `value`, appending outcomes to `out` in input order.
    fn decode(&mut self, value: &[u8], out: &mut Vec<Decoded<Self::Record>>);
    /// Decodes `value` of a message with Kafka timestamp `timestamp` (ms), for decoders that
    /// use it.
    fn decode_at(
        &mut self,
        value: &[u8],
        _timestamp: Option<EventTime>,
        out: &mut Vec<Decoded<Self::Record>>,
    ) {
        self.decode(value, out)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes]", &s[..end], s.len())
}

impl Origin {
    /// Where in this partition the message at `offset` was read.
    fn place(&self, offset: u64) -> Place {
        match self {
            Origin::Kafka(p) => Place::Kafka {
                partition: *p,
                offset,
            },
            Origin::File(f) => Place::File {
                file: f.clone(),
                line: offset,
            },
            Origin::Generated(s) => Place::Generated {
                stream: s.clone(),
                seq: offset,
            },
        }
    }
}

/// A partition as the source's watermark sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PartitionWatermark {
    /// Its own watermark (largest event time read minus the max delay).
    pub watermark: EventTime,
    /// Ended: it no longer holds anything back.
    pub done: bool,
    /// Caught up and quiet for the idle timeout.
    pub idle: bool,
}

/// **The source's watermark**, the only copy: the least watermark over the partitions still
/// running and not idle; when every running partition is idle, event time follows the wall
/// clock `now` minus `delay` (never going back), so a quiet topic still lets its windows
/// finalise; `None` once every partition ended.
pub(crate) fn source_watermark(
    parts: &[PartitionWatermark],
    now: EventTime,
    delay: u64,
) -> Option<EventTime> {
    let running = parts.iter().filter(|p| !p.done);
    let live_min = running
        .clone()
        .filter(|p| !p.idle)
        .map(|p| p.watermark)
        .min();
    match live_min {
        Some(wm) => Some(wm),
        None => {
            let seen = running.map(|p| p.watermark).max()?;
            Some(seen.max(now.saturating_sub(delay)))
        }
    }
}

/// A source's outputs: records stamped at the watermark, and dead-letter lines.
pub(crate) type SourceStreams<'s, R> = (
    StreamVec<'s, EventTime, Timed<R>>,
    StreamVec<'s, EventTime, DeadLetter>,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn p(watermark: EventTime, done: bool, idle: bool) -> PartitionWatermark {
        PartitionWatermark {
            watermark,
            done,
            idle,
        }
    }

    #[test]
    fn the_slowest_live_partition_holds_the_watermark() {
        assert_eq!(
            source_watermark(&[p(5, false, false), p(9, false, false)], 100, 10),
            Some(5)
        );
        assert_eq!(
            source_watermark(&[p(5, true, false), p(9, false, false)], 100, 10),
            Some(9),
            "an ended partition holds nothing back"
        );
        assert_eq!(
            source_watermark(&[p(5, false, true), p(9, false, false)], 100, 10),
            Some(9),
            "nor does an idle one"
        );
        assert_eq!(
            source_watermark(&[p(5, true, false)], 100, 10),
            None,
            "all ended"
        );
        assert_eq!(source_watermark(&[], 100, 10), None, "owns nothing");
    }

    #[test]
    fn all_idle_follows_the_wall_clock_and_never_goes_back() {
        assert_eq!(
            source_watermark(&[p(5, false, true), p(7, false, true)], 100, 10),
            Some(90)
        );
        assert_eq!(source_watermark(&[p(95, false, true)], 100, 10), Some(95));
    }
}
