//! The `run` job: opens the inputs of every market in the registry (Kafka, files or the
//! simulator), the sinks and the checkpoint store, and builds each market's dataflow on every
//! worker.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{bail, Context};
use timely::dataflow::operators::core::Concatenate;
use timely::dataflow::Scope;

use crate::checkpoint::{self, Checkpoints};
use crate::cli::{ClusterArgs, InputArgs, KafkaArgs, KafkaDelivery, OutputArgs, WindowArgs};
use crate::context::{operator_name, ChosenStreams, JobContext, Role};
use crate::hash::KeyGroups;
use crate::kafka::{ExactlyOnce, KafkaSettings, KafkaSink};
use crate::parquet::ParquetSink;
use crate::postgres::PostgresSink;
use crate::sink::{self, ConsoleSink, Emit, JsonlSink, ResultSink, SinkFactory};
use crate::source::file::FileFactory;
use crate::source::kafka::{plan_topic, KafkaFactory, ReadOptions};
use crate::stats::RunStats;
use crate::time::{now_ms, EventTime, WindowSpec};
use crate::window::Emission;

use super::sim::SimArgs;
use super::{market_names, streams, topics, Input, TopicNames, MARKETS};

fn describe(spec: &WindowSpec) -> String {
    let d = |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
    match spec.session_gap_ms {
        Some(gap) => format!("sessions, gap {}", d(gap)),
        None if spec.slide_ms != spec.size_ms => {
            format!("hopping {} every {}", d(spec.size_ms), d(spec.slide_ms))
        }
        None => format!("tumbling {}", d(spec.size_ms)),
    }
}

/// Arguments of `speed-layer run`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// A Kafka partition caught up and quiet this long stops holding the watermark back (0: never).
    #[arg(long, default_value = "30s", value_parser = crate::time::parse_duration, value_name = "DURATION")]
    pub idle_timeout: std::time::Duration,
    /// Kafka topic names by input topic: the `--topic-<market>` options the registry adds
    /// (`super::with_topic_options`), filled in from the command line.
    #[arg(skip)]
    pub topics: TopicNames,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub sim: SimArgs,
    #[command(flatten)]
    pub market: super::MarketArgs,
    /// Serve /metrics (Prometheus), /status (JSON) and a status page at `/` on HOST:PORT (a bare port binds 127.0.0.1).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Save consistent checkpoints in this folder and, when it holds one, resume from the latest
    /// (same settings; any worker and process count). Needs replayable input: Kafka, files or the
    /// simulator (not standard input).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Checkpoint every this much *event time* (epochs on a fixed grid, so every worker and
    /// process cuts at the same point without coordination).
    #[arg(long, default_value = "10s", value_parser = crate::time::parse_duration, value_name = "DURATION")]
    pub checkpoint_interval: std::time::Duration,
    /// On SIGINT/SIGTERM with --checkpoint, wait at most this long for the last checkpoint.
    #[arg(long, default_value = "30s", value_parser = crate::time::parse_duration, value_name = "DURATION")]
    pub stop_timeout: std::time::Duration,
    /// How often to log a progress line (records, rates, watermark, lag).
    #[arg(long, default_value = "10s", value_parser = crate::time::parse_duration, value_name = "DURATION")]
    pub log_interval: std::time::Duration,
}

/// Shows progress on a background thread (it ends with the process): a line on stderr rewritten
/// every second when stderr is a terminal (unless `NO_COLOR` or `TERM=dumb`), else a log line
/// every `every`.
fn spawn_progress_log(stats: RunStats, every: std::time::Duration) {
    use std::io::IsTerminal;
    if every.is_zero() {
        return;
    }
    // The line rewritten in place needs a terminal that takes escape sequences.
    let plain =
        std::env::var_os("NO_COLOR").is_some() || std::env::var("TERM").is_ok_and(|t| t == "dumb");
    if std::io::stderr().is_terminal() && !plain {
        std::thread::spawn(move || {
            let mut prev = stats.topics();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                eprint!("\r\x1b[2K{}\r", stats.progress_line(&prev, 1.0));
                prev = stats.topics();
            }
        });
        return;
    }
    std::thread::spawn(move || {
        let mut prev = stats.topics();
        let mut last = std::time::Instant::now();
        loop {
            std::thread::sleep(every);
            let secs = last.elapsed().as_secs_f64();
            tracing::info!("progress: {}", stats.progress_line(&prev, secs));
            prev = stats.topics();
            last = std::time::Instant::now();
        }
    });
}

