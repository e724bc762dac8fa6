//! The market dataflows and their registry.
//!
//! A market is one folder here: its input topics, decoders, output streams, simulator and the
//! wiring of engine parts between them, declared by implementing [`Market`]. [`MARKETS`] lists
//! the markets; the job (`job.rs`), `generate` (`sim.rs`) and the Kafka commands (`ops.rs`)
//! loop over it. Adding a market is a new folder and one line in [`MARKETS`]; the engine (`src/`)
//! does not change.

pub mod binance;
pub mod cross;
pub mod job;
mod json;
pub mod ops;
pub mod polymarket;
pub mod sim;

use std::collections::BTreeMap;
use std::sync::Arc;

use timely::dataflow::{Scope, StreamVec};

use crate::context::JobContext;
use crate::result::{DeadLetter, ResultLine};
use crate::source::generated::GeneratedTopic;
use crate::source::ReaderFactory;
use crate::time::{EventTime, WindowSpec};

pub use job::{run, RunArgs};

/// Settings of the market dataflows (`speed-layer run`).
#[derive(clap::Args, Clone, Debug)]
pub struct MarketArgs {
    /// The book of an outcome token with no event for this long (event time) is dropped; its
    /// next event starts a new one.
    #[arg(long, default_value = "1h", value_parser = crate::time::parse_duration, value_name = "DURATION")]
    pub book_ttl: std::time::Duration,
    /// A market metadata version applies to windows ending at most this long after it (a
    /// market not republished for longer loses its title).
    #[arg(long, default_value = "1d", value_parser = crate::time::parse_duration, value_name = "DURATION")]
    pub metadata_ttl: std::time::Duration,
    /// Alert rules: thresholds and cooldowns (TOML or YAML; see the README). Default: the
    /// contract's rules.
    #[arg(long = "alerts", value_name = "FILE", value_parser = cross::alerts::Rules::from_file)]
    pub alerts: Option<cross::alerts::Rules>,
    /// Also write alerts to this Kafka topic (instead of the results topic).
    #[arg(long, value_name = "TOPIC")]
    pub alerts_topic: Option<String>,
    /// Compute only these output streams (comma-separated; default: all). The dataflows of
    /// the others are not built; every input is still read and checked.
    #[arg(long, value_delimiter = ',', value_name = "STREAM,...")]
    pub streams: Vec<String>,
}

/// One input topic of a market.
pub struct TopicSpec {
    /// Its name: the default Kafka topic, the `TOPIC` of `--input TOPIC=PATH`, the file names
    /// of `generate`.
    pub name: &'static str,
    /// The command-line option that renames its Kafka topic (`topic-binance`).
    pub option: &'static str,
    /// What its messages are, for the option's help.
    pub about: &'static str,
    /// Whether one message value holds several newline-separated frames (`produce
    /// --group-frames` packs file lines that way).
    pub multi_frame: bool,
    /// Its simulator.
    pub simulated: GeneratedTopic,
}

/// Where one input topic's messages come from in this run.
#[derive(Clone)]
pub(crate) struct Input {
    /// The topic's name in this run (renamed Kafka topics included): counters, dead letters.
    pub topic: String,
    /// Opens the reader of each worker.
    pub factory: Arc<dyn ReaderFactory>,
}

/// Streams one market's dataflow offers the markets built after it (the cross-market
/// dataflows): filled in by `build`, in registry order.
#[derive(Default)]
pub(crate) struct Exports<'s> {
    /// Kline rows (`binance`).
    pub klines: Option<StreamVec<'s, EventTime, crate::time::Timed<binance::Kline>>>,
    /// Outcome-token window results, before metadata (`polymarket`).
    pub tokens: Option<StreamVec<'s, EventTime, ResultLine>>,
    /// Market metadata versions (`polymarket`).
    pub markets: Option<StreamVec<'s, EventTime, crate::time::Timed<polymarket::metadata::Market>>>,
}

/// What a market's dataflow produces: its result streams by name, and its dead letters.
pub(crate) struct Outputs<'s> {
    /// One stream of results per output stream the market declares.
    pub results: Vec<(&'static str, StreamVec<'s, EventTime, ResultLine>)>,
    /// Malformed and late records of every input topic of the market.
    pub dead: StreamVec<'s, EventTime, DeadLetter>,
}

