//! Operations toolkit: PostgreSQL custom-format backups with a manifest
//! (checksum, size, row counts, schema version), retention (daily + weekly),
//! Redis snapshot and configuration archives (and their restore), a validated restore that
//! previews before it acts, and backup verification through a scratch
//! database.
//!
//! Library code never prints: the CLI renders the returned reports.

#![forbid(unsafe_code)]

mod backup;
mod error;
mod lock;
mod pg;
mod redis_restore;
mod restore;
mod retention;
mod snapshot;

pub use backup::{backup_postgres, BackupOptions, BackupReport, Manifest, MANIFEST_FORMAT_VERSION};
pub use error::OpsError;
pub use lock::BackupLock;
pub use pg::{find_tool, PgTarget};
pub use redis_restore::{
    LoadedRedisSnapshot, RedisDbContent, RedisRestorePlan, RedisRestoreReport,
};
pub use restore::{
    plan_restore, replay_command, restore, validate_backup, verify_backup, RestoreOptions,
    RestorePlan, RestoreReport, ValidatedBackup, VerifyReport, REPLAY_TIME_MARGIN, REQUIRED_TABLES,
};
pub use retention::{apply_retention, backup_stamp, parse_stamp, Retention, RetentionReport};
pub use snapshot::{
    backup_config, backup_redis, plan_config_restore, prune_oldest, restore_config_archive,
    ConfigRestoreFile, ConfigRestorePlan,
};

/// Where the PostgreSQL dumps live under the backup dir.
pub const DAILY_DIR: &str = "daily";
/// Newest dump of each of the last weeks (hard links to the daily files).
pub const WEEKLY_DIR: &str = "weekly";
/// Redis snapshot copies.
pub const REDIS_DIR: &str = "redis";
/// Configuration archives.
pub const CONFIG_DIR: &str = "config";
