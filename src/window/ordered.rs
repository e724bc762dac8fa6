//! Windows over per-key state that spans windows (an order book), as a [`WindowState`] of the
//! window operator.
//!
//! A record changes its key's state (a book delta) and what the state looks like afterwards is
//! the observation the window aggregates, so records of a key must be applied in event-time
//! order, ties in input order, whatever order they arrive in. Records are therefore held until
//! the frontier proves that nothing earlier can still come: a record on time for a window is
//! stamped before that window's end, so once the frontier reaches the window boundary `B`, every
//! on-time record with a time before `B` has arrived. Those are applied in `(time, position)`
//! order and the windows ending at or before the frontier are final at once: no window waits
//! longer than it would without state. A key's state is reset when its previous record lies
//! `ttl` or more before the next one, and dropped from memory once the watermark is that far
//! past it (so the two give the same results: dropping is only a memory matter).
//!
//! Records within `--allowed-lateness` (stamped after a window they belong to was final) are not
//! applied: they would change state that later windows already read, at a moment that depends on
//! timing, and results must not. They correct the streams without state spanning windows.

use std::collections::BTreeMap;

// Short string keys, hashed per record: foldhash is several times faster than SipHash.
use foldhash::HashMap;

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::Capability;
use timely::ExchangeData;

use super::WindowState;
use crate::hash::key_hash;
use crate::result::{Kind, ResultLine};
use crate::time::{EventTime, Position, Timed, WindowSpec};

/// A window metric over records applied in order to per-key state. Its settings (thresholds,
/// rules) are the value's fields.
pub trait OrderedAggregate: 'static {
    /// Input record.
    type Record: ExchangeData;
    /// Per-key state carried across windows (saved in checkpoints).
    type State: ExchangeData + Default;
    /// What one record observes in the state after applying it.
    type Obs;
    /// Window accumulator of observations.
    type Acc: ExchangeData + Default;
    /// Output stream name.
    const STREAM: &'static str;
    /// The grouping key of a record.
    fn key(rec: &Self::Record) -> &str;
    /// Applies a record to its key's state and returns what it observes.
    fn step(&self, state: &mut Self::State, rec: &Timed<Self::Record>) -> Self::Obs;
    /// Adds an observation to a window's accumulator.
    fn add(&self, acc: &mut Self::Acc, rec: &Timed<Self::Record>, obs: &Self::Obs);
    /// Renders a result, or none for this key and window.
    fn finish(
        &self,
        key: &str,
        window_start: EventTime,
        window_end: EventTime,
        acc: &Self::Acc,
    ) -> Option<ResultLine>;
    /// The first window end after `after` at which the key's state has results of its own
    /// ([`tick`](Self::tick)), whether or not records arrive in that window. None by default:
    /// results come from records only.
    fn next_tick(&self, _state: &Self::State, _after: EventTime) -> Option<EventTime> {
        None
    }
    /// The key's results at window end `end`, from its state with every record before `end`
    /// applied and none after (final at once).
    fn tick(&self, _key: &str, _state: &mut Self::State, _end: EventTime) -> Vec<ResultLine> {
        Vec::new()
    }
    /// The last window end a tick of this state is due at, once no more records come.
    fn last_tick(&self, _state: &Self::State) -> Option<EventTime> {
        None
    }
}

/// One key's state with the event time of its last record and the window end of its last tick.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Keyed<S> {
    last: EventTime,
    ticked: EventTime,
    state: S,
}

/// Per key and window: the accumulator and the last revision emitted.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct KeyAcc<Acc> {
    acc: Acc,
    revision: u32,
}

/// One window: `cap` (at `end - 1`) is held until its final result.
type Window<Acc> = super::KeyedWindow<KeyAcc<Acc>>;

/// The checkpointed state: key states, records not yet applied (with their stamps), and
/// windows (end, still open, keys).
type Snapshot<A> = (
    Vec<(String, Keyed<<A as OrderedAggregate>::State>)>,
    Vec<(EventTime, Timed<<A as OrderedAggregate>::Record>)>,
    Vec<(
        EventTime,
        bool,
        Vec<(String, KeyAcc<<A as OrderedAggregate>::Acc>)>,
    )>,
);

