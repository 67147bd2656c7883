//! `tbg backup`, `tbg restore`, `tbg verify-backup` as an operator runs them,
//! against a private PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tbg_testkit::{PgServer, RedisServer};

fn tbg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tbg"))
        .args(args)
        .env_remove("TBG_CONFIG")
        .env_remove("TBG_POSTGRES_URL")
        .env_remove("TBG_BACKUP_DIR")
        .env_remove("TBG_REDIS_URL")
        .output()
        .expect("tbg runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn url(server: &PgServer, database: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{database}?connect_timeout=5",
        server.port
    )
}

/// The collector's schema in the `postgres` database, with three users.
fn seeded() -> PgServer {
    let server = PgServer::start();
    server.psql(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
         checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    );
    for migration in tbg_collector::migrations::MIGRATIONS {
        server.psql(migration.sql);
        server.psql(&format!(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ({}, '{}', '{}')",
            migration.version,
            migration.name,
            migration.checksum()
        ));
    }
    server.psql(
        "INSERT INTO users (btc_address, first_seen, last_seen)
         SELECT 'bc1q' || i, now(), now() FROM generate_series(1, 3) i",
    );
    assert_eq!(server.psql("SELECT count(*) FROM users"), "3");
    // The collector has written the journal up to seq 42.
    server.psql("UPDATE collector_cursor SET seq = 42 WHERE sink = 'postgres'");
    server
}