/// Whether the job reads the built-in simulator (neither Kafka nor files given).
fn simulated(args: &RunArgs) -> bool {
    args.input.inputs.is_empty() && args.kafka.brokers.is_none()
}

/// Where each topic's messages come from: one [`Input`] per topic of the registry, in order.
struct Inputs {
    topics: Vec<Input>,
    describe: String,
}

impl Inputs {
    /// The inputs of market number `m` of the registry.
    fn of_market(&self, m: usize) -> &[Input] {
        let first: usize = MARKETS[..m].iter().map(|x| x.topics().len()).sum();
        &self.topics[first..first + MARKETS[m].topics().len()]
    }
}

/// The Kafka topic name of input topic `name` in this run.
fn kafka_name<'a>(args: &'a RunArgs, name: &'a str) -> &'a str {
    super::kafka_topic(&args.topics, name)
}

fn inputs(args: &RunArgs) -> anyhow::Result<Inputs> {
    if let (Some(settings), true) = (args.kafka.settings(), args.input.inputs.is_empty()) {
        let read_options = ReadOptions {
            idle_timeout: args.idle_timeout,
            ..ReadOptions::default()
        };
        let mut inputs = Vec::new();
        let mut plans = Vec::new();
        for (ordinal, t) in topics() {
            let name = kafka_name(args, t.name);
            let plan = plan_topic(&settings, name, args.input.start_from, args.input.until_end)?;
            plans.push(format!("{name}: {} partitions", plan.partitions.len()));
            inputs.push(Input {
                topic: name.to_string(),
                factory: Arc::new(KafkaFactory::new(
                    settings.clone(),
                    plan,
                    ordinal,
                    read_options.clone(),
                )),
            });
        }
        let describe = format!(
            "Kafka {} ({}, from {:?}{})",
            settings.brokers,
            plans.join(", "),
            args.input.start_from,
            if args.input.until_end {
                ", until the end offsets"
            } else {
                ""
            }
        );
        return Ok(Inputs {
            topics: inputs,
            describe,
        });
    }
    if args.input.until_end {
        bail!("--until-end applies to Kafka input (--brokers without --input); files always end");
    }
    if !args.input.inputs.is_empty() {
        let mut files: Vec<Vec<String>> = topics().map(|_| Vec::new()).collect();
        for (topic, path) in &args.input.inputs {
            let Some((ordinal, _)) =
                topics().find(|(_, t)| topic == t.name || topic == kafka_name(args, t.name))
            else {
                let names: Vec<&str> = topics().map(|(_, t)| t.name).collect();
                bail!(
                    "unknown topic '{topic}' in --input {topic}={path}: expected {}",
                    names.join(" or ")
                );
            };
            files[ordinal].push(path.clone());
        }
        if files.iter().flatten().filter(|p| *p == "-").count() > 1 {
            bail!("standard input (-) can feed only one topic");
        }
        let counts: Vec<String> = topics()
            .map(|(o, t)| format!("{} {}", files[o].len(), t.name))
            .collect();
        let describe = format!("files ({})", counts.join(", "));
        let mut inputs = Vec::new();
        for ((ordinal, t), paths) in topics().zip(files) {
            inputs.push(Input {
                topic: kafka_name(args, t.name).to_string(),
                factory: Arc::new(FileFactory::new(paths, ordinal)?),
            });
        }
        return Ok(Inputs {
            topics: inputs,
            describe,
        });
    }
    let start = args.sim.sim_start.unwrap_or_else(now_ms);
    let describe = format!(
        "the built-in simulator (speed {}x{}, seed {})",
        args.sim.sim_speed,
        args.sim.sim_duration.map_or(String::new(), |d| format!(
            ", {} of event time",
            humantime::format_duration(d)
        )),
        args.sim.sim_seed
    );
    let topics = args
        .sim
        .factories(start)?
        .into_iter()
        .map(|(name, f)| Input {
            topic: kafka_name(args, name).to_string(),
            factory: Arc::new(f),
        })
        .collect();
    Ok(Inputs { topics, describe })
}

/// The output lengths a checkpoint recorded: by sink (`files`, `parquet`), by stream.
type Resume = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>;

