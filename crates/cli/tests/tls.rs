//! Stratum over TLS as an operator runs it: `[stratum_tls]` in the config,
//! `tbg miner --pool stratum+ssl://localhost:PORT --tls-ca ca.pem` finds a
//! block on the devnet, a renewed certificate goes into service on SIGHUP
//! (a broken one does not), and `check-config` names a pair that does not
//! load before the pool is started with it.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use tbg_testkit::pki::Pki;
use tbg_testkit::{free_port, regtest_address, AddressKind};

mod support;
use support::{devnet, kill_and_reap, signal, tbg, wait_exit, LogLines};

fn tls_config(dir: &Path, tls_port: u16, cert: &Path, key: &Path) -> std::path::PathBuf {
    let path = dir.join("tbg.toml");
    std::fs::write(
        &path,
        format!(
            // The node is for check-config: devnet brings its own.
            "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:1\"\nuser = \"u\"\npass = \"p\"\n[metrics]\nbind = \"127.0.0.1:0\"\ncollector_bind = \"127.0.0.1:0\"\n\
             [web]\nbind = \"127.0.0.1:0\"\n\
             [stratum_tls]\nbind = \"127.0.0.1:{tls_port}\"\ncert_file = {cert:?}\nkey_file = {key:?}\n"
        ),
    )
    .unwrap();
    path
}

fn fingerprint(cert: &Path, key: &Path) -> String {
    tbg_pool::tls::TlsIdentity::load(cert, key)
        .unwrap()
        .fingerprint
}

struct Devnet(Child);

impl Drop for Devnet {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

#[test]
fn a_tls_miner_finds_a_block_and_sighup_serves_the_renewed_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("pool");
    let dir = tempfile::tempdir().unwrap();
    let tls_port = free_port();
    let config = tls_config(dir.path(), tls_port, &cert, &key);

    let checked = tbg()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");

    let mut devnet = Devnet(devnet(&config).spawn().unwrap());
    let mut log = LogLines::of(&mut devnet.0);
    let listening = log.wait_for("stratum TLS server listening");
    assert!(listening.contains(&fingerprint(&cert, &key)), "{listening}");

    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let pool = format!("stratum+ssl://localhost:{tls_port}");
    let mined = tbg()
        .args(["miner", "--pool", &pool, "--tls-ca"])
        .arg(pki.ca_file())
        .args(["-u", &format!("{address}.tls"), "--blocks", "1"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let miner_log = String::from_utf8_lossy(&mined.stderr);
    assert!(mined.status.success(), "{miner_log}");
    assert!(
        miner_log.contains("block found and accepted by the pool"),
        "{miner_log}"
    );
    log.wait_for("block accepted");

    // A miner that does not trust the certificate says so and stops.
    let stranger = Pki::new();
    let refused = tbg()
        .args(["miner", "--pool", &pool, "--tls-ca"])
        .arg(stranger.ca_file())
        .args(["-u", &address, "--blocks", "1"])
        .output()
        .unwrap();
    let refused_log = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(refused_log.contains("TLS: handshake with"), "{refused_log}");

    // Renewed in place, then `systemctl reload` (SIGHUP).
    let (renewed_cert, renewed_key) = pki.leaf("renewed");
    std::fs::copy(&renewed_cert, &cert).unwrap();
    std::fs::copy(&renewed_key, &key).unwrap();
    signal(&devnet.0, "HUP");
    let loaded = log.wait_for("stratum TLS: certificate loaded");
    assert!(
        loaded.contains(&fingerprint(&renewed_cert, &renewed_key)),
        "{loaded}"
    );

    // A half-written renewal: the pool says so and keeps the last good pair.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
    signal(&devnet.0, "HUP");
    let kept = log.wait_for("stratum TLS: the certificate and key do not load");
    assert!(kept.contains(&*key.to_string_lossy()), "{kept}");
    let again = tbg()
        .args(["miner", "--pool", &pool, "--tls-ca"])
        .arg(pki.ca_file())
        .args(["-u", &format!("{address}.again"), "--blocks", "1"])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    signal(&devnet.0, "TERM");
    assert_eq!(wait_exit(&mut devnet.0, Duration::from_secs(10)), Some(0));
}

#[test]
fn a_certificate_that_does_not_load_is_named_by_check_config_and_stops_the_pool() {
    let pki = Pki::new();
    let (cert, _) = pki.leaf("a");
    let (_, other_key) = pki.leaf("b");
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(dir.path(), free_port(), &cert, &other_key);

    let checked = tbg()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("do not go together"), "{stderr}");

    let started = devnet(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success(), "{stderr}");
    assert!(
        stderr.contains("stratum_tls") && stderr.contains(&*other_key.to_string_lossy()),
        "{stderr}"
    );
}
