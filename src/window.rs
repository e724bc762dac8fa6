//! Tumbling event-time windows over keyed records.
//!
//! Records are first pre-aggregated on the worker that read them (one partial accumulator per
//! window and key per batch), then partials are exchanged by a hash of the key so each
//! (key, window) lives on exactly one worker, where they are merged. A window is final when the
//! input frontier (the watermark) reaches its end; its results are emitted once, at time
//! `window_end`, and its state is dropped, so memory is bounded by the open windows.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::ExchangeData;

use crate::stats::RunStats;
use crate::time::{EventTime, Timed, WindowSpec};

/// Wall-clock microseconds since the epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One final window result, rendered for the sinks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultLine {
    /// Output stream name (`binance`, `polymarket_books`, …): the file name and table title.
    pub stream: String,
    /// Window start (ms).
    pub window_start: EventTime,
    /// Window end (ms, exclusive).
    pub window_end: EventTime,
    /// The grouping key (symbol, market id).
    pub key: String,
    /// The serving-layer row key (`TYPE#ID#reverse-end`), used as the Kafka message key.
    pub row_key: String,
    /// The result as one JSON object.
    pub json: String,
    /// Wall-clock time (µs since the epoch) at which the watermark passed the window end, as the
    /// window operator saw it: the start of the emit latency.
    pub final_at_us: u64,
}

impl ResultLine {
    /// A result for `key`, whose serving-layer row key is `KIND#row_id#reverse-end`, with the
    /// metrics serialized from `out` (whose fields include the window bounds and the key).
    pub fn new(
        stream: &str,
        kind: &str,
        key: &str,
        row_id: &str,
        window: (EventTime, EventTime),
        out: &impl Serialize,
    ) -> Self {
        ResultLine {
            stream: stream.to_string(),
            window_start: window.0,
            window_end: window.1,
            key: key.to_string(),
            row_key: row_key(kind, row_id, window.1),
            // Result structs hold only numbers, strings and options: serializing cannot fail.
            json: serde_json::to_string(out).unwrap(),
            final_at_us: 0,
        }
    }
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

/// The state of one open window on the worker that owns its keys: the capability to emit at
/// its end, and the accumulator per key.
type OpenWindow<Acc> = (Capability<EventTime>, HashMap<String, Acc>);

/// A partial aggregate on its way to the worker that owns its key.
type Partial<A> = (EventTime, String, <A as WindowAggregate>::Acc);

/// Aggregates `records` in tumbling windows, emitting one [`ResultLine`] per (key, window) when
/// the watermark reaches the window's end; results carry timely time `window_end - 1`.
pub fn tumbling<'s, A: WindowAggregate>(
    records: StreamVec<'s, EventTime, Timed<A::Record>>,
    spec: WindowSpec,
    stats: RunStats,
) -> StreamVec<'s, EventTime, ResultLine> {
    let records_scope = records.scope();
    let worker = records_scope.index();
    let partials: StreamVec<'s, EventTime, Partial<A>> =
        records.unary(Pipeline, "PreAggregate", move |_cap, _info| {
            let mut local: HashMap<EventTime, HashMap<String, A::Acc>> = HashMap::new();
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    for batch in data {
                        for r in batch.drain(..) {
                            let per_key = local.entry(spec.window_end(r.time)).or_default();
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
                    let mut session = output.session(&cap);
                    for (end, keys) in local.drain() {
                        session.give_iterator(keys.into_iter().map(|(k, acc)| (end, k, acc)));
                    }
                });
            }
        });

    partials.unary_frontier(
        Exchange::new(|p: &Partial<A>| key_hash(&p.1)),
        &format!("Window({})", A::STREAM),
        move |_cap, _info| {
            let mut open: BTreeMap<EventTime, OpenWindow<A::Acc>> = BTreeMap::new();
            let mut reported = (0, 0);
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    for batch in data {
                        for (end, key, acc) in batch.drain(..) {
                            // Results go out at `end - 1`: every record of the window was stamped
                            // earlier, and a sink can then write them as soon as the frontier
                            // reaches `end` instead of waiting for it to pass.
                            let (_, per_key) = open
                                .entry(end)
                                .or_insert_with(|| (cap.delayed(&(end - 1), 0), HashMap::new()));
                            match per_key.get_mut(&key) {
                                Some(mine) => A::merge(mine, &acc),
                                None => {
                                    per_key.insert(key, acc);
                                }
                            }
                        }
                    }
                });
                while let Some(entry) = open.first_entry() {
                    let end = *entry.key();
                    if frontier.less_than(&end) {
                        break;
                    }
                    let final_at_us = now_us();
                    let (cap, per_key) = entry.remove();
                    let mut keys: Vec<_> = per_key.into_iter().collect();
                    keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    let start = spec.window_start(end);
                    output
                        .session(&cap)
                        .give_iterator(keys.iter().map(|(k, acc)| {
                            let mut line = A::finish(k, start, end, acc);
                            line.final_at_us = final_at_us;
                            line
                        }));
                }

                let keys = open.values().map(|(_, k)| k.len() as u64).sum();
                if (open.len(), keys) != reported {
                    reported = (open.len(), keys);
                    stats.set_open(A::STREAM, worker, open.len() as u64, keys);
                }
            }
        },
    )
}

/// Serving-layer row key: `TYPE#ID#(9999999999999 − window_end)`, newest window first.
pub fn row_key(kind: &str, id: &str, window_end: EventTime) -> String {
    format!(
        "{kind}#{id}#{:013}",
        9_999_999_999_999u64.saturating_sub(window_end)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_keys_sort_newest_first() {
        let a = row_key("BIN", "BTCUSDT", 120_000);
        let b = row_key("BIN", "BTCUSDT", 60_000);
        assert_eq!(a, "BIN#BTCUSDT#9999999879999");
        assert!(a < b);
    }

    #[test]
    fn key_hash_is_stable() {
        assert_eq!(key_hash("BTCUSDT"), key_hash("BTCUSDT"));
        assert_ne!(key_hash("BTCUSDT"), key_hash("ETHUSDT"));
    }
}
