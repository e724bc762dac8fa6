//! Command-line argument groups shared by the engine's commands (inputs, Kafka, windows,
//! outputs, cluster). The market dataflows add their own groups; `main.rs` assembles them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::kafka::{parse_override, KafkaSettings};
use crate::sink::Emit;
use crate::source::kafka::StartFrom;
use crate::time::{parse_duration, WindowSpec};

/// Kafka connection options.
#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT]; reads from Kafka instead of files or the simulator.
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        value_name = "HOST:PORT,...",
        global = true
    )]
    pub brokers: Option<String>,
    /// Any librdkafka property, as kcat's -X (SASL, SSL, fetch sizes); repeatable.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_override, global = true)]
    pub kafka_property: Vec<(String, String)>,
    /// Consumer group id; offsets are committed to it for lag tools (no group rebalancing is used).
    #[arg(long, default_value = "speed-layer", value_name = "ID", global = true)]
    pub group_id: String,
}

impl KafkaArgs {
    /// The settings, when `--brokers` was given.
    pub fn settings(&self) -> Option<KafkaSettings> {
        self.brokers.as_ref().map(|b| KafkaSettings {
            brokers: b.clone(),
            overrides: self.kafka_property.clone(),
            group_id: self.group_id.clone(),
        })
    }
}

/// Where input comes from, when not from the simulator.
#[derive(Args, Clone, Debug)]
pub struct InputArgs {
    /// Read a topic from a file instead of Kafka: one message value per line, `-` for stdin; repeatable.
    #[arg(long = "input", value_name = "TOPIC=PATH", value_parser = parse_input)]
    pub inputs: Vec<(String, String)>,
    /// Where Kafka reading starts.
    #[arg(long, value_parser = start_from_parser(), default_value = "latest")]
    pub start_from: StartFrom,
    /// Stop once every Kafka partition reaches the end offset it had at start-up (a bounded backfill).
    #[arg(long)]
    pub until_end: bool,
}

/// `--emit` values: the engine's [`Emit`] carries no clap derive, so the names live here.
fn emit_parser() -> impl clap::builder::TypedValueParser<Value = Emit> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new("final")
            .help("Final results and their corrections: each settled value of a window"),
        PossibleValue::new("updates").help("Only the early `update` results of open windows"),
        PossibleValue::new("all").help("Updates, finals and corrections"),
    ])
    .map(|s| match s.as_str() {
        "updates" => Emit::Updates,
        "all" => Emit::All,
        _ => Emit::Final,
    })
}

/// `--start-from` values.
fn start_from_parser() -> impl clap::builder::TypedValueParser<Value = StartFrom> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new("earliest").help("The oldest retained offset of each partition"),
        PossibleValue::new("latest")
            .help("The end of each partition at start-up (only new messages)"),
    ])
    .map(|s| match s.as_str() {
        "earliest" => StartFrom::Earliest,
        _ => StartFrom::Latest,
    })
}

/// Parses a `TOPIC=PATH` argument.
pub(crate) fn parse_input(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((t, p)) if !t.is_empty() && !p.is_empty() => Ok((t.to_string(), p.to_string())),
        _ => Err(format!(
            "expected TOPIC=PATH (for example trades=trades.jsonl), got '{s}'"
        )),
    }
}

/// Window options.
#[derive(Args, Clone, Debug)]
pub struct WindowArgs {
    /// Window length; `DATAFLOW=DURATION` sets it for one dataflow only (repeatable).
    #[arg(long, default_value = "60s", value_parser = parse_scoped_duration, value_name = "[DATAFLOW=]DURATION")]
    pub window: Vec<Scoped<Duration>>,
    /// Out-of-orderness the watermark waits for: it trails the largest event time seen in each
    /// partition by this much (`--lateness` is its other name).
    #[arg(long = "max-delay", visible_alias = "lateness", default_value = "2m", value_parser = parse_duration, value_name = "DURATION")]
    pub lateness: Duration,
    /// How long after a window's final result late records still correct it (0: never).
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub allowed_lateness: Duration,
    /// A record whose event time is further ahead of the wall clock than this is malformed
    /// (`event time in the future`: a producer writing µs instead of ms) and never moves a watermark.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub max_future: Duration,
    /// Hopping windows: a --window-long window starts every --slide (must divide --window);
    /// `DATAFLOW=DURATION` for one dataflow only.
    #[arg(long, value_parser = parse_scoped_duration, value_name = "[DATAFLOW=]DURATION")]
    pub slide: Vec<Scoped<Duration>>,
    /// Session windows instead: a key's session closes after this much event time without
    /// records; `DATAFLOW=DURATION` for one dataflow only.
    #[arg(long, value_parser = parse_scoped_duration, value_name = "[DATAFLOW=]DURATION")]
    pub session_gap: Vec<Scoped<Duration>>,
    /// How often `update` results of changed open windows go out (processing time).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub trigger: Duration,
}

