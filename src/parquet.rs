//! ▶ A result leaves for the batch layer: results and dead letters as Parquet files,
//! `DIR/<stream>/date=YYYY-MM-DD/part-<offset>.parquet` (`dead_letter/` too), with a typed
//! Arrow schema (window bounds as UTC timestamps, doubles, int64, strings).
//!
//! Exactly once with checkpoints, and no file ever visible half-written: each stream's rows are
//! first appended to a staging segment (`DIR/_staging/<stream>/<offset>.jsonl`, JSON lines),
//! whose total length is what the checkpoint records, like a JSON-lines output. A file rolls
//! (by rows, staged bytes, event-time span or a new date: from the rows alone, so a replay rolls
//! at the same rows) into a Parquet file waiting in `_staging`, named by the offset of its first
//! row; it becomes visible (an atomic rename into its date folder) once a complete checkpoint
//! covers all its rows. A restart cuts the open segment back to the checkpoint's length,
//! publishes waiting files that checkpoint covers and deletes what it does not; the replay writes
//! the same rows again, so every row is visible exactly once. At the end of the input (not at a
//! stop) the last file rolls; it is published once the final checkpoint is complete (the sink
//! waits for that when it closes; otherwise the next start publishes it). Without checkpoints,
//! a file is published when it rolls.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoints;
use crate::result::{Cell, ColumnKind, DeadLetter, ResultLine};
use crate::sink::ResultSink;
use crate::time::EventTime;

/// When an open file rolls.
#[derive(Clone, Copy, Debug)]
pub struct Roll {
    /// At this many rows.
    pub rows: usize,
    /// At this many staged bytes (JSON, a bound on the file's size).
    pub bytes: u64,
    /// When a row's window ends this long (ms) after the file's first row's.
    pub span_ms: EventTime,
}

/// The name of the dead letters' folder.
const DEAD: &str = "dead_letter";

/// One staged row.
#[derive(Serialize, Deserialize)]
enum Staged {
    Result(ResultLine),
    Dead(DeadLetter),
}

impl Staged {
    /// The row's own UTC date: its window start's, a dead letter's event time's (if it had one).
    fn own_date(&self) -> Option<String> {
        let t = match self {
            Staged::Result(l) => Some(l.window_start),
            Staged::Dead(d) => d.event_time,
        };
        t.map(|t| {
            crate::time::format_ms(t)
                .get(..10)
                .unwrap_or("")
                .to_string()
        })
    }

    /// The `date=` partition of a file starting with this row (a dead letter without an event
    /// time goes with the rows around it, or to the default partition when it comes first).
    fn date(&self) -> String {
        self.own_date()
            .unwrap_or_else(|| "__HIVE_DEFAULT_PARTITION__".into())
    }

    fn window_end(&self) -> EventTime {
        match self {
            Staged::Result(l) => l.window_end,
            Staged::Dead(d) => d.event_time.unwrap_or(0),
        }
    }
}

/// The open file of one stream.
struct Open {
    /// Stream-wide offset (staged bytes) of the open segment's start.
    start: u64,
    /// Bytes staged in it.
    len: u64,
    file: BufWriter<File>,
    rows: Vec<Staged>,
}

/// One stream's files.
struct StreamFiles {
    open: Open,
    /// Rolled files not yet visible: (start, end offset, date).
    waiting: Vec<(u64, u64, String)>,
    /// Checkpoint epochs seen and the staged offset at each.
    marks: VecDeque<(EventTime, u64)>,
}

/// The Parquet sink (`--sink-parquet DIR`).
pub struct ParquetSink {
    dir: PathBuf,
    roll: Roll,
    /// With checkpoints: files wait until a complete checkpoint covers them.
    store: Option<Arc<Checkpoints>>,
    streams: BTreeMap<String, StreamFiles>,
    /// Streams whose input ended.
    ended: usize,
}

fn staging(dir: &Path, stream: &str) -> PathBuf {
    dir.join("_staging").join(stream)
}

fn segment_path(dir: &Path, stream: &str, start: u64) -> PathBuf {
    staging(dir, stream).join(format!("{start:020}.jsonl"))
}

