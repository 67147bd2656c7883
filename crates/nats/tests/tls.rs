//! A NATS server as a cross-region deployment runs it: TLS with a private
//! CA, client certificates verified, a user and password. A relay's
//! publisher and the primary's ingest reach it with the `[nats]` files;
//! a client without the CA, its certificate or the password gets nothing
//! through, and a file that cannot be read is named at once.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use common::{append, two_regions, Running};
use tbg_journal::JournalReader;
use tbg_nats::{
    ensure_stream, ConnectError, Ingest, IngestConfig, NatsAccess, Publisher, PublisherConfig,
    StreamSettings,
};
use tbg_testkit::pki::Pki;
use tbg_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

async fn context(url: &str, access: &NatsAccess) -> jetstream::Context {
    let client = tbg_nats::connect(url, Duration::from_secs(2), access)
        .await
        .expect("the options are usable");
    jetstream::new(client)
}

/// The stream, asked for until `within` is over.
async fn stream_within(js: &jetstream::Context, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if ensure_stream(js, &StreamSettings::default()).await.is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_a_tls_nats_with_a_private_ca_client_certificates_and_a_password() {
    let pki = Pki::new();
    let (server_cert, server_key) = pki.leaf("nats");
    let (client_cert, client_key) = pki.leaf("eu-west");
    let path = |p: &std::path::Path| p.display().to_string();
    let nats = NatsServer::start_with(&[
        "--tlsverify".into(),
        "--tlscert".into(),
        path(&server_cert),
        "--tlskey".into(),
        path(&server_key),
        "--tlscacert".into(),
        path(&pki.ca_file()),
        "--user".into(),
        "eu-west".into(),
        "--pass".into(),
        "a password of the region".into(),
    ]);
    let url = format!(
        "tls://eu-west:a%20password%20of%20the%20region@localhost:{}",
        nats.port
    );
    let access = NatsAccess {
        tls_ca_file: Some(pki.ca_file()),
        tls_client: Some((client_cert.clone(), client_key.clone())),
        creds_file: None,
    };

    // Without its certificate, the CA or the password, a client gets no
    // answer.
    let no_certificate = NatsAccess {
        tls_client: None,
        ..access.clone()
    };
    let no_ca = NatsAccess {
        tls_ca_file: None,
        ..access.clone()
    };
    let wrong_password = format!("tls://eu-west:guessed@localhost:{}", nats.port);
    for (what, url, refused) in [
        ("no client certificate", &url, &no_certificate),
        ("no CA", &url, &no_ca),
        ("a wrong password", &wrong_password, &access),
    ] {
        let js = context(url, refused).await;
        assert!(
            !stream_within(&js, Duration::from_secs(3)).await,
            "a client with {what} reached JetStream"
        );
    }
    // A file that cannot be read is named, not retried as an outage.
    let missing = NatsAccess {
        tls_ca_file: Some(pki.path("no-such-ca.pem")),
        ..access.clone()
    };
    match tbg_nats::connect(&url, Duration::from_secs(2), &missing).await {
        Err(ConnectError::File { path, .. }) => assert!(path.ends_with("no-such-ca.pem")),
        Err(other) => panic!("not the file's error: {other}"),
        Ok(_) => panic!("a missing CA file was accepted"),
    }

    // With the files, a relay's events reach the primary's journal.
    let js = context(&url, &access).await;
    assert!(
        stream_within(&js, Duration::from_secs(20)).await,
        "JetStream over TLS"
    );
    let dir = tempfile::tempdir().unwrap();
    let (relay, relay_events, primary, primary_path) = two_regions(dir.path());
    append(&relay, &relay_events, 0, 200).await;

    let stop = CancellationToken::new();
    let publisher = Publisher::new(
        PublisherConfig::new(dir.path().join("relay.db"), dir.path().join("relay.cursor")),
        context(&url, &access).await,
    );
    let published = publisher.stats();
    let publishing = Running {
        stop: stop.clone(),
        task: tokio::spawn({
            let stop = stop.clone();
            async move { publisher.run(stop).await.expect("publisher runs") }
        }),
    };
    let ingest = Ingest::new(
        IngestConfig::new("EVENTS", "tbg-collector", "us-east"),
        context(&url, &access).await,
        primary.clone(),
    );
    let ingested = ingest.stats();
    let ingesting = Running {
        stop: stop.clone(),
        task: tokio::spawn(ingest.run(stop.clone())),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ingested.ingested.load(Ordering::Relaxed) < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ingested over TLS: published {:?}, ingested {:?}",
            published,
            ingested
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publishing.stop().await;
    ingesting.stop().await;
    primary.close().await.unwrap();
    relay.close().await.unwrap();

    let ids: HashSet<String> = JournalReader::open(&primary_path)
        .unwrap()
        .read_after(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|record| record.region == "eu-west")
        .map(|record| record.event_id)
        .collect();
    assert_eq!(ids.len(), 200, "every relay event, once, over TLS");
}

/// `nats://<token>@host`, NATS's own convention for a token in the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_is_the_servers_token() {
    let nats = NatsServer::start_with(&["--auth".into(), "the-regions-token".into()]);
    let none = NatsAccess::default();
    let url = format!("nats://the-regions-token@127.0.0.1:{}", nats.port);
    assert!(stream_within(&context(&url, &none).await, Duration::from_secs(20)).await);
    let guessed = format!("nats://guessed@127.0.0.1:{}", nats.port);
    assert!(!stream_within(&context(&guessed, &none).await, Duration::from_secs(3)).await);
}
