//! The source operator, in three stages so that one partition keeps every worker busy:
//!
//! 1. **Read** (on the partition's owner): raw messages, cut into chunks of one partition.
//! 2. **Decode** (on any worker): a chunk's messages become records, ignored events and
//!    malformed records. Decoding is the cost and is stateless, so chunks go round-robin to all
//!    workers when the partitions alone would not spread the work evenly.
//! 3. **Sequence** (back on the owner, chunk by chunk in read order): the per-partition
//!    watermark and lateness rule of [`crate::time`], message by message in partition order,
//!    stamping records at the source's capability, dead-lettering malformed and late ones,
//!    holding the capability at the watermark (so the timely frontier is the watermark) and
//!    writing the checkpoint part.
//!
//! Read and Sequence share the owner's worker and a small state ([`Shared`]): the reader's
//! partitions and flags one way, the capability and the progress of sequencing the other.
//! Results are the same whatever the spread: every decision is taken in stage 3, in order.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};
use timely::scheduling::Activator;

use super::{
    cut, owns, source_watermark, Decoded, Decoder, PartitionInfo, PartitionWatermark, ReadStatus,
    Reader, ReaderFactory, ResumePoint, SourceStreams,
};
use crate::checkpoint::{self, Entry};
use crate::context::OperatorContext;
use crate::result::{DeadLetter, DEAD_LETTER_RAW_MAX};
use crate::stats::{PartitionStatus, TopicCounts};
use crate::time::{EventTime, PartitionClock, Position, Timed, Timeliness, WindowSpec};

/// How often a source publishes its partitions' status to the shared stats.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// Reads up to this many messages per activation before yielding to other operators.
const READ_BUDGET: usize = 4096;

/// ... and about this many bytes: one chunk per partition per activation, small enough that
/// chunks spread evenly and watermarks (and checkpoints) advance in small steps.
const READ_BYTES: usize = 256 << 10;

/// Chunks read but not yet sequenced, per worker of the job: the reader waits beyond this.
const IN_FLIGHT_PER_WORKER: u64 = 4;

/// The backlog (chunks outstanding) the other workers of a process reach before a chunk's
/// owner decodes one itself.
const OWNER_BACKLOG: u64 = 3;

/// How often a source whose partitions are all idle looks at its reader's clock.
const IDLE_TICK: Duration = Duration::from_millis(1);

/// Emptied chunk buffers kept for reuse, per source and worker.
const POOL: usize = 8;

/// A source's checkpointed state: where each partition stands and its clock, and the
/// corrections it sent stamped at or after the epoch (the only records read before the cut
/// whose times fall after it).
#[derive(Serialize, Deserialize)]
struct SourceState<R> {
    partitions: Vec<(ResumePoint, PartitionClock)>,
    inflight: Vec<(EventTime, Timed<R>)>,
}

/// One message of a chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Msg {
    /// Kafka offset, file line or sequence number.
    offset: u64,
    /// Kafka message timestamp.
    timestamp: Option<EventTime>,
    /// Length of its value in the chunk's bytes.
    len: u32,
    /// How many outcomes decoding gave (set by stage 2).
    outcomes: u32,
}

/// Consecutive messages of one partition, read in one activation.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Chunk {
    /// Read order on the owner.
    seq: u64,
    /// The reading (and sequencing) worker.
    owner: u32,
    /// The decoding worker.
    decoder: u32,
    /// The partition's slot in the owner's reader.
    slot: u32,
    msgs: Vec<Msg>,
    /// The values, back to back.
    data: Vec<u8>,
    /// Where the partition stands after the chunk.
    end: ResumePoint,
}

/// A chunk with its messages' outcomes, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DecodedChunk<R> {
    chunk: Chunk,
    outcomes: Vec<Decoded<R>>,
}

/// What the reader knows of one partition.
#[derive(Clone, Copy, Debug, Default)]
struct SlotFlags {
    done: bool,
    idle: bool,
    lag: Option<i64>,
    /// Chunks read from it.
    sent: u64,
}

