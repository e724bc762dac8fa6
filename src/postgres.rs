//! ▶ A result leaves for the serving layer: PostgreSQL upserts, in place of the original's HBase
//! table `market_live`.
//!
//! The sink never waits for the database. It appends each stream's rows to a spool file on
//! disk (`<spool>/<stream>.jsonl`, one JSON row per line) whose length the checkpoint records,
//! as for a JSON-lines output; a writer thread reads the spools and upserts batches (multi-row
//! `INSERT … ON CONFLICT (row_key) DO UPDATE … WHERE revision is older`), committing with each
//! batch the rows it reached (table `speed_layer_progress`) in the same transaction. A
//! slow or stopped database only makes the spool's backlog grow (on disk, never in memory, never
//! holding other sinks or the sources back); the writer retries with backoff and catches up. A
//! restart cuts the spools back to the checkpoint and replays; rows the database already
//! committed are skipped (the replay gives the same rows), so each row is applied once. At the end of
//! the input the job waits until the backlog is written.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use postgres::types::ToSql;
use serde::{Deserialize, Serialize};

use crate::result::{Cell, ColumnKind, DeadLetter, ResultLine};
use crate::sink::ResultSink;
use crate::stats::RunStats;
use crate::time::EventTime;

/// The dead letters' table.
const DEAD: &str = "dead_letter";
/// Rows per statement (PostgreSQL takes at most 65 535 parameters).
const BATCH_ROWS: usize = 400;

/// One spooled row.
#[derive(Serialize, Deserialize)]
enum Row {
    Result(ResultLine),
    Dead(DeadLetter),
}

/// What the writer reports, shared with the sink (and `/metrics`).
#[derive(Default)]
struct Progress {
    /// Per stream: spooled bytes, and bytes committed to the database.
    spooled: Mutex<BTreeMap<String, (u64, u64)>>,
    /// The database answered the last attempt.
    up: AtomicBool,
    /// Failed attempts so far.
    failures: AtomicU64,
    /// Set when no more rows come: the writer ends once it has written them.
    closing: AtomicBool,
}

impl Progress {
    fn backlog(&self) -> u64 {
        let s = self.spooled.lock().unwrap_or_else(|e| e.into_inner());
        s.values().map(|(a, b)| a.saturating_sub(*b)).sum()
    }
}

/// The PostgreSQL sink (`--sink-postgres URL`).
pub struct PostgresSink {
    spool: PathBuf,
    files: BTreeMap<String, (BufWriter<File>, u64)>,
    progress: Arc<Progress>,
    writer: Option<std::thread::JoinHandle<()>>,
    stats: RunStats,
    /// Streams whose input ended.
    ended: usize,
    /// A temporary spool (no checkpoint): removed once written.
    temporary: bool,
}

impl PostgresSink {
    /// Opens the sink: the spools in `spool` (cut back to `lengths` when resuming, else
    /// emptied), and the writer thread for `url`.
    pub fn open(
        url: &str,
        spool: &Path,
        streams: &[&str],
        lengths: Option<&BTreeMap<String, u64>>,
        temporary: bool,
        stats: RunStats,
    ) -> anyhow::Result<Self> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--sink-postgres: {e}"))?;
        if lengths.is_none() {
            let _ = std::fs::remove_dir_all(spool);
        }
        std::fs::create_dir_all(spool)
            .with_context(|| format!("cannot create the spool {}", spool.display()))?;
        let id_path = spool.join("id");
        let id = match std::fs::read_to_string(&id_path) {
            Ok(id) if lengths.is_some() => id.trim().to_string(),
            _ => {
                let id = format!("{:016x}", fastrand::u64(..));
                crate::checkpoint::write_atomic(&id_path, id.as_bytes())?;
                id
            }
        };
        let progress = Arc::new(Progress::default());
        let mut files = BTreeMap::new();
        for s in streams.iter().chain(std::iter::once(&DEAD)) {
            let path = spool.join(format!("{s}.jsonl"));
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let len = lengths.and_then(|l| l.get(*s)).copied().unwrap_or(0);
            f.set_len(len)
                .with_context(|| format!("cannot cut {} back", path.display()))?;
            files.insert(s.to_string(), (BufWriter::with_capacity(1 << 16, f), len));
            progress
                .spooled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(s.to_string(), (len, 0));
        }
        let writer = {
            let (progress, spool, stats) =
                (Arc::clone(&progress), spool.to_path_buf(), stats.clone());
            std::thread::Builder::new()
                .name("postgres-writer".into())
                .spawn(move || write_loop(&config, &spool, &id, &progress, &stats))?
        };
        Ok(Self {
            spool: spool.to_path_buf(),
            files,
            progress,
            writer: Some(writer),
            stats,
            ended: 0,
            temporary,
        })
    }

    fn append(&mut self, stream: &str, row: &Row) -> anyhow::Result<()> {
        let (file, len) = self
            .files
            .get_mut(stream)
            .with_context(|| format!("no PostgreSQL table for stream {stream}"))?;
        let mut json = serde_json::to_string(row)?;
        json.push('\n');
        file.write_all(json.as_bytes())?;
        *len += json.len() as u64;
        Ok(())
    }
}