fn waiting_path(dir: &Path, stream: &str, start: u64, date: &str) -> PathBuf {
    staging(dir, stream).join(format!("{start:020}.{date}.parquet"))
}

fn visible_path(dir: &Path, stream: &str, start: u64, date: &str) -> PathBuf {
    dir.join(stream)
        .join(format!("date={date}"))
        .join(format!("part-{start:020}.parquet"))
}

/// Creates (or appends to) a segment file.
fn open_segment(dir: &Path, stream: &str, start: u64) -> anyhow::Result<BufWriter<File>> {
    let path = segment_path(dir, stream, start);
    std::fs::create_dir_all(staging(dir, stream))
        .with_context(|| format!("cannot create {}", staging(dir, stream).display()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 16, f))
}

/// Syncs a folder, so that renames into it are durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

impl ParquetSink {
    /// A sink for a fresh run: the folder's files of these streams (and staging) are replaced.
    pub fn create(
        dir: &Path,
        streams: &[&str],
        roll: Roll,
        store: Option<Arc<Checkpoints>>,
    ) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir.join("_staging"));
        for s in streams.iter().chain(std::iter::once(&DEAD)) {
            let p = dir.join(s);
            if p.exists() {
                std::fs::remove_dir_all(&p)
                    .with_context(|| format!("cannot replace {}", p.display()))?;
            }
        }
        Self::resume(dir, streams, &BTreeMap::new(), roll, store)
    }

    /// Reopens the files of a run resumed from a checkpoint that recorded, per stream, the
    /// staged length `lengths` (a stream without one starts empty).
    pub fn resume(
        dir: &Path,
        streams: &[&str],
        lengths: &BTreeMap<String, u64>,
        roll: Roll,
        store: Option<Arc<Checkpoints>>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        let mut sink = Self {
            dir: dir.to_path_buf(),
            roll,
            store,
            streams: BTreeMap::new(),
            ended: 0,
        };
        for s in streams.iter().chain(std::iter::once(&DEAD)) {
            let len = lengths.get(*s).copied().unwrap_or(0);
            let files = sink.recover(s, len)?;
            sink.streams.insert(s.to_string(), files);
        }
        Ok(sink)
    }

    /// Brings one stream's staging back to the checkpointed length `len`.
    fn recover(&self, stream: &str, len: u64) -> anyhow::Result<StreamFiles> {
        let dir = &self.dir;
        let mut segments: BTreeMap<u64, u64> = BTreeMap::new();
        let mut rolled: BTreeMap<u64, String> = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(staging(dir, stream)) {
            for e in entries {
                let name = e?.file_name().to_string_lossy().into_owned();
                let Some((start, rest)) = name.split_once('.') else {
                    continue;
                };
                let Ok(start) = start.parse::<u64>() else {
                    continue;
                };
                if rest == "jsonl" {
                    let size = std::fs::metadata(segment_path(dir, stream, start))?.len();
                    segments.insert(start, size);
                } else if let Some(date) = rest.strip_suffix(".parquet") {
                    rolled.insert(start, date.to_string());
                } else {
                    // A half-written waiting file of a crashed run.
                    let _ = std::fs::remove_file(staging(dir, stream).join(&name));
                }
            }
        }
        let mut open = None;
        for (&start, &size) in &segments {
            let end = start + size;
            let path = segment_path(dir, stream, start);
            match rolled.get(&start) {
                _ if start > len => std::fs::remove_file(&path)?,
                // Covered by the checkpoint resumed from: it may become visible.
                Some(date) if end <= len => self.publish(stream, start, date)?,
                // Rolled after the checkpoint: its rows are open again.
                Some(_) => open = Some(start),
                // Published before the crash; only its segment was left.
                None if end < len || (end == len && self.visible_any(stream, start)) => {
                    std::fs::remove_file(&path)?
                }
                None => open = Some(start),
            }
        }
        for (start, date) in &rolled {
            if Some(*start) == open || *start > len || !segments.contains_key(start) {
                let _ = std::fs::remove_file(waiting_path(dir, stream, *start, date));
            }
        }
        let start = open.unwrap_or(len);
        let path = segment_path(dir, stream, start);
        let mut rows = Vec::new();
        if open.is_some() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            f.set_len(len - start)
                .with_context(|| format!("cannot cut {} back", path.display()))?;
            for line in BufReader::new(File::open(&path)?).lines() {
                let line = line?;
                rows.push(
                    serde_json::from_str(&line)
                        .with_context(|| format!("{} does not hold staged rows", path.display()))?,
                );
            }
        }
        Ok(StreamFiles {
            open: Open {
                start,
                len: len - start,
                file: open_segment(dir, stream, start)?,
                rows,
            },
            waiting: Vec::new(),
            marks: VecDeque::new(),
        })
    }

    /// Whether a visible file of `stream` starts at `start` (in any date folder).
    fn visible_any(&self, stream: &str, start: u64) -> bool {
        let name = format!("part-{start:020}.parquet");
        std::fs::read_dir(self.dir.join(stream))
            .is_ok_and(|dates| dates.flatten().any(|d| d.path().join(&name).exists()))
    }

    /// Makes a rolled file visible and drops its segment.
    fn publish(&self, stream: &str, start: u64, date: &str) -> anyhow::Result<()> {
        let from = waiting_path(&self.dir, stream, start, date);
        let to = visible_path(&self.dir, stream, start, date);
        let folder = to.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        if from.exists() {
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot publish {}", to.display()))?;
            sync_dir(&folder)?;
        }
        let _ = std::fs::remove_file(segment_path(&self.dir, stream, start));
        Ok(())
    }

    /// Appends one row to `stream`'s open file, rolling it first when the row starts a new one.
    fn append(&mut self, stream: &str, row: Staged) -> anyhow::Result<()> {
        let roll = self.roll;
        let files = self
            .streams
            .get(stream)
            .with_context(|| format!("no Parquet output for stream {stream}"))?;
        let o = &files.open;
        let starts_new = o.rows.first().is_some_and(|first| {
            o.rows.len() >= roll.rows
                || o.len >= roll.bytes
                || row.own_date().is_some_and(|d| d != first.date())
                || row.window_end() >= first.window_end().saturating_add(roll.span_ms)
        });
        if starts_new {
            self.roll(stream)?;
        }
        let mut json = serde_json::to_string(&row)?;
        json.push('\n');
        let files = self.streams.get_mut(stream).expect("checked above");
        files.open.file.write_all(json.as_bytes())?;
        files.open.len += json.len() as u64;
        files.open.rows.push(row);
        Ok(())
    }

    /// Rolls `stream`'s open file into a waiting Parquet file (published at once without
    /// checkpoints) and opens the next segment.
    fn roll(&mut self, stream: &str) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let files = self
            .streams
            .get_mut(stream)
            .expect("every stream has files");
        let Some(first) = files.open.rows.first() else {
            return Ok(());
        };
        let date = first.date();
        let (start, end) = (files.open.start, files.open.start + files.open.len);
        files.open.file.flush()?;
        let batch = batch(&files.open.rows)?;
        let path = waiting_path(&dir, stream, start, &date);
        let tmp = path.with_extension("tmp");
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props))?;
        w.write(&batch)?;
        w.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        files.waiting.push((start, end, date));
        files.open = Open {
            start: end,
            len: 0,
            file: open_segment(&dir, stream, end)?,
            rows: Vec::new(),
        };
        if self.store.is_none() {
            self.publish_covered(stream, u64::MAX)?;
        }
        Ok(())
    }

    /// Publishes `stream`'s waiting files that end at or before `covered`.
    fn publish_covered(&mut self, stream: &str, covered: u64) -> anyhow::Result<()> {
        let files = self
            .streams
            .get_mut(stream)
            .expect("every stream has files");
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut files.waiting)
            .into_iter()
            .partition(|(_, end, _)| *end <= covered);
        files.waiting = rest;
        for (start, _, date) in ready {
            self.publish(stream, start, &date)?;
        }
        Ok(())
    }

    /// Publishes what the latest complete checkpoint covers.
    fn publish_checkpointed(&mut self) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let complete = store.stats.complete_epoch.load(Ordering::Relaxed);
        let names: Vec<String> = self.streams.keys().cloned().collect();
        for s in names {
            let files = self.streams.get_mut(&s).expect("listed above");
            let mut covered = None;
            while files.marks.front().is_some_and(|(e, _)| *e <= complete) {
                covered = files.marks.pop_front().map(|m| m.1);
            }
            if let Some(c) = covered {
                if files.waiting.iter().any(|w| w.1 <= c) {
                    self.publish_covered(&s, c)?;
                }
            }
        }
        Ok(())
    }
}

