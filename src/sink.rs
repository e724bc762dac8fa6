//! Sinks: where final window results and dead letters go.
//!
//! All results are gathered on worker 0 of process 0 (results are small next to inputs), held
//! until the watermark passes their window end, then written in a stable order (stream, key) to
//! every configured sink: console tables, JSON-lines files. So every final window appears exactly
//! once, whatever the number of workers or processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::checkpoint::Handle;
use crate::context::{JobContext, Role};
use crate::result::{Cell, DeadLetter, Kind, ResultLine};
use crate::time::{format_ms, EventTime};

/// A destination for final window results.
pub trait ResultSink {
    /// Writes the results of windows ending at `window_end`, sorted by (stream, key).
    fn write(&mut self, window_end: EventTime, lines: &[ResultLine]) -> anyhow::Result<()>;
    /// Writes dead-letter lines (JSON objects).
    fn dead_letters(&mut self, _lines: &[DeadLetter]) -> anyhow::Result<()> {
        Ok(())
    }
    /// Makes everything written so far durable or visible.
    fn flush(&mut self) -> anyhow::Result<()>;
    /// The length written so far (handed to the OS) of the file of `stream`, and its path, for
    /// sinks whose output can be cut back to a checkpoint (files); `None` for the others.
    /// Called at each checkpoint `epoch`, once everything stamped before it was written.
    fn written(
        &mut self,
        _stream: &str,
        _epoch: EventTime,
    ) -> anyhow::Result<Option<(u64, PathBuf)>> {
        Ok(None)
    }
    /// The sink's name in checkpoints (sinks with files have one).
    fn name(&self) -> &'static str {
        ""
    }
    /// `stream` ended (the end of the input, not a stop): nothing more comes.
    fn finish(&mut self, _stream: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

/// What a sink receives (`--emit`, `--emit-console`, `--emit-files`, `--emit-kafka`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Final results and their corrections: each settled value of a window.
    Final,
    /// Only the early `update` results of open windows.
    Updates,
    /// Updates, finals and corrections.
    All,
}

impl Emit {
    /// Whether a sink with this selection receives results of `kind`.
    pub fn wants(self, kind: Kind) -> bool {
        match self {
            Emit::Final => kind != Kind::Update,
            Emit::Updates => kind == Kind::Update,
            Emit::All => true,
        }
    }
}

/// Builds the sinks; called once, on the worker that writes.
pub(crate) type SinkFactory =
    std::sync::Arc<dyn Fn() -> anyhow::Result<Vec<(Box<dyn ResultSink>, Emit)>> + Send + Sync>;

/// The sinks of one process, opened on first use by the worker that writes (global worker 0).
type SharedSinks = Rc<RefCell<Option<Vec<(Box<dyn ResultSink>, Emit)>>>>;

/// Runs `f` on every sink (opening them on first use) with the lines that sink wants; `lines`
/// empty means a dead-letter or flush-only call that every sink takes.
fn with_sinks(
    shared: &SharedSinks,
    factory: &SinkFactory,
    lines: &[ResultLine],
    mut f: impl FnMut(&mut dyn ResultSink, &[ResultLine]) -> anyhow::Result<()>,
    what: &str,
) {
    // Held while writing, so a stop on a signal never cuts an output line in half.
    let _writing = crate::runtime::writing();
    let mut guard = shared.borrow_mut();
    let sinks = guard.get_or_insert_with(|| match factory() {
        Ok(s) => s,
        Err(e) => crate::runtime::fatal(&format!("cannot open outputs: {e:#}")),
    });
    let mut wanted = Vec::new();
    for (s, emit) in sinks.iter_mut() {
        let mine: &[ResultLine] = if lines.iter().all(|l| emit.wants(l.kind)) {
            lines
        } else {
            wanted.clear();
            wanted.extend(lines.iter().filter(|l| emit.wants(l.kind)).cloned());
            if wanted.is_empty() {
                continue;
            }
            &wanted
        };
        if let Err(e) = f(s.as_mut(), mine).and_then(|()| s.flush()) {
            crate::runtime::fatal(&format!("{what} failed: {e:#}"));
        }
    }
}

/// What each sink with files wrote of one stream at a checkpoint epoch: its length by sink
/// name, and the files to fsync before the checkpoint records it.
type Written = (BTreeMap<String, u64>, Vec<PathBuf>);

/// Opens the sinks on first use (on the worker that writes) and asks each for the length and
/// path of `stream`'s file at `epoch`.
fn written(shared: &SharedSinks, factory: &SinkFactory, stream: &str, epoch: EventTime) -> Written {
    let mut out: Written = Default::default();
    with_sinks(
        shared,
        factory,
        &[],
        |s, _| {
            if let Some((len, path)) = s.written(stream, epoch)? {
                out.0.insert(s.name().to_string(), len);
                out.1.push(path);
            }
            Ok(())
        },
        "flushing outputs",
    );
    out
}

