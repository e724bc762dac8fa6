//! Exactly-once through crashes: runs over files and over a real Apache Kafka broker
//! are killed with SIGKILL at random points and restarted from their checkpoint, with 1 worker,
//! 2 workers and a cluster of 2 processes under `speed-layer cluster`; the final outputs must
//! equal an uninterrupted run's, with no window lost or written twice. Also: damaged, torn and
//! foreign checkpoints are refused with a clear error, and SIGTERM leaves a checkpoint and
//! complete outputs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::*;

/// How a job runs: worker threads, and processes (more than 1: under `speed-layer cluster`).
#[derive(Clone, Copy, Debug)]
struct Shape {
    workers: usize,
    processes: usize,
}

const SHAPES: [Shape; 3] = [
    Shape {
        workers: 1,
        processes: 1,
    },
    Shape {
        workers: 2,
        processes: 1,
    },
    Shape {
        workers: 1,
        processes: 2,
    },
];

fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// Starts the job once: `run` in one process, or `cluster` for several.
fn start(shape: Shape, out: &Path, ckpt: &Path, args: &[String]) -> Child {
    let mut cmd = Command::new(bin());
    let run_args = [
        "--output",
        &out.display().to_string(),
        "--checkpoint",
        &ckpt.display().to_string(),
        "--log-level",
        "info",
        "--log-interval",
        "0s",
    ]
    .map(String::from);
    if shape.processes > 1 {
        cmd.args(["cluster", "-n", &shape.processes.to_string()])
            .args([
                "-w",
                &shape.workers.to_string(),
                "--restart-delay",
                "50ms",
                "--",
            ]);
    } else {
        cmd.args(["run", "-w", &shape.workers.to_string()]);
    }
    cmd.args(run_args)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start speed-layer")
}

/// The processes `speed-layer cluster` started.
fn children(supervisor: &Child) -> Vec<u32> {
    let pid = supervisor.id();
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// The epoch last seen complete in a checkpoint folder (`committed` holds it and the worker
/// count of its layout).
fn committed(ckpt: &Path) -> Option<u64> {
    std::fs::read_to_string(ckpt.join("committed"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
}

/// Runs the job and kills it (one process of a cluster) with SIGKILL `kills` times, then lets
/// it finish. The first kill comes at a random point within `span` (often before any
/// checkpoint); each later one a random moment (0–250 ms) after the restarted job committed a
/// new checkpoint. Returns the kills that landed and how many restarts resumed from a
/// checkpoint (as their logs say).
fn killed_and_resumed(
    shape: Shape,
    out: &Path,
    ckpt: &Path,
    args: &[String],
    span: Duration,
    kills: usize,
    rng: &mut fastrand::Rng,
) -> (usize, usize) {
    let mut landed = 0;
    let mut logs = String::new();
    let mut child = start(shape, out, ckpt, args);
    for attempt in 0..kills * 3 {
        if landed == kills {
            break;
        }
        if attempt == 0 {
            std::thread::sleep(span.mul_f64(0.1 + 0.8 * rng.f64()));
        } else {
            let before = committed(ckpt);
            let began = Instant::now();
            while committed(ckpt) == before
                && child.try_wait().unwrap().is_none()
                && began.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rng.u64(0..250)));
        }
        if let Some(status) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(status.success(), "a run failed: {stderr}");
            logs += &stderr;
            // Finished before the kill: start again (it resumes from the end).
            child = start(shape, out, ckpt, args);
            continue;
        }
        if shape.processes > 1 {
            let kids = children(&child);
            if kids.is_empty() {
                continue;
            }
            // The supervisor restarts the whole cluster from the last checkpoint: wait for the
            // new processes, so the next kill point is measured from their start.
            let victim = kids[rng.usize(..kids.len())];
            signal(victim, rustix::process::Signal::KILL);
            let began = Instant::now();
            while began.elapsed() < Duration::from_secs(30) && child.try_wait().unwrap().is_none() {
                let now = children(&child);
                if now.len() == shape.processes
                    && !now.contains(&victim)
                    && !kids.iter().any(|k| now.contains(k))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            child.kill().unwrap();
            logs += &String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr);
            child = start(shape, out, ckpt, args);
        }
        landed += 1;
    }
    let done = wait(child, Duration::from_secs(300), "the resumed run");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "the resumed run failed: {stderr}");
    logs += &stderr;
    (landed, logs.matches("resuming from the checkpoint").count())
}

