//! Market metadata (`polymarket_metadata`): Gamma event snapshots → one version per outcome
//! token (its outcome, the market's slug and title), joined "as of" each token result's window
//! end by the engine's differential as-of join (`src/enrich.rs`). Definitions: `formats.md`,
//! "Metadata".

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::result::{Cell, ResultLine};
use crate::source::{Decoded, Decoder};
use crate::time::{EventTime, Position, Timed};

/// One Gamma event: a market and its outcome tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Market {
    /// The key the event was published under (`btc`).
    pub name: String,
    /// Condition id (`markets[0].conditionId`).
    pub market: String,
    /// `slug`.
    pub slug: String,
    /// `title`.
    pub title: String,
    /// `closed`, when given.
    pub closed: Option<bool>,
    /// `(token id, outcome)`, zipped from `clobTokenIds` and `outcomes`.
    pub tokens: Vec<(String, String)>,
}

/// The start and length (ms) of an up/down market, from its slug
/// (`btc-updown-15m-1790267400`: 15 minutes from that Unix second).
pub fn updown_span(slug: &str) -> Option<(EventTime, EventTime)> {
    let (rest, secs) = slug.rsplit_once('-')?;
    let (rest, length) = rest.rsplit_once('-')?;
    if !rest.ends_with("-updown") && rest != "updown" {
        return None;
    }
    let start = secs
        .parse::<u64>()
        .ok()
        .filter(|_| secs.bytes().all(|b| b.is_ascii_digit()))?
        .checked_mul(1000)?;
    let unit: u64 = match length.as_bytes().last()? {
        b'm' => 60_000,
        b'h' => 3_600_000,
        b'd' => 86_400_000,
        _ => return None,
    };
    let n: u64 = length[..length.len() - 1].parse().ok()?;
    Some((start, n.checked_mul(unit)?))
}

/// The underlying symbol of an up/down market's slug (`btc-…` → `BTCUSDT`).
pub fn underlying(slug: &str) -> Option<&'static str> {
    updown_span(slug)?;
    Some(match slug.split('-').next()? {
        "btc" => "BTCUSDT",
        "eth" => "ETHUSDT",
        "sol" => "SOLUSDT",
        "xrp" => "XRPUSDT",
        _ => return None,
    })
}

/// Decodes `polymarket_metadata` message values; their records are never late (a late version
/// corrects the results it enriches).
#[derive(Clone, Default)]
pub struct MetadataDecoder;

/// A list given as a JSON-encoded string (`"[\"Up\", \"Down\"]"`), or as an array.
fn encoded_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    let parsed;
    let list = match v {
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|e| format!("{field}: not a JSON-encoded list ({e})"))?;
            &parsed
        }
        Some(other) => other,
        None => return Err(format!("missing {field}")),
    };
    let Value::Array(items) = list else {
        return Err(format!("{field}: not a list"));
    };
    items
        .iter()
        .map(|i| match i {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(format!("{field}: every element must be a non-empty string")),
        })
        .collect()
}

/// One event of a snapshot, or why it is not one (reason, detail).
fn market(name: &str, v: &Value) -> Result<Market, (&'static str, String)> {
    let Value::Object(o) = v else {
        return Err(("metadata error", format!("{name}: not an event object")));
    };
    if let Some(err) = o.get("error").or_else(|| o.get("errors")) {
        return Err(("metadata error", format!("{name}: {err}")));
    }
    let text = |f: &str| match o.get(f) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(("incomplete metadata", format!("{name}: missing {f}"))),
    };
    let (slug, title) = (text("slug")?, text("title")?);
    let first = o
        .get("markets")
        .and_then(|m| m.as_array())
        .and_then(|m| m.first())
        .and_then(|m| m.as_object())
        .ok_or(("incomplete metadata", format!("{name}: missing markets[0]")))?;
    let market = match first.get("conditionId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err((
                "incomplete metadata",
                format!("{name}: missing markets[0].conditionId"),
            ))
        }
    };
    let bad = |e: String| ("incomplete metadata", format!("{name}: markets[0].{e}"));
    let outcomes = encoded_list(first.get("outcomes"), "outcomes").map_err(bad)?;
    let ids = encoded_list(first.get("clobTokenIds"), "clobTokenIds").map_err(bad)?;
    if ids.is_empty() || ids.len() != outcomes.len() {
        return Err(bad(format!(
            "clobTokenIds ({}) and outcomes ({}) do not pair up",
            ids.len(),
            outcomes.len()
        )));
    }
    Ok(Market {
        name: name.to_string(),
        market,
        slug,
        title,
        closed: o.get("closed").and_then(Value::as_bool),
        tokens: ids.into_iter().zip(outcomes).collect(),
    })
}

