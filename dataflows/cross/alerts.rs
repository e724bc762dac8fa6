//! Alerts on anomalous market conditions (`alerts`; `formats.md`, "Cross-market"): the rules,
//! their settings (`--alerts FILE`, TOML or YAML), the cooldown, the rendering of an alert, and
//! the rules read from outcome-token windows (`prob_jump`, `book_mismatch`). The rules read
//! from an underlying's state (`return_zscore`, `edge`) fire in `updown.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::result::{Cell, ResultLine};
use crate::time::{EventTime, Position, Timed};
use crate::window::OrderedAggregate;

/// The stream's name.
pub const STREAM: &str = "alerts";

/// The alert rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rule {
    /// An underlying's 1-minute return against its last hour's volatility.
    ReturnZscore,
    /// A token's probability range within one window.
    ProbJump,
    /// An up/down token's market probability against its fair value.
    Edge,
    /// A token's book disagreed with the venue's reported best prices (a missed delta).
    BookMismatch,
}

impl Rule {
    /// The name in outputs and rules files.
    pub fn name(self) -> &'static str {
        match self {
            Rule::ReturnZscore => "return_zscore",
            Rule::ProbJump => "prob_jump",
            Rule::Edge => "edge",
            Rule::BookMismatch => "book_mismatch",
        }
    }
}

/// One rule's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSettings {
    /// Off: the rule never fires.
    pub enabled: bool,
    /// The value at which it fires (`book_mismatch`: fires above it).
    pub threshold: f64,
    /// Its own cooldown (ms), else the rules' one.
    pub cooldown: Option<EventTime>,
    /// Fires when the value exceeds the threshold rather than reaching it.
    strict: bool,
}

/// One rule as a rules file gives it: what is not given keeps its default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenRule {
    enabled: Option<bool>,
    threshold: Option<f64>,
    #[serde(default, deserialize_with = "opt_duration")]
    cooldown: Option<EventTime>,
}

/// A rules file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenRules {
    #[serde(default, deserialize_with = "opt_duration")]
    cooldown: Option<EventTime>,
    return_zscore: Option<GivenRule>,
    prob_jump: Option<GivenRule>,
    edge: Option<GivenRule>,
    book_mismatch: Option<GivenRule>,
}

/// A duration in a rules file: `"5m"`, `"90s"`, or a number of seconds.
fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<EventTime>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        Seconds(u64),
    }
    match Given::deserialize(d)? {
        Given::Seconds(s) => Ok(Some(s.saturating_mul(1000))),
        Given::Text(t) => crate::time::parse_duration(&t)
            .map(|d| Some(d.as_millis().min(u128::from(u64::MAX)) as u64))
            .map_err(|e| serde::de::Error::custom(format!("{t:?} is not a duration: {e}"))),
    }
}

impl RuleSettings {
    fn new(threshold: f64, strict: bool) -> Self {
        Self {
            enabled: true,
            threshold,
            cooldown: None,
            strict,
        }
    }

    /// Whether `value` fires the rule.
    pub fn fires(&self, value: f64) -> bool {
        self.enabled
            && value.is_finite()
            && if self.strict {
                value > self.threshold
            } else {
                value >= self.threshold
            }
    }
}

/// Every rule's settings: the contract's defaults, or a rules file.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// The same (rule, key) fires at most once per this much event time (ms).
    pub cooldown: EventTime,
    /// `|r(e)| / sigma(e − 1 min) ≥ threshold`.
    pub return_zscore: RuleSettings,
    /// `max_prob − min_prob ≥ threshold` in a token window.
    pub prob_jump: RuleSettings,
    /// `|edge| ≥ threshold` for an up/down token.
    pub edge: RuleSettings,
    /// `book_mismatches > threshold` in a token window.
    pub book_mismatch: RuleSettings,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            cooldown: 5 * 60_000,
            return_zscore: RuleSettings::new(4.0, false),
            prob_jump: RuleSettings::new(0.15, false),
            edge: RuleSettings::new(0.2, false),
            book_mismatch: RuleSettings::new(0.0, true),
        }
    }
}

impl Rules {
    /// Reads a rules file: TOML (`.toml`) or YAML (`.yaml`, `.yml`); rules and fields not given
    /// keep their defaults. Every mistake is one message naming the file.
    pub fn from_file(path: &str) -> Result<Rules, String> {
        let p = Path::new(path);
        let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {path}: {e}"))?;
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let given: Option<GivenRules> = match ext {
            "toml" => toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?,
            "yaml" | "yml" => serde_yaml::from_str(&text).map_err(|e| format!("{path}: {e}"))?,
            _ => return Err(format!("{path}: a rules file is .toml, .yaml or .yml")),
        };
        let mut rules = Rules::default();
        if let Some(g) = given {
            rules.cooldown = g.cooldown.unwrap_or(rules.cooldown);
            for (r, g) in [
                (&mut rules.return_zscore, g.return_zscore),
                (&mut rules.prob_jump, g.prob_jump),
                (&mut rules.edge, g.edge),
                (&mut rules.book_mismatch, g.book_mismatch),
            ] {
                if let Some(g) = g {
                    r.enabled = g.enabled.unwrap_or(r.enabled);
                    r.threshold = g.threshold.unwrap_or(r.threshold);
                    r.cooldown = g.cooldown.or(r.cooldown);
                }
            }
        }
        for (name, r) in rules.all() {
            if !r.threshold.is_finite() || r.threshold < 0.0 {
                return Err(format!("{path}: {name}.threshold must be a number ≥ 0"));
            }
        }
        Ok(rules)
    }

