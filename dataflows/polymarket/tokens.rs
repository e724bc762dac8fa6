//! Outcome tokens (`polymarket_tokens`): a book per token (`asset_id`) kept from `book`
//! snapshots and every `price_change` entry, applied in event-time order, observed after each
//! change, and aggregated per window with the token's trades. Definitions: `formats.md`,
//! "Outcome tokens". The book state lives in the engine's ordered windows (checkpointed with
//! them); the metadata columns are filled in by `metadata.rs`.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::aggregate::{Latest, NumStats};
use crate::result::{Cell, ResultLine};
use crate::time::{EventTime, Timed};
use crate::window::OrderedAggregate;

use super::{json, short_id};

/// One event of one outcome token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    /// The token (`asset_id`).
    pub asset: String,
    /// Its market (condition id).
    pub market: String,
    /// What happened.
    pub op: Op,
}

/// What a token event does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A `book` snapshot: the usable levels, `(price, size)`.
    Book {
        /// Bid levels.
        bids: Vec<(f64, f64)>,
        /// Ask levels.
        asks: Vec<(f64, f64)>,
    },
    /// The entries of one `price_change` event for this token, in order.
    Changes(Vec<Change>),
    /// A `last_trade_price` event.
    Trade {
        /// Price, when usable.
        price: Option<f64>,
        /// Size, when usable.
        size: Option<f64>,
        /// `Some(true)` for `BUY`, `Some(false)` for `SELL`.
        buy: Option<bool>,
    },
}

/// One `price_change` entry: the new size of a level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `BUY` (a bid level) or `SELL` (an ask level).
    pub bid: bool,
    /// Level price.
    pub price: f64,
    /// New size; 0 removes the level.
    pub size: f64,
    /// The venue's best bid and ask after the change, when reported.
    pub reported: (Option<f64>, Option<f64>),
}

/// A `price_change` entry as written (`price_changes[]` or the older `changes[]`).
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    asset_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow)]
    size: Option<&'a RawValue>,
    #[serde(borrow)]
    side: Option<Cow<'a, str>>,
    #[serde(borrow)]
    best_bid: Option<&'a RawValue>,
    #[serde(borrow)]
    best_ask: Option<&'a RawValue>,
}

/// The token events of a `price_change` event of `market`: the current format's
/// `price_changes` (one entry per token), or the older top-level `asset_id` with `changes`.
/// One event per token, its entries in order. An unusable entry is an error: the whole event
/// is malformed.
pub(super) fn price_changes(
    market: &str,
    price_changes: Option<&RawValue>,
    asset_id: Option<&str>,
    changes: Option<&RawValue>,
) -> Result<Vec<TokenEvent>, String> {
    let (raw, field, shared_asset) = match (price_changes, changes) {
        (Some(raw), _) => (raw, "price_changes", None),
        (None, Some(raw)) => (raw, "changes", Some(asset_id.unwrap_or(""))),
        (None, None) => return Err("neither price_changes nor changes".into()),
    };
    let entries: Vec<Entry> = serde_json::from_str(raw.get())
        .map_err(|e| format!("{field}: expected an array of change objects ({e})"))?;
    let mut out: Vec<TokenEvent> = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let asset = match (shared_asset, &e.asset_id) {
            (Some(a), _) => a,
            (None, Some(a)) => a.as_ref(),
            (None, None) => "",
        };
        if asset.is_empty() {
            return Err(format!("{field}[{i}]: missing or empty asset_id"));
        }
        let num = |raw, what| {
            json::lenient_f64(raw)
                .map_err(|err| format!("{field}[{i}].{what}: {err}"))?
                .ok_or_else(|| format!("{field}[{i}]: missing {what}"))
        };
        let price = num(e.price, "price")?;
        let size = num(e.size, "size")?;
        if size < 0.0 {
            return Err(format!("{field}[{i}].size: negative"));
        }
        let bid = match e.side.as_deref() {
            Some("BUY") => true,
            Some("SELL") => false,
            other => {
                return Err(format!(
                    "{field}[{i}].side: expected BUY or SELL, got {}",
                    other.map_or("nothing".into(), |s| format!("{s:?}"))
                ))
            }
        };
        // A reported best price that cannot be read is not reported.
        let reported = (
            json::lenient_f64(e.best_bid).ok().flatten(),
            json::lenient_f64(e.best_ask).ok().flatten(),
        );
        let change = Change {
            bid,
            price: price + 0.0,
            size,
            reported,
        };
        match out.iter_mut().find(|t| t.asset == asset) {
            Some(TokenEvent {
                op: Op::Changes(list),
                ..
            }) => list.push(change),
            _ => out.push(TokenEvent {
                asset: asset.to_string(),
                market: market.to_string(),
                op: Op::Changes(vec![change]),
            }),
        }
    }
    Ok(out)
}