/// Runs the job uninterrupted (no checkpoint) and returns its output folder and duration.
fn uninterrupted(shape: Shape, dir: &Path, args: &[String]) -> (PathBuf, Duration) {
    let began = Instant::now();
    let mut all = args.to_vec();
    all.extend(["-w".to_string(), shape.workers.to_string()]);
    let r = if shape.processes > 1 {
        run_cluster(dir, shape.processes, shape.workers, args)
    } else {
        run(dir, &all)
    };
    (r.dir, began.elapsed())
}

/// Dead letters as sorted JSON lines, to compare as multisets.
fn dead_lines(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = read_dead_letters(dir)
        .iter()
        .map(|d| d.to_string())
        .collect();
    v.sort();
    v
}

/// Final results only: every window once, as the uninterrupted run's.
fn same_finals(got: &Path, want: &Path, what: &str) {
    let want = read_results(want);
    assert!(want.len() > 100, "{what}: too few windows to test");
    // read_results fails on a window written twice.
    assert_same_results(&read_results(got), &want, what);
}

/// With corrections: per window, the same number of lines (final + corrections) and the same
/// last revision.
fn same_revisions(got: &Path, want: &Path, what: &str) {
    fn settled(dir: &Path) -> (Results, BTreeMap<(String, String, u64), usize>) {
        let (mut last, mut lines) = (Results::new(), BTreeMap::new());
        for stream in STREAMS {
            let text = std::fs::read_to_string(dir.join(format!("{stream}.jsonl"))).unwrap();
            for line in text.lines() {
                let row: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line).unwrap();
                let key = result_id(&row);
                let k = (
                    stream.to_string(),
                    key,
                    row["window_start"].as_u64().unwrap(),
                );
                *lines.entry(k.clone()).or_insert(0) += 1;
                let newer = last
                    .get(&k)
                    .is_none_or(|r| r["revision"].as_u64() < row["revision"].as_u64());
                if newer {
                    last.insert(k, row);
                }
            }
        }
        (last, lines)
    }
    let (want_last, want_lines) = settled(want);
    let corrected = want_lines.values().filter(|n| **n > 1).count();
    assert!(
        corrected > 0,
        "{what}: the reference has no corrections to test"
    );
    let (got_last, got_lines) = settled(got);
    let differ: Vec<_> = want_lines
        .iter()
        .filter(|(k, n)| got_lines.get(*k) != Some(*n))
        .map(|(k, n)| (k, *n, got_lines.get(k).copied()))
        .take(8)
        .collect();
    assert!(
        differ.is_empty() && got_lines.len() == want_lines.len(),
        "{what}: lines per window (window, expected, got): {differ:?}"
    );
    assert_same_results(&got_last, &want_last, what);
}

/// One crash test at a time: kill points are chosen from run times, which a machine shared by
/// several multi-process tests would make erratic.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The shapes a rescaled job runs in, one after the other: 1 → 2 workers → 2 processes →
/// 2 processes of 2 workers → 1 (the layouts of 1, 2, 2, 4 and 1 workers).
const RESCALES: [Shape; 5] = [
    SHAPES[0],
    SHAPES[1],
    SHAPES[2],
    Shape {
        workers: 2,
        processes: 2,
    },
    SHAPES[0],
];

/// Stops a job (every process of a cluster) with SIGKILL, or with SIGTERM (a graceful stop,
/// which ends with a checkpoint) when `graceful`; returns its log.
fn stop(mut child: Child, graceful: bool) -> String {
    let kids = children(&child);
    if graceful {
        signal(child.id(), rustix::process::Signal::TERM);
        let o = wait(child, Duration::from_secs(60), "the stopped run");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "SIGTERM must exit 0: {err}");
        return err;
    }
    // The supervisor first, so it restarts nothing.
    let _ = child.kill();
    for k in kids {
        signal(k, rustix::process::Signal::KILL);
    }
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned()
}

