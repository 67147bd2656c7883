//! End-to-end tests over real HTTP sockets: a pool's view of the devnode.

use std::time::Duration;

use base64::Engine;
use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxMerkleNode, TxOut, Witness,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tbg_devnode::{DevNode, DevNodeHandle, DevNodeOptions};

struct Rpc {
    client: reqwest::Client,
    url: String,
    user: String,
    password: String,
}

impl Rpc {
    fn new(node: &DevNodeHandle) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: node.rpc_url().to_string(),
            user: node.rpc_user().to_string(),
            password: node.rpc_password().to_string(),
        }
    }

    async fn call_raw(&self, method: &str, params: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(&self.url)
            .basic_auth(&self.user, Some(&self.password))
            .json(&json!({"jsonrpc": "1.0", "id": "test", "method": method, "params": params}))
            .send()
            .await
            .expect("rpc request");
        let status = response.status();
        let body: Value = response.json().await.expect("json body");
        assert_eq!(body["id"], "test", "reply echoes the id: {body}");
        (status, body)
    }

    /// Calls a method that must succeed and returns its result.
    async fn call(&self, method: &str, params: Value) -> Value {
        let (status, body) = self.call_raw(method, params).await;
        assert_eq!(status, StatusCode::OK, "{method} failed: {body}");
        assert!(body["error"].is_null(), "{method} error: {body}");
        body["result"].clone()
    }

    /// Calls a method that must fail and returns (code, message).
    async fn call_err(&self, method: &str, params: Value) -> (i64, String) {
        let (_, body) = self.call_raw(method, params).await;
        assert!(body["result"].is_null(), "{method} should fail: {body}");
        (
            body["error"]["code"].as_i64().expect("error code"),
            body["error"]["message"]
                .as_str()
                .expect("error message")
                .to_string(),
        )
    }
}

async fn start(initial_blocks: u32) -> DevNodeHandle {
    DevNode::start(DevNodeOptions {
        initial_blocks,
        ..DevNodeOptions::default()
    })
    .await
    .expect("devnode starts")
}

fn miner_script() -> ScriptBuf {
    // OP_TRUE-style anyone-can-spend would also do; a P2WPKH of a fixed hash
    // is what a pool's payout looks like.
    let hash = bitcoin::WPubkeyHash::from_byte_array([7u8; 20]);
    ScriptBuf::new_p2wpkh(&hash)
}

/// Builds and grinds a block from a getblocktemplate answer, the way a pool
/// does: BIP34 height, witness commitment, merkle root.
fn block_from_template(template: &Value, payout: &ScriptBuf) -> Block {
    let height = template["height"].as_i64().expect("height");
    let coinbase_value = template["coinbasevalue"].as_u64().expect("coinbasevalue");
    let commitment = hex::decode(
        template["default_witness_commitment"]
            .as_str()
            .expect("commitment"),
    )
    .expect("commitment hex");
    let coinbase = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::builder()
                .push_int(height)
                .push_slice(b"tbg-test")
                .into_script(),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[[0u8; 32]]),
        }],
        output: vec![
            TxOut {
                value: Amount::from_sat(coinbase_value),
                script_pubkey: payout.clone(),
            },
            TxOut {
                value: Amount::ZERO,
                script_pubkey: ScriptBuf::from_bytes(commitment),
            },
        ],
    };
    let mut txdata = vec![coinbase];
    for entry in template["transactions"].as_array().expect("transactions") {
        let bytes = hex::decode(entry["data"].as_str().expect("data")).expect("tx hex");
        txdata.push(bitcoin::consensus::deserialize(&bytes).expect("tx decodes"));
    }
    let bits = u32::from_str_radix(template["bits"].as_str().expect("bits"), 16).expect("bits hex");
    let mut block = Block {
        header: Header {
            version: Version::from_consensus(
                i32::try_from(template["version"].as_i64().expect("version")).expect("i32"),
            ),
            prev_blockhash: template["previousblockhash"]
                .as_str()
                .expect("prev")
                .parse()
                .expect("prev hash"),
            merkle_root: TxMerkleNode::all_zeros(),
            time: u32::try_from(template["curtime"].as_u64().expect("curtime")).expect("u32"),
            bits: CompactTarget::from_consensus(bits),
            nonce: 0,
        },
        txdata,
    };
    block.header.merkle_root = block.compute_merkle_root().expect("merkle root");
    grind(&mut block.header);
    assert!(
        block.check_witness_commitment(),
        "template commitment matches"
    );
    block
}

