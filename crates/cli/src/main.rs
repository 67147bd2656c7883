//! `tbg`: the solo-mining service's one binary.

mod collector;
mod devnet;
mod loadtest;
mod logging;
mod miner;
mod monitor;
mod network;
mod notify;
mod observability;
mod ops;
mod publisher;
mod region;
mod reload;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tbg_config::{Config, ConfigError};
use tbg_events::{DatagramSink, EventFactory};
use tbg_pool::PoolService;

/// Exit code for a configuration error (a bad key or value).
const EXIT_CONFIG: i32 = 2;

#[derive(Parser)]
#[command(
    name = "tbg",
    version,
    about = "Bitcoin solo-mining pool: Stratum V1, events, devnet"
)]
struct Cli {
    /// Log lines as text (colour only on a terminal) or JSON, one object a line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "TBG_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub(crate) struct ConfigArgs {
    /// TOML config file (see config.example.toml); defaults apply without it.
    #[arg(long, short = 'c', env = "TBG_CONFIG")]
    config: Option<PathBuf>,
    /// A ckpool JSON config to run with unchanged (ckpool key names).
    #[arg(long, conflicts_with = "config")]
    ckpool_conf: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pool against the Bitcoin Core nodes of the config.
    Pool {
        #[command(flatten)]
        config: ConfigArgs,
        /// Pid file, locked while the pool runs: a second pool on the same
        /// file refuses to start; a file left by a crash never blocks.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Publish this region's journal to NATS JetStream (`events.<region>.<type>`),
    /// from a durable cursor: nothing is lost while NATS is down.
    Publisher {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Poll every region of `[health_monitor]` and NATS; `GET /health` on
    /// `health_monitor.bind` (8090) says which region is down (200 only
    /// when all are healthy).
    HealthMonitor {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run an embedded regtest node (Bitcoin Core's validation engine) and
    /// the pool against it: no Bitcoin Core, no database needed.
    Devnet {
        #[command(flatten)]
        config: ConfigArgs,
        /// Stratum address for miners (IPv6 and IPv4 on one socket).
        #[arg(long, default_value = "[::]:3333")]
        stratum: SocketAddr,
        /// Where the regtest chain is kept (a temporary directory if not given).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// RPC address of the embedded node (for bitcoin-cli and friends).
        #[arg(long, default_value = "127.0.0.1:18443")]
        rpc: SocketAddr,
        /// Blocks the embedded node mines at start when its chain is lower
        /// (0: start from genesis, e.g. to follow another node's chain).
        #[arg(long, default_value_t = 110)]
        initial_blocks: u32,
        /// Also run the built-in CPU miner in this process.
        #[arg(long)]
        miner: bool,
        /// Payout address of the built-in miner (a fresh one if not given).
        #[arg(long, requires = "miner")]
        miner_address: Option<String>,
        /// Stop after the built-in miner has found this many blocks.
        #[arg(long, requires = "miner")]
        blocks: Option<u64>,
    },
    /// The CPU miner alone, against any Stratum V1 pool.
    Miner {
        /// Pool address: host:port or stratum+tcp://host:port; over TLS
        /// stratum+ssl://host:port (the certificate must name host).
        #[arg(long, default_value = "127.0.0.1:3333")]
        pool: String,
        /// PEM file of the CA (or self-signed certificate) a stratum+ssl
        /// pool's certificate must chain to; the system's store if not given.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Username: payout address, optionally `.worker`.
        #[arg(long, short = 'u')]
        user: String,
        /// Difficulty to suggest to the pool.
        #[arg(long)]
        suggest_difficulty: Option<f64>,
        /// Stop after this many blocks.
        #[arg(long)]
        blocks: Option<u64>,
    },
    /// Deliver the journal's events to Redis Streams and PostgreSQL.
    Collector {
        #[command(flatten)]
        config: ConfigArgs,
        /// Re-deliver from this point: `seq:N` (journal seq N on, as `tbg
        /// restore` prints it), unix time, RFC3339 time or event id (after a
        /// database restore). Idempotent: nothing is stored twice.
        #[arg(long, requires = "replay")]
        from: Option<String>,
        /// Replay from `--from` before collecting.
        #[arg(long)]
        replay: bool,
        /// Print the pending database migrations and exit without applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Simulated miners against any Stratum V1 pool; prints latency and counts.
    Loadtest(loadtest::LoadtestArgs),
    /// PostgreSQL dump with manifest and retention (7 daily + 4 weekly);
    /// `--redis` snapshot, `--config-archive`, `--full` for all three.
    Backup(ops::BackupArgs),
    /// Restore a PostgreSQL backup: shows what it would do, changes nothing
    /// without --confirm.
    Restore(ops::RestoreArgs),
    /// Check a backup against its manifest and restore it into a scratch
    /// database to compare row counts.
    VerifyBackup(ops::VerifyArgs),
    /// Make a Stratum V2 authority key pair: the secret for
    /// `stratum_v2.authority_secret_key` (or TBG_SV2_SECRET_KEY), the public
    /// key for miners and proxies (`authority_pubkey`).
    Sv2Keygen,
    /// Check a config file (exit code 2 when it is wrong) and print it as TOML.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// jemalloc instead of glibc's malloc. Sessions, answers and journal rows
/// are small blocks made and freed by the thousand on every worker thread;
/// glibc left the memory of miners who had left in its arenas, pinned page
/// by page by the few blocks that outlive a session (its worker's stats):
/// after 2,000 miners flooding shares had gone, RSS stayed 6 kB per miner
/// above the live heap, for good, and `malloc_trim` could not give those
/// pages back. jemalloc keeps blocks of one size together, so a departed
/// session's pages empty out and are returned (docs/benchmarks.md, "Side
/// by side with ckpool").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (read at its first allocation): pages unused for a
/// second are returned to the system by its background threads, never by
/// an allocation on a session's path; `muzzy_decay_ms:0` returns them at
/// once (`MADV_DONTNEED`) rather than lazily (`MADV_FREE`, which still
/// counts in RSS until the kernel needs the memory).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(tbg_pool::coalesce::before_park)
        .on_thread_unpark(tbg_pool::coalesce::after_unpark)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // Blocking tasks (a stuck RPC, the kernel) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(error) = result {
        if let Some(config_error) = error.downcast_ref::<ConfigError>() {
            eprintln!("config error: {config_error}");
            std::process::exit(EXIT_CONFIG);
        }
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads the config (TOML or ckpool JSON), applies env overrides; validates
/// as for a pool with nodes, or for the devnet's embedded node.
fn load_config(args: &ConfigArgs, embedded_node: bool) -> Result<Config> {
    let mut config = match (&args.config, &args.ckpool_conf) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read ckpool config {}", path.display()))?;
            let (config, warnings) = Config::from_ckpool_json(&text)?;
            for warning in warnings {
                tracing::warn!("ckpool config: {warning}");
            }
            config
        }
        (None, None) => Config::default(),
    };
    let applied = config.apply_env(&env_lookup);
    if !applied.is_empty() {
        tracing::info!(variables = ?applied, "configuration overridden from the environment");
    }
    if embedded_node {
        config.validate_embedded_node()?;
    } else {
        config.validate()?;
    }
    Ok(config)
}

fn event_sink(config: &Config) -> Result<Arc<DatagramSink>> {
    let path = &config.events.socket_path;
    let sink = DatagramSink::new(path.clone())
        .with_context(|| format!("event socket {}", path.display()))?;
    Ok(Arc::new(sink))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pool {
            config: args,
            pid_file,
        } => {
            let hangup = reload::hangup_signal();
            let mut config = load_config(&args, false)?;
            if !network::settle(&mut config).await? {
                return Ok(());
            }
            let settled = config.network;
            let _pid_lock = match &pid_file {
                Some(path) => Some(tbg_ops::BackupLock::acquire_file(path)?),
                None => None,
            };
            // A ckpool file read again names no network still: the one
            // the node said at start stands.
            let reloader = reload::Reloader::new(
                args,
                false,
                reload::Role::Pool,
                config.clone(),
                Box::new(move |config| {
                    if config.network_from_node {
                        config.network = settled;
                        config.network_from_node = false;
                    }
                }),
            );
            run_pool(&config, reloader, hangup).await
        }
        Command::Devnet {
            config: args,
            stratum,
            data_dir,
            rpc,
            initial_blocks,
            miner,
            miner_address,
            blocks,
        } => {
            let hangup = reload::hangup_signal();
            let mut config = load_config(&args, true)?;
            config.network = tbg_config::NetworkName::Regtest;
            config.network_from_node = false;
            config.pool.bind = stratum.to_string();
            devnet::run_devnet(
                config,
                args,
                hangup,
                data_dir,
                (rpc, initial_blocks),
                miner.then_some((miner_address, blocks)),
            )
            .await
        }
        Command::Miner {
            pool,
            tls_ca,
            user,
            suggest_difficulty,
            blocks,
        } => {
            let (host_port, tls) = miner::miner_target(&pool, tls_ca.as_deref())?;
            let address = tokio::net::lookup_host(host_port)
                .await
                .with_context(|| format!("cannot resolve {host_port}"))?
                .next()
                .with_context(|| format!("no address for {host_port}"))?;
            let mut config = tbg_miner::MinerConfig::new(address, user);
            config.tls = tls;
            config.suggest_difficulty = suggest_difficulty;
            config.max_blocks = blocks;
            miner::run_miner(config).await
        }
        Command::Collector {
            config: args,
            from,
            replay,
            dry_run,
        } => {
            let hangup = reload::hangup_signal();
            let config = load_config(&args, true)?;
            let reloader = reload::Reloader::new(
                args,
                true,
                reload::Role::Collector,
                config.clone(),
                Box::new(|_| {}),
            );
            collector::run(
                &config,
                replay.then_some(from).flatten(),
                dry_run,
                (reloader, hangup),
            )
            .await
        }
        Command::Publisher { config: args } => {
            let config = load_config(&args, true)?;
            publisher::run(&config).await
        }
        Command::HealthMonitor { config: args } => {
            let config = load_config(&args, true)?;
            monitor::run(&config).await
        }
        Command::Loadtest(args) => loadtest::run(args).await,
        Command::Backup(args) => ops::backup(args).await,
        Command::Restore(args) => ops::restore(args).await,
        Command::VerifyBackup(args) => ops::verify_backup(args).await,
        Command::Sv2Keygen => {
            let key = tbg_sv2::AuthorityKey::generate();
            println!("authority_secret_key = \"{}\"", key.secret_base58());
            println!("authority_public_key = \"{}\"", key.public_base58());
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = load_config(&config, false)?;
            if config.network_from_node {
                // Printed as TOML, the guess would become the setting.
                tracing::warn!(
                    guess = config.network.as_str(),
                    "network: `tbg pool` takes its node's; the TOML below has the rpc port's guess: set `network` to the node's before using it"
                );
            }
            check_tls_files(&config).await?;
            check_sv2_key(&config)?;
            print!("{}", config.to_toml_string()?);
            Ok(())
        }
    }
}

/// `check-config`: the TLS port's certificate and key load and go together
/// (the pool would refuse to start otherwise).
async fn check_tls_files(config: &Config) -> Result<()> {
    let tls = &config.stratum_tls;
    if !tls.enabled() {
        return Ok(());
    }
    let (cert, key) = (tls.cert_file.clone(), tls.key_file.clone());
    let loaded =
        tokio::task::spawn_blocking(move || tbg_pool::tls::TlsIdentity::load(&cert, &key)).await?;
    match loaded {
        Ok(identity) => {
            tracing::info!(fingerprint = %identity.fingerprint, "stratum_tls: certificate and key load");
            Ok(())
        }
        Err(error) => Err(ConfigError::new(
            "stratum_tls.cert_file",
            tls.cert_file.display(),
            error.to_string(),
        )
        .into()),
    }
}

/// The V2 port's authority key pair loads (and is the pair named), so a
/// wrong secret stops `check-config` rather than the pool's start.
fn check_sv2_key(config: &Config) -> Result<()> {
    let sv2 = &config.stratum_v2;
    if !sv2.enabled() {
        return Ok(());
    }
    let key = settings::sv2_authority_key(sv2)?;
    tracing::info!(authority_public_key = %key.public_base58(), "stratum_v2: authority key loads");
    Ok(())
}

pub(crate) async fn start_pool(config: &Config) -> Result<observability::RunningPool> {
    let pool_settings = settings::pool_settings(config)?;
    let node_settings = settings::node_settings(config);
    tbg_pool::coalesce::set_window(Duration::from_micros(config.pool.wakeup_coalescing_us));
    let events = event_sink(config)?;
    let factory = EventFactory::new(config.events.region.clone(), config.events.source.clone());
    // Opening preallocates the staging ring, recovers it and may wait for a
    // lock: file work kept off the async threads.
    let journal_config = config.clone();
    let journal = tokio::task::spawn_blocking(move || open_journal(&journal_config))
        .await
        .context("journal open task")??;
    let (wiring, relay) = region::prepare(config)?;
    let service = PoolService::start_in_region(
        pool_settings,
        node_settings,
        events.clone(),
        journal,
        factory,
        wiring,
    )
    .await?;
    let region = match region::start(config, &service, relay).await {
        Ok(region) => region,
        Err(error) => {
            service.shutdown(Duration::from_millis(500)).await;
            return Err(error);
        }
    };
    let notifier = match notify::start(config) {
        Ok(notifier) => notifier,
        Err(error) => {
            region.stop().await;
            service.shutdown(Duration::from_millis(500)).await;
            return Err(error);
        }
    };
    observability::with_metrics(config, service, events, region, notifier).await
}

fn open_journal(config: &Config) -> Result<Option<tbg_journal::Journal>> {
    let section = &config.journal;
    if !section.enabled {
        tracing::warn!("journal disabled: events go to the datagram socket only and may be lost");
        return Ok(None);
    }
    if let Some(parent) = section.path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("journal.path: cannot create {}", parent.display()))?;
    }
    let mut journal_config = tbg_journal::JournalConfig::new(section.path.clone());
    journal_config.durability = match section.durability {
        tbg_config::JournalDurability::ProcessCrash => tbg_journal::Durability::ProcessCrash,
        tbg_config::JournalDurability::PowerLoss => tbg_journal::Durability::PowerLoss,
    };
    journal_config.retention_max_age =
        Duration::from_secs(section.retention_days.saturating_mul(86_400));
    journal_config.retention_max_bytes = section.retention_max_mb.saturating_mul(1024 * 1024);
    journal_config.stage_bytes = section.stage_mb.saturating_mul(1024 * 1024);
    journal_config.stage_dir = match &section.stage_dir {
        None => tbg_journal::StageDir::Preferred(default_stage_dir()),
        Some(dir) => tbg_journal::StageDir::Required(dir.clone()),
    };
    journal_config.writer_cpus = section.writer_cpus.clone();
    let journal = tbg_journal::Journal::open(journal_config)
        .with_context(|| format!("journal {}", section.path.display()))?;
    tracing::info!(path = %section.path.display(), "event journal open");
    Ok(Some(journal))
}

/// Where the staging ring goes when `[journal] stage_dir` is unset: the
/// service's runtime directory when systemd gave it one (`RuntimeDirectory=`
/// sets `$RUNTIME_DIRECTORY`; a tmpfs under /run that outlives a restart of
/// the unit, where the unit's own /dev/shm, with `PrivateDevices=yes`, is
/// new at every start and would lose a crashed pool's ring), else /dev/shm.
fn default_stage_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| {
            // Several directories are separated by colons; the first is ours.
            let first = dirs.to_string_lossy().split(':').next()?.to_owned();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from(tbg_journal::DEFAULT_MEMORY_STAGE_DIR))
}

