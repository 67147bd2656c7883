//! `tbg loadtest`: simulated miners against any Stratum V1 pool, or V2
//! (`--sv2-key`).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tbg_loadtest::{LoadConfig, Pacing, Profile, ShareMode};

#[derive(Args, Clone)]
pub struct LoadtestArgs {
    /// Pool address, host:port.
    #[arg(long, default_value = "127.0.0.1:3333")]
    pub pool: String,
    /// smoke (10 miners, 30 s), standard (100, 60 s), stress (1000, 120 s),
    /// soak (100, 1 h) or flood (25 miners, 4 submits in flight each,
    /// submitting as fast as answered).
    #[arg(long, default_value = "smoke")]
    pub profile: String,
    /// Override the profile's number of miners.
    #[arg(long)]
    pub miners: Option<usize>,
    /// Override the profile's duration, in seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Shares per second per miner (0 = as fast as the pool answers).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Submits in flight per miner (pipelined); the profile's when not given.
    #[arg(long)]
    pub window: Option<usize>,
    /// Seconds over which connections are opened.
    #[arg(long, default_value_t = 1.0)]
    pub ramp_up: f64,
    /// Payout addresses to use as usernames (comma separated), cycled over miners.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addresses: Vec<String>,
    /// `random`: random nonces (hashed and rejected by the pool, never blocks);
    /// `real`: nonces ground to the pool's difficulty.
    #[arg(long, default_value = "random")]
    pub shares: String,
    /// When shares fall due: `poisson` (exponential gaps, as real miners'
    /// shares arrive) or `even` (exactly 1/rate apart: miners opened in step
    /// submit in step, a burst test).
    #[arg(long, default_value = "poisson")]
    pub pacing: String,
    /// Fraction of shares sent deliberately invalid (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub invalid: f64,
    /// Difficulty to suggest to the pool.
    #[arg(long)]
    pub suggest_difficulty: Option<f64>,
    /// Mine over Stratum V2 instead of V1: the pool's authority public key
    /// (base58check, as `tbg sv2-keygen` prints it); each miner opens one
    /// channel on its own Noise connection.
    #[arg(long)]
    pub sv2_key: Option<String>,
    /// With `--sv2-key`: `standard` (header-only, the default) or
    /// `extended` channels.
    #[arg(long, requires = "sv2_key")]
    pub sv2_channel: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: LoadtestArgs) -> Result<()> {
    let target: SocketAddr = tokio::net::lookup_host(&args.pool)
        .await
        .with_context(|| format!("cannot resolve {}", args.pool))?
        .next()
        .with_context(|| format!("no address for {}", args.pool))?;
    let Some(profile) = Profile::parse(&args.profile) else {
        bail!(
            "unknown profile {:?}: smoke, standard, stress, soak or flood",
            args.profile
        );
    };
    let mut config = LoadConfig::new(target, args.addresses);
    profile.apply(&mut config);
    if let Some(miners) = args.miners {
        config.miners = miners;
    }
    if let Some(seconds) = args.duration {
        config.duration = Duration::from_secs(seconds);
    }
    if let Some(rate) = args.rate {
        config.shares_per_second = rate.max(0.0);
    }
    if let Some(window) = args.window {
        config.window = window.max(1);
    }
    config.ramp_up = Duration::from_secs_f64(args.ramp_up.max(0.0));
    config.share_mode = match args.shares.as_str() {
        "random" => ShareMode::Random,
        "real" => ShareMode::Real,
        other => bail!("--shares {other:?}: random or real"),
    };
    config.pacing = match args.pacing.as_str() {
        "poisson" => Pacing::Poisson,
        "even" => Pacing::Even,
        other => bail!("--pacing {other:?}: poisson or even"),
    };
    config.invalid_fraction = args.invalid.clamp(0.0, 1.0);
    config.suggest_difficulty = args.suggest_difficulty;
    if let Some(key) = &args.sv2_key {
        let authority_key = tbg_sv2::parse_public_key(key)
            .map_err(|error| anyhow::anyhow!("--sv2-key: {error}"))?;
        let channel = match args.sv2_channel.as_deref().unwrap_or("standard") {
            "standard" => tbg_loadtest::ChannelChoice::Standard,
            "extended" => tbg_loadtest::ChannelChoice::Extended {
                min_extranonce_size: 4,
            },
            other => bail!("--sv2-channel {other:?}: standard or extended"),
        };
        if config.suggest_difficulty.is_some() {
            bail!("--suggest-difficulty is a V1 request: not with --sv2-key");
        }
        config.sv2 = Some(tbg_loadtest::V2Load {
            authority_key,
            channel,
        });
    }
    let report = tbg_loadtest::run(config, |live| {
        let p99 = live.share_round_trip.p99_us as f64 / 1000.0;
        eprint!(
            "\r{:>5.0}s connected {:>6} answered {:>9} ({:>7.0}/s) p99 {:>7.3} ms errors {:>4}   ",
            live.duration_s,
            live.peak_connections,
            live.shares_answered,
            live.shares_per_second,
            p99,
            live.errors.values().sum::<u64>()
        );
        let _ = std::io::stderr().flush();
    })
    .await;
    eprintln!();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
