//! Rolling correlations of 1-minute returns between every pair of underlyings
//! (`correlations`; `formats.md`, "Cross-market").
//!
//! Kline rows are first reduced where they were read to the latest row per symbol and minute
//! (with the number of rows), then sent to each pair the symbol belongs to. Per pair, the engine's
//! ordered windows apply them in event-time order to the pair's recent minute closes, so at a
//! window's end the state holds `c(x)`, the close of the latest row before each minute `x`, and
//! the window's result is the Pearson correlation of the two symbols' returns over the last
//! hour. Deterministic for any worker count, checkpointed like every window.

use std::collections::BTreeMap;

// Short string keys, hashed per record: foldhash is several times faster than SipHash.
use foldhash::HashMap;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::aggregate::Latest;
use crate::result::{Cell, ResultLine};
use crate::time::{EventTime, Position, Timed, WindowSpec};
use crate::window::OrderedAggregate;

use super::Kline;
use crate::dataflows::sim::UNDERLYINGS;

/// The stream's name.
pub const STREAM: &str = "correlations";

const MINUTE: EventTime = 60_000;
/// Returns per correlation: the hour before a window's end.
const RETURNS: u64 = 60;
/// Fewer paired returns than this give a null correlation.
const MIN_PAIRS: usize = 10;

/// A symbol's latest row of one minute, as one pair sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinuteClose {
    /// `A/B`, names in sorted order.
    pub pair: String,
    /// 0 for `A`, 1 for `B`.
    pub side: u8,
    /// The minute's start.
    pub minute: EventTime,
    /// `close` of the minute's latest row.
    pub close: Option<f64>,
    /// Rows of the symbol in that minute (this batch's share).
    pub rows: u64,
}

/// The pairs of underlyings, names in sorted order, with the side each symbol is on.
fn pairs_of(symbol: &str) -> impl Iterator<Item = (String, u8)> + '_ {
    let mut names: Vec<&str> = UNDERLYINGS.iter().map(|u| u.0).collect();
    names.sort_unstable();
    let known = names.contains(&symbol);
    let others: Vec<&str> = names.into_iter().filter(|n| *n != symbol).collect();
    others.into_iter().filter(move |_| known).map(move |o| {
        if symbol < o {
            (format!("{symbol}/{o}"), 0)
        } else {
            (format!("{o}/{symbol}"), 1)
        }
    })
}

/// Reduces kline rows, per batch where they were read, to the latest row per symbol and
/// minute, sent once to each pair of underlyings the symbol belongs to.
/// Windows that do not end on the minute grid (a slide that is not whole minutes) get none.
pub(super) fn minute_closes<'s>(
    klines: StreamVec<'s, EventTime, Timed<Kline>>,
    spec: WindowSpec,
) -> StreamVec<'s, EventTime, Timed<MinuteClose>> {
    let aligned = spec.session_gap_ms.is_none() && spec.slide_ms.is_multiple_of(MINUTE);
    klines.unary(Pipeline, "MinuteCloses", move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                // Per (symbol, minute): the latest row's time and close, and the rows seen.
                let mut latest: HashMap<(&str, EventTime), Latest1> = HashMap::default();
                let batches: Vec<Vec<Timed<Kline>>> = data.map(std::mem::take).collect();
                if !aligned {
                    return;
                }
                for r in batches.iter().flatten() {
                    let minute = r.time - r.time % MINUTE;
                    let e = latest
                        .entry((r.rec.symbol.as_str(), minute))
                        .or_insert_with(|| {
                            let at = Timed {
                                time: r.time,
                                pos: r.pos,
                                rec: (),
                                min_end: r.min_end,
                            };
                            (at, r.rec.price, 0)
                        });
                    if (r.time, r.pos) > (e.0.time, e.0.pos) {
                        e.0 = Timed {
                            time: r.time,
                            pos: r.pos,
                            rec: (),
                            min_end: r.min_end,
                        };
                        e.1 = r.rec.price;
                    }
                    e.2 += 1;
                }
                let mut session = output.session(&cap);
                for ((symbol, minute), (at, close, rows)) in latest {
                    for (pair, side) in pairs_of(symbol) {
                        let rec = MinuteClose {
                            pair,
                            side,
                            minute,
                            close,
                            rows,
                        };
                        session.give(at.clone().map(|()| rec));
                    }
                }
            });
        }
    })
}

/// A batch's latest row of one symbol and minute: where it stands, its close, the rows counted.
type Latest1 = (Timed<()>, Option<f64>, u64);

/// The latest row of each minute of one symbol: minute → (time, position, close).
type Minutes = BTreeMap<EventTime, (EventTime, Position, Option<f64>)>;

/// One pair's recent minutes, per side.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairState {
    minutes: [Minutes; 2],
}

/// The closes a window needs: per side, (minute, close) of the recent minutes.
pub type Closes = [Vec<(EventTime, Option<f64>)>; 2];

/// Window accumulator of one pair: rows per side, and the closes after the latest record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PairAcc {
    rows: [u64; 2],
    closes: Latest<Closes>,
}

/// The `correlations` window metrics.
pub struct PairCorrelation;

impl OrderedAggregate for PairCorrelation {
    type Record = MinuteClose;
    type State = PairState;
    type Obs = Closes;
    type Acc = PairAcc;
    const STREAM: &'static str = STREAM;

    fn key(rec: &MinuteClose) -> &str {
        &rec.pair
    }

