//! ▶ A window closes: event-time windows over keyed records, with final results, early updates
//! and corrections.
//!
//! One operator shell ([`operate`]) runs every kind of window: it routes inputs by a hash of
//! their key (so each key lives on exactly one worker, whatever the worker count), holds inputs
//! back past the next checkpoint epoch, saves the state at every epoch the frontier passes,
//! settles windows when the frontier (the watermark) reaches their end, emits early updates on
//! a timer and reports open windows. What differs between kinds is a [`WindowState`]: fixed
//! windows — tumbling and hopping — in `fixed.rs` (pre-aggregated before the exchange),
//! sessions in `session.rs`, windows over per-key state changed in event-time order (order
//! books) in `ordered.rs`. A window's state is dropped once it is final (or, with allowed
//! lateness, once that has passed), so memory is bounded by the open windows.

mod fixed;
mod ordered;
mod session;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::ExchangeData;

pub use crate::context::Emission;
use crate::context::OperatorContext;
use crate::result::ResultLine;
use crate::time::{EventTime, Timed, WindowSpec};
pub use ordered::OrderedAggregate;

/// Wall-clock microseconds since the epoch.
pub(crate) fn now_us() -> u64 {
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

/// A window's final results: one per key (that `render` does not skip), in key order, rendered
/// by `render` (which counts the revision), stamped with the moment the watermark passed the window's end.
fn finals<'a, T: 'a>(
    keys: impl Iterator<Item = (&'a String, &'a mut T)>,
    mut render: impl FnMut(&str, &mut T) -> Option<ResultLine>,
) -> Vec<ResultLine> {
    let final_at_us = now_us();
    let mut keys: Vec<(&String, &mut T)> = keys.collect();
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    keys.into_iter()
        .filter_map(|(k, st)| {
            let mut line = render(k, st)?;
            line.final_at_us = final_at_us;
            Some(line)
        })
        .collect()
}

/// Aggregates `records` in the windows `spec` describes: tumbling, hopping (`slide`) or
/// session windows (`session_gap`), with the same watermark, emission and correction rules.
pub(crate) fn windowed<'s, A: WindowAggregate>(
    records: StreamVec<'s, EventTime, Timed<A::Record>>,
    spec: WindowSpec,
    ctx: OperatorContext,
) -> StreamVec<'s, EventTime, ResultLine> {
    if spec.session_gap_ms.is_some() {
        operate(records, A::STREAM, session::Sessions::<A>::new(spec), ctx)
    } else {
        let partials = fixed::pre_aggregate::<A>(records, spec);
        operate(partials, A::STREAM, fixed::Windows::<A>::new(spec), ctx)
    }
}

/// Aggregates observations of per-key state that `records` change in event-time order (see
/// `ordered.rs`), in the fixed windows of `spec`; a key's state resets after `ttl_ms` of event
/// time without records.
pub(crate) fn ordered_windowed<'s, A: OrderedAggregate>(
    agg: A,
    records: StreamVec<'s, EventTime, Timed<A::Record>>,
    spec: WindowSpec,
    ttl_ms: EventTime,
    ctx: OperatorContext,
) -> StreamVec<'s, EventTime, ResultLine> {
    operate(
        records,
        A::STREAM,
        ordered::Ordered::new(agg, spec, ttl_ms),
        ctx,
    )
}

/// One window of keyed state on the worker that owns its keys. `cap` (at `end - 1`) is held
/// until the final result.
struct KeyedWindow<K> {
    cap: Option<Capability<EventTime>>,
    keys: foldhash::HashMap<String, K>,
}

/// Adds restored keys of the window ending at `end` (a rescale merges several old workers'
/// states into one window); a window still `open` holds its capability again.
fn restore_keys<K>(
    windows: &mut BTreeMap<EventTime, KeyedWindow<K>>,
    end: EventTime,
    open: bool,
    keys: Vec<(String, K)>,
    cap: &Capability<EventTime>,
) {
    if keys.is_empty() {
        return;
    }
    let w = windows.entry(end).or_insert_with(|| KeyedWindow {
        cap: None,
        keys: Default::default(),
    });
    if open && w.cap.is_none() {
        w.cap = Some(cap.delayed(&(end - 1)));
    }
    w.keys.extend(keys);
}

/// What differs between kinds of windows: the state of one window operator on one worker.
trait WindowState: 'static {
    /// What arrives, exchanged by key: partial aggregates or records.
    type Input: ExchangeData;
    /// The state as saved in checkpoints.
    type Snapshot: DeserializeOwned;
    /// The operator's name in the dataflow graph (`Window`, `Sessions`).
    const NAME: &'static str;
    /// The key hash of an input ([`crate::hash::key_hash`]): inputs of one key meet on the
    /// worker of its key group.
    fn route(input: &Self::Input) -> u64;
    /// Takes inputs stamped at `cap`'s time. Those stamped at or after their window's end are
    /// corrections, applied once the watermark reaches it.
    fn apply(&mut self, cap: &Capability<EventTime>, items: Vec<Self::Input>);
    /// Merges what can be merged among inputs of one stamp `t` held back by the [`Gate`].
    fn compact(t: EventTime, items: &mut Vec<Self::Input>);
    /// Final results of windows ending at or before `lim` (the watermark), corrections of final
    /// windows, and the end of state past the allowed lateness.
    fn settle(&mut self, lim: EventTime) -> Vec<(Capability<EventTime>, Vec<ResultLine>)>;
    /// `update` results of changed open windows, each given with its window's capability.
    fn updates(&mut self, emit: &mut dyn FnMut(&Capability<EventTime>, Vec<ResultLine>));
    /// The state, encoded for a checkpoint.
    fn snapshot(&self) -> Vec<u8>;
    /// Adds the state saved at `epoch` of the keys `keep` accepts (after a rescale, a worker
    /// restores its keys from several saved states); windows ending at or before it were final
    /// there.
    fn restore(
        &mut self,
        snap: Self::Snapshot,
        keep: &dyn Fn(&str) -> bool,
        epoch: EventTime,
        cap: &Capability<EventTime>,
    );
    /// The earliest time whose passing applies a waiting correction (the state changes then).
    fn next_correction(&self) -> Option<EventTime>;
    /// Open windows (sessions) and keys held, for the metrics.
    fn counts(&self) -> (u64, u64);
    /// A time after which the state no longer changes once every input has arrived, when the
    /// state can tell (then the end of the input saves one final state, not one per epoch).
    fn horizon(&self) -> Option<EventTime> {
        None
    }
}

