//! The `binance` simulator: one partition per symbol, each a random walk whose snapshots carry
//! the last 20–30 one-minute klines (as the real collector does), with bounded disorder and the
//! occasional zero-volume candle right after the minute turns.

use std::fmt::Write as _;

use crate::dataflows::sim::{spot, UNDERLYINGS};
use crate::source::generated::{GeneratedTopic, Generator};
use crate::time::EventTime;

/// The simulated `binance` topic.
pub const TOPIC: GeneratedTopic = GeneratedTopic {
    partitions: UNDERLYINGS.len(),
    make: |p, seed, _rng| {
        (
            UNDERLYINGS[p].0.to_string(),
            Box::new(KlineGen::new(p, seed)) as Box<dyn Generator>,
        )
    },
};
/// Formats a double the way Java prints it: always a fraction, exponent form at ≥1e7 or <1e-3.
pub(crate) fn java_double(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 {
        "0.0".to_string()
    } else if (1e-3..1e7).contains(&a) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let s = format!("{x:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = if mant.contains('.') {
            mant.to_string()
        } else {
            format!("{mant}.0")
        };
        format!("{mant}E{exp}")
    }
}

/// One symbol's klines: the current one is updated by every snapshot; a snapshot carries the
/// last 20–30 klines, as the real collector does.
struct KlineGen {
    symbol: &'static str,
    /// The path's index and seed: prices follow [`spot`].
    path: (usize, u64),
    price: f64,
    klines: Vec<Kline>,
}

#[derive(Clone)]
struct Kline {
    open_ms: EventTime,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    qav: f64,
    taker_base: f64,
    taker_quote: f64,
    trades: u64,
}

impl KlineGen {
    fn new(p: usize, seed: u64) -> Self {
        Self {
            symbol: UNDERLYINGS[p].0,
            path: (p, seed),
            price: spot(p, seed, 0),
            klines: Vec::new(),
        }
    }
}

impl Generator for KlineGen {
    fn message(&mut self, rng: &mut fastrand::Rng, now: EventTime, buf: &mut String) -> u64 {
        let minute = now - now % 60_000;
        if self.klines.is_empty() {
            // History before the first snapshot, so messages carry 20–30 rows from the start.
            for m in (1..30u64).rev() {
                let open = minute - m * 60_000;
                self.price = spot(self.path.0, self.path.1, open);
                let mut k = Kline::fresh(open, self.price);
                k.trade(rng, &mut self.price, 40);
                self.klines.push(k);
            }
        }
        self.price = spot(self.path.0, self.path.1, now);
        if self.klines.last().is_none_or(|k| k.open_ms != minute) {
            self.klines.push(Kline::fresh(minute, self.price));
            if self.klines.len() > 40 {
                self.klines.remove(0);
            }
        }
        // Right after the minute turns the new kline sometimes has no trades yet: zero volume.
        if !(now - minute < 3_000 && rng.f64() < 0.5) {
            let n = rng.u64(1..25);
            let last = self.klines.len() - 1;
            self.klines[last].trade(rng, &mut self.price, n);
        }
        // Bounded disorder: the collector's clock sometimes stamps a little early.
        let stamp = if rng.f64() < 0.1 {
            now.saturating_sub(rng.u64(0..1500))
        } else {
            now
        };
        let rows = rng.usize(20..=30).min(self.klines.len());
        let first = self.klines.len() - rows;
        buf.push('[');
        for (i, k) in self.klines[first..].iter().enumerate() {
            if i > 0 {
                buf.push(',');
            }
            let _ = write!(
                buf,
                r#"{{"snapshot_time":{stamp},"timestamp":{}000000,"symbol":"{}","open":{},"high":{},"low":{},"close":{},"volume":{},"close_time":{},"quote_asset_volume":{},"trades":{},"taker_buy_base":{},"taker_buy_quote":{},"is_closed":{},"date":"{}","__index_level_0__":{i}}}"#,
                k.open_ms,
                self.symbol,
                java_double(k.open),
                java_double(k.high),
                java_double(k.low),
                java_double(k.close),
                java_double(k.volume),
                k.open_ms + 59_999,
                java_double(k.qav),
                k.trades,
                java_double(k.taker_base),
                java_double(k.taker_quote),
                k.open_ms + 60_000 <= now,
                crate::time::format_ms(k.open_ms),
            );
        }
        buf.push(']');
        1_500 + rng.u64(0..1_000)
    }
}

impl Kline {
    fn fresh(open_ms: EventTime, price: f64) -> Self {
        Kline {
            open_ms,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: 0.0,
            qav: 0.0,
            taker_base: 0.0,
            taker_quote: 0.0,
            trades: 0,
        }
    }

    fn trade(&mut self, rng: &mut fastrand::Rng, price: &mut f64, n: u64) {
        for _ in 0..n {
            // Trades scatter around the spot path.
            let p = *price * (1.0 + (rng.f64() - 0.5) * 0.0004);
            let p = (p * 1e4).round() / 1e4;
            let qty = (rng.f64() * 2.0 * 1e5 / p.max(1.0)).max(1e-4);
            let qty = (qty * 1e5).round() / 1e5;
            self.high = self.high.max(p);
            self.low = self.low.min(p);
            self.close = p;
            self.volume += qty;
            self.qav += qty * p;
            if rng.bool() {
                self.taker_base += qty;
                self.taker_quote += qty * p;
            }
            self.trades += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_double_format() {
        assert_eq!(java_double(0.0), "0.0");
        assert_eq!(java_double(114660.0), "114660.0");
        assert_eq!(java_double(12009874.512), "1.2009874512E7");
        assert_eq!(java_double(0.0005), "5.0E-4");
        assert_eq!(java_double(0.25), "0.25");
    }
}
