//! Backup, restore and verify against a real PostgreSQL (a private server
//! per test, on a free port), with the schema of the collector's migrations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tbg_ops::{
    apply_retention, backup_postgres, backup_stamp, plan_restore, restore, validate_backup,
    verify_backup, BackupLock, BackupOptions, OpsError, RestoreOptions, Retention,
};
use tbg_testkit::PgServer;

fn url(server: &PgServer, database: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname={database} connect_timeout=5",
        server.port
    )
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// A `tbg` database with the collector's schema and a few rows in the main tables.
async fn seeded_server() -> (PgServer, String) {
    let server = PgServer::start();
    server.psql("CREATE DATABASE tbg");
    let url = url(&server, "tbg");
    let mut client = connect(&url).await;
    tbg_collector::migrations::apply_migrations(&mut client)
        .await
        .expect("migrations apply");
    client
        .batch_execute(
            r#"
            SELECT tbg_ensure_day_partition('mining_events', '2026-11-24');
            SELECT tbg_ensure_day_partition('shares', '2026-11-24');
            INSERT INTO users (btc_address, first_seen, last_seen, total_shares)
              SELECT 'bc1qaddr' || i, now(), now(), i FROM generate_series(1, 3) i;
            INSERT INTO workers ("user", worker_name, first_seen, last_seen, source, region)
              VALUES ('bc1qaddr1', 'rig1', now(), now(), 'hosted', 'eu'),
                     ('bc1qaddr2', 'rig2', now(), now(), 'hosted', 'eu');
            INSERT INTO blocks (block_height, block_hash, "user", worker_name, reward, coinbase_sig,
                                source, region, found_at, event_id)
              VALUES (101, '00ab', 'bc1qaddr1', 'rig1', 312500000, 'tbg', 'hosted', 'eu', now(), 'ev-block');
            INSERT INTO mining_events (ts, event_id, event_type, source, region, payload)
              SELECT '2026-11-24T12:00:00Z'::timestamptz + i * interval '1 minute', 'ev' || i,
                     'share_submitted', 'hosted', 'eu', '{"a": 1}'
              FROM generate_series(1, 5) i;
            INSERT INTO shares (time, btc_address, worker_name, difficulty, share_diff, is_valid,
                                ip_address, source, region, event_id)
              SELECT '2026-11-24T12:00:00Z'::timestamptz + i * interval '1 minute', 'bc1qaddr1', 'rig1',
                     1, 2, true, '127.0.0.1', 'hosted', 'eu', 'ev' || i
              FROM generate_series(1, 4) i;
            -- The collector has written the journal up to seq 9.
            UPDATE collector_cursor SET seq = 9 WHERE sink = 'postgres';
            "#,
        )
        .await
        .expect("seed rows");
    (server, url)
}

fn options(dir: &Path) -> BackupOptions {
    BackupOptions {
        backup_dir: dir.to_path_buf(),
        retention: Retention::default(),
        pg_bin_dir: None,
    }
}

/// Every table's rows as text, in a stable order: "the data as backed up".
async fn snapshot_of(url: &str) -> BTreeMap<String, Vec<String>> {
    let client = connect(url).await;
    let mut data = BTreeMap::new();
    for table in [
        "users",
        "workers",
        "blocks",
        "mining_events",
        "shares",
        "schema_migrations",
        "collector_cursor",
    ] {
        let rows = client
            .query(
                &format!("SELECT t::text FROM {table} t ORDER BY t::text"),
                &[],
            )
            .await
            .expect("select");
        data.insert(
            table.to_string(),
            rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        );
    }
    data
}

