//! Sinks: where final window results and dead letters go.
//!
//! All results are gathered on worker 0 of process 0 (results are small next to inputs), held
//! until the watermark passes their window end, then written in a stable order (stream, key) to
//! every configured sink: console tables, JSON-lines files. So every final window appears exactly
//! once, whatever the number of workers or processes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::stats::RunStats;
use crate::time::{format_ms, EventTime};
use crate::window::ResultLine;

/// A destination for final window results.
pub trait ResultSink {
    /// Writes the results of windows ending at `window_end`, sorted by (stream, key).
    fn write(&mut self, window_end: EventTime, lines: &[ResultLine]) -> anyhow::Result<()>;
    /// Writes dead-letter lines (JSON objects).
    fn dead_letters(&mut self, _lines: &[String]) -> anyhow::Result<()> {
        Ok(())
    }
    /// Makes everything written so far durable or visible.
    fn flush(&mut self) -> anyhow::Result<()>;
}

/// Builds the sinks; called once, on the worker that writes.
pub type SinkFactory =
    std::sync::Arc<dyn Fn() -> anyhow::Result<Vec<Box<dyn ResultSink>>> + Send + Sync>;

/// What reaches the sinks: a final window result or a dead-letter line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SinkItem {
    /// A final window result.
    Result(ResultLine),
    /// A dead-letter record (one JSON object).
    DeadLetter(String),
}

/// Routes everything to worker 0 and writes it to the sinks made by `factory`. Results are held
/// until the watermark passes their time, so each window end is written as one sorted batch;
/// dead letters are written as they come.
pub fn write_all(items: StreamVec<'_, EventTime, SinkItem>, factory: SinkFactory, stats: RunStats) {
    let mut sinks: Option<Vec<Box<dyn ResultSink>>> = None;
    let mut pending: BTreeMap<EventTime, Vec<ResultLine>> = BTreeMap::new();
    let mut dead: Vec<String> = Vec::new();
    items.sink(
        Exchange::new(|_: &SinkItem| 0),
        "Sinks",
        move |(input, frontier)| {
            input.for_each_stamp(|cap, data| {
                let t = cap.least().copied().unwrap_or_default();
                for batch in data {
                    for item in batch.drain(..) {
                        match item {
                            SinkItem::Result(r) => pending.entry(t).or_default().push(r),
                            SinkItem::DeadLetter(d) => dead.push(d),
                        }
                    }
                }
            });
            let ready = pending
                .first_key_value()
                .is_some_and(|(t, _)| !frontier.less_equal(t));
            if !ready && dead.is_empty() {
                return;
            }
            let sinks = sinks.get_or_insert_with(|| match factory() {
                Ok(s) => s,
                Err(e) => crate::fatal(&format!("cannot open outputs: {e:#}")),
            });
            if !dead.is_empty() {
                for s in sinks.iter_mut() {
                    if let Err(e) = s.dead_letters(&dead) {
                        crate::fatal(&format!("writing dead letters failed: {e:#}"));
                    }
                }
                dead.clear();
            }
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let (t, mut lines) = entry.remove_entry();
                lines.sort_by(|a, b| {
                    (&a.stream, &a.key, a.window_end).cmp(&(&b.stream, &b.key, b.window_end))
                });
                let mut i = 0;
                while i < lines.len() {
                    let n = lines[i..]
                        .iter()
                        .take_while(|l| l.stream == lines[i].stream)
                        .count();
                    stats.add_results(&lines[i].stream, n as u64);
                    i += n;
                }
                for s in sinks.iter_mut() {
                    if let Err(e) = s.write(t, &lines) {
                        crate::fatal(&format!("writing results failed: {e:#}"));
                    }
                }
            }
            for s in sinks.iter_mut() {
                if let Err(e) = s.flush() {
                    crate::fatal(&format!("flushing outputs failed: {e:#}"));
                }
            }
        },
    );
}