fn dumps_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "dump"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn backup_preview_restore_verify_from_the_command_line() {
    let server = seeded();
    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("backups");
    let source = url(&server, "postgres");

    let out = tbg(&[
        "backup",
        "--backup-dir",
        backups.to_str().unwrap(),
        "--database-url",
        &source,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "schema version {}",
            tbg_collector::migrations::MIGRATIONS
                .last()
                .unwrap()
                .version
        )),
        "{}",
        text(&out.stdout)
    );
    let dumps = dumps_in(&backups.join("daily"));
    assert_eq!(dumps.len(), 1);
    let dump = dumps[0].to_str().unwrap();

    // Without --confirm: a preview, and the target database is not created.
    let target = url(&server, "tbg_new");
    let out = tbg(&["restore", dump, "--database-url", &target]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("tbg_new (does not exist: will be created)"),
        "{stdout}"
    );
    assert!(stdout.contains("public.users"), "{stdout}");
    assert!(stdout.contains("nothing changed"), "{stdout}");
    // The replay starts right after the last event in the dump.
    assert!(
        stdout.contains("collector cursor: journal seq 42"),
        "{stdout}"
    );
    assert!(
        stdout.contains("afterwards:      tbg collector --replay --from seq:43\n"),
        "{stdout}"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_database WHERE datname = 'tbg_new'"),
        "0"
    );

    let out = tbg(&["restore", dump, "--database-url", &target, "--confirm"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "next: bring it forward from the journal: tbg collector --replay --from seq:43\n"
        ),
        "{}",
        text(&out.stdout)
    );
    let restored = Command::new("psql")
        .args(["-At", "-d", &target, "-c", "SELECT count(*) FROM users"])
        .output()
        .unwrap();
    assert_eq!(text(&restored.stdout).trim(), "3");

    // Into the (non-empty) source again: refused, non-zero exit.
    let out = tbg(&["restore", dump, "--database-url", &source, "--confirm"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not empty"),
        "{}",
        text(&out.stderr)
    );

    let out = tbg(&[
        "verify-backup",
        dump,
        "--database-url",
        &source,
        "--max-age-hours",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("OK"));

    // A foreign file: clear error, non-zero exit.
    let foreign = dir.path().join("20261101T020000Z.dump");
    std::fs::write(&foreign, b"not a backup").unwrap();
    for command in ["verify-backup", "restore"] {
        let out = tbg(&[
            command,
            foreign.to_str().unwrap(),
            "--database-url",
            &source,
            "--confirm",
        ][..if command == "restore" { 5 } else { 4 }]);
        assert!(!out.status.success(), "{command} accepted a foreign file");
        assert!(
            text(&out.stderr).contains("no manifest"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn config_archive_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tbg.toml");
    std::fs::write(&config, "network = \"regtest\"\n").unwrap();
    let backups = dir.path().join("backups");
    let out = tbg(&[
        "backup",
        "--config-archive",
        "--config",
        config.to_str().unwrap(),
        "--backup-dir",
        backups.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let archives: Vec<_> = std::fs::read_dir(backups.join("config")).unwrap().collect();
    assert_eq!(archives.len(), 1);
    // No PostgreSQL was asked for: no dump.
    assert!(dumps_in(&backups.join("daily")).is_empty());

    // Restore into a directory holding an edited copy: preview first.
    let archive = archives[0].as_ref().unwrap().path();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("tbg.toml"), "network = \"signet\"\n").unwrap();
    let restore = |confirm: bool| {
        let mut args = vec![
            "restore",
            "--config-archive",
            archive.to_str().unwrap(),
            "--target-dir",
            etc.to_str().unwrap(),
        ];
        if confirm {
            args.push("--confirm");
        }
        tbg(&args)
    };
    let out = restore(false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("tbg.toml"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("nothing changed"));
    assert_eq!(
        std::fs::read_to_string(etc.join("tbg.toml")).unwrap(),
        "network = \"signet\"\n"
    );
    let out = restore(true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(etc.join("tbg.toml")).unwrap(),
        "network = \"regtest\"\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("tbg.toml.before-restore")).unwrap(),
        "network = \"signet\"\n"
    );

    // Not an archive: refused, nothing written.
    let foreign = dir.path().join("foreign.tar.gz");
    std::fs::write(&foreign, "network = \"mainnet\"\n").unwrap();
    let out = tbg(&[
        "restore",
        "--config-archive",
        foreign.to_str().unwrap(),
        "--target-dir",
        etc.to_str().unwrap(),
        "--confirm",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a configuration archive"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("tbg.toml")).unwrap(),
        "network = \"regtest\"\n"
    );
}

/// `tbg backup --redis` then `tbg restore --redis` into a Redis that lost
/// everything (no persistence): preview changes nothing; --confirm brings
/// streams, signatures, the collector cursor and TTLs back; a truncated or
/// foreign file touches nothing.
#[test]
fn redis_snapshot_restore_from_the_command_line() {
    let source = RedisServer::start();
    source.cli(&[
        "XADD",
        "mining:share_submitted",
        "1700000000000-1",
        "data",
        "{}",
    ]);
    source.cli(&[
        "XADD",
        "mining:share_submitted",
        "1700000000000-2",
        "data",
        "{}",
    ]);
    source.cli(&["XADD", "blocks:found", "1700000000001-3", "data", "{}"]);
    source.cli(&["SET", "user_coinbase:bcrt1qexample", "solo/alice"]);
    source.cli(&["SET", "tbg:collector:cursor:redis", "3"]);
    source.cli(&["SET", "session:short", "x", "EX", "3600"]);
    source.cli(&["-n", "2", "SET", "other:db", "two"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tbg.toml");
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[redis]\nurl = \"{}\"\n",
            source.url()
        ),
    )
    .unwrap();
    let backups = dir.path().join("backups");
    let out = tbg(&[
        "backup",
        "--redis",
        "--config",
        config.to_str().unwrap(),
        "--backup-dir",
        backups.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snapshots: Vec<PathBuf> = std::fs::read_dir(backups.join("redis"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(snapshots.len(), 1);
    let snapshot = snapshots[0].to_str().unwrap();

    // The target: empty after a crash, one key written since.
    let target = RedisServer::start();
    target.cli(&["SET", "user_coinbase:bcrt1qexample", "newer"]);
    target.cli(&["SET", "keep:me", "1"]);
    let restore = |file: &str, confirm: bool| {
        let mut args = vec!["restore", "--redis", file, "--redis-url"];
        let url = target.url();
        args.push(&url);
        if confirm {
            args.push("--confirm");
        }
        tbg(&args)
    };

    let out = restore(snapshot, false);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("stream mining:share_submitted (2 entries)"),
        "{stdout}"
    );
    assert!(stdout.contains("db2: 1 keys"), "{stdout}");
    assert!(stdout.contains("1 existing keys overwritten"), "{stdout}");
    assert!(stdout.contains("nothing changed"), "{stdout}");
    assert_eq!(target.cli(&["DBSIZE"]), "2");
    assert_eq!(target.cli(&["GET", "user_coinbase:bcrt1qexample"]), "newer");

    // A truncated copy and a foreign file: refused, target untouched.
    let bytes = std::fs::read(snapshot).unwrap();
    let truncated = dir.path().join("truncated.rdb");
    std::fs::write(&truncated, &bytes[..bytes.len() - 12]).unwrap();
    let foreign = dir.path().join("foreign.rdb");
    std::fs::write(&foreign, "PGDMP").unwrap();
    for (file, error) in [
        (&truncated, "does not load as a Redis snapshot"),
        (&foreign, "is not a Redis snapshot"),
    ] {
        let out = restore(file.to_str().unwrap(), true);
        assert!(!out.status.success(), "{} accepted", file.display());
        assert!(text(&out.stderr).contains(error), "{}", text(&out.stderr));
    }
    assert_eq!(target.cli(&["DBSIZE"]), "2");

    // A snapshot given to the PostgreSQL restore: pointed to --redis.
    let out = tbg(&[
        "restore",
        snapshot,
        "--database-url",
        "postgres://127.0.0.1:1/x",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("tbg restore --redis"),
        "{}",
        text(&out.stderr)
    );

    let out = restore(snapshot, true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("restored 6 keys"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(target.cli(&["XLEN", "mining:share_submitted"]), "2");
    assert_eq!(target.cli(&["XLEN", "blocks:found"]), "1");
    assert_eq!(
        target.cli(&["GET", "user_coinbase:bcrt1qexample"]),
        "solo/alice"
    );
    assert_eq!(target.cli(&["GET", "tbg:collector:cursor:redis"]), "3");
    assert_eq!(
        target.cli(&["GET", "keep:me"]),
        "1",
        "keys outside the snapshot kept"
    );
    let ttl: i64 = target.cli(&["TTL", "session:short"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 3600, "ttl {ttl}");
    assert_eq!(target.cli(&["-n", "2", "GET", "other:db"]), "two");
}

/// The runbook's nightly job as deploy/systemd/tbg-backup.service runs it:
/// `tbg backup --full --config` writes the dump, the Redis snapshot and the
/// config archive; `tbg verify-backup --config` checks the dump.
#[test]
fn full_backup_from_the_config_then_verify() {
    let server = seeded();
    let redis = RedisServer::start();
    redis.cli(&["XADD", "mining:share_submitted", "*", "data", "{}"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tbg.toml");
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[redis]\nurl = \"{}\"\n[collector]\npostgres_url = \"{}\"\n",
            redis.url(),
            url(&server, "postgres")
        ),
    )
    .unwrap();
    let backups = dir.path().join("backups");
    let out = tbg(&[
        "backup",
        "--full",
        "--config",
        config.to_str().unwrap(),
        "--backup-dir",
        backups.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in ["postgres: ", "redis: ", "config: "] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    for sub in ["daily", "redis", "config"] {
        assert!(
            std::fs::read_dir(backups.join(sub)).unwrap().count() > 0,
            "{sub}"
        );
    }
    let dumps = dumps_in(&backups.join("daily"));
    assert_eq!(dumps.len(), 1);
    let out = tbg(&[
        "verify-backup",
        dumps[0].to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("OK"));
}
