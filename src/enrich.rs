//! Results enriched "as of" their window's end with versioned reference data (market titles),
//! on differential dataflow.
//!
//! Results and reference versions become two collections keyed alike. A version with event time
//! `v` enters at `max(v, its stamp)`: on time it meets every result of a window ending after `v`
//! the moment that result exists; a late version changes the join's output at its arrival, which
//! is a correction of every result it enriches. The join keeps, per result, the latest version
//! with `v < window end` (and not older than `valid`). Results stay in the join for `hold` after
//! their stamp to take late versions; versions leave it once no held result can use them, so
//! memory is bounded. What differential emits is turned back into result lines by one operator,
//! which owns the revisions of each (key, window): the first line is the window's own final or
//! correction, each later change of its enrichment a `correction` replacing the previous one.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::context::OperatorContext;
use crate::hash::key_hash;
use crate::result::{Kind, ResultLine};
use crate::time::EventTime;

/// One version of the reference data of a key.
pub trait Version: differential_dataflow::ExchangeData + Hash {
    /// Its event time: it applies to windows ending after it.
    fn time(&self) -> EventTime;
    /// Writes it into a result line (its columns), or, for `None`, what is unknown.
    fn apply(version: Option<&Self>, line: &mut ResultLine);
}

/// A result as the join holds it: ordered and hashable, so its identity is its encoding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Held {
    end: EventTime,
    revision: u32,
    line: Vec<u8>,
}

type Update<V> = (((String, Held), Option<V>), EventTime, isize);

/// A version as the join holds it: its stamp, key and value.
type Live<V> = (EventTime, String, V);

/// The versions as a collection: each enters at `max(its time, its stamp)` and leaves once no
/// held result can use it. The versions still live are saved at every checkpoint epoch and
/// entered again on a restart (the source does not read them again).
fn checkpointed_versions<'s, V: Version>(
    versions: StreamVec<'s, EventTime, (String, V)>,
    hold: EventTime,
    valid: EventTime,
    ctx: OperatorContext,
) -> differential_dataflow::VecCollection<'s, EventTime, (String, V)> {
    let (ckpt, key_groups) = (ctx.ckpt, ctx.key_groups);
    let (worker, peers) = (versions.scope().index(), versions.scope().peers());
    let at = move |stamp: EventTime, v: &V| v.time().max(stamp);
    let gone =
        move |stamp: EventTime, v: &V| at(stamp, v).saturating_add(valid).saturating_add(hold);
    versions
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<((String, V), EventTime, isize)>>, _, _, _>(
            Pipeline,
            "Versions",
            move |init_cap, _| {
                let epoch = ckpt.as_ref().and_then(|c| c.store.epoch()).unwrap_or(0);
                let mut next = ckpt.as_ref().map_or(EventTime::MAX, |c| c.store.after(epoch));
                // Versions are read where their partition is; after a rescale each is entered
                // again by one worker: the owner of its key.
                let mut live: Vec<Live<V>> = Vec::new();
                if let Some(c) = &ckpt {
                    let rescaled = c.rescaled();
                    for saved in c.restored_all::<Vec<Live<V>>>(worker) {
                        live.extend(saved.into_iter().filter(|(_, k, _)| {
                            !rescaled || key_groups.owner(k, peers) == worker
                        }));
                    }
                }
                let mut restore = (!live.is_empty()).then_some(init_cap);
                move |(input, frontier), output| {
                    let mut give = |cap: &Capability<EventTime>, stamp: EventTime, k: String, v: V| {
                        let mut session = output.session(cap);
                        session.give(((k.clone(), v.clone()), gone(stamp, &v), -1));
                        let t = at(stamp, &v);
                        session.give(((k, v), t, 1));
                    };
                    if let Some(cap) = restore.take() {
                        for (stamp, k, v) in live.iter().cloned() {
                            give(&cap, stamp, k, v);
                        }
                    }
                    input.for_each_stamp(|cap, data| {
                        let stamp = cap.least().copied().unwrap_or_default();
                        let cap = cap.delayed(&stamp, 0);
                        for (k, v) in data.flat_map(|d| d.drain(..)) {
                            live.push((stamp, k.clone(), v.clone()));
                            give(&cap, stamp, k, v);
                        }
                    });
                    let lim = frontier.frontier().first().copied().unwrap_or(EventTime::MAX);
                    if let Some(c) = &ckpt {
                        // The versions stamped before each epoch and not yet gone there.
                        let (entries, n) = c.save_epochs(lim, next, |lo| {
                            let kept: Vec<&Live<V>> = live
                                .iter()
                                .filter(|(s, _, v)| *s < lo && gone(*s, v) > lo)
                                .collect();
                            let change = live
                                .iter()
                                .flat_map(|(s, _, v)| [c.store.after(*s), c.store.after(gone(*s, v).saturating_sub(1))])
                                .filter(|e| *e > lo)
                                .min();
                            (crate::checkpoint::encode(&kept), change)
                        });
                        next = n;
                        if !entries.is_empty() {
                            c.write(worker, entries);
                        }
                        c.store.set_frontier(&c.op, worker, lim);
                    }
                    live.retain(|(s, _, v)| gone(*s, v) > lim);
                }
            },
        )
        .as_collection()
}