fn sinks(
    args: &OutputArgs,
    kafka: Option<KafkaSettings>,
    resume: Option<Resume>,
    stream_topics: std::collections::BTreeMap<String, String>,
    store: Option<Arc<Checkpoints>>,
    stats: RunStats,
) -> anyhow::Result<SinkFactory> {
    let dir = args.output.clone();
    let (emit_files, emit_kafka, emit_console) = (
        args.emit_files.unwrap_or(args.emit),
        args.emit_kafka.unwrap_or(args.emit),
        args.emit_console.unwrap_or(args.emit),
    );
    let parquet = args.sink_parquet.clone();
    let postgres = args.sink_postgres.clone();
    let emit_postgres = args.emit_postgres.unwrap_or(args.emit);
    let spool = match (&args.postgres_spool, &store) {
        (Some(d), _) => Some((d.clone(), false)),
        (None, Some(c)) => Some((c.dir().join("postgres-spool"), false)),
        (None, None) => Some((
            std::env::temp_dir().join(format!("speed-layer-spool-{}", std::process::id())),
            true,
        )),
    };
    let emit_parquet = args.emit_parquet.unwrap_or(args.emit);
    let roll = crate::parquet::Roll {
        rows: args.parquet_roll_rows.max(1),
        bytes: args.parquet_roll_bytes.max(1),
        span_ms: (args.parquet_roll_time.as_millis() as u64).max(1),
    };
    let console = args.console
        || (dir.is_none()
            && parquet.is_none()
            && postgres.is_none()
            && args.sink_kafka.is_none()
            && stream_topics.is_empty());
    let (results_topic, dead_topic) = (args.sink_kafka.clone(), args.dead_letter_topic.clone());
    let kafka = match (&results_topic, &dead_topic, stream_topics.is_empty(), kafka) {
        (None, None, true, _) => None,
        (_, _, _, Some(k)) => Some(k),
        (_, _, _, None) => {
            bail!("--sink-kafka, --dead-letter-topic and --alerts-topic need --brokers (or KAFKA_BROKERS)")
        }
    };
    let exactly_once = args.exactly_once || args.kafka_delivery == KafkaDelivery::ExactlyOnce;
    let exactly_once = match (exactly_once, &kafka, &store) {
        (false, _, _) => None,
        (true, None, _) => bail!("--exactly-once applies to the Kafka sink: give --sink-kafka"),
        (true, _, None) => {
            bail!("--exactly-once commits Kafka transactions at checkpoints: give --checkpoint DIR")
        }
        (true, Some(_), Some(c)) => {
            anyhow::ensure!(
                emit_kafka == Emit::Final,
                "--exactly-once delivers final results and corrections (the same in every \
                 replay); early updates cannot be (--emit-kafka updates or all)"
            );
            Some(Arc::clone(c))
        }
    };
    let streams = streams();
    Ok(Arc::new(move || {
        let mut s: Vec<(Box<dyn ResultSink>, Emit)> = Vec::new();
        let lengths = |sink: &str| {
            resume
                .as_ref()
                .map(|r| r.get(sink).cloned().unwrap_or_default())
        };
        if let Some(dir) = &dir {
            let files = match lengths("files") {
                Some(lengths) => JsonlSink::resume(dir, &streams, &lengths)?,
                None => JsonlSink::create(dir, &streams)?,
            };
            s.push((Box::new(files), emit_files));
        }
        if let Some(dir) = &parquet {
            let files = match lengths("parquet") {
                Some(lengths) => ParquetSink::resume(dir, &streams, &lengths, roll, store.clone())?,
                None => ParquetSink::create(dir, &streams, roll, store.clone())?,
            };
            s.push((Box::new(files), emit_parquet));
        }
        if let (Some(url), Some((dir, temporary))) = (&postgres, &spool) {
            let lengths = lengths("postgres");
            let db = PostgresSink::open(
                url,
                dir,
                &streams,
                lengths.as_ref(),
                *temporary,
                stats.clone(),
            )?;
            s.push((Box::new(db), emit_postgres));
        }
        if let Some(k) = &kafka {
            s.push((
                Box::new(KafkaSink::new(
                    k,
                    results_topic.clone(),
                    dead_topic.clone(),
                    stream_topics.clone(),
                    exactly_once.clone().map(|store| ExactlyOnce {
                        store,
                        lengths: lengths("kafka"),
                        stats: stats.clone(),
                    }),
                )?),
                emit_kafka,
            ));
        }
        if console {
            s.push((Box::new(ConsoleSink), emit_console));
        }
        Ok(s)
    }))
}

