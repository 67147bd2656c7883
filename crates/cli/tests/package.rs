//! The Debian package (scripts/package-deb.sh) installed on this machine
//! with dpkg, the pool started with the command, user, directory and
//! environment file of its installed unit (as systemd would), stopped, and
//! the package purged. Needs root and dpkg; skipped otherwise, and skipped
//! where a `tbg` package or user already exists (never touches a real
//! installation). Everything it creates is removed at the end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tbg_testkit::free_port;

mod support;
use support::{signal, wait_exit};

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap()
}

fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `Key=value` of the installed unit (the last one of that key).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= in the unit"))
        .to_owned()
}

/// Removes what the test made, whatever happened.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "tbg"]);
        let _ = std::fs::remove_dir_all("/var/lib/tbg");
        let _ = std::fs::remove_dir_all("/run/tbg");
        let _ = run("userdel", &["tbg"]);
    }
}

fn skip_reason() -> Option<&'static str> {
    if !run("id", &["-u"]).stdout.starts_with(b"0") {
        return Some("not root");
    }
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        return Some("no dpkg-deb");
    }
    if run("dpkg", &["-s", "tbg"]).status.success() {
        return Some("a tbg package is installed here");
    }
    if run("getent", &["passwd", "tbg"]).status.success() || Path::new("/var/lib/tbg").exists() {
        return Some("a tbg user or /var/lib/tbg exists here");
    }
    None
}

#[test]
fn the_debian_package_installs_runs_its_unit_command_and_purges() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let built = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/package-deb.sh"
    ))
    .env("TBG_BINARY", env!("CARGO_BIN_EXE_tbg"))
    .env("TBG_DEB_OUT", out.path())
    .env("TBG_DEB_COMPRESS", "none")
    .stderr(Stdio::inherit())
    .output()
    .unwrap();
    assert!(built.status.success());
    let package = String::from_utf8_lossy(&built.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let info = ok("dpkg-deb", &["--info", &package]);
    assert!(info.contains("Package: tbg"), "{info}");

    let _cleanup = Cleanup;
    let installed = ok("dpkg", &["-i", &package]);
    assert!(
        installed.contains("systemctl enable --now tbg-pool"),
        "{installed}"
    );

    // What the package put in place.
    let version = ok("/usr/bin/tbg", &["--version"]);
    assert!(version.starts_with("tbg "), "{version}");
    let user = ok("getent", &["passwd", "tbg"]);
    assert!(user.contains(":/var/lib/tbg:"), "{user}");
    assert!(
        user.trim_end().ends_with("nologin"),
        "a system user: {user}"
    );
    let modes = ok(
        "stat",
        &[
            "-c",
            "%U:%G %a",
            "/var/lib/tbg",
            "/etc/tbg/tbg.env",
            "/etc/tbg/tbg.toml",
        ],
    );
    assert_eq!(
        modes.lines().collect::<Vec<_>>(),
        ["tbg:tbg 750", "root:root 600", "root:tbg 640"],
        "state dir, secrets, config"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/tbg-pool.service").unwrap();
    let exec_start = unit_value(&unit, "ExecStart");
    assert!(
        exec_start.starts_with("/usr/bin/tbg pool --config /etc/tbg/tbg.toml"),
        "{exec_start}"
    );
    for timer in ["tbg-backup.timer", "tbg-health.timer"] {
        assert!(
            Path::new("/lib/systemd/system").join(timer).exists(),
            "{timer}"
        );
    }
    assert!(Path::new("/usr/share/doc/tbg/notifications.md").exists());

    // An operator's edits: free ports here (tests run side by side); the
    // node of the example is not running, which the pool waits out.
    let (stratum, metrics, web) = (free_port(), free_port(), free_port());
    let config = std::fs::read_to_string("/etc/tbg/tbg.toml")
        .unwrap()
        .replace(
            "bind = \"[::]:3333\"",
            &format!("bind = \"127.0.0.1:{stratum}\""),
        )
        .replace(
            "bind = \"127.0.0.1:9100\"",
            &format!("bind = \"127.0.0.1:{metrics}\""),
        )
        .replace(
            "bind = \"127.0.0.1:8080\"",
            &format!("bind = \"127.0.0.1:{web}\""),
        );
    std::fs::write("/etc/tbg/tbg.toml", config).unwrap();
    // The node's password goes into the secrets file, not the config.
    let mut env = std::fs::read_to_string("/etc/tbg/tbg.env").unwrap();
    env.push_str("TBG_NODE_PASS=not-the-real-one\n");
    std::fs::write("/etc/tbg/tbg.env", env).unwrap();

    // As systemd runs it: its user and group, working directory, runtime
    // directory and environment file.
    assert_eq!(unit_value(&unit, "User"), "tbg");
    assert_eq!(unit_value(&unit, "WorkingDirectory"), "/var/lib/tbg");
    ok(
        "install",
        &["-d", "-o", "tbg", "-g", "tbg", "-m", "0750", "/run/tbg"],
    );
    let argv: Vec<&str> = exec_start.split_whitespace().collect();
    let mut pool = Command::new("setpriv")
        .args(["--reuid=tbg", "--regid=tbg", "--init-groups", "--"])
        .args(&argv)
        .current_dir("/var/lib/tbg")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RUNTIME_DIRECTORY", "/run/tbg")
        .envs(
            std::fs::read_to_string("/etc/tbg/tbg.env")
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", metrics)) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"GET /health/live HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                break true;
            }
        }
        if Instant::now() > deadline || pool.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(live, "the installed pool is live on its metrics port");
    assert!(std::net::TcpStream::connect(("127.0.0.1", stratum)).is_ok());
    signal(&pool, "TERM");
    assert_eq!(wait_exit(&mut pool, Duration::from_secs(15)), Some(0));
    let journal = ok("stat", &["-c", "%U", "/var/lib/tbg/journal/events.db"]);
    assert_eq!(journal.trim(), "tbg", "the journal is the pool user's");

    let purged = ok("dpkg", &["--purge", "tbg"]);
    assert!(
        purged.contains("/var/lib/tbg"),
        "says what it kept: {purged}"
    );
    for gone in [
        "/usr/bin/tbg",
        "/lib/systemd/system/tbg-pool.service",
        "/etc/tbg",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} removed");
    }
    assert!(
        Path::new("/var/lib/tbg/journal/events.db").exists(),
        "the journal survives a purge"
    );
}
