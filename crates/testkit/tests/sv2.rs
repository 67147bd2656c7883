//! Stratum V2 beside V1 (`[stratum_v2]`): a direct V2 client on a standard
//! and on an extended channel mines blocks that the embedded node accepts,
//! paid to the address of its user identity, with the same events, stats
//! and status as a V1 miner; wrong identities, wrong keys, garbage and
//! oversized frames are refused or closed without harm to anyone else.

use std::time::{Duration, Instant};

use tbg_events::EventData;
use tbg_miner::{mine_shares, MinerConfig};
use tbg_pool::sv2::Sv2Settings;
use tbg_pool::PoolCounters;
use tbg_sv2::binary_sv2::{B064KOwned, Seq0255Owned, Seq064KOwned, Sv2OptionOwned};
use tbg_sv2::client::{ChannelChoice, ClientConfig, ClientError, ShareAnswer, Sv2Client};
use tbg_sv2::mining_sv2::{
    NewExtendedMiningJobOwned, OpenStandardMiningChannelOwned, SubmitSharesStandard,
};
use tbg_sv2::parsers_sv2::{
    AnyMessageOwned, ExtensionsNegotiationOwned, ExtensionsOwned, MiningOwned,
};
use tbg_sv2::stratum_core::extensions_sv2::RequestExtensionsOwned;
use tbg_sv2::AuthorityKey;
use tbg_testkit::{regtest_address, AddressKind, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(key: &AuthorityKey) -> TestEnv {
    let key = key.clone();
    TestEnv::start_with(move |settings| {
        let mut port = Sv2Settings::new("127.0.0.1:0".parse().unwrap(), key);
        port.handshake_timeout = Duration::from_secs(2);
        settings.sv2 = Some(port);
    })
    .await
}

fn sv2_addr(env: &TestEnv) -> std::net::SocketAddr {
    env.service.pool.sv2_addr().expect("the V2 port is open")
}

/// Mines one share on the client's active job and submits it, expecting
/// it accepted; then waits for the job on the tip it made. On regtest the
/// pool's share difficulty is capped at the network's, so every share is
/// a block.
async fn mine_block(client: &mut Sv2Client) -> tbg_sv2::client::Share {
    client.wait_for_work().await.expect("work");
    client
        .take_pending(Duration::from_millis(100))
        .await
        .expect("the pool's messages");
    let extranonce = vec![0u8; client.channel.extranonce_size];
    let share = client
        .find_share(&extranonce, 0, 0, 50_000_000, true)
        .unwrap_or_else(|| {
            panic!(
                "no share within 50 million nonces: target {:?}, job {:?}, tip {:?}",
                bitcoin::Target::from_le_bytes(client.channel.target),
                client.active_job(),
                client.tip
            )
        });
    assert!(share.is_block, "on regtest a share is a block");
    let answer = client.submit_and_wait(&share).await.expect("an answer");
    assert_eq!(answer, ShareAnswer::Accepted, "share {share:?}");
    wait_for_tip(client, share.hash).await;
    share
}

/// Reads until the client's tip is `hash` and it has a job on it.
async fn wait_for_tip(client: &mut Sv2Client, hash: bitcoin::BlockHash) {
    let wanted = bitcoin::hashes::Hash::to_byte_array(hash);
    tokio::time::timeout(Duration::from_secs(30), client.wait_for_tip(wanted))
        .await
        .expect("the job on the new tip")
        .expect("the pool's messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_standard_and_extended_channels_find_blocks_paid_to_their_identity() {
    let key = AuthorityKey::generate();
    let env = start(&key).await;
    let addr = sv2_addr(&env);
    assert_ne!(addr.port(), env.stratum_addr().port());

    for (channel, kind) in [
        (ChannelChoice::Standard, AddressKind::P2wpkh),
        (
            ChannelChoice::Extended {
                min_extranonce_size: 4,
            },
            AddressKind::P2tr,
        ),
    ] {
        let (address, script) = regtest_address(kind);
        let config = ClientConfig::new(format!("{address}.v2rig"), channel);
        let mut client = Sv2Client::connect(addr, key.public_bytes(), &config)
            .await
            .expect("the V2 client sets up and opens its channel");
        assert_ne!(client.channel.id, client.channel.group_id);
        if let ChannelChoice::Extended {
            min_extranonce_size,
        } = channel
        {
            assert!(client.channel.extranonce_size >= usize::from(min_extranonce_size));
        }
        let start_height = env.node.block_count();
        let mut last = None;
        for _ in 0..2 {
            last = Some(mine_block(&mut client).await);
        }
        let block = last.unwrap();
        assert_eq!(env.node.block_count(), start_height + 2);
        assert_eq!(env.node.best_block_hash(), block.hash, "{channel:?}");
        let tip = env.node.get_block(&block.hash).unwrap();
        assert_eq!(
            tip.txdata[0].output[0].script_pubkey, script,
            "the block pays the identity's address ({channel:?})"
        );

        // Events and stats as for a V1 miner.
        let connected = env.events_of("miner_connected");
        assert!(connected.iter().any(|e| matches!(&e.data,
            EventData::MinerConnected { user, worker, .. } if *user == address && worker == "v2rig")));
        let accepted = env
            .events_of("share_submitted")
            .iter()
            .filter(|e| {
                matches!(&e.data,
                EventData::ShareSubmitted { user, accepted: true, .. } if *user == address)
            })
            .count();
        assert_eq!(accepted, 2, "{channel:?}");
        assert!(env
            .events_of("block_found")
            .iter()
            .any(|e| matches!(&e.data,
            EventData::BlockFound { user, .. } if *user == address)));
        let user = env
            .service
            .pool
            .stats()
            .user(&address, Instant::now())
            .expect("the V2 miner's stats");
        assert_eq!(user.shares_accepted, 2);
        // /status counts the channel as a miner and its shares.
        let status = env.service.pool.status();
        assert_eq!(status.miners, 1, "{status:?}");
        assert!(status.shares_accepted >= 2, "{status:?}");
        drop(client);
        env.wait_until("miner_disconnected", Duration::from_secs(10), |env| {
            env.events_of("miner_disconnected").iter().any(|e| {
                matches!(&e.data,
                EventData::MinerDisconnected { user, .. } if *user == address)
            })
        })
        .await;
        assert_eq!(env.service.pool.status().miners, 0);
    }
    env.wait_until(
        "the four blocks counted accepted",
        Duration::from_secs(10),
        |env| env.service.pool.status().blocks_accepted >= 4,
    )
    .await;
    assert_eq!(env.service.pool.status().blocks_rejected, 0);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_shares_are_judged_by_the_pools_rules() {
    let key = AuthorityKey::generate();
    let env = start(&key).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let config = ClientConfig::new(
        address.clone(),
        ChannelChoice::Extended {
            min_extranonce_size: 8,
        },
    );
    let mut client = Sv2Client::connect(sv2_addr(&env), key.public_bytes(), &config)
        .await
        .unwrap();
    let share = mine_block(&mut client).await;
    // The same header again: a duplicate (and the block is not sent twice).
    assert_eq!(
        client.submit_and_wait(&share).await.unwrap(),
        ShareAnswer::Refused("duplicate-share".into())
    );
    // A job the pool never sent.
    let mut unknown = share.clone();
    unknown.job_id = 9_999;
    assert_eq!(
        client.submit_and_wait(&unknown).await.unwrap(),
        ShareAnswer::Refused("invalid-job-id".into())
    );
    // A version bit outside BIP320's.
    let mut version = share.clone();
    version.version ^= 0x0000_0001;
    assert_eq!(
        client.submit_and_wait(&version).await.unwrap(),
        ShareAnswer::Refused("invalid-non-rollable-version-bit".into())
    );
    // A rolled extranonce of the wrong size.
    let mut short = share.clone();
    short.extranonce.pop();
    assert_eq!(
        client.submit_and_wait(&short).await.unwrap(),
        ShareAnswer::Refused("bad-extranonce-size".into())
    );
    // Rolled BIP320 bits are fine.
    client.wait_for_work().await.unwrap();
    let extranonce = vec![7u8; client.channel.extranonce_size];
    let rolled = client
        .find_share(&extranonce, 0x0000_2000, 0, 50_000_000, true)
        .expect("a share");
    assert_eq!(
        client.submit_and_wait(&rolled).await.unwrap(),
        ShareAnswer::Accepted
    );
    // An extension asked for (as a translator with required_extensions
    // does): answered unsupported, the connection goes on.
    client
        .send(AnyMessageOwned::Extensions(
            ExtensionsOwned::ExtensionsNegotiation(ExtensionsNegotiationOwned::RequestExtensions(
                RequestExtensionsOwned {
                    request_id: 7,
                    requested_extensions: Seq064KOwned::new(vec![0x0002]).unwrap(),
                },
            )),
        ))
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let AnyMessageOwned::Extensions(ExtensionsOwned::ExtensionsNegotiation(
                ExtensionsNegotiationOwned::RequestExtensionsError(error),
            )) = client.next_message().await.unwrap()
            {
                return error;
            }
        }
    })
    .await
    .expect("an answer to RequestExtensions");
    assert_eq!(refused.request_id, 7);
    assert_eq!(refused.unsupported_extensions.into_inner(), vec![0x0002]);

    // UpdateChannel: the device's easiest target becomes the channel's
    // floor, answered with a target no easier than it.
    let floor = tbg_work::difficulty_to_target(0.001).unwrap();
    client
        .update_channel(1e6, floor.to_le_bytes())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while bitcoin::Target::from_le_bytes(client.channel.target) > floor {
            client.next_message().await.unwrap();
        }
    })
    .await
    .expect("a SetTarget no easier than the device's maximum target");
    let rejected = env
        .events_of("share_submitted")
        .iter()
        .filter(|e| {
            matches!(&e.data,
            EventData::ShareSubmitted { user, accepted: false, .. } if *user == address)
        })
        .count();
    assert_eq!(
        rejected, 4,
        "each refusal is a share_submitted event, as on V1"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_identities_keys_and_frames_are_refused_and_a_v1_miner_mines_on() {
    let key = AuthorityKey::generate();
    let env = start(&key).await;
    let addr = sv2_addr(&env);

    // An identity that is no regtest address: the channel is refused with
    // the specification's code, the connection stays.
    let bad = ClientConfig::new(
        "1BoatSLRHtKNngkdXEeobR76b53LETtpyT.rig",
        ChannelChoice::Standard,
    );
    match Sv2Client::connect(addr, key.public_bytes(), &bad).await {
        Err(ClientError::Refused { stage, code }) => {
            assert_eq!((stage, code.as_str()), ("open channel", "unknown-user"));
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a mainnet address opened a channel on regtest"),
    }
    let bidi = ClientConfig::new(
        format!("{}.\u{202e}gir", regtest_address(AddressKind::P2wpkh).0),
        ChannelChoice::Standard,
    );
    assert!(matches!(
        Sv2Client::connect(addr, key.public_bytes(), &bidi).await,
        Err(ClientError::Refused { code, .. }) if code == "unknown-user"
    ));

    // A client that expects another pool's key: the handshake fails on
    // its side (the certificate), and the pool keeps serving.
    let other = AuthorityKey::generate();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let good = ClientConfig::new(address.clone(), ChannelChoice::Standard);
    assert!(matches!(
        Sv2Client::connect(addr, other.public_bytes(), &good).await,
        Err(ClientError::Transport(_))
    ));

    // Garbage instead of a handshake, a V1 line on the V2 port, and a
    // silent client: each is closed and counted.
    for garbage in [
        vec![0xffu8; 64],
        b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n".to_vec(),
        Vec::new(),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(&garbage).await.unwrap();
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the pool closes a connection that sent {garbage:?}"
        );
    }
    env.wait_until(
        "the handshake failures counted",
        Duration::from_secs(10),
        |env| PoolCounters::get(&env.service.pool.counters().sv2_handshake_failures) >= 3,
    )
    .await;

    // A frame past the pool's 4 KiB limit (a job's message, 10 KB of
    // coinbase, sent the wrong way): refused from its header, connection
    // closed.
    let mut big = Sv2Client::connect(addr, key.public_bytes(), &good)
        .await
        .unwrap();
    big.wait_for_work().await.unwrap();
    let oversized = MiningOwned::NewExtendedMiningJob(NewExtendedMiningJobOwned {
        channel_id: big.channel.id,
        job_id: 1,
        min_ntime: Sv2OptionOwned::new(None),
        version: 0x2000_0000,
        version_rolling_allowed: true,
        merkle_path: Seq0255Owned::new(Vec::new()).unwrap(),
        coinbase_tx_prefix: B064KOwned::try_from(vec![0u8; 10_000]).unwrap(),
        coinbase_tx_suffix: B064KOwned::try_from(Vec::new()).unwrap(),
    });
    big.send(AnyMessageOwned::Mining(oversized)).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if big.next_message().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an oversized frame closes the connection");

    // Through all of it, a V1 miner and a V2 miner mine as before.
    let (v1_address, _) = regtest_address(AddressKind::P2wpkh);
    let mut config = MinerConfig::new(env.stratum_addr(), format!("{v1_address}.v1"));
    config.max_blocks = Some(1);
    let (summary, _) = mine_shares(config, Duration::from_secs(60)).await.unwrap();
    assert_eq!(summary.block_candidates, 1);
    let mut client = Sv2Client::connect(addr, key.public_bytes(), &good)
        .await
        .unwrap();
    mine_block(&mut client).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_on_one_port_are_told_apart_and_both_mine() {
    let key = AuthorityKey::generate();
    let port_key = key.clone();
    let env = TestEnv::start_with(move |settings| {
        let mut port = Sv2Settings::on_v1_port(port_key);
        port.handshake_timeout = Duration::from_secs(2);
        settings.sv2 = Some(port);
    })
    .await;
    let addr = env.stratum_addr();
    assert_eq!(sv2_addr(&env), addr, "V2 is on the V1 port");

    // A V2 miner and a V1 miner on the same port each find a block.
    let (v2_address, v2_script) = regtest_address(AddressKind::P2wpkh);
    let config = ClientConfig::new(format!("{v2_address}.v2"), ChannelChoice::Standard);
    let mut client = Sv2Client::connect(addr, key.public_bytes(), &config)
        .await
        .expect("a V2 client on the shared port");
    let block = mine_block(&mut client).await;
    let mined = env.node.get_block(&block.hash).unwrap();
    assert_eq!(mined.txdata[0].output[0].script_pubkey, v2_script);
    let (v1_address, _) = regtest_address(AddressKind::P2tr);
    let mut miner = MinerConfig::new(addr, format!("{v1_address}.v1"));
    miner.max_blocks = Some(1);
    let (summary, _) = mine_shares(miner, Duration::from_secs(60)).await.unwrap();
    assert_eq!(summary.block_candidates, 1, "the V1 miner's block");

    // A V1 request that arrives in two segments is still V1.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"{\"id\":7,\"meth").await.unwrap();
    stream.flush().await.unwrap();
    // The pause is the point: the rest comes in a segment of its own.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"od\":\"mining.subscribe\",\"params\":[]}\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 512];
        while !answer.contains(&b'\n') {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the subscribe answered");
    let answer: serde_json::Value =
        serde_json::from_slice(answer.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(answer["id"], 7);
    assert!(answer["result"][1].is_string(), "an extranonce1: {answer}");

    // Random bytes go to the Noise responder (a failed handshake, counted);
    // a silent connection is closed once the handshake timeout passes.
    let failures = PoolCounters::get(&env.service.pool.counters().sv2_handshake_failures);
    for garbage in [vec![0xffu8; 64], Vec::new()] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(&garbage).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 512];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
        assert!(closed.is_ok(), "closed after sending {garbage:?}");
    }
    env.wait_until(
        "the garbage's handshake counted",
        Duration::from_secs(10),
        |env| PoolCounters::get(&env.service.pool.counters().sv2_handshake_failures) > failures,
    )
    .await;

    // A V2 key whose first byte came alone (and happens to be `{`) is
    // waited for, then answered by the Noise responder, not by V1.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"{").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&[0x8a; 63]).await.unwrap();
    let mut reply =
        vec![0u8; tbg_sv2::stratum_core::noise_sv2::INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply))
        .await
        .expect("the responder's reply in time")
        .expect("the responder's whole reply");
    assert!(
        !reply.starts_with(b"{"),
        "a handshake reply, not a V1 answer"
    );
    drop(stream);

    // Each block is its finder's in the events, whatever the protocol.
    for address in [&v2_address, &v1_address] {
        assert!(
            env.events_of("block_found")
                .iter()
                .any(|e| matches!(&e.data,
                EventData::BlockFound { user, .. } if user == address)),
            "{address}'s block"
        );
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_of_one_connection_share_its_submit_budget() {
    let key = AuthorityKey::generate();
    let port_key = key.clone();
    let env = TestEnv::start_with(move |settings| {
        settings.sv2 = Some(Sv2Settings::new("127.0.0.1:0".parse().unwrap(), port_key));
        settings.limits.submits_per_minute = 20;
        settings.max_invalid_shares_per_minute = u32::MAX;
    })
    .await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let config = ClientConfig::new(format!("{address}.a"), ChannelChoice::Standard);
    let mut client = Sv2Client::connect(sv2_addr(&env), key.public_bytes(), &config)
        .await
        .unwrap();
    // Two more channels on the same connection, as a proxy opens them.
    let mut channels = vec![client.channel.id];
    for request_id in [2u32, 3] {
        let open = OpenStandardMiningChannelOwned {
            request_id,
            user_identity: format!("{address}.w{request_id}").try_into().unwrap(),
            nominal_hash_rate: 0.0,
            max_target: [0xffu8; 32].into(),
        };
        let open = MiningOwned::OpenStandardMiningChannel(open);
        client.send(AnyMessageOwned::Mining(open)).await.unwrap();
        loop {
            if let AnyMessageOwned::Mining(MiningOwned::OpenStandardMiningChannelSuccess(ok)) =
                client.next_message().await.unwrap()
            {
                assert_eq!(ok.request_id, request_id);
                channels.push(ok.channel_id);
                break;
            }
        }
    }
    // A minute's budget on each channel, with a job id never issued.
    for &channel_id in &channels {
        for sequence_number in 0..20 {
            let submit = SubmitSharesStandard {
                channel_id,
                sequence_number,
                job_id: u32::MAX,
                nonce: 0,
                ntime: 0,
                version: 0x2000_0000,
            };
            let submit = MiningOwned::SubmitSharesStandard(submit);
            client.send(AnyMessageOwned::Mining(submit)).await.unwrap();
        }
    }
    let mut answered = 0;
    while answered < 60 {
        if let AnyMessageOwned::Mining(MiningOwned::SubmitSharesError(error)) =
            client.next_message().await.unwrap()
        {
            answered += 1;
            assert_eq!(error.error_code.as_bytes(), b"invalid-job-id");
        }
    }
    // Every submit answered; the journal took one connection's budget,
    // not one per channel.
    let journaled = |env: &TestEnv| {
        env.events_of("share_submitted")
            .iter()
            .filter(
                |e| matches!(&e.data, EventData::ShareSubmitted { user, .. } if *user == address),
            )
            .count()
    };
    env.wait_until("the budget's events", Duration::from_secs(10), |env| {
        journaled(env) >= 20
    })
    .await;
    assert_eq!(journaled(&env), 20);
    env.shutdown().await;
}
