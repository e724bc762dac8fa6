//! The Binance market: kline snapshot rows of the `binance` topic → per-symbol window metrics
//! (output stream `binance`). Its simulator is in `sim.rs`.
//!
//! Wire format and metric definitions: `formats.md` (topic `binance`, output stream `binance`).

pub mod correlations;
pub mod sim;

use std::borrow::Cow;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::aggregate::{Latest, NumStats};
use crate::context::{JobContext, Role};
use crate::result::ResultLine;
use crate::source::{source, Decoded, Decoder};
use crate::time::{EventTime, Timed, WindowSpec};
use crate::window::{ordered_windowed, windowed, WindowAggregate};

use super::{json, Exports, Input, Market, MarketArgs, Outputs, TopicSpec};

/// The Binance market.
pub(crate) struct Binance;

const TOPICS: &[TopicSpec] = &[TopicSpec {
    name: "binance",
    option: "topic-binance",
    about: "Binance kline snapshots",
    multi_frame: false,
    simulated: sim::TOPIC,
}];

impl Market for Binance {
    fn name(&self) -> &'static str {
        "binance"
    }

    fn topics(&self) -> &'static [TopicSpec] {
        TOPICS
    }

    fn streams(&self) -> &'static [&'static str] {
        &[KlineMetrics::STREAM, correlations::STREAM]
    }

    fn build<'s>(
        &self,
        scope: timely::dataflow::Scope<'s, EventTime>,
        inputs: &[Input],
        spec: WindowSpec,
        _settings: &MarketArgs,
        exports: &mut Exports<'s>,
        ctx: &JobContext,
    ) -> Outputs<'s> {
        let input = &inputs[0];
        let source_ctx = ctx.operator(Role::Source, TOPICS[0].name);
        let (klines, dead) = source(
            scope,
            &input.topic,
            std::sync::Arc::clone(&input.factory),
            KlineDecoder,
            spec,
            source_ctx,
        );
        exports.klines = Some(klines.clone());
        let mut results = Vec::new();
        if ctx.wants(KlineMetrics::STREAM) {
            let window_ctx = ctx.operator(Role::Window, KlineMetrics::STREAM);
            let metrics = windowed::<KlineMetrics>(klines.clone(), spec, window_ctx);
            results.push((KlineMetrics::STREAM, metrics));
        }
        if ctx.wants(correlations::STREAM) {
            // A pair's state is only its recent minutes (pruned as it goes): it never expires,
            // so the close before a quiet stretch of any length still counts.
            let history = EventTime::MAX;
            let correlations_out = ordered_windowed(
                correlations::PairCorrelation,
                correlations::minute_closes(klines, spec),
                spec,
                history,
                ctx.operator(Role::Window, correlations::STREAM),
            );
            results.push((correlations::STREAM, correlations_out));
        }
        Outputs { results, dead }
    }
}

/// One kline row, reduced to what the metrics use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kline {
    /// Grouping key (stored inline: symbols are short, so no allocation per row).
    pub symbol: CompactString,
    /// `close`.
    pub price: Option<f64>,
    /// `quote_asset_volume`.
    pub usdt_volume: Option<f64>,
    /// `taker_buy_quote / quote_asset_volume` when the volume is positive.
    pub buy_sentiment: Option<f64>,
}

/// The fields of a wire row that matter; unknown fields (including the 19-digit nanosecond
/// `timestamp`) are skipped without being parsed as numbers.
#[derive(Deserialize, Default)]
struct Row<'a> {
    #[serde(borrow)]
    symbol: Option<Cow<'a, str>>,
    snapshot_time: Option<u64>,
    close: Option<f64>,
    quote_asset_volume: Option<f64>,
    taker_buy_quote: Option<f64>,
}

impl Kline {
    /// Derives the per-record values of `formats.md`.
    pub fn new(
        symbol: CompactString,
        close: Option<f64>,
        qav: Option<f64>,
        taker_buy_quote: Option<f64>,
    ) -> Self {
        let buy_sentiment = match (taker_buy_quote, qav) {
            (Some(t), Some(q)) if q > 0.0 => Some(t / q),
            _ => None,
        };
        Kline {
            symbol,
            price: close,
            usdt_volume: qav,
            buy_sentiment,
        }
    }
}

/// Decodes `binance` message values: a JSON array of rows, or one bare row object.
#[derive(Clone, Default)]
pub struct KlineDecoder;