fn databases(server: &PgServer) -> Vec<String> {
    let mut names: Vec<String> = server
        .psql("SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_verify_round_trip() {
    let (server, url) = seeded_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let before = snapshot_of(&url).await;

    let report = backup_postgres(&url, &options(dir.path()))
        .await
        .expect("backup");
    assert!(report.dump.starts_with(dir.path().join("daily")));
    assert!(report.dump.to_string_lossy().ends_with(".dump"));
    let manifest = &report.manifest;
    assert_eq!(manifest.database, "tbg");
    let newest = tbg_collector::migrations::MIGRATIONS
        .last()
        .map(|m| m.version);
    assert_eq!(manifest.schema_version, newest);
    assert_eq!(
        manifest.size_bytes,
        std::fs::metadata(&report.dump).unwrap().len()
    );
    assert!(manifest.server_version.starts_with(char::is_numeric));
    let counts = &manifest.row_counts;
    assert_eq!(counts.get("public.users"), Some(&3));
    assert_eq!(counts.get("public.workers"), Some(&2));
    assert_eq!(counts.get("public.blocks"), Some(&1));
    assert_eq!(counts.get("public.mining_events"), Some(&5));
    assert_eq!(counts.get("public.shares"), Some(&4));
    let migrations = tbg_collector::migrations::MIGRATIONS.len() as i64;
    assert_eq!(counts.get("public.schema_migrations"), Some(&migrations));
    assert_eq!(counts.get("public.collector_cursor"), Some(&1));
    assert_eq!(manifest.collector_cursor, Some(9));
    // Partitions are counted through their parent, not twice.
    assert!(!counts.keys().any(|t| t.contains("_p2026")), "{counts:?}");
    let on_disk: tbg_ops::Manifest =
        serde_json::from_slice(&std::fs::read(&report.manifest_path).unwrap()).unwrap();
    assert_eq!(&on_disk, manifest);

    // Change the data after the backup.
    let client = connect(&url).await;
    client
        .batch_execute(
            "DELETE FROM users WHERE btc_address = 'bc1qaddr1';
             INSERT INTO blocks (block_height, block_hash, \"user\", worker_name, reward, coinbase_sig,
                                 source, region, found_at, event_id)
               VALUES (102, '00cd', 'x', 'y', 1, 'tbg', 'hosted', 'eu', now(), 'ev-later');
             UPDATE collector_cursor SET seq = 20 WHERE sink = 'postgres';",
        )
        .await
        .unwrap();
    let changed = snapshot_of(&url).await;
    assert_ne!(changed, before);

    // Preview: a new database, nothing created.
    let fresh_url = url_for(&url, "tbg_restored");
    let plan = plan_restore(&report.dump, &fresh_url, None)
        .await
        .expect("plan");
    assert!(!plan.target_exists);
    assert_eq!(plan.target_database, "tbg_restored");
    let shown = plan.to_string();
    assert!(shown.contains("tbg_restored"), "{shown}");
    assert!(shown.contains("public.users"), "{shown}");
    // The replay starts right after the last event the dump holds.
    assert!(shown.contains("collector cursor: journal seq 9"), "{shown}");
    assert!(
        shown.ends_with("afterwards:      tbg collector --replay --from seq:10"),
        "{shown}"
    );
    assert!(!databases(&server).contains(&"tbg_restored".to_string()));

    // Restore into the new database: the data as backed up.
    let restored = restore(&plan, &fresh_url, &RestoreOptions::default())
        .await
        .expect("restore into a new database");
    assert!(restored.created_database);
    assert_eq!(&restored.row_counts, counts);
    assert_eq!(restored.collector_cursor, Some(9));
    assert_eq!(
        restored.replay_command,
        "tbg collector --replay --from seq:10"
    );
    assert_eq!(snapshot_of(&fresh_url).await, before);

    // The live database is not empty: refused without --clean, unchanged.
    let plan_live = plan_restore(&report.dump, &url, None).await.expect("plan");
    assert!(plan_live.target_exists && !plan_live.target_tables.is_empty());
    let refused = restore(&plan_live, &url, &RestoreOptions::default()).await;
    assert!(
        matches!(refused, Err(OpsError::TargetNotEmpty { .. })),
        "{refused:?}"
    );
    assert_eq!(snapshot_of(&url).await, changed);

    // With --clean it is replaced by the backup; the old one is kept renamed.
    let replaced = restore(
        &plan_live,
        &url,
        &RestoreOptions {
            clean: true,
            pg_bin_dir: None,
        },
    )
    .await
    .expect("restore --clean");
    assert_eq!(snapshot_of(&url).await, before);
    let previous = replaced.previous_database.expect("old database kept");
    assert_eq!(snapshot_of(&url_for(&url, &previous)).await, changed);

    // verify-backup: checks pass, scratch restore matches, scratch dropped.
    let databases_before = databases(&server);
    let verified = verify_backup(
        &report.dump,
        &url,
        Some(std::time::Duration::from_secs(3600)),
        None,
    )
    .await
    .expect("verify");
    assert!(verified.scratch_database.starts_with("tbg_verify_"));
    assert_eq!(&verified.row_counts, counts);
    assert_eq!(databases(&server), databases_before);

    // A manifest written before the cursor was recorded: the preview falls
    // back to a time well before the backup, the restore reads the cursor
    // from the restored database and is exact again.
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report.manifest_path).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("collector_cursor");
    std::fs::write(&report.manifest_path, serde_json::to_vec(&old).unwrap()).unwrap();
    let old_url = url_for(&url, "tbg_from_old_manifest");
    let plan = plan_restore(&report.dump, &old_url, None)
        .await
        .expect("an old manifest still plans");
    assert_eq!(plan.backup.manifest.collector_cursor, None);
    let created = tbg_ops::parse_stamp(&manifest.created_at.replace(['-', ':'], "")).unwrap();
    let margin_before = created - tbg_ops::REPLAY_TIME_MARGIN;
    let expected_from = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        margin_before.year(),
        u8::from(margin_before.month()),
        margin_before.day(),
        margin_before.hour(),
        margin_before.minute(),
        margin_before.second()
    );
    assert!(expected_from < manifest.created_at);
    assert_eq!(
        plan.replay_command(),
        format!("tbg collector --replay --from {expected_from}")
    );
    let restored = restore(&plan, &old_url, &RestoreOptions::default())
        .await
        .expect("restore with an old manifest");
    assert_eq!(restored.collector_cursor, Some(9));
    assert_eq!(
        restored.replay_command,
        "tbg collector --replay --from seq:10"
    );
}