impl Decoder for MetadataDecoder {
    type Record = Market;
    const NEVER_LATE: bool = true;

    fn decode(&mut self, value: &[u8], out: &mut Vec<Decoded<Market>>) {
        self.decode_at(value, None, out)
    }

    fn decode_at(
        &mut self,
        value: &[u8],
        timestamp: Option<EventTime>,
        out: &mut Vec<Decoded<Market>>,
    ) {
        let parsed = std::str::from_utf8(value)
            .map_err(|e| ("invalid UTF-8", e.to_string()))
            .and_then(|t| {
                serde_json::from_str::<Value>(t).map_err(|e| ("invalid JSON", e.to_string()))
            });
        let events = match parsed {
            Ok(Value::Object(o)) if !o.is_empty() => o,
            Ok(Value::Object(_)) => {
                return out.push(Decoded::malformed(0, "empty message", String::new(), None))
            }
            Ok(other) => {
                let what = super::json::kind(&other);
                let detail = format!("expected an object of events, got {what}");
                return out.push(Decoded::malformed(0, "not an object", detail, None));
            }
            Err((reason, detail)) => return out.push(Decoded::malformed(0, reason, detail, None)),
        };
        for (i, (name, v)) in events.iter().enumerate() {
            let index = i as u32;
            let excerpt = || Some(v.to_string());
            match market(name, v) {
                Err((reason, detail)) => {
                    out.push(Decoded::malformed(index, reason, detail, excerpt()))
                }
                Ok(m) => match updown_span(&m.slug).map(|s| s.0).or(timestamp) {
                    Some(time) => out.push(Decoded::Record { index, time, rec: m }),
                    None => out.push(Decoded::malformed(
                        index,
                        "missing event time",
                        format!(
                            "{name}: the slug {:?} encodes no start and the message has no timestamp",
                            m.slug
                        ),
                        excerpt(),
                    )),
                },
            }
        }
    }
}

/// A title short enough for a table: an up/down market's `Bitcoin Up or Down - September 24,
/// 12:30PM-12:45PM ET` reads `BTC Up or Down 12:30PM–12:45PM ET`; other titles stay whole.
pub fn short_title(slug: &str, title: &str) -> String {
    match (
        updown_span(slug),
        slug.split('-').next(),
        title.rsplit_once(", "),
    ) {
        (Some(_), Some(prefix), Some((_, times))) => format!(
            "{} Up or Down {}",
            prefix.to_uppercase(),
            times.replacen('-', "–", 1)
        ),
        _ => title.to_string(),
    }
}

/// A token's metadata as of some time: what a result of that token carries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenMeta {
    /// Event time of the version.
    pub time: EventTime,
    /// Where it was read (ties between versions of one time: the later one wins).
    pub pos: Position,
    /// `Up`, `Down`, …
    pub outcome: String,
    /// The market's slug.
    pub slug: String,
    /// The market's title.
    pub title: String,
}

/// The versions one metadata record gives: one per token.
pub(super) fn versions(m: Timed<Market>) -> impl Iterator<Item = (String, TokenMeta)> {
    let (time, pos) = (m.time, m.pos);
    let Market {
        slug,
        title,
        tokens,
        ..
    } = m.rec;
    tokens.into_iter().map(move |(token, outcome)| {
        let meta = TokenMeta {
            time,
            pos,
            outcome,
            slug: slug.clone(),
            title: title.clone(),
        };
        (token, meta)
    })
}

