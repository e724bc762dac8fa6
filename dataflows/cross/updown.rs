//! Fair value of up/down markets (`updown`; `formats.md`, "Cross-market"): an underlying's
//! kline closes, the up/down markets on it (from their metadata) and their tokens' latest
//! probabilities meet in one state per underlying, applied in event-time order by the engine's
//! ordered windows. At every window end a market is live the state is read as of that instant
//! (a tick): strike, spot, realized volatility, time left, the option-style fair probability
//! and the market's own. The same state raises the `return_zscore` and `edge` alerts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::result::{Cell, ResultLine};
use crate::time::{EventTime, Position, Timed, WindowSpec};
use crate::window::OrderedAggregate;

use super::alerts::{alert_line, clock, Cooldowns, Rule, Rules};
use crate::dataflows::polymarket::metadata::short_title;

/// The stream's name.
pub const STREAM: &str = "updown";

/// One minute (the grid of closes and returns).
pub const MINUTE: EventTime = 60_000;
/// Returns in a volatility estimate: the hour before.
const RETURNS: u64 = 60;
/// Fewer returns than this give a null volatility.
const MIN_RETURNS: usize = 10;
/// Rows kept: the hour of minute closes a volatility needs, and a little more.
const ROW_MEMORY: EventTime = (RETURNS + 2) * MINUTE;
/// A token's probability is remembered this long without a newer one, when no known market
/// holds it (a token seen before its market's metadata).
const PROB_MEMORY: EventTime = 2 * 3_600_000;

/// An up/down market on an underlying, from its metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpDown {
    /// Condition id.
    pub market_id: String,
    /// `btc-updown-15m-…`.
    pub slug: String,
    /// The event's title.
    pub title: String,
    /// Start (ms): the strike is the underlying's price then.
    pub start: EventTime,
    /// End (ms): the market resolves then.
    pub end: EventTime,
    /// `(token id, outcome)`.
    pub tokens: Vec<(String, String)>,
}

/// What reaches one underlying's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// A kline row's `close` (only the rows a minute close or a strike can be).
    Row(Option<f64>),
    /// A token's latest observed `prob` before the record's time + 1 (the end of the token
    /// window it comes from).
    Prob {
        /// The token.
        asset_id: String,
        /// Its `prob`, null when a side of its book was empty.
        prob: Option<f64>,
    },
    /// An up/down market on the underlying (a newer version of the same market replaces it).
    Market(UpDown),
}

/// One input for the state of `underlying`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The underlying's symbol (`BTCUSDT`): the key.
    pub underlying: String,
    /// What it brings.
    pub input: Input,
}

/// A known market and its strike once read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Live {
    market: Option<UpDown>,
    /// Read at the market's first window end: the close of the latest row at or before its
    /// start (null when no row was).
    strike: Option<Option<f64>>,
}

/// One underlying's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Recent kline rows: (time, position) → close.
    rows: BTreeMap<(EventTime, Position), Option<f64>>,
    /// The first and the latest row's time.
    span: Option<(EventTime, EventTime)>,
    /// Latest observed probability per token: time and value.
    probs: BTreeMap<String, (EventTime, Option<f64>)>,
    /// Live up/down markets by condition id.
    markets: BTreeMap<String, Live>,
    /// When each (rule, key) last fired.
    cooldowns: Cooldowns,
}

impl State {
    /// `c(x)`: the close of the latest row before `x`.
    fn close_before(&self, x: EventTime) -> Option<f64> {
        self.rows
            .range(..(x, Position::default()))
            .next_back()
            .and_then(|(_, c)| *c)
    }

    /// The close of the latest row at or before `x`, if the rows kept reach back that far.
    fn close_at_or_before(&self, x: EventTime) -> Option<Option<f64>> {
        let (_, c) = self.rows.range(..=(x, max_position())).next_back()?;
        Some(*c)
    }

    /// `r(x) = ln(c(x) / c(x − 1 min))`, when both exist and the ratio has a logarithm.
    fn minute_return(&self, x: EventTime) -> Option<f64> {
        let now = self.close_before(x)?;
        let before = self.close_before(x.checked_sub(MINUTE)?)?;
        let r = (now / before).ln();
        r.is_finite().then_some(r)
    }

