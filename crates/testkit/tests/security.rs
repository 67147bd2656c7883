//! The stratum items of the security checklist and the "malformed stratum" /
//! "connection flood" chaos scenarios, injected against the real pool.
//!
//! Every test checks what an operator would: (a) the same pool process still
//! accepts connections and answers, (b) an honest miner still gets shares
//! accepted, (c) the misbehaving connection got an error reply or was closed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tbg_events::{Event, EventData};
use tbg_miner::MinerError;
use tbg_testkit::{mine_shares, regtest_address, AddressKind, MinerConfig, StratumClient, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long past a configured timeout the pool may take to act on it.
const SLACK: Duration = Duration::from_secs(4);

fn error_code(message: &Value) -> Option<i64> {
    message.get("error")?.get(0)?.as_i64()
}

fn error_text(message: &Value) -> String {
    message
        .get("error")
        .and_then(|e| e.get(1))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn is_push(message: &Value) -> bool {
    message.get("method").is_some_and(|m| !m.is_null())
}

/// The next answer (not a push) from the pool.
async fn next_response(client: &mut StratumClient) -> Value {
    loop {
        let message = client.read_message().await.expect("the pool answers");
        if !is_push(&message) {
            return message;
        }
    }
}

/// Reads until the pool closes the connection and returns what it sent
/// before; panics if the connection is still open after `limit`.
async fn read_until_closed(client: &mut StratumClient, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "connection still open after {limit:?}; received {seen:?}"
        );
        client.timeout = left;
        match client.read_message().await {
            Ok(message) => seen.push(message),
            Err(MinerError::Closed | MinerError::Io(_)) => return seen,
            Err(MinerError::Timeout) => {
                panic!("connection still open after {limit:?}; received {seen:?}")
            }
            Err(other) => panic!("unexpected client error {other}; received {seen:?}"),
        }
    }
}

async fn subscribed_client(env: &TestEnv) -> StratumClient {
    let mut client = StratumClient::connect(env.stratum_addr())
        .await
        .expect("pool accepts a connection");
    let reply = client
        .request("mining.subscribe", json!(["security-test/1.0"]))
        .await
        .expect("subscribe answered");
    assert!(reply.is_ok(), "subscribe refused: {reply:?}");
    client
}

async fn authorized_client(env: &TestEnv, username: &str) -> StratumClient {
    let mut client = subscribed_client(env).await;
    let reply = client
        .request("mining.authorize", json!([username, "x"]))
        .await
        .expect("authorize answered");
    assert!(
        reply.is_ok(),
        "authorize of {username:?} refused: {reply:?}"
    );
    client
}

/// A subscribe on `client` is answered normally: the connection is still usable.
async fn assert_still_usable(client: &mut StratumClient, after: &str) {
    let reply = client.request("mining.subscribe", json!([])).await;
    let reply = reply.unwrap_or_else(|error| panic!("after {after}: connection unusable: {error}"));
    assert!(reply.is_ok(), "after {after}: subscribe refused: {reply:?}");
}

/// (a) the pool accepts and answers a new connection, (b) an honest miner
/// gets two shares accepted.
async fn assert_pool_serves(env: &TestEnv) {
    let mut probe = subscribed_client(env).await;
    assert_still_usable(&mut probe, "probe").await;
    drop(probe);
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut config = MinerConfig::new(env.stratum_addr(), format!("{address}.honest"));
    config.max_accepted = Some(2);
    let (summary, _) = mine_shares(config, Duration::from_secs(30))
        .await
        .expect("honest miner runs");
    assert!(summary.accepted >= 2, "honest miner: {summary:?}");
}

/// Deterministic "random" bytes without a newline (xorshift).
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        bytes.extend(seed.to_le_bytes().into_iter().filter(|b| *b != b'\n'));
    }
    bytes.truncate(len);
    bytes
}