fn grind(header: &mut Header) {
    let target = Target::from_compact(header.bits);
    while !target.is_met_by(header.block_hash()) {
        header.nonce = header.nonce.wrapping_add(1);
    }
}

fn block_hex(block: &Block) -> String {
    bitcoin::consensus::encode::serialize_hex(block)
}

async fn fetch_template(rpc: &Rpc) -> Value {
    rpc.call("getblocktemplate", json!([{"rules": ["segwit"]}]))
        .await
}

#[tokio::test]
async fn template_to_submitted_block() {
    let node = start(110).await;
    let rpc = Rpc::new(&node);
    assert_eq!(rpc.call("getblockcount", json!([])).await, json!(110));

    let (code, message) = rpc.call_err("getblocktemplate", json!([{}])).await;
    assert_eq!(code, -8);
    assert!(message.starts_with("getblocktemplate must be called with the segwit rule set"));

    let template = fetch_template(&rpc).await;
    assert_eq!(template["height"], 111);
    assert_eq!(template["version"], 0x2000_0000);
    assert_eq!(template["bits"], "207fffff");
    assert_eq!(template["rules"], json!(["csv", "!segwit", "taproot"]));
    let transactions = template["transactions"].as_array().expect("transactions");
    assert_eq!(transactions.len(), 4, "template_transactions default");
    let has_witness = transactions.iter().any(|tx| tx["hash"] != tx["txid"]);
    let has_legacy = transactions.iter().any(|tx| tx["hash"] == tx["txid"]);
    assert!(has_witness && has_legacy, "{transactions:?}");
    let fees: u64 = transactions
        .iter()
        .map(|tx| tx["fee"].as_u64().expect("fee"))
        .sum();
    assert!(fees > 0);
    assert_eq!(
        template["coinbasevalue"].as_u64(),
        Some(5_000_000_000 + fees),
        "subsidy plus fees"
    );
    assert!(
        transactions
            .iter()
            .any(|tx| tx["depends"].as_array().is_some_and(|d| !d.is_empty())),
        "a child spends an unconfirmed parent"
    );
    for key in [
        "capabilities",
        "vbavailable",
        "vbrequired",
        "coinbaseaux",
        "longpollid",
        "target",
        "mintime",
        "mutable",
        "noncerange",
        "sigoplimit",
        "sizelimit",
        "weightlimit",
        "curtime",
    ] {
        assert!(!template[key].is_null(), "template has {key}");
    }

    let payout = miner_script();
    let block = block_from_template(&template, &payout);
    let hash = block.block_hash();
    assert_eq!(
        rpc.call("submitblock", json!([block_hex(&block)])).await,
        Value::Null
    );
    assert_eq!(rpc.call("getblockcount", json!([])).await, json!(111));
    assert_eq!(node.block_count(), 111);
    assert_eq!(
        rpc.call("getbestblockhash", json!([])).await,
        json!(hash.to_string())
    );
    assert_eq!(node.best_block_hash(), hash);
    let stored = node.get_block(&hash).expect("stored block");
    assert_eq!(stored.txdata[0].output[0].script_pubkey, payout);
    assert_eq!(stored.txdata.len(), 5);

    assert_eq!(
        rpc.call("submitblock", json!([block_hex(&block)])).await,
        json!("duplicate")
    );

    // The confirmed transactions left the mempool and new ones replaced them.
    let next = fetch_template(&rpc).await;
    assert_eq!(next["previousblockhash"], json!(hash.to_string()));
    let confirmed: Vec<String> = block
        .txdata
        .iter()
        .map(|tx| tx.compute_txid().to_string())
        .collect();
    let next_transactions = next["transactions"].as_array().expect("transactions");
    assert!(!next_transactions.is_empty());
    assert!(next_transactions
        .iter()
        .all(|tx| !confirmed.contains(&tx["txid"].as_str().expect("txid").to_string())));

    // A corrupted merkle root is refused with a reason string.
    let mut corrupted = block_from_template(&next, &payout);
    corrupted.header.merkle_root = TxMerkleNode::from_byte_array([0x42; 32]);
    let reason = rpc
        .call("submitblock", json!([block_hex(&corrupted)]))
        .await;
    let reason = reason.as_str().expect("rejection reason string");
    assert!(
        reason == "high-hash" || reason == "bad-txnmrklroot",
        "reason {reason}"
    );
    grind(&mut corrupted.header);
    assert_eq!(
        rpc.call("submitblock", json!([block_hex(&corrupted)]))
            .await,
        json!("bad-txnmrklroot")
    );
    assert_eq!(node.block_count(), 111);

    let (code, message) = rpc.call_err("submitblock", json!(["00"])).await;
    assert_eq!((code, message.as_str()), (-22, "Block decode failed"));

    node.shutdown().await;
}

