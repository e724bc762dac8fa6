//! The Polymarket simulators: up/down markets on the simulated underlyings, as the live feed
//! has them. Every 15 minutes each underlying gets a new market (a new condition id and two
//! token ids, Up and Down) whose Up token prices the spot path (`dataflows/sim.rs`) against its
//! price at the market's start, with noise and a lag. `polymarket_trade` carries a subscription
//! snapshot (an array of full-depth books, best level last) at each market's start, then
//! `price_change` events for both tokens (complementary prices), `best_bid_ask`,
//! `last_trade_price` (followed by a fresh `book`, as the venue sends) and the occasional
//! `tick_size_change`; now and then a delta is skipped, which the token stream reports as a book
//! mismatch. `polymarket_metadata` publishes the four current markets every 15 minutes in the
//! Gamma shape, with the occasional API error object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::dataflows::sim::{spot, UNDERLYINGS};
use crate::source::generated::{GeneratedTopic, Generator};
use crate::time::EventTime;

/// The simulated `polymarket_trade` topic: two partitions of two underlyings each.
pub const TOPIC: GeneratedTopic = GeneratedTopic {
    partitions: 2,
    make: |p, seed, _rng| {
        let unders = vec![2 * p, 2 * p + 1];
        (
            format!("markets-{p}"),
            Box::new(FrameGen::new(unders, seed)) as Box<dyn Generator>,
        )
    },
};

/// The simulated `polymarket_metadata` topic: one partition.
pub const METADATA: GeneratedTopic = GeneratedTopic {
    partitions: 1,
    make: |_, seed, _rng| {
        (
            "gamma".to_string(),
            Box::new(MetadataGen { seed }) as Box<dyn Generator>,
        )
    },
};

/// Length of an up/down market.
const MARKET_MS: EventTime = 15 * 60_000;

/// Per-minute volatility the simulated markets price with.
const SIGMA: f64 = 0.001;

/// The identity of underlying `u`'s market starting at `start`: condition id and the Up and
/// Down token ids, the same in both simulators.
fn market_ids(u: usize, seed: u64, start: EventTime) -> (String, String, String) {
    let mut r =
        fastrand::Rng::with_seed(seed ^ start.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u as u64);
    let cond: String = (0..64)
        .map(|_| char::from_digit(r.u32(0..16), 16).unwrap_or('0'))
        .collect();
    let mut token = || {
        format!(
            "{}{:019}{:019}",
            r.u32(1..10),
            r.u64(..10u64.pow(19)),
            r.u64(..10u64.pow(19))
        )
    };
    (format!("0x{cond}"), token(), token())
}

/// The standard normal distribution function (Abramowitz–Stegun 7.1.26, |error| < 1.5e-7).
fn phi(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    0.5 * (1.0 + if x >= 0.0 { erf } else { -erf })
}

/// One token's book in cents: price → size.
#[derive(Default)]
struct SimBook {
    bids: BTreeMap<u32, f64>,
    asks: BTreeMap<u32, f64>,
}

impl SimBook {
    fn best(&self) -> (Option<u32>, Option<u32>) {
        (
            self.bids.keys().next_back().copied(),
            self.asks.keys().next().copied(),
        )
    }
}

/// The market of one underlying now running.
struct Live {
    start: EventTime,
    cond: String,
    /// Up, Down.
    tokens: [String; 2],
    strike: f64,
    books: [SimBook; 2],
}

/// Frames of the markets of some underlyings.
struct FrameGen {
    unders: Vec<usize>,
    seed: u64,
    live: Vec<Option<Live>>,
}

fn cents(c: u32) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

impl FrameGen {
    fn new(unders: Vec<usize>, seed: u64) -> Self {
        let live = unders.iter().map(|_| None).collect();
        Self { unders, seed, live }
    }

    /// The Up token's target quote (bid, ask in cents) at `t`: the option value of the spot
    /// against the strike, seen 20 s late, with noise.
    fn target(&self, i: usize, rng: &mut fastrand::Rng, t: EventTime) -> (u32, u32) {
        let (u, m) = (self.unders[i], self.live[i].as_ref());
        let Some(m) = m else { return (49, 51) };
        let seen = spot(u, self.seed, t.saturating_sub(20_000));
        let left = (m.start + MARKET_MS).saturating_sub(t) as f64 / 60_000.0;
        let fair = phi((seen / m.strike).ln() / (SIGMA * left.max(0.05).sqrt()));
        let p = (fair + (rng.f64() - 0.5) * 0.04).clamp(0.02, 0.98);
        let bid = ((p * 100.0).floor() as u32).clamp(1, 97);
        (bid, bid + 1 + u32::from(rng.f64() < 0.3))
    }