/// Each result of `results` with the version of its key from `versions` (key, version) known as
/// of its window's end. Results take late versions for `hold` ms of event time after they are
/// stamped; a version applies to windows ending at most `valid` ms after its time.
pub(crate) fn as_of<'s, V: Version>(
    results: StreamVec<'s, EventTime, ResultLine>,
    versions: StreamVec<'s, EventTime, (String, V)>,
    (hold, valid): (EventTime, EventTime),
    ctx: OperatorContext,
) -> StreamVec<'s, EventTime, ResultLine> {
    let held = results
        .unary::<timely::container::CapacityContainerBuilder<Vec<((String, Held), EventTime, isize)>>, _, _, _>(
            Pipeline,
            "HeldResults",
            move |_, _| {
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let t = cap.least().copied().unwrap_or_default();
                        let mut session = output.session(&cap);
                        for line in data.flat_map(|d| d.drain(..)) {
                            let h = Held {
                                end: line.window_end,
                                revision: line.revision,
                                line: crate::checkpoint::encode(&line),
                            };
                            let k = line.key;
                            session.give(((k.clone(), h.clone()), t.saturating_add(hold), -1));
                            session.give(((k, h), t, 1));
                        }
                    });
                }
            },
        )
        .as_collection();
    let key_groups = ctx.key_groups;
    let versions = checkpointed_versions(versions, hold, valid, ctx);
    let matched = held
        .clone()
        .join_map(versions, |k, h, v| ((k.clone(), h.clone()), v.clone()))
        .filter(move |((_, h), v)| v.time() < h.end && h.end <= v.time().saturating_add(valid))
        .reduce(|_, found, out| {
            // Versions come sorted: the last is the latest.
            if let Some((v, _)) = found.last() {
                out.push(((*v).clone(), 1isize));
            }
        });
    let unmatched = held
        .map(|k| (k, ()))
        .antijoin(matched.clone().map(|(k, _)| k))
        .map(|(k, ())| (k, None));
    let all = matched.map(|(k, v)| (k, Some(v))).concat(unmatched);
    lines(all.inner, key_groups)
}

/// Per (key, window): the last revision written, and the version each held result was written
/// with.
struct Written<V> {
    revision: u32,
    with: HashMap<u32, Option<V>>,
}

impl<V> Default for Written<V> {
    fn default() -> Self {
        Self {
            revision: 0,
            with: HashMap::new(),
        }
    }
}