#[tokio::test]
async fn chain_queries_match_bitcoin_core_shapes() {
    let node = start(3).await;
    let rpc = Rpc::new(&node);

    let (status, body) = rpc.call_raw("no_such_method", json!([])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"],
        json!({"code": -32601, "message": "Method not found"})
    );

    let hash = rpc.call("getblockhash", json!([2])).await;
    let (code, message) = rpc.call_err("getblockhash", json!([4])).await;
    assert_eq!((code, message.as_str()), (-8, "Block height out of range"));

    let block = rpc.call("getblock", json!([hash, 2])).await;
    assert_eq!(block["height"], 2);
    assert_eq!(block["confirmations"], 2);
    let coinbase = &block["tx"][0];
    let (legacy, segwit) = node.wallet_addresses().expect("addresses");
    let paid_to = coinbase["vout"][0]["scriptPubKey"]["address"]
        .as_str()
        .expect("address");
    assert!(paid_to == legacy.to_string() || paid_to == segwit.to_string());
    let raw = rpc.call("getblock", json!([hash, 0])).await;
    let decoded: Block =
        bitcoin::consensus::deserialize(&hex::decode(raw.as_str().expect("hex")).expect("hex"))
            .expect("block");
    assert_eq!(json!(decoded.block_hash().to_string()), hash);

    let (code, message) = rpc
        .call_err("getblock", json!([BlockHash::all_zeros().to_string()]))
        .await;
    assert_eq!((code, message.as_str()), (-5, "Block not found"));

    let info = rpc.call("getblockchaininfo", json!([])).await;
    assert_eq!(info["chain"], "regtest");
    assert_eq!(info["blocks"], 3);
    assert_eq!(
        info["chainwork"],
        "0000000000000000000000000000000000000000000000000000000000000008"
    );
    let mining = rpc.call("getmininginfo", json!([])).await;
    assert_eq!(mining["next"]["height"], 4);
    let network = rpc.call("getnetworkinfo", json!([])).await;
    assert_eq!(network["connections"], 0, "the devnode has no peers");
    assert_eq!(network["networkactive"], true);
    assert!(network["version"].as_u64().is_some_and(|v| v > 0));
    assert!(network["subversion"]
        .as_str()
        .is_some_and(|s| s.starts_with("/Satoshi:")));
    assert_eq!(network["protocolversion"], 70016);
    assert_eq!(mining["chain"], "regtest");

    let generated = rpc
        .call("generatetoaddress", json!([2, segwit.to_string()]))
        .await;
    assert_eq!(generated.as_array().map(Vec::len), Some(2));
    assert_eq!(rpc.call("getbestblockhash", json!([])).await, generated[1]);

    let other = node
        .mine_blocks(1, &miner_script())
        .await
        .expect("mine a block");
    assert_eq!(node.block_count(), 6);
    let found = node.get_block(&other[0]).expect("mined block");
    assert_eq!(found.txdata[0].output[0].script_pubkey, miner_script());

    node.shutdown().await;
}

