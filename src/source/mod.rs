//! Sources: readers of raw messages (files, Kafka, generators) and the timely operator that turns
//! them into event-timestamped records.
//!
//! A [`Reader`] owns some partitions of one topic and hands out raw message values. A [`Decoder`]
//! (supplied by a market dataflow) turns a value into records, ignored events and malformed
//! records. The [`source`] operator applies the per-partition watermark and lateness rule of
//! [`crate::time`], stamps records at its capability, sends malformed and late records to a
//! dead-letter stream, and holds its capability at the minimum watermark of its live partitions,
//! so the timely frontier is the watermark.

pub mod file;
pub mod generated;
pub mod kafka;

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};
use timely::ExchangeData;

use crate::checkpoint::{self, Entry};
use crate::context::OperatorContext;
use crate::result::{DeadLetter, Place, DEAD_LETTER_RAW_MAX};
use crate::stats::{PartitionStatus, TopicCounts};
use crate::time::{EventTime, PartitionClock, Position, Timed, Timeliness, WindowSpec};

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
#[derive(Debug, Clone, PartialEq)]
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

/// How often a source publishes its partitions' status to the shared stats.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// Reads up to this many messages per activation before yielding to other operators.
const READ_BUDGET: usize = 4096;

/// ... and about this many bytes, so that large messages also leave room for the other
/// operators, and watermarks (and checkpoints) advance in small steps.
const READ_BYTES: usize = 1 << 20;

/// A source's checkpointed state: where each partition stands and its clock, and the
/// corrections it sent stamped at or after the epoch (the only records read before the cut
/// whose times fall after it).
#[derive(Serialize, Deserialize)]
struct SourceState<R> {
    partitions: Vec<(ResumePoint, PartitionClock)>,
    inflight: Vec<(EventTime, Timed<R>)>,
}