impl ResultSink for ParquetSink {
    fn name(&self) -> &'static str {
        "parquet"
    }

    fn write(&mut self, _window_end: EventTime, lines: &[ResultLine]) -> anyhow::Result<()> {
        for l in lines {
            self.append(&l.stream, Staged::Result(l.for_replay()))?;
        }
        self.publish_checkpointed()
    }

    fn dead_letters(&mut self, lines: &[DeadLetter]) -> anyhow::Result<()> {
        for d in lines {
            self.append(DEAD, Staged::Dead(d.clone()))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        for f in self.streams.values_mut() {
            f.open.file.flush()?;
        }
        Ok(())
    }

    fn written(
        &mut self,
        stream: &str,
        epoch: EventTime,
    ) -> anyhow::Result<Option<(u64, PathBuf)>> {
        let Some(files) = self.streams.get_mut(stream) else {
            return Ok(None);
        };
        files.open.file.flush()?;
        let at = files.open.start + files.open.len;
        files.marks.push_back((epoch, at));
        let path = segment_path(&self.dir, stream, files.open.start);
        self.publish_checkpointed()?;
        Ok(Some((at, path)))
    }

    fn finish(&mut self, stream: &str) -> anyhow::Result<()> {
        if !self.streams.contains_key(stream) {
            return Ok(());
        }
        self.roll(stream)?;
        self.ended += 1;
        if self.store.is_none() {
            self.tidy(stream);
        }
        Ok(())
    }
}

