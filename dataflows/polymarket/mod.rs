//! The Polymarket dataflows: CLOB websocket frames → per-market order-book metrics
//! (`polymarket_books`) and trade metrics (`polymarket_trades`).
//!
//! A message value holds one or more frames, one per line; a frame is one event object or an
//! array of events. Every line and every array element is processed (the original Spark job read
//! only the first line). Definitions: `formats.md`. Its simulator is in `sim.rs`.

pub mod metadata;
pub mod sim;
pub mod tokens;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use timely::dataflow::operators::core::{Concat, Map, Partition};
use timely::dataflow::StreamVec;

use crate::aggregate::{Latest, NumStats};
use crate::context::{JobContext, Role};
use crate::enrich::as_of;
use crate::result::ResultLine;
use crate::source::{source, Decoded, Decoder};
use crate::time::{EventTime, Timed, WindowSpec};
use crate::window::{ordered_windowed, windowed, WindowAggregate};

use super::{json, Exports, Input, Market, MarketArgs, Outputs, TopicSpec};
use tokens::{Op, TokenEvent, TokenMetrics};

/// The Polymarket market.
pub struct Polymarket;

const TOPICS: &[TopicSpec] = &[
    TopicSpec {
        name: "polymarket_trade",
        option: "topic-polymarket",
        about: "Polymarket websocket frames",
        multi_frame: true,
        simulated: sim::TOPIC,
    },
    TopicSpec {
        name: "polymarket_metadata",
        option: "topic-metadata",
        about: "Polymarket market metadata (Gamma snapshots)",
        multi_frame: false,
        simulated: sim::METADATA,
    },
];

impl Market for Polymarket {
    fn name(&self) -> &'static str {
        "polymarket"
    }

    fn topics(&self) -> &'static [TopicSpec] {
        TOPICS
    }

    fn streams(&self) -> &'static [&'static str] {
        &[BookMetrics::STREAM, TradeMetrics::STREAM, tokens::STREAM]
    }

    fn joins(&self) -> &'static [&'static str] {
        &[tokens::STREAM]
    }

    fn build<'s>(
        &self,
        scope: timely::dataflow::Scope<'s, EventTime>,
        inputs: &[Input],
        spec: WindowSpec,
        settings: &MarketArgs,
        exports: &mut Exports<'s>,
        ctx: &JobContext,
    ) -> Outputs<'s> {
        let (input, meta_input) = (&inputs[0], &inputs[1]);
        let (markets, meta_dead) = source(
            scope,
            &meta_input.topic,
            std::sync::Arc::clone(&meta_input.factory),
            metadata::MetadataDecoder,
            spec,
            ctx.operator(Role::Source, TOPICS[1].name),
        );
        exports.markets = Some(markets.clone());
        let versions = markets.flat_map(metadata::versions);
        let (events, dead) = source(
            scope,
            &input.topic,
            std::sync::Arc::clone(&input.factory),
            FrameDecoder,
            spec,
            ctx.operator(Role::Source, TOPICS[0].name),
        );
        let (books, trades, tokens) = split(events);
        let window = |stream| ctx.operator(Role::Window, stream);
        let ms =
            |d: std::time::Duration| d.as_millis().min(u128::from(crate::time::MAX_SPAN_MS)) as u64;
        let (ttl, metadata_ttl) = (ms(settings.book_ttl), ms(settings.metadata_ttl));
        let mut results = Vec::new();
        if ctx.wants(BookMetrics::STREAM) {
            let books = windowed::<BookMetrics>(books, spec, window(BookMetrics::STREAM));
            results.push((BookMetrics::STREAM, books));
        }
        if ctx.wants(TradeMetrics::STREAM) {
            let trades = windowed::<TradeMetrics>(trades, spec, window(TradeMetrics::STREAM));
            results.push((TradeMetrics::STREAM, trades));
        }
        if ctx.wants(tokens::STREAM) {
            let token_results =
                ordered_windowed(TokenMetrics, tokens, spec, ttl, window(tokens::STREAM));
            exports.tokens = Some(token_results.clone());
            let joined = as_of(
                token_results,
                versions,
                (ttl, metadata_ttl),
                ctx.operator(Role::Join, tokens::STREAM),
            );
            results.push((tokens::STREAM, joined));
        }
        Outputs {
            results,
            dead: dead.concat(meta_dead),
        }
    }
}

