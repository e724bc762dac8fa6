//! Session windows: per key, records closer than `--session-gap` in event time form one
//! session, `[first event, last event + gap)`. The same watermark, emission and correction
//! rules as the fixed windows apply: a session's `final` result goes out when the watermark
//! reaches its end, `update`s of changed open sessions every trigger, and records within the
//! allowed lateness after a final result produce a `correction`.
//!
//! Records are exchanged by key as they are (sessions cannot be pre-aggregated before their
//! boundaries are known). A record never extends a session whose final result is out: it opens
//! a new one, or corrects the final session it falls in.

// Short string keys, hashed per record: foldhash is several times faster than SipHash.
use foldhash::HashMap;

use timely::dataflow::operators::Capability;

use super::{now_us, WindowAggregate, WindowState};
use crate::hash::key_hash;
use crate::result::{Kind, ResultLine};
use crate::time::{EventTime, Timed, WindowSpec};

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

/// The sessions of every key on one worker, with the corrections waiting for their session's end.
pub(super) struct Sessions<A: WindowAggregate> {
    spec: WindowSpec,
    keys: HashMap<String, Vec<Session<A::Acc>>>,
    pending: Vec<(Capability<EventTime>, Timed<A::Record>)>,
    gap: u64,
}

impl<A: WindowAggregate> Sessions<A> {
    pub(super) fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            keys: HashMap::default(),
            pending: Vec::new(),
            gap: spec.session_gap_ms.unwrap_or(spec.size_ms),
        }
    }

    /// Final results of sessions ending at or before `lim` (the watermark), corrections of
    /// final sessions, and the end of state past the allowed lateness.
    fn settle_sessions(&mut self, lim: EventTime) -> Vec<(Capability<EventTime>, ResultLine)> {
        let spec = self.spec;
        let gap = self.gap;
        let mut out: Vec<(Capability<EventTime>, ResultLine)> = Vec::new();
        let final_at_us = now_us();
        for (key, list) in self.keys.iter_mut() {
            for sess in list.iter_mut() {
                let end = sess.end(gap);
                if lim < end {
                    continue;
                }
                let Some(cap) = sess.cap.take() else { continue };
                sess.revision += 1;
                sess.dirty = false;
                let mut line = A::finish(key, sess.start, end, &sess.acc).tagged(
                    Kind::Final,
                    sess.revision,
                    None,
                );
                line.final_at_us = final_at_us;
                out.push((cap, line));
            }
        }
        out.sort_by(|a, b| (a.1.window_end, &a.1.key).cmp(&(b.1.window_end, &b.1.key)));

        // Corrections: into the final session the record falls in, or a new one.
        self.pending.sort_by_key(|(cap, r)| (*cap.time(), r.pos));
        let mut waiting = Vec::new();
        for (cap, r) in self.pending.drain(..) {
            let end = r.time.saturating_add(gap);
            if lim < end {
                waiting.push((cap, r));
                continue;
            }
            let key = A::key(&r.rec).to_string();
            let list = self.keys.entry(key.clone()).or_default();
            let idx = match list
                .iter()
                .position(|x| x.cap.is_none() && x.start <= r.time && r.time < x.end(gap))
            {
                Some(i) => i,
                None => {
                    list.push(Session {
                        start: r.time,
                        last: r.time,
                        acc: A::Acc::default(),
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
            out.push((cap, line));
        }
        self.pending = waiting;

        // Final sessions past the allowed lateness can no longer change.
        self.keys.retain(|_, list| {
            list.retain(|x| x.cap.is_some() || lim < x.end(gap).saturating_add(spec.allowed_ms));
            !list.is_empty()
        });
        out
    }
}

/// A sessions operator's checkpointed state (see [`State::snapshot`]).
type Snapshot<Acc> = Vec<(String, Vec<(EventTime, EventTime, Acc, u32, bool)>)>;

impl<A: WindowAggregate> WindowState for Sessions<A> {
    type Input = Timed<A::Record>;
    type Snapshot = Snapshot<A::Acc>;
    const NAME: &'static str = "Sessions";

    fn route(r: &Timed<A::Record>) -> u64 {
        key_hash(A::key(&r.rec))
    }

    /// Adds records stamped at `cap`'s time; those stamped at or after their session's end are
    /// corrections, applied once the watermark reaches it.
    fn apply(&mut self, cap: &Capability<EventTime>, records: Vec<Timed<A::Record>>) {
        let (s, gap) = (*cap.time(), self.gap);
        for r in records {
            if s >= r.time.saturating_add(gap) {
                self.pending.push((cap.clone(), r));
                continue;
            }
            let mut acc = A::Acc::default();
            A::add(&mut acc, &r);
            let list = self.keys.entry(A::key(&r.rec).to_string()).or_default();
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
            merged.cap = Some(cap.delayed(&(merged.end(gap) - 1)));
            list.push(merged);
        }
    }

    /// Records cannot be merged before their sessions are known.
    fn compact(_t: EventTime, _items: &mut Vec<Timed<A::Record>>) {}

    fn settle(&mut self, lim: EventTime) -> Vec<(Capability<EventTime>, Vec<ResultLine>)> {
        self.settle_sessions(lim)
            .into_iter()
            .map(|(cap, line)| (cap, vec![line]))
            .collect()
    }

    fn updates(&mut self, emit: &mut dyn FnMut(&Capability<EventTime>, Vec<ResultLine>)) {
        let gap = self.gap;
        for (key, list) in self.keys.iter_mut() {
            for sess in list.iter_mut().filter(|x| x.dirty) {
                let Some(cap) = &sess.cap else { continue };
                sess.revision += 1;
                sess.dirty = false;
                let line = A::finish(key, sess.start, sess.end(gap), &sess.acc).tagged(
                    Kind::Update,
                    sess.revision,
                    None,
                );
                emit(cap, vec![line]);
            }
        }
    }

    /// Per key, its sessions: start, last event, accumulator, revision, still open.
    fn snapshot(&self) -> Vec<u8> {
        type Row<'a, Acc> = (&'a String, Vec<(EventTime, EventTime, &'a Acc, u32, bool)>);
        let snap: Vec<Row<'_, A::Acc>> = self
            .keys
            .iter()
            .map(|(k, list)| {
                let l = list
                    .iter()
                    .map(|x| (x.start, x.last, &x.acc, x.revision, x.cap.is_some()))
                    .collect();
                (k, l)
            })
            .collect();
        crate::checkpoint::encode(&snap)
    }

    /// Rebuilds the sessions saved at `epoch`; those ending at or before it were final there.
    fn restore(
        &mut self,
        snap: Snapshot<A::Acc>,
        keep: &dyn Fn(&str) -> bool,
        epoch: EventTime,
        cap: &Capability<EventTime>,
    ) {
        let (gap, spec) = (self.gap, self.spec);
        for (key, list) in snap.into_iter().filter(|(k, _)| keep(k)) {
            let mut sessions = Vec::new();
            for (start, last, acc, revision, open) in list {
                let end = last.saturating_add(gap);
                let is_final = !open || end <= epoch;
                if is_final && end.saturating_add(spec.allowed_ms) <= epoch {
                    continue;
                }
                sessions.push(Session {
                    start,
                    last,
                    acc,
                    cap: (!is_final).then(|| cap.delayed(&(end - 1))),
                    revision: revision + u32::from(open && end <= epoch),
                    dirty: false,
                });
            }
            if !sessions.is_empty() {
                self.keys.insert(key, sessions);
            }
        }
    }

    fn next_correction(&self) -> Option<EventTime> {
        self.pending
            .iter()
            .map(|(_, r)| r.time.saturating_add(self.gap) - 1)
            .min()
    }

    fn counts(&self) -> (u64, u64) {
        let open = self
            .keys
            .values()
            .flatten()
            .filter(|x| x.cap.is_some())
            .count() as u64;
        (open, self.keys.len() as u64)
    }
}