/// What ckpool asks of a node before it mines (`validateaddress` for the
/// pool's and each miner's address, `decoderawtransaction` of its first
/// coinbase, `preciousblock` after a block), in Core's shapes.
#[tokio::test]
async fn the_rpcs_ckpool_calls_answer_in_bitcoin_cores_shapes() {
    let node = start(1).await;
    let rpc = Rpc::new(&node);
    let (legacy, segwit) = node.wallet_addresses().expect("addresses");

    let valid = rpc
        .call("validateaddress", json!([segwit.to_string()]))
        .await;
    assert_eq!(valid["isvalid"], true);
    assert_eq!(valid["address"], segwit.to_string());
    assert_eq!(valid["isscript"], false);
    assert_eq!(valid["iswitness"], true);
    assert_eq!(valid["witness_version"], 0);
    let script = hex::encode(segwit.script_pubkey().as_bytes());
    assert_eq!(valid["scriptPubKey"], script);
    assert_eq!(valid["witness_program"], script[4..]);
    let p2pkh = rpc
        .call("validateaddress", json!([legacy.to_string()]))
        .await;
    assert_eq!(
        (&p2pkh["isvalid"], &p2pkh["isscript"], &p2pkh["iswitness"]),
        (&json!(true), &json!(false), &json!(false))
    );
    let p2wsh = bitcoin::Address::p2wsh(&ScriptBuf::new(), bitcoin::Network::Regtest);
    let valid = rpc
        .call("validateaddress", json!([p2wsh.to_string()]))
        .await;
    assert_eq!(
        (&valid["isscript"], &valid["iswitness"]),
        (&json!(true), &json!(true))
    );
    // A mainnet address on regtest, and garbage: answers, not errors.
    for wrong in [
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kqj3l0d",
        "not an address",
    ] {
        let invalid = rpc.call("validateaddress", json!([wrong])).await;
        assert_eq!(invalid["isvalid"], false, "{wrong}");
        assert!(invalid["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (code, _) = rpc.call_err("validateaddress", json!([])).await;
    assert_eq!(code, -1);

    let hash = rpc.call("getblockhash", json!([1])).await;
    let block = rpc.call("getblock", json!([hash, 2])).await;
    let coinbase = &block["tx"][0];
    let decoded = rpc
        .call("decoderawtransaction", json!([coinbase["hex"]]))
        .await;
    assert_eq!(decoded["txid"], coinbase["txid"]);
    assert_eq!(decoded["vout"], coinbase["vout"]);
    assert!(decoded["vin"][0]["coinbase"].is_string());
    let (code, message) = rpc.call_err("decoderawtransaction", json!(["00ff"])).await;
    assert_eq!((code, message.as_str()), (-22, "TX decode failed"));

    assert_eq!(rpc.call("preciousblock", json!([hash])).await, Value::Null);
    node.shutdown().await;
}

#[tokio::test]
async fn authentication_by_password_and_cookie() {
    let node = start(0).await;
    let client = reqwest::Client::new();
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "getblockcount", "params": []});

    let wrong = client
        .post(node.rpc_url())
        .basic_auth(node.rpc_user(), Some("wrong"))
        .json(&request)
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let anonymous = client
        .post(node.rpc_url())
        .json(&request)
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let cookie = std::fs::read_to_string(node.cookie_path()).expect("cookie file");
    assert!(cookie.starts_with("__cookie__:"));
    let encoded = base64::engine::general_purpose::STANDARD.encode(cookie.trim());
    let reply: Value = client
        .post(node.rpc_url())
        .header("Authorization", format!("Basic {encoded}"))
        .json(&request)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    // A JSON-RPC 2.0 request gets a 2.0 reply.
    assert_eq!(reply, json!({"jsonrpc": "2.0", "result": 0, "id": 1}));

    let cookie_path = node.cookie_path().to_path_buf();
    node.shutdown().await;
    assert!(!cookie_path.exists(), "cookie removed with the node");
}

#[tokio::test]
async fn rpc_can_go_down_and_come_back_on_the_same_port() {
    let node = start(1).await;
    let rpc = Rpc::new(&node);
    assert_eq!(rpc.call("getblockcount", json!([])).await, json!(1));

    node.stop_rpc().await;
    // The same client (with a pooled keep-alive connection) must see it down.
    let refused = rpc
        .client
        .post(node.rpc_url())
        .timeout(Duration::from_secs(5))
        .basic_auth(node.rpc_user(), Some(node.rpc_password()))
        .json(&json!({"id": "test", "method": "getblockcount", "params": []}))
        .send()
        .await;
    assert!(refused.is_err(), "rpc is down: {refused:?}");

    node.start_rpc().await.expect("rpc restarts");
    assert_eq!(
        Rpc::new(&node).call("getblockcount", json!([])).await,
        json!(1)
    );
    node.shutdown().await;
}

#[tokio::test]
async fn overpaying_coinbase_is_rejected_by_consensus() {
    let node = start(110).await;
    let rpc = Rpc::new(&node);
    let mut template = fetch_template(&rpc).await;
    let greedy = template["coinbasevalue"].as_u64().expect("value") + 1;
    template["coinbasevalue"] = json!(greedy);
    let block = block_from_template(&template, &miner_script());
    assert_eq!(
        rpc.call("submitblock", json!([block_hex(&block)])).await,
        json!("bad-cb-amount")
    );
    assert_eq!(node.block_count(), 110);
    node.shutdown().await;
}

#[tokio::test]
async fn persistent_data_dir_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = DevNodeOptions {
        data_dir: Some(dir.path().to_path_buf()),
        initial_blocks: 105,
        template_transactions: 2,
        ..DevNodeOptions::default()
    };
    let node = DevNode::start(options.clone()).await.expect("first start");
    let tip = node.best_block_hash();
    assert_eq!(node.block_count(), 105);
    node.shutdown().await;

    let node = DevNode::start(options).await.expect("restart");
    assert_eq!(node.block_count(), 105, "no blocks re-mined");
    assert_eq!(node.best_block_hash(), tip);
    let template = fetch_template(&Rpc::new(&node)).await;
    assert_eq!(
        template["transactions"].as_array().map(Vec::len),
        Some(2),
        "wallet found its matured coins again"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn zmq_publishes_hashblock_for_new_tips() {
    use zeromq::{Socket, SocketRecv};

    let node = DevNode::start(DevNodeOptions {
        initial_blocks: 1,
        zmq_pub_hashblock: Some("tcp://127.0.0.1:0".to_string()),
        ..DevNodeOptions::default()
    })
    .await
    .expect("devnode starts");
    let endpoint = node
        .zmq_hashblock_endpoint()
        .expect("zmq enabled")
        .to_string();
    let mut subscriber = zeromq::SubSocket::new();
    subscriber.connect(&endpoint).await.expect("connect");
    subscriber.subscribe("hashblock").await.expect("subscribe");

    // A subscription takes effect asynchronously: mine until one arrives.
    let mut mined = Vec::new();
    let mut received = None;
    for _ in 0..50 {
        mined.extend(node.mine_blocks(1, &miner_script()).await.expect("mine"));
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(200), subscriber.recv()).await
        {
            received = Some(message.expect("zmq message"));
            break;
        }
    }
    let message = received.expect("a hashblock message");
    let frames = message.into_vec();
    assert_eq!(frames.len(), 3);
    assert_eq!(&frames[0][..], b"hashblock");
    let hash_hex = hex::encode(&frames[1][..]);
    assert!(
        mined.iter().any(|hash| hash.to_string() == hash_hex),
        "hash {hash_hex} in display order is one of {mined:?}"
    );
    assert_eq!(frames[2].len(), 4, "u32 sequence");
    node.shutdown().await;
}