/// Tells the sinks, once, that `stream` ended when the frontier `lim` shows the end of the
/// input (not a stop).
fn finish_once(
    shared: &SharedSinks,
    factory: &SinkFactory,
    stream: &str,
    lim: EventTime,
    finished: &mut bool,
) {
    if lim == EventTime::MAX && !*finished && !crate::runtime::stopping() {
        *finished = true;
        with_sinks(
            shared,
            factory,
            &[],
            |s, _| s.finish(stream),
            "closing outputs",
        );
    }
}

/// Writes what is held in `pending` (by timely time) once the frontier `lim` passes it, in time
/// order, with `write`. With `ckpt`, at each checkpoint epoch the frontier passes, records the
/// output's length after exactly the batches stamped before it (`len`); the checkpoint writer
/// fsyncs the output before it writes the part.
fn write_settled<X>(
    pending: &mut BTreeMap<EventTime, Vec<X>>,
    lim: EventTime,
    next: &mut EventTime,
    ckpt: Option<(&Handle, usize)>,
    mut write: impl FnMut(EventTime, Vec<X>),
    mut len: impl FnMut(EventTime) -> Written,
) {
    let mut write_below = |pending: &mut BTreeMap<EventTime, Vec<X>>, t: EventTime| {
        while let Some(e) = pending.first_entry() {
            if *e.key() >= t {
                break;
            }
            let (time, items) = e.remove_entry();
            write(time, items);
        }
    };
    if let Some((c, worker)) = ckpt {
        let mut sync = Vec::new();
        let (entries, after) = c.save_epochs(lim, *next, |lo| {
            write_below(pending, lo);
            let (lengths, paths) = len(lo);
            let body = crate::checkpoint::encode(&lengths);
            sync = paths;
            (body, pending.keys().next().map(|s| c.store.after(*s)))
        });
        *next = after;
        if !entries.is_empty() {
            c.write_after_sync(worker, entries, sync);
        }
    }
    write_below(pending, lim);
}

