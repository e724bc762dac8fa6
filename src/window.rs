//! Event-time windows over keyed records: final results, early updates and corrections.
//!
//! Records are first pre-aggregated on the worker that read them (one partial accumulator per
//! window and key per batch), then partials are exchanged by a hash of the key so each
//! (key, window) lives on exactly one worker, where they are merged. A window is final when the
//! input frontier (the watermark) reaches its end; its results are emitted once, at time
//! `window_end`, and its state is dropped, so memory is bounded by the open windows.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::ExchangeData;

use crate::context::OperatorContext;
use crate::result::{Kind, ResultLine};
use crate::time::{EventTime, Timed, WindowSpec};

/// Wall-clock microseconds since the epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A window metric definition: how records of one stream aggregate per key and window.
pub trait WindowAggregate: 'static {
    /// Input record.
    type Record: ExchangeData;
    /// Mergeable partial aggregate.
    type Acc: ExchangeData + Default;
    /// Output stream name.
    const STREAM: &'static str;
    /// The grouping key of a record.
    fn key(rec: &Self::Record) -> &str;
    /// Absorbs one record.
    fn add(acc: &mut Self::Acc, rec: &Timed<Self::Record>);
    /// Merges a partial aggregate of the same key and window.
    fn merge(acc: &mut Self::Acc, other: &Self::Acc);
    /// Renders a final result.
    fn finish(
        key: &str,
        window_start: EventTime,
        window_end: EventTime,
        acc: &Self::Acc,
    ) -> ResultLine;
}

/// Stable hash of a key, identical in every process (routing must agree across the cluster).
pub fn key_hash(key: &str) -> u64 {
    // FNV-1a: tiny, fast on short keys, and fixed by definition.
    let mut h = rustc_hash_fnv(key.as_bytes());
    h ^= h >> 29;
    h
}

fn rustc_hash_fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A `Hasher` that is the same in every process, for hashing non-string keys.
#[derive(Default)]
pub struct StableHasher(u64);

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = rustc_hash_fnv(bytes) ^ self.0.rotate_left(5);
    }
}

/// Hashes any value with [`StableHasher`].
pub fn stable_hash<T: Hash>(t: &T) -> u64 {
    let mut h = StableHasher::default();
    t.hash(&mut h);
    h.finish()
}

/// When a window operator emits beyond final results.
#[derive(Clone, Copy, Debug, Default)]
pub struct Emission {
    /// Emit `update` results of changed open windows this often (processing time); `None`
    /// when no sink wants updates.
    pub trigger: Option<std::time::Duration>,
}

/// Per key and window: the accumulator, the last revision emitted, and whether it changed since.
struct KeyState<Acc> {
    acc: Acc,
    revision: u32,
    dirty: bool,
}

/// One window on the worker that owns its keys. `cap` (at `end - 1`) is held until the final
/// result; the state stays afterwards only for the allowed lateness, to apply corrections.
struct WindowState<Acc> {
    cap: Option<Capability<EventTime>>,
    keys: HashMap<String, KeyState<Acc>>,
}

/// A partial aggregate on its way to the worker that owns its key.
type Partial<A> = (EventTime, String, <A as WindowAggregate>::Acc);

/// Corrections waiting for their window's final result, with the capability to emit them.
type Pending<Acc> = BTreeMap<EventTime, Vec<(Capability<EventTime>, String, Acc)>>;