    fn all(&self) -> [(&'static str, &RuleSettings); 4] {
        [
            ("return_zscore", &self.return_zscore),
            ("prob_jump", &self.prob_jump),
            ("edge", &self.edge),
            ("book_mismatch", &self.book_mismatch),
        ]
    }

    /// A rule's cooldown (ms).
    pub fn cooldown_of(&self, rule: &RuleSettings) -> EventTime {
        rule.cooldown.unwrap_or(self.cooldown)
    }
}

/// When each (rule, key) last fired: the window end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cooldowns(BTreeMap<(Rule, String), (EventTime, EventTime)>);

impl Cooldowns {
    /// Whether (rule, key) may fire at window end `end` (then it is recorded as fired).
    pub fn admit(&mut self, rule: Rule, key: &str, end: EventTime, cooldown: EventTime) -> bool {
        let k = (rule, key.to_string());
        if let Some((last, _)) = self.0.get(&k) {
            if end < last.saturating_add(cooldown) {
                return false;
            }
        }
        self.0.insert(k, (end, end.saturating_add(cooldown)));
        true
    }

    /// Forgets cooldowns over before `t`.
    pub fn forget_before(&mut self, t: EventTime) {
        self.0.retain(|_, (_, until)| *until > t);
    }
}

/// `HH:MM` (UTC) of a time.
pub fn clock(t: EventTime) -> String {
    let s = crate::time::format_ms(t);
    s.get(11..16).unwrap_or(&s).to_string()
}

/// One alert: `rule` fired for `key` in `window` with `value` against `threshold`.
pub fn alert_line(
    rule: Rule,
    key: &str,
    window: (EventTime, EventTime),
    value: f64,
    threshold: f64,
    message: String,
    label: Option<String>,
) -> ResultLine {
    let mut line = ResultLine::new(
        STREAM,
        "key",
        key,
        ("AL", &format!("{}#{}", rule.name(), key)),
        window,
        vec![
            ("rule", Cell::Text(rule.name().to_string())),
            ("value", Cell::num(Some(value))),
            ("threshold", Cell::num(Some(threshold))),
            ("message", Cell::Text(message)),
        ],
    );
    line.label = label;
    line
}

/// A token window's value for one rule: a candidate alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// `rule/asset_id`: the cooldown's key.
    pub id: String,
    /// The rule.
    pub rule: Rule,
    /// The token.
    pub asset_id: String,
    /// The token window.
    pub window: (EventTime, EventTime),
    /// The rule's value (`max_prob − min_prob`, `book_mismatches`).
    pub value: f64,
    /// What the message says.
    pub message: String,
}

/// A number or count cell.
fn value(c: Option<&Cell>) -> Option<f64> {
    match c? {
        Cell::Num(x) => Some(*x),
        Cell::Int(n) => Some(*n as f64),
        _ => None,
    }
}

/// The candidates of one `polymarket_tokens` window result (before metadata), at its window
/// end − 1: the time they are applied at, in the order of the results' window ends.
pub fn token_candidates(rules: &Rules, line: &ResultLine) -> Vec<Timed<Candidate>> {
    let mut out = Vec::new();
    let short = |s: &str| -> String {
        let n = s.chars().count();
        if n > 12 {
            let tail: String = s.chars().skip(n - 4).collect();
            format!("{}…{tail}", s.chars().take(6).collect::<String>())
        } else {
            s.to_string()
        }
    };
    let mut push = |rule: Rule, v: f64, message: String| {
        out.push(Timed {
            time: line.window_end - 1,
            pos: Position::default(),
            min_end: 0,
            rec: Candidate {
                id: format!("{}/{}", rule.name(), line.key),
                rule,
                asset_id: line.key.clone(),
                window: (line.window_start, line.window_end),
                value: v,
                message,
            },
        })
    };
    let (lo, hi) = (value(line.get("min_prob")), value(line.get("max_prob")));
    if let (Some(lo), Some(hi)) = (lo, hi) {
        if rules.prob_jump.fires(hi - lo) {
            let m = format!(
                "token {} moved {:.3} within the window ({lo:.3} – {hi:.3})",
                short(&line.key),
                hi - lo
            );
            push(Rule::ProbJump, hi - lo, m);
        }
    }
    if let Some(n) = value(line.get("book_mismatches")) {
        if rules.book_mismatch.fires(n) {
            let m = format!(
                "token {}: {n} book update(s) disagreed with the venue's best prices (missed deltas)",
                short(&line.key)
            );
            push(Rule::BookMismatch, n, m);
        }
    }
    out
}