/// Where each part of an event goes: the seed's book and trade streams, the token stream.
enum Part {
    Book(Book),
    Trade(Trade),
    Token(TokenEvent),
}

type Split<'s> = (
    StreamVec<'s, EventTime, Timed<Book>>,
    StreamVec<'s, EventTime, Timed<Trade>>,
    StreamVec<'s, EventTime, Timed<TokenEvent>>,
);

/// Splits events into the seed's books and trades and the token events (a book or trade with
/// an `asset_id` goes both ways).
fn split<'s>(events: StreamVec<'s, EventTime, Timed<Event>>) -> Split<'s> {
    let parts: StreamVec<'s, EventTime, (u64, Timed<Part>)> = events.flat_map(|t: Timed<Event>| {
        let (t, event) = t.take();
        let parts: Vec<(u64, Part)> = match event {
            Event::Book(b, tok) => std::iter::once((0, Part::Book(b)))
                .chain(tok.map(|x| (2, Part::Token(x))))
                .collect(),
            Event::Trade(tr, tok) => std::iter::once((1, Part::Trade(tr)))
                .chain(tok.map(|x| (2, Part::Token(x))))
                .collect(),
            Event::Changes(list) => list.into_iter().map(|e| (2, Part::Token(e))).collect(),
        };
        parts
            .into_iter()
            .map(move |(n, p)| (n, t.clone().map(|()| p)))
    });
    let outs: Vec<StreamVec<'s, EventTime, Timed<Part>>> =
        parts.partition::<timely::container::CapacityContainerBuilder<Vec<Timed<Part>>>, _, _>(
            3,
            |(n, p)| (n, p),
        );
    let mut outs = outs.into_iter();
    // `partition(3, …)` gives exactly three streams.
    let mut next = || outs.next().unwrap();
    let (b, tr, tok) = (next(), next(), next());
    (
        b.flat_map(|p: Timed<Part>| match p.take() {
            (t, Part::Book(b)) => Some(t.map(|()| b)),
            _ => None,
        }),
        tr.flat_map(|p: Timed<Part>| match p.take() {
            (t, Part::Trade(x)) => Some(t.map(|()| x)),
            _ => None,
        }),
        tok.flat_map(|p: Timed<Part>| match p.take() {
            (t, Part::Token(x)) => Some(t.map(|()| x)),
            _ => None,
        }),
    )
}

/// One order-book update, reduced to its derived values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Book {
    /// Condition id.
    pub market: String,
    /// Mid price `(best_bid + best_ask) / 2`: the probability.
    pub mid: Option<f64>,
    /// `|best_ask − best_bid|`.
    pub spread: Option<f64>,
    /// `(bid_depth − ask_depth) / (bid_depth + ask_depth)`.
    pub imbalance: Option<f64>,
}

/// One trade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// Condition id.
    pub market: String,
    /// Shares traded.
    pub size: Option<f64>,
}

/// A Polymarket event the metrics use: what the seed streams read of it, and what the token
/// stream reads (absent when the event names no `asset_id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A `book` event.
    Book(Book, Option<TokenEvent>),
    /// A `last_trade_price` event.
    Trade(Trade, Option<TokenEvent>),
    /// A `price_change` event: its entries, one event per token.
    Changes(Vec<TokenEvent>),
}