    fn step(&self, state: &mut PairState, r: &Timed<MinuteClose>) -> Closes {
        let side = &mut state.minutes[usize::from(r.rec.side.min(1))];
        let e = side
            .entry(r.rec.minute)
            .or_insert((r.time, r.pos, r.rec.close));
        if (r.time, r.pos) > (e.0, e.1) {
            *e = (r.time, r.pos, r.rec.close);
        }
        // Keep the minutes an hour of returns needs, and the latest one before them (the close
        // before a quiet stretch still counts).
        let keep_from = r.time.saturating_sub((RETURNS + 2) * MINUTE);
        for side in state.minutes.iter_mut() {
            let old: Vec<EventTime> = side.range(..keep_from).map(|(m, _)| *m).collect();
            for m in old.iter().take(old.len().saturating_sub(1)) {
                side.remove(m);
            }
        }
        let closes = |s: &Minutes| s.iter().map(|(m, (_, _, c))| (*m, *c)).collect();
        [closes(&state.minutes[0]), closes(&state.minutes[1])]
    }

    fn add(&self, acc: &mut PairAcc, r: &Timed<MinuteClose>, obs: &Closes) {
        acc.rows[usize::from(r.rec.side.min(1))] += r.rec.rows;
        acc.closes.offer(r.time, r.pos, obs.clone());
    }

    fn finish(
        &self,
        key: &str,
        start: EventTime,
        end: EventTime,
        a: &PairAcc,
    ) -> Option<ResultLine> {
        if a.rows[0] == 0 || a.rows[1] == 0 {
            return None;
        }
        let closes = a.closes.get()?;
        let (correlation, n) = correlation(closes, end);
        Some(ResultLine::new(
            STREAM,
            "pair",
            key,
            ("COR", key),
            (start, end),
            vec![
                ("correlation", Cell::num(correlation)),
                ("n", (n as u64).into()),
            ],
        ))
    }
}

/// `c(x)`: the close of the latest minute before `x`.
fn close_before(closes: &[(EventTime, Option<f64>)], x: EventTime) -> Option<f64> {
    closes.iter().rev().find(|(m, _)| *m < x).and_then(|c| c.1)
}

/// `r(x) = ln(c(x) / c(x − 1 min))`, when both exist and the ratio has a logarithm.
pub fn minute_return(closes: &[(EventTime, Option<f64>)], x: EventTime) -> Option<f64> {
    let (now, before) = (
        close_before(closes, x)?,
        close_before(closes, x.checked_sub(MINUTE)?)?,
    );
    let r = (now / before).ln();
    r.is_finite().then_some(r)
}

/// The Pearson correlation of the paired returns at `end`, `end − 1 min`, … (an hour of them)
/// and the number of pairs; null with fewer than 10 pairs or a zero variance.
pub fn correlation(closes: &Closes, end: EventTime) -> (Option<f64>, usize) {
    let pairs: Vec<(f64, f64)> = (0..RETURNS)
        .filter_map(|k| end.checked_sub(k * MINUTE))
        .filter_map(|x| Some((minute_return(&closes[0], x)?, minute_return(&closes[1], x)?)))
        .collect();
    let n = pairs.len();
    if n < MIN_PAIRS {
        return (None, n);
    }
    let (ma, mb) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / n as f64,
        pairs.iter().map(|p| p.1).sum::<f64>() / n as f64,
    );
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (a, b) in &pairs {
        cov += (a - ma) * (b - mb);
        va += (a - ma) * (a - ma);
        vb += (b - mb) * (b - mb);
    }
    if va == 0.0 || vb == 0.0 {
        return (None, n);
    }
    let r = cov / (va.sqrt() * vb.sqrt());
    (r.is_finite().then_some(r.clamp(-1.0, 1.0)), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closes(prices: &[f64]) -> Vec<(EventTime, Option<f64>)> {
        prices
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 * MINUTE, Some(*p)))
            .collect()
    }

    #[test]
    fn pairs_are_named_in_sorted_order() {
        let p: Vec<(String, u8)> = pairs_of("ETHUSDT").collect();
        assert_eq!(
            p,
            [
                ("BTCUSDT/ETHUSDT".to_string(), 1),
                ("ETHUSDT/SOLUSDT".to_string(), 0),
                ("ETHUSDT/XRPUSDT".to_string(), 0)
            ]
        );
        assert_eq!(pairs_of("DOGEUSDT").count(), 0);
    }

    #[test]
    fn returns_use_the_close_before_each_minute() {
        let c = closes(&[100.0, 110.0]);
        // c(2 min) = 110 (minute 1), c(1 min) = 100.
        assert!((minute_return(&c, 2 * MINUTE).unwrap() - (1.1f64).ln()).abs() < 1e-12);
        assert_eq!(minute_return(&c, MINUTE), None, "no close before minute 0");
        // A quiet stretch: the latest close before it still counts.
        assert_eq!(minute_return(&c, 10 * MINUTE), Some(0.0));
    }

    #[test]
    fn correlation_needs_ten_pairs_and_variance() {
        let a: Vec<f64> = (0..20)
            .map(|i| 100.0 * (1.0 + 0.01 * ((i * 7) % 5) as f64))
            .collect();
        let b: Vec<f64> = a.iter().map(|x| 2.0 * x).collect();
        let end = 20 * MINUTE;
        let (r, n) = correlation(&[closes(&a), closes(&b)], end);
        assert_eq!(n, 19);
        assert!((r.unwrap() - 1.0).abs() < 1e-9, "equal returns: {r:?}");
        let (r, n) = correlation(&[closes(&a[..8]), closes(&b[..8])], 8 * MINUTE);
        assert_eq!((r, n), (None, 7), "fewer than 10 pairs");
        let flat = vec![100.0; 20];
        assert_eq!(
            correlation(&[closes(&a), closes(&flat)], end).0,
            None,
            "zero variance"
        );
    }
}