/// A value for every dataflow, or (`DATAFLOW=VALUE`) for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scoped<T> {
    /// The dataflow it applies to; `None` for all.
    pub dataflow: Option<String>,
    /// The value.
    pub value: T,
}

/// Parses `[DATAFLOW=]DURATION`.
pub(crate) fn parse_scoped_duration(s: &str) -> Result<Scoped<Duration>, String> {
    match s.split_once('=') {
        Some((d, v)) => Ok(Scoped {
            dataflow: Some(d.trim().to_string()),
            value: parse_duration(v)?,
        }),
        None => Ok(Scoped {
            dataflow: None,
            value: parse_duration(s)?,
        }),
    }
}

/// The value for `dataflow`: its own if given, else the one for all.
fn pick<T: Copy>(values: &[Scoped<T>], dataflow: &str) -> Option<T> {
    let own = values
        .iter()
        .rev()
        .find(|v| v.dataflow.as_deref() == Some(dataflow));
    own.or_else(|| values.iter().rev().find(|v| v.dataflow.is_none()))
        .map(|v| v.value)
}

impl WindowArgs {
    /// The window spec of one dataflow, validated: tumbling, hopping or session windows.
    pub fn spec_for(&self, dataflow: &str) -> anyhow::Result<WindowSpec> {
        let size = pick(&self.window, dataflow).unwrap_or(Duration::from_secs(60));
        let spec = WindowSpec::new(size, self.lateness)?
            .with_allowed_lateness(self.allowed_lateness)?
            .with_max_future(self.max_future)?;
        match (
            pick(&self.slide, dataflow),
            pick(&self.session_gap, dataflow),
        ) {
            (Some(_), Some(_)) => anyhow::bail!(
                "{dataflow}: give --slide (hopping) or --session-gap (sessions), not both"
            ),
            (Some(slide), None) => spec.with_slide(slide),
            (None, Some(gap)) => spec.with_session_gap(gap),
            (None, None) => Ok(spec),
        }
    }

    /// Checks that every `DATAFLOW=` prefix names one of `known`.
    pub fn check_dataflows(&self, known: &[&str]) -> anyhow::Result<()> {
        let scoped = self
            .window
            .iter()
            .chain(&self.slide)
            .chain(&self.session_gap);
        for d in scoped.filter_map(|v| v.dataflow.as_deref()) {
            anyhow::ensure!(
                known.contains(&d),
                "unknown dataflow '{d}' (expected one of {})",
                known.join(", ")
            );
        }
        Ok(())
    }
}