    /// `sigma(e)`: the sample standard deviation of the returns at `e`, `e − 1 min`, … (an
    /// hour of them) that exist; null with fewer than 10.
    fn sigma(&self, e: EventTime) -> Option<f64> {
        let returns: Vec<f64> = (0..RETURNS)
            .filter_map(|k| e.checked_sub(k * MINUTE))
            .filter_map(|x| self.minute_return(x))
            .collect();
        sample_std(&returns)
    }
}

/// The largest position: with a time, the last key of that time.
fn max_position() -> Position {
    Position {
        partition: u32::MAX,
        offset: u64::MAX,
        index: u32::MAX,
    }
}

/// The sample standard deviation, null with fewer than [`MIN_RETURNS`] values.
fn sample_std(xs: &[f64]) -> Option<f64> {
    if xs.len() < MIN_RETURNS {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    let s = var.sqrt();
    s.is_finite().then_some(s)
}

/// The standard normal distribution function, Φ(x) = erfc(−x/√2) / 2.
pub fn phi(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// The fair probability that the `Up` token pays: Φ(ln(spot / strike) / (sigma · √tau)); at
/// `tau = 0` or `sigma = 0` the outcome is known (a tie resolves Up at expiry, and is even
/// before it).
pub fn fair_up(spot: f64, strike: f64, sigma: f64, tau_min: f64) -> Option<f64> {
    if tau_min <= 0.0 {
        return Some(if spot >= strike { 1.0 } else { 0.0 });
    }
    if sigma == 0.0 {
        return Some(if spot > strike {
            1.0
        } else if spot < strike {
            0.0
        } else {
            0.5
        });
    }
    let p = phi((spot / strike).ln() / (sigma * tau_min.sqrt()));
    p.is_finite().then_some(p)
}

/// The `updown` rows (and the `return_zscore` and `edge` alerts) in windows of `spec`.
pub struct Updown {
    /// The windows: rows are given at their ends.
    pub spec: WindowSpec,
    /// Alert thresholds and cooldowns.
    pub rules: Rules,
}

impl Updown {
    /// The first window end after `t`.
    fn end_after(&self, t: EventTime) -> EventTime {
        (t / self.spec.slide_ms)
            .saturating_add(1)
            .saturating_mul(self.spec.slide_ms)
    }

    /// Windows end on the minute grid (else the state gives nothing).
    fn aligned(&self) -> bool {
        self.spec.slide_ms.is_multiple_of(MINUTE)
    }

    /// The window ends at which a return can differ from zero: up to a minute after the
    /// latest row (or one window, if longer).
    fn returns_until(&self, last_row: EventTime) -> EventTime {
        last_row.saturating_add(MINUTE.max(self.spec.slide_ms))
    }

    /// The row of one token at window end `e`, and its `edge`.
    fn row(
        &self,
        st: &State,
        m: &UpDown,
        strike: Option<f64>,
        token: &(String, String),
        e: EventTime,
    ) -> (ResultLine, Option<f64>) {
        let (asset, outcome) = token;
        let spot = st.close_before(e);
        let sigma = st.sigma(e);
        let tau_min = m.end.saturating_sub(e) as f64 / MINUTE as f64;
        let up = match (spot, strike, sigma) {
            (Some(s), Some(k), Some(v)) => fair_up(s, k, v, tau_min),
            _ => None,
        };
        let fair = match outcome.as_str() {
            "Up" => up,
            "Down" => up.map(|p| 1.0 - p),
            _ => None,
        };
        let market = st.probs.get(asset).and_then(|(_, p)| *p);
        let edge = market.zip(fair).map(|(m, f)| m - f);
        let underlying = crate::dataflows::polymarket::metadata::underlying(&m.slug).unwrap_or("");
        let mut line = ResultLine::new(
            STREAM,
            "asset_id",
            asset,
            ("UD", short(asset)),
            (self.spec.window_start(e), e),
            vec![
                ("market_id", Cell::Text(m.market_id.clone())),
                ("underlying", Cell::Text(underlying.to_string())),
                ("outcome", Cell::Text(outcome.clone())),
                ("slug", Cell::Text(m.slug.clone())),
                ("strike", strike.into()),
                ("spot", spot.into()),
                ("sigma", sigma.into()),
                ("tau_min", Cell::num(Some(tau_min))),
                ("fair_prob", fair.into()),
                ("market_prob", market.into()),
                ("edge", edge.into()),
            ],
        );
        line.label = Some(format!("{} · {outcome}", short_title(&m.slug, &m.title)));
        (line, edge)
    }
}

/// The first 16 characters of an id (the serving-layer row key's ID).
fn short(id: &str) -> &str {
    id.char_indices().nth(16).map_or(id, |(i, _)| &id[..i])
}

impl OrderedAggregate for Updown {
    type Record = Record;
    type State = State;
    type Obs = ();
    type Acc = ();
    const STREAM: &'static str = STREAM;

    fn key(rec: &Record) -> &str {
        &rec.underlying
    }

    fn step(&self, st: &mut State, r: &Timed<Record>) {
        match &r.rec.input {
            Input::Row(close) => {
                st.rows.insert((r.time, r.pos), *close);
                st.span = Some(st.span.map_or((r.time, r.time), |(a, _)| (a, r.time)));
            }
            Input::Prob { asset_id, prob } => {
                st.probs.insert(asset_id.clone(), (r.time, *prob));
            }
            Input::Market(m) => {
                let live = st.markets.entry(m.market_id.clone()).or_default();
                live.market = Some(m.clone());
            }
        }
    }

    fn add(&self, _acc: &mut (), _r: &Timed<Record>, _obs: &()) {}

    fn finish(
        &self,
        _key: &str,
        _start: EventTime,
        _end: EventTime,
        _acc: &(),
    ) -> Option<ResultLine> {
        // Everything is given at ticks: a window's rows do not depend on records arriving in it.
        None
    }

    fn next_tick(&self, st: &State, after: EventTime) -> Option<EventTime> {
        if !self.aligned() {
            return None;
        }
        let markets = st
            .markets
            .values()
            .filter_map(|l| l.market.as_ref())
            .filter_map(|m| {
                let e = self.end_after(after.max(m.start));
                (e <= m.end).then_some(e)
            });
        let returns = st.span.and_then(|(first, last)| {
            let e = self.end_after(after.max(first));
            (e <= self.returns_until(last)).then_some(e)
        });
        markets.chain(returns).min()
    }

    fn tick(&self, underlying: &str, st: &mut State, e: EventTime) -> Vec<ResultLine> {
        let mut out = Vec::new();
        // A return against the volatility before it.
        let rules = &self.rules;
        if let (Some(r), Some(s)) = (
            st.minute_return(e),
            e.checked_sub(MINUTE).and_then(|x| st.sigma(x)),
        ) {
            if s > 0.0 {
                let z = r.abs() / s;
                let rule = &rules.return_zscore;
                if rule.fires(z)
                    && st.cooldowns.admit(
                        Rule::ReturnZscore,
                        underlying,
                        e,
                        rules.cooldown_of(rule),
                    )
                {
                    let message = format!(
                        "{underlying} moved {:+.3}% in the minute to {}: {z:.1}σ of its last hour",
                        (r.exp() - 1.0) * 100.0,
                        clock(e)
                    );
                    out.push(alert_line(
                        Rule::ReturnZscore,
                        underlying,
                        (self.spec.window_start(e), e),
                        z,
                        rule.threshold,
                        message,
                        None,
                    ));
                }
            }
        }
        // The rows of every live market.
        let live: Vec<String> = st.markets.keys().cloned().collect();
        for id in live {
            let Some(m) = st.markets[&id].market.clone() else {
                continue;
            };
            if !(m.start < e && e <= m.end) {
                continue;
            }
            let strike = match st.markets[&id].strike {
                Some(k) => k,
                None => {
                    let k = st.close_at_or_before(m.start).flatten();
                    // Read once: later rows are no longer the market's start.
                    if let Some(l) = st.markets.get_mut(&id) {
                        l.strike = Some(k);
                    }
                    k
                }
            };
            for token in &m.tokens {
                let (line, edge) = self.row(st, &m, strike, token, e);
                let rule = &rules.edge;
                if let Some(x) = edge {
                    if rule.fires(x.abs())
                        && st
                            .cooldowns
                            .admit(Rule::Edge, &token.0, e, rules.cooldown_of(rule))
                    {
                        let message = format!(
                            "{}: market {:.3} vs fair {:.3} (edge {x:+.3})",
                            line.label.as_deref().unwrap_or(&token.0),
                            line.get("market_prob").and_then(num).unwrap_or(f64::NAN),
                            line.get("fair_prob").and_then(num).unwrap_or(f64::NAN),
                        );
                        out.push(alert_line(
                            Rule::Edge,
                            &token.0,
                            (line.window_start, e),
                            x,
                            rule.threshold,
                            message,
                            line.label.clone(),
                        ));
                    }
                }
                out.push(line);
            }
        }
        // Forget what no later window needs.
        st.markets
            .retain(|_, l| l.market.as_ref().is_none_or(|m| m.end > e));
        let held: std::collections::HashSet<&str> = st
            .markets
            .values()
            .filter_map(|l| l.market.as_ref())
            .flat_map(|m| m.tokens.iter().map(|t| t.0.as_str()))
            .collect();
        let forget_before = e.saturating_sub(PROB_MEMORY);
        let stale: Vec<String> = st
            .probs
            .iter()
            .filter(|(a, (t, _))| *t < forget_before && !held.contains(a.as_str()))
            .map(|(a, _)| a.clone())
            .collect();
        for a in stale {
            st.probs.remove(&a);
        }
        let keep_from = e.saturating_sub(ROW_MEMORY);
        let old: Vec<(EventTime, Position)> = st
            .rows
            .range(..(keep_from, Position::default()))
            .map(|(k, _)| *k)
            .collect();
        // The latest row before the hour still gives `c(x)` after a quiet stretch.
        for k in old.iter().take(old.len().saturating_sub(1)) {
            st.rows.remove(k);
        }
        st.cooldowns.forget_before(e);
        out
    }

    fn last_tick(&self, st: &State) -> Option<EventTime> {
        let markets = st
            .markets
            .values()
            .filter_map(|l| l.market.as_ref())
            .map(|m| m.end);
        let returns = st.span.map(|(_, last)| self.returns_until(last));
        markets.chain(returns).max()
    }
}

/// A number cell's value.
fn num(c: &Cell) -> Option<f64> {
    match c {
        Cell::Num(x) => Some(*x),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_is_the_normal_distribution() {
        assert!((phi(0.0) - 0.5).abs() < 1e-15);
        assert!((phi(1.0) - 0.841_344_746_068_542_9).abs() < 1e-12);
        assert!((phi(-1.959_963_984_540_054) - 0.025).abs() < 1e-12);
        assert!(phi(-40.0) >= 0.0 && phi(40.0) <= 1.0);
    }

    #[test]
    fn fair_value_edge_cases() {
        // τ = 0: resolved; a tie resolves Up.
        assert_eq!(fair_up(101.0, 100.0, 0.001, 0.0), Some(1.0));
        assert_eq!(fair_up(100.0, 100.0, 0.001, 0.0), Some(1.0));
        assert_eq!(fair_up(99.0, 100.0, 0.001, 0.0), Some(0.0));
        // σ = 0 before expiry: known unless tied.
        assert_eq!(fair_up(101.0, 100.0, 0.0, 5.0), Some(1.0));
        assert_eq!(fair_up(99.0, 100.0, 0.0, 5.0), Some(0.0));
        assert_eq!(fair_up(100.0, 100.0, 0.0, 5.0), Some(0.5));
        // At the money: ½; above: more.
        assert_eq!(fair_up(100.0, 100.0, 0.001, 5.0), Some(0.5));
        let p = fair_up(100.1, 100.0, 0.001, 4.0).unwrap();
        let expected = phi((1.001f64).ln() / (0.001 * 2.0));
        assert!((p - expected).abs() < 1e-15 && p > 0.5);
    }

    fn at(t: EventTime, close: f64) -> Timed<Record> {
        Timed {
            time: t,
            pos: Position::default(),
            min_end: 0,
            rec: Record {
                underlying: "BTCUSDT".into(),
                input: Input::Row(Some(close)),
            },
        }
    }

    fn updown() -> Updown {
        Updown {
            spec: WindowSpec::new(
                std::time::Duration::from_secs(60),
                std::time::Duration::ZERO,
            )
            .unwrap(),
            rules: Rules::default(),
        }
    }

    #[test]
    fn sigma_needs_ten_returns() {
        let u = updown();
        let mut st = State::default();
        for i in 0..10 {
            u.step(&mut st, &at(i * MINUTE + 1, 100.0 + (i % 3) as f64));
        }
        // Rows in minutes 0..9: returns exist at 2..=10 min: nine of them.
        assert_eq!(st.sigma(10 * MINUTE), None);
        u.step(&mut st, &at(10 * MINUTE + 1, 100.0));
        let s = st.sigma(11 * MINUTE).expect("ten returns");
        assert!(s > 0.0);
    }

    #[test]
    fn strike_is_the_latest_row_at_or_before_the_start() {
        let u = updown();
        let mut st = State::default();
        u.step(&mut st, &at(59_000, 100.0));
        u.step(&mut st, &at(60_000, 101.0));
        u.step(&mut st, &at(60_001, 102.0));
        assert_eq!(st.close_at_or_before(60_000), Some(Some(101.0)));
        assert_eq!(
            st.close_before(60_000),
            Some(100.0),
            "c(e) takes rows before e"
        );
        assert_eq!(
            st.close_at_or_before(10),
            None,
            "no row then: missing strike"
        );
    }

    #[test]
    fn rows_cover_every_window_of_a_market_and_down_is_one_minus_up() {
        let u = updown();
        let mut st = State::default();
        for i in 0..30 {
            u.step(
                &mut st,
                &at(i * MINUTE + 30_000, 100.0 + (i % 4) as f64 * 0.1),
            );
        }
        let m = UpDown {
            market_id: "0xm".into(),
            slug: "btc-updown-15m-1200".into(),
            title: "Bitcoin Up or Down".into(),
            start: 20 * MINUTE,
            end: 35 * MINUTE,
            tokens: vec![("U".into(), "Up".into()), ("D".into(), "Down".into())],
        };
        let rec = |input| Timed {
            time: 20 * MINUTE,
            pos: Position::default(),
            min_end: 0,
            rec: Record {
                underlying: "BTCUSDT".into(),
                input,
            },
        };
        u.step(&mut st, &rec(Input::Market(m)));
        u.step(
            &mut st,
            &rec(Input::Prob {
                asset_id: "U".into(),
                prob: Some(0.7),
            }),
        );
        let mut ends = Vec::new();
        let mut after = 0;
        let mut rows = Vec::new();
        while let Some(e) = u.next_tick(&st, after) {
            let lines = u.tick("BTCUSDT", &mut st, e);
            rows.extend(lines.into_iter().filter(|l| l.stream == STREAM));
            ends.push(e);
            after = e;
        }
        let market_ends: Vec<EventTime> = rows
            .iter()
            .filter(|l| l.key == "U")
            .map(|l| l.window_end)
            .collect();
        assert_eq!(
            market_ends,
            (21..=35).map(|m| m * MINUTE).collect::<Vec<_>>(),
            "every window end in (start, end]"
        );
        for pair in rows.chunks(2) {
            let (up, down) = (
                num(pair[0].get("fair_prob").unwrap()).unwrap(),
                num(pair[1].get("fair_prob").unwrap()).unwrap(),
            );
            assert!((up + down - 1.0).abs() < 1e-12);
        }
        let last = rows.iter().rev().find(|l| l.key == "U").unwrap();
        assert_eq!(last.get("tau_min"), Some(&Cell::Num(0.0)));
        assert_eq!(
            last.get("market_prob"),
            Some(&Cell::Num(0.7)),
            "carried across windows"
        );
        assert_eq!(
            rows[0].get("strike"),
            Some(&Cell::Num(100.0 + (19 % 4) as f64 * 0.1))
        );
        assert!(st.markets.is_empty(), "an ended market is forgotten");
    }
}