/// Routes results and dead letters to worker 0 and writes them to the sinks made by `factory`,
/// each sink receiving the kinds it selected.
///
/// Each result stream has its own sink operator, so a stream is written as soon as *its*
/// watermark reaches a window end, not when the slowest input's does. Final results,
/// corrections and dead letters are held until then, so each window end is written as one
/// batch sorted by key; updates are written as they come. With `ckpt`, each sink operator
/// records its file's length at every checkpoint epoch (`sink-<stream>`, `sink-dead_letter`).
pub fn write_all<'s>(
    results: Vec<(&'static str, StreamVec<'s, EventTime, ResultLine>)>,
    dead: StreamVec<'s, EventTime, DeadLetter>,
    factory: SinkFactory,
    ctx: &JobContext,
) {
    let shared: SharedSinks = Rc::new(RefCell::new(None));
    let stats = ctx.stats.clone();
    let handle = |name: &str| ctx.operator(Role::Sink, name).ckpt;
    let first_epoch = |h: &Option<Handle>| {
        h.as_ref().map_or(EventTime::MAX, |c| {
            c.store.after(c.store.epoch().unwrap_or(0))
        })
    };
    let worker = dead.scope().index();
    for (name, stream) in results {
        let (shared, factory, stats) = (Rc::clone(&shared), factory.clone(), stats.clone());
        let ckpt = handle(name);
        let mut next = first_epoch(&ckpt);
        let mut pending: BTreeMap<EventTime, Vec<ResultLine>> = BTreeMap::new();
        let mut now: Vec<ResultLine> = Vec::new();
        let mut finished = worker != 0;
        stream.sink(
            Exchange::new(|_: &ResultLine| 0),
            "ResultSink",
            move |(input, frontier)| {
                input.for_each_stamp(|cap, data| {
                    let t = cap.least().copied().unwrap_or_default();
                    for batch in data {
                        for line in batch.drain(..) {
                            // Updates go out at once; finals and corrections wait for the watermark, so a
                            // correction (stamped at or after its window end) always follows its final.
                            if line.kind == Kind::Update {
                                now.push(line);
                            } else {
                                pending.entry(t).or_default().push(line);
                            }
                        }
                    }
                });
                if !now.is_empty() {
                    with_sinks(
                        &shared,
                        &factory,
                        &now,
                        |s, l| s.write(l[0].window_end, l),
                        "writing results",
                    );
                    for l in now.drain(..) {
                        stats.record_result(&l, None);
                    }
                }
                let lim = frontier
                    .frontier()
                    .first()
                    .copied()
                    .unwrap_or(EventTime::MAX);
                let write = |_, mut lines: Vec<ResultLine>| {
                    // Stable: corrections of one key keep their revision order.
                    lines.sort_by(|a, b| {
                        (&a.stream, &a.key, &a.row_key, a.revision)
                            .cmp(&(&b.stream, &b.key, &b.row_key, b.revision))
                    });
                    let end = lines.first().map_or(0, |l| l.window_end);
                    with_sinks(
                        &shared,
                        &factory,
                        &lines,
                        |s, l| s.write(end, l),
                        "writing results",
                    );
                    // Emit latency: from the watermark reaching the window end to the result being flushed.
                    let now_us = crate::window::now_us();
                    for l in &lines {
                        stats.add_results(&l.stream, 1);
                        let latency = (l.kind == Kind::Final)
                            .then(|| now_us.saturating_sub(l.final_at_us) as f64 / 1e6);
                        stats.record_result(l, latency);
                    }
                };
                let len = |epoch| {
                    if worker == 0 {
                        written(&shared, &factory, name, epoch)
                    } else {
                        Written::default()
                    }
                };
                write_settled(
                    &mut pending,
                    lim,
                    &mut next,
                    ckpt.as_ref().map(|c| (c, worker)),
                    write,
                    len,
                );
                finish_once(&shared, &factory, name, lim, &mut finished);
            },
        );
    }
    let ckpt = handle("dead_letter");
    let mut next = first_epoch(&ckpt);
    let mut pending: BTreeMap<EventTime, Vec<DeadLetter>> = BTreeMap::new();
    let mut finished = worker != 0;
    dead.sink(
        Exchange::new(|_: &DeadLetter| 0),
        "DeadLetterSink",
        move |(input, frontier)| {
            input.for_each_stamp(|cap, data| {
                let t = cap.least().copied().unwrap_or_default();
                let held = pending.entry(t).or_default();
                for batch in data {
                    held.append(batch);
                }
            });
            let lim = frontier
                .frontier()
                .first()
                .copied()
                .unwrap_or(EventTime::MAX);
            let write = |_, lines: Vec<DeadLetter>| {
                with_sinks(
                    &shared,
                    &factory,
                    &[],
                    |s, _| s.dead_letters(&lines),
                    "writing dead letters",
                );
            };
            let len = |epoch| {
                if worker == 0 {
                    written(&shared, &factory, "dead_letter", epoch)
                } else {
                    Written::default()
                }
            };
            write_settled(
                &mut pending,
                lim,
                &mut next,
                ckpt.as_ref().map(|c| (c, worker)),
                write,
                len,
            );
            finish_once(&shared, &factory, "dead_letter", lim, &mut finished);
        },
    );
}

/// JSON-lines files in one folder: `<stream>.jsonl` per output stream and `dead_letter.jsonl`.
pub struct JsonlSink {
    dir: PathBuf,
    files: BTreeMap<String, BufWriter<File>>,
}

impl JsonlSink {
    /// Reopens the files of a run resumed from a checkpoint, cut back to the lengths they had
    /// there (what follows is written again by the resumed run); other files are created.
    pub fn resume(
        dir: &Path,
        streams: &[&str],
        lengths: &BTreeMap<String, u64>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        let mut sink = Self {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        };
        for s in streams.iter().chain(std::iter::once(&"dead_letter")) {
            let Some(&len) = lengths.get(*s) else {
                sink.file(s)?;
                continue;
            };
            let path = dir.join(format!("{s}.jsonl"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot reopen {} to resume", path.display()))?;
            let have = f.metadata()?.len();
            anyhow::ensure!(
                have >= len,
                "{} has {have} bytes but the checkpoint says {len} were written: the output was \
                 changed or removed since; restore it or start over with a new --checkpoint folder",
                path.display()
            );
            f.set_len(len)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))?;
            sink.files
                .insert(s.to_string(), BufWriter::with_capacity(1 << 16, f));
        }
        Ok(sink)
    }

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
            f.write_all(l.to_json().as_bytes())?;
            f.write_all(b"\n")?;
        }
        Ok(())
    }

    fn dead_letters(&mut self, lines: &[DeadLetter]) -> anyhow::Result<()> {
        let f = self.file("dead_letter")?;
        for l in lines {
            f.write_all(l.to_json().as_bytes())?;
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

    fn name(&self) -> &'static str {
        "files"
    }

    fn written(
        &mut self,
        stream: &str,
        _epoch: EventTime,
    ) -> anyhow::Result<Option<(u64, PathBuf)>> {
        let path = self.dir.join(format!("{stream}.jsonl"));
        let f = self.file(stream)?;
        f.flush()?;
        Ok(Some((f.get_ref().metadata()?.len(), path)))
    }
}