impl ParquetSink {
    /// Removes what is left of a stream's staging once everything is published.
    fn tidy(&self, stream: &str) {
        let files = &self.streams[stream];
        if files.waiting.is_empty() && files.open.rows.is_empty() {
            let _ = std::fs::remove_file(segment_path(&self.dir, stream, files.open.start));
            let _ = std::fs::remove_dir(staging(&self.dir, stream));
            let _ = std::fs::remove_dir(self.dir.join("_staging"));
        }
    }
}

impl Drop for ParquetSink {
    /// At the end of the input, the last files wait for the checkpoint that covers them (its
    /// parts are being written by now, here and in the other processes): they are published
    /// once it is complete, within half a minute; otherwise the next start publishes them.
    fn drop(&mut self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let began = std::time::Instant::now();
        loop {
            let _ = store.commit();
            if let Err(e) = self.publish_checkpointed() {
                tracing::warn!(error = %format!("{e:#}"), "cannot publish Parquet files");
                return;
            }
            let waiting = self.streams.values().any(|f| !f.waiting.is_empty());
            if !waiting || self.ended < self.streams.len() {
                break;
            }
            if began.elapsed() > std::time::Duration::from_secs(30) {
                tracing::warn!(
                    "Parquet files wait for a complete checkpoint: the next start publishes them"
                );
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if self.ended == self.streams.len() {
            let names: Vec<String> = self.streams.keys().cloned().collect();
            for s in names {
                self.tidy(&s);
            }
        }
    }
}

/// The Arrow type of one result column.
fn column_type(cells: &[&Cell]) -> DataType {
    match ColumnKind::of(cells.iter().copied()) {
        ColumnKind::Text => DataType::Utf8,
        ColumnKind::Int => DataType::Int64,
        ColumnKind::Float => DataType::Float64,
    }
}

/// The rows of one file (all of one stream) as one record batch.
fn batch(rows: &[Staged]) -> anyhow::Result<RecordBatch> {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let ms = |v: Vec<Option<i64>>| TimestampMillisecondArray::from(v).with_timezone("UTC");
    let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let int = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    match rows.first() {
        Some(Staged::Result(first)) => {
            let lines: Vec<&ResultLine> = rows
                .iter()
                .filter_map(|r| match r {
                    Staged::Result(l) => Some(l),
                    Staged::Dead(_) => None,
                })
                .collect();
            let at = |f: &dyn Fn(&ResultLine) -> EventTime| {
                Arc::new(ms(lines.iter().map(|l| Some(f(l) as i64)).collect())) as ArrayRef
            };
            fields.push(Field::new("window_start", ts(), false));
            arrays.push(at(&|l| l.window_start));
            fields.push(Field::new("window_end", ts(), false));
            arrays.push(at(&|l| l.window_end));
            fields.push(Field::new(first.key_column.as_ref(), DataType::Utf8, false));
            arrays.push(text(lines.iter().map(|l| Some(l.key.as_str())).collect()));
            fields.push(Field::new("row_key", DataType::Utf8, false));
            arrays.push(text(
                lines.iter().map(|l| Some(l.row_key.as_str())).collect(),
            ));
            for (i, (name, _)) in first.columns.iter().enumerate() {
                let cells: Vec<&Cell> = lines
                    .iter()
                    .map(|l| l.columns.get(i).map_or(&Cell::Null, |c| &c.1))
                    .collect();
                let kind = column_type(&cells);
                let array: ArrayRef = match kind {
                    DataType::Utf8 => text(
                        cells
                            .iter()
                            .map(|c| match c {
                                Cell::Text(t) => Some(t.as_str()),
                                _ => None,
                            })
                            .collect(),
                    ),
                    DataType::Int64 => int(cells
                        .iter()
                        .map(|c| match c {
                            Cell::Int(n) => i64::try_from(*n).ok(),
                            _ => None,
                        })
                        .collect()),
                    _ => Arc::new(Float64Array::from(
                        cells
                            .iter()
                            .map(|c| match c {
                                Cell::Num(x) => Some(*x),
                                Cell::Int(n) => Some(*n as f64),
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                    )),
                };
                fields.push(Field::new(name.as_ref(), kind, true));
                arrays.push(array);
            }
            fields.push(Field::new("kind", DataType::Utf8, false));
            arrays.push(text(lines.iter().map(|l| Some(l.kind.as_str())).collect()));
            fields.push(Field::new("revision", DataType::Int64, false));
            arrays.push(int(lines
                .iter()
                .map(|l| Some(i64::from(l.revision)))
                .collect()));
            fields.push(Field::new("replaces", DataType::Int64, true));
            arrays.push(int(lines
                .iter()
                .map(|l| l.replaces.map(i64::from))
                .collect()));
        }
        Some(Staged::Dead(_)) => {
            let dead: Vec<&DeadLetter> = rows
                .iter()
                .filter_map(|r| match r {
                    Staged::Dead(d) => Some(d),
                    Staged::Result(_) => None,
                })
                .collect();
            let places: Vec<String> = dead.iter().map(|d| d.position_json()).collect();
            fields.push(Field::new("topic", DataType::Utf8, false));
            arrays.push(text(dead.iter().map(|d| Some(d.topic.as_str())).collect()));
            fields.push(Field::new("position", DataType::Utf8, false));
            arrays.push(text(places.iter().map(|p| Some(p.as_str())).collect()));
            fields.push(Field::new("index", DataType::Int64, false));
            arrays.push(int(dead.iter().map(|d| Some(i64::from(d.index))).collect()));
            fields.push(Field::new("reason", DataType::Utf8, false));
            arrays.push(text(dead.iter().map(|d| Some(d.reason.as_str())).collect()));
            fields.push(Field::new("detail", DataType::Utf8, false));
            arrays.push(text(dead.iter().map(|d| Some(d.detail.as_str())).collect()));
            fields.push(Field::new("event_time", ts(), true));
            arrays.push(Arc::new(ms(dead
                .iter()
                .map(|d| d.event_time.and_then(|t| i64::try_from(t).ok()))
                .collect())));
            fields.push(Field::new("raw", DataType::Utf8, false));
            arrays.push(text(dead.iter().map(|d| Some(d.raw.as_str())).collect()));
        }
        None => anyhow::bail!("an empty Parquet file"),
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}