/// JSON-lines files in one folder: `<stream>.jsonl` per output stream and `dead_letter.jsonl`.
pub struct JsonlSink {
    dir: PathBuf,
    files: BTreeMap<String, BufWriter<File>>,
}

impl JsonlSink {
    /// Creates (truncating) one file per stream plus the dead-letter file.
    pub fn create(dir: &Path, streams: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        let mut sink = Self {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        };
        for s in streams.iter().chain(std::iter::once(&"dead_letter")) {
            sink.file(s)?;
        }
        Ok(sink)
    }

    fn file(&mut self, stream: &str) -> anyhow::Result<&mut BufWriter<File>> {
        if !self.files.contains_key(stream) {
            let path = self.dir.join(format!("{stream}.jsonl"));
            let f =
                File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            self.files
                .insert(stream.to_string(), BufWriter::with_capacity(1 << 16, f));
        }
        // Inserted just above when missing.
        Ok(self.files.get_mut(stream).unwrap())
    }
}

impl ResultSink for JsonlSink {
    fn write(&mut self, _window_end: EventTime, lines: &[ResultLine]) -> anyhow::Result<()> {
        for l in lines {
            let f = self.file(&l.stream)?;
            f.write_all(l.json.as_bytes())?;
            f.write_all(b"\n")?;
        }
        Ok(())
    }

    fn dead_letters(&mut self, lines: &[String]) -> anyhow::Result<()> {
        let f = self.file("dead_letter")?;
        for l in lines {
            f.write_all(l.as_bytes())?;
            f.write_all(b"\n")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        for f in self.files.values_mut() {
            f.flush()?;
        }
        Ok(())
    }
}

/// Readable tables on standard output, one per stream each time windows finalise.
pub struct ConsoleSink;

impl ResultSink for ConsoleSink {
    fn write(&mut self, window_end: EventTime, lines: &[ResultLine]) -> anyhow::Result<()> {
        let mut out = String::new();
        let mut i = 0;
        while i < lines.len() {
            let stream = &lines[i].stream;
            let j = lines[i..]
                .iter()
                .position(|l| &l.stream != stream)
                .map_or(lines.len(), |n| i + n);
            render_table(
                &mut out,
                stream,
                lines[i].window_start,
                window_end,
                &lines[i..j],
            );
            i = j;
        }
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`speed-layer run | head`) is not an error of the job.
        let _ = stdout.write_all(out.as_bytes());
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

/// Renders results as an aligned text table; the window bounds go in the header, so the
/// columns are the metrics and the key.
fn render_table(
    out: &mut String,
    stream: &str,
    start: EventTime,
    end: EventTime,
    lines: &[ResultLine],
) {
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(&l.json).ok())
        .collect();
    let Some(first) = rows.first() else { return };
    let cols: Vec<&String> = first.keys().filter(|k| !k.starts_with("window_")).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(r.get(*c))).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    out.push_str(&format!(
        "\n{stream} · window {} → {} · {} row{}\n",
        format_ms(start),
        format_ms(end),
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out.push_str(&rule);
    for (i, c) in cols.iter().enumerate() {
        out.push_str(&format!("| {:<w$} ", c, w = widths[i]));
    }
    out.push_str("|\n");
    out.push_str(&rule);
    for r in &cells {
        for (i, v) in r.iter().enumerate() {
            out.push_str(&format!("| {:>w$} ", v, w = widths[i]));
        }
        out.push_str("|\n");
    }
    out.push_str(&rule);
}

fn cell(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "null".into(),
        Some(serde_json::Value::String(s)) if s.len() > 20 => format!("{}…", &s[..18]),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x != 0.0 && (x.abs() >= 1e15 || x.abs() < 1e-4) {
                format!("{x:.4e}")
            } else {
                let s = if x.abs() >= 1e6 {
                    format!("{x:.2}")
                } else {
                    format!("{x:.6}")
                };
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            }
        }
        Some(v) => v.to_string(),
    }
}