/// Builds the source operator for `topic`: records (stamped at the source's watermark) and
/// dead-letter lines. `factory` is opened on each worker; `decoder` is cloned per worker.
/// With `ckpt`, it resumes from the checkpoint's positions and writes its part whenever its
/// capability crosses checkpoint epochs.
pub fn source<'s, D>(
    scope: Scope<'s, EventTime>,
    topic: &str,
    factory: std::sync::Arc<dyn ReaderFactory>,
    decoder: D,
    spec: WindowSpec,
    ctx: OperatorContext,
) -> SourceStreams<'s, D::Record>
where
    D: Decoder,
{
    let OperatorContext { stats, ckpt, .. } = ctx;
    let mut builder = OperatorBuilder::new(format!("Source({topic})"), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(Rc::clone(&info.address));
    let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
    let (records_out, records) = builder.new_output();
    let (dead_out, dead) = builder.new_output();
    let mut records_out: OutputBuilder<_, timely::container::CapacityContainerBuilder<Vec<_>>> =
        OutputBuilder::from(records_out);
    let mut dead_out: OutputBuilder<
        _,
        timely::container::CapacityContainerBuilder<Vec<DeadLetter>>,
    > = OutputBuilder::from(dead_out);
    let (index, peers) = (scope.index(), scope.peers());
    let ordinal = factory.topic_ordinal();
    let topic = topic.to_string();
    let mut decoder = decoder;

    builder.build(move |mut start_caps| {
        // After a rescale every old worker's partitions are offered; the reader takes those
        // this worker owns now, and the corrections in flight go with their partitions.
        let restored: Option<SourceState<D::Record>> = ckpt.as_ref().and_then(|c| {
            let all = c.restored_all::<SourceState<D::Record>>(index);
            (!all.is_empty()).then(|| {
                let mut merged = SourceState { partitions: Vec::new(), inflight: Vec::new() };
                for st in all {
                    merged.partitions.extend(st.partitions);
                    merged.inflight.extend(st.inflight.into_iter().filter(|(_, r)| {
                        owns(ordinal + r.pos.partition as usize, index, peers)
                    }));
                }
                merged
            })
        });
        let epoch = ckpt.as_ref().and_then(|c| c.store.epoch()).unwrap_or(0);
        // Resumed: nothing read from here on is stamped before the epoch.
        start_caps.iter_mut().for_each(|c| c.downgrade(&epoch));
        let mut next_epoch = ckpt.as_ref().map_or(EventTime::MAX, |c| c.store.after(epoch));
        let (resume, mut restored_clocks, mut inflight) = match restored {
            Some(st) => {
                let (points, clocks): (Vec<_>, Vec<_>) = st.partitions.into_iter().unzip();
                let ids: Vec<u32> = points.iter().map(|p| p.id).collect();
                let inflight: Vec<(EventTime, Timed<D::Record>)> =
                    st.inflight.into_iter().filter(|(t, _)| *t >= epoch).collect();
                (points, ids.into_iter().zip(clocks).collect::<Vec<_>>(), inflight)
            }
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        // Restored corrections go out again, at their own times (and so back into `inflight`).
        let mut pending_corrections: Vec<(EventTime, Timed<D::Record>)> = std::mem::take(&mut inflight);
        let mut caps: Option<Vec<Capability<EventTime>>> = Some(start_caps);
        let mut reader: Option<Box<dyn Reader>> = None;
        // The reader's partitions (cached; they only grow) and, per partition, its clock.
        let mut parts: Vec<PartitionInfo> = Vec::new();
        let mut clocks: Vec<PartitionClock> = Vec::new();
        // Messages and records read per partition.
        let mut counts: Vec<(u64, u64)> = Vec::new();
        let mut tally = TopicCounts::default();
        let mut decoded = Vec::new();
        let mut pending_records = Vec::new();
        let mut pending_dead: Vec<DeadLetter> = Vec::new();
        let mut last_status = std::time::Instant::now() - STATUS_EVERY;
        // Mean message size (bytes) seen so far, for the per-activation budget.
        let mut mean_len: usize = 256;

        move |_frontiers| {
            let Some(held) = caps.as_mut() else { return };
            // A graceful stop: read nothing more, hold the capability, let the job settle.
            if ckpt.is_some() && crate::runtime::stopping() {
                return;
            }
            if reader.is_none() {
                match factory.open(index, peers, &resume) {
                    Ok(mut r) => {
                        let sync_activator = sync_activator.clone();
                        r.set_waker(std::sync::Arc::new(move || {
                            // Fails only once the worker is gone, when there is nothing to wake.
                            let _ = sync_activator.activate();
                        }));
                        reader = Some(r);
                    }
                    Err(e) => crate::runtime::fatal(&format!("cannot open input {topic}: {e:#}")),
                }
            }
            // The reader was just set if it was missing.
            let r = reader.as_mut().unwrap();
            if let Err(e) = r.refresh() {
                crate::runtime::fatal(&format!("reading {topic} failed: {e:#}"));
            }
            if r.partitions().len() != parts.len() {
                parts = r.partitions().to_vec();
                clocks.resize(parts.len(), PartitionClock::default());
                counts.resize(parts.len(), (0, 0));
                for (id, clock) in restored_clocks.drain(..) {
                    if let Some(slot) = parts.iter().position(|p| p.id == id) {
                        clocks[slot] = clock;
                    }
                }
            }
            let held_time = *held[0].time();
            let status = {
                let budget = (READ_BYTES / mean_len.max(1)).clamp(16, READ_BUDGET);
                let now = crate::time::now_ms();
                let mut on_message = |slot: usize, offset: u64, value: &[u8], timestamp: Option<EventTime>| {
                    mean_len = (mean_len * 15 + value.len()) / 16;
                    tally.messages += 1;
                    decoded.clear();
                    // A decoder that panics (a bug: no input should make one) costs the
                    // message, dead-lettered, not the job: a restart would read it again.
                    if let Err(why) = crate::runtime::contain(|| decoder.decode_at(value, timestamp, &mut decoded)) {
                        decoded.clear();
                        decoded.push(Decoded::malformed(0, "decoder failed", why, None));
                    }
                    counts[slot].0 += 1;
                    counts[slot].1 += decoded.len() as u64;
                    let clock = &mut clocks[slot];
                    let part = &parts[slot];
                    // The watermark before this message decides for all its records.
                    let closed = clock.closed(&spec, held_time);
                    let mut newest: Option<EventTime> = None;
                    let mut dead = |index: u32, reason: &str, detail: &str, time: Option<EventTime>, excerpt: Option<&str>| {
                        let raw = match excerpt {
                            Some(x) => Cow::Borrowed(x),
                            None => String::from_utf8_lossy(value),
                        };
                        pending_dead.push(DeadLetter {
                            topic: topic.clone(),
                            place: part.origin.place(offset),
                            index,
                            reason: reason.to_string(),
                            detail: detail.to_string(),
                            event_time: time,
                            raw: cut(&raw, DEAD_LETTER_RAW_MAX),
                        });
                    };
                    for item in decoded.drain(..) {
                        match item {
                            Decoded::Record { index, time, rec } => {
                                if let Err(bad) = spec.admit(time, now) {
                                    *tally.malformed.entry(bad.reason.to_string()).or_default() += 1;
                                    dead(index, bad.reason, &bad.detail, Some(time), None);
                                    continue;
                                }
                                let pos = Position { partition: part.id, offset, index };
                                let timeliness = match spec.classify(closed, time) {
                                    _ if D::NEVER_LATE => Timeliness::OnTime { min_end: 0 },
                                    t => t,
                                };
                                match timeliness {
                                    Timeliness::Late { end, closed } => {
                                        tally.late += 1;
                                        let detail = format!(
                                            "window ends at {end}; with {} ms allowed lateness it closed before the watermark {closed}",
                                            spec.allowed_ms
                                        );
                                        dead(index, "late", &detail, Some(time), None);
                                    }
                                    Timeliness::OnTime { min_end } => {
                                        newest = newest.max(Some(time));
                                        tally.records += 1;
                                        pending_records.push(Timed { time, pos, rec, min_end });
                                    }
                                    // Stamped at the (last) final window's end or later, so it
                                    // always reaches that window after its final result.
                                    Timeliness::Correction { min_end, corrects } => {
                                        newest = newest.max(Some(time));
                                        tally.corrections += 1;
                                        let rec = Timed { time, pos, rec, min_end };
                                        pending_corrections.push((corrects.max(held_time), rec));
                                    }
                                }
                            }
                            Decoded::Ignored { index, kind, time } => {
                                if let Some(t) = time {
                                    match spec.admit(t, now) {
                                        Ok(()) => newest = newest.max(Some(t)),
                                        Err(bad) => {
                                            *tally.malformed.entry(bad.reason.to_string()).or_default() += 1;
                                            dead(index, bad.reason, &bad.detail, Some(t), None);
                                            continue;
                                        }
                                    }
                                }
                                *tally.ignored.entry(kind.into_owned()).or_default() += 1;
                            }
                            Decoded::Malformed {
                                index,
                                reason,
                                detail,
                                excerpt,
                            } => {
                                *tally.malformed.entry(reason.to_string()).or_default() += 1;
                                dead(index, &reason, &detail, None, excerpt.as_deref());
                            }
                        }
                    }
                    if let Some(t) = newest {
                        clock.observe(t);
                    }
                };
                r.read(budget, &mut on_message)
            };
            let status = match status {
                Ok(s) => s,
                Err(e) => crate::runtime::fatal(&format!("reading {topic} failed: {e:#}")),
            };

            if !pending_records.is_empty() {
                records_out
                    .activate()
                    .session(&held[0])
                    .give_iterator(pending_records.drain(..));
            }
            if !pending_corrections.is_empty() {
                pending_corrections.sort_by_key(|(t, _)| *t);
                let mut out = records_out.activate();
                if ckpt.is_some() {
                    inflight.extend(
                        pending_corrections
                            .iter()
                            .filter(|(t, _)| *t >= next_epoch)
                            .cloned(),
                    );
                }
                for (stamp, r) in pending_corrections.drain(..) {
                    let cap = held[0].delayed(&stamp);
                    out.session(&cap).give(r);
                }
            }
            if !pending_dead.is_empty() {
                dead_out
                    .activate()
                    .session(&held[1])
                    .give_iterator(pending_dead.drain(..));
            }
            let read_any = tally.messages > 0;
            stats.absorb(&topic, &mut tally);

            let parts_now: Vec<PartitionWatermark> = clocks
                .iter()
                .enumerate()
                .map(|(slot, c)| PartitionWatermark {
                    watermark: c.watermark(&spec),
                    done: r.is_done(slot),
                    idle: r.is_idle(slot),
                })
                .collect();
            let target = source_watermark(&parts_now, r.now(), spec.lateness_ms);
            // Partition facts go out with every batch read (so per-partition and per-topic counts
            // agree), and at least every STATUS_EVERY for lag and idleness.
            if read_any || last_status.elapsed() >= STATUS_EVERY || status == ReadStatus::Done || target.is_none() {
                last_status = std::time::Instant::now();
                for (slot, part) in r.partitions().iter().enumerate() {
                    let c = clocks[slot];
                    let st = PartitionStatus {
                        watermark: c.max_seen.map(|_| c.watermark(&spec)),
                        max_event_time: c.max_seen,
                        lag: r.lag(slot),
                        idle: r.is_idle(slot),
                        done: r.is_done(slot),
                        messages: counts[slot].0,
                        records: counts[slot].1,
                    };
                    stats.set_partition(&topic, &part.origin.label(), st);
                }
            }
            // The state at each epoch this source's capability now passes: every record read so
            // far is stamped before it.
            let new_time = match (status, target) {
                (ReadStatus::Done, _) | (_, None) => EventTime::MAX,
                (_, Some(wm)) => spec.round_down(wm).max(*held[0].time()),
            };
            if let Some(c) = ckpt.as_ref().filter(|_| new_time >= next_epoch && next_epoch < EventTime::MAX) {
                let hi = if new_time == EventTime::MAX {
                    EventTime::MAX
                } else {
                    c.store.floor(new_time)
                };
                let state = SourceState {
                    partitions: (0..parts.len()).map(|s| (r.position(s), clocks[s])).collect(),
                    inflight: std::mem::take(&mut inflight),
                };
                c.write(index, vec![Entry { lo: next_epoch, hi, body: checkpoint::encode(&state) }]);
                next_epoch = hi.saturating_add(c.store.interval());
                inflight = state.inflight;
                inflight.retain(|(t, _)| *t >= next_epoch);
            }
            match (status, target) {
                (ReadStatus::Done, _) | (_, None) => {
                    caps = None;
                    stats.set_watermark(&topic, index, None);
                }
                (status, Some(wm)) => {
                    let t = spec.round_down(wm);
                    if t > *held[0].time() {
                        held.iter_mut().for_each(|c| c.downgrade(&t));
                        stats.set_watermark(&topic, index, Some(t));
                    }
                    match status {
                        ReadStatus::More => activator.activate(),
                        ReadStatus::Idle(d) => activator.activate_after(d),
                        ReadStatus::Done => {}
                    }
                }
            }
        }
    });
    (records, dead)
}

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
