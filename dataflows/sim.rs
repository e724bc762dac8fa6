//! The built-in market simulator: realistic `binance` and `polymarket_trade` message values
//! (random-walk prices, several symbols and markets, bounded disorder, the occasional empty book
//! side and zero-volume candle), produced at an accelerated event-time pace so that windows
//! finalise every few seconds of wall time. It is an ordinary source: each simulated symbol or
//! market group is a partition with the same watermark rules as Kafka or files.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::source::{owns, Origin, PartitionInfo, ReadStatus, Reader, ReaderFactory, ResumePoint};
use crate::time::{parse_duration, EventTime};

/// Simulator options (used when neither `--brokers` nor `--input` is given).
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Simulator: event time runs this many times faster than wall time (0 = as fast as possible).
    #[arg(long, default_value_t = 20.0, value_name = "FACTOR")]
    pub sim_speed: f64,
    /// Simulator: stop after this much event time (default: run until interrupted).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub sim_duration: Option<Duration>,
    /// Simulator: random seed (the same seed and start give the same messages).
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub sim_seed: u64,
    /// Simulator: event time of the first message, epoch ms (default: now).
    #[arg(long, value_name = "MS")]
    pub sim_start: Option<u64>,
}

/// Symbols simulated on `binance`, with a starting price; each is one partition.
const SYMBOLS: [(&str, f64); 4] = [
    ("BTCUSDT", 96_000.0),
    ("ETHUSDT", 3_400.0),
    ("SOLUSDT", 180.0),
    ("XRPUSDT", 2.3),
];
/// Polymarket partitions, each carrying this many markets.
const MARKET_GROUPS: usize = 2;
const MARKETS_PER_GROUP: usize = 3;

/// Which topic a simulator factory feeds.
#[derive(Clone, Copy, Debug)]
pub enum SimTopic {
    /// Kline snapshots.
    Binance,
    /// CLOB websocket frames.
    Polymarket,
}

impl SimTopic {
    /// Number of simulated partitions.
    pub fn partitions(self) -> usize {
        match self {
            SimTopic::Binance => SYMBOLS.len(),
            SimTopic::Polymarket => MARKET_GROUPS,
        }
    }
}

/// Opens simulated partitions on each worker.
pub struct SimFactory {
    topic: SimTopic,
    topic_ordinal: usize,
    speed: f64,
    seed: u64,
    start: EventTime,
    end: Option<EventTime>,
}

impl SimFactory {
    /// A factory for `topic`, the job's topic number `topic_ordinal` (see [`owns`]).
    pub fn new(
        topic: SimTopic,
        topic_ordinal: usize,
        args: &SimArgs,
        start: EventTime,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            args.sim_speed >= 0.0 && args.sim_speed.is_finite(),
            "--sim-speed must be 0 or more"
        );
        Ok(Self {
            topic,
            topic_ordinal,
            speed: args.sim_speed,
            seed: args.sim_seed,
            start,
            end: args.sim_duration.map(|d| start + d.as_millis() as u64),
        })
    }
}

impl ReaderFactory for SimFactory {
    fn open(
        &self,
        index: usize,
        peers: usize,
        resume: &[ResumePoint],
    ) -> anyhow::Result<Box<dyn Reader>> {
        let mut streams = Vec::new();
        let mut parts = Vec::new();
        for p in (0..self.topic.partitions()).filter(|p| owns(self.topic_ordinal + p, index, peers))
        {
            let mut rng = fastrand::Rng::with_seed(
                self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ ((self.topic_ordinal * 1000 + p) as u64),
            );
            let (name, gen) = match self.topic {
                SimTopic::Binance => (
                    SYMBOLS[p].0.to_string(),
                    Gen::Binance(KlineGen::new(p, &mut rng)),
                ),
                SimTopic::Polymarket => (
                    format!("markets-{p}"),
                    Gen::Poly(BookGen::new(p, self.seed)),
                ),
            };
            parts.push(PartitionInfo {
                id: p as u32,
                origin: Origin::Generated(name),
            });
            streams.push(Stream {
                rng,
                gen,
                next: self.start,
                seq: 0,
            });
            // Resumed: the same seed and start give the same messages; skip those already read.
            if let Some(at) = resume.iter().find(|r| r.id == p as u32) {
                let s = streams
                    .last_mut()
                    .unwrap_or_else(|| unreachable!("just pushed"));
                let mut buf = String::new();
                while s.seq < at.seq {
                    buf.clear();
                    s.next += s.gen.message(&mut s.rng, s.next, &mut buf);
                    s.seq += 1;
                }
            }
        }
        // Pacing continues from where the resumed streams stand.
        let paced_from = streams.iter().map(|s| s.next).min().unwrap_or(self.start);
        Ok(Box::new(SimReader {
            parts,
            streams,
            speed: self.speed,
            paced_from,
            end: self.end,
            began: Instant::now(),
            buf: String::new(),
        }))
    }
}

struct Stream {
    rng: fastrand::Rng,
    gen: Gen,
    /// Event time of the next message.
    next: EventTime,
    seq: u64,
}

enum Gen {
    Binance(KlineGen),
    Poly(BookGen),
}

impl Gen {
    /// Writes the message at event time `t`; returns the step to the next one.
    fn message(&mut self, rng: &mut fastrand::Rng, t: EventTime, out: &mut String) -> u64 {
        match self {
            Gen::Binance(g) => g.message(rng, t, out),
            Gen::Poly(g) => g.message(rng, t, out),
        }
    }
}