fn url_for(url: &str, database: &str) -> String {
    url.replace("dbname=tbg", &format!("dbname={database}"))
}

/// Writes `bytes` as `<stamp>.dump` in a fresh dir, with `manifest` (if any) next to it.
fn planted(dir: &Path, name: &str, bytes: &[u8], manifest: Option<String>) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let dump = sub.join("20261101T020000Z.dump");
    std::fs::write(&dump, bytes).unwrap();
    if let Some(manifest) = manifest {
        std::fs::write(sub.join("20261101T020000Z.manifest.json"), manifest).unwrap();
    }
    dump
}

/// (what, file, is the expected error).
type Case = (&'static str, PathBuf, fn(&OpsError) -> bool);

fn forged_manifest(real: &tbg_ops::Manifest, bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut manifest = real.clone();
    manifest.size_bytes = bytes.len() as u64;
    manifest.sha256 = hex::encode(Sha256::digest(bytes));
    serde_json::to_string(&manifest).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_foreign_files_are_refused_and_touch_nothing() {
    let (server, url) = seeded_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let report = backup_postgres(&url, &options(dir.path()))
        .await
        .expect("backup");
    let real = std::fs::read(&report.dump).unwrap();
    let real_manifest = std::fs::read_to_string(&report.manifest_path).unwrap();
    let random: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let text = b"this is a text file, not a backup\n".repeat(20);
    let truncated = real.get(..real.len() / 2).unwrap().to_vec();
    let mut flipped = real.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let bad = dir.path().join("bad");

    let cases: Vec<Case> = vec![
        ("missing file", bad.join("nope.dump"), |e| {
            matches!(e, OpsError::NotFound { .. })
        }),
        (
            "empty file",
            planted(&bad, "empty", b"", Some(real_manifest.clone())),
            |e| matches!(e, OpsError::EmptyFile { .. }),
        ),
        (
            "random bytes, no manifest",
            planted(&bad, "random", &random, None),
            |e| matches!(e, OpsError::ManifestMissing { .. }),
        ),
        (
            "random bytes, forged manifest",
            planted(
                &bad,
                "random-forged",
                &random,
                Some(forged_manifest(&report.manifest, &random)),
            ),
            |e| matches!(e, OpsError::NotAnArchive { .. }),
        ),
        (
            "text file, forged manifest",
            planted(
                &bad,
                "text",
                &text,
                Some(forged_manifest(&report.manifest, &text)),
            ),
            |e| matches!(e, OpsError::NotAnArchive { .. }),
        ),
        (
            "truncated dump",
            planted(&bad, "truncated", &truncated, Some(real_manifest.clone())),
            |e| matches!(e, OpsError::SizeMismatch { .. }),
        ),
        (
            "truncated dump, forged manifest",
            planted(
                &bad,
                "truncated-forged",
                &truncated,
                Some(forged_manifest(&report.manifest, &truncated)),
            ),
            |e| matches!(e, OpsError::NotAnArchive { .. }),
        ),
        (
            "flipped byte",
            planted(&bad, "flipped", &flipped, Some(real_manifest.clone())),
            |e| matches!(e, OpsError::ChecksumMismatch { .. }),
        ),
        (
            "manifest not json",
            planted(&bad, "manifest-text", &real, Some("hello".into())),
            |e| matches!(e, OpsError::ManifestInvalid { .. }),
        ),
    ];

    let before = snapshot_of(&url).await;
    let databases_before = databases(&server);
    let fresh_url = url_for(&url, "tbg_fresh");
    for (case, file, expected) in cases {
        let validated = validate_backup(&file, None).await;
        let error = validated.expect_err(case);
        assert!(expected(&error), "{case}: wrong error {error:?}");
        assert!(!error.to_string().is_empty());
        let plan = plan_restore(&file, &fresh_url, None).await;
        assert!(plan.is_err(), "{case}: restore planned");
        let verify = verify_backup(&file, &url, None, None).await;
        assert!(verify.is_err(), "{case}: verified");
    }
    assert_eq!(snapshot_of(&url).await, before);
    assert_eq!(databases(&server), databases_before);
    // The real backup still validates: the checks are not simply failing.
    validate_backup(&report.dump, None)
        .await
        .expect("real backup valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_required_tables_are_refused() {
    // A valid custom-format archive of some other database is foreign.
    let server = PgServer::start();
    server.psql("CREATE DATABASE other");
    let other = url(&server, "other");
    connect(&other)
        .await
        .batch_execute("CREATE TABLE things (x int); INSERT INTO things VALUES (1)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let report = backup_postgres(&other, &options(dir.path()))
        .await
        .expect("backup of any database works");
    assert_eq!(report.manifest.schema_version, None);
    let error = validate_backup(&report.dump, None)
        .await
        .expect_err("foreign");
    assert!(matches!(error, OpsError::MissingTables { .. }), "{error:?}");
    assert!(error.to_string().contains("public.blocks"), "{error}");
}

fn fake_backup(dir: &Path, at: time::OffsetDateTime) -> String {
    let stamp = backup_stamp(at);
    let daily = dir.join("daily");
    std::fs::create_dir_all(&daily).unwrap();
    std::fs::write(daily.join(format!("{stamp}.dump")), stamp.as_bytes()).unwrap();
    std::fs::write(daily.join(format!("{stamp}.manifest.json")), "{}").unwrap();
    stamp
}

fn stamps_in(dir: &Path) -> (Vec<String>, usize) {
    let mut dumps = Vec::new();
    let mut manifests = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stamp) = name.strip_suffix(".dump") {
            dumps.push(stamp.to_string());
        } else if name.ends_with(".manifest.json") {
            manifests += 1;
        }
    }
    dumps.sort();
    (dumps, manifests)
}

#[test]
fn retention_keeps_seven_daily_and_four_weekly_of_forty() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 40 daily backups at 02:00 UTC, 2026-10-01 (a Thursday) .. 2026-11-09 (a Monday),
    // retention after each, as the daily cron job does.
    let start = time::Date::from_calendar_date(2026, time::Month::October, 1)
        .unwrap()
        .midnight()
        .assume_utc();
    let mut all = Vec::new();
    for day in 0..40 {
        let at = start + time::Duration::days(day) + time::Duration::hours(2);
        all.push(fake_backup(dir.path(), at));
        apply_retention(dir.path(), Retention::default()).expect("retention");
    }
    let (daily, daily_manifests) = stamps_in(&dir.path().join("daily"));
    assert_eq!(daily, all[33..].to_vec());
    assert_eq!(daily_manifests, 7);
    let (weekly, weekly_manifests) = stamps_in(&dir.path().join("weekly"));
    // Newest of each of the last 4 ISO weeks: Mon 2026-11-09 (week 46),
    // Sun 11-08 (45), Sun 11-01 (44), Sun 10-25 (43).
    assert_eq!(
        weekly,
        vec![
            "20261025T020000Z",
            "20261101T020000Z",
            "20261108T020000Z",
            "20261109T020000Z"
        ]
    );
    assert_eq!(weekly_manifests, 4);
    // A weekly copy is the same content as the original dump.
    assert_eq!(
        std::fs::read(dir.path().join("weekly/20261025T020000Z.dump")).unwrap(),
        b"20261025T020000Z"
    );

    // Configurable; and one pass over 40 at once gives the same as daily runs.
    let once = tempfile::tempdir().expect("tempdir");
    for day in 0..40 {
        fake_backup(
            once.path(),
            start + time::Duration::days(day) + time::Duration::hours(2),
        );
    }
    apply_retention(
        once.path(),
        Retention {
            daily: 3,
            weekly: 2,
        },
    )
    .expect("retention");
    assert_eq!(stamps_in(&once.path().join("daily")).0, all[37..].to_vec());
    assert_eq!(
        stamps_in(&once.path().join("weekly")).0,
        vec!["20261108T020000Z", "20261109T020000Z"]
    );
}

#[tokio::test]
async fn lock_prevents_overlap_and_a_stale_lock_does_not_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let held = BackupLock::acquire(dir.path()).expect("first lock");
    let second = BackupLock::acquire(dir.path());
    assert!(matches!(second, Err(OpsError::Locked { .. })), "{second:?}");
    let error = backup_postgres("host=127.0.0.1 port=1 user=x", &options(dir.path()))
        .await
        .expect_err("backup while locked");
    assert!(matches!(error, OpsError::Locked { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&std::process::id().to_string()),
        "{error}"
    );
    drop(held);
    BackupLock::acquire(dir.path()).expect("free after release");

    // A lock file left by a dead process (pid in it, no flock held).
    let stale = tempfile::tempdir().expect("tempdir");
    std::fs::write(stale.path().join(".backup.lock"), "999999999").unwrap();
    BackupLock::acquire(stale.path()).expect("stale lock file does not block");
}
