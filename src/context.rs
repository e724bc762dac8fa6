//! What every operator of a job gets: the run's counters, the checkpoint store with the
//! operator's stable name in it, and the emission settings — one value instead of arguments
//! threaded by hand. Checkpoint operator names are made here and only here.

use std::sync::Arc;

use crate::checkpoint::{Checkpoints, Handle};
use crate::hash::KeyGroups;
use crate::stats::RunStats;

/// The shared plumbing of one job (one process), cloned into every operator it builds.
#[derive(Clone)]
pub struct JobContext {
    /// Counters, partition status and latest results, read by `/metrics`, `/status` and the
    /// summary.
    pub stats: RunStats,
    /// The checkpoint store, when the job checkpoints.
    pub checkpoints: Option<Arc<Checkpoints>>,
    /// When window operators emit beyond final results.
    pub emission: Emission,
    /// How keys are spread over workers.
    pub key_groups: KeyGroups,
    /// Workers per process: worker `i` shares memory with workers `i / n * n ..` of the next `n`.
    pub local_workers: usize,
    /// The output streams chosen, when not all of them.
    pub streams: Option<Arc<ChosenStreams>>,
}

/// The output streams a job computes when not all of them (`--streams`).
#[derive(Debug, Default)]
pub struct ChosenStreams {
    /// Written to the sinks.
    pub chosen: std::collections::BTreeSet<String>,
    /// Built: the chosen ones and those they read.
    pub built: std::collections::BTreeSet<String>,
}

/// What an operator does, the first half of its name in the checkpoint layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads one input topic (named after the topic).
    Source,
    /// Aggregates one output stream in windows (named after the stream).
    Window,
    /// Writes one output stream, or the dead letters.
    Sink,
    /// Joins one output stream with reference data (named after the stream).
    Join,
}

/// The operator's stable name in the checkpoint layout: `source-<topic>`, `window-<stream>`,
/// `sink-<stream>`, `join-<stream>`.
pub(crate) fn operator_name(role: Role, name: &str) -> String {
    let role = match role {
        Role::Source => "source",
        Role::Window => "window",
        Role::Sink => "sink",
        Role::Join => "join",
    };
    format!("{role}-{name}")
}

/// One operator's share of the [`JobContext`].
#[derive(Clone)]
pub struct OperatorContext {
    /// The job's counters.
    pub stats: RunStats,
    /// Where the operator saves its state, when the job checkpoints.
    pub ckpt: Option<Handle>,
    /// When window operators emit beyond final results.
    pub emission: Emission,
    /// How keys are spread over workers.
    pub key_groups: KeyGroups,
    /// Workers per process (see [`JobContext::local_workers`]).
    pub local_workers: usize,
}

impl JobContext {
    /// Whether the dataflow of output stream `stream` is to be built.
    pub fn wants(&self, stream: &str) -> bool {
        self.streams
            .as_ref()
            .is_none_or(|s| s.built.contains(stream))
    }

    /// Whether output stream `stream` goes to the sinks.
    pub fn writes(&self, stream: &str) -> bool {
        self.streams
            .as_ref()
            .is_none_or(|s| s.chosen.contains(stream))
    }

    /// The context of the operator `role` for `name` (a market for sources, a stream for
    /// windows and sinks).
    pub fn operator(&self, role: Role, name: &str) -> OperatorContext {
        OperatorContext {
            stats: self.stats.clone(),
            ckpt: self.checkpoints.clone().map(|store| Handle {
                store,
                op: operator_name(role, name),
            }),
            emission: self.emission,
            key_groups: self.key_groups,
            local_workers: self.local_workers,
        }
    }
}

/// When a window operator emits beyond final results.
#[derive(Clone, Copy, Debug, Default)]
pub struct Emission {
    /// Emit `update` results of changed open windows this often (processing time); `None`
    /// when no sink wants updates.
    pub trigger: Option<std::time::Duration>,
}
