//! The unit files of deploy/systemd pass `systemd-analyze verify` (the
//! script reports "skipped" and passes where systemd is not installed).

#[test]
fn systemd_units_verify() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/systemd/verify.sh"
    );
    // Any executable stands in for the tbg binary: verify checks it exists.
    let output = std::process::Command::new("sh")
        .arg(script)
        .arg("/bin/true")
        .output()
        .expect("run verify.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    if !stderr.contains("skipped") {
        for unit in [
            "tbg-pool.service",
            "tbg-collector.service",
            "tbg-publisher.service",
            "tbg-health.service",
            "tbg-backup.timer",
        ] {
            assert!(stdout.contains(unit), "{unit} not checked: {stdout}");
        }
    }
}

/// Runs the liveness re-check of `tbg-health-failed.service` (its
/// ExecStart, unescaped from systemd's `$$`) against an HTTP server that
/// answers `statuses` in turn (then 200), with short pauses and the
/// restart replaced by a marker. Returns (restarted, checks made).
fn run_health_failed(statuses: &[u16]) -> (bool, usize) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/systemd/tbg-health-failed.service"
    ))
    .expect("the unit");
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart=/bin/sh -c '"))
        .and_then(|rest| rest.strip_suffix('\''))
        .expect("ExecStart=/bin/sh -c '...'");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health/live", listener.local_addr().unwrap());
    let checks = Arc::new(AtomicUsize::new(0));
    let served = checks.clone();
    let statuses = statuses.to_vec();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = served.fetch_add(1, Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    for needle in [
        "http://127.0.0.1:9100/health/live",
        "sleep 10",
        "/bin/systemctl restart tbg-pool.service",
    ] {
        assert!(exec.contains(needle), "{needle:?} not in {exec}");
    }
    let script = exec
        .replace("$$", "$")
        .replace("http://127.0.0.1:9100/health/live", &url)
        .replace("sleep 10", "sleep 0.05")
        .replace("/bin/systemctl restart tbg-pool.service", "echo RESTARTED");
    let output = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(output.status.success(), "{output:?}");
    let restarted = String::from_utf8_lossy(&output.stdout).contains("RESTARTED");
    (restarted, checks.load(Ordering::SeqCst))
}

#[test]
fn the_health_unit_restarts_the_pool_only_after_3_failed_liveness_checks_in_a_row() {
    if !std::path::Path::new("/usr/bin/curl").exists() {
        eprintln!("SKIPPED: no /usr/bin/curl");
        return;
    }
    // Live at once, or after one or two slow answers: no restart.
    assert_eq!(run_health_failed(&[]), (false, 1));
    assert_eq!(run_health_failed(&[503]), (false, 2));
    assert_eq!(run_health_failed(&[503, 503]), (false, 3));
    // Not live three times in a row: restarted.
    assert_eq!(run_health_failed(&[503, 503, 503]), (true, 3));
}