impl ResultSink for PostgresSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn write(&mut self, _window_end: EventTime, lines: &[ResultLine]) -> anyhow::Result<()> {
        for l in lines {
            self.append(&l.stream, &Row::Result(l.for_replay()))?;
        }
        Ok(())
    }

    fn dead_letters(&mut self, lines: &[DeadLetter]) -> anyhow::Result<()> {
        for d in lines {
            self.append(DEAD, &Row::Dead(d.clone()))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let mut spooled = self
            .progress
            .spooled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (s, (f, len)) in self.files.iter_mut() {
            f.flush()?;
            if let Some(e) = spooled.get_mut(s) {
                e.0 = *len;
            }
        }
        drop(spooled);
        report(&self.stats, &self.progress);
        Ok(())
    }

    fn written(
        &mut self,
        stream: &str,
        _epoch: EventTime,
    ) -> anyhow::Result<Option<(u64, PathBuf)>> {
        self.flush()?;
        Ok(self
            .files
            .get(stream)
            .map(|(_, len)| (*len, self.spool.join(format!("{stream}.jsonl")))))
    }

    fn finish(&mut self, _stream: &str) -> anyhow::Result<()> {
        self.ended += 1;
        Ok(())
    }
}

impl Drop for PostgresSink {
    /// At the end of the input (and always without a checkpoint, where the spool is not kept)
    /// the job waits until every spooled row is in the database, saying so every 10 s; a
    /// stopped job with a checkpoint leaves the rest to the next start.
    fn drop(&mut self) {
        let _ = self.flush();
        let drain = self.temporary || self.ended >= self.files.len();
        if drain {
            let mut said = Instant::now();
            while self.progress.backlog() > 0 {
                if said.elapsed() > Duration::from_secs(10) {
                    tracing::warn!(
                        backlog_bytes = self.progress.backlog(),
                        "waiting for PostgreSQL to take the rest of the results"
                    );
                    said = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.progress.closing.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        report(&self.stats, &self.progress);
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.spool);
        }
    }
}

/// Publishes the writer's state to the job's stats (`/metrics`, `/status`).
fn report(stats: &RunStats, p: &Progress) {
    stats.set_sink(
        "postgres",
        crate::stats::SinkStatus {
            up: p.up.load(Ordering::Relaxed),
            backlog_bytes: p.backlog(),
            failures: p.failures.load(Ordering::Relaxed),
        },
    );
}

/// The writer thread: connects (retrying with backoff), then moves spooled rows into the
/// database batch by batch until closed and drained.
fn write_loop(
    config: &postgres::Config,
    spool: &Path,
    id: &str,
    progress: &Progress,
    stats: &RunStats,
) {
    let mut backoff = Duration::from_millis(200);
    let mut was_up = true;
    loop {
        match write_while_connected(config, spool, id, progress, stats) {
            Ok(()) => return,
            Err(e) if permanent(&e) => crate::runtime::fatal(&format!(
                "PostgreSQL refused the results (retrying cannot help): {e:#}"
            )),
            Err(e) => {
                progress.up.store(false, Ordering::Relaxed);
                progress.failures.fetch_add(1, Ordering::Relaxed);
                report(stats, progress);
                if was_up {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        backlog_bytes = progress.backlog(),
                        "PostgreSQL is not taking results; they wait in the spool on disk, retrying"
                    );
                }
                was_up = false;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if progress.up.load(Ordering::Relaxed) {
            backoff = Duration::from_millis(200);
            was_up = true;
        }
    }
}

fn write_while_connected(
    config: &postgres::Config,
    spool: &Path,
    id: &str,
    progress: &Progress,
    stats: &RunStats,
) -> anyhow::Result<()> {
    let mut client = connect(config)?;
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS speed_layer_progress (\
           spool text NOT NULL, stream text NOT NULL, byte_offset bigint NOT NULL, \
           PRIMARY KEY (spool, stream)); \
         ALTER TABLE speed_layer_progress ADD COLUMN IF NOT EXISTS row_count bigint NOT NULL DEFAULT 0",
    )?;
    // Rows committed per stream. A restart replays from the checkpoint, which may lie before
    // them: those rows are skipped (counted: a replay gives the same rows, not always the same
    // bytes — a label may differ).
    let mut done: BTreeMap<String, u64> = BTreeMap::new();
    for row in client.query(
        "SELECT stream, row_count FROM speed_layer_progress WHERE spool = $1",
        &[&id],
    )? {
        let (s, n): (String, i64) = (row.get(0), row.get(1));
        done.insert(s, u64::try_from(n).unwrap_or(0));
    }
    // Where each stream's reading stands: (byte offset, rows before it), from the start.
    let mut offsets: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    if !progress.up.swap(true, Ordering::Relaxed) {
        tracing::info!(
            backlog_bytes = progress.backlog(),
            "PostgreSQL is taking results"
        );
    }
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let streams: Vec<(String, u64)> = {
            let s = progress.spooled.lock().unwrap_or_else(|e| e.into_inner());
            s.iter().map(|(k, v)| (k.clone(), v.0)).collect()
        };
        let mut moved = false;
        for (stream, spooled) in &streams {
            let (from, before) = offsets.get(stream).copied().unwrap_or((0, 0));
            let committed = done.get(stream).copied().unwrap_or(0);
            if before >= committed {
                set_committed(progress, stream, from);
            }
            if *spooled <= from {
                continue;
            }
            let (mut rows, to) = read_rows(&spool.join(format!("{stream}.jsonl")), from, *spooled)?;
            if rows.is_empty() {
                continue;
            }
            let n = rows.len() as u64;
            // Rows the database already has (a replay after a restart). Dead letters are not
            // replayed in the same order (their stamps follow reading); their unique key makes
            // a second insert a no-op instead.
            let skip = if stream == DEAD {
                0
            } else {
                committed.saturating_sub(before).min(n) as usize
            };
            rows.drain(..skip);
            if !rows.is_empty() {
                let mut tx = client.transaction()?;
                upsert(&mut tx, stream, &rows, &mut tables)?;
                tx.execute(
                    "INSERT INTO speed_layer_progress (spool, stream, byte_offset, row_count) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (spool, stream) DO UPDATE \
                     SET byte_offset = EXCLUDED.byte_offset, row_count = EXCLUDED.row_count",
                    &[&id, stream, &(to as i64), &((before + n) as i64)],
                )?;
                tx.commit()?;
                done.insert(stream.clone(), before + n);
            }
            offsets.insert(stream.clone(), (to, before + n));
            if before + n >= committed {
                set_committed(progress, stream, to);
            }
            moved = true;
        }
        report(stats, progress);
        if !moved {
            if progress.closing.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An error no retry mends: the database refused the statement itself (SQLSTATE classes 22:
/// data, 42: syntax or schema — a table whose columns have other types, say).
fn permanent(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<postgres::Error>())
        .filter_map(|e| e.code())
        .any(|c| c.code().starts_with("22") || c.code().starts_with("42"))
}

fn set_committed(progress: &Progress, stream: &str, to: u64) {
    let mut s = progress.spooled.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = s.get_mut(stream) {
        e.1 = to;
    }
}

/// Connects with TLS when the URL asks for it (`sslmode=require`/`prefer`: encrypted, the
/// server's certificate not verified, as libpq does for those modes).
fn connect(config: &postgres::Config) -> anyhow::Result<postgres::Client> {
    let mut config = config.clone();
    config.connect_timeout(Duration::from_secs(5));
    // `CREATE … IF NOT EXISTS` notices are expected: not worth a log line each.
    config.notice_callback(|n| tracing::debug!(notice = n.message(), "PostgreSQL"));
    if config.get_ssl_mode() == postgres::config::SslMode::Disable {
        return Ok(config.connect(postgres::NoTls)?);
    }
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())?;
    builder.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let tls = postgres_openssl::MakeTlsConnector::new(builder.build());
    Ok(config.connect(tls)?)
}

/// Up to [`BATCH_ROWS`] whole rows of a spool from byte `from` (below `until`), and the offset
/// after them.
fn read_rows(path: &Path, from: u64, until: u64) -> anyhow::Result<(Vec<Row>, u64)> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    f.seek(SeekFrom::Start(from))?;
    // Only the batch's lines are read: a large backlog is not read again for every batch.
    let mut reader = std::io::BufReader::new(f.take(until - from));
    let (mut rows, mut at, mut line) = (Vec::new(), 0u64, Vec::new());
    while rows.len() < BATCH_ROWS {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || !line.ends_with(b"\n") {
            break;
        }
        rows.push(
            serde_json::from_slice(&line)
                .with_context(|| format!("{} holds a row that does not decode", path.display()))?,
        );
        at += line.len() as u64;
    }
    Ok((rows, from + at))
}

/// A column's SQL type.
fn sql_type(cells: &[&Cell]) -> &'static str {
    match ColumnKind::of(cells.iter().copied()) {
        ColumnKind::Text => "text",
        ColumnKind::Int => "bigint",
        ColumnKind::Float => "double precision",
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn timestamp(ms: EventTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Creates `stream`'s table when missing and adds columns it lacks (a schema change adds
/// columns; it never drops or retypes one), once per connection.
fn ensure_table(
    tx: &mut postgres::Transaction<'_>,
    stream: &str,
    columns: &[(String, &'static str)],
    tables: &mut BTreeMap<String, Vec<String>>,
) -> anyhow::Result<()> {
    let names: Vec<String> = columns.iter().map(|c| c.0.clone()).collect();
    if tables.get(stream) == Some(&names) {
        return Ok(());
    }
    let defs: Vec<String> = columns
        .iter()
        .map(|(n, t)| format!("{} {t}", quoted(n)))
        .collect();
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (row_key))",
        quoted(stream),
        defs.join(", ")
    ))?;
    for (n, t) in columns {
        tx.batch_execute(&format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {t}",
            quoted(stream),
            quoted(n)
        ))?;
    }
    tables.insert(stream.to_string(), names);
    Ok(())
}

/// One value of a row, as a statement parameter.
type Param = Box<dyn ToSql + Sync>;

/// Upserts `rows` of one stream: a newer revision replaces an older one, never the reverse.
fn upsert(
    tx: &mut postgres::Transaction<'_>,
    stream: &str,
    rows: &[Row],
    tables: &mut BTreeMap<String, Vec<String>>,
) -> anyhow::Result<()> {
    let (columns, values) = table_rows(rows);
    ensure_table(tx, stream, &columns, tables)?;
    let names: Vec<String> = columns.iter().map(|c| quoted(&c.0)).collect();
    let conflict = if stream == DEAD {
        "ON CONFLICT (row_key) DO NOTHING".to_string()
    } else {
        let set: Vec<String> = names
            .iter()
            .filter(|n| n.as_str() != "\"row_key\"")
            .map(|n| format!("{n} = EXCLUDED.{n}"))
            .collect();
        format!(
            "ON CONFLICT (row_key) DO UPDATE SET {} WHERE {}.revision < EXCLUDED.revision",
            set.join(", "),
            quoted(stream)
        )
    };
    let width = columns.len();
    let placeholders: Vec<String> = (0..values.len())
        .map(|r| {
            let ps: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", ps.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {} {conflict}",
        quoted(stream),
        names.join(", "),
        placeholders.join(", ")
    );
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().flatten().map(|p| p.as_ref()).collect();
    tx.execute(sql.as_str(), &params)?;
    Ok(())
}

/// The columns (name, SQL type) and each row's values.
fn table_rows(rows: &[Row]) -> (Vec<(String, &'static str)>, Vec<Vec<Param>>) {
    // One statement may not touch a row twice: of one row key, the newest revision (a final
    // and its correction can share a batch).
    let mut newest: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let Row::Result(l) = r {
            match newest.get(l.row_key.as_str()) {
                Some(&j) if matches!(&rows[j], Row::Result(o) if o.revision >= l.revision) => {}
                _ => {
                    newest.insert(&l.row_key, i);
                }
            }
        }
    }
    let kept: Vec<&Row> = rows
        .iter()
        .enumerate()
        .filter(|(i, r)| match r {
            Row::Result(l) => newest.get(l.row_key.as_str()) == Some(i),
            Row::Dead(_) => true,
        })
        .map(|(_, r)| r)
        .collect();
    let mut columns: Vec<(String, &'static str)> = Vec::new();
    let mut values: Vec<Vec<Param>> = Vec::new();
    match rows.first() {
        Some(Row::Result(first)) => {
            let lines: Vec<&ResultLine> = kept
                .iter()
                .filter_map(|r| match r {
                    Row::Result(l) => Some(l),
                    Row::Dead(_) => None,
                })
                .collect();
            columns.push(("window_start".into(), "timestamptz NOT NULL"));
            columns.push(("window_end".into(), "timestamptz NOT NULL"));
            columns.push((first.key_column.to_string(), "text NOT NULL"));
            columns.push(("row_key".into(), "text NOT NULL"));
            let mut types = Vec::new();
            for (i, (name, _)) in first.columns.iter().enumerate() {
                let cells: Vec<&Cell> = lines
                    .iter()
                    .map(|l| l.columns.get(i).map_or(&Cell::Null, |c| &c.1))
                    .collect();
                let t = sql_type(&cells);
                types.push(t);
                columns.push((name.to_string(), t));
            }
            columns.push(("kind".into(), "text NOT NULL"));
            columns.push(("revision".into(), "integer NOT NULL"));
            columns.push(("replaces".into(), "integer"));
            for l in lines {
                let mut v: Vec<Param> = vec![
                    Box::new(timestamp(l.window_start)),
                    Box::new(timestamp(l.window_end)),
                    Box::new(l.key.clone()),
                    Box::new(l.row_key.clone()),
                ];
                for (i, t) in types.iter().enumerate() {
                    let c = l.columns.get(i).map_or(&Cell::Null, |c| &c.1);
                    v.push(match (*t, c) {
                        ("text", Cell::Text(s)) => Box::new(Some(s.clone())),
                        ("text", _) => Box::new(None::<String>),
                        ("bigint", Cell::Int(n)) => Box::new(i64::try_from(*n).ok()),
                        ("bigint", _) => Box::new(None::<i64>),
                        (_, Cell::Num(x)) => Box::new(Some(*x)),
                        (_, Cell::Int(n)) => Box::new(Some(*n as f64)),
                        _ => Box::new(None::<f64>),
                    });
                }
                v.push(Box::new(l.kind.as_str().to_string()));
                v.push(Box::new(l.revision as i32));
                v.push(Box::new(l.replaces.map(|r| r as i32)));
                values.push(v);
            }
        }
        Some(Row::Dead(_)) => {
            for (n, t) in [
                ("row_key", "text NOT NULL"),
                ("topic", "text NOT NULL"),
                ("position", "text NOT NULL"),
                ("index", "bigint NOT NULL"),
                ("reason", "text NOT NULL"),
                ("detail", "text NOT NULL"),
                ("event_time", "timestamptz"),
                ("raw", "text NOT NULL"),
            ] {
                columns.push((n.into(), t));
            }
            for r in rows {
                let Row::Dead(d) = r else { continue };
                let position = d.position_json();
                values.push(vec![
                    Box::new(format!("{}#{position}#{}", d.topic, d.index)),
                    Box::new(d.topic.clone()),
                    Box::new(position),
                    Box::new(i64::from(d.index)),
                    Box::new(d.reason.clone()),
                    Box::new(d.detail.clone()),
                    Box::new(d.event_time.map(timestamp)),
                    Box::new(d.raw.clone()),
                ]);
            }
        }
        None => {}
    }
    (columns, values)
}