/// Aggregates `records` in tumbling windows. A `final` result per (key, window) goes out when
/// the watermark reaches the window's end, at timely time `window_end - 1`; `update` results of
/// changed open windows every `emission.trigger`; a `correction` for each record that arrives
/// after the final within the allowed lateness (stamped at or after the window end by the
/// source, so corrections always follow the final). Hopping windows (`spec.slide_ms`) too.
pub fn tumbling<'s, A: WindowAggregate>(
    records: StreamVec<'s, EventTime, Timed<A::Record>>,
    spec: WindowSpec,
    ctx: OperatorContext,
) -> StreamVec<'s, EventTime, ResultLine> {
    let OperatorContext {
        stats,
        ckpt,
        emission,
    } = ctx;
    let scope = records.scope();
    let worker = scope.index();
    let partials: StreamVec<'s, EventTime, Partial<A>> =
        records.unary(Pipeline, "PreAggregate", move |_cap, _info| {
            let mut local: HashMap<EventTime, HashMap<String, A::Acc>> = HashMap::new();
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let t = cap.least().copied().unwrap_or_default();
                    let mut corrections = Vec::new();
                    for batch in data {
                        for r in batch.drain(..) {
                            for end in spec.window_ends(r.time).filter(|e| *e >= r.min_end) {
                                if t >= end {
                                    // A correction stays on its own: one corrected result per
                                    // late record, whatever the batching.
                                    let mut acc = A::Acc::default();
                                    A::add(&mut acc, &r);
                                    corrections.push((end, A::key(&r.rec).to_string(), acc));
                                    continue;
                                }
                                let per_key = local.entry(end).or_default();
                                let key = A::key(&r.rec);
                                match per_key.get_mut(key) {
                                    Some(acc) => A::add(acc, &r),
                                    None => {
                                        let mut acc = A::Acc::default();
                                        A::add(&mut acc, &r);
                                        per_key.insert(key.to_string(), acc);
                                    }
                                }
                            }
                        }
                    }
                    let mut session = output.session(&cap);
                    for (end, keys) in local.drain() {
                        session.give_iterator(keys.into_iter().map(|(k, acc)| (end, k, acc)));
                    }
                    session.give_iterator(corrections.into_iter());
                });
            }
        });

    partials.unary_frontier(
        Exchange::new(|p: &Partial<A>| key_hash(&p.1)),
        &format!("Window({})", A::STREAM),
        move |init_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut windows: BTreeMap<EventTime, WindowState<A::Acc>> = BTreeMap::new();
            let mut pending: Pending<A::Acc> = BTreeMap::new();
            let mut gate = Gate::new(ckpt.as_ref());
            if let Some(snap) = ckpt
                .as_ref()
                .and_then(|c| c.restored::<Snapshot<A::Acc>>(worker))
            {
                restore(&mut windows, snap, gate.epoch, &init_cap, spec);
            }
            drop(init_cap);
            let mut next_trigger = emission.trigger.map(|t| std::time::Instant::now() + t);
            let mut reported = (0, 0);
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let t = cap.least().copied().unwrap_or_default();
                    if t >= gate.next {
                        gate.hold(t, || cap.delayed(&t, 0), data, compact::<A>);
                        return;
                    }
                    let cap = cap.delayed(&t, 0);
                    for batch in data {
                        apply::<A>(&mut windows, &mut pending, &cap, batch.drain(..));
                    }
                });
                let lim = frontier
                    .frontier()
                    .first()
                    .copied()
                    .unwrap_or(EventTime::MAX);
                let mut emit = |out: Vec<(Capability<EventTime>, Vec<ResultLine>)>| {
                    for (cap, lines) in out {
                        output.session(&cap).give_iterator(lines.into_iter());
                    }
                };

                // Checkpoint epochs the frontier passed: the state after exactly the inputs
                // stamped before each, one entry per distinct state.
                if let Some(c) = &ckpt {
                    let (entries, next) = c.save_epochs(lim, gate.next, |lo| {
                        while let Some((cap, items)) = gate.release_below(lo) {
                            apply::<A>(&mut windows, &mut pending, &cap, items.into_iter());
                        }
                        emit(settle::<A>(&mut windows, &mut pending, lo, spec));
                        // The state changes again with the next input held back, or with the
                        // next correction applied.
                        let change = [
                            gate.held.keys().next().map(|s| c.store.after(*s)),
                            pending.keys().next().map(|e| c.store.after(e - 1)),
                        ]
                        .into_iter()
                        .flatten()
                        .min();
                        (snapshot(&windows), change)
                    });
                    gate.next = next;
                    if !entries.is_empty() {
                        c.write(worker, entries);
                    }
                }
                while let Some((cap, items)) = gate.release_below(gate.next) {
                    apply::<A>(&mut windows, &mut pending, &cap, items.into_iter());
                }
                emit(settle::<A>(&mut windows, &mut pending, lim, spec));
                if let Some(c) = &ckpt {
                    c.store.set_frontier(&c.op, worker, lim);
                }

                // Early results of changed open windows, every trigger period.
                if let (Some(every), Some(due)) = (emission.trigger, next_trigger) {
                    let now = std::time::Instant::now();
                    if now >= due {
                        for (&end, w) in windows.iter_mut() {
                            let Some(cap) = &w.cap else { continue };
                            let start = spec.window_start(end);
                            let mut changed: Vec<(&String, &mut KeyState<A::Acc>)> =
                                w.keys.iter_mut().filter(|(_, st)| st.dirty).collect();
                            changed.sort_unstable_by(|a, b| a.0.cmp(b.0));
                            output.session(cap).give_iterator(changed.into_iter().map(
                                |(k, st)| {
                                    st.revision += 1;
                                    st.dirty = false;
                                    A::finish(k, start, end, &st.acc).tagged(
                                        Kind::Update,
                                        st.revision,
                                        None,
                                    )
                                },
                            ));
                        }
                        next_trigger = Some(now + every);
                    }
                    if windows.values().any(|w| w.cap.is_some()) {
                        activator.activate_after(
                            next_trigger.map_or(every, |d| d.saturating_duration_since(now)),
                        );
                    }
                }

                let open = windows.values().filter(|w| w.cap.is_some()).count();
                let keys = windows.values().map(|w| w.keys.len() as u64).sum();
                if (open, keys) != reported {
                    reported = (open, keys);
                    stats.set_open(A::STREAM, worker, open as u64, keys);
                }
            }
        },
    )
}