impl Decoder for KlineDecoder {
    type Record = Kline;

    fn decode(&mut self, value: &[u8], out: &mut Vec<Decoded<Kline>>) {
        let text = match std::str::from_utf8(value) {
            Ok(t) => t,
            Err(e) => return out.push(Decoded::malformed(0, "invalid UTF-8", e.to_string(), None)),
        };
        // Fastest path: plain rows, read by the validating scanner (the common case).
        let start = out.len();
        if scan_rows(text, out).is_some() {
            return;
        }
        out.truncate(start);
        decode_general(text, out);
    }
}

/// The `serde_json` paths: a message the scanner does not take (malformed, or valid but
/// unusual: escapes, nested values, repeated fields).
fn decode_general(text: &str, out: &mut Vec<Decoded<Kline>>) {
    // Fast path: the whole message parses in one pass.
    if text.trim_start().starts_with('[') {
        if let Ok(rows) = serde_json::from_str::<Vec<Row>>(text) {
            for (i, row) in rows.into_iter().enumerate() {
                out.push(decode_row(i as u32, row, || None));
            }
            return;
        }
    } else if let Ok(row) = serde_json::from_str::<Row>(text) {
        return out.push(decode_row(0, row, || None));
    }
    // Slow path: something is wrong; find out which row and why, row by row.
    let rows = match json::elements(text) {
        Ok(rows) => rows,
        Err(e) => return out.push(Decoded::malformed(0, reason_of(&e), e, None)),
    };
    let many = rows.len() > 1;
    for (i, raw) in rows.into_iter().enumerate() {
        let index = i as u32;
        let excerpt = || many.then(|| raw.get().to_string());
        match serde_json::from_str::<Row>(raw.get()) {
            Ok(row) => out.push(decode_row(index, row, excerpt)),
            Err(e) => {
                if let Some(last_wins) = json::without_duplicate_fields(raw.get(), &e) {
                    if let Ok(row) = serde_json::from_str::<Row>(&last_wins) {
                        out.push(decode_row(index, row, excerpt));
                        continue;
                    }
                }
                let (reason, detail) = diagnose(raw, &e);
                out.push(Decoded::malformed(index, reason, detail, excerpt()));
            }
        }
    }
}

/// Reads a message of plain rows with [`json::Scan`]: `None` (with `out` partly filled) when
/// anything is unusual, and the message then takes the `serde_json` paths, which read it
/// the same way or say what is wrong.
fn scan_rows(text: &str, out: &mut Vec<Decoded<Kline>>) -> Option<()> {
    let mut scan = json::Scan::new(text);
    let mut index = 0u32;
    scan.elements(|scan| {
        let mut row = Row::default();
        // A repeated field of the five goes the general way (the last one wins there).
        let mut seen = 0u8;
        scan.object(|scan, name| {
            let bit = match name {
                "symbol" => {
                    row.symbol = scan.opt_str()?.map(Cow::Borrowed);
                    1
                }
                "snapshot_time" => {
                    row.snapshot_time = scan.opt_u64()?;
                    2
                }
                "close" => {
                    row.close = scan.opt_f64()?;
                    4
                }
                "quote_asset_volume" => {
                    row.quote_asset_volume = scan.opt_f64()?;
                    8
                }
                "taker_buy_quote" => {
                    row.taker_buy_quote = scan.opt_f64()?;
                    16
                }
                _ => return scan.skip_scalar(),
            };
            (seen & bit == 0).then(|| seen |= bit)
        })?;
        out.push(decode_row(index, row, || None));
        index += 1;
        Some(())
    })
}

/// A parsed row: a record, or malformed for a missing key or event time.
fn decode_row(index: u32, row: Row<'_>, excerpt: impl Fn() -> Option<String>) -> Decoded<Kline> {
    match (row.symbol, row.snapshot_time) {
        (None, _) => Decoded::malformed(index, "missing symbol", String::new(), excerpt()),
        (_, None) => Decoded::malformed(index, "missing snapshot_time", String::new(), excerpt()),
        (Some(symbol), _) if symbol.is_empty() => {
            Decoded::malformed(index, "empty symbol", String::new(), excerpt())
        }
        (Some(symbol), Some(time)) => {
            let rec = Kline::new(
                CompactString::from(symbol.as_ref()),
                row.close,
                row.quote_asset_volume,
                row.taker_buy_quote,
            );
            // JSON numbers are finite, but a ratio of two can overflow.
            if rec.buy_sentiment.is_some_and(|x| !x.is_finite()) {
                return Decoded::malformed(
                    index,
                    "value out of range",
                    "taker_buy_quote / quote_asset_volume is not a finite number".into(),
                    excerpt(),
                );
            }
            Decoded::Record { index, time, rec }
        }
    }
}

