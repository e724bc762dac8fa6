//! The built-in market simulator's options and `speed-layer generate`. Each market supplies its
//! own generators (`<market>/sim.rs`); the engine paces them (`source::generated`). Simulated
//! partitions follow the same watermark rules as Kafka or files.

use std::time::Duration;

use crate::source::generated::{GeneratedFactory, Pacing};
use crate::source::{ReadStatus, ReaderFactory};
use crate::time::{parse_duration, EventTime};

/// Simulator options (used when neither `--brokers` nor `--input` is given).
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Simulator: event time runs this many times faster than wall time (0 = as fast as possible).
    #[arg(long, default_value_t = 20.0, value_name = "FACTOR")]
    pub sim_speed: f64,
    /// Simulator: stop after this much event time (default: run until interrupted).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub sim_duration: Option<Duration>,
    /// Simulator: random seed (the same seed and start give the same messages).
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub sim_seed: u64,
    /// Simulator: event time of the first message, epoch ms (default: now).
    #[arg(long, value_name = "MS")]
    pub sim_start: Option<u64>,
}

impl SimArgs {
    /// The pacing of a simulation starting at `start`.
    pub fn pacing(&self, start: EventTime) -> Pacing {
        Pacing {
            speed: self.sim_speed,
            seed: self.sim_seed,
            start,
            end: self
                .sim_duration
                .map(|d| start.saturating_add(d.as_millis() as u64)),
        }
    }

    /// The simulated input of every topic of every market, with its topic name.
    pub fn factories(
        &self,
        start: EventTime,
    ) -> anyhow::Result<Vec<(&'static str, GeneratedFactory)>> {
        super::topics()
            .map(|(ordinal, t)| {
                GeneratedFactory::new(t.simulated, ordinal, self.pacing(start)).map(|f| (t.name, f))
            })
            .collect()
    }
}

/// Underlyings the simulators share (Binance symbols; Polymarket up/down markets on them), with
/// a starting price and the slug prefix of their up/down markets.
pub(crate) const UNDERLYINGS: [(&str, f64, &str, &str); 4] = [
    ("BTCUSDT", 96_000.0, "btc", "Bitcoin"),
    ("ETHUSDT", 3_400.0, "eth", "Ethereum"),
    ("SOLUSDT", 180.0, "sol", "Solana"),
    ("XRPUSDT", 2.3, "xrp", "XRP"),
];

/// The simulated spot price of underlying `u` at `t`: one deterministic path per seed, so the
/// Binance simulator trades it and the Polymarket simulator's up/down markets price it (their
/// Up tokens follow the spot against its price at the market's start). Cycles from minutes to
/// days give per-minute moves of about 0.1 %, plus a little noise every 10 s, and now and then
/// (about once an hour per underlying) a sudden move of 0.4–0.9 % that fades over minutes: the
/// anomaly the `return_zscore` alert is for, which the up/down markets follow with a lag.
pub(crate) fn spot(u: usize, seed: u64, t: EventTime) -> f64 {
    let mut rng = fastrand::Rng::with_seed(seed ^ (0x5107 + u as u64 * 0x9E37_79B9));
    let p0 = UNDERLYINGS[u].1 * (0.95 + 0.1 * rng.f64());
    let tau = std::f64::consts::TAU;
    let mut x = 0.0;
    for (period_min, amp) in [
        (9.0, 0.0012),
        (27.0, 0.003),
        (83.0, 0.006),
        (300.0, 0.012),
        (1900.0, 0.03),
    ] {
        let phase = rng.f64() * tau;
        x += amp * (tau * t as f64 / (period_min * 60_000.0) + phase).sin();
    }
    let bucket = t / 10_000;
    let noise =
        fastrand::Rng::with_seed(seed ^ bucket.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ u as u64)
            .f64();
    p0 * (x + (noise - 0.5) * 0.0006 + shock(u, seed, t)).exp()
}

/// The fading sudden moves of underlying `u` at `t` (log price): in each 20-minute slot, one
/// chance in three of a jump at a random moment, decaying with a 6-minute time constant.
fn shock(u: usize, seed: u64, t: EventTime) -> f64 {
    const SLOT: EventTime = 20 * 60_000;
    let slot = t / SLOT;
    (slot.saturating_sub(1)..=slot)
        .map(|k| {
            let mut rng = fastrand::Rng::with_seed(
                seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (0xA11E + u as u64),
            );
            let (chance, at, size, sign) = (rng.f64(), rng.u64(0..SLOT), rng.f64(), rng.bool());
            let at = k * SLOT + at;
            if chance >= 1.0 / 3.0 || t < at {
                return 0.0;
            }
            let jump = (0.004 + 0.005 * size) * if sign { 1.0 } else { -1.0 };
            jump * (-((t - at) as f64) / 360_000.0).exp()
        })
        .sum()
}

/// Arguments of `speed-layer generate`.
#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    /// Folder for the files: `<topic>-p<N>.jsonl`, one per topic and partition.
    #[arg(long, value_name = "DIR")]
    pub out_dir: std::path::PathBuf,
    #[command(flatten)]
    pub sim: SimArgs,
}

/// Writes simulator messages to files, one message value per line, one file per partition,
/// as fast as possible. Needs `--sim-duration` (the stream must end).
pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    anyhow::ensure!(
        args.sim.sim_duration.is_some(),
        "generate needs --sim-duration (how much event time to write)"
    );
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let sim = SimArgs {
        sim_speed: 0.0,
        ..args.sim.clone()
    };
    let start = sim.sim_start.unwrap_or_else(crate::time::now_ms);
    let mut total = 0u64;
    for (t, (name, factory)) in super::topics().zip(sim.factories(start)?) {
        let mut reader = factory.open(0, 1, &[])?;
        let mut files = Vec::new();
        for p in 0..t.1.simulated.partitions {
            let path = args.out_dir.join(format!("{name}-p{p}.jsonl"));
            let f = std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            files.push(std::io::BufWriter::new(f));
        }
        let mut err = None;
        while reader.read(4096, &mut |slot, _, value, _| {
            if err.is_none() {
                err = files[slot]
                    .write_all(value)
                    .and_then(|()| files[slot].write_all(b"\n"))
                    .err();
            }
            total += 1;
        })? != ReadStatus::Done
        {}
        if let Some(e) = err {
            return Err(e).context("writing generated messages");
        }
        for mut f in files {
            f.flush()?;
        }
    }
    eprintln!("wrote {total} messages to {}", args.out_dir.display());
    Ok(())
}
