//! `tbg backup`, `tbg restore`, `tbg verify-backup` as an operator runs them,
//! against a private PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tbg_testkit::PgServer;

fn tbg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tbg"))
        .args(args)
        .env_remove("TBG_CONFIG")
        .env_remove("TBG_POSTGRES_URL")
        .env_remove("TBG_BACKUP_DIR")
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
        text(&out.stdout).contains("schema version 2"),
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
    assert!(
        stdout.contains("tbg collector --replay --from "),
        "{stdout}"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_database WHERE datname = 'tbg_new'"),
        "0"
    );

    let out = tbg(&["restore", dump, "--database-url", &target, "--confirm"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout)
        .contains("next: bring it forward from the journal: tbg collector --replay --from"));
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
}
