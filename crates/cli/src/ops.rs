//! `tbg backup`, `tbg restore`, `tbg verify-backup`: the CLI side of
//! tbg-ops (argument parsing and printing; the work is in the library).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tbg_ops::{BackupOptions, RestoreOptions, Retention};

use crate::ConfigArgs;

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Root of the backups: `daily/`, `weekly/`, `redis/`, `config/` below it.
    #[arg(long, env = "TBG_BACKUP_DIR", default_value = "/var/backups/tbg")]
    backup_dir: PathBuf,
    /// Everything: the PostgreSQL dump, the Redis snapshot (when Redis is
    /// configured) and the configuration archive (when --config is given).
    #[arg(long)]
    full: bool,
    /// The Redis snapshot only (`redis-cli --rdb`), unless combined.
    #[arg(long)]
    redis: bool,
    /// The configuration archive (tar.gz of the --config file) only, unless combined.
    #[arg(long)]
    config_archive: bool,
    /// PostgreSQL to dump; default `collector.postgres_url` (TBG_POSTGRES_URL).
    #[arg(long)]
    database_url: Option<String>,
    /// Daily PostgreSQL dumps kept.
    #[arg(long, default_value_t = 7)]
    keep_daily: usize,
    /// Weekly PostgreSQL dumps kept (the newest of each ISO week).
    #[arg(long, default_value_t = 4)]
    keep_weekly: usize,
    /// Redis snapshots kept.
    #[arg(long, default_value_t = 14)]
    keep_redis: usize,
    /// Configuration archives kept.
    #[arg(long, default_value_t = 10)]
    keep_config: usize,
    /// Directory of pg_dump/pg_restore to use first (default: the server's version found).
    #[arg(long, env = "TBG_PG_BIN_DIR")]
    pg_bin_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The `.dump` file (or its `.manifest.json`); with --redis a `.rdb`
    /// snapshot; with --config-archive a `.tar.gz` configuration archive.
    file: PathBuf,
    /// Carry out the restore; without it nothing is changed.
    #[arg(long)]
    confirm: bool,
    /// FILE is a Redis snapshot (`tbg backup --redis`): its keys are copied
    /// into the configured Redis (DUMP/RESTORE through a private
    /// redis-server; keys the snapshot lacks are kept).
    #[arg(long, conflicts_with_all = ["clean", "config_archive"])]
    redis: bool,
    /// Redis to restore into; default `collector.redis_url`, else `redis.url`
    /// (TBG_REDIS_URL).
    #[arg(long, requires = "redis")]
    redis_url: Option<String>,
    /// The redis-server binary that loads the snapshot (default: on PATH).
    #[arg(long, requires = "redis")]
    redis_server: Option<PathBuf>,
    /// FILE is a configuration archive (`tbg backup --config-archive`): its
    /// files are written into --target-dir.
    #[arg(long, requires = "target_dir", conflicts_with = "clean")]
    config_archive: bool,
    /// Where a configuration archive's files go; a file already there is
    /// kept as `<name>.before-restore`.
    #[arg(long, requires = "config_archive")]
    target_dir: Option<PathBuf>,
    /// Replace a non-empty database (restored into a staging database, then
    /// swapped in; the old one is kept under a `_before_restore_` name).
    #[arg(long)]
    clean: bool,
    /// Target database; default `collector.postgres_url` (TBG_POSTGRES_URL).
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, env = "TBG_PG_BIN_DIR")]
    pg_bin_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The `.dump` file (or its `.manifest.json`).
    file: PathBuf,
    /// Server for the scratch database `tbg_verify_<random>`; default
    /// `collector.postgres_url` (TBG_POSTGRES_URL).
    #[arg(long)]
    database_url: Option<String>,
    /// Fail when the backup is older than this.
    #[arg(long)]
    max_age_hours: Option<u64>,
    #[arg(long, env = "TBG_PG_BIN_DIR")]
    pg_bin_dir: Option<PathBuf>,
}