/// Inputs a window operator holds back until its frontier passes the next checkpoint epoch, so
/// the state it saves there holds exactly the inputs stamped before it.
pub struct Gate<D> {
    /// The epoch resumed from (0 for a fresh start).
    pub epoch: EventTime,
    /// The next epoch to save (`u64::MAX` without checkpoints: nothing is held back).
    pub next: EventTime,
    /// Inputs stamped at or after `next`, by stamp.
    pub held: BTreeMap<EventTime, Held<D>>,
}

/// Inputs of one stamp held back by a [`Gate`].
pub struct Held<D> {
    cap: Capability<EventTime>,
    items: Vec<D>,
    /// Compact when this many are held.
    compact_at: usize,
}

/// Held inputs of one stamp are compacted from this many on (then each time they double).
const COMPACT_FROM: usize = 4096;

impl<D> Gate<D> {
    /// A gate for an operator with `ckpt`, or an open one without.
    pub fn new(ckpt: Option<&crate::checkpoint::Handle>) -> Self {
        let epoch = ckpt.and_then(|c| c.store.epoch()).unwrap_or(0);
        Self {
            epoch,
            next: ckpt.map_or(EventTime::MAX, |c| c.store.after(epoch)),
            held: BTreeMap::new(),
        }
    }

    /// Holds back the inputs `batches` stamped `t` (`cap` makes the capability for them).
    /// `compact` merges what can be merged whenever a stamp's held inputs doubled, so that
    /// while the watermark lags memory grows with keys and windows, not with input batches.
    pub fn hold<'a>(
        &mut self,
        t: EventTime,
        cap: impl FnOnce() -> Capability<EventTime>,
        batches: impl Iterator<Item = &'a mut Vec<D>>,
        compact: impl FnOnce(EventTime, &mut Vec<D>),
    ) where
        D: 'a,
    {
        let h = self.held.entry(t).or_insert_with(|| Held {
            cap: cap(),
            items: Vec::new(),
            compact_at: COMPACT_FROM,
        });
        batches.for_each(|b| h.items.append(b));
        if h.items.len() >= h.compact_at {
            compact(t, &mut h.items);
            h.compact_at = (h.items.len() * 2).max(COMPACT_FROM);
        }
    }

    /// The earliest held inputs stamped before `t`, if any.
    pub fn release_below(&mut self, t: EventTime) -> Option<(Capability<EventTime>, Vec<D>)> {
        let e = self.held.first_entry()?;
        (*e.key() < t).then(|| {
            let h = e.remove();
            (h.cap, h.items)
        })
    }
}

