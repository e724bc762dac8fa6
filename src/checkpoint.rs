//! Checkpoints: durable, consistent snapshots of a running job, and the restore.
//!
//! A checkpoint *epoch* is a point `b` on a fixed grid of event time (multiples of
//! `--checkpoint-interval`). The snapshot at `b` is the job's state after exactly the records
//! stamped before `b`: the timely frontier is the cut, so every worker and process agrees on it
//! without coordination messages. Each stateful operator instance (a source, a window operator,
//! a sink, on each worker) writes *parts*: when its frontier (or a source's capability) crosses
//! one or more grid points, it writes one file covering that range of epochs, holding one or
//! more entries `[lo, hi] → state` (the state is the same for every epoch of an entry).
//!
//! Epoch `b` is complete when every (operator, worker) has a part covering `b`; a restart
//! resumes from the latest complete epoch. Layout of `DIR`:
//!
//! ```text
//! DIR/job.json                              format version and the job's fingerprint
//! DIR/committed                             the latest epoch seen complete, and its layout
//! DIR/parts/peers-<P>/<operator>/w<worker>/<hi>-<lo>.part
//! ```
//!
//! **Rescaling.** Keys are routed to workers through a fixed number of *key groups* (recorded in
//! the fingerprint, chosen when the job starts): a key's group is its hash modulo the groups,
//! and group `g` belongs to worker `g % P` of `P` workers (all processes together). Source
//! partitions belong to workers by the same kind of rule. Parts are written under the layout of
//! the `P` that wrote them. A restart with another `P` reads every part of the latest complete
//! epoch of the old layout, and each operator instance keeps what its worker owns now: the keys
//! of its key groups, the partitions it reads, its own index for singletons (the sinks, on worker
//! 0). It writes under its new layout; the old one is deleted once the new one has a complete
//! epoch, so a crash before that resumes from the old one again.
//!
//! A part file is a magic line, a JSON header line (version, operator, worker, entries with
//! their ranges, lengths and FNV-1a checksums), then the entries' bincode bodies. Files are
//! written to a temporary name, fsynced and renamed, so a crash never leaves half a part.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::time::EventTime;

/// Version of the checkpoint layout and part format; a different version is refused.
pub(crate) const FORMAT_VERSION: u32 = 6;
const MAGIC: &str = "speed-layer checkpoint part";
const JOB_FORMAT: &str = "speed-layer-checkpoint";

/// What an operator needs to take part in checkpoints: the store and its stable name.
#[derive(Clone)]
pub struct Handle {
    /// The process's checkpoint store.
    pub store: Arc<Checkpoints>,
    /// The operator's name in the checkpoint layout (`source-<topic>`, `window-<stream>`, ...,
    /// made by `context::operator_name`).
    pub op: String,
}

impl Handle {
    /// The state this operator instance saved at the epoch resumed from; a state that does not
    /// decode ends the process with a clear message.
    pub fn restored<T: DeserializeOwned>(&self, worker: usize) -> Option<T> {
        self.store
            .restored(&self.op, worker)
            .unwrap_or_else(|e| crate::runtime::fatal_permanent(&format!("cannot resume: {e:#}")))
    }

    /// The states this operator instance resumes from: its own, or after a rescale those of
    /// every worker of the old layout, of which it keeps what its worker owns now (the keys of
    /// its key groups, its partitions). A state that does not decode ends the process.
    pub fn restored_all<T: DeserializeOwned>(&self, worker: usize) -> Vec<T> {
        let workers = match self.store.rescaled_from {
            Some(old) => (0..old).collect(),
            None => vec![worker],
        };
        workers
            .into_iter()
            .filter_map(|w| {
                self.store.restored(&self.op, w).unwrap_or_else(|e| {
                    crate::runtime::fatal_permanent(&format!("cannot resume: {e:#}"))
                })
            })
            .collect()
    }

    /// Whether this run resumed from a checkpoint written by another number of workers.
    pub fn rescaled(&self) -> bool {
        self.store.rescaled_from.is_some()
    }

    /// The entries for the checkpoint epochs a frontier at `lim` passes, from `next` on (none
    /// when it passes none), and the next epoch after them. `at(lo)` brings the operator's state
    /// to epoch `lo` and returns it encoded, with the first later epoch at which it differs
    /// (`None`: not before the frontier); one entry then covers every epoch in between.
    pub fn save_epochs(
        &self,
        lim: EventTime,
        next: EventTime,
        mut at: impl FnMut(EventTime) -> (Vec<u8>, Option<EventTime>),
    ) -> (Vec<Entry>, EventTime) {
        let mut entries = Vec::new();
        if lim < next || next == EventTime::MAX {
            return (entries, next);
        }
        let interval = self.store.interval();
        let last = if lim == EventTime::MAX {
            lim
        } else {
            self.store.floor(lim)
        };
        let mut lo = next;
        loop {
            let (body, change) = at(lo);
            let hi = match change {
                Some(n) if n <= last => n - interval,
                _ => last,
            };
            entries.push(Entry { lo, hi, body });
            if hi >= last {
                break;
            }
            lo = hi + interval;
        }
        (entries, last.saturating_add(interval))
    }

