//! Stratum over TLS (`[stratum_tls]`): a TLS miner finds blocks that the
//! embedded node accepts, paid to its address, beside the plain port; the
//! certificate is swapped by a reload without dropping connected miners; a
//! plain-TCP client or a silent one on the TLS port is closed and counted.
//! Certificates are made by rcgen (`tbg_testkit::pki`): a CA the miner
//! trusts and leaves it signs.

use std::path::Path;
use std::time::Duration;

use tbg_miner::{mine_shares, MinerConfig, StratumClient};
use tbg_pool::tls::{TlsError, TlsIdentity, TlsSettings};
use tbg_pool::PoolCounters;
use tbg_testkit::pki::Pki;
use tbg_testkit::{regtest_address, AddressKind, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_settings(cert_file: &Path, key_file: &Path) -> TlsSettings {
    TlsSettings {
        bind: "127.0.0.1:0".parse().unwrap(),
        cert_file: cert_file.to_owned(),
        key_file: key_file.to_owned(),
        handshake_timeout: Duration::from_secs(1),
    }
}

fn fingerprint(cert_file: &Path, key_file: &Path) -> String {
    TlsIdentity::load(cert_file, key_file).unwrap().fingerprint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_miner_finds_blocks_paid_to_its_address_beside_the_plain_port() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("pool");
    let env = TestEnv::start_with(|settings| settings.tls = Some(tls_settings(&cert, &key))).await;
    let tls_addr = env.service.pool.tls_addr().expect("the TLS port is open");
    assert_ne!(tls_addr.port(), env.stratum_addr().port());

    // Two rounds per port, one block each: a miner that found two blocks
    // on one job would race itself at one height.
    let ports = [
        (tls_addr, Some(pki.miner_tls()), AddressKind::P2tr),
        (env.stratum_addr(), None, AddressKind::P2wpkh),
    ];
    for (pool, tls, kind) in ports.iter().chain(ports.iter()) {
        let (address, script) = regtest_address(*kind);
        let start_height = env.node.block_count();
        let mut config = MinerConfig::new(*pool, format!("{address}.rig"));
        config.tls = tls.clone();
        config.max_blocks = Some(1);
        let (summary, _) = mine_shares(config, Duration::from_secs(60))
            .await
            .expect("the miner connects and mines");
        assert_eq!(summary.block_candidates, 1, "tls: {}", tls.is_some());
        env.wait_until("the block accepted", Duration::from_secs(30), |env| {
            env.node.block_count() > start_height
        })
        .await;
        let tip = env.node.get_block(&env.node.best_block_hash()).unwrap();
        assert_eq!(
            tip.txdata[0].output[0].script_pubkey,
            *script,
            "the block pays its finder (tls: {})",
            tls.is_some()
        );
    }
    // The node has them; the pool counts each once the node's answer is in.
    env.wait_until(
        "four blocks counted accepted",
        Duration::from_secs(10),
        |env| env.service.pool.status().blocks_accepted >= 4,
    )
    .await;
    let status = env.service.pool.status();
    assert_eq!(status.blocks_rejected, 0, "{status:?}");
    assert_eq!(
        PoolCounters::get(&env.service.pool.counters().tls_handshake_failures),
        0
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_renewed_certificate_and_keeps_connected_miners() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("live");
    let first = fingerprint(&cert, &key);
    let env = TestEnv::start_with(|settings| settings.tls = Some(tls_settings(&cert, &key))).await;
    let tls_addr = env.service.pool.tls_addr().unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);

    let mut before = StratumClient::connect_with(tls_addr, None, Some(&pki.miner_tls()))
        .await
        .unwrap();
    assert_eq!(before.peer_certificate_sha256(), Some(first.as_str()));
    assert!(before
        .request("mining.subscribe", serde_json::json!(["tls-test"]))
        .await
        .unwrap()
        .is_ok());

    // Renewed in place, as certbot does, then reloaded (SIGHUP).
    let (renewed_cert, renewed_key) = pki.leaf("renewed");
    std::fs::copy(&renewed_cert, &cert).unwrap();
    std::fs::copy(&renewed_key, &key).unwrap();
    let second = fingerprint(&cert, &key);
    assert_ne!(first, second);
    let served = env.service.pool.reload_tls(None).await.unwrap();
    assert_eq!(served.as_deref(), Some(second.as_str()));

    let mut after = StratumClient::connect_with(tls_addr, None, Some(&pki.miner_tls()))
        .await
        .unwrap();
    assert_eq!(after.peer_certificate_sha256(), Some(second.as_str()));
    // The miner connected before the reload goes on, on its old session.
    let authorized = before
        .request(
            "mining.authorize",
            serde_json::json!([format!("{address}.before"), "x"]),
        )
        .await
        .unwrap();
    assert!(authorized.is_ok(), "{:?}", authorized.error);
    before.wait_push("mining.notify").await.unwrap();

    // A broken pair changes nothing: the renewed certificate stays served.
    std::fs::write(&key, "not a key").unwrap();
    let refused = env.service.pool.reload_tls(None).await.unwrap_err();
    assert!(matches!(refused, TlsError::NoKey(_)), "{refused}");
    let (other_cert, _) = pki.leaf("other");
    let mismatch = env
        .service
        .pool
        .reload_tls(Some(&tls_settings(&other_cert, &renewed_key)))
        .await
        .unwrap_err();
    assert!(
        mismatch.to_string().contains("do not go together"),
        "{mismatch}"
    );
    let still = StratumClient::connect_with(tls_addr, None, Some(&pki.miner_tls()))
        .await
        .unwrap();
    assert_eq!(still.peer_certificate_sha256(), Some(second.as_str()));
    assert!(after
        .request("mining.subscribe", serde_json::json!(["tls-test"]))
        .await
        .unwrap()
        .is_ok());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_and_silent_clients_on_the_tls_port_are_closed_and_counted() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("pool");
    let env = TestEnv::start_with(|settings| settings.tls = Some(tls_settings(&cert, &key))).await;
    let tls_addr = env.service.pool.tls_addr().unwrap();
    let failures = || PoolCounters::get(&env.service.pool.counters().tls_handshake_failures);

    // A miner configured for stratum+tcp on the TLS port: no answer in
    // stratum, the connection closes.
    let mut plain = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    plain
        .write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "closed, not left open");
    assert!(
        !String::from_utf8_lossy(&answer).contains("\"result\""),
        "no stratum answer over plain TCP: {answer:?}"
    );

    // A client that connects and says nothing: closed after the handshake
    // timeout (1 s here).
    let mut silent = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    // A client that does not trust the pool's certificate.
    let stranger = Pki::new();
    let untrusting = stranger.miner_tls();
    let refused = StratumClient::connect_with(tls_addr, None, Some(&untrusting)).await;
    assert!(
        matches!(&refused, Err(tbg_miner::MinerError::Tls(_))),
        "the client refuses a certificate it does not trust"
    );

    env.wait_until(
        "three failed handshakes counted",
        Duration::from_secs(5),
        |_| failures() == 3,
    )
    .await;
    assert_eq!(
        PoolCounters::get(&env.service.pool.counters().connections),
        0,
        "every connection is closed"
    );
    let status = env.service.pool.status();
    assert_eq!(status.miners, 0);
    env.shutdown().await;
}

#[test]
fn a_certificate_that_does_not_load_is_refused_naming_the_file_and_the_fault() {
    let pki = Pki::new();
    let (cert, _) = pki.leaf("a");
    let (_, other_key) = pki.leaf("b");
    let missing = pki.path("missing.pem");
    for (cert_file, key_file, expected) in [
        (
            missing.clone(),
            other_key.clone(),
            "cannot read the TLS certificate file",
        ),
        (cert.clone(), other_key.clone(), "do not go together"),
        (
            pki.path("b.key"),
            other_key.clone(),
            "holds no PEM certificate",
        ),
        (cert.clone(), cert.clone(), "holds no PEM private key"),
    ] {
        let error = TlsIdentity::load(&cert_file, &key_file).unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
        assert!(
            error.to_string().contains(&*cert_file.to_string_lossy())
                || error.to_string().contains(&*key_file.to_string_lossy()),
            "names the file: {error}"
        );
    }
}