/// A level as a token book keeps it: price and size usable, size positive.
pub(super) fn usable_level(price: f64, size: Option<f64>) -> Option<(f64, f64)> {
    size.filter(|s| *s > 0.0).map(|s| (price + 0.0, s))
}

/// One token's book: levels sorted by price, one size per price.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    bids: Vec<(f64, f64)>,
    asks: Vec<(f64, f64)>,
}

fn by_price(a: &(f64, f64), price: f64) -> Ordering {
    a.0.total_cmp(&price)
}

/// Sets the size of level `price` (0 removes it).
fn set_level(side: &mut Vec<(f64, f64)>, price: f64, size: f64) {
    match side.binary_search_by(|l| by_price(l, price)) {
        Ok(i) if size > 0.0 => side[i].1 = size,
        Ok(i) => {
            side.remove(i);
        }
        Err(i) if size > 0.0 => side.insert(i, (price, size)),
        Err(_) => {}
    }
}

/// A side built from snapshot levels: sorted, the first level at each price kept.
fn side_of(levels: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut side: Vec<(f64, f64)> = Vec::with_capacity(levels.len());
    for &(price, size) in levels {
        if let Err(i) = side.binary_search_by(|l| by_price(l, price)) {
            side.insert(i, (price, size));
        }
    }
    side
}

impl Book {
    /// Best bid `(price, size)`: the highest bid.
    pub fn best_bid(&self) -> Option<(f64, f64)> {
        self.bids.last().copied()
    }

    /// Best ask `(price, size)`: the lowest ask.
    pub fn best_ask(&self) -> Option<(f64, f64)> {
        self.asks.first().copied()
    }

    /// What the book shows now.
    pub fn quote(&self) -> Quote {
        let (Some((bb, bs)), Some((ba, asz))) = (self.best_bid(), self.best_ask()) else {
            return Quote::default();
        };
        let fin = |x: f64| x.is_finite().then_some(x);
        let depth = bs + asz;
        Quote {
            prob: fin((bb + ba) / 2.0),
            spread: fin((ba - bb).abs()),
            imbalance: fin((bs - asz) / depth),
            microprice: fin((ba * bs + bb * asz) / depth),
        }
    }
}

/// Mid (the probability), spread, imbalance and microprice of a book; all null when a side is
/// empty, and each null when it does not fit a finite number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    /// `(best_bid + best_ask) / 2`.
    pub prob: Option<f64>,
    /// `|best_ask − best_bid|`.
    pub spread: Option<f64>,
    /// `(bid_size − ask_size) / (bid_size + ask_size)`.
    pub imbalance: Option<f64>,
    /// `(best_ask·bid_size + best_bid·ask_size) / (bid_size + ask_size)`.
    pub microprice: Option<f64>,
}

/// What one token event observes: one quote per book or change entry (with whether the venue's
/// reported best prices disagreed), nothing for a trade.
pub struct Observed {
    quotes: Vec<(Quote, bool)>,
}

/// Window accumulator of one token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenAcc {
    market: String,
    updates: u64,
    mismatches: u64,
    prob: NumStats,
    spread: NumStats,
    imbalance: NumStats,
    current: Latest<Quote>,
    trades: u64,
    buys: u64,
    sells: u64,
    shares: NumStats,
    buy_shares: NumStats,
    sell_shares: NumStats,
    notional: NumStats,
    priced_shares: NumStats,
    last_price: Latest<Option<f64>>,
}

/// The `polymarket_tokens` window metrics.
pub struct TokenMetrics;

/// The stream's name.
pub const STREAM: &str = "polymarket_tokens";

impl OrderedAggregate for TokenMetrics {
    type Record = TokenEvent;
    type State = Book;
    type Obs = Observed;
    type Acc = TokenAcc;
    const STREAM: &'static str = STREAM;