/// A `mining.subscribe` line of exactly `len` bytes before its newline.
fn padded_subscribe(len: usize) -> Vec<u8> {
    let head = r#"{"id":7,"method":"mining.subscribe","params":[],"pad":""#;
    let tail = r#""}"#;
    let pad = len - head.len() - tail.len();
    let mut line = format!("{head}{}{tail}", "a".repeat(pad)).into_bytes();
    assert_eq!(line.len(), len);
    line.push(b'\n');
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_get_error_replies_and_the_connection_stays_usable() {
    let env = TestEnv::start().await;
    let deep = format!(
        r#"{{"id":1,"method":"mining.subscribe","params":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let mut garbage_line = garbage(4000, 0x9e37_79b9_7f4a_7c15);
    garbage_line.push(b'\n');
    let cases: Vec<(&str, Vec<u8>, i64)> = vec![
        ("binary garbage", garbage_line, -32700),
        (
            "deeply nested JSON",
            format!("{deep}\n").into_bytes(),
            -32700,
        ),
        (
            "NUL byte",
            b"{\"id\":1,\"method\":\"mining.subscribe\"\0,\"params\":[]}\n".to_vec(),
            -32700,
        ),
        ("bare NULs", b"\0\0\0\0\n".to_vec(), -32700),
        (
            "non-UTF-8 worker",
            b"{\"id\":1,\"method\":\"mining.authorize\",\"params\":[\"caf\xe9\",\"x\"]}\n".to_vec(),
            -32700,
        ),
        (
            "UTF-16 encoded request",
            b"\xff\xfe{\0\"\0i\0d\0\"\0:\x001\0}\0\n".to_vec(),
            -32700,
        ),
        (
            "unknown method",
            b"{\"id\":1,\"method\":\"mining.get_transactions\",\"params\":[]}\n".to_vec(),
            -32601,
        ),
        (
            "method of 300 chars",
            format!("{{\"id\":1,\"method\":\"{}\"}}\n", "m".repeat(300)).into_bytes(),
            -32600,
        ),
        ("JSON array", b"[1,2,3]\n".to_vec(), -32600),
        (
            "truncated JSON",
            b"{\"id\":1,\"method\":\"mining.subscr\n".to_vec(),
            -32700,
        ),
    ];
    for (name, bytes, expected_code) in cases {
        let mut client = StratumClient::connect(env.stratum_addr())
            .await
            .expect("connect");
        client.send_raw(&bytes).await.expect("send");
        let reply = next_response(&mut client).await;
        assert_eq!(error_code(&reply), Some(expected_code), "{name}: {reply}");
        assert!(
            reply
                .get("result")
                .is_some_and(|r| r.is_null() || *r == Value::Bool(false)),
            "{name}: {reply}"
        );
        assert_still_usable(&mut client, name).await;
    }

    // A BOM before a valid request is ignored: the request is answered normally.
    let mut client = StratumClient::connect(env.stratum_addr())
        .await
        .expect("connect");
    client
        .send_raw(b"\xEF\xBB\xBF{\"id\":5,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .await
        .expect("send");
    let reply = next_response(&mut client).await;
    assert_eq!(reply["id"], json!(5), "{reply}");
    assert!(
        reply["error"].is_null() && reply["result"].is_array(),
        "BOM: {reply}"
    );

    // Blank lines and bare CRs are not requests: no answer, connection kept.
    client.send_raw(b"\n\r\n   \n").await.expect("send");
    assert_still_usable(&mut client, "blank lines").await;

    // Keys over 256 characters are ignored; the request itself is served.
    let long_key = "k".repeat(300);
    let line = format!("{{\"id\":6,\"method\":\"mining.subscribe\",\"params\":[],\"{long_key}\":\"{long_key}\"}}\n");
    client.send_raw(line.as_bytes()).await.expect("send");
    let reply = next_response(&mut client).await;
    assert_eq!(reply["id"], json!(6));
    assert!(reply["result"].is_array(), "long key: {reply}");
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_over_the_limit_get_an_error_and_are_closed() {
    let env = TestEnv::start().await;
    // Exactly at the 16 KiB limit: served.
    let mut client = StratumClient::connect(env.stratum_addr())
        .await
        .expect("connect");
    client
        .send_raw(&padded_subscribe(16 * 1024))
        .await
        .expect("send");
    let reply = next_response(&mut client).await;
    assert!(
        reply["result"].is_array(),
        "line of exactly 16384 bytes: {reply}"
    );

    for len in [16 * 1024 + 1, 64 * 1000, 1_000_000] {
        let mut client = StratumClient::connect(env.stratum_addr())
            .await
            .expect("connect");
        // The pool stops reading at the limit, so a long write may fail with a reset.
        let _ = client.send_raw(&padded_subscribe(len)).await;
        let received = read_until_closed(&mut client, SLACK).await;
        assert_eq!(received.len(), 1, "line of {len} bytes: {received:?}");
        assert_eq!(
            error_code(&received[0]),
            Some(-32700),
            "line of {len} bytes: {received:?}"
        );
        assert!(
            error_text(&received[0]).contains("too long"),
            "{received:?}"
        );
    }
    // A line with no newline that grows past the limit is cut off just the same.
    let mut client = StratumClient::connect(env.stratum_addr())
        .await
        .expect("connect");
    let _ = client.send_raw(&garbage(100_000, 7)).await;
    let received = read_until_closed(&mut client, SLACK).await;
    assert_eq!(
        received.iter().filter_map(error_code).collect::<Vec<_>>(),
        vec![-32700],
        "{received:?}"
    );
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

/// Regression: the configured `max_line_bytes` bounds both the reader and
/// the parser (the parser once used its fixed 16 KiB default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_line_limit_above_16_kib_is_honoured() {
    let env = TestEnv::start_with(|settings| settings.max_line_bytes = 64 * 1024).await;
    let mut client = StratumClient::connect(env.stratum_addr())
        .await
        .expect("connect");
    client
        .send_raw(&padded_subscribe(32 * 1024))
        .await
        .expect("send");
    let reply = next_response(&mut client).await;
    assert!(
        reply["result"].is_array(),
        "32 KiB line under a 64 KiB limit must be served: {reply}"
    );
    let _ = client.send_raw(&padded_subscribe(64 * 1024 + 1)).await;
    let received = read_until_closed(&mut client, SLACK).await;
    assert_eq!(
        received.iter().filter_map(error_code).collect::<Vec<_>>(),
        vec![-32700],
        "{received:?}"
    );
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_numbers_for_difficulty_and_ids_are_handled() {
    let env = TestEnv::start().await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut client = authorized_client(&env, &format!("{address}.extreme")).await;

    // Ids are echoed verbatim whatever their value.
    for id in [
        "9223372036854775807",
        "18446744073709551615",
        "0",
        "-1",
        "-9223372036854775808",
        "\"x\"",
        "null",
    ] {
        let line =
            format!("{{\"id\":{id},\"method\":\"mining.extranonce.subscribe\",\"params\":[]}}\n");
        client.send_raw(line.as_bytes()).await.expect("send");
        let reply = next_response(&mut client).await;
        let expected: Value = serde_json::from_str(id).expect("literal");
        assert_eq!(reply["id"], expected, "id {id}: {reply}");
        assert_eq!(reply["result"], json!(true), "id {id}: {reply}");
    }
    // Ids that are not JSON numbers: a parse error, id null, connection kept.
    for id in ["1e400", "NaN", "Infinity", "-", "0x10"] {
        let line =
            format!("{{\"id\":{id},\"method\":\"mining.extranonce.subscribe\",\"params\":[]}}\n");
        client.send_raw(line.as_bytes()).await.expect("send");
        let reply = next_response(&mut client).await;
        assert_eq!(error_code(&reply), Some(-32700), "id {id}: {reply}");
        assert!(reply["id"].is_null(), "id {id}: {reply}");
    }

    // Difficulties that are not positive finite numbers are refused...
    for difficulty in [
        "0",
        "-1",
        "-9223372036854775808",
        "\"NaN\"",
        "\"inf\"",
        "\"-0\"",
        "null",
        "\"abc\"",
    ] {
        let line = format!(
            "{{\"id\":50,\"method\":\"mining.suggest_difficulty\",\"params\":[{difficulty}]}}\n"
        );
        client.send_raw(line.as_bytes()).await.expect("send");
        let reply = next_response(&mut client).await;
        assert_eq!(reply["id"], json!(50));
        assert_eq!(
            error_text(&reply),
            "Invalid difficulty",
            "difficulty {difficulty}: {reply}"
        );
    }
    // ...or are not JSON at all.
    for difficulty in ["1e400", "NaN", "-Infinity"] {
        let line = format!(
            "{{\"id\":51,\"method\":\"mining.suggest_difficulty\",\"params\":[{difficulty}]}}\n"
        );
        client.send_raw(line.as_bytes()).await.expect("send");
        let reply = next_response(&mut client).await;
        assert_eq!(
            error_code(&reply),
            Some(-32700),
            "difficulty {difficulty}: {reply}"
        );
    }
    // A huge but valid suggestion is taken for this connection, capped at
    // maxdiff (default 1e6; issue 16: it used to go through, 9.2e18).
    client.take_pushes();
    let reply = client
        .request(
            "mining.suggest_difficulty",
            json!([9_223_372_036_854_775_807_i64]),
        )
        .await
        .expect("reply");
    assert_eq!(reply.result, json!(true), "{reply:?}");
    let difficulty = client
        .wait_push("mining.set_difficulty")
        .await
        .expect("new difficulty");
    let difficulty = difficulty[0].as_f64().expect("a number");
    assert_eq!(difficulty, 1_000_000.0, "capped at the default maxdiff");
    let reply = client
        .request("mining.suggest_difficulty", json!([1e308]))
        .await
        .expect("reply");
    assert_eq!(reply.result, json!(true), "{reply:?}");
    assert_still_usable(&mut client, "extreme numbers").await;
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_fields_are_refused_or_truncated() {
    let env = TestEnv::start().await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut client = StratumClient::connect(env.stratum_addr())
        .await
        .expect("connect");
    // User agent of 300 chars: kept, cut to 256.
    let agent = "u".repeat(300);
    let reply = client
        .request("mining.subscribe", json!([agent]))
        .await
        .expect("reply");
    assert!(reply.is_ok(), "{reply:?}");
    // Worker name over 128 chars: refused, connection kept.
    let reply = client
        .request(
            "mining.authorize",
            json!([format!("{address}.{}", "w".repeat(129)), "x"]),
        )
        .await;
    let reply = reply.expect("reply");
    assert_eq!(
        reply.error_message().as_deref(),
        Some("Invalid username"),
        "{reply:?}"
    );
    // Password of 10,000 chars: ignored.
    let reply = client
        .request(
            "mining.authorize",
            json!([format!("{address}.long"), "p".repeat(10_000)]),
        )
        .await;
    assert!(reply.expect("reply").is_ok());
    env.wait_until("miner_connected event", Duration::from_secs(5), |env| {
        env.events_of("miner_connected")
            .iter()
            .any(|e| matches!(&e.data, EventData::MinerConnected { user, .. } if *user == address))
    })
    .await;
    let event = env
        .events_of("miner_connected")
        .into_iter()
        .find(|e| matches!(&e.data, EventData::MinerConnected { user, .. } if *user == address));
    let Some(Event {
        data: EventData::MinerConnected {
            useragent, worker, ..
        },
        ..
    }) = event
    else {
        unreachable!()
    };
    assert_eq!(worker, "long");
    assert_eq!(useragent, "u".repeat(256), "user agent cut to 256 chars");
    // Job id of 300 chars in a submit: refused as an unknown job.
    let params = json!([
        format!("{address}.long"),
        "j".repeat(300),
        "0000000000000000",
        "00000000",
        "00000000"
    ]);
    let reply = client
        .request("mining.submit", params)
        .await
        .expect("reply");
    assert_eq!(
        reply.error_message().as_deref(),
        Some("Invalid JobID"),
        "{reply:?}"
    );
    assert_still_usable(&mut client, "long fields").await;
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

fn connected_events(env: &TestEnv, address: &str) -> Vec<(String, String)> {
    env.events_of("miner_connected")
        .into_iter()
        .filter_map(|event| match event.data {
            EventData::MinerConnected {
                user,
                worker,
                useragent,
                ..
            } if user == address => Some((worker, useragent)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_worker_names_and_user_agents_are_recorded_verbatim_and_forge_nothing() {
    let env = TestEnv::start().await;
    let blocks_before = env.events_of("block_found").len();
    let printable = [
        "'; DROP TABLE shares; --",
        "Robert'); DELETE FROM workers WHERE '1'='1",
        "⛏️🚀💎 ñ 中文",
        "%s%n%x%p%d{}{0}${jndi:ldap://x}",
        r#"","event":"block_found"#,
        r#"\",\"event\":\"block_found\",\"data\":{}}"#,
        "2026-01-01 INFO block found height=1",
        "<script>alert(1)</script>",
    ];
    for (index, text) in printable.iter().enumerate() {
        let (address, _) = regtest_address(AddressKind::P2wpkh);
        let mut client = StratumClient::connect(env.stratum_addr())
            .await
            .expect("connect");
        assert!(client
            .request("mining.subscribe", json!([text]))
            .await
            .expect("reply")
            .is_ok());
        let reply = client
            .request(
                "mining.authorize",
                json!([format!("{address}.{text}"), text]),
            )
            .await;
        assert!(reply.expect("reply").is_ok(), "case {index}");
        env.wait_until("miner_connected", Duration::from_secs(5), |env| {
            !connected_events(env, &address).is_empty()
        })
        .await;
        assert_eq!(
            connected_events(&env, &address),
            vec![(text.to_string(), text.to_string())],
            "case {index}"
        );
        // The event survives its own wire format unchanged (nothing injected).
        for event in env.events_of("miner_connected") {
            let json = event.to_json();
            assert_eq!(
                Event::from_json(&json).expect("event JSON parses"),
                event,
                "{json}"
            );
        }
    }
    // Control characters (forged log lines): the name is refused, never
    // rewritten; the user agent is kept without its control characters.
    // Bidi overrides and invisible characters (a name shown as another),
    // U+2028/U+2029 (line breaks to JavaScript and log viewers): the same.
    let forged_lines = [
        "\n2026-01-01 INFO block found",
        "rig\r\n2026-01-01 ERROR x",
        "rig\u{1b}[2J\u{0}",
        "rig\u{202E}1gir",
        "rig\u{2028}2026-01-01 INFO block found",
        "r\u{200B}ig\u{2029}",
    ];
    for (index, text) in forged_lines.iter().enumerate() {
        let (address, _) = regtest_address(AddressKind::P2wpkh);
        let mut client = StratumClient::connect(env.stratum_addr())
            .await
            .expect("connect");
        assert!(client
            .request("mining.subscribe", json!([text]))
            .await
            .expect("reply")
            .is_ok());
        let reply = client
            .request(
                "mining.authorize",
                json!([format!("{address}.{text}"), "x"]),
            )
            .await;
        let reply = reply.expect("reply");
        assert_eq!(
            reply.error_message().as_deref(),
            Some("Invalid username"),
            "forged line {index}: {reply:?}"
        );
        let reply = client
            .request("mining.authorize", json!([format!("{address}.clean"), "x"]))
            .await;
        assert!(reply.expect("reply").is_ok());
        env.wait_until("miner_connected", Duration::from_secs(5), |env| {
            !connected_events(env, &address).is_empty()
        })
        .await;
        let printable_only: String = text
            .chars()
            .filter(|c| !tbg_stratum::is_unsafe_in_names(*c))
            .collect();
        assert_eq!(
            connected_events(&env, &address),
            vec![("clean".to_string(), printable_only)],
            "forged {index}"
        );
    }
    assert_eq!(
        env.events_of("block_found").len(),
        blocks_before,
        "no block_found forged by names"
    );

    // An honest miner with a hostile name and agent: its shares and blocks
    // carry the exact name, and every block_found is a real one.
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let worker = r#"'; DROP TABLE x; --%s%n","event":"block_found⛏️"#;
    let mut config = MinerConfig::new(env.stratum_addr(), format!("{address}.{worker}"));
    config.user_agent = "2026-01-01 INFO block found %s%n".to_string();
    config.max_accepted = Some(2);
    let (summary, _) = mine_shares(config, Duration::from_secs(30))
        .await
        .expect("miner runs");
    assert!(summary.accepted >= 2, "{summary:?}");
    let shares: Vec<_> = env
        .events_of("share_submitted")
        .into_iter()
        .filter_map(|e| match e.data {
            EventData::ShareSubmitted {
                user,
                worker,
                accepted,
                ..
            } if user == address => Some((worker, accepted)),
            _ => None,
        })
        .collect();
    assert!(shares.len() >= 2, "{shares:?}");
    assert!(shares.iter().all(|(name, _)| name == worker), "{shares:?}");
    let blocks = env.events_of("block_found");
    // At least the miner's own count: a submit still in flight when it
    // stopped may have found one more.
    assert!(
        blocks.len() as u64 >= blocks_before as u64 + summary.block_candidates.max(1),
        "{summary:?} {blocks:?}"
    );
    for block in &blocks {
        let EventData::BlockFound {
            user, worker: name, ..
        } = &block.data
        else {
            unreachable!()
        };
        assert_eq!((user.as_str(), name.as_str()), (address.as_str(), worker));
    }
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

/// Writes `bytes` one at a time every `gap` until the pool closes the
/// connection; returns how long the connection lasted.
async fn trickle(env: &TestEnv, bytes: &[u8], gap: Duration) -> Duration {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(env.stratum_addr())
        .await
        .expect("connect");
    let mut answer = [0u8; 4096];
    for byte in bytes.iter().cycle() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(gap, stream.read(&mut answer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(read)) => panic!(
                "unexpected answer to a partial line: {:?}",
                String::from_utf8_lossy(&answer[..read])
            ),
            Err(_) => {} // still open, nothing sent: keep trickling
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "trickling connection kept open"
        );
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_authorize_are_closed_after_authorize_timeout() {
    let timeout = Duration::from_secs(1);
    let env = TestEnv::start_with(|settings| settings.authorize_timeout = timeout).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);

    let partial_then_silence = async {
        let started = Instant::now();
        let mut client = StratumClient::connect(env.stratum_addr())
            .await
            .expect("connect");
        client
            .send_raw(br#"{"id":1,"method":"mining.subscribe","params":["#)
            .await
            .expect("send");
        let received = read_until_closed(&mut client, timeout + SLACK).await;
        assert!(
            received.is_empty(),
            "no answer to a partial line: {received:?}"
        );
        started.elapsed()
    };
    let one_byte_at_a_time = trickle(
        &env,
        br#"{"id":1,"method":"mining.subscribe","params":[]"#,
        timeout / 4,
    );
    let busy_but_unauthorized = async {
        let started = Instant::now();
        let mut client = subscribed_client(&env).await;
        // Active every 200 ms (a valid request each time), but never authorizes.
        loop {
            match client
                .request("mining.extranonce.subscribe", json!([]))
                .await
            {
                Ok(reply) => assert!(reply.is_ok()),
                Err(_) => break,
            }
            assert!(
                started.elapsed() < timeout + SLACK,
                "busy unauthorized connection kept open"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        started.elapsed()
    };
    let subscribed_never_authorized = async {
        let started = Instant::now();
        let mut client = subscribed_client(&env).await;
        let received = read_until_closed(&mut client, timeout + SLACK).await;
        assert!(received.is_empty(), "{received:?}");
        started.elapsed()
    };
    let authorized_stays = async {
        let mut client = authorized_client(&env, &format!("{address}.patient")).await;
        tokio::time::sleep(timeout * 3).await;
        assert_still_usable(&mut client, "three authorize timeouts").await;
    };
    let (partial, trickled, busy, subscribed, ()) = tokio::join!(
        partial_then_silence,
        one_byte_at_a_time,
        busy_but_unauthorized,
        subscribed_never_authorized,
        authorized_stays
    );
    for (name, lasted) in [
        ("partial line", partial),
        ("1 byte / 250 ms", trickled),
        ("busy", busy),
        ("subscribed", subscribed),
    ] {
        assert!(
            lasted >= timeout - Duration::from_millis(100),
            "{name}: closed too early, after {lasted:?}"
        );
        assert!(lasted < timeout + SLACK, "{name}: closed after {lasted:?}");
    }
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

#[tokio::test]
async fn an_authorized_miner_is_closed_one_idle_timeout_after_its_last_line() {
    // The session arms one timer and re-arms it when it fires early, so a
    // miner kept alive by its lines for several timeouts must still be
    // closed one timeout after it falls silent, not at the first deadline.
    let idle = Duration::from_secs(1);
    let env = TestEnv::start_with(|settings| {
        settings.idle_timeout = idle;
        // A subscribe every quarter second is past the default 3 a minute.
        settings.limits.subscribes_per_minute = 0;
    })
    .await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut client = authorized_client(&env, &format!("{address}.chatty")).await;
    let started = Instant::now();
    while started.elapsed() < idle * 3 {
        tokio::time::sleep(idle / 4).await;
        assert_still_usable(&mut client, "a line every quarter of the idle timeout").await;
    }
    let silent_from = Instant::now();
    read_until_closed(&mut client, idle + SLACK).await;
    let lasted = silent_from.elapsed();
    assert!(
        lasted >= idle - Duration::from_millis(100),
        "closed {lasted:?} after the last line, before the idle timeout"
    );
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

fn open_connections(env: &TestEnv) -> u64 {
    env.service.pool.status().connections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_500_connections_in_bursts_of_50_is_served() {
    // Long enough that the unauthorized flood outlives the whole test.
    let env =
        TestEnv::start_with(|settings| settings.authorize_timeout = Duration::from_secs(120)).await;
    let mut clients = Vec::with_capacity(500);
    for _burst in 0..10 {
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let addr = env.stratum_addr();
            burst.spawn(async move {
                let mut client = StratumClient::connect(addr)
                    .await
                    .expect("flood connection accepted");
                let reply = client
                    .request("mining.subscribe", json!(["flood"]))
                    .await
                    .expect("flood subscribe answered");
                assert!(reply.is_ok(), "{reply:?}");
                client
            });
        }
        while let Some(client) = burst.join_next().await {
            clients.push(client.expect("flood task"));
        }
    }
    assert_eq!(clients.len(), 500);
    assert_eq!(open_connections(&env), 500);
    assert_pool_serves(&env).await;
    // Every flood connection is still served.
    for client in clients.iter_mut().step_by(50) {
        assert_still_usable(client, "the flood").await;
    }
    drop(clients);
    env.wait_until(
        "flood connections released",
        Duration::from_secs(10),
        |env| open_connections(env) == 0,
    )
    .await;
    env.shutdown().await;
}

/// With a cap of 20 connections, the 21st is closed without an answer while
/// the first 20 keep working; once they leave, new miners get in.
async fn check_connection_cap(env: TestEnv) {
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(subscribed_client(&env).await);
    }
    let refused_before = env
        .service
        .pool
        .counters()
        .connections_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut extra = StratumClient::connect(env.stratum_addr())
        .await
        .expect("TCP handshake completes");
    let _ = extra.send("mining.subscribe", json!([])).await;
    let received = read_until_closed(&mut extra, SLACK).await;
    assert!(
        received.is_empty(),
        "the 21st connection got an answer: {received:?}"
    );
    let refused_after = env
        .service
        .pool
        .counters()
        .connections_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused_after, refused_before + 1);
    for client in &mut clients {
        assert_still_usable(client, "the refused 21st connection").await;
    }
    assert_eq!(open_connections(&env), 20);
    drop(clients);
    env.wait_until("connections released", Duration::from_secs(10), |env| {
        open_connections(env) == 0
    })
    .await;
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_the_21st_connection() {
    check_connection_cap(TestEnv::start_with(|settings| settings.max_clients = 20).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_refuses_the_21st_connection() {
    check_connection_cap(
        TestEnv::start_with(|settings| {
            // Only this limit: loopback is not exempt here.
            settings.limits = tbg_pool::limits::LimitSettings {
                max_connections_per_ip: 20,
                ..tbg_pool::limits::LimitSettings::unlimited()
            }
        })
        .await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_dropped_after_write_timeout() {
    let env = TestEnv::start_with(|settings| settings.write_timeout = Duration::from_secs(1)).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let stream = socket.connect(env.stratum_addr()).await.expect("connect");
    let (mut read_half, mut write_half) = stream.into_split();
    let started = Instant::now();
    // Each request is answered with its 8 KB id echoed back; we never read.
    let line = format!(
        "{{\"id\":\"{}\",\"method\":\"mining.subscribe\",\"params\":[]}}\n",
        "i".repeat(8000)
    );
    let writer = tokio::spawn(async move {
        let mut written = 0usize;
        while written < 500_000_000 {
            if write_half.write_all(line.as_bytes()).await.is_err() {
                return Ok(written);
            }
            written += line.len();
        }
        Err(written)
    });
    let written = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the pool hangs up on a client that never reads")
        .expect("writer task");
    let written = written.unwrap_or_else(|total| panic!("pool still reading after {total} bytes"));
    assert!(started.elapsed() < Duration::from_secs(20));
    // What the pool had sent is still there, then the connection is over.
    let mut sink = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read_half.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "connection still open after {written} bytes written"
    );
    env.wait_until("slow reader gone", Duration::from_secs(5), |env| {
        open_connections(env) == 0
    })
    .await;
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_shares_closes_only_that_connection() {
    let env = TestEnv::start_with(|settings| settings.max_invalid_shares_per_minute = 20).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let (neighbour_address, _) = regtest_address(AddressKind::P2wpkh);
    let mut neighbour = authorized_client(&env, &format!("{neighbour_address}.neighbour")).await;
    let username = format!("{address}.flooder");
    let mut flooder = authorized_client(&env, &username).await;
    let mut errors = Vec::new();
    let mut closed = false;
    for nonce in 0..40u32 {
        let params = json!([
            username,
            "deadbeef",
            "0000000000000000",
            "00000000",
            format!("{nonce:08x}")
        ]);
        match flooder.request("mining.submit", params).await {
            Ok(reply) => {
                assert_eq!(reply.result, json!(false), "{reply:?}");
                errors.push(reply.error_message().unwrap_or_default());
            }
            Err(MinerError::Closed | MinerError::Io(_)) => {
                closed = true;
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(closed, "still open after {} invalid shares", errors.len());
    assert_eq!(
        errors.len(),
        21,
        "each invalid share answered until the 21st: {errors:?}"
    );
    assert!(errors.iter().all(|e| e == "Invalid JobID"), "{errors:?}");
    assert_still_usable(&mut neighbour, "another connection's invalid-share flood").await;
    let shares_rejected = env.service.pool.status().shares_rejected;
    assert_eq!(shares_rejected, 21);
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_cannot_submit_or_authorize_as_another_users_address() {
    let env = TestEnv::start().await;
    let (address_a, _) = regtest_address(AddressKind::P2wpkh);
    let (address_b, _) = regtest_address(AddressKind::P2tr);
    let mut client = authorized_client(&env, &format!("{address_a}.rig")).await;
    let job = client.wait_push("mining.notify").await.expect("a job");
    let job_id = job[0].as_str().expect("job id").to_string();

    let params = json!([
        format!("{address_b}.rig"),
        job_id,
        "0000000000000000",
        job[7],
        "00000000"
    ]);
    let reply = client
        .request("mining.submit", params)
        .await
        .expect("reply");
    assert_eq!(reply.result, json!(false), "{reply:?}");
    assert_eq!(
        reply.error_message().as_deref(),
        Some("Worker mismatch"),
        "{reply:?}"
    );
    assert_eq!(reply.error.get(0).and_then(Value::as_i64), Some(24));

    let params = json!([address_b, job_id, "0000000000000001", job[7], "00000000"]);
    let reply = client
        .request("mining.submit", params)
        .await
        .expect("reply");
    assert_eq!(
        reply.error_message().as_deref(),
        Some("Worker mismatch"),
        "bare address B: {reply:?}"
    );

    let params = json!([
        format!("{address_a}.never-authorized"),
        job_id,
        "0000000000000002",
        job[7],
        "00000000"
    ]);
    let reply = client
        .request("mining.submit", params)
        .await
        .expect("reply");
    assert_eq!(
        reply.error_message().as_deref(),
        Some("Unauthorized worker"),
        "{reply:?}"
    );

    // Switching the payout address on an authorized connection is refused.
    let reply = client
        .request("mining.authorize", json!([format!("{address_b}.rig"), "x"]))
        .await
        .expect("reply");
    assert!(!reply.is_ok(), "{reply:?}");
    assert!(
        reply
            .error_message()
            .unwrap_or_default()
            .starts_with("Worker mismatch"),
        "{reply:?}"
    );
    // Nothing was ever credited to B.
    let credited_to_b = env
        .events
        .events()
        .into_iter()
        .any(|event| match event.data {
            EventData::ShareSubmitted { user, .. } | EventData::MinerConnected { user, .. } => {
                user == address_b
            }
            _ => false,
        });
    assert!(!credited_to_b, "an event names address B");
    assert!(env
        .service
        .pool
        .stats()
        .users(Instant::now())
        .iter()
        .all(|u| u.address != address_b));
    assert_still_usable(&mut client, "submits as another user").await;
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_addresses_are_refused_and_the_connection_stays_open() {
    // More authorizes on one connection than the default 5 a minute.
    let env = TestEnv::start_with(|settings| settings.limits.authorizes_per_minute = 0).await;
    let mut client = subscribed_client(&env).await;
    let invalid = [
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".to_string(), // mainnet
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa".to_string(),         // mainnet P2PKH
        "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx".to_string(), // testnet
        "not-an-address".to_string(),
        "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq".to_string(), // bad checksum
        format!("bcrt1q{}", "q".repeat(194)),                       // 200 chars
        "x".repeat(200),
    ];
    for (index, address) in invalid.iter().enumerate() {
        let reply = client
            .request("mining.authorize", json!([format!("{address}.rig"), "x"]))
            .await;
        let reply = reply
            .unwrap_or_else(|error| panic!("invalid address {index}: connection lost: {error}"));
        assert!(
            !reply.is_ok(),
            "invalid address {index} accepted: {reply:?}"
        );
        let message = reply.error_message().unwrap_or_default();
        assert!(
            message.starts_with("Invalid address"),
            "invalid address {index}: {message}"
        );
    }
    assert_eq!(env.service.pool.status().miners, 0);
    let (address, _) = regtest_address(AddressKind::P2pkh);
    let reply = client
        .request("mining.authorize", json!([format!("{address}.rig"), "x"]))
        .await
        .expect("reply");
    assert!(
        reply.is_ok(),
        "a valid address after invalid ones: {reply:?}"
    );
    client
        .wait_push("mining.notify")
        .await
        .expect("work after a valid authorize");
    assert_pool_serves(&env).await;
    env.shutdown().await;
}

/// One shutdown with three authorized miners and one subscribed connection:
/// each must read `client.reconnect` as the last thing before the close.
async fn shutdown_round(round: usize) {
    let env = TestEnv::start().await;
    if round == 0 {
        assert_pool_serves(&env).await;
    }
    let addr = env.stratum_addr();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miners = Vec::new();
    for index in 0..3 {
        let mut client = authorized_client(&env, &format!("{address}.rig{index}")).await;
        client.wait_push("mining.notify").await.expect("work");
        miners.push(client);
    }
    miners.push(subscribed_client(&env).await);
    let started = Instant::now();
    let watch = async {
        let mut outcomes = Vec::new();
        for client in &mut miners {
            let received = read_until_closed(client, Duration::from_secs(5)).await;
            let methods: Vec<String> = received
                .iter()
                .filter_map(|m| m["method"].as_str())
                .map(str::to_string)
                .collect();
            outcomes.push(methods);
        }
        outcomes
    };
    let ((), outcomes) = tokio::join!(env.shutdown(), watch);
    for (index, methods) in outcomes.iter().enumerate() {
        assert_eq!(
            methods.last().map(String::as_str),
            Some("client.reconnect"),
            "round {round}, connection {index}: pushes before the close: {methods:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The listener is gone: a new connection is refused or closed unanswered.
    if let Ok(mut late) = StratumClient::connect(addr).await {
        let _ = late.send("mining.subscribe", json!([])).await;
        late.timeout = Duration::from_secs(2);
        assert!(
            late.read_message().await.is_err(),
            "a stopped pool answered"
        );
    }
}

/// Regression: every miner connected during a graceful shutdown gets
/// `client.reconnect` before the close (a race once let a session see its
/// work channel close first and leave silently). Several rounds make a
/// race likelier to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_client_reconnect_before_closing() {
    for round in 0..4 {
        shutdown_round(round).await;
    }
}

/// One connection cannot create unbounded per-worker state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_authorizes_at_most_64_workers() {
    // 65 authorizes at once: past the default 5 a minute, which would
    // otherwise refuse them before this cap does.
    let env = TestEnv::start_with(|settings| settings.limits.authorizes_per_minute = 0).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut client = StratumClient::connect(env.stratum_addr()).await.unwrap();
    client
        .request("mining.subscribe", json!(["many-workers"]))
        .await
        .unwrap();
    for index in 0..tbg_pool::session::MAX_WORKERS_PER_CONNECTION {
        let reply = client
            .request(
                "mining.authorize",
                json!([format!("{address}.w{index}"), "x"]),
            )
            .await
            .unwrap();
        assert_eq!(reply.result, json!(true), "worker {index}");
    }
    let reply = client
        .request(
            "mining.authorize",
            json!([format!("{address}.one-too-many"), "x"]),
        )
        .await
        .unwrap();
    assert_ne!(reply.result, json!(true));
    assert!(reply
        .error_message()
        .unwrap_or_default()
        .contains("Too many workers"));
    // Re-authorizing a known worker still works, and so does mining.
    let reply = client
        .request("mining.authorize", json!([format!("{address}.w0"), "x"]))
        .await
        .unwrap();
    assert_eq!(reply.result, json!(true));
    assert_eq!(
        env.service
            .pool
            .stats()
            .user(&address, std::time::Instant::now())
            .unwrap()
            .workers
            .len(),
        64
    );
    env.shutdown().await;
}
