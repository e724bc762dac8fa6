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