/// The fields read from every event; the others stay unparsed.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    market: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    bids: Option<&'a RawValue>,
    #[serde(borrow)]
    asks: Option<&'a RawValue>,
    #[serde(borrow)]
    size: Option<&'a RawValue>,
    #[serde(borrow)]
    asset_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow)]
    side: Option<Cow<'a, str>>,
    #[serde(borrow)]
    price_changes: Option<&'a RawValue>,
    #[serde(borrow)]
    changes: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Level<'a> {
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow)]
    size: Option<&'a RawValue>,
}

/// What one book side gives: the seed's best level (price, size of the first level at that
/// price) and, when `keep`, the token book's usable levels (`tokens::usable_levels`). An
/// unparseable number or a level without a price is an error.
type Side = ((Option<f64>, Option<f64>), Vec<(f64, f64)>);

fn book_side(
    side: Option<&RawValue>,
    name: &str,
    better: fn(f64, f64) -> bool,
    keep: bool,
) -> Result<Side, String> {
    let Some(raw) = side.filter(|r| r.get().trim() != "null") else {
        return Ok(((None, None), Vec::new()));
    };
    let levels: Vec<Level> = serde_json::from_str(raw.get())
        .map_err(|e| format!("{name}: expected an array of {{price, size}} levels ({e})"))?;
    let mut best: Option<(f64, Option<f64>)> = None;
    let mut kept = Vec::with_capacity(if keep { levels.len() } else { 0 });
    for (i, l) in levels.iter().enumerate() {
        let price = json::lenient_f64(l.price).map_err(|e| format!("{name}[{i}].price: {e}"))?;
        let size = json::lenient_f64(l.size).map_err(|e| format!("{name}[{i}].size: {e}"))?;
        let Some(price) = price else {
            return Err(format!("{name}[{i}] has no price"));
        };
        if best.is_none_or(|(b, _)| better(price, b)) {
            best = Some((price, size));
        }
        if keep {
            kept.extend(tokens::usable_level(price, size));
        }
    }
    Ok((best.map_or((None, None), |(p, s)| (Some(p), s)), kept))
}

impl Book {
    /// Derives the book metrics of `formats.md` from the best levels of each side.
    pub fn new(
        market: String,
        bid: (Option<f64>, Option<f64>),
        ask: (Option<f64>, Option<f64>),
    ) -> Self {
        let ((best_bid, bid_depth), (best_ask, ask_depth)) = (bid, ask);
        let (mid, spread) = match (best_bid, best_ask) {
            (Some(b), Some(a)) => (Some((b + a) / 2.0), Some((a - b).abs())),
            _ => (None, None),
        };
        let imbalance = match (best_bid.and(bid_depth), best_ask.and(ask_depth)) {
            (Some(b), Some(a)) if b + a > 0.0 => Some((b - a) / (b + a)),
            _ => None,
        };
        Book {
            market,
            mid,
            spread,
            imbalance,
        }
    }
}

/// Decodes `polymarket_trade` message values.
#[derive(Clone, Default)]
pub struct FrameDecoder;

impl Decoder for FrameDecoder {
    type Record = Event;

    fn decode(&mut self, value: &[u8], out: &mut Vec<Decoded<Event>>) {
        let text = match std::str::from_utf8(value) {
            Ok(t) => t,
            Err(e) => return out.push(Decoded::malformed(0, "invalid UTF-8", e.to_string(), None)),
        };
        let multi_line = text.trim_end().contains('\n');
        let mut index: u32 = 0;
        for line in text.split('\n') {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            // Fast path, the common case: a line that is one event object whose head fields
            // parse is decoded in one pass. Anything else takes the general path below, which
            // names what is wrong.
            let object = line.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
            if object.starts_with('{') {
                if let Ok(head) = serde_json::from_str::<Head>(object) {
                    out.push(from_head(index, head, object, multi_line));
                    index += 1;
                    continue;
                }
            }
            let events = match json::elements(line) {
                Ok(events) => events,
                Err(e) => {
                    let reason = if e.starts_with("invalid JSON") {
                        "invalid JSON"
                    } else {
                        "not an object or array"
                    };
                    out.push(Decoded::malformed(
                        index,
                        reason,
                        e,
                        multi_line.then(|| line.to_string()),
                    ));
                    index += 1;
                    continue;
                }
            };
            let many = multi_line || events.len() > 1;
            for raw in events {
                out.push(decode_event(index, raw, many));
                index += 1;
            }
        }
        if index == 0 {
            out.push(Decoded::malformed(0, "empty message", String::new(), None));
        }
    }
}

