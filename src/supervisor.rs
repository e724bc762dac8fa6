//! `speed-layer cluster`: starts the processes of a cluster on this machine and, when one
//! dies, restarts all of them from the last complete checkpoint.
//!
//! timely has no fault tolerance of its own: when one process of a cluster dies, the others
//! lose their connections and fail too. So recovery is all-or-nothing: stop every process,
//! then start them all again with the same `--checkpoint` folder; each resumes from the same
//! latest complete epoch.
//!
//! A process that exits with a permanent error (a bad argument, a checkpoint of another job:
//! status 2 or [`crate::runtime::EXIT_PERMANENT`]) would fail the same way again: the supervisor
//! stops every process at once and exits with that error as its last line.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Arguments of `speed-layer cluster`.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterCommand {
    /// Number of processes to start on this machine.
    #[arg(short = 'n', long, default_value_t = 2, value_name = "N")]
    pub processes: usize,
    /// Worker threads per process.
    #[arg(short = 'w', long, default_value_t = 1, value_name = "N")]
    pub workers: usize,
    /// HOST:PORT per process, one per line (default: free ports on 127.0.0.1).
    #[arg(long, value_name = "PATH")]
    pub hostfile: Option<PathBuf>,
    /// Give up after this many restarts in a row (a cluster that ran 10 minutes starts counting anew).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub max_restarts: u32,
    /// Wait this long before the first restart (doubling with each restart, up to 30s).
    #[arg(long, default_value = "1s", value_parser = crate::time::parse_duration, value_name = "DURATION")]
    pub restart_delay: Duration,
    /// The `speed-layer run` arguments every process gets (after `--`); must include --checkpoint.
    #[arg(last = true, required = true, value_name = "RUN ARGS")]
    pub run_args: Vec<String>,
}

/// Picks `n` free TCP ports on 127.0.0.1.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free ports for the cluster")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn check(args: &ClusterCommand) -> anyhow::Result<()> {
    anyhow::ensure!(args.processes >= 1, "-n must be at least 1");
    anyhow::ensure!(args.workers >= 1, "-w must be at least 1");
    let has = |flag: &str| {
        args.run_args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    anyhow::ensure!(
        has("--checkpoint"),
        "speed-layer cluster restarts processes from their last checkpoint: give \
         --checkpoint DIR in the run arguments (after --)"
    );
    for flag in [
        "-n",
        "-p",
        "-w",
        "--processes",
        "--process",
        "--workers",
        "--hostfile",
    ] {
        anyhow::ensure!(
            !has(flag),
            "give {flag} to speed-layer cluster (before --), not in the run arguments"
        );
    }
    Ok(())
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Whether a process's exit status says a restart would fail the same way.
fn is_permanent(status: ExitStatus) -> bool {
    matches!(status.code(), Some(c) if c == 2 || c == i32::from(crate::runtime::EXIT_PERMANENT))
}

/// Copies a child's standard error to ours line by line, keeping its last `error:` line.
fn forward_stderr(
    child: &mut Child,
    last_error: Arc<Mutex<Option<String>>>,
) -> Option<std::thread::JoinHandle<()>> {
    let pipe = child.stderr.take()?;
    std::thread::Builder::new()
        .name("cluster-stderr".into())
        .spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if let Some(e) = line.strip_prefix("error: ") {
                    *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                }
            }
        })
        .ok()
}

