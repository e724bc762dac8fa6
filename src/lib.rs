//! speed-layer: windowed market metrics on timely dataflow.
//!
//! `src/` is the engine (sources, time and watermarks, windows, sinks, cluster configuration);
//! it knows nothing of any market. `dataflows/` holds the market dataflows built from it.

pub mod aggregate;
pub mod checkpoint;
pub mod cli;
pub mod kafka;
pub mod metrics;
pub mod session;
pub mod sink;
pub mod source;
pub mod stats;
pub mod supervisor;
pub mod text;
pub mod time;
pub mod window;

#[path = "../dataflows/mod.rs"]
pub mod dataflows;

/// Reports an unrecoverable error inside a running dataflow and ends the process with status 1.
///
/// Used where a worker cannot continue (an output cannot be written, an input cannot be read):
/// stopping is the only way not to emit windows computed from incomplete data.
pub fn fatal(msg: &str) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    eprintln!("error: {msg}");
    std::process::exit(1);
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