    /// Queues a part for writing; a failed write ends the process (a checkpoint that cannot
    /// be written must not be skipped silently).
    pub fn write(&self, worker: usize, entries: Vec<Entry>) {
        self.store.submit(&self.op, worker, entries, Vec::new());
    }

    /// Queues a part to be written once the file at `sync` (an output) is fsynced.
    pub fn write_after_sync(&self, worker: usize, entries: Vec<Entry>, sync: Vec<PathBuf>) {
        self.store.submit(&self.op, worker, entries, sync);
    }
}

/// One state of an operator, valid for every epoch in `[lo, hi]` (`hi` = `u64::MAX`: forever).
pub struct Entry {
    /// First epoch covered.
    pub lo: EventTime,
    /// Last epoch covered.
    pub hi: EventTime,
    /// The operator's state (bincode).
    pub body: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    op: String,
    worker: usize,
    entries: Vec<EntryHeader>,
}

#[derive(Serialize, Deserialize)]
struct EntryHeader {
    lo: EventTime,
    hi: EventTime,
    len: usize,
    fnv: String,
}

#[derive(Serialize, Deserialize)]
struct JobFile {
    format: String,
    version: u32,
    fingerprint: serde_json::Map<String, serde_json::Value>,
    /// Random, made when the folder is: tells this job from a later one in a new folder at the
    /// same path (its Kafka transactional id derives from it).
    instance: String,
}

/// Checkpoint writes and restores of this process, for the metrics.
#[derive(Default)]
pub struct CheckpointStats {
    /// Part files written.
    pub parts: AtomicU64,
    /// Bytes written in parts.
    pub bytes: AtomicU64,
    /// Total time spent writing parts (µs).
    pub write_us: AtomicU64,
    /// Longest single part write (µs).
    pub max_write_us: AtomicU64,
    /// Latest epoch seen complete (ms of event time; 0: none yet).
    pub complete_epoch: AtomicU64,
}

/// The checkpoint store of one process, shared by its workers.
pub struct Checkpoints {
    dir: PathBuf,
    interval: u64,
    peers: usize,
    local: Range<usize>,
    expected: Vec<String>,
    epoch: Option<EventTime>,
    /// Bodies restored, by (operator, worker of the layout resumed from).
    restored: HashMap<(String, usize), Vec<u8>>,
    /// The worker count of the layout resumed from, when it is not `peers` (a rescale).
    rescaled_from: Option<usize>,
    /// Layout folders other than this run's, deleted once this run's layout has a complete
    /// epoch past the one resumed from.
    stale_layouts: Mutex<Vec<PathBuf>>,
    /// Per local (operator, worker): the last epoch its parts cover.
    covered: Mutex<HashMap<(String, usize), EventTime>>,
    /// Per local window operator: its input frontier (u64::MAX when empty).
    frontiers: Mutex<HashMap<(String, usize), EventTime>>,
    last_gc: Mutex<Instant>,
    /// The background writer: parts are written (and fsynced) off the worker threads.
    writer: Mutex<Option<Writer>>,
    /// The job instance (see [`JobFile::instance`]).
    instance: String,
    /// Write statistics.
    pub stats: CheckpointStats,
}

/// A part waiting for the writer: operator, worker, entries, an output file to fsync first.
type Job = (String, usize, Vec<Entry>, Vec<PathBuf>);

/// The queue to the background writer thread, and the thread.
type Writer = (
    std::sync::mpsc::SyncSender<Job>,
    std::thread::JoinHandle<()>,
);

/// The checksum of a part body, as its header stores it: detects damaged parts.
fn fnv(bytes: &[u8]) -> String {
    format!("{:016x}", crate::hash::fnv1a(bytes))
}

fn part_name(lo: EventTime, hi: EventTime) -> String {
    format!("{hi:020}-{lo:020}.part")
}