/// The counter name of an event type the metrics do not use: the type itself when it looks like
/// one (`price_change`), else `other` — the counters stay few and safe to print whatever the
/// input holds.
fn ignored_kind(kind: Cow<'_, str>) -> Cow<'static, str> {
    let plausible = (1..=40).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plausible {
        Cow::Owned(kind.into_owned())
    } else {
        Cow::Borrowed("other")
    }
}

fn decode_event(index: u32, raw: &RawValue, excerpt_needed: bool) -> Decoded<Event> {
    match serde_json::from_str(raw.get()) {
        Ok(head) => from_head(index, head, raw.get(), excerpt_needed),
        Err(e) => {
            if let Some(last_wins) = json::without_duplicate_fields(raw.get(), &e) {
                // Owned, so it can be parsed again with its repeated fields merged.
                if let Ok(fixed) = RawValue::from_string(last_wins) {
                    return decode_event(index, &fixed, excerpt_needed);
                }
            }
            let reason = if raw.get().trim_start().starts_with('{') {
                "wrong field type"
            } else {
                "event is not an object"
            };
            let excerpt = excerpt_needed.then(|| raw.get().to_string());
            Decoded::malformed(index, reason, e.to_string(), excerpt)
        }
    }
}

/// The outcome of one event whose head fields parsed; `raw` is the event's text.
fn from_head(index: u32, head: Head<'_>, raw: &str, excerpt_needed: bool) -> Decoded<Event> {
    let excerpt = || excerpt_needed.then(|| raw.to_string());
    let Some(kind) = head.event_type else {
        return Decoded::malformed(index, "missing event_type", String::new(), excerpt());
    };
    let time = head.timestamp.map(json::lenient_ms);
    let used = matches!(kind.as_ref(), "book" | "last_trade_price" | "price_change");
    if !used {
        let time = match (&head.market, time) {
            (Some(m), Some(Ok(t))) if !m.is_empty() => Some(t),
            _ => None,
        };
        return Decoded::Ignored {
            index,
            kind: ignored_kind(kind),
            time,
        };
    }
    let Some(market) = head.market else {
        return Decoded::malformed(index, "missing market", String::new(), excerpt());
    };
    if market.is_empty() {
        return Decoded::malformed(index, "empty market", String::new(), excerpt());
    }
    let time = match time {
        None => return Decoded::malformed(index, "missing timestamp", String::new(), excerpt()),
        Some(Err(e)) => return Decoded::malformed(index, "invalid timestamp", e, excerpt()),
        Some(Ok(t)) => t,
    };
    // The token stream's key; an event without one still counts for the seed streams.
    let asset = head.asset_id.as_deref().filter(|a| !a.is_empty());
    let token = |op| {
        asset.map(|a| TokenEvent {
            asset: a.to_string(),
            market: market.to_string(),
            op,
        })
    };
    let rec = match kind.as_ref() {
        "book" => {
            let keep = asset.is_some();
            let sides = book_side(head.bids, "bids", |a, b| a > b, keep)
                .and_then(|b| Ok((b, book_side(head.asks, "asks", |a, b| a < b, keep)?)));
            let ((bid, bids), (ask, asks)) = match sides {
                Ok(sides) => sides,
                Err(e) => return Decoded::malformed(index, "invalid book level", e, excerpt()),
            };
            let book = Book::new(market.to_string(), bid, ask);
            // Finite prices and sizes can still overflow a sum or a ratio.
            if [book.mid, book.spread, book.imbalance]
                .iter()
                .any(|x| x.is_some_and(|x| !x.is_finite()))
            {
                return Decoded::malformed(
                    index,
                    "value out of range",
                    "mid, spread or imbalance of this book is not a finite number".into(),
                    excerpt(),
                );
            }
            let op = Op::Book { bids, asks };
            Event::Book(book, token(op))
        }
        "last_trade_price" => match json::lenient_f64(head.size) {
            Ok(size) => {
                // The token view never rejects what the seed streams accept: an unusable
                // price or side reads as missing.
                let op = Op::Trade {
                    price: json::lenient_f64(head.price).ok().flatten(),
                    size,
                    buy: match head.side.as_deref() {
                        Some("BUY") => Some(true),
                        Some("SELL") => Some(false),
                        _ => None,
                    },
                };
                let token = token(op);
                Event::Trade(
                    Trade {
                        market: market.into_owned(),
                        size,
                    },
                    token,
                )
            }
            Err(e) => return Decoded::malformed(index, "invalid trade size", e, excerpt()),
        },
        _ => {
            let changes = tokens::price_changes(
                &market,
                head.price_changes,
                head.asset_id.as_deref(),
                head.changes,
            );
            match changes {
                Ok(list) if list.is_empty() => {
                    return Decoded::Ignored {
                        index,
                        kind: Cow::Borrowed("price_change"),
                        time: Some(time),
                    }
                }
                Ok(list) => Event::Changes(list),
                Err(e) => return Decoded::malformed(index, "invalid price change", e, excerpt()),
            }
        }
    };
    Decoded::Record { index, time, rec }
}

/// Window accumulator for one market's books.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BookAcc {
    updates: u64,
    mid: NumStats,
    imbalance: NumStats,
    spread: NumStats,
    current: Latest<(Option<f64>, Option<f64>, Option<f64>)>,
}