/// Runs the job through the [`RESCALES`] shapes: each run is stopped at a random point (the
/// first within `span`, the others a moment after their first new checkpoint) and the next
/// shape resumes from the checkpoint; the second stop is graceful, the others SIGKILL. Returns
/// how many runs were stopped mid-run after resuming from a checkpoint of another worker count.
fn rescaled(
    out: &Path,
    ckpt: &Path,
    args: &[String],
    span: Duration,
    rng: &mut fastrand::Rng,
) -> usize {
    let mut child = start(RESCALES[0], out, ckpt, args);
    let mut landed = 0;
    let rescaled_log = |log: &str| log.contains("rescaling: the checkpoint was written by");
    for (i, shape) in RESCALES.iter().enumerate().skip(1) {
        if i == 1 {
            std::thread::sleep(span.mul_f64(0.2 + 0.6 * rng.f64()));
        } else {
            let before = committed(ckpt);
            let began = Instant::now();
            while committed(ckpt) == before
                && child.try_wait().unwrap().is_none()
                && began.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Soon after it: a run resumed near the end of the input finishes quickly.
            std::thread::sleep(span.mul_f64(0.05 * rng.f64()));
        }
        let running = child.try_wait().unwrap().is_none();
        let log = stop(child, i == 2);
        landed += usize::from(running && rescaled_log(&log));
        child = start(*shape, out, ckpt, args);
    }
    let done = wait(child, Duration::from_secs(300), "the last rescaled run");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        done.status.success(),
        "the last rescaled run failed: {stderr}"
    );
    assert!(
        rescaled_log(&stderr),
        "the last run did not rescale: {stderr}"
    );
    landed
}

/// Kills, rescales and resumes the job (see [`rescaled`]) a few times, checking its outputs
/// against an uninterrupted run with `compare`.
fn survives_rescaling(tmp: &Path, what: &str, args: &[String], compare: fn(&Path, &Path, &str)) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    eprintln!("{what}: stop points from CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (want_dir, span) = uninterrupted(RESCALES[0], &tmp.join(format!("{what}-ref")), args);
    eprintln!("{what}: an uninterrupted run takes {span:?}");
    let mut rescales = 0;
    for job in 0..3 {
        if rescales >= 3 {
            break;
        }
        let (out, ckpt) = (
            tmp.join(format!("{what}-{job}")),
            tmp.join(format!("{what}-{job}-ckpt")),
        );
        let r = rescaled(&out, &ckpt, args, span, &mut rng);
        eprintln!("{what} job {job}: {r} rescaled runs stopped mid-run");
        compare(
            &out,
            &want_dir,
            &format!("{what} job {job}, rescaled {r} times"),
        );
        assert_eq!(
            dead_lines(&out),
            dead_lines(&want_dir),
            "{what}: dead letters"
        );
        rescales += r;
    }
    assert!(
        rescales >= 3,
        "{what}: only {rescales} rescaled runs were stopped mid-run"
    );
}

