//! ▶ A result leaves: typed window results and dead letters, as every sink receives them. Each
//! sink renders them its own way (JSON lines, Kafka values, console tables, `/status`); nothing
//! is rendered to a string and parsed back.

use std::borrow::Cow;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::time::EventTime;

/// Names of streams and columns: static where the dataflows declare them, owned once a result
/// crossed a process boundary.
pub type Name = Cow<'static, str>;

/// One value of a result column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    /// No value (JSON `null`): an aggregate over no values, or one that overflowed.
    Null,
    /// A count.
    Int(u64),
    /// A finite number (never NaN or infinite: see [`Cell::num`]).
    Num(f64),
    /// A text.
    Text(String),
    /// No value in a text column (JSON `null`; typed outputs keep the column's type).
    NoText,
}

impl Cell {
    /// A number, or `Null` for none or for a non-finite value: no output ever holds NaN or
    /// Infinity.
    pub fn num(x: Option<f64>) -> Self {
        match x {
            Some(x) if x.is_finite() => Cell::Num(x),
            _ => Cell::Null,
        }
    }
}

impl From<Option<f64>> for Cell {
    fn from(x: Option<f64>) -> Self {
        Cell::num(x)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Self {
        Cell::Int(n)
    }
}

impl From<Option<String>> for Cell {
    fn from(s: Option<String>) -> Self {
        s.map_or(Cell::NoText, Cell::Text)
    }
}

/// What a window result is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The running aggregate of a window that is still open (every `--trigger`).
    Update,
    /// The result once the watermark reaches the window's end; exactly once per window and key.
    Final,
    /// A final result corrected by a record that arrived within the allowed lateness.
    Correction,
}

impl Kind {
    /// The name written in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Update => "update",
            Kind::Final => "final",
            Kind::Correction => "correction",
        }
    }
}

/// One result of one window and key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    /// Output stream name: the file name and table title.
    pub stream: Name,
    /// Window start (ms).
    pub window_start: EventTime,
    /// Window end (ms, exclusive).
    pub window_end: EventTime,
    /// The name of the key column, as the dataflow declares it.
    pub key_column: Name,
    /// The grouping key.
    pub key: String,
    /// The serving-layer row key (`TYPE#ID#reverse-end`), used as the Kafka message key.
    pub row_key: String,
    /// The metrics, in column order.
    pub columns: Vec<(Name, Cell)>,
    /// Wall-clock time (µs since the epoch) at which the watermark passed the window end, as the
    /// window operator saw it: the start of the emit latency (final results only).
    pub final_at_us: u64,
    /// Update, final or correction.
    pub kind: Kind,
    /// Revision of this (window, key): 1 for the first result, one more for each later one.
    pub revision: u32,
    /// For a correction, the revision it replaces.
    pub replaces: Option<u32>,
    /// A human name for the key (a market's title), shown by the console and the status page
    /// in place of the key; not part of the result's columns.
    pub label: Option<String>,
}

impl ResultLine {
    /// A final result (revision 1) of `stream` for `key` (in column `key_column`) in `window`,
    /// whose serving-layer row key is `TYPE#ID#reverse-end` with `row` = (TYPE, ID).
    pub fn new(
        stream: &'static str,
        key_column: &'static str,
        key: &str,
        row: (&str, &str),
        window: (EventTime, EventTime),
        columns: Vec<(&'static str, Cell)>,
    ) -> Self {
        ResultLine {
            stream: Cow::Borrowed(stream),
            window_start: window.0,
            window_end: window.1,
            key_column: Cow::Borrowed(key_column),
            key: key.to_string(),
            row_key: row_key(row.0, row.1, window.1),
            columns: columns
                .into_iter()
                .map(|(n, c)| (Cow::Borrowed(n), c))
                .collect(),
            final_at_us: 0,
            kind: Kind::Final,
            revision: 1,
            replaces: None,
            label: None,
        }
    }

    /// The same result as `kind`, revision `revision` (replacing `replaces`).
    pub fn tagged(mut self, kind: Kind, revision: u32, replaces: Option<u32>) -> Self {
        self.kind = kind;
        self.revision = revision;
        self.replaces = replaces;
        self
    }

    /// A copy without the wall-clock bookkeeping (`final_at_us`), as sinks that stage rows
    /// on disk keep it: a replay stages the same row.
    pub fn for_replay(&self) -> Self {
        ResultLine {
            final_at_us: 0,
            ..self.clone()
        }
    }

    /// The value of column `name`, if the result has it.
    pub fn get(&self, name: &str) -> Option<&Cell> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// The result as one JSON object: `window_start`, `window_end`, the key, the metrics,
    /// `kind`, `revision` (and `replaces`), in that order.
    pub fn to_json(&self) -> String {
        // Strings, integers, finite numbers and nulls only: serializing cannot fail.
        serde_json::to_string(&Json(self)).unwrap()
    }

    /// [`to_json`](Self::to_json) as a JSON value (for documents that embed results).
    pub fn to_json_value(&self) -> serde_json::Value {
        // As above: cannot fail.
        serde_json::to_value(Json(self)).unwrap()
    }
}

/// The JSON rendering of a [`ResultLine`].
struct Json<'a>(&'a ResultLine);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let l = self.0;
        let mut m = s.serialize_map(Some(l.columns.len() + 6))?;
        m.serialize_entry("window_start", &l.window_start)?;
        m.serialize_entry("window_end", &l.window_end)?;
        m.serialize_entry(l.key_column.as_ref(), &l.key)?;
        for (name, cell) in &l.columns {
            match cell {
                Cell::Null | Cell::NoText => m.serialize_entry(name.as_ref(), &())?,
                Cell::Int(n) => m.serialize_entry(name.as_ref(), n)?,
                Cell::Num(x) => m.serialize_entry(name.as_ref(), x)?,
                Cell::Text(t) => m.serialize_entry(name.as_ref(), t)?,
            }
        }
        m.serialize_entry("kind", l.kind.as_str())?;
        m.serialize_entry("revision", &l.revision)?;
        if let Some(r) = l.replaces {
            m.serialize_entry("replaces", &r)?;
        }
        m.end()
    }
}

