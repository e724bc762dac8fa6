//! The cross-market dataflows: crypto spot against the prediction markets on it
//! (`formats.md`, "Cross-market"). No input topic of its own: it reads what the Binance and
//! Polymarket dataflows export (kline rows, outcome-token windows, market metadata) and gives
//! `updown` (the fair value of up/down markets, `updown.rs`) and `alerts` (`alerts.rs`).
//! Its windows are `--window cross=…` (by default the job's).

pub mod alerts;
pub mod updown;

use std::collections::HashMap;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Concat, Filter, Map};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::context::{JobContext, Role};
use crate::result::{Cell, ResultLine};
use crate::time::{EventTime, Position, Timed, WindowSpec};
use crate::window::ordered_windowed;

use super::binance::Kline;
use super::polymarket::metadata::{self, Market as Metadata};
use super::sim::UNDERLYINGS;
use super::{Exports, Input, Market, MarketArgs, Outputs, TopicSpec};
use updown::{Record, UpDown, MINUTE};

/// The cross-market dataflows.
pub(crate) struct Cross;

impl Market for Cross {
    fn name(&self) -> &'static str {
        "cross"
    }

    fn topics(&self) -> &'static [TopicSpec] {
        &[]
    }

    fn streams(&self) -> &'static [&'static str] {
        &[updown::STREAM, alerts::STREAM]
    }

    fn reads(&self) -> &'static [&'static str] {
        &[crate::dataflows::polymarket::tokens::STREAM]
    }

    fn pages(&self) -> &'static [crate::metrics::Page] {
        &[crate::metrics::Page {
            path: "/market",
            title: "market view",
            html: include_str!("market.html"),
        }]
    }

    fn build<'s>(
        &self,
        scope: timely::dataflow::Scope<'s, EventTime>,
        _inputs: &[Input],
        spec: WindowSpec,
        settings: &MarketArgs,
        exports: &mut Exports<'s>,
        ctx: &JobContext,
    ) -> Outputs<'s> {
        let rules = settings.alerts.clone().unwrap_or_default();
        // The registry builds the markets exporting these first (see `MARKETS`).
        let (Some(klines), Some(tokens), Some(markets)) = (
            exports.klines.clone(),
            exports.tokens.clone(),
            exports.markets.clone(),
        ) else {
            unreachable!("the cross-market dataflows are built after binance and polymarket")
        };
        let records = underlying_rows(klines)
            .concat(token_probs(tokens.clone()))
            .concat(updown_markets(markets));
        let state = ordered_windowed(
            updown::Updown {
                spec,
                rules: rules.clone(),
            },
            records,
            spec,
            // A state keeps only what its later windows need (pruned as it goes).
            EventTime::MAX,
            ctx.operator(Role::Window, updown::STREAM),
        );
        let rows = state.clone().filter(|l| l.stream == updown::STREAM);
        let state_alerts = state.filter(|l| l.stream == alerts::STREAM);
        let candidates = {
            let rules = rules.clone();
            tokens.flat_map(move |l| alerts::token_candidates(&rules, &l))
        };
        // Each candidate in a window of its own, ending where its token window ends.
        let one_ms = WindowSpec::new(
            std::time::Duration::from_millis(1),
            std::time::Duration::ZERO,
        )
        .expect("1 ms is a valid window");
        let ttl = [&rules.prob_jump, &rules.book_mismatch]
            .iter()
            .map(|r| rules.cooldown_of(r))
            .max()
            .unwrap_or(1)
            .max(1);
        let token_alerts = ordered_windowed(
            alerts::TokenAlerts { rules },
            candidates,
            one_ms,
            ttl,
            ctx.operator(Role::Window, alerts::STREAM),
        );
        Outputs {
            results: vec![
                (updown::STREAM, rows),
                (alerts::STREAM, state_alerts.concat(token_alerts)),
            ],
            // Every record here was checked where it was read.
            dead: timely::dataflow::operators::generic::operator::empty(scope),
        }
    }
}