fn reason_of(err: &str) -> &'static str {
    if err.starts_with("invalid JSON") {
        "invalid JSON"
    } else if err == "empty message" {
        "empty message"
    } else {
        "not an object or array"
    }
}

/// Names the field that failed to parse (the slow path, taken only for bad rows).
fn diagnose(raw: &RawValue, err: &serde_json::Error) -> (Cow<'static, str>, String) {
    let map = match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => return ("row is not an object".into(), err.to_string()),
        // Valid JSON for the message, not for a value: a number out of range (`1e999`).
        Err(e) => return ("invalid row".into(), e.to_string()),
    };
    type Check = fn(&serde_json::Value) -> bool;
    let checks: [(&str, Check); 5] = [
        ("symbol", |v| v.is_string() || v.is_null()),
        ("snapshot_time", |v| v.is_u64() || v.is_null()),
        ("close", |v| v.is_number() || v.is_null()),
        ("quote_asset_volume", |v| v.is_number() || v.is_null()),
        ("taker_buy_quote", |v| v.is_number() || v.is_null()),
    ];
    for (field, ok) in checks {
        if let Some(v) = map.get(field) {
            if !ok(v) {
                return (
                    format!("wrong type for {field}").into(),
                    format!("{field} is {}: {v}", json::kind(v)),
                );
            }
        }
    }
    ("invalid row".into(), err.to_string())
}

/// Window accumulator for one symbol.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KlineAcc {
    ticks: u64,
    price: NumStats,
    usdt_volume: NumStats,
    sentiment: NumStats,
    current: Latest<(Option<f64>, Option<f64>)>,
}

/// The `binance` window metrics.
pub struct KlineMetrics;

impl WindowAggregate for KlineMetrics {
    type Record = Kline;
    type Acc = KlineAcc;
    const STREAM: &'static str = "binance";

    fn key(rec: &Kline) -> &str {
        &rec.symbol
    }

    fn add(acc: &mut KlineAcc, r: &Timed<Kline>) {
        acc.ticks += 1;
        acc.price.add(r.rec.price);
        acc.usdt_volume.add(r.rec.usdt_volume);
        acc.sentiment.add(r.rec.buy_sentiment);
        acc.current
            .offer(r.time, r.pos, (r.rec.price, r.rec.buy_sentiment));
    }

    fn merge(acc: &mut KlineAcc, o: &KlineAcc) {
        acc.ticks += o.ticks;
        acc.price.merge(&o.price);
        acc.usdt_volume.merge(&o.usdt_volume);
        acc.sentiment.merge(&o.sentiment);
        acc.current.merge(&o.current);
    }