/// The `prob_jump` and `book_mismatch` alerts: candidates per (rule, token) in window-end
/// order, each firing unless the same (rule, token) fired less than a cooldown before.
/// Run in 1 ms windows: a candidate's window ends at its token window's end.
pub struct TokenAlerts {
    /// Thresholds and cooldowns.
    pub rules: Rules,
}

impl OrderedAggregate for TokenAlerts {
    type Record = Candidate;
    /// The last firing's window end.
    type State = Option<EventTime>;
    type Obs = bool;
    type Acc = Option<Candidate>;
    const STREAM: &'static str = STREAM;

    fn key(rec: &Candidate) -> &str {
        &rec.id
    }

    fn step(&self, last: &mut Option<EventTime>, r: &Timed<Candidate>) -> bool {
        let settings = match r.rec.rule {
            Rule::ProbJump => &self.rules.prob_jump,
            _ => &self.rules.book_mismatch,
        };
        let end = r.rec.window.1;
        let cooldown = self.rules.cooldown_of(settings);
        if last.is_some_and(|l| end < l.saturating_add(cooldown)) {
            return false;
        }
        *last = Some(end);
        true
    }

    fn add(&self, acc: &mut Option<Candidate>, r: &Timed<Candidate>, fired: &bool) {
        if *fired {
            *acc = Some(r.rec.clone());
        }
    }

    fn finish(
        &self,
        _key: &str,
        _start: EventTime,
        _end: EventTime,
        acc: &Option<Candidate>,
    ) -> Option<ResultLine> {
        let c = acc.as_ref()?;
        let threshold = match c.rule {
            Rule::ProbJump => self.rules.prob_jump.threshold,
            _ => self.rules.book_mismatch.threshold,
        };
        Some(alert_line(
            c.rule,
            &c.asset_id,
            c.window,
            c.value,
            threshold,
            c.message.clone(),
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_holds_a_rule_and_key_back_for_its_length() {
        let mut c = Cooldowns::default();
        let five = 5 * 60_000;
        assert!(c.admit(Rule::Edge, "A", 60_000, five));
        assert!(
            !c.admit(Rule::Edge, "A", 120_000, five),
            "within the cooldown"
        );
        assert!(c.admit(Rule::Edge, "B", 120_000, five), "another key");
        assert!(c.admit(Rule::ProbJump, "A", 120_000, five), "another rule");
        assert!(!c.admit(Rule::Edge, "A", 359_999, five));
        assert!(c.admit(Rule::Edge, "A", 360_000, five), "a cooldown later");
    }

    #[test]
    fn thresholds_are_reached_or_exceeded() {
        let r = Rules::default();
        assert!(r.prob_jump.fires(0.15) && !r.prob_jump.fires(0.149));
        assert!(r.book_mismatch.fires(1.0) && !r.book_mismatch.fires(0.0));
        assert!(!r.edge.fires(f64::NAN));
    }

    fn write(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("rules-{}-{name}", std::process::id()));
        std::fs::write(&dir, text).unwrap();
        dir.to_string_lossy().into_owned()
    }

    #[test]
    fn rules_files_in_toml_and_yaml() {
        let t = write(
            "a.toml",
            "cooldown = \"10m\"\n[edge]\nthreshold = 0.3\n[prob_jump]\nthreshold = 0.2\nenabled = false\ncooldown = 60\n",
        );
        let r = Rules::from_file(&t).unwrap();
        assert_eq!(r.cooldown, 600_000);
        assert_eq!(r.edge.threshold, 0.3);
        assert!(!r.prob_jump.fires(0.9));
        assert_eq!(r.cooldown_of(&r.prob_jump), 60_000);
        assert_eq!(
            r.return_zscore,
            Rules::default().return_zscore,
            "defaults kept"
        );
        let r = Rules::from_file(&write("i.toml", "[edge]\nenabled = false\n")).unwrap();
        assert_eq!((r.edge.enabled, r.edge.threshold), (false, 0.2));
        let y = write("b.yaml", "book_mismatch:\n  threshold: 2\n");
        let r = Rules::from_file(&y).unwrap();
        assert!(r.book_mismatch.fires(3.0) && !r.book_mismatch.fires(2.0));
        for (name, text, says) in [
            ("c.toml", "[edge]\nthreshhold = 1\n", "unknown field"),
            ("h.toml", "[edg]\nthreshold = 1\n", "unknown field"),
            ("d.yaml", "edge: [1]\n", "edge"),
            ("e.toml", "[edge]\nthreshold = -1\n", "edge.threshold"),
            ("f.json", "{}", ".toml, .yaml or .yml"),
            (
                "g.toml",
                "cooldown = \"soon\"\n",
                "\"soon\" is not a duration",
            ),
        ] {
            let err = Rules::from_file(&write(name, text)).unwrap_err();
            assert!(err.contains(says), "{name}: {err}");
        }
    }
}