/// Early `update` results are computed only when some active sink asks for them.
fn emission(args: &RunArgs) -> Emission {
    let o = &args.output;
    let kafka = o.sink_kafka.is_some() || args.market.alerts_topic.is_some();
    let console = o.console
        || (o.output.is_none() && o.sink_parquet.is_none() && o.sink_postgres.is_none() && !kafka);
    let active = [
        (o.sink_postgres.is_some(), o.emit_postgres),
        (o.output.is_some(), o.emit_files),
        (o.sink_parquet.is_some(), o.emit_parquet),
        (kafka, o.emit_kafka),
        (console, o.emit_console),
    ];
    let updates = active
        .iter()
        .any(|(on, e)| *on && e.unwrap_or(o.emit).wants(crate::result::Kind::Update));
    Emission {
        trigger: updates.then_some(args.window.trigger),
    }
}

/// The checkpointing operators, by their names in the checkpoint layout.
fn checkpointed_operators() -> Vec<String> {
    let mut ops: Vec<String> = topics()
        .map(|(_, t)| operator_name(Role::Source, t.name))
        .collect();
    ops.extend(streams().iter().map(|s| operator_name(Role::Window, s)));
    ops.extend(streams().iter().map(|s| operator_name(Role::Sink, s)));
    ops.push(operator_name(Role::Sink, "dead_letter"));
    ops.extend(
        MARKETS
            .iter()
            .flat_map(|m| m.joins())
            .map(|s| operator_name(Role::Join, s)),
    );
    ops
}

/// What must not change between a checkpointed run and its restart.
fn fingerprint(
    args: &RunArgs,
    specs: &[WindowSpec],
    key_groups: KeyGroups,
) -> serde_json::Map<String, serde_json::Value> {
    let input = if simulated(args) {
        let s = &args.sim;
        format!(
            "simulator seed {} speed {} for {:?}",
            s.sim_seed, s.sim_speed, s.sim_duration
        )
    } else if args.input.inputs.is_empty() {
        let names: Vec<&str> = topics().map(|(_, t)| kafka_name(args, t.name)).collect();
        format!("kafka topics {}", names.join(", "))
    } else {
        let files: Vec<String> = args
            .input
            .inputs
            .iter()
            .map(|(t, p)| format!("{t}={p}"))
            .collect();
        files.join(" ")
    };
    let output = args.output.output.as_ref().map(|d| {
        std::path::absolute(d)
            .unwrap_or_else(|_| d.clone())
            .display()
            .to_string()
    });
    let mut m = serde_json::Map::new();
    // Worker and process counts may change between runs (a rescale); the key groups may not.
    m.insert("key_groups".into(), key_groups.0.into());
    m.insert(
        "checkpoint_interval_ms".into(),
        (args.checkpoint_interval.as_millis() as u64).into(),
    );
    for (market, spec) in MARKETS.iter().zip(specs) {
        m.insert(
            format!("{}_windows", market.name()),
            spec.fingerprint().into(),
        );
    }
    m.insert("input".into(), input.into());
    // Other streams mean other window operators, whose state the checkpoint holds.
    if !args.market.streams.is_empty() {
        let mut chosen = args.market.streams.clone();
        chosen.sort();
        chosen.dedup();
        m.insert("streams".into(), chosen.join(",").into());
    }
    if let Some(start) = args.sim.sim_start.filter(|_| simulated(args)) {
        m.insert("sim_start".into(), start.into());
    }
    m.insert("output".into(), output.into());
    m
}

/// The streams `--streams` chooses, and those built for them (with the streams they read, see
/// [`super::Market::reads`]); `None` for all of them.
fn chosen_streams(names: &[String]) -> anyhow::Result<Option<ChosenStreams>> {
    if names.is_empty() {
        return Ok(None);
    }
    let all = streams();
    let mut chosen = BTreeSet::new();
    for name in names {
        anyhow::ensure!(
            all.contains(&name.as_str()),
            "--streams: there is no output stream '{name}'; the streams are {}",
            all.join(", ")
        );
        chosen.insert(name.clone());
    }
    let mut built = chosen.clone();
    for m in MARKETS.iter().rev() {
        if m.streams().iter().any(|s| built.contains(*s)) {
            built.extend(m.reads().iter().map(|s| s.to_string()));
        }
    }
    Ok(Some(ChosenStreams { chosen, built }))
}