    fn finish(
        key: &str,
        window_start: EventTime,
        window_end: EventTime,
        a: &KlineAcc,
    ) -> ResultLine {
        let (current_price, current_sentiment) = a.current.get().copied().unwrap_or((None, None));
        ResultLine::new(
            Self::STREAM,
            "symbol",
            key,
            ("BIN", key),
            (window_start, window_end),
            vec![
                ("current_price", current_price.into()),
                ("current_sentiment", current_sentiment.into()),
                ("avg_price", a.price.avg().into()),
                ("min_price", a.price.min().into()),
                ("max_price", a.price.max().into()),
                ("volatility", a.price.stddev_samp().into()),
                ("total_usdt_volume", a.usdt_volume.sum().into()),
                ("avg_sentiment", a.sentiment.avg().into()),
                ("ticks", a.ticks.into()),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Vec<Decoded<Kline>> {
        let mut out = Vec::new();
        KlineDecoder.decode(s.as_bytes(), &mut out);
        out
    }

    fn record(d: &Decoded<Kline>) -> (u32, EventTime, &Kline) {
        match d {
            Decoded::Record { index, time, rec } => (*index, *time, rec),
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn reason(d: &Decoded<Kline>) -> String {
        match d {
            Decoded::Malformed { reason, .. } => reason.to_string(),
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    const ROW: &str = r#"{"snapshot_time":1758503759999,"timestamp":1758503700000000000,"symbol":"BTCUSDT","open":114623.68,"close":114660.0,"volume":26.19202,"quote_asset_volume":1.2009874512E7,"taker_buy_base":14.72112,"taker_buy_quote":6004937.256,"trades":5151,"is_closed":false,"date":"2025-09-22","__index_level_0__":3}"#;

    #[test]
    fn java_numbers_and_19_digit_ns_timestamp() {
        let out = decode(&format!("[{ROW}]"));
        let (_, time, k) = record(&out[0]);
        assert_eq!(
            time, 1_758_503_759_999,
            "event time is snapshot_time, not the ns timestamp"
        );
        assert_eq!(k.symbol, "BTCUSDT");
        assert_eq!(k.price, Some(114_660.0));
        assert_eq!(k.usdt_volume, Some(12_009_874.512));
        assert!((k.buy_sentiment.unwrap() - 0.5).abs() < 1e-12);
        let small = decode(
            r#"{"snapshot_time":1,"symbol":"X","close":5.0E-4,"quote_asset_volume":0.0,"taker_buy_quote":0.0}"#,
        );
        assert_eq!(record(&small[0]).2.price, Some(0.0005));
    }

    /// What the scanner reads, when it takes the message at all.
    fn scanned(s: &str) -> Option<Vec<Decoded<Kline>>> {
        let mut out = Vec::new();
        scan_rows(s, &mut out).map(|()| out)
    }

    fn general(s: &str) -> Vec<Decoded<Kline>> {
        let mut out = Vec::new();
        decode_general(s, &mut out);
        out
    }

    #[test]
    fn the_scanner_takes_plain_rows_and_reads_them_as_serde_json_does() {
        for text in [
            format!("[{ROW},{ROW}]"),
            ROW.to_string(),
            " [ ] ".to_string(),
            r#"[{"symbol":null,"snapshot_time":1}, {"snapshot_time":null,"symbol":"S"}]"#.into(),
            r#"{"symbol":"S","snapshot_time":0,"close":-0,"quote_asset_volume":123456789012345678901234,"taker_buy_quote":1e-320}"#.into(),
            r#"{"symbol":"S","snapshot_time":18446744073709551615,"close":0.1e1,"x":[],"y":{}}"#.into(),
            r#"{"symbol":"S","snapshot_time":5,"close":1E+2,"t":true,"f":false,"n":null,"s":"é"}"#.into(),
        ] {
            if let Some(fast) = scanned(&text) {
                assert_eq!(fast, general(&text), "{text}");
            }
        }
        assert!(
            scanned(&format!("[{ROW},{ROW}]")).is_some(),
            "the common case is scanned"
        );
        for unusual in [
            r#"{"symbol":"S\u0041","snapshot_time":1}"#,
            r#"{"symbol":"S","symbol":"T","snapshot_time":1}"#,
            r#"{"symbol":"S","snapshot_time":1,"nested":{"a":1}}"#,
            r#"{"symbol":"S","snapshot_time":1.0}"#,
            r#"{"symbol":"S","snapshot_time":1,"close":1e999}"#,
            r#"{"symbol":"S","snapshot_time":1,"close":01}"#,
            r#"{"symbol":"S","snapshot_time":1,"close":1.}"#,
            r#"{"symbol":"S","snapshot_time":1,"close":"1"}"#,
            "{\"symbol\":\"S\t\",\"snapshot_time\":1}",
            r#"{"symbol":"S","snapshot_time":1} x"#,
            r#"[{"symbol":"S","snapshot_time":1},]"#,
            r#"[7]"#,
        ] {
            assert!(scanned(unusual).is_none(), "{unusual}");
        }
    }

    proptest::proptest! {
        /// Whatever a byte-level edit does to a row, the scanner either leaves the message to
        /// the general path or reads exactly what the general path reads.
        #[test]
        fn the_scanner_never_disagrees_with_serde_json(
            at in 0usize..400, len in 0usize..4, insert in "[ -~]{0,3}", twice in proptest::bool::ANY,
        ) {
            let base = if twice { format!("[{ROW}, {ROW}]") } else { ROW.to_string() };
            let at = at.min(base.len());
            let end = (at + len).min(base.len());
            let text = format!("{}{}{}", &base[..at], insert, &base[end..]);
            if let Some(fast) = scanned(&text) {
                proptest::prop_assert_eq!(fast, general(&text), "{}", text);
            }
        }
    }

    #[test]
    fn bare_object_is_one_row() {
        let out = decode(ROW);
        assert_eq!(out.len(), 1);
        assert_eq!(record(&out[0]).0, 0);
    }

    #[test]
    fn zero_quote_volume_gives_null_sentiment() {
        let out = decode(
            r#"[{"snapshot_time":5,"symbol":"S","close":1.0,"quote_asset_volume":0.0,"taker_buy_quote":0.0}]"#,
        );
        let k = record(&out[0]).2;
        assert_eq!((k.usdt_volume, k.buy_sentiment), (Some(0.0), None));
    }

    #[test]
    fn bad_rows_are_malformed_one_by_one() {
        let out = decode(&format!(
            r#"[{ROW},{{"snapshot_time":5}},{{"symbol":"S"}},{{"symbol":"S","snapshot_time":"5"}},{{"symbol":"S","snapshot_time":5,"close":"abc"}},7,{ROW}]"#
        ));
        let reasons: Vec<String> = out[1..6].iter().map(reason).collect();
        assert_eq!(
            reasons,
            [
                "missing symbol",
                "missing snapshot_time",
                "wrong type for snapshot_time",
                "wrong type for close",
                "row is not an object"
            ]
        );
        assert_eq!(
            record(&out[6]).0,
            6,
            "rows keep their position in the message"
        );
        assert_eq!(reason(&decode("not json")[0]), "invalid JSON");
        assert_eq!(reason(&decode("\"x\"")[0]), "not an object or array");
        assert_eq!(
            reason(&decode(r#"{"symbol":"S","snapshot_time":1.5}"#)[0]),
            "wrong type for snapshot_time"
        );
        assert!(decode("[]").is_empty());
    }

    fn timed(time: EventTime, offset: u64, index: u32, price: f64, qav: f64) -> Timed<Kline> {
        Timed {
            min_end: 0,
            time,
            pos: crate::time::Position {
                partition: 0,
                offset,
                index,
            },
            rec: Kline::new("S".into(), Some(price), Some(qav), Some(qav / 4.0)),
        }
    }

    fn result(acc: &KlineAcc) -> serde_json::Value {
        KlineMetrics::finish("S", 0, 60_000, acc).to_json_value()
    }

    #[test]
    fn window_metrics() {
        let mut acc = KlineAcc::default();
        KlineMetrics::add(&mut acc, &timed(10, 1, 0, 10.0, 100.0));
        KlineMetrics::add(&mut acc, &timed(30, 2, 0, 14.0, 0.0)); // zero volume: null sentiment
        KlineMetrics::add(&mut acc, &timed(30, 2, 1, 12.0, 200.0)); // tie on time: later row wins
        KlineMetrics::add(&mut acc, &timed(20, 3, 0, 11.0, 100.0));
        let r = result(&acc);
        assert_eq!(r["current_price"], 12.0);
        assert_eq!(r["current_sentiment"], 0.25);
        assert_eq!(r["avg_price"], 11.75);
        assert_eq!(
            (r["min_price"].clone(), r["max_price"].clone()),
            (10.0.into(), 14.0.into())
        );
        let sd =
            ((1.75f64.powi(2) + 2.25f64.powi(2) + 0.25f64.powi(2) + 0.75f64.powi(2)) / 3.0).sqrt();
        assert!((r["volatility"].as_f64().unwrap() - sd).abs() < 1e-12);
        assert_eq!(r["total_usdt_volume"], 400.0);
        assert_eq!(r["avg_sentiment"], 0.25);
        assert_eq!(r["ticks"], 4);
        assert_eq!(r["symbol"], "S");
        assert_eq!(r["window_end"], 60_000);
    }

    #[test]
    fn single_row_has_null_volatility_and_null_current_kept() {
        let mut acc = KlineAcc::default();
        KlineMetrics::add(&mut acc, &timed(10, 1, 0, 10.0, 0.0));
        let r = result(&acc);
        assert!(r["volatility"].is_null());
        assert!(
            r["current_sentiment"].is_null(),
            "the latest record's null is kept"
        );
        assert!(
            r["avg_sentiment"].is_null(),
            "an aggregate over only nulls is null"
        );
    }
}
