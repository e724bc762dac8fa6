//! Session windows: per key, records closer than `--session-gap` in event time form one
//! session, `[first event, last event + gap)`. The same watermark, emission and correction
//! rules as the fixed windows apply: a session's `final` result goes out when the watermark
//! reaches its end, `update`s of changed open sessions every trigger, and records within the
//! allowed lateness after a final result produce a `correction`.
//!
//! Records are exchanged by key as they are (sessions cannot be pre-aggregated before their
//! boundaries are known). A record never extends a session whose final result is out: it opens
//! a new one, or corrects the final session it falls in.

use std::collections::HashMap;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::stats::RunStats;
use crate::time::{EventTime, Timed, WindowSpec};
use crate::window::{key_hash, now_us, Emission, Kind, ResultLine, WindowAggregate};

/// One session of one key.
struct Session<Acc> {
    start: EventTime,
    last: EventTime,
    acc: Acc,
    /// Held at `end - 1` until the final result; `None` afterwards.
    cap: Option<Capability<EventTime>>,
    revision: u32,
    dirty: bool,
}

impl<Acc> Session<Acc> {
    fn end(&self, gap: u64) -> EventTime {
        self.last.saturating_add(gap)
    }
    /// Whether a record at `t` belongs to this session (closer than the gap to it).
    fn reaches(&self, t: EventTime, gap: u64) -> bool {
        t.saturating_add(gap) > self.start && t < self.end(gap)
    }
}

/// Aggregates `records` in session windows (see the module documentation).
pub fn sessions<'s, A: WindowAggregate>(
    records: StreamVec<'s, EventTime, Timed<A::Record>>,
    spec: WindowSpec,
    emission: Emission,
    stats: RunStats,
) -> StreamVec<'s, EventTime, ResultLine> {
    let gap = spec.session_gap_ms.unwrap_or(spec.size_ms);
    let scope = records.scope();
    let worker = scope.index();
    records.unary_frontier(
        Exchange::new(|r: &Timed<A::Record>| key_hash(A::key(&r.rec))),
        &format!("Sessions({})", A::STREAM),
        move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut keys: HashMap<String, Vec<Session<A::Acc>>> = HashMap::new();
            // Corrections wait until the watermark reaches their session's end.
            let mut pending: Vec<(Capability<EventTime>, Timed<A::Record>)> = Vec::new();
            let mut next_trigger = emission.trigger.map(|t| std::time::Instant::now() + t);
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let s = cap.least().copied().unwrap_or_default();
                    for batch in data {
                        for r in batch.drain(..) {
                            if s >= r.time.saturating_add(gap) {
                                pending.push((cap.delayed(&s, 0), r));
                                continue;
                            }
                            let mut acc = A::Acc::default();
                            A::add(&mut acc, &r);
                            let list = keys.entry(A::key(&r.rec).to_string()).or_default();
                            // Merge every open session the record reaches into one.
                            let mut merged = Session {
                                start: r.time,
                                last: r.time,
                                acc,
                                cap: None,
                                revision: 0,
                                dirty: true,
                            };
                            let mut i = 0;
                            while i < list.len() {
                                if list[i].cap.is_some() && list[i].reaches(r.time, gap) {
                                    let other = list.swap_remove(i);
                                    merged.start = merged.start.min(other.start);
                                    merged.last = merged.last.max(other.last);
                                    A::merge(&mut merged.acc, &other.acc);
                                    merged.revision = merged.revision.max(other.revision);
                                } else {
                                    i += 1;
                                }
                            }
                            merged.cap = Some(cap.delayed(&(merged.end(gap) - 1), 0));
                            list.push(merged);
                        }
                    }
                });

                // Final results of sessions whose end the watermark reached.
                let mut finals: Vec<(Capability<EventTime>, ResultLine)> = Vec::new();
                let final_at_us = now_us();
                for (key, list) in keys.iter_mut() {
                    for sess in list.iter_mut() {
                        let end = sess.end(gap);
                        if sess.cap.is_none() || frontier.less_than(&end) {
                            continue;
                        }
                        let cap = sess
                            .cap
                            .take()
                            .unwrap_or_else(|| unreachable!("checked above"));
                        sess.revision += 1;
                        sess.dirty = false;
                        let mut line = A::finish(key, sess.start, end, &sess.acc).tagged(
                            Kind::Final,
                            sess.revision,
                            None,
                        );
                        line.final_at_us = final_at_us;
                        finals.push((cap, line));
                    }
                }
                finals.sort_by(|a, b| (a.1.window_end, &a.1.key).cmp(&(b.1.window_end, &b.1.key)));
                for (cap, line) in finals {
                    output.session(&cap).give(line);
                }

                // Corrections: into the final session the record falls in, or a new one.
                pending.sort_by_key(|(cap, r)| (*cap.time(), r.pos));
                let mut waiting = Vec::new();
                for (cap, r) in pending.drain(..) {
                    let end = r.time.saturating_add(gap);
                    if frontier.less_than(&end) {
                        waiting.push((cap, r));
                        continue;
                    }
                    let key = A::key(&r.rec).to_string();
                    let list = keys.entry(key.clone()).or_default();
                    let idx = match list
                        .iter()
                        .position(|x| x.cap.is_none() && x.start <= r.time && r.time < x.end(gap))
                    {
                        Some(i) => i,
                        None => {
                            let acc = A::Acc::default();
                            list.push(Session {
                                start: r.time,
                                last: r.time,
                                acc,
                                cap: None,
                                revision: 0,
                                dirty: false,
                            });
                            list.len() - 1
                        }
                    };
                    let sess = &mut list[idx];
                    A::add(&mut sess.acc, &r);
                    let replaces = (sess.revision > 0).then_some(sess.revision);
                    sess.revision += 1;
                    let line = A::finish(&key, sess.start, sess.end(gap), &sess.acc).tagged(
                        Kind::Correction,
                        sess.revision,
                        replaces,
                    );
                    output.session(&cap).give(line);
                }
                pending = waiting;

                // Early results of changed open sessions.
                if let (Some(every), Some(due)) = (emission.trigger, next_trigger) {
                    let now = std::time::Instant::now();
                    if now >= due {
                        for (key, list) in keys.iter_mut() {
                            for sess in list.iter_mut().filter(|x| x.dirty) {
                                let Some(cap) = &sess.cap else { continue };
                                sess.revision += 1;
                                sess.dirty = false;
                                let line = A::finish(key, sess.start, sess.end(gap), &sess.acc)
                                    .tagged(Kind::Update, sess.revision, None);
                                output.session(cap).give(line);
                            }
                        }
                        next_trigger = Some(now + every);
                    }
                    if keys.values().flatten().any(|x| x.cap.is_some()) {
                        activator.activate_after(
                            next_trigger.map_or(every, |d| d.saturating_duration_since(now)),
                        );
                    }
                }

                // Final sessions past the allowed lateness can no longer change.
                keys.retain(|_, list| {
                    list.retain(|x| {
                        x.cap.is_some()
                            || frontier.less_than(&x.end(gap).saturating_add(spec.allowed_ms))
                    });
                    !list.is_empty()
                });
                let open = keys.values().flatten().filter(|x| x.cap.is_some()).count() as u64;
                stats.set_open(A::STREAM, worker, open, keys.len() as u64);
            }
        },
    )
}
