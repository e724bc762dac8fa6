//! Fixed windows — tumbling and hopping — as a [`WindowState`] of the window operator.
//!
//! Records are first pre-aggregated on the worker that read them (one partial accumulator per
//! window and key per batch), then the partials are exchanged by a hash of the key and merged
//! where the key lives. A window's final results go out at timely time `window_end - 1` when
//! the watermark reaches its end; a record stamped at or after its window's end (a correction,
//! see the source) gives one corrected result per record.

use std::collections::BTreeMap;

// Short string keys, hashed per record: foldhash is several times faster than SipHash.
use foldhash::HashMap;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use super::{WindowAggregate, WindowState};
use crate::hash::key_hash;
use crate::result::{Kind, ResultLine};
use crate::time::{EventTime, Timed, WindowSpec};

/// Per key and window: the accumulator, the last revision emitted, and whether it changed since.
struct KeyState<Acc> {
    acc: Acc,
    revision: u32,
    dirty: bool,
}

/// One window on the worker that owns its keys. `cap` (at `end - 1`) is held until the final
/// result; the state stays afterwards only for the allowed lateness, to apply corrections.
type Window<Acc> = super::KeyedWindow<KeyState<Acc>>;

/// A partial aggregate on its way to the worker that owns its key.
pub(super) type Partial<A> = (EventTime, String, <A as WindowAggregate>::Acc);

/// Corrections waiting for their window's final result, with the capability to emit them.
type Pending<Acc> = BTreeMap<EventTime, Vec<(Capability<EventTime>, String, Acc)>>;

/// A window operator's checkpointed state: per window end, whether it is still open, and its
/// keys with their accumulators and last revisions.
type Snapshot<Acc> = Vec<(EventTime, bool, Vec<(String, Acc, u32)>)>;

/// [`Snapshot`] borrowing the live state, for writing.
type SnapshotRef<'a, Acc> = Vec<(EventTime, bool, Vec<(&'a String, &'a Acc, u32)>)>;

/// Pre-aggregates `records` on the worker that read them: one partial per window and key per
/// batch, except corrections, which stay one per record.
pub(super) fn pre_aggregate<'s, A: WindowAggregate>(
    records: StreamVec<'s, EventTime, Timed<A::Record>>,
    spec: WindowSpec,
) -> StreamVec<'s, EventTime, Partial<A>> {
    records.unary(Pipeline, "PreAggregate", move |_cap, _info| {
        let mut local: HashMap<EventTime, HashMap<String, A::Acc>> = HashMap::default();
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
    })
}

/// The fixed windows of one operator on one worker.
pub(super) struct Windows<A: WindowAggregate> {
    spec: WindowSpec,
    windows: BTreeMap<EventTime, Window<A::Acc>>,
    pending: Pending<A::Acc>,
}

impl<A: WindowAggregate> Windows<A> {
    pub(super) fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            windows: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }
}

impl<A: WindowAggregate> WindowState for Windows<A> {
    type Input = Partial<A>;
    type Snapshot = Snapshot<A::Acc>;
    const NAME: &'static str = "Window";

    fn route(p: &Partial<A>) -> u64 {
        key_hash(&p.1)
    }

    fn apply(&mut self, cap: &Capability<EventTime>, items: Vec<Partial<A>>) {
        let t = *cap.time();
        for (end, key, acc) in items {
            if t >= end {
                self.pending
                    .entry(end)
                    .or_default()
                    .push((cap.clone(), key, acc));
                continue;
            }
            // Every record of the window was stamped before its end, and the final result goes out
            // at `end - 1`: a sink can write it as soon as the frontier reaches `end`.
            let w = self.windows.entry(end).or_insert_with(|| Window {
                cap: Some(cap.delayed(&(end - 1))),
                keys: HashMap::default(),
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

    fn compact(t: EventTime, items: &mut Vec<Partial<A>>) {
        compact::<A>(t, items);
    }

    fn settle(&mut self, lim: EventTime) -> Vec<(Capability<EventTime>, Vec<ResultLine>)> {
        let mut out = Vec::new();
        // Final results, in window order, once the watermark reaches each end.
        for (&end, w) in self.windows.iter_mut() {
            if lim < end {
                break;
            }
            let Some(cap) = w.cap.take() else { continue };
            let start = self.spec.window_start(end);
            let lines = super::finals(w.keys.iter_mut(), |k, st| {
                st.revision += 1;
                st.dirty = false;
                Some(A::finish(k, start, end, &st.acc).tagged(Kind::Final, st.revision, None))
            });
            out.push((cap, lines));
        }

        // Corrections, once their window's final result is out.
        while let Some(entry) = self.pending.first_entry() {
            let end = *entry.key();
            if lim < end {
                break;
            }
            let mut items = entry.remove();
            items.sort_by_key(|(cap, _, _)| *cap.time());
            let w = self.windows.entry(end).or_insert_with(|| Window {
                cap: None,
                keys: HashMap::default(),
            });
            let start = self.spec.window_start(end);
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
        self.windows
            .retain(|&end, w| w.cap.is_some() || lim < end.saturating_add(self.spec.allowed_ms));
        out
    }

    fn updates(&mut self, emit: &mut dyn FnMut(&Capability<EventTime>, Vec<ResultLine>)) {
        for (&end, w) in self.windows.iter_mut() {
            let Some(cap) = &w.cap else { continue };
            let start = self.spec.window_start(end);
            let mut changed: Vec<(&String, &mut KeyState<A::Acc>)> =
                w.keys.iter_mut().filter(|(_, st)| st.dirty).collect();
            if changed.is_empty() {
                continue;
            }
            changed.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let lines = changed
                .into_iter()
                .map(|(k, st)| {
                    st.revision += 1;
                    st.dirty = false;
                    A::finish(k, start, end, &st.acc).tagged(Kind::Update, st.revision, None)
                })
                .collect();
            emit(cap, lines);
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let snap: SnapshotRef<'_, A::Acc> = self
            .windows
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

    fn restore(
        &mut self,
        snap: Snapshot<A::Acc>,
        keep: &dyn Fn(&str) -> bool,
        epoch: EventTime,
        cap: &Capability<EventTime>,
    ) {
        for (end, open, keys) in snap {
            let is_final = !open || end <= epoch;
            if is_final && end.saturating_add(self.spec.allowed_ms) <= epoch {
                continue;
            }
            let settled_here = open && end <= epoch;
            let keys = keys
                .into_iter()
                .filter(|(k, _, _)| keep(k))
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
            super::restore_keys(&mut self.windows, end, !is_final, keys, cap);
        }
    }

    fn next_correction(&self) -> Option<EventTime> {
        self.pending.keys().next().map(|e| e - 1)
    }

    fn counts(&self) -> (u64, u64) {
        let open = self.windows.values().filter(|w| w.cap.is_some()).count() as u64;
        let keys = self.windows.values().map(|w| w.keys.len() as u64).sum();
        (open, keys)
    }
}

/// Merges held partial aggregates of one stamp `t` by window and key (corrections stay one per
/// record, as the pre-aggregation keeps them).
fn compact<A: WindowAggregate>(t: EventTime, items: &mut Vec<Partial<A>>) {
    let mut merged: HashMap<(EventTime, String), A::Acc> = HashMap::default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Position;
    use crate::window::Emission;

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
                    key_groups: Default::default(),
                    local_workers: 1,
                };
                let (probe, out) = super::super::windowed::<Sums>(stream, spec, ctx).probe();
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
}