/// Kills and resumes the job in every shape, checking its outputs against uninterrupted runs
/// with `compare`.
fn survives_kills(tmp: &Path, what: &str, args: &[String], compare: fn(&Path, &Path, &str)) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    eprintln!("{what}: kill points from CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    for shape in SHAPES {
        let name = format!("{what}-w{}-n{}", shape.workers, shape.processes);
        let (want_dir, span) = uninterrupted(shape, &tmp.join(format!("{name}-ref")), args);
        eprintln!("{name}: an uninterrupted run takes {span:?}");
        // Until 3 kills landed and a restart resumed from a checkpoint: each job killed and
        // resumed to its end, then checked. A job that ended before is followed by a fresh one.
        let (mut landed, mut resumed) = (0, 0);
        for job in 0..6 {
            if landed >= 3 && resumed >= 1 {
                break;
            }
            let (out, ckpt) = (
                tmp.join(format!("{name}-{job}")),
                tmp.join(format!("{name}-{job}-ckpt")),
            );
            let kills = 3usize.saturating_sub(landed).max(1);
            let (l, r) = killed_and_resumed(shape, &out, &ckpt, args, span, kills, &mut rng);
            eprintln!("{name} job {job}: {l} kills, {r} restarts resumed from a checkpoint");
            compare(
                &out,
                &want_dir,
                &format!("{name} job {job} after {l} kills"),
            );
            assert_eq!(
                dead_lines(&out),
                dead_lines(&want_dir),
                "{name}: dead letters"
            );
            (landed, resumed) = (landed + l, resumed + r);
        }
        assert!(landed >= 3, "{name}: only {landed} kills landed mid-run");
        assert!(resumed >= 1, "{name}: no restart resumed from a checkpoint");
    }
}

#[test]
fn file_runs_survive_kills_on_any_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "2h");
    survives_kills(tmp.path(), "files", &inputs.args(), same_finals);
}

/// Garbled files of 2 h, with 30 min of allowed lateness (many corrections).
fn with_corrections(tmp: &Path) -> Vec<String> {
    let mut args = garbled_sim_inputs(tmp, "2h").args();
    args.extend(["--allowed-lateness".to_string(), "30m".to_string()]);
    args
}

#[test]
fn file_runs_survive_rescaling() {
    let tmp = tempfile::tempdir().unwrap();
    let args = with_corrections(tmp.path());
    survives_rescaling(tmp.path(), "files", &args, same_revisions);
}

#[test]
fn simulator_runs_survive_rescaling() {
    let tmp = tempfile::tempdir().unwrap();
    survives_rescaling(
        tmp.path(),
        "simulator",
        &SIM_ARGS.map(String::from),
        same_finals,
    );
}

#[test]
fn hopping_windows_and_sessions_survive_kills_on_any_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "2h");
    let mut args = inputs.args();
    args.extend(
        [
            "--window",
            "binance=2m",
            "--slide",
            "binance=30s",
            "--session-gap",
            "polymarket=30s",
        ]
        .map(String::from),
    );
    survives_kills(tmp.path(), "hopping-sessions", &args, same_finals);
}

#[test]
fn corrections_survive_kills_on_any_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let args = with_corrections(tmp.path());
    survives_kills(tmp.path(), "corrections", &args, same_revisions);
}

/// A bounded read of every topic from `bootstrap`, in small fetches: the job takes long enough
/// to be stopped at many points.
fn kafka_read(bootstrap: &str) -> Vec<String> {
    [
        "--brokers",
        bootstrap,
        "--start-from",
        "earliest",
        "--until-end",
        "-X",
        "max.partition.fetch.bytes=100000",
        "-X",
        "fetch.max.bytes=1000000",
        "-X",
        "message.max.bytes=1000000",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn kafka_runs_survive_kills_on_any_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "40m");
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    load_inputs(&bootstrap, &inputs, 10);
    let args = kafka_read(&bootstrap);
    survives_kills(tmp.path(), "kafka", &args, same_finals);
    // Partitions move between workers and processes with their positions.
    survives_rescaling(tmp.path(), "kafka-rescaled", &args, same_finals);
}