/// The job's key groups: those of the checkpoint it resumes, else `--key-groups` or the
/// default. Changing them on a resume, or having more workers than groups, is an error.
fn key_groups(args: &RunArgs) -> anyhow::Result<KeyGroups> {
    let c = &args.cluster;
    let stored = args
        .checkpoint
        .as_deref()
        .and_then(checkpoint::stored_fingerprint)
        .and_then(|f| f.get("key_groups").and_then(serde_json::Value::as_u64));
    let groups =
        match (stored, c.key_groups) {
            (Some(there), Some(now)) if there != now => bail!(
            "--key-groups {now}: the checkpoint in {} has {there} key groups, and they are fixed \
             when a job starts; leave --key-groups out to resume, or use a new --checkpoint folder",
            args.checkpoint.as_deref().unwrap_or(std::path::Path::new("")).display()
        ),
            (Some(there), _) => there,
            (None, now) => now.unwrap_or(KeyGroups::DEFAULT),
        };
    let workers = (c.workers * c.processes) as u64;
    anyhow::ensure!(
        workers <= groups,
        "{workers} workers but only {groups} key groups: workers beyond the key groups would \
         own no keys; start the job with --key-groups of at least {workers}"
    );
    Ok(KeyGroups(groups))
}

/// Opens the checkpoint folder (when asked) and finds the epoch to resume from.
fn checkpoints(
    args: &RunArgs,
    specs: &[WindowSpec],
    inputs: &Inputs,
    key_groups: KeyGroups,
) -> anyhow::Result<Option<Arc<Checkpoints>>> {
    let Some(dir) = &args.checkpoint else {
        return Ok(None);
    };
    for input in &inputs.topics {
        input.factory.resumable()?;
    }
    let c = &args.cluster;
    let store = Checkpoints::open(
        dir,
        u64::try_from(args.checkpoint_interval.as_millis()).unwrap_or(u64::MAX),
        c.workers * c.processes,
        c.process * c.workers..(c.process + 1) * c.workers,
        checkpointed_operators(),
        fingerprint(args, specs, key_groups),
    )?;
    if let Some(old) = store.rescaled_from() {
        tracing::info!(
            "rescaling: the checkpoint was written by {old} workers, this job has {}; each \
             worker takes the state of its key groups and the positions of its partitions",
            c.workers * c.processes
        );
    }
    match store.epoch() {
        Some(e) => tracing::info!(
            "resuming from the checkpoint at {} in {}",
            crate::time::format_ms(e),
            dir.display()
        ),
        None => tracing::info!(
            "no complete checkpoint in {}; starting from the beginning",
            dir.display()
        ),
    }
    Ok(Some(Arc::new(store)))
}

/// Builds every market's dataflow in `scope`, and the sinks all their results go to.
fn build<'s>(
    scope: Scope<'s, EventTime>,
    inputs: &Inputs,
    specs: &[WindowSpec],
    settings: &super::MarketArgs,
    sinks: SinkFactory,
    ctx: &JobContext,
) {
    let mut results = Vec::new();
    let mut dead = Vec::new();
    let mut exports = super::Exports::default();
    for (m, (market, spec)) in MARKETS.iter().zip(specs).enumerate() {
        // A market without inputs of its own exists for its streams alone.
        if market.topics().is_empty() && !market.streams().iter().any(|s| ctx.wants(s)) {
            continue;
        }
        let out = market.build(
            scope,
            inputs.of_market(m),
            *spec,
            settings,
            &mut exports,
            ctx,
        );
        results.extend(out.results.into_iter().filter(|(s, _)| ctx.writes(s)));
        dead.push(out.dead);
    }
    let dead = scope.concatenate(dead);
    sink::write_all(results, dead, sinks, ctx);
}