/// Turns the joined collection's changes back into result lines, time by time once complete.
fn lines<'s, V: Version>(
    changes: StreamVec<'s, EventTime, Update<V>>,
    key_groups: crate::hash::KeyGroups,
) -> StreamVec<'s, EventTime, ResultLine> {
    changes.unary_frontier(
        Exchange::new(move |u: &Update<V>| key_groups.route(key_hash(&(u.0).0 .0))),
        "AsOfResults",
        |_, _| {
            let mut pending: BTreeMap<EventTime, (Capability<EventTime>, Vec<Update<V>>)> =
                BTreeMap::new();
            let mut written: HashMap<(String, EventTime), Written<V>> = HashMap::new();
            move |(input, frontier), output| {
                // Updates carry their own times (at or after their container's stamp): each
                // waits, with a capability at its time, until that time is complete.
                input.for_each_stamp(|cap, data| {
                    for d in data {
                        for u in d.drain(..) {
                            pending
                                .entry(u.1)
                                .or_insert_with(|| (cap.delayed(&u.1, 0), Vec::new()))
                                .1
                                .push(u);
                        }
                    }
                });
                while let Some(e) = pending.first_entry() {
                    if frontier.less_equal(e.key()) {
                        break;
                    }
                    let (cap, mut updates) = e.remove();
                    // Consolidated first: one change can reach here as several updates that
                    // cancel out (the antijoin's two paths).
                    let mut net: BTreeMap<((String, Held), Option<V>), isize> = BTreeMap::new();
                    for (kv, _, diff) in updates.drain(..) {
                        *net.entry(kv).or_default() += diff;
                    }
                    let mut added: BTreeMap<(String, Held), Option<V>> = BTreeMap::new();
                    let mut removed: Vec<(String, Held)> = Vec::new();
                    for ((k, v), diff) in net {
                        if diff > 0 {
                            added.insert(k, v);
                        } else if diff < 0 {
                            removed.push(k);
                        }
                    }
                    // A result that left the join (held long enough) is forgotten.
                    for (key, h) in removed {
                        if added.contains_key(&(key.clone(), h.clone())) {
                            continue;
                        }
                        if let std::collections::hash_map::Entry::Occupied(mut w) =
                            written.entry((key, h.end))
                        {
                            w.get_mut().with.remove(&h.revision);
                            if w.get().with.is_empty() {
                                w.remove();
                            }
                        }
                    }
                    let mut out = Vec::new();
                    for ((key, h), v) in added {
                        let w = written.entry((key, h.end)).or_default();
                        let before = w.with.get(&h.revision);
                        if before == Some(&v) {
                            continue;
                        }
                        let Ok(mut line) = bincode::deserialize::<ResultLine>(&h.line) else {
                            continue;
                        };
                        V::apply(v.as_ref(), &mut line);
                        let kind = if before.is_some() || line.kind == Kind::Correction {
                            Kind::Correction
                        } else {
                            line.kind
                        };
                        // A result's own revision stands unless an enrichment came between
                        // (after a restart this operator starts afresh; the window's numbering
                        // still holds).
                        w.revision = if before.is_some() {
                            w.revision + 1
                        } else {
                            (w.revision + 1).max(line.revision)
                        };
                        let replaces =
                            (kind == Kind::Correction && w.revision > 1).then(|| w.revision - 1);
                        w.with.insert(h.revision, v);
                        out.push(line.tagged(kind, w.revision, replaces));
                    }
                    if !out.is_empty() {
                        output.session(&cap).give_iterator(out.into_iter());
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::Cell;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::core::Input;
    use timely::dataflow::operators::Probe;

    /// A test version: a name valid from `time`.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    struct Name {
        time: EventTime,
        name: String,
    }

    impl Version for Name {
        fn time(&self) -> EventTime {
            self.time
        }
        fn apply(v: Option<&Self>, line: &mut ResultLine) {
            line.columns[0].1 = v.map_or(Cell::NoText, |v| Cell::Text(v.name.clone()));
        }
    }

    fn line(key: &str, end: EventTime) -> ResultLine {
        ResultLine::new(
            "s",
            "k",
            key,
            ("T", key),
            (end - 60_000, end),
            vec![("name", Cell::NoText)],
        )
    }

    /// Results at their window's end (`end - 1`), versions at their stamps; the frontier moves
    /// to each step's time. Returns (name, kind, revision) per key and window end, in order.
    /// One step: a time, the results stamped then, the versions stamped then.
    type Step = (EventTime, Vec<ResultLine>, Vec<(String, Name)>);

    fn run(steps: Vec<Step>) -> Vec<(String, EventTime, Option<String>, Kind, u32)> {
        let rx = timely::execute_directly(move |worker| {
            let (mut results, mut versions, probe, rx) =
                worker.dataflow::<EventTime, _, _>(|scope| {
                    let (ri, r) = scope.new_input::<Vec<ResultLine>>();
                    let (vi, v) = scope.new_input::<Vec<(String, Name)>>();
                    let ctx = OperatorContext {
                        stats: crate::stats::RunStats::default(),
                        ckpt: None,
                        emission: crate::context::Emission::default(),
                        key_groups: Default::default(),
                        local_workers: 1,
                    };
                    let (probe, out) = as_of(r, v, (3_600_000, 86_400_000), ctx).probe();
                    (ri, vi, probe, out.capture())
                });
            for (t, rs, vs) in steps {
                results.advance_to(t);
                versions.advance_to(t);
                for r in rs {
                    results.send(r);
                }
                for v in vs {
                    versions.send(v);
                }
                results.advance_to(t + 1);
                versions.advance_to(t + 1);
                while probe.less_than(results.time()) {
                    worker.step();
                }
            }
            drop((results, versions));
            while worker.step() {}
            rx
        });
        rx.try_iter()
            .filter_map(|e| match e {
                Event::Messages(_, lines) => Some(lines),
                _ => None,
            })
            .flatten()
            .map(|l| {
                let name = match &l.columns[0].1 {
                    Cell::Text(s) => Some(s.clone()),
                    _ => None,
                };
                (l.key.clone(), l.window_end, name, l.kind, l.revision)
            })
            .collect()
    }

    fn v(key: &str, time: EventTime, name: &str) -> (String, Name) {
        let name = name.to_string();
        (key.to_string(), Name { time, name })
    }

    #[test]
    fn a_result_carries_the_latest_version_before_its_window_end() {
        let out = run(vec![
            (
                1_000,
                vec![],
                vec![v("a", 1_000, "old"), v("a", 120_000, "new")],
            ),
            (59_999, vec![line("a", 60_000)], vec![]),
            (119_999, vec![line("a", 120_000)], vec![]),
            (
                179_999,
                vec![line("a", 180_000), line("b", 180_000)],
                vec![],
            ),
        ]);
        assert_eq!(
            out,
            [
                ("a".into(), 60_000, Some("old".into()), Kind::Final, 1),
                // A version at exactly the window end belongs to the next window.
                ("a".into(), 120_000, Some("old".into()), Kind::Final, 1),
                ("a".into(), 180_000, Some("new".into()), Kind::Final, 1),
                ("b".into(), 180_000, None, Kind::Final, 1),
            ]
        );
    }

    #[test]
    fn late_metadata_corrects_the_results_it_enriches() {
        let out = run(vec![
            (59_999, vec![line("a", 60_000)], vec![]),
            // Known only at 200 s, valid from 10 s: the final of the window ending at 60 s
            // is corrected; the later window is final with it.
            (200_000, vec![], vec![v("a", 10_000, "late")]),
            (239_999, vec![line("a", 240_000)], vec![]),
        ]);
        assert_eq!(
            out,
            [
                ("a".into(), 60_000, None, Kind::Final, 1),
                ("a".into(), 60_000, Some("late".into()), Kind::Correction, 2),
                ("a".into(), 240_000, Some("late".into()), Kind::Final, 1),
            ]
        );
    }
}