/// The first 16 characters of a market id, as the serving layer's row keys use.
fn short_id(market: &str) -> &str {
    market
        .char_indices()
        .nth(16)
        .map_or(market, |(i, _)| &market[..i])
}

/// The `polymarket_books` window metrics.
pub struct BookMetrics;

impl WindowAggregate for BookMetrics {
    type Record = Book;
    type Acc = BookAcc;
    const STREAM: &'static str = "polymarket_books";

    fn key(rec: &Book) -> &str {
        &rec.market
    }

    fn add(acc: &mut BookAcc, r: &Timed<Book>) {
        acc.updates += 1;
        acc.mid.add(r.rec.mid);
        acc.imbalance.add(r.rec.imbalance);
        acc.spread.add(r.rec.spread);
        acc.current
            .offer(r.time, r.pos, (r.rec.mid, r.rec.spread, r.rec.imbalance));
    }

    fn merge(acc: &mut BookAcc, o: &BookAcc) {
        acc.updates += o.updates;
        acc.mid.merge(&o.mid);
        acc.imbalance.merge(&o.imbalance);
        acc.spread.merge(&o.spread);
        acc.current.merge(&o.current);
    }

    fn finish(
        key: &str,
        window_start: EventTime,
        window_end: EventTime,
        a: &BookAcc,
    ) -> ResultLine {
        let (current_prob, current_spread, current_imbalance) =
            a.current.get().copied().unwrap_or_default();
        ResultLine::new(
            Self::STREAM,
            "market_id",
            key,
            ("PB", short_id(key)),
            (window_start, window_end),
            vec![
                ("current_prob", current_prob.into()),
                ("current_spread", current_spread.into()),
                ("current_imbalance", current_imbalance.into()),
                ("avg_prob", a.mid.avg().into()),
                ("min_prob", a.mid.min().into()),
                ("max_prob", a.mid.max().into()),
                ("avg_imbalance", a.imbalance.avg().into()),
                ("avg_spread", a.spread.avg().into()),
                ("num_updates", a.updates.into()),
            ],
        )
    }
}

