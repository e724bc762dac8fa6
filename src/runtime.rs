//! How the process lives and ends: signals and the graceful stop, the stop flag the sources
//! read, fatal errors inside a running dataflow, and the guard that keeps a panic on one input
//! from ending the job.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::time::EventTime;

/// Set on SIGINT/SIGTERM when checkpointing: sources stop reading so the job can settle on a
/// complete checkpoint before the process exits.
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the sources to stop reading (graceful stop).
pub(crate) fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a graceful stop was requested.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Taken by every sink write and by [`stop_on_signal`] before it ends the process.
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds off [`stop_on_signal`]'s exit while an output is being written, so a stop never cuts
/// an output line in half.
pub(crate) fn writing() -> std::sync::MutexGuard<'static, ()> {
    WRITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a graceful stop waits for: the checkpoints of a job that keeps them.
pub trait Settling: Send + Sync {
    /// Whether every operator saved the latest epoch the watermark passed.
    fn settled(&self) -> bool;
    /// Records that epoch as the one a restart resumes from.
    fn commit(&self) -> anyhow::Result<()>;
    /// The epoch settled on (`EventTime::MAX` at the end of the input; `None` before the first).
    fn stop_epoch(&self) -> Option<EventTime>;
}

/// Work a graceful stop finishes after its last checkpoint, before the process exits.
type StopHook = Box<dyn Fn() + Send>;

static STOP_HOOKS: std::sync::Mutex<Vec<StopHook>> = std::sync::Mutex::new(Vec::new());

/// Registers `f` to run when a graceful stop has written its last checkpoint, before the
/// process exits (a sink that publishes what complete checkpoints cover).
pub(crate) fn before_stop_exit(f: impl Fn() + Send + 'static) {
    STOP_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(f));
}

/// On SIGINT or SIGTERM: wait for any sink write in progress, run `on_stop` (print the summary),
/// and exit 0. Outputs hold every window finalised so far; open windows are not emitted (they
/// are not final). With checkpoints, the sources first stop reading and the job settles: every
/// operator saves the latest epoch the watermark passed (waiting at most `timeout`), so a
/// restart resumes exactly where this run stopped. A second signal ends the process at once.
pub(crate) fn stop_on_signal(
    on_stop: impl FnOnce() + Send + 'static,
    ckpt: Option<std::sync::Arc<dyn Settling>>,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))?;
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!("stopping on a signal");
        if let Some(c) = &ckpt {
            request_stop();
            // Settled, and still settled a moment later (other processes' sources may still
            // have been reading when the signal came).
            let began = Instant::now();
            let mut settled_since: Option<Instant> = None;
            while began.elapsed() < timeout {
                if c.settled() {
                    let since = *settled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(300) {
                        break;
                    }
                } else {
                    settled_since = None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if c.settled() {
                if let Err(e) = c.commit() {
                    tracing::warn!("cannot record the committed checkpoint: {e:#}");
                }
                match c.stop_epoch() {
                    Some(EventTime::MAX) => eprintln!(
                        "speed-layer: checkpoint complete at the end of the input; a restart has nothing left to do"
                    ),
                    Some(e) => eprintln!(
                        "speed-layer: checkpoint complete at {}; a restart resumes where this run stopped",
                        crate::time::format_ms(e)
                    ),
                    None => eprintln!(
                        "speed-layer: checkpoint complete: nothing had reached the first checkpoint epoch yet, \
                         so a restart starts from the beginning"
                    ),
                }
            } else {
                tracing::warn!(
                    "the last checkpoint did not complete within {}; a restart resumes from the one before",
                    humantime::format_duration(timeout)
                );
            }
        }
        for hook in STOP_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook();
        }
        let _writing = writing();
        on_stop();
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::process::exit(0);
    });
    Ok(())
}

/// The exit status of an error no restart can fix (sysexits' `EX_CONFIG`): a bad setting, a
/// checkpoint of another job, a missing input file. `speed-layer cluster` (and a supervisor
/// told so) stops instead of restarting; clap's usage errors (status 2) count as such too.
pub const EXIT_PERMANENT: u8 = 78;

/// An error no restart can fix; the process exits with [`EXIT_PERMANENT`].
#[derive(Debug)]
pub struct Permanent(pub anyhow::Error);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Permanent {}

/// Marks `e` as permanent (see [`Permanent`]).
pub fn permanent(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Permanent(e))
}

/// Like [`fatal`], for an error no restart can fix (a checkpointed state that does not decode).
pub(crate) fn fatal_permanent(msg: &str) -> ! {
    exit_with(msg, i32::from(EXIT_PERMANENT))
}

/// Reports an unrecoverable error inside a running dataflow and ends the process with status 1.
///
/// Used where a worker cannot continue (an output cannot be written, an input cannot be read):
/// stopping is the only way not to emit windows computed from incomplete data.
pub(crate) fn fatal(msg: &str) -> ! {
    exit_with(msg, 1)
}