/// A window operator's checkpointed state: per window end, whether it is still open, and its
/// keys with their accumulators and last revisions.
type Snapshot<Acc> = Vec<(EventTime, bool, Vec<(String, Acc, u32)>)>;

/// [`Snapshot`] borrowing the live state, for writing.
type SnapshotRef<'a, Acc> = Vec<(EventTime, bool, Vec<(&'a String, &'a Acc, u32)>)>;

fn snapshot<Acc: serde::Serialize>(windows: &BTreeMap<EventTime, WindowState<Acc>>) -> Vec<u8> {
    let snap: SnapshotRef<'_, Acc> = windows
        .iter()
        .map(|(end, w)| {
            let keys = w
                .keys
                .iter()
                .map(|(k, st)| (k, &st.acc, st.revision))
                .collect();
            (*end, w.cap.is_some(), keys)
        })
        .collect();
    crate::checkpoint::encode(&snap)
}

/// Rebuilds the windows saved at `epoch`. Windows ending at or before it were final there (their
/// results are in the outputs): they only keep their state for corrections.
fn restore<Acc>(
    windows: &mut BTreeMap<EventTime, WindowState<Acc>>,
    snap: Snapshot<Acc>,
    epoch: EventTime,
    cap: &Capability<EventTime>,
    spec: WindowSpec,
) {
    for (end, open, keys) in snap {
        let is_final = !open || end <= epoch;
        if is_final && end.saturating_add(spec.allowed_ms) <= epoch {
            continue;
        }
        let settled_here = open && end <= epoch;
        let keys = keys
            .into_iter()
            .map(|(k, acc, revision)| {
                let revision = revision + u32::from(settled_here);
                (
                    k,
                    KeyState {
                        acc,
                        revision,
                        dirty: false,
                    },
                )
            })
            .collect();
        let cap = (!is_final).then(|| cap.delayed(&(end - 1)));
        windows.insert(end, WindowState { cap, keys });
    }
}

/// Merges held partial aggregates of one stamp `t` by window and key (corrections stay one per
/// record, as the pre-aggregation keeps them).
fn compact<A: WindowAggregate>(t: EventTime, items: &mut Vec<Partial<A>>) {
    let mut merged: HashMap<(EventTime, String), A::Acc> = HashMap::new();
    let mut kept = Vec::new();
    for (end, key, acc) in items.drain(..) {
        if t >= end {
            kept.push((end, key, acc));
            continue;
        }
        match merged.entry((end, key)) {
            std::collections::hash_map::Entry::Occupied(mut e) => A::merge(e.get_mut(), &acc),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(acc);
            }
        }
    }
    kept.extend(merged.into_iter().map(|((end, key), acc)| (end, key, acc)));
    *items = kept;
}

/// Merges partial aggregates stamped at `cap`'s time into their windows; those stamped at or
/// after their window's end are corrections, applied once the watermark reaches it.
fn apply<A: WindowAggregate>(
    windows: &mut BTreeMap<EventTime, WindowState<A::Acc>>,
    pending: &mut Pending<A::Acc>,
    cap: &Capability<EventTime>,
    items: impl Iterator<Item = Partial<A>>,
) {
    let t = *cap.time();
    for (end, key, acc) in items {
        if t >= end {
            pending
                .entry(end)
                .or_default()
                .push((cap.clone(), key, acc));
            continue;
        }
        // Every record of the window was stamped before its end, and the final result goes out
        // at `end - 1`: a sink can write it as soon as the frontier reaches `end`.
        let w = windows.entry(end).or_insert_with(|| WindowState {
            cap: Some(cap.delayed(&(end - 1))),
            keys: HashMap::new(),
        });
        match w.keys.get_mut(&key) {
            Some(k) => {
                A::merge(&mut k.acc, &acc);
                k.dirty = true;
            }
            None => {
                w.keys.insert(
                    key,
                    KeyState {
                        acc,
                        revision: 0,
                        dirty: true,
                    },
                );
            }
        }
    }
}

