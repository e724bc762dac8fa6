//! speed-layer: windowed market metrics on timely dataflow.
//!
//! `src/` is the engine (sources, time and watermarks, windows, sinks, cluster configuration);
//! it knows nothing of any market. `dataflows/` holds the market dataflows built from it.

pub mod aggregate;
pub mod checkpoint;
pub mod cli;
pub mod context;
pub mod hash;
pub mod kafka;
pub mod metrics;
pub mod result;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod stats;
pub mod supervisor;
pub mod text;
pub mod time;
pub mod window;

#[path = "../dataflows/mod.rs"]
pub mod dataflows;