/// The kline rows of the underlyings that a minute close or a strike can be: per batch, the
/// latest row of each symbol and minute, and the latest row at the minute's first millisecond.
fn underlying_rows<'s>(
    klines: StreamVec<'s, EventTime, Timed<Kline>>,
) -> StreamVec<'s, EventTime, Timed<Record>> {
    klines.unary(Pipeline, "UnderlyingRows", move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                // (symbol, minute, at its first ms) → the latest row.
                let mut latest: HashMap<(&str, EventTime, bool), &Timed<Kline>> = HashMap::new();
                let batches: Vec<Vec<Timed<Kline>>> = data.map(std::mem::take).collect();
                for r in batches.iter().flatten() {
                    let symbol = r.rec.symbol.as_str();
                    if !UNDERLYINGS.iter().any(|u| u.0 == symbol) {
                        continue;
                    }
                    let minute = r.time - r.time % MINUTE;
                    for exact in [false, true] {
                        if exact && r.time != minute {
                            continue;
                        }
                        let e = latest.entry((symbol, minute, exact)).or_insert(r);
                        if (r.time, r.pos) > (e.time, e.pos) {
                            *e = r;
                        }
                    }
                }
                let mut chosen: Vec<&Timed<Kline>> = latest.into_values().collect();
                chosen.sort_by_key(|r| (r.time, r.pos));
                chosen.dedup_by_key(|r| (r.time, r.pos));
                let mut session = output.session(&cap);
                for r in chosen {
                    session.give(Timed {
                        time: r.time,
                        pos: r.pos,
                        min_end: 0,
                        rec: Record {
                            underlying: r.rec.symbol.to_string(),
                            input: updown::Input::Row(r.rec.price),
                        },
                    });
                }
            });
        }
    })
}

/// Each token window's latest `prob` (from windows with observations), at the window's end −
/// 1, sent to every underlying: which one a token belongs to is known there, from metadata.
fn token_probs<'s>(
    tokens: StreamVec<'s, EventTime, ResultLine>,
) -> StreamVec<'s, EventTime, Timed<Record>> {
    tokens.flat_map(|l| {
        let observed = matches!(l.get("updates"), Some(Cell::Int(n)) if *n > 0);
        let prob = match l.get("current_prob") {
            Some(Cell::Num(x)) => Some(*x),
            _ => None,
        };
        let time = l.window_end - 1;
        let asset_id = l.key;
        UNDERLYINGS
            .iter()
            .filter(move |_| observed)
            .map(move |u| Timed {
                time,
                pos: Position::default(),
                min_end: 0,
                rec: Record {
                    underlying: u.0.to_string(),
                    input: updown::Input::Prob {
                        asset_id: asset_id.clone(),
                        prob,
                    },
                },
            })
    })
}

/// The up/down markets among metadata versions, each for its underlying. A version applies from
/// its event time (the market's start), or from when it arrived if that was later: windows
/// already final cannot gain rows.
fn updown_markets<'s>(
    markets: StreamVec<'s, EventTime, Timed<Metadata>>,
) -> StreamVec<'s, EventTime, Timed<Record>> {
    markets.unary(Pipeline, "UpDownMarkets", move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let stamp = cap.least().copied().unwrap_or_default();
                let mut session = output.session(&cap);
                for m in data.flat_map(std::mem::take) {
                    let (Some(u), Some((start, length))) = (
                        metadata::underlying(&m.rec.slug),
                        metadata::updown_span(&m.rec.slug),
                    ) else {
                        continue;
                    };
                    let rec = UpDown {
                        market_id: m.rec.market.clone(),
                        slug: m.rec.slug.clone(),
                        title: m.rec.title.clone(),
                        start,
                        end: start.saturating_add(length),
                        tokens: m.rec.tokens.clone(),
                    };
                    session.give(Timed {
                        time: m.time.max(stamp),
                        pos: m.pos,
                        min_end: 0,
                        rec: Record {
                            underlying: u.to_string(),
                            input: updown::Input::Market(rec),
                        },
                    });
                }
            });
        }
    })
}