/// A market: what it reads, what it writes, how it simulates its feed, and how its dataflow is
/// built from engine parts.
pub(crate) trait Market: Sync {
    /// The dataflow's name: `--window NAME=…`, the checkpoint names of its sources.
    fn name(&self) -> &'static str;
    /// The input topics, in order (`build` receives one [`Input`] per topic, in this order).
    fn topics(&self) -> &'static [TopicSpec];
    /// The output streams (file names, table titles, Kafka `stream` headers).
    fn streams(&self) -> &'static [&'static str];
    /// Kafka topics `topics create` makes for this market: its input topics by default.
    fn kafka_topics(&self) -> Vec<&'static str> {
        self.topics().iter().map(|t| t.name).collect()
    }
    /// Output streams joined with reference data (`enrich::as_of`), whose join state is
    /// checkpointed.
    fn joins(&self) -> &'static [&'static str] {
        &[]
    }
    /// Streams of earlier markets this market's dataflows read (built when it is).
    fn reads(&self) -> &'static [&'static str] {
        &[]
    }
    /// Pages the status server adds for this market (a market view).
    fn pages(&self) -> &'static [crate::metrics::Page] {
        &[]
    }
    /// Builds the market's dataflow in `scope` from its `inputs`, in windows of `spec`.
    fn build<'s>(
        &self,
        scope: Scope<'s, EventTime>,
        inputs: &[Input],
        spec: WindowSpec,
        settings: &MarketArgs,
        exports: &mut Exports<'s>,
        ctx: &JobContext,
    ) -> Outputs<'s>;
}

/// Every market, in order: the order of topic numbers (the partition assignment rule), of
/// result tables and of output files.
pub(crate) static MARKETS: &[&dyn Market] =
    &[&binance::Binance, &polymarket::Polymarket, &cross::Cross];

/// Every input topic of every market with its number in the job (0, 1, … in registry order),
/// which the partition assignment rule uses.
pub fn topics() -> impl Iterator<Item = (usize, &'static TopicSpec)> {
    MARKETS.iter().flat_map(|m| m.topics()).enumerate()
}

/// Every output stream, in registry order.
pub fn streams() -> Vec<&'static str> {
    MARKETS.iter().flat_map(|m| m.streams()).copied().collect()
}

/// The names of the markets (the dataflows of `--window NAME=…`).
pub(crate) fn market_names() -> Vec<&'static str> {
    MARKETS.iter().map(|m| m.name()).collect()
}

/// Kafka topic names of this run, by input topic name (`--topic-binance NAME`, …).
pub(crate) type TopicNames = BTreeMap<&'static str, String>;

/// The Kafka topic of input topic `name` in this run: its renamed name if any, else its own.
pub fn kafka_topic<'a>(names: &'a TopicNames, name: &'a str) -> &'a str {
    names.get(name).map_or(name, String::as_str)
}

/// Adds an option renaming each input topic's Kafka topic (`--topic-binance NAME`) to the
/// subcommands `subcommands` of `cmd`: the options come from the registry, so a new market
/// brings its own.
pub fn with_topic_options(mut cmd: clap::Command, subcommands: &[&str]) -> clap::Command {
    for sub in subcommands {
        cmd = cmd.mut_subcommand(*sub, |mut c| {
            for (_, t) in topics() {
                c = c.arg(
                    clap::Arg::new(t.option)
                        .long(t.option)
                        .value_name("NAME")
                        .default_value(t.name)
                        .help(format!("Kafka topic with {}", t.about)),
                );
            }
            c
        });
    }
    cmd
}

/// The Kafka topic names given with [`with_topic_options`]' options (defaults without `m`).
pub fn topic_names(m: Option<&clap::ArgMatches>) -> TopicNames {
    topics()
        .map(|(_, t)| {
            let given = m.and_then(|m| m.get_one::<String>(t.option).cloned());
            (t.name, given.unwrap_or_else(|| t.name.to_string()))
        })
        .collect()
}