/// State shared by the Read and Sequence stages of one source on one worker.
#[derive(Default)]
struct Shared {
    /// The reader is open: `parts` and `initial` are known.
    opened: bool,
    parts: Vec<PartitionInfo>,
    /// Each partition's position when the reader opened it.
    initial: Vec<ResumePoint>,
    flags: Vec<SlotFlags>,
    /// The reader's clock (see [`Reader::now`]).
    now: EventTime,
    /// Every partition of the reader ended.
    reader_done: bool,
    /// Chunks read.
    sent: u64,
    /// Chunks sequenced.
    sequenced: u64,
    /// The Sequence stage's capability: the Read stage follows it.
    stamp: EventTime,
    /// The Sequence stage finished: the Read stage stops too.
    finished: bool,
    /// The Read stage waits for sequencing to catch up.
    throttled: bool,
    /// Chunks read and not yet sequenced, per decoding worker.
    outstanding: Vec<u64>,
    /// Emptied chunk buffers, for the reader to fill again.
    pool: Vec<(Vec<Msg>, Vec<u8>)>,
    read_activator: Option<Activator>,
    sequence_activator: Option<Activator>,
}

fn activate(a: &Option<Activator>) {
    if let Some(a) = a {
        a.activate();
    }
}

/// Builds the source for `topic`: records (stamped at the source's watermark) and
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
    let (index, peers) = (scope.index(), scope.peers());
    let ordinal = factory.topic_ordinal();
    // After a rescale every old worker's partitions are offered; the reader takes those this
    // worker owns now, and the corrections in flight go with their partitions.
    let restored: Option<SourceState<D::Record>> = ctx.ckpt.as_ref().and_then(|c| {
        let all = c.restored_all::<SourceState<D::Record>>(index);
        (!all.is_empty()).then(|| {
            let mut merged = SourceState {
                partitions: Vec::new(),
                inflight: Vec::new(),
            };
            for st in all {
                merged.partitions.extend(st.partitions);
                merged.inflight.extend(
                    st.inflight
                        .into_iter()
                        .filter(|(_, r)| owns(ordinal + r.pos.partition as usize, index, peers)),
                );
            }
            merged
        })
    });
    let epoch = ctx.ckpt.as_ref().and_then(|c| c.store.epoch()).unwrap_or(0);
    let (resume, clocks): (Vec<_>, Vec<_>) = restored
        .as_ref()
        .map(|st| {
            st.partitions
                .iter()
                .map(|(p, c)| (p.clone(), (p.id, *c)))
                .unzip()
        })
        .unwrap_or_default();
    let inflight: Vec<_> = restored
        .map(|st| {
            st.inflight
                .into_iter()
                .filter(|(t, _)| *t >= epoch)
                .collect()
        })
        .unwrap_or_default();
    // Decoding is spread over the workers of this process unless the partitions already divide
    // evenly among all workers. (Not over the network: sending the raw messages out and the
    // decoded ones back costs more than decoding them here.)
    let local = ctx.local_workers.clamp(1, peers);
    let first_local = index / local * local;
    let spread = (local > 1 && factory.partition_count().is_none_or(|p| p % peers != 0))
        .then_some(first_local..first_local + local);
    let shared = Rc::new(RefCell::new(Shared {
        stamp: epoch,
        outstanding: vec![0; peers],
        ..Shared::default()
    }));
    let chunks = read(
        scope,
        topic,
        factory,
        resume,
        epoch,
        spread,
        ctx.ckpt.is_some(),
        Rc::clone(&shared),
    );
    let decoded = decode(chunks, decoder, topic);
    sequence::<D>(
        decoded,
        topic,
        spec,
        ctx,
        Restored {
            epoch,
            clocks,
            inflight,
        },
        shared,
    )
}