fn parse_part_name(name: &str) -> Option<(EventTime, EventTime)> {
    let stem = name.strip_suffix(".part")?;
    let (hi, lo) = stem.split_once('-')?;
    Some((lo.parse().ok()?, hi.parse().ok()?))
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Unique per process and call: several workers may write the same file at once.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("part"),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    // The rename is durable once the folder is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}

/// The fingerprint a checkpoint folder's `job.json` holds, if it has one that reads.
pub(crate) fn stored_fingerprint(dir: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(dir.join("job.json")).ok()?;
    serde_json::from_str::<JobFile>(&text)
        .ok()
        .map(|j| j.fingerprint)
}

/// Serializes an operator state for an [`Entry`].
pub(crate) fn encode<T: Serialize>(state: &T) -> Vec<u8> {
    // bincode writes any serde value of plain data (numbers, strings, vectors, maps) into a Vec.
    bincode::serialize(state).unwrap_or_else(|e| unreachable!("bincode into a Vec: {e}"))
}

/// A part's ranges, by (operator, worker).
type Listing = Vec<Vec<(EventTime, EventTime, PathBuf)>>;

/// The folder name of the layout written by `peers` workers.
fn layout_name(peers: usize) -> String {
    format!("peers-{peers}")
}

impl Checkpoints {
    /// Opens (or creates) the checkpoint folder and finds the epoch to resume from.
    ///
    /// `expected` names every checkpointing operator; each runs on every one of the `peers`
    /// workers, of which this process hosts `local`. Fails with a clear message when the folder
    /// belongs to another job or format, or when its latest committed checkpoint is damaged.
    pub fn open(
        dir: &Path,
        interval_ms: u64,
        peers: usize,
        local: Range<usize>,
        expected: Vec<String>,
        fingerprint: serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(interval_ms > 0, "--checkpoint-interval must be positive");
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create checkpoint folder {}", dir.display()))?;
        let mut store = Self {
            dir: dir.to_path_buf(),
            interval: interval_ms,
            peers,
            local,
            expected,
            epoch: None,
            restored: HashMap::new(),
            rescaled_from: None,
            stale_layouts: Mutex::new(Vec::new()),
            covered: Mutex::new(HashMap::new()),
            frontiers: Mutex::new(HashMap::new()),
            last_gc: Mutex::new(Instant::now()),
            writer: Mutex::new(None),
            instance: String::new(),
            stats: CheckpointStats::default(),
        };
        store.instance = store.check_job(fingerprint)?;
        // Every layout's latest complete epoch; the latest of all is resumed from (this run's
        // own layout wins a tie: no rescale needed).
        let mut layouts = store.layouts()?;
        if !layouts.contains(&peers) {
            layouts.push(peers);
        }
        let mut best: Option<(EventTime, usize)> = None;
        let mut listings = HashMap::new();
        for &p in &layouts {
            let listing = store.list(p)?;
            if let Some(e) = complete_epoch(&listing) {
                if best.is_none_or(|(b, bp)| (e, p == peers) > (b, bp == peers)) {
                    best = Some((e, p));
                }
            }
            listings.insert(p, listing);
        }
        if let Some((c, cp)) = store.committed_at() {
            // An epoch once complete is never lost: no layout reaching it means parts are gone.
            if best.is_none_or(|(b, _)| b < c) {
                let listing = store.list(cp)?;
                let missing: Vec<String> = store
                    .pairs(cp)
                    .zip(&listing)
                    .filter(|(_, ranges)| !ranges.iter().any(|(lo, hi, _)| *lo <= c && c <= *hi))
                    .map(|((op, w), _)| format!("{op} of worker {w}"))
                    .take(4)
                    .collect();
                bail!(
                    "checkpoint {} is torn: epoch {} was committed but the parts of {} are missing; \
                     restore the folder from a backup, or delete it to start over",
                    dir.display(),
                    crate::time::format_ms(c),
                    missing.join(", ")
                );
            }
        }
        if let Some((e, from)) = best {
            let rescaled = from != peers;
            for ((op, w), ranges) in store.pairs(from).zip(&listings[&from]).collect::<Vec<_>>() {
                // A rescale reads every part of the old layout; else each process its own.
                if !rescaled && !store.local.contains(&w) {
                    continue;
                }
                // `e` is complete in this layout: covered by every (operator, worker).
                let (_, _, path) = ranges
                    .iter()
                    .find(|(lo, hi, _)| *lo <= e && e <= *hi)
                    .unwrap_or_else(|| unreachable!("complete epochs are covered"));
                let body = store.load(path, &op, w, e)?;
                store.restored.insert((op, w), body);
            }
            store.epoch = Some(e);
            store.rescaled_from = rescaled.then_some(from);
            store.stats.complete_epoch.store(e, Ordering::Relaxed);
        }
        // This run's layout keeps what the epoch resumed from covers (nothing, after a
        // rescale: its parts are older); the other layouts go once this one has a newer
        // complete epoch.
        let own = best.filter(|(_, p)| *p == peers).map(|(e, _)| e);
        store.trim(&listings[&peers], own)?;
        *store
            .stale_layouts
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = layouts
            .iter()
            .filter(|p| **p != peers)
            .map(|p| store.dir.join("parts").join(layout_name(*p)))
            .collect();
        Ok(store)
    }

    /// Every (operator, worker) of the layout of `peers` workers.
    fn pairs(&self, peers: usize) -> impl Iterator<Item = (String, usize)> + '_ {
        self.expected
            .iter()
            .flat_map(move |op| (0..peers).map(move |w| (op.clone(), w)))
    }

    /// The folder of `op` on `worker` in the layout of `peers` workers.
    fn layout_dir(&self, peers: usize, op: &str, worker: usize) -> PathBuf {
        self.dir
            .join("parts")
            .join(layout_name(peers))
            .join(op)
            .join(format!("w{worker}"))
    }

    /// The folder this run writes `op`'s parts of `worker` to.
    fn part_dir(&self, op: &str, worker: usize) -> PathBuf {
        self.layout_dir(self.peers, op, worker)
    }

    /// The worker counts of the layouts in the folder.
    fn layouts(&self) -> anyhow::Result<Vec<usize>> {
        let parts = self.dir.join("parts");
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&parts) else {
            return Ok(out);
        };
        for e in rd {
            let e = e.with_context(|| format!("cannot list {}", parts.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_prefix("peers-").and_then(|p| p.parse().ok()) {
                Some(p) if p > 0 => out.push(p),
                _ => bail!(
                    "unexpected entry {} in the checkpoint folder; it is not a checkpoint layout",
                    e.path().display()
                ),
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Writes `job.json` on first use, else checks that it describes this job; returns the job
    /// instance.
    fn check_job(
        &self,
        fingerprint: serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<String> {
        let path = self.dir.join("job.json");
        let dir = self.dir.display();
        if !path.exists() {
            let foreign = std::fs::read_dir(&self.dir)?
                .filter_map(Result::ok)
                .any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // Another process of the cluster may be creating the same checkpoint.
                    !(name.starts_with('.')
                        || ["job.json", "parts", "committed"].contains(&name.as_str()))
                });
            anyhow::ensure!(
                !foreign,
                "{dir} is not a speed-layer checkpoint folder (it has files but no job.json); \
                 choose an empty or new folder for --checkpoint"
            );
            let job = JobFile {
                format: JOB_FORMAT.into(),
                version: FORMAT_VERSION,
                fingerprint,
                instance: format!("{:016x}", fastrand::u64(..)),
            };
            // A map of plain JSON values always serializes.
            let text = serde_json::to_string_pretty(&job).unwrap_or_default();
            // Another process of the cluster may create it at the same time: the first link
            // wins, and everyone reads that one (its instance must be the same everywhere).
            let tmp = self
                .dir
                .join(format!(".job.json.{}.tmp", std::process::id()));
            write_atomic(&tmp, text.as_bytes())?;
            match std::fs::hard_link(&tmp, &path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
                _ => {}
            }
            let _ = std::fs::remove_file(&tmp);
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {dir}"))?;
            return self.check_job(job.fingerprint);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let job: JobFile = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged or not a speed-layer checkpoint ({e}); restore it from a backup, \
                 or delete {dir} to start over",
                path.display()
            )
        })?;
        anyhow::ensure!(
            job.format == JOB_FORMAT,
            "{dir} is not a speed-layer checkpoint folder (format '{}')",
            job.format
        );
        anyhow::ensure!(
            job.version == FORMAT_VERSION,
            "checkpoint {dir} has format version {}, this speed-layer reads version {FORMAT_VERSION}; \
             finish the job with the version that wrote it, or delete the folder to start over",
            job.version
        );
        let mut diffs = Vec::new();
        for (k, v) in &fingerprint {
            let there = job.fingerprint.get(k).unwrap_or(&serde_json::Value::Null);
            if there != v {
                diffs.push(format!("{k}: {there} there, {v} now"));
            }
        }
        anyhow::ensure!(
            diffs.is_empty(),
            "checkpoint {dir} belongs to a different job ({}); resume with the same settings, \
             or use a new --checkpoint folder",
            diffs.join("; ")
        );
        Ok(job.instance)
    }

    /// The latest epoch seen complete, and the worker count of its layout.
    fn committed_at(&self) -> Option<(EventTime, usize)> {
        let text = std::fs::read_to_string(self.dir.join("committed")).ok()?;
        let (e, p) = text.trim().split_once(' ')?;
        Some((e.parse().ok()?, p.parse().ok()?))
    }

    /// Lists the parts of every expected (operator, worker) of the layout of `peers` workers
    /// by the ranges in their names.
    fn list(&self, peers: usize) -> anyhow::Result<Listing> {
        let mut out = Vec::new();
        for (op, w) in self.pairs(peers) {
            let dir = self.layout_dir(peers, &op, w);
            let mut ranges = Vec::new();
            if dir.exists() {
                for e in std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot list {}", dir.display()))?
                {
                    let e = e?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".tmp") {
                        continue;
                    }
                    let Some((lo, hi)) = parse_part_name(&name) else {
                        bail!(
                            "unexpected file {} in the checkpoint folder; it is not a checkpoint part",
                            e.path().display()
                        );
                    };
                    ranges.push((lo, hi, e.path()));
                }
            }
            ranges.sort_by_key(|r| (r.0, r.1));
            out.push(ranges);
        }
        Ok(out)
    }

    /// Removes what a crashed run wrote past the epoch resumed from (and leftover temporary
    /// files) in the folders of this process's workers, so old and new parts never mix.
    fn trim(&self, listing: &Listing, epoch: Option<EventTime>) -> anyhow::Result<()> {
        for ((op, w), ranges) in self.pairs(self.peers).zip(listing) {
            if !self.local.contains(&w) {
                continue;
            }
            let dir = self.part_dir(&op, w);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.filter_map(Result::ok) {
                    if e.file_name().to_string_lossy().ends_with(".tmp") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            for (lo, hi, path) in ranges {
                match epoch {
                    Some(e) if *lo <= e && e < *hi => {
                        std::fs::rename(path, dir.join(part_name(*lo, e)))
                            .with_context(|| format!("cannot trim {}", path.display()))?;
                    }
                    Some(e) if *lo <= e => {}
                    _ => std::fs::remove_file(path)
                        .with_context(|| format!("cannot remove {}", path.display()))?,
                }
            }
        }
        Ok(())
    }

    /// Reads a part file and returns the body of its entry covering `epoch`.
    fn load(
        &self,
        path: &Path,
        op: &str,
        worker: usize,
        epoch: EventTime,
    ) -> anyhow::Result<Vec<u8>> {
        let damaged = |why: String| {
            anyhow::anyhow!(
                "checkpoint part {} is damaged ({why}); the checkpoint cannot be trusted. Restore {} \
                 from a backup, or delete it to start over",
                path.display(),
                self.dir.display()
            )
        };
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = bytes.splitn(3, |b| *b == b'\n');
        let magic = lines.next().unwrap_or_default();
        if magic != MAGIC.as_bytes() {
            return Err(damaged("not a checkpoint part".into()));
        }
        let header: Header = serde_json::from_slice(lines.next().unwrap_or_default())
            .map_err(|e| damaged(format!("bad header: {e}")))?;
        if header.version != FORMAT_VERSION || header.op != op || header.worker != worker {
            return Err(damaged(format!(
                "written for {} of worker {} in format {}",
                header.op, header.worker, header.version
            )));
        }
        let mut body = lines.next().unwrap_or_default();
        let total: usize = header.entries.iter().map(|e| e.len).sum();
        if body.len() != total {
            return Err(damaged(format!(
                "{} body bytes, expected {total}",
                body.len()
            )));
        }
        for e in &header.entries {
            let (this, rest) = body.split_at(e.len);
            body = rest;
            if fnv(this) != e.fnv {
                return Err(damaged("checksum mismatch".into()));
            }
            if e.lo <= epoch && epoch <= e.hi {
                return Ok(this.to_vec());
            }
        }
        Err(damaged(format!("no entry covers epoch {epoch}")))
    }

    /// One line about this process's checkpoint writes, for the run summary.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let n = s.parts.load(Ordering::Relaxed);
        let us = s.write_us.load(Ordering::Relaxed);
        format!(
            "checkpoints: {n} parts, {:.1} MiB, {:.2} s writing (longest {:.1} ms){}",
            s.bytes.load(Ordering::Relaxed) as f64 / 1048576.0,
            us as f64 / 1e6,
            s.max_write_us.load(Ordering::Relaxed) as f64 / 1e3,
            self.epoch.map_or(String::new(), |e| format!(
                "; resumed from {}",
                crate::time::format_ms(e)
            ))
        )
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The epoch this run resumed from, or `None` for a fresh start.
    pub fn epoch(&self) -> Option<EventTime> {
        self.epoch
    }

    /// The job instance: random, made with the checkpoint folder, the same for every run that
    /// resumes it.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The worker count of the checkpoint resumed from, when it differs from this run's.
    pub fn rescaled_from(&self) -> Option<usize> {
        self.rescaled_from
    }

    /// The checkpoint grid step (ms of event time).
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// The last epoch at or before `t`, or 0.
    pub fn floor(&self, t: EventTime) -> EventTime {
        t - t % self.interval
    }

    /// The first epoch strictly after `t`.
    pub fn after(&self, t: EventTime) -> EventTime {
        self.floor(t).saturating_add(self.interval)
    }

    /// The state an operator instance saved at the epoch resumed from.
    pub fn restored<T: DeserializeOwned>(
        &self,
        op: &str,
        worker: usize,
    ) -> anyhow::Result<Option<T>> {
        let Some(body) = self.restored.get(&(op.to_string(), worker)) else {
            return Ok(None);
        };
        bincode::deserialize(body).map(Some).with_context(|| {
            format!("the checkpointed state of {op} (worker {worker}) does not decode")
        })
    }

    /// Records a window operator's input frontier, for the graceful stop.
    pub fn set_frontier(&self, op: &str, worker: usize, frontier: EventTime) {
        let mut f = self.frontiers.lock().unwrap_or_else(|e| e.into_inner());
        f.insert((op.to_string(), worker), frontier);
    }

    /// Queues a part for the background writer (started on first use), so workers do not wait
    /// for fsync; a full queue (4096 parts) makes them wait. A failed write ends the process.
    pub fn submit(
        self: &Arc<Self>,
        op: &str,
        worker: usize,
        entries: Vec<Entry>,
        sync: Vec<PathBuf>,
    ) {
        let tx = {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let (tx, _) = w.get_or_insert_with(|| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(4096);
                let me = Arc::clone(self);
                let thread = std::thread::Builder::new()
                    .name("checkpoint-writer".into())
                    .spawn(move || me.write_batches(&rx))
                    .unwrap_or_else(|e| {
                        crate::runtime::fatal(&format!("cannot start the checkpoint writer: {e}"))
                    });
                (tx, thread)
            });
            tx.clone()
        };
        if tx.send((op.to_string(), worker, entries, sync)).is_err() {
            crate::runtime::fatal("the checkpoint writer stopped");
        }
    }

    /// The writer thread: every 100 ms at most, writes what was queued, one file per operator
    /// instance and unbroken range of epochs (consecutive parts join), which keeps the
    /// number of files (and fsyncs) small when epochs pass quickly, as in a backfill.
    fn write_batches(&self, rx: &std::sync::mpsc::Receiver<Job>) {
        let every = std::time::Duration::from_millis(100);
        let mut last = Instant::now() - every;
        while let Ok(first) = rx.recv() {
            std::thread::sleep(every.saturating_sub(last.elapsed()));
            let mut groups: Vec<Job> = Vec::new();
            for (op, worker, entries, sync) in std::iter::once(first).chain(rx.try_iter()) {
                // Only parts that continue each other join: an operator may skip epochs (the
                // end of its input), and a part's entries must cover one unbroken range.
                let joins = |g: &Job| {
                    g.0 == op
                        && g.1 == worker
                        && g.2.last().map(|e| e.hi.saturating_add(self.interval))
                            == entries.first().map(|e| e.lo)
                };
                match groups
                    .iter_mut()
                    .rev()
                    .find(|g| g.0 == op && g.1 == worker)
                    .filter(|g| joins(g))
                {
                    Some(g) => {
                        g.2.extend(entries);
                        g.3.extend(sync);
                    }
                    None => groups.push((op, worker, entries, sync)),
                }
            }
            for (op, worker, entries, sync) in groups {
                // The output must be durable up to the lengths the part records.
                // A file gone since (a Parquet staging segment, published meanwhile: its rows
                // are in a synced file) needs no sync.
                let synced = sync.iter().try_for_each(|p| match File::open(p) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    f => f
                        .and_then(|f| f.sync_data())
                        .with_context(|| format!("cannot fsync {}", p.display())),
                });
                if let Err(e) = synced.and_then(|()| self.write(&op, worker, &entries)) {
                    crate::runtime::fatal(&format!("cannot write a checkpoint: {e:#}"));
                }
            }
            last = Instant::now();
        }
    }

    /// Waits until every queued part is written.
    pub fn finish(&self) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, thread)) = writer {
            drop(tx);
            let _ = thread.join();
        }
    }

    /// Writes one part of `op` on `worker` covering `entries` (consecutive, increasing).
    pub fn write(&self, op: &str, worker: usize, entries: &[Entry]) -> anyhow::Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let started = Instant::now();
        let header = Header {
            version: FORMAT_VERSION,
            op: op.to_string(),
            worker,
            entries: entries
                .iter()
                .map(|e| EntryHeader {
                    lo: e.lo,
                    hi: e.hi,
                    len: e.body.len(),
                    fnv: fnv(&e.body),
                })
                .collect(),
        };
        let mut bytes =
            Vec::with_capacity(entries.iter().map(|e| e.body.len()).sum::<usize>() + 256);
        bytes.extend_from_slice(MAGIC.as_bytes());
        bytes.push(b'\n');
        // A struct of numbers and strings always serializes.
        serde_json::to_writer(&mut bytes, &header).unwrap_or_default();
        bytes.push(b'\n');
        for e in entries {
            bytes.extend_from_slice(&e.body);
        }
        let dir = self.part_dir(op, worker);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join(part_name(first.lo, last.hi)), &bytes)?;
        let us = started.elapsed().as_micros() as u64;
        self.stats.parts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.stats.write_us.fetch_add(us, Ordering::Relaxed);
        self.stats.max_write_us.fetch_max(us, Ordering::Relaxed);
        self.covered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((op.to_string(), worker), last.hi);
        self.collect_garbage(last.hi == EventTime::MAX)
    }

    /// Finds the latest complete epoch (at most ten times a second per process, or when forced),
    /// records it in `committed`, and deletes the parts of this process's workers that only
    /// cover older epochs (this process's parts are all written by its one writer thread).
    fn collect_garbage(&self, force: bool) -> anyhow::Result<()> {
        {
            let mut last = self.last_gc.lock().unwrap_or_else(|e| e.into_inner());
            if !force && last.elapsed() < std::time::Duration::from_millis(100) {
                return Ok(());
            }
            *last = Instant::now();
        }
        let listing = self.list(self.peers)?;
        let Some(complete) = complete_epoch(&listing) else {
            return Ok(());
        };
        if self.epoch.is_some_and(|e| complete <= e) {
            // Only what this run's layout held before a rescale's trim: nothing new yet.
            return Ok(());
        }
        self.stats
            .complete_epoch
            .fetch_max(complete, Ordering::Relaxed);
        if self.committed_at().is_none_or(|(c, _)| c < complete) {
            let line = format!("{complete} {}", self.peers);
            write_atomic(&self.dir.join("committed"), line.as_bytes())?;
        }
        // This layout now resumes past every other: they are not needed any more. Another
        // process of the cluster may be deleting them at the same time.
        for dir in
            std::mem::take(&mut *self.stale_layouts.lock().unwrap_or_else(|e| e.into_inner()))
        {
            let _ = std::fs::remove_dir_all(dir);
        }
        for ((_, w), ranges) in self.pairs(self.peers).zip(&listing) {
            if !self.local.contains(&w) {
                continue;
            }
            for (_, hi, path) in ranges {
                if *hi < complete {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(())
    }

    /// Records the latest complete epoch in `committed` now (a graceful stop's last step).
    pub fn commit(&self) -> anyhow::Result<()> {
        self.collect_garbage(true)
    }

    /// The epoch a graceful stop settles on: the latest one this process's window operators'
    /// frontier passed (`u64::MAX`: the end of the input), at least the one resumed from; `None`
    /// before the first.
    pub fn stop_epoch(&self) -> Option<EventTime> {
        let frontier = {
            let f = self.frontiers.lock().unwrap_or_else(|e| e.into_inner());
            f.values().copied().min().unwrap_or(0)
        };
        let target = if frontier == EventTime::MAX {
            EventTime::MAX
        } else {
            self.floor(frontier)
        };
        let target = target.max(self.epoch.unwrap_or(0));
        (target > 0).then_some(target)
    }

    /// Whether every local operator's parts cover [`Self::stop_epoch`]: the process then holds
    /// a checkpoint of everything it processed.
    pub fn settled(&self) -> bool {
        let Some(target) = self.stop_epoch() else {
            return true;
        };
        if self.epoch.is_some_and(|e| target <= e) {
            return true;
        }
        let covered = self.covered.lock().unwrap_or_else(|e| e.into_inner());
        self.pairs(self.peers)
            .filter(|(_, w)| self.local.contains(w))
            .all(|k| covered.get(&k).is_some_and(|c| *c >= target))
    }
}

/// The latest epoch every (operator, worker) has a part for.
fn complete_epoch(listing: &Listing) -> Option<EventTime> {
    let mut candidates: Vec<EventTime> = listing
        .iter()
        .flatten()
        .flat_map(|(lo, hi, _)| [*lo, *hi])
        .filter(|t| *t != EventTime::MAX)
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates.into_iter().rev().find(|c| {
        listing
            .iter()
            .all(|ranges| ranges.iter().any(|(lo, hi, _)| lo <= c && c <= hi))
    })
}

impl crate::runtime::Settling for Checkpoints {
    fn settled(&self) -> bool {
        Checkpoints::settled(self)
    }
    fn commit(&self) -> anyhow::Result<()> {
        Checkpoints::commit(self)
    }
    fn stop_epoch(&self) -> Option<EventTime> {
        Checkpoints::stop_epoch(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("workers".into(), 1.into());
        m
    }

    fn open(dir: &Path) -> anyhow::Result<Checkpoints> {
        Checkpoints::open(dir, 10, 1, 0..1, vec!["a".into(), "b".into()], fp())
    }

    fn entry(lo: EventTime, hi: EventTime, v: u32) -> Entry {
        Entry {
            lo,
            hi,
            body: encode(&v),
        }
    }

    #[test]
    fn resumes_from_the_latest_epoch_every_operator_covers() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path()).unwrap();
        assert_eq!(c.epoch(), None);
        c.write("a", 0, &[entry(10, 20, 1), entry(30, 50, 2)])
            .unwrap();
        c.write("a", 0, &[entry(60, 60, 3)]).unwrap();
        c.write("b", 0, &[entry(10, 40, 7)]).unwrap();
        let c = open(dir.path()).unwrap();
        assert_eq!(c.epoch(), Some(40));
        assert_eq!(c.restored::<u32>("a", 0).unwrap(), Some(2));
        assert_eq!(c.restored::<u32>("b", 0).unwrap(), Some(7));
        // The part past the epoch is gone, so a new run's parts never mix with it.
        c.write("b", 0, &[entry(50, 50, 8)]).unwrap();
        assert_eq!(open(dir.path()).unwrap().epoch(), Some(40));
        let c = open(dir.path()).unwrap();
        c.write("a", 0, &[entry(50, 60, 4)]).unwrap();
        c.write("b", 0, &[entry(50, 50, 8)]).unwrap();
        let c = open(dir.path()).unwrap();
        assert_eq!(c.epoch(), Some(50));
        assert_eq!(c.restored::<u32>("a", 0).unwrap(), Some(4));
    }

    #[test]
    fn a_rescale_reads_every_old_part_until_the_new_layout_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let with = |peers: usize| {
            Checkpoints::open(dir.path(), 10, peers, 0..peers, vec!["a".into()], fp()).unwrap()
        };
        let two = with(2);
        two.write("a", 0, &[entry(10, 20, 1)]).unwrap();
        two.write("a", 1, &[entry(10, 20, 2)]).unwrap();
        // Resumed by one worker: both old states are there, twice (no new complete epoch).
        for _ in 0..2 {
            let one = with(1);
            assert_eq!((one.epoch(), one.rescaled_from()), (Some(20), Some(2)));
            assert_eq!(one.restored::<u32>("a", 0).unwrap(), Some(1));
            assert_eq!(one.restored::<u32>("a", 1).unwrap(), Some(2));
        }
        let one = with(1);
        one.write("a", 0, &[entry(30, EventTime::MAX, 3)]).unwrap();
        assert!(
            !dir.path().join("parts/peers-2").exists(),
            "old layout kept"
        );
        assert_eq!(one.committed_at(), Some((30, 1)));
        let two = with(2);
        assert_eq!((two.epoch(), two.rescaled_from()), (Some(30), Some(1)));
        assert_eq!(two.restored::<u32>("a", 0).unwrap(), Some(3));
        assert_eq!(two.restored::<u32>("a", 1).unwrap(), None);
        // Without a rescale only the own layout is read.
        let one = with(1);
        assert_eq!((one.epoch(), one.rescaled_from()), (Some(30), None));
    }

    #[test]
    fn damaged_torn_and_foreign_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path()).unwrap();
        c.write("a", 0, &[entry(10, EventTime::MAX, 1)]).unwrap();
        c.write("b", 0, &[entry(10, EventTime::MAX, 2)]).unwrap();
        // Flip one body byte.
        let part = c.part_dir("b", 0).join(part_name(10, EventTime::MAX));
        let mut bytes = std::fs::read(&part).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&part, &bytes).unwrap();
        let e = open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("is damaged (checksum mismatch)"), "{e}");
        // Cut it short.
        std::fs::write(&part, &bytes[..n - 2]).unwrap();
        let e = open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("is damaged"), "{e}");
        // Remove it: epoch 10 was committed, so this is a torn checkpoint.
        std::fs::remove_file(&part).unwrap();
        let e = open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("is torn") && e.contains("b of worker 0"), "{e}");
        // Another job's folder.
        let mut other = fp();
        other.insert("workers".into(), 2.into());
        let e = Checkpoints::open(dir.path(), 10, 1, 0..1, vec!["a".into()], other)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("different job (workers: 1 there, 2 now)"), "{e}");
        // A folder that is not a checkpoint at all.
        let plain = tempfile::tempdir().unwrap();
        std::fs::write(plain.path().join("notes.txt"), "x").unwrap();
        let e = open(plain.path()).err().unwrap().to_string();
        assert!(e.contains("not a speed-layer checkpoint folder"), "{e}");
    }
}
