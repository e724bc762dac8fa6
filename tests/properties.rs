//! Property tests: no input can panic a decoder, the time arithmetic or a sink, and nothing
//! non-finite or unprintable gets through. Generated inputs: arbitrary bytes, arbitrary JSON
//! values in every field the decoders read, any 64-bit event time, arbitrary Unicode keys and
//! extreme numbers. A failure found here becomes a regression case in `proptest-regressions/`
//! and a named test below.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use speed_layer::dataflows::binance::{KlineAcc, KlineDecoder, KlineMetrics};
use speed_layer::dataflows::polymarket::tokens::{Op, TokenEvent};
use speed_layer::dataflows::polymarket::{
    Book, BookAcc, BookMetrics, Event, FrameDecoder, Trade, TradeAcc, TradeMetrics,
};
use speed_layer::result::ResultLine;
use speed_layer::sink::{ConsoleSink, JsonlSink, ResultSink};
use speed_layer::source::{Decoded, Decoder};
use speed_layer::time::{PartitionClock, Position, Timed, Timeliness, WindowSpec, MAX_EVENT_TIME};
use speed_layer::window::WindowAggregate;

/// Numbers at the edges: zeros, extremes, subnormals, 64-bit limits, the values producers get
/// wrong (µs and ns times).
fn edge_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(-0.0)),
        Just(json!(f64::MAX)),
        Just(json!(-f64::MAX)),
        Just(json!(f64::MIN_POSITIVE)),
        Just(json!(5e-324)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1_767_225_600_000_u64)),
        Just(json!(1_767_225_600_000_000_u64)),
        Just(json!(1_767_225_600_000_000_000_u64)),
        any::<i64>().prop_map(|x| json!(x)),
        any::<u64>().prop_map(|x| json!(x)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |x| x.is_finite())
            .prop_map(|x| json!(x)),
    ]
}

/// Strings a feed could send: numbers as strings (the Polymarket way), spellings of NaN and
/// infinity, empty, and any Unicode including controls and terminal escapes.
fn edge_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-Infinity".to_string()),
        Just("1e999".to_string()),
        Just(".48".to_string()),
        Just("0.5".to_string()),
        Just("\u{1b}[2J\u{1b}]0;x\u{7}".to_string()),
        Just("18446744073709551616".to_string()),
        "[0-9]{1,25}",
        any::<String>(),
    ]
}

/// Any JSON value, numbers and strings biased to the edges.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        edge_number(),
        edge_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object with each of `fields` absent, or any JSON value, or one of `usual` values.
fn object_with(fields: &'static [&'static str], usual: Value) -> impl Strategy<Value = Value> {
    let n = fields.len();
    prop::collection::vec(
        prop_oneof![
            1 => Just(None),
            3 => any_json().prop_map(Some),
            2 => Just(Some(usual.clone())),
        ],
        n..=n,
    )
    .prop_map(move |values| {
        let mut m = Map::new();
        for (f, v) in fields.iter().zip(values) {
            if let Some(v) = v {
                m.insert((*f).to_string(), v);
            }
        }
        Value::Object(m)
    })
}

fn kline_row() -> impl Strategy<Value = Value> {
    const FIELDS: &[&str] = &[
        "snapshot_time",
        "symbol",
        "close",
        "quote_asset_volume",
        "taker_buy_quote",
        "timestamp",
    ];
    object_with(FIELDS, json!(1_790_000_000_000_u64))
}

fn level() -> impl Strategy<Value = Value> {
    object_with(&["price", "size"], json!("0.5"))
}

fn poly_event() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just(json!("book")),
        Just(json!("last_trade_price")),
        Just(json!("price_change")),
        any_json(),
    ];
    let levels = prop_oneof![
        prop::collection::vec(level(), 0..4).prop_map(Value::Array),
        any_json(),
    ];
    (
        kind,
        object_with(
            &["market", "timestamp", "size", "price", "side"],
            json!("1790000000000"),
        ),
        levels.clone(),
        levels,
    )
        .prop_map(|(kind, mut ev, bids, asks)| {
            let m = ev.as_object_mut().expect("object_with makes objects");
            m.insert("event_type".into(), kind);
            m.insert("bids".into(), bids);
            m.insert("asks".into(), asks);
            ev
        })
}

fn finite(x: Option<f64>) -> bool {
    x.is_none_or(f64::is_finite)
}

/// Decoding never panics, and every record it lets through has a non-empty key and finite
/// values; every outcome names a position.
fn check_klines(value: &[u8]) {
    let mut out = Vec::new();
    KlineDecoder.decode(value, &mut out);
    assert!(!out.is_empty(), "every message has an outcome");
    for d in &out {
        if let Decoded::Record { rec, .. } = d {
            assert!(!rec.symbol.is_empty());
            assert!(finite(rec.price) && finite(rec.usdt_volume) && finite(rec.buy_sentiment));
        }
    }
}