fn database_url(config: &ConfigArgs, explicit: Option<String>) -> Result<String> {
    if let Some(url) = explicit {
        return Ok(url);
    }
    let config = crate::load_config(config, true)?;
    config
        .collector
        .postgres_url
        .context("no database: pass --database-url, set TBG_POSTGRES_URL or collector.postgres_url")
}

pub async fn backup(args: BackupArgs) -> Result<()> {
    let only_redis_or_config = args.redis || args.config_archive;
    let postgres = args.full || !only_redis_or_config;
    let config = crate::load_config(&args.config, true)?;
    if postgres {
        let url = match args.database_url.clone() {
            Some(url) => url,
            None => config.collector.postgres_url.clone().context(
                "no database: pass --database-url, set TBG_POSTGRES_URL or collector.postgres_url",
            )?,
        };
        let options = BackupOptions {
            backup_dir: args.backup_dir.clone(),
            retention: Retention {
                daily: args.keep_daily,
                weekly: args.keep_weekly,
            },
            pg_bin_dir: args.pg_bin_dir.clone(),
        };
        let report = tbg_ops::backup_postgres(&url, &options).await?;
        let manifest = &report.manifest;
        println!(
            "postgres: {} ({} bytes, sha256 {}, schema version {}, {} rows in {} tables)",
            report.dump.display(),
            manifest.size_bytes,
            manifest.sha256,
            manifest
                .schema_version
                .map_or("none".to_string(), |v| v.to_string()),
            manifest.row_counts.values().sum::<i64>(),
            manifest.row_counts.len()
        );
        for path in &report.retention.promoted_weekly {
            println!("  kept as weekly: {}", path.display());
        }
        for path in &report.retention.removed {
            println!("  expired: {}", path.display());
        }
    }
    let redis_url = config
        .collector
        .redis_url
        .clone()
        .or_else(|| config.redis.url.clone());
    if args.redis || (args.full && redis_url.is_some()) {
        let url = redis_url.context("no Redis: set redis.url or TBG_REDIS_URL")?;
        let (snapshot, removed) =
            tbg_ops::backup_redis(&url, &args.backup_dir, args.keep_redis).await?;
        println!("redis: {}", snapshot.display());
        for path in removed {
            println!("  expired: {}", path.display());
        }
    }
    let config_files: Vec<PathBuf> = args
        .config
        .config
        .iter()
        .chain(args.config.ckpool_conf.iter())
        .cloned()
        .collect();
    if args.config_archive || (args.full && !config_files.is_empty()) {
        if config_files.is_empty() {
            bail!("--config-archive needs the config file: --config FILE");
        }
        let (archive, removed) =
            tbg_ops::backup_config(&config_files, &args.backup_dir, args.keep_config).await?;
        println!("config: {}", archive.display());
        for path in removed {
            println!("  expired: {}", path.display());
        }
    }
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> Result<()> {
    if args.redis {
        return restore_redis(args).await;
    }
    if let Some(target_dir) = &args.target_dir {
        return restore_config_archive(&args.file, target_dir, args.confirm).await;
    }
    if looks_like_rdb(&args.file) {
        bail!(
            "{} is a Redis snapshot: restore it with `tbg restore --redis {}`",
            args.file.display(),
            args.file.display()
        );
    }
    let url = database_url(&args.config, args.database_url)?;
    let plan = tbg_ops::plan_restore(&args.file, &url, args.pg_bin_dir.as_deref()).await?;
    println!("{plan}");
    if !args.confirm {
        println!("nothing changed: run again with --confirm to restore");
        return Ok(());
    }
    let options = RestoreOptions {
        clean: args.clean,
        pg_bin_dir: args.pg_bin_dir,
    };
    let report = tbg_ops::restore(&plan, &url, &options).await?;
    println!(
        "restored into {}{}: {} rows in {} tables, as in the manifest",
        report.database,
        if report.created_database && report.previous_database.is_none() {
            " (created)"
        } else {
            ""
        },
        report.row_counts.values().sum::<i64>(),
        report.row_counts.len()
    );
    if let Some(previous) = &report.previous_database {
        println!("the replaced database is kept as {previous} (drop it when satisfied)");
    }
    println!(
        "next: bring it forward from the journal: {}",
        report.replay_command
    );
    Ok(())
}

pub async fn verify_backup(args: VerifyArgs) -> Result<()> {
    let url = database_url(&args.config, args.database_url)?;
    let max_age = args
        .max_age_hours
        .map(|hours| Duration::from_secs(hours.saturating_mul(3600)));
    let report =
        tbg_ops::verify_backup(&args.file, &url, max_age, args.pg_bin_dir.as_deref()).await?;
    let manifest = &report.backup.manifest;
    println!("backup:       {}", report.backup.dump.display());
    println!(
        "exists, size: {} bytes, as in the manifest",
        manifest.size_bytes
    );
    println!("sha256:       {} matches", manifest.sha256);
    println!(
        "age:          {} h (created {})",
        report.backup.age.as_secs() / 3600,
        manifest.created_at
    );
    println!(
        "archive:      lists cleanly, {} tables, required tables present",
        report.backup.archive_tables.len()
    );
    println!(
        "restore:      into scratch database {} (dropped): row counts equal the manifest",
        report.scratch_database
    );
    for (table, rows) in &report.row_counts {
        println!("  {table:<32} {rows:>12}");
    }
    println!("OK");
    Ok(())
}

fn looks_like_rdb(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 5];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && &magic == b"REDIS"
}