/// Where a waiting record applies: event time, input position, arrival.
type ApplyOrder = (EventTime, Position, u64);

/// The state of one ordered window operator on one worker.
pub(super) struct Ordered<A: OrderedAggregate> {
    agg: A,
    spec: WindowSpec,
    /// The dataflow runs session windows (read here as tumbling ones): the source's `min_end`
    /// speaks of sessions, not of these windows.
    sessions: bool,
    ttl: EventTime,
    states: HashMap<String, Keyed<A::State>>,
    /// Records not applied yet, in the order they apply (event time, input position, arrival),
    /// with the time they were stamped at (raised to `floor`).
    pending: BTreeMap<ApplyOrder, (EventTime, Timed<A::Record>)>,
    /// Records received, to keep ties in arrival order.
    arrivals: u64,
    /// Every waiting record's stamp is at least this: the last frontier settled.
    floor: EventTime,
    /// One capability per stamp of a pending record.
    caps: BTreeMap<EventTime, Capability<EventTime>>,
    windows: BTreeMap<EventTime, Window<A::Acc>>,
    /// Held while a key's state has a tick due: at the earliest one's window end − 1.
    tick_cap: Option<Capability<EventTime>>,
}

impl<A: OrderedAggregate> Ordered<A> {
    /// State for fixed windows of `spec` (session windows are read as tumbling windows of the
    /// same size), key states reset after `ttl` ms of event time without a record.
    pub(super) fn new(agg: A, spec: WindowSpec, ttl: EventTime) -> Self {
        let sessions = spec.session_gap_ms.is_some();
        let spec = WindowSpec {
            session_gap_ms: None,
            ..spec
        };
        Self {
            agg,
            spec,
            sessions,
            ttl: ttl.max(1),
            states: HashMap::default(),
            pending: BTreeMap::new(),
            arrivals: 0,
            floor: 0,
            caps: BTreeMap::new(),
            windows: BTreeMap::new(),
            tick_cap: None,
        }
    }

    /// The window boundary at or before `lim`: every on-time record earlier than it has arrived.
    fn boundary(&self, lim: EventTime) -> EventTime {
        if lim == EventTime::MAX {
            return lim;
        }
        lim / self.spec.slide_ms * self.spec.slide_ms
    }

    /// The earliest frontier at which a record at `t` is applied.
    fn release_at(&self, t: EventTime) -> EventTime {
        (t / self.spec.slide_ms)
            .saturating_add(1)
            .saturating_mul(self.spec.slide_ms)
    }

    /// A capability at `t` (at or after the earliest held one).
    fn cap_at(&self, t: EventTime) -> Option<Capability<EventTime>> {
        let first = self.caps.values().next().into_iter().chain(&self.tick_cap);
        first
            .min_by_key(|c| *c.time())
            .map(|c| c.delayed(&t.max(*c.time())))
    }

    /// The earliest tick due among the key states.
    fn next_tick(&self) -> Option<EventTime> {
        self.states
            .values()
            .filter_map(|k| self.agg.next_tick(&k.state, k.ticked))
            .min()
    }
}

/// Fires the ticks of one key's state due at window ends up to `until`, into `out` by end.
fn tick_until<A: OrderedAggregate>(
    agg: &A,
    key: &str,
    keyed: &mut Keyed<A::State>,
    until: EventTime,
    out: &mut BTreeMap<EventTime, Vec<ResultLine>>,
) {
    while let Some(end) = agg.next_tick(&keyed.state, keyed.ticked) {
        if end > until || end <= keyed.ticked {
            break;
        }
        let lines = agg.tick(key, &mut keyed.state, end);
        keyed.ticked = end;
        if !lines.is_empty() {
            out.entry(end).or_default().extend(lines);
        }
    }
}

impl<A: OrderedAggregate> WindowState for Ordered<A> {
    type Input = Timed<A::Record>;
    type Snapshot = Snapshot<A>;
    const NAME: &'static str = "OrderedWindow";

    fn route(r: &Timed<A::Record>) -> u64 {
        key_hash(A::key(&r.rec))
    }