/// Runs the pool until SIGINT/SIGTERM, then stops gracefully; SIGHUP
/// reloads the configuration.
async fn run_pool(
    config: &Config,
    mut reloader: reload::Reloader,
    mut hangup: Option<tokio::signal::unix::Signal>,
) -> Result<()> {
    let service = start_pool(config).await?;
    serve_until_shutdown(&service, &mut reloader, &mut hangup).await;
    stop_pool(service).await;
    Ok(())
}

/// Waits for SIGINT/SIGTERM, reloading the configuration on each SIGHUP.
pub(crate) async fn serve_until_shutdown(
    pool: &observability::RunningPool,
    reloader: &mut reload::Reloader,
    hangup: &mut Option<tokio::signal::unix::Signal>,
) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = reload::next_hangup(hangup) => reloader.reload_pool(pool).await,
        }
    }
}

/// How long a stopping pool gives its webhooks to deliver what is left.
const NOTIFY_STOP_GRACE: Duration = Duration::from_secs(5);

pub(crate) async fn stop_pool(mut running: observability::RunningPool) {
    let notifier = running.take_notifier();
    let service = running.stop_metrics().await;
    tracing::info!("stopping: telling miners to reconnect");
    service.shutdown(Duration::from_millis(1500)).await;
    if let Some(notifier) = notifier {
        notifier.finish(NOTIFY_STOP_GRACE).await;
    }
    tracing::info!("stopped");
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