/// The exactly-once Kafka sink through SIGKILLs, a graceful stop and rescales (see
/// [`rescaled`]): a `read_committed` consumer of a plain (not compacted) topic sees every result
/// and dead letter exactly once, equal to an uninterrupted run's.
#[test]
fn exactly_once_kafka_sink_survives_kills_and_rescales() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "40m");
    let broker = Broker::start();
    let b = broker.bootstrap();
    load_inputs(&b, &inputs, 10);
    create_topics(&b, &[("results_eo", 3), ("dead_eo", 1)]);
    let read = kafka_read(&b);
    let (want_dir, span) = uninterrupted(RESCALES[0], &tmp.path().join("ref"), &read);
    let mut args = read.clone();
    args.extend(
        [
            "--sink-kafka",
            "results_eo",
            "--dead-letter-topic",
            "dead_eo",
            "--exactly-once",
        ]
        .map(String::from),
    );
    let seed = seed();
    eprintln!("exactly-once: stop points from CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (out, ckpt) = (tmp.path().join("eo"), tmp.path().join("eo-ckpt"));
    let landed = rescaled(&out, &ckpt, &args, span, &mut rng);
    eprintln!("exactly-once: {landed} rescaled runs stopped mid-run");
    same_finals(&out, &want_dir, "exactly-once files");

    let want = read_results(&want_dir);
    let msgs = consume_all_with(&b, "results_eo", want.len(), true);
    let mut seen: BTreeMap<(String, String, u64), usize> = BTreeMap::new();
    let mut got = Results::new();
    for (_, value, headers) in &msgs {
        let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(value).unwrap();
        let k = (
            headers["stream"].clone(),
            result_id(&row),
            row["window_start"].as_u64().unwrap(),
        );
        *seen.entry(k.clone()).or_default() += 1;
        got.insert(k, row);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "results seen more than once: {twice:?}");
    assert_same_results(&got, &want, "read_committed consumer");
    let dead = dead_lines(&want_dir);
    let mut dl: Vec<String> = consume_all_with(&b, "dead_eo", dead.len(), true)
        .into_iter()
        .map(|(_, v, _)| {
            serde_json::from_str::<serde_json::Value>(&v)
                .unwrap()
                .to_string()
        })
        .collect();
    dl.sort();
    let extra: Vec<_> = dl.iter().filter(|d| !dead.contains(d)).take(2).collect();
    let missing: Vec<_> = dead.iter().filter(|d| !dl.contains(d)).take(2).collect();
    assert_eq!(
        dl.len(),
        dead.len(),
        "dead letters through the exactly-once sink: extra {extra:?}, missing {missing:?}"
    );
    assert_eq!(
        dl, dead,
        "dead letters: extra {extra:?}, missing {missing:?}"
    );
    // Aborted transactions left what a plain consumer sees; the committed view is exact.
    let all = consume_all_with(&b, "results_eo", want.len(), false).len();
    eprintln!(
        "exactly-once: {} results, {all} messages in the topic",
        want.len()
    );
}

/// A finished checkpointed run over the real recorded data, for the damage tests.
fn finished_checkpoint(tmp: &Path) -> (Vec<String>, PathBuf) {
    let inputs = real_inputs(tmp);
    let ckpt = tmp.join("ckpt");
    let mut args = inputs.args();
    args.extend(["--checkpoint".to_string(), ckpt.display().to_string()]);
    run(&tmp.join("out"), &args);
    (args, ckpt)
}

fn expect_error(args: &[String], out: &Path, needle: &str) {
    let o = Command::new(bin())
        .arg("run")
        .arg("--output")
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure with '{needle}'");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A part of the window operator of worker 0 (the largest, so damage hits a body).
fn a_window_part(ckpt: &Path) -> PathBuf {
    let dir = ckpt.join("parts/peers-1/window-binance/w0");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "part"))
        .unwrap()
}