    fn key(rec: &TokenEvent) -> &str {
        &rec.asset
    }

    fn step(&self, book: &mut Book, r: &Timed<TokenEvent>) -> Observed {
        let quotes = match &r.rec.op {
            Op::Book { bids, asks } => {
                book.bids = side_of(bids);
                book.asks = side_of(asks);
                vec![(book.quote(), false)]
            }
            Op::Changes(changes) => changes
                .iter()
                .map(|c| {
                    let side = if c.bid {
                        &mut book.bids
                    } else {
                        &mut book.asks
                    };
                    set_level(side, c.price, c.size);
                    let differs = |reported: Option<f64>, ours: Option<(f64, f64)>| {
                        reported.is_some_and(|x| ours.map(|o| o.0) != Some(x))
                    };
                    let mismatch = differs(c.reported.0, book.best_bid())
                        || differs(c.reported.1, book.best_ask());
                    (book.quote(), mismatch)
                })
                .collect(),
            Op::Trade { .. } => Vec::new(),
        };
        Observed { quotes }
    }

    fn add(&self, acc: &mut TokenAcc, r: &Timed<TokenEvent>, obs: &Observed) {
        if acc.market.is_empty() {
            acc.market.clone_from(&r.rec.market);
        }
        for (q, mismatch) in &obs.quotes {
            acc.updates += 1;
            acc.mismatches += u64::from(*mismatch);
            acc.prob.add(q.prob);
            acc.spread.add(q.spread);
            acc.imbalance.add(q.imbalance);
        }
        // Entries of one event share its position: the last one is the latest.
        if let Some((q, _)) = obs.quotes.last() {
            acc.current.offer(r.time, r.pos, *q);
        }
        if let Op::Trade { price, size, buy } = r.rec.op {
            acc.trades += 1;
            acc.shares.add(size);
            match buy {
                Some(true) => {
                    acc.buys += 1;
                    acc.buy_shares.add(size);
                }
                Some(false) => {
                    acc.sells += 1;
                    acc.sell_shares.add(size);
                }
                None => {}
            }
            if let (Some(p), Some(s)) = (price, size) {
                acc.notional.add(Some(p * s).filter(|x| x.is_finite()));
                acc.priced_shares.add(Some(s));
            }
            acc.last_price.offer(r.time, r.pos, price);
        }
    }

