//! speed-layer: windowed market metrics on timely dataflow.
//!
//! `src/` is the engine and knows no market: a record enters in [`source`], time and the one
//! lateness rule live in [`time`], a window closes in [`window`] (one operator shell over fixed
//! windows and sessions), a result leaves through [`result`] and [`sink`]. Around them:
//! [`context`] (what every operator gets), [`runtime`] (signals, stop, fatal errors, the panic
//! guard), [`checkpoint`], [`stats`] and [`metrics`], [`supervisor`] and [`cli`].
//! `dataflows/` defines the markets (one folder each, and a registry) from these parts.

pub mod aggregate;
pub mod checkpoint;
pub mod cli;
pub mod context;
pub mod enrich;
pub mod hash;
pub mod kafka;
pub mod kafka_txn;
pub mod metrics;
pub mod parquet;
pub mod postgres;
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