/// Serving-layer row key: `TYPE#ID#(9999999999999 − window_end)`, newest window first.
pub(crate) fn row_key(kind: &str, id: &str, window_end: EventTime) -> String {
    format!(
        "{kind}#{id}#{:013}",
        9_999_999_999_999u64.saturating_sub(window_end)
    )
}

/// Where a dead-lettered record was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Place {
    /// A Kafka partition and offset.
    Kafka {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: u64,
    },
    /// A file and its 1-based line.
    File {
        /// The file as given.
        file: String,
        /// Line number.
        line: u64,
    },
    /// A generated stream and the message's sequence number.
    Generated {
        /// The stream's name.
        stream: String,
        /// Sequence number.
        seq: u64,
    },
}

/// A malformed or late record, with where it was read and why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The input topic.
    pub topic: String,
    /// Where in it.
    pub place: Place,
    /// The record's position within its message.
    pub index: u32,
    /// Short, stable reason (`late`, `invalid JSON`, …), also the counter's name.
    pub reason: String,
    /// Details (a parser's message, the watermark that made it late).
    pub detail: String,
    /// The record's event time, when it had a usable one.
    pub event_time: Option<EventTime>,
    /// The raw value (or the offending part of it), cut to [`DEAD_LETTER_RAW_MAX`] bytes.
    pub raw: String,
}

/// Longest raw value kept in a dead-letter record.
pub(crate) const DEAD_LETTER_RAW_MAX: usize = 2048;

/// The JSON shape of a dead letter (`dead_letter.jsonl`, Kafka values).
#[derive(Serialize)]
struct DeadLetterJson<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    index: u32,
    reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_time: Option<EventTime>,
    raw: &'a str,
}

/// The type a typed output (a Parquet column, a SQL column) gives a result column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// Text wherever a value is text.
    Text,
    /// Counts.
    Int,
    /// Every other column, including one of nulls only.
    Float,
}

impl ColumnKind {
    /// The kind of a column holding `cells`.
    pub fn of<'a>(cells: impl IntoIterator<Item = &'a Cell>) -> Self {
        let mut kind = ColumnKind::Float;
        for c in cells {
            match c {
                Cell::Text(_) | Cell::NoText => return ColumnKind::Text,
                Cell::Int(_) => kind = ColumnKind::Int,
                Cell::Null | Cell::Num(_) => {}
            }
        }
        kind
    }
}

impl DeadLetter {
    /// Where the record was read, as a JSON object (`partition`/`offset`, `file`/`line` or
    /// `stream`/`seq`): the `position` column of typed outputs.
    pub fn position_json(&self) -> String {
        let mut v: serde_json::Value = serde_json::from_str(&self.to_json()).unwrap_or_default();
        if let serde_json::Value::Object(o) = &mut v {
            for k in ["topic", "index", "reason", "detail", "event_time", "raw"] {
                o.remove(k);
            }
        }
        v.to_string()
    }

    /// One JSON object (no newline).
    pub fn to_json(&self) -> String {
        let mut d = DeadLetterJson {
            topic: &self.topic,
            partition: None,
            offset: None,
            file: None,
            line: None,
            stream: None,
            seq: None,
            index: self.index,
            reason: &self.reason,
            detail: &self.detail,
            event_time: self.event_time,
            raw: &self.raw,
        };
        match &self.place {
            Place::Kafka { partition, offset } => {
                (d.partition, d.offset) = (Some(*partition), Some(*offset))
            }
            Place::File { file, line } => (d.file, d.line) = (Some(file.as_str()), Some(*line)),
            Place::Generated { stream, seq } => {
                (d.stream, d.seq) = (Some(stream.as_str()), Some(*seq))
            }
        }
        // A struct of strings and integers: serializing cannot fail.
        serde_json::to_string(&d).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_keys_sort_newest_first() {
        let a = row_key("T", "K", 120_000);
        let b = row_key("T", "K", 60_000);
        assert_eq!(a, "T#K#9999999879999");
        assert!(a < b);
    }

    #[test]
    fn json_keeps_the_column_order_and_never_holds_nan() {
        let l = ResultLine::new(
            "s",
            "key",
            "K",
            ("T", "K"),
            (0, 60_000),
            vec![
                ("n", Cell::Int(2)),
                ("x", Cell::num(Some(f64::NAN))),
                ("y", Cell::num(Some(0.5))),
            ],
        )
        .tagged(Kind::Correction, 2, Some(1));
        assert_eq!(
            l.to_json(),
            r#"{"window_start":0,"window_end":60000,"key":"K","n":2,"x":null,"y":0.5,"kind":"correction","revision":2,"replaces":1}"#
        );
    }
}
