//! The `polymarket_trade` simulator: partitions of a few markets each, whose messages hold one
//! to six websocket frames — full-depth books (the best level listed last, as the live feed
//! does; sometimes an empty side), trades, price changes, and now and then a subscription-style
//! array of books.

use std::fmt::Write as _;

use crate::source::generated::{GeneratedTopic, Generator};
use crate::time::EventTime;

/// The simulated `polymarket_trade` topic.
pub const TOPIC: GeneratedTopic = GeneratedTopic {
    partitions: MARKET_GROUPS,
    make: |p, seed, _rng| {
        (
            format!("markets-{p}"),
            Box::new(BookGen::new(p, seed)) as Box<dyn Generator>,
        )
    },
};

/// Polymarket partitions, each carrying this many markets.
const MARKET_GROUPS: usize = 2;
const MARKETS_PER_GROUP: usize = 3;

/// A group of markets: book snapshots, trades and price changes, several frames per message.
struct BookGen {
    markets: Vec<(String, f64)>,
}

impl BookGen {
    fn new(group: usize, seed: u64) -> Self {
        let markets = (0..MARKETS_PER_GROUP)
            .map(|m| {
                let mut r = fastrand::Rng::with_seed(
                    seed ^ (0xC0FFEE + (group * MARKETS_PER_GROUP + m) as u64),
                );
                let id: String = (0..64)
                    .map(|_| char::from_digit(r.u32(0..16), 16).unwrap_or('0'))
                    .collect();
                (format!("0x{id}"), 0.2 + 0.6 * r.f64())
            })
            .collect();
        Self { markets }
    }

    /// A full-depth book; the best level is listed last, as the live feed does.
    fn book(&self, rng: &mut fastrand::Rng, m: usize, ts: EventTime, buf: &mut String) {
        let (id, p) = &self.markets[m];
        let side = |rng: &mut fastrand::Rng, buf: &mut String, sign: f64| {
            if rng.f64() < 0.03 {
                buf.push_str("[]");
                return;
            }
            let levels = rng.usize(1..8);
            let gap = rng.usize(0..3) as f64;
            buf.push('[');
            for i in (1..=levels).rev() {
                let price = (p + sign * 0.01 * (i as f64 + gap)).clamp(0.001, 0.999);
                if i != levels {
                    buf.push(',');
                }
                let _ = write!(
                    buf,
                    r#"{{"price":"{}","size":"{}"}}"#,
                    price_str(rng, price),
                    (rng.f64() * 5000.0).round()
                );
            }
            buf.push(']');
        };
        let _ = write!(
            buf,
            r#"{{"market":"{id}","asset_id":"{}","timestamp":"{ts}","hash":"{:x}","bids":"#,
            rng.u64(..),
            rng.u64(..)
        );
        side(rng, buf, -1.0);
        buf.push_str(r#","asks":"#);
        side(rng, buf, 1.0);
        buf.push_str(r#","tick_size":"0.01","event_type":"book"}"#);
    }
}

impl Generator for BookGen {
    fn message(&mut self, rng: &mut fastrand::Rng, now: EventTime, buf: &mut String) -> u64 {
        let frames = rng.usize(1..=6);
        for f in 0..frames {
            if f > 0 {
                buf.push('\n');
            }
            let ts = now.saturating_sub(rng.u64(0..400));
            if rng.f64() < 0.05 {
                // A subscription-style frame: an array with a book for every market.
                buf.push('[');
                for m in 0..self.markets.len() {
                    if m > 0 {
                        buf.push(',');
                    }
                    self.book(rng, m, ts, buf);
                }
                buf.push(']');
                continue;
            }
            let m = rng.usize(0..self.markets.len());
            let p = &mut self.markets[m].1;
            *p = (*p + (rng.f64() - 0.5) * 0.02).clamp(0.02, 0.98);
            match rng.f64() {
                x if x < 0.4 => self.book(rng, m, ts, buf),
                x if x < 0.65 => {
                    let (id, p) = &self.markets[m];
                    let _ = write!(
                        buf,
                        r#"{{"market":"{id}","asset_id":"{}","price":"{}","size":"{}","side":"{}","fee_rate_bps":"0","timestamp":"{ts}","event_type":"last_trade_price"}}"#,
                        rng.u64(..),
                        price_str(rng, *p),
                        (rng.f64() * 500.0 * 100.0).round() / 100.0,
                        if rng.bool() { "BUY" } else { "SELL" },
                    );
                }
                _ => {
                    let (id, p) = &self.markets[m];
                    let _ = write!(
                        buf,
                        r#"{{"market":"{id}","price_changes":[{{"asset_id":"{}","price":"{}","size":"{}","side":"BUY","best_bid":"{}","best_ask":"{}"}}],"timestamp":"{ts}","event_type":"price_change"}}"#,
                        rng.u64(..),
                        price_str(rng, *p),
                        rng.u32(0..5000),
                        price_str(rng, *p - 0.01),
                        price_str(rng, *p + 0.01),
                    );
                }
            }
        }
        300 + rng.u64(0..400)
    }
}

/// Prices as the feed writes them: two decimals, sometimes without the leading zero (".48").
fn price_str(rng: &mut fastrand::Rng, p: f64) -> String {
    let s = format!("{:.2}", p.clamp(0.001, 0.999));
    if rng.f64() < 0.2 {
        s.trim_start_matches('0').to_string()
    } else {
        s
    }
}