    fn finish(
        &self,
        key: &str,
        start: EventTime,
        end: EventTime,
        a: &TokenAcc,
    ) -> Option<ResultLine> {
        let current = a.current.get().copied().unwrap_or_default();
        // A sum over no trades is 0; over trades whose sizes are all null, null.
        let sum = |n: u64, s: &NumStats| -> Cell {
            if n == 0 {
                Cell::Num(0.0)
            } else {
                s.sum().into()
            }
        };
        let vwap = match (a.notional.sum(), a.priced_shares.sum()) {
            (Some(v), Some(s)) if s > 0.0 => Some(v / s),
            _ => None,
        };
        Some(ResultLine::new(
            STREAM,
            "asset_id",
            key,
            ("PO", short_id(key)),
            (start, end),
            vec![
                ("market_id", Cell::Text(a.market.clone())),
                ("current_prob", current.prob.into()),
                ("avg_prob", a.prob.avg().into()),
                ("min_prob", a.prob.min().into()),
                ("max_prob", a.prob.max().into()),
                ("current_spread", current.spread.into()),
                ("avg_spread", a.spread.avg().into()),
                ("current_imbalance", current.imbalance.into()),
                ("avg_imbalance", a.imbalance.avg().into()),
                ("current_microprice", current.microprice.into()),
                ("updates", a.updates.into()),
                ("book_mismatches", a.mismatches.into()),
                ("num_trades", a.trades.into()),
                ("shares_traded", sum(a.trades, &a.shares)),
                ("buy_shares", sum(a.buys, &a.buy_shares)),
                ("sell_shares", sum(a.sells, &a.sell_shares)),
                ("vwap", Cell::num(vwap)),
                (
                    "last_trade_price",
                    a.last_price.get().copied().flatten().into(),
                ),
                ("outcome", Cell::NoText),
                ("slug", Cell::NoText),
                ("title", Cell::NoText),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflows::polymarket::{Event, FrameDecoder};
    use crate::source::{Decoded, Decoder};
    use crate::time::Position;

    const M: &str = "0xc48e17e33742004e4ec5d3386d05f7d723f1c2da37b5cbc56e9ce432e13d8ed4";

    fn decode(s: &str) -> Vec<TokenEvent> {
        let mut out = Vec::new();
        FrameDecoder.decode(s.as_bytes(), &mut out);
        out.into_iter()
            .flat_map(|d| match d {
                Decoded::Record {
                    rec: Event::Book(_, t) | Event::Trade(_, t),
                    ..
                } => t.into_iter().collect::<Vec<_>>(),
                Decoded::Record {
                    rec: Event::Changes(list),
                    ..
                } => list,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn timed(rec: TokenEvent, t: EventTime, index: u32) -> Timed<TokenEvent> {
        Timed {
            time: t,
            pos: Position {
                partition: 0,
                offset: t,
                index,
            },
            rec,
            min_end: 0,
        }
    }

    /// Steps `events` through one book, returning each observation.
    fn run(events: &[&str]) -> (Book, Vec<(Quote, bool)>) {
        let mut book = Book::default();
        let mut seen = Vec::new();
        for (i, e) in events.iter().enumerate() {
            for ev in decode(e) {
                seen.extend(TokenMetrics.step(&mut book, &timed(ev, i as u64, 0)).quotes);
            }
        }
        (book, seen)
    }

    fn book_event(asset: &str) -> String {
        format!(
            r#"{{"event_type":"book","market":"{M}","asset_id":"{asset}","timestamp":"1","bids":[{{"price":"0.40","size":"10"}},{{"price":".45","size":"5"}},{{"price":"0.3","size":"0"}}],"asks":[{{"price":"0.55","size":"20"}},{{"price":"0.6","size":"1"}}]}}"#
        )
    }

    fn change(asset: &str, price: &str, size: &str, side: &str, bb: &str, ba: &str) -> String {
        format!(
            r#"{{"event_type":"price_change","market":"{M}","timestamp":"2","price_changes":[{{"asset_id":"{asset}","price":"{price}","size":"{size}","side":"{side}","hash":"h","best_bid":"{bb}","best_ask":"{ba}"}}]}}"#
        )
    }

    #[test]
    fn a_book_replaces_the_levels_and_is_observed() {
        let (book, seen) = run(&[&book_event("A")]);
        assert_eq!(book.best_bid(), Some((0.45, 5.0)));
        assert_eq!(book.best_ask(), Some((0.55, 20.0)));
        assert_eq!(book.bids.len(), 2, "size-0 level dropped");
        let q = seen[0].0;
        assert!((q.prob.unwrap() - 0.5).abs() < 1e-12);
        assert!((q.spread.unwrap() - 0.1).abs() < 1e-12);
        assert!((q.imbalance.unwrap() - (5.0 - 20.0) / 25.0).abs() < 1e-12);
        assert!((q.microprice.unwrap() - (0.55 * 5.0 + 0.45 * 20.0) / 25.0).abs() < 1e-12);
    }

    #[test]
    fn price_changes_set_and_remove_levels_and_count_mismatches() {
        let (book, seen) = run(&[
            &book_event("A"),
            &change("A", "0.47", "3", "BUY", "0.47", "0.55"),
            &change("A", "0.47", "0", "BUY", "0.45", "0.55"),
            &change("A", "0.55", "0", "SELL", "0.45", "0.55"), // the venue still has 0.55: a missed delta
        ]);
        let bids: Vec<f64> = book.bids.iter().map(|l| l.0).collect();
        assert_eq!(bids, [0.40, 0.45]);
        assert_eq!(book.best_ask(), Some((0.6, 1.0)));
        let mismatches: Vec<bool> = seen.iter().map(|s| s.1).collect();
        assert_eq!(mismatches, [false, false, false, true]);
    }

    #[test]
    fn the_older_format_and_a_change_before_any_book() {
        let old = format!(
            r#"{{"event_type":"price_change","market":"{M}","asset_id":"B","timestamp":"3","changes":[{{"price":"0.3","side":"BUY","size":"7"}},{{"price":"0.7","side":"SELL","size":"2"}}]}}"#
        );
        let evs = decode(&old);
        assert_eq!(evs.len(), 1, "one event per token");
        let (book, seen) = run(&[&old]);
        assert_eq!(seen.len(), 2, "one observation per entry");
        assert_eq!(seen[0].0, Quote::default(), "one side empty: all null");
        assert!((seen[1].0.prob.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(
            (book.best_bid(), book.best_ask()),
            (Some((0.3, 7.0)), Some((0.7, 2.0)))
        );
    }

    #[test]
    fn one_event_per_token_and_unusable_entries_are_malformed() {
        let two = format!(
            r#"{{"event_type":"price_change","market":"{M}","timestamp":"2","price_changes":[{{"asset_id":"A","price":"0.4","size":"1","side":"BUY"}},{{"asset_id":"B","price":"0.6","size":"1","side":"SELL"}},{{"asset_id":"A","price":"0.41","size":"1","side":"BUY"}}]}}"#
        );
        let evs = decode(&two);
        assert_eq!(evs.len(), 2);
        assert!(matches!(&evs[0].op, Op::Changes(c) if c.len() == 2));
        for bad in [
            r#"[{"asset_id":"A","price":"0.4","size":"1","side":"HOLD"}]"#,
            r#"[{"asset_id":"A","price":"NaN","size":"1","side":"BUY"}]"#,
            r#"[{"asset_id":"A","price":"0.4","size":"-1","side":"BUY"}]"#,
            r#"[{"asset_id":"","price":"0.4","size":"1","side":"BUY"}]"#,
            r#"[{"price":"0.4","size":"1","side":"BUY"}]"#,
            r#"{"a":1}"#,
        ] {
            let msg = format!(
                r#"{{"event_type":"price_change","market":"{M}","timestamp":"2","price_changes":{bad}}}"#
            );
            let mut out = Vec::new();
            FrameDecoder.decode(msg.as_bytes(), &mut out);
            assert!(
                matches!(&out[0], Decoded::Malformed { reason, .. } if reason == "invalid price change"),
                "{bad}: {out:?}"
            );
        }
    }

    #[test]
    fn trades_fill_the_trade_columns() {
        let trade = |t: u64, price: &str, size: &str, side: &str| {
            let e = format!(
                r#"{{"event_type":"last_trade_price","market":"{M}","asset_id":"A","timestamp":"{t}","price":"{price}","size":"{size}","side":"{side}"}}"#
            );
            timed(decode(&e).remove(0), t, 0)
        };
        let mut acc = TokenAcc::default();
        let mut book = Book::default();
        for r in [
            trade(5, "0.5", "10", "BUY"),
            trade(7, "0.6", "30", "SELL"),
            trade(6, "zz", "5", "BUY"),
        ] {
            let obs = TokenMetrics.step(&mut book, &r);
            TokenMetrics.add(&mut acc, &r, &obs);
        }
        let v = TokenMetrics
            .finish("A", 0, 60_000, &acc)
            .unwrap()
            .to_json_value();
        assert_eq!(v["num_trades"], 3);
        assert_eq!(v["shares_traded"], 45.0);
        assert_eq!(
            (v["buy_shares"].as_f64(), v["sell_shares"].as_f64()),
            (Some(15.0), Some(30.0))
        );
        assert!((v["vwap"].as_f64().unwrap() - (5.0 + 18.0) / 40.0).abs() < 1e-12);
        assert_eq!(v["last_trade_price"], 0.6, "latest by event time");
        assert_eq!(
            (v["updates"].as_u64(), v["current_prob"].is_null()),
            (Some(0), true)
        );
        let empty = TokenMetrics
            .finish("A", 0, 60_000, &TokenAcc::default())
            .unwrap()
            .to_json_value();
        assert_eq!(
            (empty["shares_traded"].as_f64(), empty["vwap"].is_null()),
            (Some(0.0), true)
        );
    }

    #[test]
    fn an_event_without_asset_id_still_counts_for_the_seed_streams() {
        let e = format!(
            r#"{{"event_type":"book","market":"{M}","timestamp":"1","bids":[],"asks":[]}}"#
        );
        let mut out = Vec::new();
        FrameDecoder.decode(e.as_bytes(), &mut out);
        assert!(matches!(
            &out[0],
            Decoded::Record {
                rec: Event::Book(_, None),
                ..
            }
        ));
    }
}