/// Window accumulator for one market's trades.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TradeAcc {
    trades: u64,
    shares: NumStats,
}

/// The `polymarket_trades` window metrics.
pub struct TradeMetrics;

impl WindowAggregate for TradeMetrics {
    type Record = Trade;
    type Acc = TradeAcc;
    const STREAM: &'static str = "polymarket_trades";

    fn key(rec: &Trade) -> &str {
        &rec.market
    }

    fn add(acc: &mut TradeAcc, r: &Timed<Trade>) {
        acc.trades += 1;
        acc.shares.add(r.rec.size);
    }

    fn merge(acc: &mut TradeAcc, o: &TradeAcc) {
        acc.trades += o.trades;
        acc.shares.merge(&o.shares);
    }

    fn finish(
        key: &str,
        window_start: EventTime,
        window_end: EventTime,
        a: &TradeAcc,
    ) -> ResultLine {
        ResultLine::new(
            Self::STREAM,
            "market_id",
            key,
            ("PT", short_id(key)),
            (window_start, window_end),
            vec![
                ("total_shares_traded", a.shares.sum().into()),
                ("num_trades", a.trades.into()),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "0xc48e17e33742004e4ec5d3386d05f7d723f1c2da37b5cbc56e9ce432e13d8ed4";

    fn decode(s: &str) -> Vec<Decoded<Event>> {
        let mut out = Vec::new();
        FrameDecoder.decode(s.as_bytes(), &mut out);
        out
    }

    fn book(bids: &str, asks: &str) -> Book {
        let msg = format!(
            r#"{{"event_type":"book","market":"{M}","timestamp":"1790267353913","bids":{bids},"asks":{asks}}}"#
        );
        match &decode(&msg)[0] {
            Decoded::Record {
                rec: Event::Book(b, _),
                time,
                ..
            } => {
                assert_eq!(*time, 1_790_267_353_913);
                b.clone()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn best_levels_by_numeric_value_not_order_or_string() {
        // Best level listed last; ".48" and "0.5" compare as numbers; "9" < "10" numerically.
        let b = book(
            r#"[{"price":"0.01","size":"6"},{"price":".48","size":"30"},{"price":"0.4","size":"1"}]"#,
            r#"[{"price":"0.99","size":"5"},{"price":"0.5","size":"10"},{"price":"0.6","size":"1"}]"#,
        );
        assert!((b.mid.unwrap() - 0.49).abs() < 1e-12);
        assert!((b.spread.unwrap() - 0.02).abs() < 1e-12);
        assert!((b.imbalance.unwrap() - 0.5).abs() < 1e-12); // (30-10)/(30+10)
        let c = book(
            r#"[{"price":"9","size":"1"},{"price":"10","size":"3"}]"#,
            r#"[{"price":"11","size":"1"}]"#,
        );
        assert_eq!((c.mid, c.imbalance), (Some(10.5), Some(0.5)));
    }

    #[test]
    fn first_level_at_the_best_price_gives_the_depth() {
        let b = book(
            r#"[{"price":"0.4","size":"7"},{"price":"0.4","size":"99"}]"#,
            r#"[{"price":"0.6","size":"7"}]"#,
        );
        assert_eq!(b.imbalance, Some(0.0));
    }

    #[test]
    fn empty_or_missing_side_still_counts_with_nulls() {
        let b = book("[]", r#"[{"price":"0.6","size":"7"}]"#);
        assert_eq!((b.mid, b.spread, b.imbalance), (None, None, None));
        let msg = format!(
            r#"{{"event_type":"book","market":"{M}","timestamp":"5","asks":[{{"price":"0.6","size":"7"}}]}}"#
        );
        assert!(
            matches!(&decode(&msg)[0], Decoded::Record { rec: Event::Book(b, _), .. } if b.mid.is_none())
        );
        let zero = book(
            r#"[{"price":"0.4","size":"0"}]"#,
            r#"[{"price":"0.6","size":"0"}]"#,
        );
        assert_eq!(
            (zero.mid, zero.imbalance),
            (Some(0.5), None),
            "zero depth: null imbalance"
        );
    }

    #[test]
    fn multi_frame_messages_and_array_frames() {
        let book_ev = |ts: u32| {
            format!(
                r#"{{"event_type":"book","market":"{M}","timestamp":"{ts}","bids":[],"asks":[]}}"#
            )
        };
        let trade = format!(
            r#"{{"event_type":"last_trade_price","market":"{M}","timestamp":"9","price":".5","size":"12.5","side":"BUY"}}"#
        );
        let change = format!(
            r#"{{"event_type":"price_change","market":"{M}","timestamp":"8","price_changes":[]}}"#
        );
        let msg = format!(
            "[{},{}]\n{trade}\r\n\n{change}\n{{bad\n[1]",
            book_ev(1),
            book_ev(2)
        );
        let out = decode(&msg);
        assert_eq!(out.len(), 6);
        let idx: Vec<u32> = out
            .iter()
            .map(|d| match d {
                Decoded::Record { index, .. }
                | Decoded::Ignored { index, .. }
                | Decoded::Malformed { index, .. } => *index,
            })
            .collect();
        assert_eq!(idx, [0, 1, 2, 3, 4, 5]);
        assert!(
            matches!(&out[2], Decoded::Record { time: 9, rec: Event::Trade(t, _), .. } if t.size == Some(12.5))
        );
        assert!(
            matches!(&out[3], Decoded::Ignored { kind, time: Some(8), .. } if kind == "price_change")
        );
        assert!(
            matches!(&out[4], Decoded::Malformed { reason, excerpt: Some(x), .. } if reason == "invalid JSON" && x == "{bad")
        );
        assert!(
            matches!(&out[5], Decoded::Malformed { reason, .. } if reason == "event is not an object")
        );
    }

    #[test]
    fn malformed_events() {
        let reason = |s: &str| match &decode(s)[0] {
            Decoded::Malformed { reason, .. } => reason.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(r#"{"event_type":"book","timestamp":"1"}"#),
            "missing market"
        );
        assert_eq!(
            reason(&format!(r#"{{"event_type":"book","market":"{M}"}}"#)),
            "missing timestamp"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"event_type":"book","market":"{M}","timestamp":"x"}}"#
            )),
            "invalid timestamp"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"event_type":"book","market":"{M}","timestamp":"1","bids":[{{"price":"zz","size":"1"}}]}}"#
            )),
            "invalid book level"
        );
        assert_eq!(
            reason(&format!(
                r#"{{"event_type":"last_trade_price","market":"{M}","timestamp":"1","size":"lots"}}"#
            )),
            "invalid trade size"
        );
        assert_eq!(reason(r#"{"market":5}"#), "wrong field type");
        assert_eq!(reason(r#"{"market":"m"}"#), "missing event_type");
        assert_eq!(reason(""), "empty message");
    }

    #[test]
    fn row_keys_use_16_chars_of_the_market() {
        let mut acc = TradeAcc::default();
        TradeMetrics::add(
            &mut acc,
            &Timed {
                min_end: 0,
                time: 1,
                pos: Default::default(),
                rec: Trade {
                    market: M.into(),
                    size: None,
                },
            },
        );
        let r = TradeMetrics::finish(M, 0, 60_000, &acc);
        assert_eq!(r.row_key, "PT#0xc48e17e3374200#9999999939999");
        let v = r.to_json_value();
        assert_eq!(
            (v["market_id"].as_str(), v["num_trades"].as_u64()),
            (Some(M), Some(1))
        );
        assert!(v["total_shares_traded"].is_null());
    }
}