/// Output options.
#[derive(Args, Clone, Debug)]
pub struct OutputArgs {
    /// Write JSON-lines results and dead letters into this folder.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Print result tables on the console too (the default when no other output is given).
    #[arg(long)]
    pub console: bool,
    /// Write every final window result to this Kafka topic (keyed by its serving-layer row key).
    #[arg(long, value_name = "TOPIC", num_args = 0..=1, default_missing_value = "processed_metrics")]
    pub sink_kafka: Option<String>,
    /// Send malformed and late records to this Kafka topic (the reason in a header).
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// Kafka delivery: exactly-once writes results and dead letters in one Kafka transaction
    /// per checkpoint epoch (needs --checkpoint; `read_committed` consumers see each once);
    /// idempotent (the default) writes at once, keyed so a compacted topic keeps each once.
    #[arg(long, value_enum, default_value = "idempotent", value_name = "MODE")]
    pub kafka_delivery: KafkaDelivery,
    /// Shorthand for --kafka-delivery exactly-once.
    #[arg(long)]
    pub exactly_once: bool,
    /// What every sink receives: final (final results and their corrections), updates (early
    /// results of open windows only) or all.
    #[arg(long, value_parser = emit_parser(), default_value = "final")]
    pub emit: Emit,
    /// What the console receives (overrides --emit).
    #[arg(long, value_parser = emit_parser())]
    pub emit_console: Option<Emit>,
    /// What the --output files receive (overrides --emit).
    #[arg(long, value_parser = emit_parser())]
    pub emit_files: Option<Emit>,
    /// What the Kafka sink receives (overrides --emit).
    #[arg(long, value_parser = emit_parser())]
    pub emit_kafka: Option<Emit>,
    /// Upsert results and dead letters into PostgreSQL (a libpq URL or key=value string:
    /// `postgres://user:password@host/db?sslmode=require`), a table per stream.
    #[arg(
        long,
        env = "SPEED_LAYER_POSTGRES",
        value_name = "URL",
        hide_env_values = true
    )]
    pub sink_postgres: Option<String>,
    /// What the PostgreSQL sink receives (overrides --emit).
    #[arg(long, value_parser = emit_parser())]
    pub emit_postgres: Option<Emit>,
    /// Folder of the PostgreSQL sink's spool (rows waiting for the database). Default: inside
    /// the --checkpoint folder, else a temporary folder.
    #[arg(long, value_name = "DIR")]
    pub postgres_spool: Option<PathBuf>,
    /// Write results and dead letters as Parquet files into this folder
    /// (`DIR/<stream>/date=YYYY-MM-DD/part-….parquet`; exactly once with --checkpoint).
    #[arg(long, value_name = "DIR")]
    pub sink_parquet: Option<PathBuf>,
    /// What the Parquet sink receives (overrides --emit).
    #[arg(long, value_parser = emit_parser())]
    pub emit_parquet: Option<Emit>,
    /// A Parquet file rolls at this many rows.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub parquet_roll_rows: usize,
    /// A Parquet file rolls at about this many bytes of rows (staged as JSON).
    #[arg(long, default_value_t = 128 << 20, value_name = "BYTES")]
    pub parquet_roll_bytes: u64,
    /// A Parquet file rolls when its rows' windows span this much event time (and at a new
    /// date).
    #[arg(long, default_value = "1h", value_parser = crate::time::parse_duration, value_name = "DURATION")]
    pub parquet_roll_time: std::time::Duration,
}

/// How the Kafka sink delivers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaDelivery {
    /// At once, with an idempotent producer, keyed by row key (at-least-once; a compacted
    /// topic or an upserting consumer sees each result once).
    Idempotent,
    /// In one Kafka transaction per checkpoint epoch (exactly-once for `read_committed`
    /// consumers, in any topic).
    ExactlyOnce,
}

/// Parallelism: threads per process and the processes of a cluster.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long, default_value_t = 1, value_name = "N")]
    pub workers: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long, default_value_t = 1, value_name = "N")]
    pub processes: usize,
    /// This process's index, 0..N-1.
    #[arg(short = 'p', long, default_value_t = 0, value_name = "I")]
    pub process: usize,
    /// File with one HOST:PORT per line, in process order (default: localhost:2101, 2102, ...).
    #[arg(long, value_name = "PATH")]
    pub hostfile: Option<PathBuf>,
    /// Key groups: keys are spread over workers through this many groups, so a checkpoint
    /// resumes with any worker and process count up to it. Fixed when a job starts (a resumed
    /// job keeps its checkpoint's; default 720).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub key_groups: Option<u64>,
}

impl ClusterArgs {
    /// The timely configuration for these arguments.
    pub fn timely_config(&self) -> anyhow::Result<timely::Config> {
        use timely::CommunicationConfig;
        anyhow::ensure!(self.workers >= 1, "--workers must be at least 1");
        anyhow::ensure!(self.processes >= 1, "--processes must be at least 1");
        anyhow::ensure!(
            self.process < self.processes,
            "--process {} is out of range for --processes {} (use 0..{})",
            self.process,
            self.processes,
            self.processes - 1
        );
        let communication = if self.processes == 1 {
            CommunicationConfig::Process(self.workers)
        } else {
            let addresses = match &self.hostfile {
                Some(path) => read_hostfile(path)?,
                None => (0..self.processes)
                    .map(|i| format!("localhost:{}", 2101 + i))
                    .collect(),
            };
            anyhow::ensure!(
                addresses.len() >= self.processes,
                "the hostfile lists {} hosts but --processes is {}",
                addresses.len(),
                self.processes
            );
            CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: addresses[..self.processes].to_vec(),
                report: false,
                zerocopy: false,
            }
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// Reads a hostfile: one `host:port` per line; blank lines and `#` comments are skipped.
pub(crate) fn read_hostfile(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read hostfile {}: {e}", path.display()))?;
    let mut hosts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let ok = line
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        anyhow::ensure!(
            ok,
            "hostfile {} line {}: expected HOST:PORT, got '{line}'",
            path.display(),
            i + 1
        );
        hosts.push(line.to_string());
    }
    Ok(hosts)
}
