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
            "tbg-health.service",
            "tbg-backup.timer",
        ] {
            assert!(stdout.contains(unit), "{unit} not checked: {stdout}");
        }
    }
}