/// Readable tables on standard output, one per stream each time windows finalise.
pub struct ConsoleSink;

impl ConsoleSink {
    /// The tables for results of windows ending at `window_end` (sorted by stream and key), as
    /// written to the terminal: every cell escaped and cut to 20 characters.
    pub fn render(window_end: EventTime, lines: &[ResultLine]) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < lines.len() {
            let stream = &lines[i].stream;
            let j = lines[i..]
                .iter()
                .position(|l| &l.stream != stream)
                .map_or(lines.len(), |n| i + n);
            if lines[i].get("message").is_some() {
                render_notices(&mut out, stream, &lines[i..j]);
            } else {
                render_table(
                    &mut out,
                    stream,
                    lines[i].window_start,
                    window_end,
                    &lines[i..j],
                );
            }
            i = j;
        }
        out
    }
}

impl ResultSink for ConsoleSink {
    fn write(&mut self, window_end: EventTime, lines: &[ResultLine]) -> anyhow::Result<()> {
        let out = Self::render(window_end, lines);
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

/// Renders results that carry a `message` (alerts) as one line each, marked so they stand out
/// between tables.
fn render_notices(out: &mut String, stream: &str, lines: &[ResultLine]) {
    out.push('\n');
    for l in lines {
        let text = |name: &str| match l.get(name) {
            Some(Cell::Text(t)) => crate::text::printable(t, 200).into_owned(),
            Some(c) => cell(c),
            None => String::new(),
        };
        let end = format_ms(l.window_end);
        let _ = writeln!(
            out,
            "▲ {stream} {} · {} · {}",
            end.get(11..19).unwrap_or(&end),
            text("rule"),
            text("message"),
        );
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
    let Some(first) = lines.first() else { return };
    let corrected = lines.iter().any(|l| l.replaces.is_some());
    let mut table = comfy_table::Table::new();
    table.load_preset(TABLE_STYLE);
    // Text columns beside the key (ids, titles) go to files and Kafka; here the key's label
    // (a market's title) stands for them.
    let shown: Vec<bool> = (0..first.columns.len())
        .map(|i| {
            let cells = || lines.iter().filter_map(|l| l.columns.get(i).map(|c| &c.1));
            let text = cells().any(|c| matches!(c, Cell::Text(_)));
            !(text && cells().all(|c| matches!(c, Cell::Text(_) | Cell::Null | Cell::NoText)))
        })
        .collect();
    let mut header: Vec<&str> = vec![&first.key_column];
    header.extend(
        first
            .columns
            .iter()
            .zip(&shown)
            .filter(|(_, s)| **s)
            .map(|((n, _), _)| n.as_ref()),
    );
    header.extend(["kind", "revision"]);
    if corrected {
        header.push("replaces");
    }
    // Names left, numbers right.
    table.set_header(
        header
            .into_iter()
            .map(|h| comfy_table::Cell::new(h).set_alignment(comfy_table::CellAlignment::Left)),
    );
    for l in lines {
        let key = match &l.label {
            Some(label) => crate::text::printable(label, 48),
            None => crate::text::printable(&l.key, 20),
        };
        let mut row = vec![key.into_owned()];
        row.extend(
            l.columns
                .iter()
                .zip(&shown)
                .filter(|(_, s)| **s)
                .map(|((_, c), _)| cell(c)),
        );
        row.extend([l.kind.as_str().to_string(), l.revision.to_string()]);
        if corrected {
            row.push(l.replaces.map_or(String::new(), |r| r.to_string()));
        }
        table.add_row(row);
    }
    for column in table.column_iter_mut().skip(1) {
        column.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    let _ = write!(
        out,
        "\n{stream} · window {} → {} · {} row{}\n{table}\n",
        format_ms(start),
        format_ms(end),
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    );
}

/// ASCII borders, a rule under the header and none between rows (comfy-table's preset format).
const TABLE_STYLE: &str = "||--+-++|    ++++++";

/// A number as a person reads it: 6 decimals (2 from a million on), trailing zeros dropped,
/// scientific notation for the very large and very small.
fn cell(c: &Cell) -> String {
    match c {
        Cell::Null | Cell::NoText => "null".into(),
        Cell::Text(s) => crate::text::printable(s, 20).into_owned(),
        Cell::Int(n) => n.to_string(),
        Cell::Num(x) => {
            let x = *x;
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
    }
}