/// `tbg restore --redis FILE`: preview, then (with --confirm) DUMP/RESTORE
/// every key of the snapshot into the configured Redis.
async fn restore_redis(args: RestoreArgs) -> Result<()> {
    let url = match args.redis_url {
        Some(url) => url,
        None => {
            let config = crate::load_config(&args.config, true)?;
            config
                .collector
                .redis_url
                .or(config.redis.url)
                .context("no Redis: pass --redis-url, set TBG_REDIS_URL or redis.url")?
        }
    };
    let snapshot =
        tbg_ops::LoadedRedisSnapshot::open(&args.file, args.redis_server.as_deref()).await?;
    let result = async {
        let plan = snapshot.plan(&url).await?;
        println!("{plan}");
        if !args.confirm {
            println!("nothing changed: run again with --confirm to restore");
            return Ok(());
        }
        let report = snapshot.restore_into(&url).await?;
        println!(
            "restored {} keys into {}{}",
            report.restored_keys,
            plan.target,
            if report.expired_keys > 0 {
                format!(" ({} expired on the way)", report.expired_keys)
            } else {
                String::new()
            }
        );
        for db in &report.databases {
            println!("  db{}: {} keys", db.index, db.keys);
            for (stream, length) in &db.streams {
                println!("    stream {stream} ({length} entries)");
            }
        }
        println!(
            "next: restart the collector (`systemctl restart tbg-collector`); it resumes from the restored cursor and re-delivers the journal's newer events (idempotent)"
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    snapshot.close().await;
    result
}

/// `tbg restore --config-archive FILE --target-dir DIR`.
async fn restore_config_archive(
    archive: &std::path::Path,
    target_dir: &std::path::Path,
    confirm: bool,
) -> Result<()> {
    let plan = tbg_ops::plan_config_restore(archive, target_dir).await?;
    println!("archive: {}", archive.display());
    for file in &plan.files {
        let note = if file.target.exists() {
            "exists: kept as .before-restore"
        } else {
            "new"
        };
        println!("  {} -> {} ({note})", file.name, file.target.display());
    }
    if !confirm {
        println!("nothing changed: run again with --confirm to restore");
        return Ok(());
    }
    let written = tbg_ops::restore_config_archive(&plan).await?;
    for path in written {
        println!("restored {}", path.display());
    }
    println!("next: `tbg check-config --config <file>`, then `systemctl reload tbg-pool` (SIGHUP) or restart");
    Ok(())
}