/// Final results of the windows ending at or before `lim` (the watermark), corrections of
/// windows whose final is out, and the end of state past the allowed lateness.
fn settle<A: WindowAggregate>(
    windows: &mut BTreeMap<EventTime, WindowState<A::Acc>>,
    pending: &mut Pending<A::Acc>,
    lim: EventTime,
    spec: WindowSpec,
) -> Vec<(Capability<EventTime>, Vec<ResultLine>)> {
    let mut out = Vec::new();
    // Final results, in window order, once the watermark reaches each end.
    for (&end, w) in windows.iter_mut() {
        if lim < end {
            break;
        }
        let Some(cap) = w.cap.take() else { continue };
        let final_at_us = now_us();
        let start = spec.window_start(end);
        let mut keys: Vec<(&String, &mut KeyState<A::Acc>)> = w.keys.iter_mut().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let lines = keys
            .into_iter()
            .map(|(k, st)| {
                st.revision += 1;
                st.dirty = false;
                let mut line =
                    A::finish(k, start, end, &st.acc).tagged(Kind::Final, st.revision, None);
                line.final_at_us = final_at_us;
                line
            })
            .collect();
        out.push((cap, lines));
    }

    // Corrections, once their window's final result is out.
    while let Some(entry) = pending.first_entry() {
        let end = *entry.key();
        if lim < end {
            break;
        }
        let mut items = entry.remove();
        items.sort_by_key(|(cap, _, _)| *cap.time());
        let w = windows.entry(end).or_insert_with(|| WindowState {
            cap: None,
            keys: HashMap::new(),
        });
        let start = spec.window_start(end);
        for (cap, key, acc) in items {
            let st = w.keys.entry(key.clone()).or_insert_with(|| KeyState {
                acc: A::Acc::default(),
                revision: 0,
                dirty: false,
            });
            A::merge(&mut st.acc, &acc);
            let replaces = (st.revision > 0).then_some(st.revision);
            st.revision += 1;
            let line = A::finish(&key, start, end, &st.acc).tagged(
                Kind::Correction,
                st.revision,
                replaces,
            );
            out.push((cap, vec![line]));
        }
    }

    // State past the allowed lateness can no longer change: drop it.
    windows.retain(|&end, w| w.cap.is_some() || lim < end.saturating_add(spec.allowed_ms));
    out
}