fn check_frames(value: &[u8]) {
    let mut out = Vec::new();
    FrameDecoder.decode(value, &mut out);
    for d in &out {
        match d {
            Decoded::Record {
                rec: Event::Book(b, tok),
                ..
            } => {
                assert!(!b.market.is_empty());
                assert!(finite(b.mid) && finite(b.spread) && finite(b.imbalance));
                tok.iter().for_each(check_token);
            }
            Decoded::Record {
                rec: Event::Trade(t, tok),
                ..
            } => {
                assert!(!t.market.is_empty());
                assert!(finite(t.size));
                tok.iter().for_each(check_token);
            }
            Decoded::Record {
                rec: Event::Changes(list),
                ..
            } => {
                assert!(!list.is_empty());
                list.iter().for_each(check_token);
            }
            Decoded::Ignored { kind, .. } => {
                assert!(kind.chars().all(|c| !c.is_control()), "{kind:?}");
            }
            Decoded::Malformed { .. } => {}
        }
    }
}

/// A token event holds a key and only finite numbers; book levels have positive sizes.
fn check_token(t: &TokenEvent) {
    assert!(!t.asset.is_empty() && !t.market.is_empty());
    match &t.op {
        Op::Book { bids, asks } => {
            for (p, s) in bids.iter().chain(asks) {
                assert!(p.is_finite() && s.is_finite() && *s > 0.0);
            }
        }
        Op::Changes(changes) => {
            for c in changes {
                assert!(c.price.is_finite() && c.size.is_finite() && c.size >= 0.0);
                assert!(finite(c.reported.0) && finite(c.reported.1));
            }
        }
        Op::Trade { price, size, .. } => assert!(finite(*price) && finite(*size)),
    }
}

/// A result line rendered by every sink: the console shows no control character, the JSON
/// lines parse and hold no NaN or Infinity.
fn check_sinks(lines: &[ResultLine]) {
    let end = lines[0].window_end;
    let table = ConsoleSink::render(end, lines);
    assert!(
        table.chars().all(|c| c == '\n' || !c.is_control()),
        "{table:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let streams: Vec<&str> = lines.iter().map(|l| l.stream.as_ref()).collect();
    let mut sink = JsonlSink::create(dir.path(), &streams).unwrap();
    sink.write(end, lines).unwrap();
    sink.flush().unwrap();
    let mut streams: Vec<&str> = streams;
    streams.dedup();
    for stream in streams {
        let text = std::fs::read_to_string(dir.path().join(format!("{stream}.jsonl"))).unwrap();
        // serde_json refuses NaN and Infinity: lines that parse hold only finite numbers.
        let written: Vec<String> = text
            .lines()
            .map(|row| {
                let v: Value = serde_json::from_str(row).unwrap();
                let key = v.get("symbol").or_else(|| v.get("market_id"));
                key.and_then(Value::as_str).unwrap().to_string()
            })
            .collect();
        let keys: Vec<&str> = lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.key.as_str())
            .collect();
        assert_eq!(written, keys, "every key is carried intact");
    }
}

fn timed<R>(time: u64, rec: R) -> Timed<R> {
    Timed {
        time,
        pos: Position::default(),
        rec,
        min_end: 0,
    }
}

fn edge_f64() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        Just(Some(f64::MAX)),
        Just(Some(-f64::MAX)),
        Just(Some(5e-324)),
        Just(Some(1e200)),
        any::<f64>()
            .prop_filter("decoders let only finite values through", |x| x.is_finite())
            .prop_map(Some),
    ]
}