impl crate::enrich::Version for TokenMeta {
    fn time(&self) -> EventTime {
        self.time
    }

    fn apply(version: Option<&Self>, line: &mut ResultLine) {
        let (outcome, slug, title) = match version {
            Some(v) => (
                Cell::Text(v.outcome.clone()),
                Cell::Text(v.slug.clone()),
                Cell::Text(v.title.clone()),
            ),
            None => (Cell::NoText, Cell::NoText, Cell::NoText),
        };
        line.label = version.map(|v| format!("{} · {}", short_title(&v.slug, &v.title), v.outcome));
        for (name, cell) in line.columns.iter_mut() {
            match name.as_ref() {
                "outcome" => *cell = outcome.clone(),
                "slug" => *cell = slug.clone(),
                "title" => *cell = title.clone(),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"id":"1","slug":"btc-updown-15m-1790267400","title":"Bitcoin Up or Down - September 24, 12:30PM-12:45PM ET","active":true,"closed":false,"markets":[{"conditionId":"0xabc","outcomes":"[\"Up\", \"Down\"]","outcomePrices":"[\"0.5\", \"0.5\"]","clobTokenIds":"[\"111\", \"222\"]"}]}"#;

    fn decode(s: &str, ts: Option<u64>) -> Vec<Decoded<Market>> {
        let mut out = Vec::new();
        MetadataDecoder.decode_at(s.as_bytes(), ts, &mut out);
        out
    }

    #[test]
    fn json_encoded_lists_pair_tokens_with_outcomes() {
        let out = decode(&format!(r#"{{"btc":{EVENT}}}"#), None);
        let Decoded::Record { time, rec, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(*time, 1_790_267_400_000, "event time from the slug");
        assert_eq!(rec.market, "0xabc");
        assert_eq!(
            rec.tokens,
            [("111".into(), "Up".into()), ("222".into(), "Down".into())]
        );
        assert_eq!(underlying(&rec.slug), Some("BTCUSDT"));
        assert_eq!(updown_span(&rec.slug), Some((1_790_267_400_000, 900_000)));
    }

    #[test]
    fn error_objects_are_dead_lettered_and_the_others_apply() {
        let msg = format!(
            r#"{{"btc":{EVENT},"eth":{{"error":"rate limited"}},"sol":{{"slug":"x","title":"t"}},"xrp":5}}"#
        );
        let out = decode(&msg, None);
        assert!(matches!(&out[0], Decoded::Record { .. }));
        let reasons: Vec<String> = out[1..]
            .iter()
            .map(|d| match d {
                Decoded::Malformed { reason, detail, .. } => format!("{reason}: {detail}"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons[0], r#"metadata error: eth: "rate limited""#);
        assert!(reasons[1].starts_with("incomplete metadata: sol: missing markets[0]"));
        assert!(reasons[2].starts_with("metadata error: xrp"));
    }

    #[test]
    fn event_time_from_the_kafka_timestamp_else_malformed() {
        let other = EVENT.replace("btc-updown-15m-1790267400", "will-it-rain");
        let msg = format!(r#"{{"w":{other}}}"#);
        assert!(matches!(
            &decode(&msg, Some(42))[0],
            Decoded::Record { time: 42, .. }
        ));
        assert!(
            matches!(&decode(&msg, None)[0], Decoded::Malformed { reason, .. } if reason == "missing event time")
        );
        for bad in ["[]", "{}", "nope", "{\"btc\":{\"slug\":\"a\"}"] {
            assert!(
                matches!(&decode(bad, None)[0], Decoded::Malformed { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn slugs() {
        assert_eq!(updown_span("eth-updown-1h-60"), Some((60_000, 3_600_000)));
        assert_eq!(updown_span("btc-updown-15m-x"), None);
        assert_eq!(updown_span("btc-up-15m-60"), None);
        assert_eq!(underlying("doge-updown-15m-60"), None);
    }
}
