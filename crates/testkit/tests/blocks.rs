//! Blocks found through the pool are accepted by the kernel and pay the
//! miner who found them, for every address type.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::BlockHash;
use serde_json::json;
use tbg_pool::BlockStatus;
use tbg_testkit::{mine_shares, regtest_address, AddressKind, ManualMiner, MinerConfig, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_address_type_gets_paid_for_its_block() {
    let env = TestEnv::start().await;
    let start_height = env.node.block_count();
    for (index, kind) in AddressKind::ALL.into_iter().enumerate() {
        let (address, script) = regtest_address(kind);
        let mut config = MinerConfig::new(env.stratum_addr(), format!("{address}.rig{index}"));
        config.max_blocks = Some(1);
        let (summary, _) = mine_shares(config, Duration::from_secs(60))
            .await
            .expect("miner runs");
        assert_eq!(summary.block_candidates, 1, "{kind:?}");

        env.wait_until("block accepted", Duration::from_secs(30), |env| {
            env.service
                .pool
                .blocks()
                .iter()
                .any(|b| b.user == address && b.status == BlockStatus::Accepted)
        })
        .await;
        let record = env
            .service
            .pool
            .blocks()
            .into_iter()
            .find(|b| b.user == address)
            .unwrap();
        let hash = BlockHash::from_str(&record.hash).unwrap();
        let block = env
            .node
            .get_block(&hash)
            .expect("the node has the block the pool submitted");
        let coinbase = &block.txdata[0];
        assert!(coinbase.is_coinbase());
        assert_eq!(
            coinbase.output[0].script_pubkey, script,
            "{kind:?}: block pays the finder"
        );
        assert_eq!(
            block.bip34_block_height().ok(),
            Some(u64::from(record.height))
        );
        assert!(block.check_witness_commitment(), "witness commitment valid");
        assert_eq!(coinbase.output[0].value.to_sat(), record.reward_sats);
    }
    assert_eq!(env.node.block_count(), start_height + 5);
    // Every block on the chain was announced once and accepted once. (A
    // CPU miner may have had a second solution of the same job in flight
    // when it stopped: a rival at the same height, announced too, never
    // accepted.)
    let accepted: Vec<String> = env
        .service
        .pool
        .blocks()
        .into_iter()
        .filter(|b| b.status == BlockStatus::Accepted)
        .map(|b| b.hash)
        .collect();
    assert_eq!(accepted.len(), 5);
    let found: Vec<String> = env
        .events_of("block_found")
        .into_iter()
        .filter_map(|e| match e.data {
            tbg_events::EventData::BlockFound { hash, .. } => Some(hash),
            _ => None,
        })
        .collect();
    for hash in &accepted {
        assert_eq!(found.iter().filter(|h| *h == hash).count(), 1, "{hash}");
    }
    let submitted_accepted: Vec<String> = env
        .events_of("block_submitted")
        .into_iter()
        .filter_map(|e| match e.data {
            tbg_events::EventData::BlockSubmitted {
                hash,
                accepted: true,
                answers,
                ..
            } if answers.len() == 1 => Some(hash),
            _ => None,
        })
        .collect();
    assert_eq!(submitted_accepted.len(), 5);
    assert!(accepted.iter().all(|h| submitted_accepted.contains(h)));
    env.shutdown().await;
}

/// A graceful stop does not drop a block: a share that crosses the pool's
/// `client.reconnect` on the wire is still answered and submitted, and the
/// stop returns only after the node took the block and its
/// `block_submitted` event was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_crossing_the_graceful_stop_is_answered_and_submitted() {
    let env = TestEnv::start().await;
    let start_height = env.node.block_count();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.late")).await;
    // Ground before the stop; on regtest a share at the test difficulty
    // is also a block.
    let extranonce2 = miner.extranonce2(1);
    let nonce = miner.grind(&extranonce2, miner.job.version);
    let params = json!([
        miner.username,
        miner.job.job_id,
        hex::encode(&extranonce2),
        format!("{:08x}", miner.job.ntime),
        format!("{nonce:08x}"),
    ]);

    let TestEnv {
        node,
        service,
        events,
        ..
    } = env;
    let stopping = tokio::spawn(service.shutdown(Duration::from_secs(2)));
    miner
        .client
        .wait_push("client.reconnect")
        .await
        .expect("the stop tells the miner to reconnect");
    // Sent only now: the share reaches the pool after its reconnect.
    let id = miner.client.send("mining.submit", params).await.unwrap();
    let reply = miner
        .client
        .wait_reply(id)
        .await
        .expect("the share is answered");
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    stopping.await.expect("the stop completes");

    // No waiting from here: the stop itself waited for the node.
    assert_eq!(
        node.block_count(),
        start_height + 1,
        "the node has the block"
    );
    let submitted: Vec<_> = events
        .events()
        .into_iter()
        .filter(|e| e.event_type() == "block_submitted")
        .collect();
    assert!(
        matches!(submitted.as_slice(), [e] if matches!(&e.data, tbg_events::EventData::BlockSubmitted { accepted: true, .. })),
        "one accepted block_submitted event: {submitted:?}"
    );
    node.shutdown().await;
}

/// A graceful stop ends every connection before it returns, also one whose
/// miner does not read (the pool's writes to it wait for their timeout):
/// no share is judged after the stop stopped waiting for the blocks being
/// stored and submitted, so none can be a block that nobody waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_a_connection_that_does_not_read() {
    use tokio::io::AsyncWriteExt;
    // No request limits: the miner's flood of requests must be answered
    // (and its answers left unread), not refused and closed.
    let env = TestEnv::start_with(|settings| {
        settings.limits = tbg_pool::limits::LimitSettings::unlimited();
    })
    .await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let stream = tokio::net::TcpStream::connect(env.stratum_addr())
        .await
        .unwrap();
    let (_unread, mut writer) = stream.into_split();
    let hello = format!(
        "{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}}\n\
         {{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"{address}.deaf\",\"x\"]}}\n"
    );
    writer.write_all(hello.as_bytes()).await.unwrap();
    // Requests the pool answers, never read: its replies fill the socket
    // until its writes wait. Our own writes then stall too.
    let line = b"{\"id\":3,\"method\":\"mining.extranonce.subscribe\",\"params\":[]}\n".repeat(64);
    let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
    let flood = tokio::spawn(async move {
        let mut stalled_tx = Some(stalled_tx);
        loop {
            match tokio::time::timeout(Duration::from_millis(500), writer.write_all(&line)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    if let Some(tx) = stalled_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), stalled_rx)
        .await
        .expect("the pool stops reading a miner that does not read")
        .unwrap();
    // A view outlives the handle that the stop consumes.
    let view = env.service.pool.view();
    assert_eq!(tbg_pool::PoolCounters::get(&view.counters().connections), 1);

    let TestEnv { node, service, .. } = env;
    let started = std::time::Instant::now();
    // 1 s for the connections, well short of the 10 s write timeout.
    service.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        tbg_pool::PoolCounters::get(&view.counters().connections),
        0,
        "the stop returned with the connection still open"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    flood.abort();
    node.shutdown().await;
}