/// Aggregates `records` in the windows `spec` describes: tumbling, hopping (`slide`) or
/// session windows (`session_gap`), with the same watermark, emission and correction rules.
pub fn windowed<'s, A: WindowAggregate>(
    records: StreamVec<'s, EventTime, Timed<A::Record>>,
    spec: WindowSpec,
    ctx: OperatorContext,
) -> StreamVec<'s, EventTime, ResultLine> {
    if spec.session_gap_ms.is_some() {
        crate::session::sessions::<A>(records, spec, ctx)
    } else {
        tumbling::<A>(records, spec, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Position;

    /// A test aggregate: per key, the number of values and their sum.
    struct Sums;

    impl WindowAggregate for Sums {
        type Record = (String, f64);
        type Acc = (u64, f64);
        const STREAM: &'static str = "sums";
        fn key(rec: &(String, f64)) -> &str {
            &rec.0
        }
        fn add(acc: &mut (u64, f64), r: &Timed<(String, f64)>) {
            *acc = (acc.0 + 1, acc.1 + r.rec.1);
        }
        fn merge(acc: &mut (u64, f64), o: &(u64, f64)) {
            *acc = (acc.0 + o.0, acc.1 + o.1);
        }
        fn finish(key: &str, start: EventTime, end: EventTime, a: &(u64, f64)) -> ResultLine {
            let columns = vec![("ticks", a.0.into()), ("sum", Some(a.1).into())];
            ResultLine::new(Self::STREAM, "key", key, ("T", key), (start, end), columns)
        }
    }

    fn rec(t: EventTime, key: &str, v: f64) -> Timed<(String, f64)> {
        Timed {
            min_end: 0,
            time: t,
            pos: Position {
                partition: 0,
                offset: t,
                index: 0,
            },
            rec: (key.to_string(), v),
        }
    }

    /// Drives the window operator with controlled inputs and frontier steps: with a zero trigger
    /// each change gives one `update`, and the window closes with exactly one `final`.
    #[test]
    fn each_change_gives_an_update_and_the_window_one_final() {
        use crate::context::OperatorContext;
        use std::time::Duration;
        use timely::dataflow::operators::core::capture::Capture;
        use timely::dataflow::operators::core::{Input, Probe};

        let rx = timely::execute_directly(|worker| {
            let (mut input, probe, rx) = worker.dataflow::<EventTime, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<Timed<(String, f64)>>>();
                let spec = WindowSpec::new(Duration::from_secs(60), Duration::ZERO).unwrap();
                let ctx = OperatorContext {
                    stats: crate::stats::RunStats::default(),
                    ckpt: None,
                    emission: Emission {
                        trigger: Some(Duration::ZERO),
                    },
                };
                let (probe, out) = tumbling::<Sums>(stream, spec, ctx).probe();
                (input, probe, out.capture())
            });
            let mut step_to = |input: &mut timely::dataflow::InputHandle<EventTime, _>,
                               t: EventTime| {
                input.advance_to(t);
                while probe.less_than(input.time()) {
                    worker.step();
                }
                // One more round lets the operator see what arrived at the last step.
                worker.step();
            };
            input.send(rec(1_000, "S", 1.0));
            step_to(&mut input, 2_000);
            input.send(rec(2_000, "S", 3.0));
            step_to(&mut input, 3_000);
            step_to(&mut input, 4_000); // nothing changed: no update
            step_to(&mut input, 60_000); // the watermark reaches the window end
            drop(input);
            while worker.step() {}
            rx
        });
        let mut got: Vec<(Kind, u32, String)> = rx
            .try_iter()
            .filter_map(|e| match e {
                timely::dataflow::operators::capture::Event::Messages(_, lines) => Some(lines),
                _ => None,
            })
            .flatten()
            .map(|l| {
                let ticks = match l.get("ticks") {
                    Some(crate::result::Cell::Int(n)) => n.to_string(),
                    other => format!("{other:?}"),
                };
                (l.kind, l.revision, ticks)
            })
            .collect();
        got.sort_by_key(|g| g.1);
        assert_eq!(
            got,
            [
                (Kind::Update, 1, "1".to_string()),
                (Kind::Update, 2, "2".into()),
                (Kind::Final, 3, "2".into())
            ]
        );
    }

    /// Held partials of one stamp merge by (window, key) into the same result, while a
    /// correction (stamped at or after its window's end) stays on its own.
    #[test]
    fn compaction_merges_partials_and_keeps_corrections_apart() {
        let partial = |end: EventTime, key: &str, v: f64| {
            let mut acc = <Sums as WindowAggregate>::Acc::default();
            Sums::add(&mut acc, &rec(end - 1_000, key, v));
            (end, key.to_string(), acc)
        };
        let t = 60_000;
        let mut items = vec![
            partial(120_000, "A", 1.0),
            partial(120_000, "A", 3.0),
            partial(120_000, "B", 2.0),
            partial(60_000, "A", 5.0),
            partial(60_000, "A", 6.0),
        ];
        compact::<Sums>(t, &mut items);
        assert_eq!(items.len(), 4, "two corrections, one merged A, one B");
        let merged = items
            .iter()
            .find(|(e, k, _)| *e == 120_000 && k == "A")
            .unwrap();
        assert_eq!(merged.2, (2, 4.0));
        assert_eq!(items.iter().filter(|(e, _, _)| *e == 60_000).count(), 2);
    }

    #[test]
    fn key_hash_is_stable() {
        assert_eq!(key_hash("K1"), key_hash("K1"));
        assert_ne!(key_hash("K1"), key_hash("K2"));
    }
}