/// Prints `error: msg` after whatever stdout holds, and exits with `code`.
fn exit_with(msg: &str, code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    eprintln!("error: {msg}");
    std::process::exit(code);
}

thread_local! {
    /// Set while [`contain`] runs a closure on this thread: a panic there is caught, not fatal.
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into `Err(message)` instead of ending the process.
///
/// The last line of defence around code that handles one untrusted input (a decoder on one
/// message): a bug there costs that input, which is dead-lettered, not the job — a crash would
/// be restarted from the checkpoint onto the same input, forever. Every other panic ends the
/// process (see [`panic_is_contained`]).
pub fn contain<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let was = CONTAINED.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        format!("the decoder failed on this message: {msg}")
    })
}

/// Whether a panic on this thread happens inside [`contain`], for the process's panic hook:
/// such a panic is caught and reported as a dead letter, so the hook must not end the process.
pub fn panic_is_contained() -> bool {
    CONTAINED.with(|c| c.get())
}

/// Runs `func` on every worker of `config`, like `timely::execute`, but a cluster's processes
/// connect to each other here: retrying every 20 ms instead of timely's 1 s (a cluster started
/// all at once used to spend one to two seconds waiting), printing nothing on standard output
/// (timely prints its retries there, between the result tables), and failing with a clear error
/// after `CONNECT_TIMEOUT`.
pub fn execute<T, F>(
    config: timely::Config,
    func: F,
) -> anyhow::Result<timely_communication::WorkerGuards<T>>
where
    T: Send + 'static,
    F: Fn(&mut timely::worker::Worker) -> T + Send + Sync + 'static,
{
    use timely_communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
    use timely_communication::allocator::ProcessBuilder;
    use timely_communication::{AllocatorBuilder, Hooks};
    let timely::CommunicationConfig::Cluster {
        threads,
        process,
        addresses,
        ..
    } = config.communication
    else {
        return timely::execute(config, func)
            .map_err(|e| anyhow::anyhow!("cannot start the workers: {e}"));
    };
    let sockets = connect_cluster(&addresses, process)?;
    let hooks = Hooks::default();
    let local =
        ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) =
        initialize_networking_from_sockets(local, sockets, process, threads, hooks)
            .map_err(|e| anyhow::anyhow!("cannot start the cluster's networking: {e}"))?;
    let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    timely::execute::execute_from(builders, Box::new(guard), config.worker, func)
        .map_err(|e| anyhow::anyhow!("cannot start the workers: {e}"))
}

/// How long a process waits for the others of its cluster.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One socket to every other process of the cluster (`None` for this one): this process
/// connects to the lower-numbered ones and accepts the higher-numbered ones, each connection
/// opened by the connecting process's number as a little-endian u64 (timely's handshake).
fn connect_cluster(
    addresses: &[String],
    me: usize,
) -> anyhow::Result<Vec<Option<std::net::TcpStream>>> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let listeners = addresses[me]
        .split_whitespace()
        .map(|a| {
            let l =
                TcpListener::bind(a).map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut sockets: Vec<Option<TcpStream>> = (0..addresses.len()).map(|_| None).collect();
    for (peer, address) in addresses.iter().enumerate().take(me) {
        let mut stream = loop {
            match TcpStream::connect(address) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("process {peer} at {address} not reachable yet: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => anyhow::bail!(
                    "process {peer} of the cluster never answered at {address} ({e}); is it running?"
                ),
            }
        };
        stream.set_nodelay(true)?;
        stream.write_all(&(me as u64).to_le_bytes())?;
        sockets[peer] = Some(stream);
    }
    let mut waiting = addresses.len() - me - 1;
    while waiting > 0 {
        let mut accepted = false;
        for l in &listeners {
            match l.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_nodelay(true)?;
                    let mut id = [0u8; 8];
                    stream.read_exact(&mut id)?;
                    let peer = usize::try_from(u64::from_le_bytes(id)).unwrap_or(usize::MAX);
                    anyhow::ensure!(
                        peer > me && peer < addresses.len() && sockets[peer].is_none(),
                        "a connection to process {me} introduced itself as process {peer}: \
                         is another cluster using these addresses?"
                    );
                    sockets[peer] = Some(stream);
                    waiting -= 1;
                    accepted = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !accepted {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{waiting} process(es) of the cluster never connected to process {me} at {}",
                addresses[me]
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_contained_panic_is_an_error_not_the_end_of_the_process() {
        assert_eq!(super::contain(|| 5), Ok(5));
        let err = super::contain(|| -> u32 { panic!("index out of bounds") }).unwrap_err();
        assert!(err.contains("index out of bounds"), "{err}");
        assert!(
            !super::panic_is_contained(),
            "the guard is off again afterwards"
        );
    }
}