#[test]
fn damaged_torn_and_foreign_checkpoints_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (args, ckpt) = finished_checkpoint(tmp.path());
    let out = tmp.path().join("out");
    // Parts older than the latest complete epoch are gone: the folder stays small.
    for op in std::fs::read_dir(ckpt.join("parts/peers-1")).unwrap() {
        for w in std::fs::read_dir(op.unwrap().path()).unwrap() {
            let w = w.unwrap().path();
            let n = std::fs::read_dir(&w).unwrap().count();
            assert!((1..=2).contains(&n), "{n} parts in {}", w.display());
        }
    }
    // Intact: it resumes.
    run(&out, &args);
    let part = a_window_part(&ckpt);
    let good = std::fs::read(&part).unwrap();

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    std::fs::write(&part, &flipped).unwrap();
    expect_error(&args, &out, "is damaged (checksum mismatch)");

    std::fs::write(&part, &good[..good.len() / 2]).unwrap();
    expect_error(&args, &out, "is damaged");

    std::fs::write(&part, b"garbage").unwrap();
    expect_error(&args, &out, "is damaged (not a checkpoint part)");

    std::fs::remove_file(&part).unwrap();
    expect_error(&args, &out, "is torn");

    std::fs::write(&part, &good).unwrap();
    run(&out, &args);

    // Other worker counts resume (a rescale), other key groups do not.
    let mut groups = args.clone();
    groups.extend(["--key-groups".to_string(), "360".to_string()]);
    expect_error(
        &groups,
        &out,
        "has 720 key groups, and they are fixed when a job starts",
    );
    let mut windows = args.clone();
    windows.extend(["--window".to_string(), "binance=2m".to_string()]);
    expect_error(
        &windows,
        &out,
        "belongs to a different job (binance_windows:",
    );

    let job = ckpt.join("job.json");
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(&job, &text[..text.len() / 2]).unwrap();
    expect_error(
        &args,
        &out,
        "job.json is damaged or not a speed-layer checkpoint",
    );

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("data.bin"), b"x").unwrap();
    let mut other = args[..args.len() - 2].to_vec();
    other.extend(["--checkpoint".to_string(), foreign.display().to_string()]);
    expect_error(&other, &out, "is not a speed-layer checkpoint folder");
}

/// A bounded simulation at full speed.
const SIM_ARGS: [&str; 8] = [
    "--sim-speed",
    "0",
    "--sim-duration",
    "3h",
    "--sim-seed",
    "5",
    "--sim-start",
    "1790000000000",
];

/// A process that fails at start-up on a setting no restart can fix stops the whole cluster at
/// once: no restarts, the error as the supervisor's last line, a non-zero exit.
#[test]
fn the_cluster_stops_at_once_on_a_permanent_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (args, _) = finished_checkpoint(tmp.path());
    let began = Instant::now();
    let o = Command::new(bin())
        .args(["cluster", "-n", "2", "--restart-delay", "30s", "--"])
        .args(["--output", &tmp.path().join("out").display().to_string()])
        .args(&args)
        .args(["--key-groups", "360"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("stopped with a permanent error (exit status 78), not restarting")
            && last.contains("has 720 key groups"),
        "{err}"
    );
    assert!(!err.contains("restarting all"), "{err}");
    // A first restart would have waited 30 s.
    assert!(began.elapsed() < Duration::from_secs(25), "{err}");
}

#[test]
fn simulator_runs_survive_kills_on_any_shape() {
    let tmp = tempfile::tempdir().unwrap();
    survives_kills(
        tmp.path(),
        "simulator",
        &SIM_ARGS.map(String::from),
        same_finals,
    );
}

#[test]
fn standard_input_is_refused_with_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ck").display().to_string();
    let out = tmp.path().join("out");
    expect_error(
        &[
            "--checkpoint".into(),
            ck.clone(),
            "--input".into(),
            "binance=-".into(),
        ],
        &out,
        "standard input (--input TOPIC=-) cannot be read again",
    );
}

