//! The `speed-layer` command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use speed_layer::dataflows::sim::GenerateArgs;
use speed_layer::dataflows::{self, RunArgs};

// Many small, short-lived allocations cross worker threads; mimalloc keeps them off the page-fault path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Windowed market metrics from live exchange and prediction-market feeds, on timely dataflow.
#[derive(Parser)]
#[command(name = "speed-layer", version, about)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the speed layer (default: on the built-in simulator, results on the console).
    Run(Box<RunArgs>),
    /// Write the simulator's messages of every input topic to files (for tests, demos, benchmarks).
    Generate(GenerateArgs),
    /// Create, list or describe the Kafka topics.
    Topics(dataflows::ops::TopicsArgs),
    /// Write messages into Kafka from files or the simulator.
    Produce(Box<dataflows::ops::ProduceArgs>),
    /// Start the processes of a cluster here; restart them all from the last checkpoint when one dies.
    #[command(
        after_help = "To grow a running job (one process, or fewer workers): stop it \
        gracefully (Ctrl-C or SIGTERM: a final checkpoint), then start the bigger cluster on the \
        same --checkpoint folder, e.g.\n  speed-layer cluster -n 2 -w 2 -- --brokers kafka:9092 \
        --output out --checkpoint ckpt\nState moves by key group and partition; results are those \
        of an uninterrupted run."
    )]
    Cluster(speed_layer::supervisor::ClusterCommand),
}

fn main() -> ExitCode {
    // A panic on any thread ends the process: when a peer of a cluster dies, timely's network
    // threads panic and the workers would otherwise wait forever. Exiting lets a supervisor
    // (`speed-layer cluster`, systemd, Kubernetes) restart the job from its last checkpoint.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if speed_layer::runtime::panic_is_contained() {
            // Caught by `contain` and dead-lettered with its message.
            return;
        }
        report(info);
        eprintln!(
            "error: a speed-layer thread failed (see above); stopping this process \
             (a restart with the same --checkpoint resumes from the last checkpoint)"
        );
        std::process::exit(101);
    }));
    // The markets add their own options (`--topic-<market>`), so the command line is
    // assembled from the registry before it is parsed.
    let matches = dataflows::with_topic_options(Cli::command(), &["run", "produce"]).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid --log-level '{}': {e}", cli.log_level);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colours only on a terminal, and not when NO_COLOR asks for plain text (no-color.org).
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let command = cli.command.unwrap_or_else(|| {
        let args = Cli::parse_from(["speed-layer", "run"]);
        match args.command {
            Some(c) => c,
            None => unreachable!("'run' parses as the run command"),
        }
    });
    let result = match command {
        Command::Run(mut args) => {
            args.topics = dataflows::topic_names(matches.subcommand_matches("run"));
            dataflows::run(*args)
        }
        Command::Generate(args) => dataflows::sim::generate(&args),
        Command::Topics(args) => dataflows::ops::topics(&args),
        Command::Produce(mut args) => {
            args.topics = dataflows::topic_names(matches.subcommand_matches("produce"));
            dataflows::ops::produce(&args)
        }
        Command::Cluster(args) => speed_layer::supervisor::supervise(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<speed_layer::runtime::Permanent>() {
                ExitCode::from(speed_layer::runtime::EXIT_PERMANENT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