/// Stage 1: the reader, on the owner of its partitions.
#[allow(clippy::too_many_arguments)]
fn read<'s>(
    scope: Scope<'s, EventTime>,
    topic: &str,
    factory: std::sync::Arc<dyn ReaderFactory>,
    resume: Vec<ResumePoint>,
    epoch: EventTime,
    spread: Option<std::ops::Range<usize>>,
    checkpointed: bool,
    shared: Rc<RefCell<Shared>>,
) -> StreamVec<'s, EventTime, Chunk> {
    let mut builder = OperatorBuilder::new(format!("Read({topic})"), scope);
    let info = builder.operator_info();
    shared.borrow_mut().read_activator = Some(scope.activator_for(Rc::clone(&info.address)));
    let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
    let (out, chunks) = builder.new_output();
    let mut out: OutputBuilder<_, timely::container::CapacityContainerBuilder<Vec<Chunk>>> =
        OutputBuilder::from(out);
    let (index, peers) = (scope.index(), scope.peers());
    let topic = topic.to_string();
    builder.build(move |mut caps| {
        caps[0].downgrade(&epoch);
        let mut cap: Option<Capability<EventTime>> = caps.pop();
        let mut reader: Option<Box<dyn Reader>> = None;
        // Chunks being filled, per slot: messages and bytes.
        let mut filling: Vec<(Vec<Msg>, Vec<u8>)> = Vec::new();
        // Mean message size (bytes) seen so far, for the per-activation budget; the first
        // read takes few messages, whatever their size.
        let mut mean_len: usize = READ_BYTES / 16;
        move |_frontiers| {
            let Some(held) = cap.as_mut() else { return };
            let mut sh = shared.borrow_mut();
            if sh.finished {
                cap = None;
                return;
            }
            if sh.stamp > *held.time() {
                held.downgrade(&sh.stamp);
            }
            // A graceful stop: read nothing more, hold the capability, let the job settle.
            if checkpointed && crate::runtime::stopping() {
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
            while sh.parts.len() < r.partitions().len() {
                let slot = sh.parts.len();
                sh.parts.push(r.partitions()[slot].clone());
                sh.initial.push(r.position(slot));
                sh.flags.push(SlotFlags::default());
                filling.push((Vec::new(), Vec::new()));
            }
            sh.opened = true;
            sh.throttled = sh.sent - sh.sequenced >= IN_FLIGHT_PER_WORKER * peers as u64;
            if sh.throttled {
                // Sequencing wakes this stage when it catches up.
                return;
            }
            let budget = (READ_BYTES / mean_len.max(1)).clamp(16, READ_BUDGET);
            let status = r.read(budget, &mut |slot, offset, value, timestamp| {
                mean_len = (mean_len * 15 + value.len()) / 16;
                let (msgs, data) = &mut filling[slot];
                msgs.push(Msg {
                    offset,
                    timestamp,
                    // Messages are far below 4 GiB: Kafka's and our readers' limits.
                    len: value.len() as u32,
                    outcomes: 0,
                });
                data.extend_from_slice(value);
            });
            let status = match status {
                Ok(s) => s,
                Err(e) => crate::runtime::fatal(&format!("reading {topic} failed: {e:#}")),
            };
            let mut output = out.activate();
            let mut session = output.session(&*held);
            for (slot, (msgs, data)) in filling.iter_mut().enumerate() {
                if msgs.is_empty() {
                    continue;
                }
                // The worker with the fewest chunks outstanding decodes; the owner, which also
                // reads and sequences, takes one only when the others have a backlog.
                let decoder = match &spread {
                    Some(local) => local
                        .clone()
                        .min_by_key(|&d| match d == index {
                            true => (sh.outstanding[d] + 1) * OWNER_BACKLOG,
                            false => sh.outstanding[d],
                        })
                        .unwrap_or(index),
                    None => index,
                };
                sh.outstanding[decoder] += 1;
                // Buffers come back from sequencing: growing fresh ones message by message
                // would copy and fault in new memory for every chunk.
                let (fresh_msgs, mut fresh_data) = sh.pool.pop().unwrap_or_default();
                fresh_data.reserve(READ_BYTES + READ_BYTES / 2);
                session.give(Chunk {
                    seq: sh.sent,
                    owner: index as u32,
                    decoder: decoder as u32,
                    slot: slot as u32,
                    msgs: std::mem::replace(msgs, fresh_msgs),
                    data: std::mem::replace(data, fresh_data),
                    end: r.position(slot),
                });
                sh.sent += 1;
                sh.flags[slot].sent += 1;
            }
            drop(session);
            drop(output);
            for slot in 0..sh.flags.len() {
                let f = &mut sh.flags[slot];
                f.done = r.is_done(slot);
                f.idle = r.is_idle(slot);
                f.lag = r.lag(slot);
            }
            sh.now = r.now();
            sh.reader_done = status == ReadStatus::Done;
            activate(&sh.sequence_activator);
            // With every partition idle the watermark follows the reader's clock, which moves
            // without any message to wake this stage: look at it often, or the windows of the
            // other topics that wait for this one would wait for the next message.
            let all_idle = sh.flags.iter().all(|f| f.idle || f.done);
            let me = sh.read_activator.as_ref();
            match (status, me) {
                (ReadStatus::More, Some(a)) => a.activate(),
                (ReadStatus::Idle(d), Some(a)) if all_idle => a.activate_after(d.min(IDLE_TICK)),
                (ReadStatus::Idle(d), Some(a)) => a.activate_after(d),
                (ReadStatus::Done, _) => cap = None,
                _ => {}
            }
        }
    });
    chunks
}

