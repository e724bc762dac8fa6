//! Micro benchmarks: message parsing per topic and the window update path.
//! Run with `cargo bench --bench micro`.

use speed_layer::aggregate::NumStats;
use speed_layer::dataflows::binance::{Kline, KlineDecoder, KlineMetrics};
use speed_layer::dataflows::polymarket::FrameDecoder;
use speed_layer::source::{Decoded, Decoder};
use speed_layer::time::{Position, Timed};
use speed_layer::window::WindowAggregate;

fn main() {
    divan::main();
}

/// A 25-row `binance` message in the seed format (Java-style numbers, 19-digit ns timestamps).
fn kline_message() -> String {
    let rows: Vec<String> = (0..25)
        .map(|i| {
            format!(
                r#"{{"snapshot_time":1790000000000,"timestamp":{}000000,"symbol":"BTCUSDT","open":96012.35,"high":96100.0,"low":95950.12,"close":{}.5,"volume":12.34567,"close_time":{},"quote_asset_volume":1.2009874512E7,"trades":5151,"taker_buy_base":6.1,"taker_buy_quote":5874123.25,"is_closed":false,"date":"2026-09-21","__index_level_0__":{i}}}"#,
                1_789_998_500_000u64 + i * 60_000,
                96_000 + i,
                1_789_998_559_999u64 + i * 60_000
            )
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// A 5-frame `polymarket_trade` message: books, a trade and a price change.
fn frames_message() -> String {
    let m = "0xc48e17e33742004e4ec5d3386d05f7d723f1c2da37b5cbc56e9ce432e13d8ed4";
    let book = format!(
        r#"{{"market":"{m}","asset_id":"1","timestamp":"1790000000123","hash":"ab","bids":[{{"price":"0.45","size":"120"}},{{"price":"0.46","size":"80"}},{{"price":".47","size":"30"}}],"asks":[{{"price":"0.50","size":"100"}},{{"price":"0.49","size":"60"}},{{"price":"0.48","size":"25"}}],"tick_size":"0.01","event_type":"book"}}"#
    );
    let trade = format!(
        r#"{{"market":"{m}","asset_id":"1","price":"0.48","size":"12.5","side":"BUY","timestamp":"1790000000200","event_type":"last_trade_price"}}"#
    );
    let change = format!(
        r#"{{"market":"{m}","price_changes":[{{"asset_id":"1","price":"0.47","size":"10","side":"BUY"}}],"timestamp":"1790000000300","event_type":"price_change"}}"#
    );
    [book.clone(), trade, change, book.clone(), book].join("\n")
}

#[divan::bench]
fn parse_binance_message_25_rows(bencher: divan::Bencher) {
    let msg = kline_message();
    let mut out = Vec::with_capacity(32);
    bencher
        .counter(divan::counter::BytesCount::new(msg.len()))
        .bench_local(|| {
            out.clear();
            KlineDecoder.decode(divan::black_box(msg.as_bytes()), &mut out);
            assert_eq!(out.len(), 25);
        });
}

#[divan::bench]
fn parse_polymarket_message_5_frames(bencher: divan::Bencher) {
    let msg = frames_message();
    let mut out = Vec::with_capacity(8);
    bencher
        .counter(divan::counter::BytesCount::new(msg.len()))
        .bench_local(|| {
            out.clear();
            FrameDecoder.decode(divan::black_box(msg.as_bytes()), &mut out);
            assert_eq!(out.len(), 5);
        });
}

#[divan::bench]
fn window_update_1000_klines(bencher: divan::Bencher) {
    let mut rows = Vec::new();
    KlineDecoder.decode(kline_message().as_bytes(), &mut rows);
    let recs: Vec<Timed<Kline>> = (0..1000)
        .map(|i| match &rows[i % rows.len()] {
            Decoded::Record { time, rec, index } => Timed {
                min_end: 0,
                time: *time,
                pos: Position {
                    partition: 0,
                    offset: i as u64,
                    index: *index,
                },
                rec: rec.clone(),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    bencher
        .counter(divan::counter::ItemsCount::new(recs.len()))
        .bench_local(|| {
            let mut acc = Default::default();
            for r in &recs {
                KlineMetrics::add(&mut acc, divan::black_box(r));
            }
            acc
        });
}

#[divan::bench]
fn num_stats_add_1000(bencher: divan::Bencher) {
    let xs: Vec<f64> = (0..1000)
        .map(|i| 96_000.0 + (i as f64 * 0.37).sin())
        .collect();
    bencher
        .counter(divan::counter::ItemsCount::new(xs.len()))
        .bench_local(|| {
            let mut s = NumStats::default();
            for x in &xs {
                s.add(Some(*x));
            }
            s
        });
}