struct SimReader {
    parts: Vec<PartitionInfo>,
    streams: Vec<Stream>,
    speed: f64,
    /// Event time at `began`.
    paced_from: EventTime,
    end: Option<EventTime>,
    began: Instant,
    buf: String,
}

impl SimReader {
    fn done(&self, s: &Stream) -> bool {
        self.end.is_some_and(|e| s.next >= e)
    }
    /// Event time the simulation may reach by now.
    fn horizon(&self) -> EventTime {
        if self.speed == 0.0 {
            EventTime::MAX
        } else {
            self.paced_from
                + (self.began.elapsed().as_secs_f64() * 1000.0 * self.speed) as EventTime
        }
    }
}

impl Reader for SimReader {
    fn partitions(&self) -> &[PartitionInfo] {
        &self.parts
    }

    fn read(
        &mut self,
        budget: usize,
        out: &mut dyn FnMut(usize, u64, &[u8]),
    ) -> anyhow::Result<ReadStatus> {
        let horizon = self.horizon();
        let mut sent = 0;
        let mut progress = true;
        while sent < budget && progress {
            progress = false;
            for slot in 0..self.streams.len() {
                if self.done(&self.streams[slot]) || self.streams[slot].next > horizon {
                    continue;
                }
                let s = &mut self.streams[slot];
                self.buf.clear();
                let step = s.gen.message(&mut s.rng, s.next, &mut self.buf);
                s.seq += 1;
                s.next += step;
                out(slot, s.seq, self.buf.as_bytes());
                sent += 1;
                progress = true;
            }
        }
        if self.streams.iter().all(|s| self.done(s)) {
            return Ok(ReadStatus::Done);
        }
        let next_due = self
            .streams
            .iter()
            .filter(|s| !self.done(s))
            .map(|s| s.next)
            .min()
            .unwrap_or(horizon);
        if next_due <= horizon {
            Ok(ReadStatus::More)
        } else {
            let wait_ms = ((next_due - horizon) as f64 / self.speed).ceil() as u64;
            Ok(ReadStatus::Idle(Duration::from_millis(
                wait_ms.clamp(1, 200),
            )))
        }
    }

    fn position(&self, slot: usize) -> ResumePoint {
        let seq = self.streams[slot].seq;
        ResumePoint {
            id: self.parts[slot].id,
            offset: seq,
            seq,
            end: None,
        }
    }

    fn is_done(&self, slot: usize) -> bool {
        self.done(&self.streams[slot])
    }
}

/// Formats a double the way Java prints it: always a fraction, exponent form at ≥1e7 or <1e-3.
pub fn java_double(x: f64) -> String {
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
    fn new(p: usize, rng: &mut fastrand::Rng) -> Self {
        let (symbol, price) = SYMBOLS[p];
        Self {
            symbol,
            price: price * (0.95 + 0.1 * rng.f64()),
            klines: Vec::new(),
        }
    }

    fn message(&mut self, rng: &mut fastrand::Rng, now: EventTime, buf: &mut String) -> u64 {
        let minute = now - now % 60_000;
        if self.klines.is_empty() {
            // History before the first snapshot, so messages carry 20–30 rows from the start.
            for m in (1..30u64).rev() {
                let mut k = Kline::fresh(minute - m * 60_000, self.price);
                k.trade(rng, &mut self.price, 40);
                self.klines.push(k);
            }
        }
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
            *price *= 1.0 + (rng.f64() - 0.5) * 0.0008;
            let p = (*price * 100.0).round() / 100.0;
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

/// Prices as the feed writes them: two decimals, sometimes without the leading zero (".48").
fn price_str(rng: &mut fastrand::Rng, p: f64) -> String {
    let s = format!("{:.2}", p.clamp(0.001, 0.999));
    if rng.f64() < 0.2 {
        s.trim_start_matches('0').to_string()
    } else {
        s
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

/// Arguments of `speed-layer generate`.
#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    /// Folder for the files: `binance-p<N>.jsonl` and `polymarket_trade-p<N>.jsonl`, one per partition.
    #[arg(long, value_name = "DIR")]
    pub out_dir: std::path::PathBuf,
    #[command(flatten)]
    pub sim: SimArgs,
}

/// Writes simulator messages to files, one message value per line, one file per partition,
/// as fast as possible. Needs `--sim-duration` (the stream must end).
pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    anyhow::ensure!(
        args.sim.sim_duration.is_some(),
        "generate needs --sim-duration (how much event time to write)"
    );
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let sim = SimArgs {
        sim_speed: 0.0,
        ..args.sim.clone()
    };
    let start = sim.sim_start.unwrap_or_else(crate::time::now_ms);
    let mut total = 0u64;
    for (topic, name, base) in [
        (SimTopic::Binance, "binance", 0),
        (SimTopic::Polymarket, "polymarket_trade", 1),
    ] {
        let mut reader = SimFactory::new(topic, base, &sim, start)?.open(0, 1, &[])?;
        let mut files = Vec::new();
        for p in 0..topic.partitions() {
            let path = args.out_dir.join(format!("{name}-p{p}.jsonl"));
            let f = std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            files.push(std::io::BufWriter::new(f));
        }
        let mut err = None;
        while reader.read(4096, &mut |slot, _, value| {
            if err.is_none() {
                err = files[slot]
                    .write_all(value)
                    .and_then(|()| files[slot].write_all(b"\n"))
                    .err();
            }
            total += 1;
        })? != ReadStatus::Done
        {}
        if let Some(e) = err {
            return Err(e).context("writing generated messages");
        }
        for mut f in files {
            f.flush()?;
        }
    }
    eprintln!("wrote {total} messages to {}", args.out_dir.display());
    Ok(())
}