/// Stage 2: decoding, on the worker each chunk names.
fn decode<'s, D: Decoder>(
    chunks: StreamVec<'s, EventTime, Chunk>,
    decoder: D,
    topic: &str,
) -> StreamVec<'s, EventTime, DecodedChunk<D::Record>> {
    let name = format!("Decode({topic})");
    chunks.unary(
        Exchange::new(|c: &Chunk| c.decoder as u64),
        &name,
        move |_cap, _info| {
            let mut decoder = decoder;
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for mut chunk in data.drain(..) {
                        let mut outcomes = Vec::new();
                        let mut at = 0;
                        for m in chunk.msgs.iter_mut() {
                            let value = &chunk.data[at..at + m.len as usize];
                            at += m.len as usize;
                            let before = outcomes.len();
                            // A decoder that panics (a bug: no input should make one) costs
                            // the message, dead-lettered, not the job.
                            if let Err(why) = crate::runtime::contain(|| {
                                decoder.decode_at(value, m.timestamp, &mut outcomes)
                            }) {
                                outcomes.truncate(before);
                                outcomes.push(Decoded::malformed(0, "decoder failed", why, None));
                            }
                            m.outcomes = (outcomes.len() - before) as u32;
                        }
                        session.give(DecodedChunk { chunk, outcomes });
                    }
                });
            }
        },
    )
}

/// What a resumed source starts from.
struct Restored<R> {
    epoch: EventTime,
    /// Partition clocks by partition id.
    clocks: Vec<(u32, PartitionClock)>,
    /// Corrections to send again, at their own times.
    inflight: Vec<(EventTime, Timed<R>)>,
}