/// Runs the speed layer until its inputs end (files, `--until-end`, a bounded simulation) or
/// forever (Kafka, the simulator).
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    use crate::runtime::permanent;
    args.window
        .check_dataflows(&market_names())
        .map_err(permanent)?;
    let specs = MARKETS
        .iter()
        .map(|m| args.window.spec_for(m.name()))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(permanent)?;
    let config = args.cluster.timely_config().map_err(permanent)?;
    let mut args = args;
    if let (true, None, Some(dir)) = (simulated(&args), args.sim.sim_start, &args.checkpoint) {
        // A resumed simulation continues the same messages: it keeps its first start time.
        args.sim.sim_start = checkpoint::stored_fingerprint(dir)
            .and_then(|f| f.get("sim_start").and_then(serde_json::Value::as_u64))
            .or_else(|| Some(now_ms()));
    }
    // Kafka's metadata may come back after an outage; files and settings will not change.
    let from_kafka = args.kafka.settings().is_some() && args.input.inputs.is_empty();
    let inputs = Arc::new(inputs(&args).map_err(|e| if from_kafka { e } else { permanent(e) })?);
    if let (Some(dir), 0) = (&args.output.output, args.cluster.process) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    }
    tracing::info!(
        input = %inputs.describe,
        windows = %MARKETS
            .iter()
            .zip(&specs)
            .map(|(m, s)| format!("{} {}", m.name(), describe(s)))
            .collect::<Vec<_>>()
            .join(", "),
        lateness = %humantime::format_duration(args.window.lateness),
        workers = args.cluster.workers,
        processes = args.cluster.processes,
        process = args.cluster.process,
        "speed-layer starting"
    );
    let stats = RunStats::default();
    let key_groups = key_groups(&args).map_err(permanent)?;
    let ckpt = checkpoints(&args, &specs, &inputs, key_groups).map_err(permanent)?;
    let c = &args.cluster;
    let peers = c.workers * c.processes;
    stats.set_key_groups(crate::stats::KeyGroupStatus {
        groups: key_groups.0,
        workers: peers,
        local: (c.process * c.workers..(c.process + 1) * c.workers)
            .map(|w| (w, key_groups.owned(w, peers)))
            .collect(),
        rescaled_from: ckpt.as_ref().and_then(|s| s.rescaled_from()),
    });
    if let Some(addr) = &args.metrics_addr {
        let bound = crate::metrics::serve(
            addr,
            stats.clone(),
            args.cluster.process,
            ckpt.clone(),
            MARKETS.iter().flat_map(|m| m.pages()).copied().collect(),
        )?;
        tracing::info!("status page at http://{bound}/ (metrics at /metrics, JSON at /status)");
    }
    spawn_progress_log(stats.clone(), args.log_interval);
    let (summary_stats, process) = (stats.clone(), args.cluster.process);
    crate::runtime::stop_on_signal(
        move || {
            eprintln!(
                "speed-layer stopped (process {process}):\n{}",
                summary_stats.summary().trim_end()
            );
        },
        ckpt.clone().map(|c| c as Arc<dyn crate::runtime::Settling>),
        args.stop_timeout,
    )?;
    // The output files' lengths at the epoch resumed from (written by worker 0's sinks).
    let resume = match &ckpt {
        Some(c) if c.epoch().is_some() && args.cluster.process == 0 => {
            let mut lengths = Resume::new();
            for s in streams().iter().chain(&["dead_letter"]) {
                let op = operator_name(Role::Sink, s);
                for (sink, len) in c
                    .restored::<std::collections::BTreeMap<String, u64>>(&op, 0)?
                    .unwrap_or_default()
                {
                    lengths.entry(sink).or_default().insert(s.to_string(), len);
                }
            }
            Some(lengths)
        }
        _ => None,
    };
    let stream_topics = args
        .market
        .alerts_topic
        .iter()
        .map(|t| (super::cross::alerts::STREAM.to_string(), t.clone()))
        .collect();
    let sinks = sinks(
        &args.output,
        args.kafka.settings(),
        resume,
        stream_topics,
        ckpt.clone(),
        stats.clone(),
    )
    .map_err(crate::runtime::permanent)?;
    let ctx = JobContext {
        stats: stats.clone(),
        checkpoints: ckpt.clone(),
        emission: emission(&args),
        key_groups,
        local_workers: args.cluster.workers,
        streams: chosen_streams(&args.market.streams)
            .map_err(permanent)?
            .map(Arc::new),
    };
    let settings = args.market.clone();
    let guards = crate::runtime::execute(config, move |worker| {
        let (inputs, sinks) = (Arc::clone(&inputs), Arc::clone(&sinks));
        worker.dataflow::<EventTime, _, _>(|scope| {
            build(scope, &inputs, &specs, &settings, sinks, &ctx);
        });
    })?;
    let failures: Vec<String> = guards.join().into_iter().filter_map(Result::err).collect();
    if !failures.is_empty() {
        bail!("a worker failed: {}", failures.join("; "));
    }
    if let Some(c) = &ckpt {
        // The last parts (those covering the end of the input) are on the writer's queue.
        c.finish();
    }
    eprintln!(
        "speed-layer finished (process {}):\n{}",
        args.cluster.process,
        stats.summary().trim_end()
    );
    if let Some(c) = &ckpt {
        eprintln!("  {}", c.summary());
    }
    Ok(())
}