fn spec() -> impl Strategy<Value = WindowSpec> {
    use std::time::Duration;
    let ms = |range: std::ops::RangeInclusive<u64>| range.prop_map(Duration::from_millis);
    (
        ms(1..=86_400_000),
        ms(0..=86_400_000),
        ms(0..=3_600_000),
        ms(0..=u64::MAX / 4),
        0..3u8,
        1..5u64,
    )
        .prop_map(|(size, delay, allowed, future, kind, parts)| {
            let s = WindowSpec::new(size, delay)
                .unwrap()
                .with_allowed_lateness(allowed)
                .unwrap();
            let s = s.with_max_future(future).unwrap_or(s);
            match kind {
                0 => s,
                1 => s
                    .with_slide(Duration::from_millis((s.size_ms / parts).max(1)))
                    .unwrap_or(s),
                _ => s.with_session_gap(size).unwrap(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decoders_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_klines(&bytes);
        check_frames(&bytes);
    }

    #[test]
    fn decoders_take_any_text(text in any::<String>()) {
        check_klines(text.as_bytes());
        check_frames(text.as_bytes());
    }

    #[test]
    fn kline_decoder_takes_any_json_in_every_field(rows in prop::collection::vec(kline_row(), 1..4), bare in any::<bool>()) {
        let text = if bare && rows.len() == 1 { rows[0].to_string() } else { Value::Array(rows).to_string() };
        check_klines(text.as_bytes());
    }

    #[test]
    fn frame_decoder_takes_any_json_in_every_field(events in prop::collection::vec(poly_event(), 1..4), lines in 1..3usize) {
        let frame = if events.len() == 1 { events[0].to_string() } else { Value::Array(events).to_string() };
        let value = vec![frame; lines].join("\n");
        check_frames(value.as_bytes());
    }

    /// The decoder's one-pass path for a line holding one object gives exactly what the general
    /// path gives for the same event in a one-element array.
    #[test]
    fn one_object_decodes_as_a_one_element_array(event in poly_event()) {
        let (mut direct, mut wrapped) = (Vec::new(), Vec::new());
        FrameDecoder.decode(event.to_string().as_bytes(), &mut direct);
        FrameDecoder.decode(format!("[{event}]").as_bytes(), &mut wrapped);
        prop_assert_eq!(direct, wrapped);
    }

    #[test]
    fn time_arithmetic_takes_any_event_time(s in spec(), t in any::<u64>(), now in any::<u64>(), seen in any::<u64>(), held in any::<u64>()) {
        let mut clock = PartitionClock::default();
        clock.observe(seen);
        let closed = clock.closed(&s, held);
        prop_assert!(closed >= held);
        if s.admit(t, now).is_ok() {
            prop_assert!(t <= MAX_EVENT_TIME);
            let end = s.window_end(t);
            prop_assert!(end > t);
            prop_assert!(s.window_start(end) <= t || s.session_gap_ms.is_some());
            let ends: Vec<u64> = s.window_ends(t).collect();
            prop_assert!(ends.iter().all(|e| *e > t && s.window_start(*e) <= t));
            match s.classify(closed.min(MAX_EVENT_TIME * 2), t) {
                Timeliness::OnTime { min_end } => prop_assert!(ends.contains(&min_end) || s.session_gap_ms.is_some()),
                Timeliness::Correction { min_end, corrects } => prop_assert!(min_end <= corrects),
                Timeliness::Late { end, .. } => prop_assert_eq!(end, s.window_end(t)),
            }
        }
    }

    #[test]
    fn sinks_render_any_key_and_extreme_values(
        keys in prop::collection::vec(any::<String>().prop_filter("keys are non-empty", |k| !k.is_empty()), 1..4),
        values in prop::collection::vec((edge_f64(), edge_f64(), edge_f64()), 1..6),
        end in 1u64..=MAX_EVENT_TIME / 60_000,
    ) {
        let end = end * 60_000;
        let start = end - 60_000;
        let mut lines = Vec::new();
        for key in &keys {
            let (mut k, mut b, mut t) = (KlineAcc::default(), BookAcc::default(), TradeAcc::default());
            for (x, y, z) in &values {
                let kline = speed_layer::dataflows::binance::Kline::new(key.as_str().into(), *x, *y, *z);
                if finite(kline.buy_sentiment) {
                    KlineMetrics::add(&mut k, &timed(start, kline));
                }
                let book = Book { market: key.clone(), mid: *x, spread: *y, imbalance: *z };
                BookMetrics::add(&mut b, &timed(start, book));
                TradeMetrics::add(&mut t, &timed(start, Trade { market: key.clone(), size: *x }));
            }
            lines.push(KlineMetrics::finish(key, start, end, &k));
            lines.push(BookMetrics::finish(key, start, end, &b));
            lines.push(TradeMetrics::finish(key, start, end, &t));
        }
        lines.sort_by(|a, b| (&a.stream, &a.key).cmp(&(&b.stream, &b.key)));
        check_sinks(&lines);
    }
}

/// Regressions found by hand and by the properties above.
#[test]
fn regressions() {
    // An odd-length non-ASCII key longer than a console cell (sliced by bytes once).
    let k = format!(
        r#"[{{"snapshot_time":1790000000000,"symbol":"a{}","close":1.0}}]"#,
        "Ä".repeat(18)
    );
    check_klines(k.as_bytes());
    // snapshot_time at u64::MAX (printed through a failing Display once).
    check_klines(br#"[{"snapshot_time":18446744073709551615,"symbol":"X","close":1.0}]"#);
    // 5000 levels of nesting.
    check_klines(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).as_bytes());
    check_frames(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).as_bytes());
    let mut acc = KlineAcc::default();
    for price in [f64::MAX, f64::MAX, -f64::MAX] {
        let kline =
            speed_layer::dataflows::binance::Kline::new("X".into(), Some(price), Some(price), None);
        KlineMetrics::add(&mut acc, &timed(0, kline));
    }
    check_sinks(&[KlineMetrics::finish("X", 0, 60_000, &acc)]);
}
