//! Redis snapshot copies and configuration archives.

use std::path::Path;

use tbg_ops::{backup_config, backup_redis, backup_stamp};
use tbg_testkit::RedisServer;

/// `count` fake files `<stamp><suffix>` in `dir`, one a day, the oldest first.
fn plant_old(dir: &Path, suffix: &str, count: i64) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let start = time::Date::from_calendar_date(2026, time::Month::January, 1)
        .unwrap()
        .midnight()
        .assume_utc();
    (0..count)
        .map(|day| {
            let name = format!(
                "{}{suffix}",
                backup_stamp(start + time::Duration::days(day))
            );
            std::fs::write(dir.join(&name), b"old").unwrap();
            name
        })
        .collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn redis_snapshot_is_an_rdb_with_the_data_and_fourteen_are_kept() {
    let redis = RedisServer::start();
    assert_eq!(redis.cli(&["SET", "tbg:backup-probe", "value-42"]), "OK");
    let dir = tempfile::tempdir().expect("tempdir");
    let old = plant_old(&dir.path().join("redis"), ".rdb", 14);

    let (snapshot, removed) = backup_redis(&redis.url(), dir.path(), 14)
        .await
        .expect("redis backup");
    let bytes = std::fs::read(&snapshot).unwrap();
    assert!(bytes.starts_with(b"REDIS"), "not an RDB file");
    // The key and its value are in the snapshot (RDB stores short strings raw).
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(find(b"tbg:backup-probe") && find(b"value-42"));

    let names = names_in(&dir.path().join("redis"));
    assert_eq!(names.len(), 14);
    assert!(!names.contains(&old[0]), "the oldest was kept");
    assert_eq!(removed.len(), 1);
    assert!(names.contains(&snapshot.file_name().unwrap().to_string_lossy().into_owned()));
}

#[tokio::test]
async fn redis_unreachable_is_an_error_and_leaves_no_file() {
    let port = tbg_testkit::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let error = backup_redis(&format!("redis://127.0.0.1:{port}/"), dir.path(), 14)
        .await
        .expect_err("no server");
    assert!(error.to_string().contains("redis-cli"), "{error}");
    assert!(names_in(&dir.path().join("redis")).is_empty());
}

#[tokio::test]
async fn config_archive_holds_the_files_and_ten_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tbg.toml");
    std::fs::write(&config, "network = \"regtest\"\n").unwrap();
    let backups = dir.path().join("backups");
    let old = plant_old(&backups.join("config"), ".tar.gz", 12);

    let (archive, removed) = backup_config(std::slice::from_ref(&config), &backups, 10)
        .await
        .expect("config backup");
    assert_eq!(removed.len(), 3);
    let names = names_in(&backups.join("config"));
    assert_eq!(names.len(), 10);
    assert!(!names.contains(&old[2]) && names.contains(&old[3]));

    let listing = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&archive)
        .arg("tbg.toml")
        .output()
        .unwrap();
    assert!(listing.status.success());
    assert_eq!(listing.stdout, b"network = \"regtest\"\n");

    let missing = backup_config(&[dir.path().join("absent.toml")], &backups, 10).await;
    assert!(missing.is_err());
}