/// The one window operator: everything but the [`WindowState`] (see the module documentation).
fn operate<'s, S: WindowState>(
    inputs: StreamVec<'s, EventTime, S::Input>,
    stream: &'static str,
    mut state: S,
    ctx: OperatorContext,
) -> StreamVec<'s, EventTime, ResultLine> {
    let OperatorContext {
        stats,
        ckpt,
        emission,
        key_groups,
        ..
    } = ctx;
    let scope = inputs.scope();
    let (worker, peers) = (scope.index(), scope.peers());
    inputs.unary_frontier(
        Exchange::new(move |x| key_groups.route(S::route(x))),
        &format!("{}({stream})", S::NAME),
        move |init_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut gate = Gate::new(ckpt.as_ref());
            if let Some(c) = &ckpt {
                let rescaled = c.rescaled();
                let keep = |key: &str| !rescaled || key_groups.owner(key, peers) == worker;
                for snap in c.restored_all::<S::Snapshot>(worker) {
                    state.restore(snap, &keep, gate.epoch, &init_cap);
                }
            }
            drop(init_cap);
            let mut next_trigger = emission.trigger.map(|t| std::time::Instant::now() + t);
            let mut reported = (0, 0);
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let t = cap.least().copied().unwrap_or_default();
                    if t >= gate.next {
                        gate.hold(t, || cap.delayed(&t, 0), data, S::compact);
                        return;
                    }
                    let cap = cap.delayed(&t, 0);
                    for batch in data {
                        state.apply(&cap, std::mem::take(batch));
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
                    // Each epoch the frontier passed is saved (a graceful stop settles on one
                    // of them), except at the end of the input: then one entry holds the final
                    // state, from where nothing changes any more (saving each epoch would
                    // encode the waiting records once per epoch).
                    let from = match (lim, state.horizon()) {
                        (EventTime::MAX, Some(h)) => {
                            let held = gate.held.keys().next_back().copied().unwrap_or(0);
                            gate.next.max(c.store.after(h.max(held)))
                        }
                        _ => gate.next,
                    };
                    let (entries, next) = c.save_epochs(lim, from, |lo| {
                        while let Some((cap, items)) = gate.release_below(lo) {
                            state.apply(&cap, items);
                        }
                        emit(state.settle(lo));
                        // The state changes again with the next input held back, or with the
                        // next correction applied.
                        let change = [
                            gate.held.keys().next().map(|s| c.store.after(*s)),
                            state.next_correction().map(|t| c.store.after(t)),
                        ]
                        .into_iter()
                        .flatten()
                        .min();
                        (state.snapshot(), change)
                    });
                    gate.next = next;
                    if !entries.is_empty() {
                        c.write(worker, entries);
                    }
                }
                while let Some((cap, items)) = gate.release_below(gate.next) {
                    state.apply(&cap, items);
                }
                emit(state.settle(lim));
                if let Some(c) = &ckpt {
                    c.store.set_frontier(&c.op, worker, lim);
                }

                // Early results of changed open windows, every trigger period.
                if let (Some(every), Some(due)) = (emission.trigger, next_trigger) {
                    let now = std::time::Instant::now();
                    if now >= due {
                        state.updates(&mut |cap, lines| {
                            output.session(cap).give_iterator(lines.into_iter());
                        });
                        next_trigger = Some(now + every);
                    }
                    if state.counts().0 > 0 {
                        activator.activate_after(
                            next_trigger.map_or(every, |d| d.saturating_duration_since(now)),
                        );
                    }
                }

                let counts = state.counts();
                if counts != reported {
                    reported = counts;
                    stats.set_open(stream, worker, counts.0, counts.1);
                }
            }
        },
    )
}

/// Inputs a window operator holds back until its frontier passes the next checkpoint epoch, so
/// the state it saves there holds exactly the inputs stamped before it.
struct Gate<D> {
    /// The epoch resumed from (0 for a fresh start).
    epoch: EventTime,
    /// The next epoch to save (`u64::MAX` without checkpoints: nothing is held back).
    next: EventTime,
    /// Inputs stamped at or after `next`, by stamp.
    held: BTreeMap<EventTime, Held<D>>,
}

/// Inputs of one stamp held back by a [`Gate`].
struct Held<D> {
    cap: Capability<EventTime>,
    items: Vec<D>,
    /// Compact when this many are held.
    compact_at: usize,
}

/// Held inputs of one stamp are compacted from this many on (then each time they double).
const COMPACT_FROM: usize = 4096;

impl<D> Gate<D> {
    /// A gate for an operator with `ckpt`, or an open one without.
    fn new(ckpt: Option<&crate::checkpoint::Handle>) -> Self {
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
    fn hold<'a>(
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
    fn release_below(&mut self, t: EventTime) -> Option<(Capability<EventTime>, Vec<D>)> {
        let e = self.held.first_entry()?;
        (*e.key() < t).then(|| {
            let h = e.remove();
            (h.cap, h.items)
        })
    }
}