    fn apply(&mut self, cap: &Capability<EventTime>, items: Vec<Timed<A::Record>>) {
        let t = *cap.time();
        let (spec, sessions) = (self.spec, self.sessions);
        // A record stamped after its first window was final (within --allowed-lateness) would
        // change state that later windows already read, and when it arrives relative to their
        // results depends on timing: state spanning windows takes on-time records only.
        let on_time = |r: &Timed<A::Record>| {
            spec.window_ends(r.time)
                .find(|e| sessions || *e >= r.min_end)
                .is_some_and(|first| t < first)
        };
        let items: Vec<(EventTime, Timed<A::Record>)> =
            items.into_iter().filter(on_time).map(|r| (t, r)).collect();
        if !items.is_empty() {
            self.caps.entry(t).or_insert_with(|| cap.clone());
            for (t, r) in items {
                self.arrivals += 1;
                self.pending.insert((r.time, r.pos, self.arrivals), (t, r));
            }
        }
    }

    fn compact(_t: EventTime, _items: &mut Vec<Timed<A::Record>>) {
        // Records change state one by one: nothing merges.
    }

    fn settle(&mut self, lim: EventTime) -> Vec<(Capability<EventTime>, Vec<ResultLine>)> {
        let mut out = Vec::new();
        let bound = self.boundary(lim);
        // Already in order: the records before `bound`, without touching those after it.
        let waiting = self.pending.split_off(&(bound, Position::default(), 0));
        let ready = std::mem::replace(&mut self.pending, waiting);

        // Apply in order. Only on-time records get here (see `apply`), so every window they
        // count in is still open. A key's ticks due at or before a record's time come first.
        let mut ticks = BTreeMap::new();
        for (_, r) in ready.values() {
            let key = A::key(&r.rec);
            let keyed = match self.states.get_mut(key) {
                Some(k) => k,
                None => self.states.entry(key.to_string()).or_insert(Keyed {
                    last: r.time,
                    ticked: 0,
                    state: A::State::default(),
                }),
            };
            tick_until(&self.agg, key, keyed, r.time, &mut ticks);
            if keyed.last.saturating_add(self.ttl) <= r.time {
                keyed.state = A::State::default();
            }
            keyed.last = keyed.last.max(r.time);
            let obs = self.agg.step(&mut keyed.state, r);
            let min_end = if self.sessions { 0 } else { r.min_end };
            for end in self.spec.window_ends(r.time).filter(|e| *e >= min_end) {
                if !self.windows.contains_key(&end) {
                    let cap = self.cap_at(end - 1);
                    self.windows.insert(
                        end,
                        Window {
                            cap,
                            keys: HashMap::default(),
                        },
                    );
                }
                // Inserted just above when missing.
                let w = self.windows.get_mut(&end).unwrap();
                let k = w.keys.entry(key.to_string()).or_insert_with(|| KeyAcc {
                    acc: A::Acc::default(),
                    revision: 0,
                });
                self.agg.add(&mut k.acc, r, &obs);
            }
        }
        for (key, keyed) in self.states.iter_mut() {
            tick_until(&self.agg, key, keyed, bound, &mut ticks);
        }
        for (end, lines) in ticks {
            let now = super::now_us();
            let lines = lines
                .into_iter()
                .map(|mut l| {
                    l.final_at_us = now;
                    l
                })
                .collect();
            // Held at the earliest tick due (or a record stamp before it): always some.
            if let Some(cap) = self.cap_at(end - 1) {
                out.push((cap, lines));
            }
        }

        // Final results of the windows the frontier reached.
        for (&end, w) in self.windows.iter_mut() {
            if lim < end {
                break;
            }
            let Some(cap) = w.cap.take() else { continue };
            let start = self.spec.window_start(end);
            let agg = &self.agg;
            let lines = super::finals(w.keys.iter_mut(), |k, st| {
                let line = agg.finish(k, start, end, &st.acc)?;
                st.revision += 1;
                Some(line.tagged(Kind::Final, st.revision, None))
            });
            out.push((cap, lines));
        }

        // Windows past the allowed lateness and silent keys can no longer change anything.
        let allowed = self.spec.allowed_ms;
        self.windows
            .retain(|&end, w| w.cap.is_some() || lim < end.saturating_add(allowed));
        let ttl = self.ttl;
        let agg = &self.agg;
        self.states.retain(|_, k| {
            k.last.saturating_add(ttl) > bound || agg.next_tick(&k.state, k.ticked).is_some()
        });

        // Records still waiting belong to windows ending after `lim`: their stamps move up to it
        // (through `floor`, not record by record), and so do the capabilities held for them.
        let floor = lim.min(EventTime::MAX - 1);
        self.floor = self.floor.max(floor);
        let mut old = std::mem::take(&mut self.caps);
        let first = old.values().next().cloned();
        let mut caps = BTreeMap::new();
        if let Some(first) = first.as_ref().filter(|_| !self.pending.is_empty()) {
            let at = floor.max(*first.time());
            caps.insert(at, first.delayed(&at));
            caps.append(&mut old.split_off(&(floor + 1)));
        }
        let tick_cap = self.next_tick().and_then(|t| {
            let earliest = first.iter().chain(&self.tick_cap);
            earliest
                .min_by_key(|c| *c.time())
                .map(|c| c.delayed(&(t - 1).max(*c.time())))
        });
        self.tick_cap = tick_cap;
        self.caps = caps;
        out
    }