/// Stage 3: the watermark and lateness rule, on the owner, in read order.
fn sequence<'s, D: Decoder>(
    decoded: StreamVec<'s, EventTime, DecodedChunk<D::Record>>,
    topic: &str,
    spec: WindowSpec,
    ctx: OperatorContext,
    restored: Restored<D::Record>,
    shared: Rc<RefCell<Shared>>,
) -> SourceStreams<'s, D::Record> {
    let OperatorContext { stats, ckpt, .. } = ctx;
    let scope = decoded.scope();
    let mut builder = OperatorBuilder::new(format!("Source({topic})"), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(Rc::clone(&info.address));
    shared.borrow_mut().sequence_activator = Some(scope.activator_for(Rc::clone(&info.address)));
    let mut input = builder.new_input(
        decoded,
        Exchange::new(|d: &DecodedChunk<D::Record>| d.chunk.owner as u64),
    );
    let (records_out, records) = builder.new_output();
    let (dead_out, dead) = builder.new_output();
    let mut records_out: OutputBuilder<_, timely::container::CapacityContainerBuilder<Vec<_>>> =
        OutputBuilder::from(records_out);
    let mut dead_out: OutputBuilder<
        _,
        timely::container::CapacityContainerBuilder<Vec<DeadLetter>>,
    > = OutputBuilder::from(dead_out);
    let index = scope.index();
    let topic = topic.to_string();
    let Restored {
        epoch,
        clocks: mut restored_clocks,
        inflight,
    } = restored;

    builder.build(move |mut start_caps| {
        // Resumed: nothing read from here on is stamped before the epoch.
        start_caps.iter_mut().for_each(|c| c.downgrade(&epoch));
        let mut next_epoch = ckpt.as_ref().map_or(EventTime::MAX, |c| c.store.after(epoch));
        // Restored corrections go out again, at their own times (and so back into `inflight`).
        let mut pending_corrections: Vec<(EventTime, Timed<D::Record>)> = inflight;
        let mut inflight = Vec::new();
        let mut caps: Option<Vec<Capability<EventTime>>> = Some(start_caps);
        // Per slot: its clock, position after the last chunk sequenced, chunks sequenced, and
        // messages and records read.
        let mut clocks: Vec<PartitionClock> = Vec::new();
        let mut positions: Vec<Option<ResumePoint>> = Vec::new();
        let mut sequenced: Vec<u64> = Vec::new();
        let mut counts: Vec<(u64, u64)> = Vec::new();
        let mut waiting: BTreeMap<u64, DecodedChunk<D::Record>> = BTreeMap::new();
        let mut tally = TopicCounts::default();
        let mut pending_records = Vec::new();
        let mut pending_dead: Vec<DeadLetter> = Vec::new();
        let mut last_status = std::time::Instant::now() - STATUS_EVERY;

        move |_frontiers| {
            input.for_each(|_cap, data| {
                for d in data.drain(..) {
                    waiting.insert(d.chunk.seq, d);
                }
            });
            let Some(held) = caps.as_mut() else { return };
            // A graceful stop: take nothing more, hold the capability, let the job settle.
            if ckpt.is_some() && crate::runtime::stopping() {
                return;
            }
            let mut sh = shared.borrow_mut();
            if !sh.opened {
                return;
            }
            if clocks.len() < sh.parts.len() {
                let n = sh.parts.len();
                clocks.resize(n, PartitionClock::default());
                positions.resize(n, None);
                sequenced.resize(n, 0);
                counts.resize(n, (0, 0));
                for (id, clock) in restored_clocks.drain(..) {
                    if let Some(slot) = sh.parts.iter().position(|p| p.id == id) {
                        clocks[slot] = clock;
                    }
                }
            }
            let held_time = *held[0].time();
            let now = crate::time::now_ms();
            while let Some(d) = waiting.remove(&sh.sequenced) {
                sh.sequenced += 1;
                let DecodedChunk { chunk, mut outcomes } = d;
                let slot = chunk.slot as usize;
                let part = &sh.parts[slot];
                let clock = &mut clocks[slot];
                let mut outcomes = outcomes.drain(..);
                let mut at = 0;
                for m in &chunk.msgs {
                    let value = &chunk.data[at..at + m.len as usize];
                    at += m.len as usize;
                    tally.messages += 1;
                    counts[slot].0 += 1;
                    counts[slot].1 += m.outcomes as u64;
                    // The watermark before this message decides for all its records.
                    let closed = clock.closed(&spec, held_time);
                    let mut newest: Option<EventTime> = None;
                    let mut dead = |index: u32,
                                    reason: &str,
                                    detail: &str,
                                    time: Option<EventTime>,
                                    excerpt: Option<&str>| {
                        let raw = match excerpt {
                            Some(x) => Cow::Borrowed(x),
                            None => String::from_utf8_lossy(value),
                        };
                        pending_dead.push(DeadLetter {
                            topic: topic.clone(),
                            place: part.origin.place(m.offset),
                            index,
                            reason: reason.to_string(),
                            detail: detail.to_string(),
                            event_time: time,
                            raw: cut(&raw, DEAD_LETTER_RAW_MAX),
                        });
                    };
                    for item in outcomes.by_ref().take(m.outcomes as usize) {
                        match item {
                            Decoded::Record { index, time, rec } => {
                                if let Err(bad) = spec.admit(time, now) {
                                    *tally.malformed.entry(bad.reason.to_string()).or_default() +=
                                        1;
                                    dead(index, bad.reason, &bad.detail, Some(time), None);
                                    continue;
                                }
                                let pos = Position {
                                    partition: part.id,
                                    offset: m.offset,
                                    index,
                                };
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
                                        pending_records.push(Timed {
                                            time,
                                            pos,
                                            rec,
                                            min_end,
                                        });
                                    }
                                    // Stamped at the (last) final window's end or later, so it
                                    // always reaches that window after its final result.
                                    Timeliness::Correction { min_end, corrects } => {
                                        newest = newest.max(Some(time));
                                        tally.corrections += 1;
                                        let rec = Timed {
                                            time,
                                            pos,
                                            rec,
                                            min_end,
                                        };
                                        pending_corrections.push((corrects.max(held_time), rec));
                                    }
                                }
                            }
                            Decoded::Ignored { index, kind, time } => {
                                if let Some(t) = time {
                                    match spec.admit(t, now) {
                                        Ok(()) => newest = newest.max(Some(t)),
                                        Err(bad) => {
                                            *tally
                                                .malformed
                                                .entry(bad.reason.to_string())
                                                .or_default() += 1;
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
                }
                positions[slot] = Some(chunk.end);
                sequenced[slot] += 1;
                sh.outstanding[chunk.decoder as usize] -= 1;
                let Chunk {
                    mut msgs, mut data, ..
                } = chunk;
                if sh.pool.len() < POOL {
                    msgs.clear();
                    data.clear();
                    sh.pool.push((msgs, data));
                }
            }

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

            // A partition is done, or idle, only once all it read was sequenced.
            let caught_up = |slot: usize| sequenced[slot] == sh.flags[slot].sent;
            let parts_now: Vec<PartitionWatermark> = clocks
                .iter()
                .enumerate()
                .map(|(slot, c)| PartitionWatermark {
                    watermark: c.watermark(&spec),
                    done: sh.flags[slot].done && caught_up(slot),
                    idle: sh.flags[slot].idle && caught_up(slot),
                })
                .collect();
            let all_done = sh.reader_done && sh.sequenced == sh.sent;
            let target = source_watermark(&parts_now, sh.now, spec.lateness_ms);
            // Partition facts go out with every batch (so per-partition and per-topic counts
            // agree), and at least every STATUS_EVERY for lag and idleness.
            if read_any || last_status.elapsed() >= STATUS_EVERY || all_done || target.is_none() {
                last_status = std::time::Instant::now();
                for (slot, part) in sh.parts.iter().enumerate() {
                    let c = clocks[slot];
                    let f = sh.flags[slot];
                    let st = PartitionStatus {
                        watermark: c.max_seen.map(|_| c.watermark(&spec)),
                        max_event_time: c.max_seen,
                        lag: f.lag,
                        idle: f.idle && caught_up(slot),
                        done: f.done && caught_up(slot),
                        messages: counts[slot].0,
                        records: counts[slot].1,
                    };
                    stats.set_partition(&topic, &part.origin.label(), st);
                }
            }
            // Ended: everything read was sequenced and the reader, or every partition, ended.
            let ended = sh.sequenced == sh.sent && (sh.reader_done || target.is_none());
            // The state at each epoch this source's capability now passes: every record read so
            // far is stamped before it.
            let new_time = match target {
                _ if ended => EventTime::MAX,
                None => *held[0].time(),
                Some(wm) => spec.round_down(wm).max(*held[0].time()),
            };
            if let Some(c) = ckpt
                .as_ref()
                .filter(|_| new_time >= next_epoch && next_epoch < EventTime::MAX)
            {
                let hi = if new_time == EventTime::MAX {
                    EventTime::MAX
                } else {
                    c.store.floor(new_time)
                };
                let state = SourceState {
                    partitions: (0..sh.parts.len())
                        .map(|s| {
                            let at = positions[s].clone().unwrap_or_else(|| sh.initial[s].clone());
                            (at, clocks[s])
                        })
                        .collect(),
                    inflight: std::mem::take(&mut inflight),
                };
                c.write(
                    index,
                    vec![Entry {
                        lo: next_epoch,
                        hi,
                        body: checkpoint::encode(&state),
                    }],
                );
                next_epoch = hi.saturating_add(c.store.interval());
                inflight = state.inflight;
                inflight.retain(|(t, _)| *t >= next_epoch);
            }
            let advanced = !ended && new_time > *held[0].time();
            if ended {
                caps = None;
                sh.finished = true;
                stats.set_watermark(&topic, index, None);
            } else if advanced {
                held.iter_mut().for_each(|c| c.downgrade(&new_time));
                sh.stamp = new_time;
                stats.set_watermark(&topic, index, Some(new_time));
            }
            // The reader follows the capability, and waits while too much is in flight.
            if advanced || ended || sh.throttled {
                activate(&sh.read_activator);
            }
            if !waiting.is_empty() && waiting.contains_key(&sh.sequenced) {
                activator.activate();
            }
        }
    });
    (records, dead)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use timely::dataflow::operators::Inspect;

    use super::*;
    use crate::source::file::FileFactory;

    /// Which threads decoded messages of which file (first byte of each line).
    type Seen = Arc<Mutex<BTreeSet<(String, u8)>>>;

    /// Reads `<file letter><event time>` lines.
    #[derive(Clone)]
    struct Lines(Seen);

    impl Decoder for Lines {
        type Record = u64;
        fn decode(&mut self, value: &[u8], out: &mut Vec<Decoded<u64>>) {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            self.0.lock().unwrap().insert((thread, value[0]));
            match std::str::from_utf8(&value[1..])
                .ok()
                .and_then(|t| t.parse().ok())
            {
                Some(time) => out.push(Decoded::Record {
                    index: 0,
                    time,
                    rec: time,
                }),
                None => out.push(Decoded::malformed(0, "bad", String::new(), None)),
            }
        }
    }

    /// What a run gives: records (position, time, on time or correction) and dead letters
    /// (position, reason), sorted; and which threads decoded which file.
    type Outcome = (Vec<((u32, u64), u64)>, Vec<((String, u64), String)>, Seen);

    fn run(files: &[std::path::PathBuf], workers: usize) -> Outcome {
        let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let records = Arc::new(Mutex::new(Vec::new()));
        let dead = Arc::new(Mutex::new(Vec::new()));
        let seen: Seen = Arc::default();
        let (r, d, s) = (records.clone(), dead.clone(), seen.clone());
        timely::execute(timely::Config::process(workers), move |worker| {
            let factory = Arc::new(FileFactory::new(paths.clone(), 0).unwrap());
            let (r, d, s) = (r.clone(), d.clone(), s.clone());
            worker.dataflow::<EventTime, _, _>(|scope| {
                let spec =
                    WindowSpec::new(Duration::from_millis(10), Duration::from_millis(5)).unwrap();
                let ctx = OperatorContext {
                    stats: crate::stats::RunStats::default(),
                    ckpt: None,
                    emission: crate::window::Emission { trigger: None },
                    key_groups: Default::default(),
                    local_workers: workers,
                };
                let (records, dead) = source(scope, "t", factory, Lines(s), spec, ctx);
                records.inspect(move |x| {
                    r.lock()
                        .unwrap()
                        .push(((x.pos.partition, x.pos.offset), x.time))
                });
                dead.inspect(move |x| {
                    let place = serde_json::to_value(&x.place).unwrap().to_string();
                    d.lock()
                        .unwrap()
                        .push(((place, x.event_time.unwrap_or(0)), x.reason.clone()))
                });
            });
        })
        .unwrap()
        .join();
        let mut records = records.lock().unwrap().clone();
        let mut dead = dead.lock().unwrap().clone();
        records.sort();
        dead.sort();
        (records, dead, seen)
    }

    /// A partition whose event times mostly rise, sometimes fall back (late and corrected
    /// records), with a malformed line now and then.
    fn partition(dir: &std::path::Path, letter: char, lines: u64) -> std::path::PathBuf {
        let path = dir.join(format!("{letter}.jsonl"));
        let text: String = (0..lines)
            .map(|i| match i % 997 {
                0 => format!("{letter}oops\n"),
                k if k % 50 == 7 => format!("{letter}{}\n", (i * 3).saturating_sub(40)),
                _ => format!("{letter}{}\n", i * 3),
            })
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn decoders_per_file(seen: &Seen) -> BTreeMap<u8, usize> {
        let mut per = BTreeMap::new();
        for (_, file) in seen.lock().unwrap().iter() {
            *per.entry(*file).or_default() += 1;
        }
        per
    }

    #[test]
    fn one_partition_is_decoded_by_every_worker_and_sequenced_as_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = partition(dir.path(), 'a', 40_000);
        let (records, dead, _) = run(std::slice::from_ref(&a), 1);
        assert!(
            dead.iter().any(|(_, why)| why == "late"),
            "the input has late records"
        );
        assert!(
            dead.iter().any(|(_, why)| why == "bad"),
            "and malformed ones"
        );
        let (records2, dead2, seen) = run(&[a], 2);
        assert_eq!(records, records2, "the same records, whatever decoded them");
        assert_eq!(dead, dead2, "the same late and malformed records");
        assert_eq!(
            decoders_per_file(&seen)[&b'a'],
            2,
            "both workers decoded the one partition"
        );
    }

    #[test]
    fn partitions_that_divide_evenly_are_decoded_where_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            partition(dir.path(), 'a', 20_000),
            partition(dir.path(), 'b', 20_000),
        ];
        let (_, _, seen) = run(&files, 2);
        assert_eq!(
            decoders_per_file(&seen).into_values().collect::<Vec<_>>(),
            [1, 1],
            "each partition decoded by its owner alone"
        );
    }
}