/// Sends SIGTERM (graceful stop) to a child.
fn terminate(child: &Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Runs the cluster until every process ends successfully, restarting all of them when one
/// fails; SIGINT/SIGTERM stop every process gracefully.
pub fn supervise(args: &ClusterCommand) -> anyhow::Result<()> {
    check(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let exe = std::env::current_exe().context("cannot find the speed-layer executable")?;
    let own_hostfile = args.hostfile.is_none();
    let hostfile = match &args.hostfile {
        Some(h) => {
            let hosts = crate::cli::read_hostfile(h)?;
            anyhow::ensure!(
                hosts.len() >= args.processes,
                "the hostfile lists {} hosts but -n is {}",
                hosts.len(),
                args.processes
            );
            h.clone()
        }
        None => {
            std::env::temp_dir().join(format!("speed-layer-cluster-{}.hosts", std::process::id()))
        }
    };
    let mut restarts = 0u32;
    let result = loop {
        if own_hostfile {
            // New ports for each start: the previous ones may linger in TIME_WAIT.
            let hosts: Vec<String> = free_ports(args.processes)?
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            std::fs::write(&hostfile, hosts.join("\n") + "\n")
                .with_context(|| format!("cannot write {}", hostfile.display()))?;
        }
        let mut children = Vec::new();
        let mut forwards = Vec::new();
        let errors: Vec<Arc<Mutex<Option<String>>>> =
            (0..args.processes).map(|_| Arc::default()).collect();
        for (p, last_error) in errors.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("run")
                .args(&args.run_args)
                .args(["-n", &args.processes.to_string(), "-p", &p.to_string()])
                .args(["-w", &args.workers.to_string(), "--hostfile"])
                .arg(&hostfile)
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot start process {p}"))?;
            forwards.extend(forward_stderr(&mut child, Arc::clone(last_error)));
            children.push(Some(child));
        }
        tracing::info!(
            processes = args.processes,
            workers = args.workers,
            restarts,
            "cluster started"
        );
        let started = Instant::now();
        let mut failed: Option<(usize, ExitStatus)> = None;
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; args.processes];
        while failed.is_none() && statuses.iter().any(Option::is_none) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for (p, slot) in children.iter_mut().enumerate() {
                let Some(child) = slot else { continue };
                if let Some(status) = child.try_wait()? {
                    statuses[p] = Some(status);
                    *slot = None;
                    if !status.success() && failed.is_none() {
                        failed = Some((p, status));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if stop.load(Ordering::Relaxed) {
            tracing::info!("stopping the cluster gracefully");
            children.iter().flatten().for_each(terminate);
            for child in children.iter_mut().flatten() {
                child.wait()?;
            }
            break Ok(());
        }
        let Some((p, status)) = failed else {
            break Ok(());
        };
        // The others cannot go on without it: stop them all.
        for child in children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        forwards.into_iter().for_each(|f| {
            let _ = f.join();
        });
        if is_permanent(status) {
            let error = errors[p]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| "see its log above".into());
            break Err(anyhow::anyhow!(
                "process {p} stopped with a permanent error ({}), not restarting: {error}",
                describe(status)
            ));
        }
        if started.elapsed() >= Duration::from_secs(600) {
            restarts = 0;
        }
        restarts += 1;
        if restarts > args.max_restarts {
            break Err(anyhow::anyhow!(
                "process {p} failed ({}); gave up after {} restarts",
                describe(status),
                args.max_restarts
            ));
        }
        let delay =
            (args.restart_delay * 2u32.pow((restarts - 1).min(5))).min(Duration::from_secs(30));
        tracing::warn!(
            "process {p} failed ({}); restarting all {} processes from the last checkpoint in {} (restart {restarts} of at most {})",
            describe(status),
            args.processes,
            humantime::format_duration(delay),
            args.max_restarts
        );
        let until = Instant::now() + delay;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
    };
    if own_hostfile {
        let _ = std::fs::remove_file(&hostfile);
    }
    if result.is_ok() && !stop.load(Ordering::Relaxed) {
        tracing::info!(restarts, "cluster finished");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        c: ClusterCommand,
    }

    #[test]
    fn run_arguments_need_a_checkpoint_and_no_cluster_flags() {
        let parse = |a: &[&str]| T::try_parse_from(a).map(|t| check(&t.c));
        let e = parse(&["x", "-n", "2", "--", "--input", "trades=f"])
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("give --checkpoint DIR"), "{e}");
        let e = parse(&["x", "--", "--checkpoint", "c", "-w", "2"])
            .unwrap()
            .unwrap_err();
        assert!(
            e.to_string().contains("give -w to speed-layer cluster"),
            "{e}"
        );
        assert!(parse(&["x", "-n", "2", "--", "--checkpoint=c"])
            .unwrap()
            .is_ok());
    }
}