#[test]
fn sigterm_leaves_a_checkpoint_and_complete_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "2h");
    let args = inputs.args();
    let (want_dir, _) = uninterrupted(
        Shape {
            workers: 2,
            processes: 1,
        },
        &tmp.path().join("ref"),
        &args,
    );
    let want = read_results(&want_dir);
    let (out, ckpt) = (tmp.path().join("out"), tmp.path().join("ckpt"));
    let shape = Shape {
        workers: 2,
        processes: 1,
    };
    let child = start(shape, &out, &ckpt, &args);
    // Stop it once it has written some results, well before the end.
    let began = Instant::now();
    while std::fs::metadata(out.join("polymarket_books.jsonl")).map_or(0, |m| m.len()) == 0 {
        assert!(began.elapsed() < Duration::from_secs(60), "no output");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(child.id(), rustix::process::Signal::TERM);
    let o = wait(child, Duration::from_secs(60), "the stopped run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "SIGTERM must exit 0: {err}");
    assert!(err.contains("checkpoint complete at "), "{err}");
    assert!(ckpt.join("committed").exists(), "no committed checkpoint");

    // Complete outputs: whole lines, and per stream every window of the reference up to the
    // last one written (no gaps, nothing partial).
    let got = read_results(&out);
    assert!(
        got.len() < want.len(),
        "the stop came too late to test anything"
    );
    for stream in STREAMS {
        let last = got
            .iter()
            .filter(|(k, _)| k.0 == stream)
            .map(|(k, _)| k.2)
            .max();
        let expected: Results = want
            .iter()
            .filter(|(k, _)| k.0 == stream && last.is_some_and(|l| k.2 <= l))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let written: Results = got
            .iter()
            .filter(|(k, _)| k.0 == stream)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_same_results(&written, &expected, &format!("{stream} at the stop"));
    }

    // The restart resumes there and completes the outputs.
    let resumed = wait(
        start(shape, &out, &ckpt, &args),
        Duration::from_secs(300),
        "resume",
    );
    assert!(resumed.status.success());
    assert_same_results(&read_results(&out), &want, "after the restart");
    assert_eq!(dead_lines(&out), dead_lines(&want_dir), "dead letters");
}

/// Without `speed-layer cluster`: when one process of a cluster is killed, the other stops on
/// its own (instead of waiting for its peer forever), and starting both again resumes.
#[test]
fn a_lost_peer_stops_the_other_process_and_both_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "2h");
    let shape = Shape {
        workers: 1,
        processes: 2,
    };
    let (want_dir, _) = uninterrupted(shape, &tmp.path().join("ref"), &inputs.args());
    let (out, ckpt) = (tmp.path().join("out"), tmp.path().join("ckpt"));
    let hostfile = tmp.path().join("hosts");
    let hosts: Vec<String> = free_ports(2)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    std::fs::write(&hostfile, hosts.join("\n") + "\n").unwrap();
    let mut args = inputs.args();
    args.extend(["--checkpoint".to_string(), ckpt.display().to_string()]);
    let process = |p: usize| {
        Command::new(bin())
            .args(["run", "--output", &out.display().to_string()])
            .args(&args)
            .args(["-n", "2", "-p", &p.to_string(), "--hostfile"])
            .arg(&hostfile)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p0, mut p1) = (process(0), process(1));
    let began = Instant::now();
    while committed(&ckpt).is_none() {
        assert!(began.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    p1.kill().unwrap();
    p1.wait().unwrap();
    let o = wait(p0, Duration::from_secs(30), "the surviving process");
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("the surviving process ended with {}", o.status);
    if !o.status.success() {
        // It lost its peer mid-run (it may also have finished its share just before).
        assert!(err.contains("stopping this process"), "{err}");
    }
    let r = run_cluster(&out, 2, 1, &args);
    assert!(
        r.stderr.contains("resuming from the checkpoint"),
        "{}",
        r.stderr
    );
    same_finals(&out, &want_dir, "after losing a peer");
    assert_eq!(dead_lines(&out), dead_lines(&want_dir), "dead letters");
}

/// Whether `dir` holds a published Parquet file (outside `_staging`).
fn has_published_file(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let p = e.path();
        if p.is_dir() {
            p.file_name().is_some_and(|n| n != "_staging") && has_published_file(&p)
        } else {
            p.extension().is_some_and(|x| x == "parquet")
        }
    })
}

/// Reads the visible Parquet files of `dir` with pyarrow into JSON lines (`parquet_read.py`);
/// fails on a file that does not read (a partial file) and, through `read_results`, on a row
/// seen twice.
fn parquet_rows(dir: &Path, out: &Path) -> Results {
    let _ = std::fs::remove_dir_all(out);
    python(
        "parquet_read.py",
        &[&dir.display().to_string(), &out.display().to_string()],
    );
    read_results(out)
}