    fn updates(&mut self, _emit: &mut dyn FnMut(&Capability<EventTime>, Vec<ResultLine>)) {
        // A window's records are applied only once they are complete: no early results.
    }

    fn snapshot(&self) -> Vec<u8> {
        let states: Vec<(&String, &Keyed<A::State>)> = self.states.iter().collect();
        type WindowRef<'a, Acc> = (EventTime, bool, Vec<(&'a String, &'a KeyAcc<Acc>)>);
        let windows: Vec<WindowRef<'_, A::Acc>> = self
            .windows
            .iter()
            .map(|(end, w)| (*end, w.cap.is_some(), w.keys.iter().collect()))
            .collect();
        let pending: Vec<(EventTime, &Timed<A::Record>)> = self
            .pending
            .values()
            .map(|(stamp, r)| ((*stamp).max(self.floor), r))
            .collect();
        crate::checkpoint::encode(&(states, pending, windows))
    }

    fn restore(
        &mut self,
        snap: Snapshot<A>,
        keep: &dyn Fn(&str) -> bool,
        epoch: EventTime,
        cap: &Capability<EventTime>,
    ) {
        let (states, pending, windows) = snap;
        self.states
            .extend(states.into_iter().filter(|(k, _)| keep(k)));
        self.tick_cap = self.next_tick().map(|t| cap.delayed(&(t - 1).max(epoch)));
        for (stamp, r) in pending.into_iter().filter(|(_, r)| keep(A::key(&r.rec))) {
            let stamp = stamp.max(epoch);
            self.caps
                .entry(stamp)
                .or_insert_with(|| cap.delayed(&stamp));
            self.arrivals += 1;
            self.pending
                .insert((r.time, r.pos, self.arrivals), (stamp, r));
        }
        for (end, open, keys) in windows {
            let is_final = !open || end <= epoch;
            if is_final && end.saturating_add(self.spec.allowed_ms) <= epoch {
                continue;
            }
            let settled_here = open && end <= epoch;
            let keys = keys
                .into_iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, mut st)| {
                    st.revision += u32::from(settled_here);
                    (k, st)
                })
                .collect();
            super::restore_keys(&mut self.windows, end, !is_final, keys, cap);
        }
    }

    /// The state changes at the first epoch at which the earliest waiting record is applied,
    /// or a tick is due.
    fn next_correction(&self) -> Option<EventTime> {
        let first = self.pending.keys().next().map(|k| k.0);
        let record = first.map(|t| self.release_at(t) - 1);
        let tick = self.next_tick().map(|t| t - 1);
        record.into_iter().chain(tick).min()
    }

    fn horizon(&self) -> Option<EventTime> {
        let windows = self
            .windows
            .keys()
            .next_back()
            .map(|e| e.saturating_add(self.spec.allowed_ms));
        let pending = self
            .pending
            .values()
            .map(|(s, r)| {
                self.release_at(r.time)
                    .max((*s).max(self.floor))
                    .saturating_add(self.spec.size_ms)
            })
            .max();
        let ticks = self
            .states
            .values()
            .filter_map(|k| self.agg.last_tick(&k.state))
            .max();
        let parts = windows.into_iter().chain(pending).chain(ticks);
        Some(parts.max().unwrap_or(0))
    }

    fn counts(&self) -> (u64, u64) {
        let open = self.windows.values().filter(|w| w.cap.is_some()).count() as u64;
        (open, self.states.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::OperatorContext;
    use crate::result::Cell;
    use crate::time::Position;
    use crate::window::Emission;
    use std::time::Duration;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::core::{Input, Probe};

    /// State: the key's last value; a record observes its change from the previous one, so the
    /// result depends on the order records are applied in.
    struct Steps;

    impl OrderedAggregate for Steps {
        type Record = (String, f64);
        type State = f64;
        type Obs = f64;
        type Acc = Vec<f64>;
        const STREAM: &'static str = "steps";
        fn key(r: &(String, f64)) -> &str {
            &r.0
        }
        fn step(&self, state: &mut f64, r: &Timed<(String, f64)>) -> f64 {
            let change = r.rec.1 - *state;
            *state = r.rec.1;
            change
        }
        fn add(&self, acc: &mut Vec<f64>, _r: &Timed<(String, f64)>, obs: &f64) {
            acc.push(*obs);
        }
        fn finish(
            &self,
            key: &str,
            start: EventTime,
            end: EventTime,
            acc: &Vec<f64>,
        ) -> Option<ResultLine> {
            let steps = acc
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let columns = vec![("steps", Cell::Text(steps))];
            Some(ResultLine::new(
                Self::STREAM,
                "key",
                key,
                ("T", key),
                (start, end),
                columns,
            ))
        }
    }

    fn rec(t: EventTime, offset: u64, v: f64) -> Timed<(String, f64)> {
        Timed {
            min_end: 0,
            time: t,
            pos: Position {
                partition: 0,
                offset,
                index: 0,
            },
            rec: ("k".to_string(), v),
        }
    }

    /// Records stamped at one time.
    type Batch = (EventTime, Vec<Timed<(String, f64)>>);

    /// Sends `batches` and returns each result's (window end, steps).
    fn run(batches: Vec<Batch>) -> Vec<(EventTime, String)> {
        let rx = timely::execute_directly(move |worker| {
            let (mut input, probe, rx) = worker.dataflow::<EventTime, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<Timed<(String, f64)>>>();
                let spec = WindowSpec::new(Duration::from_secs(60), Duration::ZERO).unwrap();
                let ctx = OperatorContext {
                    stats: crate::stats::RunStats::default(),
                    ckpt: None,
                    emission: Emission { trigger: None },
                    key_groups: Default::default(),
                    local_workers: 1,
                };
                let out = super::super::ordered_windowed(Steps, stream, spec, 3_600_000, ctx);
                let (probe, out) = out.probe();
                (input, probe, out.capture())
            });
            for (stamp, recs) in batches {
                input.advance_to(stamp);
                for r in recs {
                    input.send(r);
                }
                input.advance_to(stamp + 1);
                while probe.less_than(input.time()) {
                    worker.step();
                }
            }
            drop(input);
            while worker.step() {}
            rx
        });
        rx.try_iter()
            .filter_map(|e| match e {
                Event::Messages(_, lines) => Some(lines),
                _ => None,
            })
            .flatten()
            .map(|l| match l.get("steps") {
                Some(Cell::Text(s)) => (l.window_end, s.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn records_are_applied_in_event_time_order_whatever_their_arrival() {
        // Out of order across batches and within one: applied as 10 s → 1, 20 s → 3, 30 s → 6
        // (ties in input order), then 70 s → 10 in the next window, state carried over.
        let out = run(vec![
            (0, vec![rec(30_000, 3, 6.0), rec(10_000, 1, 1.0)]),
            (5_000, vec![rec(20_000, 2, 3.0), rec(70_000, 4, 10.0)]),
        ]);
        assert_eq!(
            out,
            [(60_000, "1,2,3".to_string()), (120_000, "4".to_string())]
        );
    }
}