    /// Starts underlying `i`'s market at `start` with fresh books around the target.
    fn open(&mut self, i: usize, rng: &mut fastrand::Rng, start: EventTime) {
        let u = self.unders[i];
        let (cond, up, down) = market_ids(u, self.seed, start);
        self.live[i] = Some(Live {
            start,
            cond,
            tokens: [up, down],
            strike: spot(u, self.seed, start),
            books: [SimBook::default(), SimBook::default()],
        });
        let (bid, ask) = self.target(i, rng, start);
        let Some(m) = self.live[i].as_mut() else {
            return;
        };
        for k in 1..=6u32 {
            let size = |rng: &mut fastrand::Rng| (rng.f64() * 2000.0).round() + 10.0;
            if bid >= k {
                m.books[0].bids.insert(bid + 1 - k, size(rng));
            }
            if ask + k <= 100 {
                m.books[0].asks.insert(ask + k - 1, size(rng));
            }
        }
        // The Down token mirrors the Up token: its bids are the Up asks' complements.
        let mirror = |side: &BTreeMap<u32, f64>| side.iter().map(|(p, s)| (100 - p, *s)).collect();
        m.books[1].bids = mirror(&m.books[0].asks);
        m.books[1].asks = mirror(&m.books[0].bids);
    }

    /// A full-depth `book` of token `k` (best level last, as the feed lists it).
    fn book(&self, i: usize, k: usize, ts: EventTime, rng: &mut fastrand::Rng, buf: &mut String) {
        let Some(m) = &self.live[i] else { return };
        let b = &m.books[k];
        let levels = |it: Vec<(&u32, &f64)>, buf: &mut String| {
            buf.push('[');
            for (n, (p, s)) in it.into_iter().enumerate() {
                if n > 0 {
                    buf.push(',');
                }
                let _ = write!(buf, r#"{{"price":"{}","size":"{s}"}}"#, cents(*p));
            }
            buf.push(']');
        };
        let _ = write!(
            buf,
            r#"{{"market":"{}","asset_id":"{}","timestamp":"{ts}","hash":"{:x}","bids":"#,
            m.cond,
            m.tokens[k],
            rng.u64(..)
        );
        levels(b.bids.iter().collect(), buf);
        buf.push_str(r#","asks":"#);
        levels(b.asks.iter().rev().collect(), buf);
        buf.push_str(r#","tick_size":"0.01","event_type":"book"}"#);
    }

    /// Moves underlying `i`'s books toward the target quote: `price_change` events, one entry
    /// per token (the Down token's change is the complement of the Up token's).
    fn reprice(&mut self, i: usize, rng: &mut fastrand::Rng, ts: EventTime, buf: &mut String) {
        let (bid, ask) = self.target(i, rng, ts);
        let Some(m) = self.live[i].as_mut() else {
            return;
        };
        // (bid side of the Up token?, price, size) changes, in order.
        // The new best levels first, then the levels they pass: no side is ever empty.
        let mut changes: Vec<(bool, u32, f64)> = vec![
            (true, bid, (rng.f64() * 1500.0).round() + 5.0),
            (false, ask, (rng.f64() * 1500.0).round() + 5.0),
        ];
        let up = &m.books[0];
        changes.extend(
            up.bids
                .keys()
                .filter(|p| **p > bid)
                .map(|p| (true, *p, 0.0)),
        );
        changes.extend(
            up.asks
                .keys()
                .filter(|p| **p < ask)
                .map(|p| (false, *p, 0.0)),
        );
        for (is_bid, p, size) in changes {
            // A skipped delta now and then: the venue's best prices then disagree with a book
            // kept from the feed.
            let skip = rng.f64() < 0.0005;
            let entry = |book: &mut SimBook,
                         token: &str,
                         bid_side: bool,
                         price: u32,
                         buf: &mut String| {
                let side = if bid_side {
                    &mut book.bids
                } else {
                    &mut book.asks
                };
                if size == 0.0 {
                    side.remove(&price);
                } else {
                    side.insert(price, size);
                }
                let (bb, ba) = book.best();
                let _ = write!(
                    buf,
                    r#"{{"asset_id":"{token}","price":"{}","size":"{size}","side":"{}","hash":"{:x}","best_bid":"{}","best_ask":"{}"}}"#,
                    cents(price),
                    if bid_side { "BUY" } else { "SELL" },
                    price as u64 * 7919,
                    bb.map_or("0".into(), cents),
                    ba.map_or("1".into(), cents),
                );
            };
            let mut frame = String::new();
            let _ = write!(frame, r#"{{"market":"{}","price_changes":["#, m.cond);
            let [up, down] = &mut m.books;
            entry(up, &m.tokens[0], is_bid, p, &mut frame);
            frame.push(',');
            entry(down, &m.tokens[1], !is_bid, 100 - p, &mut frame);
            let _ = write!(
                frame,
                r#"],"timestamp":"{ts}","event_type":"price_change"}}"#
            );
            if skip {
                continue;
            }
            if !buf.is_empty() {
                buf.push('\n');
            }
            buf.push_str(&frame);
        }
    }
}

impl Generator for FrameGen {
    fn message(&mut self, rng: &mut fastrand::Rng, now: EventTime, buf: &mut String) -> u64 {
        let start = now - now % MARKET_MS;
        // A new market: the subscription snapshot, an array of both tokens' books.
        let new: Vec<usize> = (0..self.unders.len())
            .filter(|i| self.live[*i].as_ref().is_none_or(|m| m.start != start))
            .collect();
        if !new.is_empty() {
            buf.push('[');
            for (n, i) in new.into_iter().enumerate() {
                self.open(i, rng, start);
                for k in 0..2 {
                    if n > 0 || k > 0 {
                        buf.push(',');
                    }
                    self.book(i, k, now, rng, buf);
                }
            }
            buf.push(']');
            return 200 + rng.u64(0..300);
        }
        let i = rng.usize(0..self.unders.len());
        // The venue stamps a market's events in order.
        let ts = now;
        match rng.f64() {
            x if x < 0.6 => self.reprice(i, rng, ts, buf),
            x if x < 0.85 => {
                let Some(m) = &self.live[i] else { return 500 };
                let k = rng.usize(0..2);
                let (bb, ba) = m.books[k].best();
                let (bb, ba) = (bb.unwrap_or(0), ba.unwrap_or(100));
                let _ = write!(
                    buf,
                    r#"{{"market":"{}","asset_id":"{}","best_bid":"{}","best_ask":"{}","spread":"{}","timestamp":"{ts}","event_type":"best_bid_ask"}}"#,
                    m.cond,
                    m.tokens[k],
                    cents(bb),
                    cents(ba),
                    cents(ba.saturating_sub(bb)),
                );
            }
            x if x < 0.995 => {
                // A trade at the touch, then the venue's fresh book of that token.
                let Some(m) = &self.live[i] else { return 500 };
                let k = rng.usize(0..2);
                let buy = rng.bool();
                let (bb, ba) = m.books[k].best();
                let Some(price) = (if buy { ba } else { bb }) else {
                    return 500;
                };
                let _ = write!(
                    buf,
                    r#"{{"market":"{}","asset_id":"{}","price":"{}","size":"{}","side":"{}","fee_rate_bps":"0","timestamp":"{ts}","event_type":"last_trade_price"}}"#,
                    m.cond,
                    m.tokens[k],
                    cents(price),
                    (rng.f64() * 300.0 * 100.0).round() / 100.0 + 1.0,
                    if buy { "BUY" } else { "SELL" },
                );
                buf.push('\n');
                self.book(i, k, ts, rng, buf);
            }
            _ => {
                let Some(m) = &self.live[i] else { return 500 };
                let _ = write!(
                    buf,
                    r#"{{"market":"{}","asset_id":"{}","old_tick_size":"0.01","new_tick_size":"0.001","timestamp":"{ts}","event_type":"tick_size_change"}}"#,
                    m.cond,
                    m.tokens[rng.usize(0..2)],
                );
            }
        }
        if buf.is_empty() {
            // Every delta of this step was skipped: the frame still says something.
            let _ = write!(buf, r#"{{"event_type":"pong","timestamp":"{ts}"}}"#);
        }
        300 + rng.u64(0..400)
    }
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's civil-from-days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// US Eastern wall time of `t` (ms): (month, day, minutes of the day); daylight time from the
/// second Sunday of March to the first Sunday of November (switching at 07:00 UTC).
fn eastern(t: EventTime) -> (u32, u32, u64) {
    let days = (t / 86_400_000) as i64;
    let (y, _, _) = civil(days);
    let sunday_on_or_after = |month: u32, from: u32| {
        let mut d = from;
        loop {
            let day = days_from_civil(y, month, d);
            if (day + 4).rem_euclid(7) == 0 {
                return day;
            }
            d += 1;
        }
    };
    let begin = sunday_on_or_after(3, 8) * 86_400_000 + 7 * 3_600_000;
    let end = sunday_on_or_after(11, 1) * 86_400_000 + 6 * 3_600_000;
    let dst = (t as i64) >= begin && (t as i64) < end;
    let local = t as i64 - if dst { 4 } else { 5 } * 3_600_000;
    let (_, lm, ld) = civil(local.div_euclid(86_400_000));
    (lm, ld, (local.rem_euclid(86_400_000) / 60_000) as u64)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `1:00PM`-style clock time.
fn clock(minutes: u64) -> String {
    let (h, m) = (minutes / 60 % 24, minutes % 60);
    let h12 = if h % 12 == 0 { 12 } else { h % 12 };
    format!("{h12}:{m:02}{}", if h < 12 { "AM" } else { "PM" })
}

/// The title the venue gives an up/down market: `Bitcoin Up or Down - September 24, 12:30PM-12:45PM ET`.
fn title(name: &str, start: EventTime) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (m, d, from) = eastern(start);
    let (_, _, to) = eastern(start + MARKET_MS);
    let month = MONTHS[(m as usize + 11) % 12];
    format!(
        "{name} Up or Down - {month} {d}, {}-{} ET",
        clock(from),
        clock(to)
    )
}

/// Gamma snapshots of the current markets, every 15 minutes.
struct MetadataGen {
    seed: u64,
}

impl Generator for MetadataGen {
    fn message(&mut self, rng: &mut fastrand::Rng, now: EventTime, buf: &mut String) -> u64 {
        let start = now - now % MARKET_MS;
        buf.push('{');
        for (u, (_, _, prefix, name)) in UNDERLYINGS.iter().enumerate() {
            if u > 0 {
                buf.push(',');
            }
            if rng.f64() < 0.03 {
                let _ = write!(
                    buf,
                    r#""{prefix}":{{"error":"upstream request timed out","status":504}}"#
                );
                continue;
            }
            let (cond, up, down) = market_ids(u, self.seed, start);
            let secs = start / 1000;
            let _ = write!(
                buf,
                r#""{prefix}":{{"id":"{}","ticker":"{prefix}-updown-15m-{secs}","slug":"{prefix}-updown-15m-{secs}","title":"{}","active":true,"closed":false,"markets":[{{"id":"{}","question":"{}","conditionId":"{cond}","slug":"{prefix}-updown-15m-{secs}","outcomes":"[\"Up\", \"Down\"]","outcomePrices":"[\"0.5\", \"0.5\"]","clobTokenIds":"[\"{up}\", \"{down}\"]"}}]}}"#,
                secs % 1_000_000 + 40_000,
                title(name, start),
                secs % 1_000_000 + 500_000,
                title(name, start),
            );
        }
        buf.push('}');
        start + MARKET_MS - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_in_eastern_time() {
        // 2026-09-24 16:30 UTC is 12:30 PM EDT.
        assert_eq!(
            title("Bitcoin", 1_790_267_400_000),
            "Bitcoin Up or Down - September 24, 12:30PM-12:45PM ET"
        );
        // 2026-12-06 18:00 UTC is 1:00 PM EST.
        assert_eq!(
            title("XRP", 1_796_580_000_000),
            "XRP Up or Down - December 6, 1:00PM-1:15PM ET"
        );
    }

    #[test]
    fn normal_distribution() {
        assert!((phi(0.0) - 0.5).abs() < 1e-7);
        assert!((phi(1.96) - 0.975).abs() < 1e-4);
        assert!((phi(-1.0) + phi(1.0) - 1.0).abs() < 1e-7);
    }
}