#[test]
fn parquet_files_survive_kills_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "2h");
    let (want, _) = uninterrupted(SHAPES[0], &tmp.path().join("whole"), &inputs.args());
    let want_rows = read_results(&want);
    let pq = tmp.path().join("parquet");
    let mut args = inputs.args();
    args.extend(
        [
            "--sink-parquet",
            &pq.display().to_string(),
            "--parquet-roll-rows",
            "150",
        ]
        .map(String::from),
    );
    let (out, ckpt) = (tmp.path().join("out"), tmp.path().join("ckpt"));
    let mut rng = fastrand::Rng::with_seed(seed());
    let mut visible_seen = 0;
    let mut child = start(SHAPES[0], &out, &ckpt, &args);
    for kill in 0..6 {
        // The first kill at a random moment; each later one soon after a new checkpoint.
        if kill == 0 {
            std::thread::sleep(Duration::from_millis(rng.u64(50..600)));
        } else {
            let before = committed(&ckpt);
            let began = Instant::now();
            while committed(&ckpt) == before
                && child.try_wait().unwrap().is_none()
                && began.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rng.u64(0..250)));
        }
        // Half the kills, while nothing was visible yet, wait for a published file: the test
        // must see files between a crash and its restart.
        let began = Instant::now();
        while kill >= 3
            && visible_seen == 0
            && !has_published_file(&pq)
            && child.try_wait().unwrap().is_none()
            && began.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        let _ = child.wait();
        // Between the crash and the restart: every visible file whole, no row twice, and each
        // an uninterrupted run's row.
        let seen = parquet_rows(&pq, &tmp.path().join(format!("seen-{kill}")));
        for (k, row) in &seen {
            let w = want_rows
                .get(k)
                .unwrap_or_else(|| panic!("{k:?} is no result"));
            assert_eq!(row["revision"], w["revision"], "{k:?}");
        }
        visible_seen = visible_seen.max(seen.len());
        child = start(SHAPES[0], &out, &ckpt, &args);
    }
    let done = wait(child, Duration::from_secs(300), "the resumed run");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        visible_seen > 0,
        "no file was visible before the end: nothing tested"
    );
    let got = parquet_rows(&pq, &tmp.path().join("final"));
    assert_same_results(&got, &want_rows, "Parquet after kills");
    assert!(
        !pq.join("_staging").exists(),
        "staging is cleared at the end of the input"
    );
}

#[test]
fn postgres_rows_survive_kills_exactly_once() {
    use common::postgres::{db_results, ordered_like, Postgres};
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let inputs = garbled_sim_inputs(tmp.path(), "2h");
    let seed = seed();
    eprintln!("postgres: kill points from CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    for shape in [SHAPES[0], SHAPES[2]] {
        let name = format!("pg_w{}_n{}", shape.workers, shape.processes);
        let (want_dir, span) = uninterrupted(shape, &tmp.path().join(&name), &inputs.args());
        let want = read_results(&want_dir);
        // A database per job: rows of another job cannot stand in for missing ones.
        let url = pg.database(&name);
        let mut args = inputs.args();
        args.extend(["--sink-postgres".to_string(), url.clone()]);
        let (out, ckpt) = (
            tmp.path().join(format!("{name}-out")),
            tmp.path().join(format!("{name}-ckpt")),
        );
        let (landed, resumed) = killed_and_resumed(shape, &out, &ckpt, &args, span, 3, &mut rng);
        eprintln!("{name}: {landed} kills, {resumed} restarts resumed from a checkpoint");
        assert!(landed >= 1, "{name}: no kill landed");
        let got = ordered_like(db_results(&url, &STREAMS), &want);
        assert_same_results(
            &got,
            &want,
            &format!("{name}: PostgreSQL after {landed} kills"),
        );
        assert_eq!(
            Postgres::count(&url, "dead_letter") as usize,
            read_dead_letters(&want_dir).len(),
            "{name}: every dead letter once"
        );
    }
}
