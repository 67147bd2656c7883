//! Tests against a small HTTP server that replays Bitcoin Core's answers.
//!
//! The answers come from fixtures/bitcoin-core-rpc-regtest.json: they were
//! recorded from a real Bitcoin Core (regtest, JSON-RPC 1.0 over HTTP), so
//! field names, types, error codes and the 401 on a wrong password are
//! Core's own. The HTTP statuses of error answers follow Core's JSON-RPC 1.0
//! behaviour (404 for an unknown method, 500 for other RPC errors).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use base64::Engine;
use bitcoin::{BlockHash, Network};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tbg_node::{
    NodeAuth, NodeEndpoint, NodeError, NodeHealth, NodeSet, RpcClient, RpcError, RpcObserver,
    SubmitAnswer, TemplateWatcher, WatcherConfig,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/bitcoin-core-rpc-regtest.json"
));
const TIMEOUT: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);
/// Tip in the recording (block 103).
const RECORDED_TIP: &str = "000000000d92b62c63afe4af75ac643c6c4838eefd3e1cd234edcb170e8f3241";
/// Block 102 in the recording.
const RECORDED_BLOCK_102: &str = "000000008b5b80da2f54b2f4995ed81dd3d933f748efb141762d7345a0e617d1";
/// Block hex values the replay server maps to the recorded submitblock
/// answers (the recording replaced the real blocks by placeholders).
const BLOCK_DUPLICATE: &str = "d0d0";
const BLOCK_HIGH_HASH: &str = "ba0d";
const BLOCK_UNDECODABLE: &str = "00";

struct Recording {
    /// method -> recorded responses, in recording order.
    responses: HashMap<String, Vec<Value>>,
    bad_password_status: u16,
}

fn recording() -> Recording {
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture is json");
    let mut responses: HashMap<String, Vec<Value>> = HashMap::new();
    for call in fixture["calls"].as_array().expect("calls array") {
        let method = call["method"].as_str().expect("method").to_owned();
        responses
            .entry(method)
            .or_default()
            .push(call["response"].clone());
    }
    Recording {
        responses,
        bad_password_status: fixture["http_status_on_bad_password"]
            .as_u64()
            .expect("status") as u16,
    }
}

struct ServerState {
    recording: Recording,
    authorization: Mutex<String>,
    best_hash: Mutex<String>,
    /// (method, params) of every authorised call, in order.
    calls: Mutex<Vec<(String, Value)>>,
    /// getnetworkinfo's answer; `None` answers `-32601` like a node
    /// without the method (the recording has no getnetworkinfo).
    network_info: Mutex<Option<Value>>,
}

impl ServerState {
    fn new(user: &str, pass: &str) -> Arc<ServerState> {
        let state = Arc::new(ServerState {
            recording: recording(),
            authorization: Mutex::new(String::new()),
            best_hash: Mutex::new(RECORDED_TIP.to_owned()),
            calls: Mutex::new(Vec::new()),
            network_info: Mutex::new(None),
        });
        state.set_credentials(user, pass);
        state
    }

    fn set_credentials(&self, user: &str, pass: &str) {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        *self.authorization.lock() = format!("Basic {token}");
    }

    fn recorded(&self, method: &str, index: usize) -> Value {
        self.recording.responses[method][index].clone()
    }

    fn call_count(&self, method: &str) -> usize {
        self.calls
            .lock()
            .iter()
            .filter(|(m, _)| m == method)
            .count()
    }
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == *state.authorization.lock());
    if !authorized {
        let status = StatusCode::from_u16(state.recording.bad_password_status).unwrap();
        return status.into_response();
    }
    let request: Value = serde_json::from_str(&body).expect("client sent json");
    assert_eq!(request["jsonrpc"], "1.0", "bitcoin-cli style body");
    let method = request["method"].as_str().unwrap_or_default().to_owned();
    let params = request["params"].clone();
    state.calls.lock().push((method.clone(), params.clone()));
    let best = state.best_hash.lock().clone();
    let mut response = match method.as_str() {
        "getblocktemplate" => {
            let mut response = state.recorded("getblocktemplate", 0);
            response["result"]["previousblockhash"] = json!(best);
            response
        }
        "getbestblockhash" => {
            let mut response = state.recorded("getbestblockhash", 0);
            response["result"] = json!(best);
            response
        }
        "getblockhash" if params[0] == json!(102) => state.recorded("getblockhash", 0),
        "getblockcount" | "getmininginfo" | "getblockchaininfo" => state.recorded(&method, 0),
        "getnetworkinfo" => match state.network_info.lock().clone() {
            Some(result) => json!({"result": result, "error": null, "id": null}),
            None => state.recorded("no_such_method", 0),
        },
        "submitblock" => match params[0].as_str() {
            Some(BLOCK_DUPLICATE) => state.recorded("submitblock", 0),
            Some(BLOCK_HIGH_HASH) => state.recorded("submitblock", 1),
            _ => state.recorded("submitblock", 2),
        },
        _ => state.recorded("no_such_method", 0),
    };
    response["id"] = request["id"].clone();
    let status = match response["error"]["code"].as_i64() {
        None => StatusCode::OK,
        Some(-32601) => StatusCode::NOT_FOUND,
        Some(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        [("content-type", "application/json")],
        response.to_string(),
    )
        .into_response()
}

/// A replay server that can be stopped and restarted on the same port.
struct ReplayServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl ReplayServer {
    async fn start(user: &str, pass: &str) -> ReplayServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = ReplayServer {
            addr: listener.local_addr().unwrap(),
            state: ServerState::new(user, pass),
            running: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/", post(handle))
            .with_state(self.state.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
        self.running = Some((stop_tx, task));
    }

    /// Stops accepting and closes every connection, like a node going down.
    async fn stop(&mut self) {
        if let Some((stop_tx, task)) = self.running.take() {
            let _ = stop_tx.send(());
            task.await.unwrap();
        }
    }

    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn endpoint(&self, user: &str, pass: &str) -> NodeEndpoint {
        NodeEndpoint {
            url: self.url(),
            auth: NodeAuth::UserPass {
                user: user.to_owned(),
                pass: pass.to_owned(),
            },
        }
    }
}

fn hash(hex: &str) -> BlockHash {
    BlockHash::from_str(hex).unwrap()
}

#[tokio::test]
async fn client_parses_recorded_answers() {
    let server = ReplayServer::start("user", "pass").await;
    // Bare host:port, as ckpool configs write it.
    let endpoint = NodeEndpoint {
        url: server.addr.to_string(),
        auth: NodeAuth::UserPass {
            user: "user".into(),
            pass: "pass".into(),
        },
    };
    let client = RpcClient::new(endpoint, TIMEOUT).unwrap();

    let gbt: Value = client
        .call("getblocktemplate", json!([{"rules": ["segwit"]}]))
        .await
        .unwrap();
    assert_eq!(gbt["height"], 104);
    assert_eq!(gbt["coinbasevalue"], 5000010000u64);
    let count: u64 = client.call("getblockcount", Value::Null).await.unwrap();
    assert_eq!(count, 103);
    let best: String = client.call("getbestblockhash", json!([])).await.unwrap();
    assert_eq!(best, RECORDED_TIP);
    let at_102: String = client.call("getblockhash", json!([102])).await.unwrap();
    assert_eq!(at_102, RECORDED_BLOCK_102);

    let duplicate: Option<String> = client
        .call("submitblock", json!([BLOCK_DUPLICATE]))
        .await
        .unwrap();
    assert_eq!(duplicate.as_deref(), Some("duplicate"));
    let high_hash: Option<String> = client
        .call("submitblock", json!([BLOCK_HIGH_HASH]))
        .await
        .unwrap();
    assert_eq!(high_hash.as_deref(), Some("high-hash"));
    let undecodable = client
        .call::<Option<String>>("submitblock", json!([BLOCK_UNDECODABLE]))
        .await
        .unwrap_err();
    match undecodable {
        RpcError::Rpc { code, message, .. } => {
            assert_eq!(code, -22);
            assert_eq!(message, "Block decode failed");
        }
        other => panic!("expected rpc error -22, got {other:?}"),
    }

    // A result of the wrong type is a bad-json error, not a panic.
    let wrong_type = client.call::<u64>("getbestblockhash", json!([])).await;
    assert!(
        matches!(wrong_type, Err(RpcError::BadJson { .. })),
        "{wrong_type:?}"
    );
}

#[tokio::test]
async fn unknown_method_keeps_core_error_code() {
    let server = ReplayServer::start("user", "pass").await;
    let client = RpcClient::new(server.endpoint("user", "pass"), TIMEOUT).unwrap();
    let error = client
        .call::<Value>("no_such_method", json!([]))
        .await
        .unwrap_err();
    assert_eq!(error.rpc_code(), Some(-32601));
    assert!(error.to_string().contains("Method not found"), "{error}");
}

#[tokio::test]
async fn wrong_password_is_an_auth_error() {
    let server = ReplayServer::start("user", "pass").await;
    let client = RpcClient::new(server.endpoint("user", "wrong"), TIMEOUT).unwrap();
    let error = client
        .call::<Value>("getblockcount", json!([]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RpcError::Auth { status: 401, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn refused_connection_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let endpoint = NodeEndpoint {
        url: format!("http://{addr}"),
        auth: NodeAuth::UserPass {
            user: "u".into(),
            pass: "p".into(),
        },
    };
    let client = RpcClient::new(endpoint, TIMEOUT).unwrap();
    let error = client
        .call::<Value>("getblockcount", json!([]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RpcError::Transport {
                timed_out: false,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn cookie_is_reread_after_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cookie_path = dir.path().join(".cookie");
    std::fs::write(&cookie_path, "__cookie__:aaaa1111").unwrap();
    let server = ReplayServer::start("__cookie__", "aaaa1111").await;
    let client = RpcClient::new(
        NodeEndpoint {
            url: server.url(),
            auth: NodeAuth::Cookie(cookie_path.clone()),
        },
        TIMEOUT,
    )
    .unwrap();
    let count: u64 = client.call("getblockcount", json!([])).await.unwrap();
    assert_eq!(count, 103);

    // Core restarted: new cookie on disk, old one refused.
    std::fs::write(&cookie_path, "__cookie__:bbbb2222").unwrap();
    server.state.set_credentials("__cookie__", "bbbb2222");
    let count: u64 = client.call("getblockcount", json!([])).await.unwrap();
    assert_eq!(count, 103);

    std::fs::remove_file(&cookie_path).unwrap();
    server.state.set_credentials("__cookie__", "cccc3333");
    let error = client
        .call::<u64>("getblockcount", json!([]))
        .await
        .unwrap_err();
    assert!(matches!(error, RpcError::Cookie { .. }), "{error:?}");
}

#[test]
fn debug_output_redacts_password() {
    let endpoint = NodeEndpoint {
        url: "127.0.0.1:8332".into(),
        auth: NodeAuth::UserPass {
            user: "alice".into(),
            pass: "s3cret-pw".into(),
        },
    };
    let text = format!("{endpoint:?}");
    assert!(text.contains("alice"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    let client = RpcClient::new(endpoint, TIMEOUT).unwrap();
    assert!(!format!("{client:?}").contains("s3cret-pw"));
}

#[tokio::test]
async fn submit_block_answers_are_core_s_recorded_ones() {
    let server = ReplayServer::start("user", "pass").await;
    let nodes = NodeSet::new(
        vec![server.endpoint("user", "pass")],
        TIMEOUT,
        Network::Regtest,
    )
    .unwrap();

    let duplicate = nodes.submit_block_to_all(BLOCK_DUPLICATE).await;
    assert!(matches!(duplicate[0].answer, SubmitAnswer::Duplicate));
    assert!(!duplicate[0].answer.is_rejection(), "known, not refused");

    let rejected = nodes.submit_block_to_all(BLOCK_HIGH_HASH).await;
    assert!(
        matches!(&rejected[0].answer, SubmitAnswer::Rejected(r) if r == "high-hash"),
        "{rejected:?}"
    );
    assert!(rejected[0].answer.is_rejection());

    let undecodable = nodes.submit_block_to_all(BLOCK_UNDECODABLE).await;
    match &undecodable[0].answer {
        SubmitAnswer::Failed(error) => assert_eq!(error.rpc_code(), Some(-22)),
        other => panic!("expected -22, got {other:?}"),
    }
}

#[tokio::test]
async fn submit_block_goes_to_every_node_and_a_stopped_one_is_unreachable() {
    let first = ReplayServer::start("user", "pass").await;
    let mut second = ReplayServer::start("user", "pass").await;
    second.stop().await;
    let nodes = NodeSet::new(
        vec![
            first.endpoint("user", "pass"),
            second.endpoint("user", "pass"),
        ],
        TIMEOUT,
        Network::Regtest,
    )
    .unwrap();
    let answers = nodes.submit_block_to_all(BLOCK_DUPLICATE).await;
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].url, first.url());
    assert!(matches!(answers[0].answer, SubmitAnswer::Duplicate));
    // A node that cannot be reached said nothing about the block.
    assert!(
        matches!(
            answers[1].answer,
            SubmitAnswer::Unreachable(RpcError::Transport { .. })
        ),
        "{answers:?}"
    );
    assert!(!answers[1].answer.is_rejection());
    assert_eq!(first.state.call_count("submitblock"), 1);
}

#[derive(Default)]
struct RecordingObserver {
    calls: Mutex<Vec<(String, Duration, bool)>>,
}

impl RpcObserver for RecordingObserver {
    fn on_rpc_call(&self, _node_url: &str, method: &str, elapsed: Duration, ok: bool) {
        self.calls.lock().push((method.to_owned(), elapsed, ok));
    }
}

#[tokio::test]
async fn failover_prefers_recovered_primary_and_reports_all_down() {
    let mut primary = ReplayServer::start("user", "pass").await;
    let mut backup = ReplayServer::start("user", "pass").await;
    let observer = Arc::new(RecordingObserver::default());
    let nodes = NodeSet::new(
        vec![
            primary.endpoint("user", "pass"),
            backup.endpoint("user", "pass"),
        ],
        TIMEOUT,
        Network::Regtest,
    )
    .unwrap()
    .with_down_retry(Duration::ZERO)
    .with_observer(observer.clone());

    let (index, gbt) = nodes.get_block_template().await.unwrap();
    assert_eq!(index, 0);
    assert_eq!(gbt["height"], 104);
    assert_eq!(backup.state.call_count("getblocktemplate"), 0);

    primary.stop().await;
    let (index, _) = nodes.get_block_template().await.unwrap();
    assert_eq!(index, 1, "backup serves while the primary is down");
    let status = nodes.status();
    assert!(!status[0].up && status[1].up, "{status:?}");
    assert!(status[0].last_error.is_some());
    assert!(status[1].last_ok.is_some() && status[1].rpc_latency.is_some());

    primary.restart().await;
    let (index, _) = nodes.get_block_template().await.unwrap();
    assert_eq!(index, 0, "recovered primary is preferred again");
    assert!(nodes.status()[0].up);

    primary.stop().await;
    backup.stop().await;
    match nodes.get_block_template().await {
        Err(NodeError::AllFailed { method, errors }) => {
            assert_eq!(method, "getblocktemplate");
            assert_eq!(errors.len(), 2);
        }
        other => panic!("expected AllFailed, got {other:?}"),
    }
    assert!(nodes.status().iter().all(|s| !s.up));

    let calls = observer.calls.lock();
    assert!(calls
        .iter()
        .any(|(m, _, ok)| m == "getblocktemplate" && *ok));
    assert!(calls
        .iter()
        .any(|(m, _, ok)| m == "getblocktemplate" && !*ok));
}

#[tokio::test]
async fn down_node_is_skipped_until_retry_interval() {
    let mut primary = ReplayServer::start("user", "pass").await;
    let backup = ReplayServer::start("user", "pass").await;
    let nodes = NodeSet::new(
        vec![
            primary.endpoint("user", "pass"),
            backup.endpoint("user", "pass"),
        ],
        TIMEOUT,
        Network::Regtest,
    )
    .unwrap()
    .with_down_retry(Duration::from_secs(3600));
    primary.stop().await;
    assert_eq!(nodes.get_block_template().await.unwrap().0, 1);
    primary.restart().await;
    // Within the retry interval the down primary is not tried.
    assert_eq!(nodes.get_block_template().await.unwrap().0, 1);
    assert_eq!(primary.state.call_count("getblocktemplate"), 0);
}

#[tokio::test]
async fn signet_adds_signet_rule() {
    let server = ReplayServer::start("user", "pass").await;
    let nodes = NodeSet::new(
        vec![server.endpoint("user", "pass")],
        TIMEOUT,
        Network::Signet,
    )
    .unwrap();
    nodes.get_block_template().await.unwrap();
    let calls = server.state.calls.lock();
    assert_eq!(calls[0].1, json!([{"rules": ["segwit", "signet"]}]));
}

#[tokio::test]
async fn best_block_hash_and_block_hash_at() {
    let server = ReplayServer::start("user", "pass").await;
    let nodes = NodeSet::new(
        vec![server.endpoint("user", "pass")],
        TIMEOUT,
        Network::Regtest,
    )
    .unwrap();
    assert_eq!(nodes.best_block_hash().await.unwrap(), hash(RECORDED_TIP));
    assert_eq!(
        nodes.block_hash_at(102).await.unwrap(),
        hash(RECORDED_BLOCK_102)
    );
}

#[tokio::test]
async fn watcher_follows_new_blocks_and_survives_outage() {
    let mut server = ReplayServer::start("user", "pass").await;
    let nodes = Arc::new(
        NodeSet::new(
            vec![server.endpoint("user", "pass")],
            TIMEOUT,
            Network::Regtest,
        )
        .unwrap()
        .with_down_retry(Duration::ZERO),
    );
    let shutdown = CancellationToken::new();
    let (mut templates, mut health, task) = TemplateWatcher::spawn(
        nodes,
        WatcherConfig {
            block_poll: Duration::from_millis(20),
            update_interval: Duration::from_secs(3600),
            zmq_hashblock: None,
            tip_memory: tbg_node::DEFAULT_TIP_MEMORY,
        },
        shutdown.clone(),
    );

    let first = tokio::time::timeout(WAIT, templates.wait_for(Option::is_some))
        .await
        .expect("first template in time")
        .unwrap()
        .clone()
        .unwrap();
    assert!(first.new_block);
    assert_eq!(first.previous_block_hash(), Some(hash(RECORDED_TIP)));
    assert_eq!(*health.borrow(), NodeHealth::Up { node_index: 0 });

    // A new tip on the node: the watcher's poll fetches a new template.
    *server.state.best_hash.lock() = RECORDED_BLOCK_102.to_owned();
    let second = tokio::time::timeout(
        WAIT,
        templates.wait_for(|t| {
            t.as_ref().and_then(|t| t.previous_block_hash()) == Some(hash(RECORDED_BLOCK_102))
        }),
    )
    .await
    .expect("new template in time")
    .unwrap()
    .clone()
    .unwrap();
    assert!(second.new_block);

    // Node down: health goes AllDown, the last template stays published.
    server.stop().await;
    tokio::time::timeout(
        WAIT,
        health.wait_for(|h| matches!(h, NodeHealth::AllDown { .. })),
    )
    .await
    .expect("all-down in time")
    .unwrap();
    assert_eq!(
        templates
            .borrow()
            .as_ref()
            .and_then(|t| t.previous_block_hash()),
        Some(hash(RECORDED_BLOCK_102))
    );

    // Node back with another tip: the watcher resumes by itself.
    *server.state.best_hash.lock() = RECORDED_TIP.to_owned();
    server.restart().await;
    tokio::time::timeout(
        WAIT,
        health.wait_for(|h| *h == NodeHealth::Up { node_index: 0 }),
    )
    .await
    .expect("recovery in time")
    .unwrap();
    let third = tokio::time::timeout(
        WAIT,
        templates.wait_for(|t| {
            t.as_ref().and_then(|t| t.previous_block_hash()) == Some(hash(RECORDED_TIP))
        }),
    )
    .await
    .expect("template after recovery")
    .unwrap()
    .clone()
    .unwrap();
    assert!(third.new_block);

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn chain_info_reports_blocks_headers_and_peers_when_known() {
    let server = ReplayServer::start("user", "pass").await;
    let nodes = Arc::new(
        NodeSet::new(
            vec![server.endpoint("user", "pass")],
            TIMEOUT,
            Network::Regtest,
        )
        .unwrap(),
    );

    // The recorded node has no getnetworkinfo: the peer count is absent and
    // the node stays up.
    let info = nodes.chain_info().await.expect("chain info");
    assert_eq!((info.node_index, info.blocks, info.headers), (0, 103, 103));
    assert!(!info.initial_block_download);
    assert_eq!(info.verification_progress, 1.0);
    assert_eq!(info.connections, None);
    assert!(nodes.status()[0].up, "-32601 must not mark the node down");

    // Core's getnetworkinfo shape (only the fields the pool reads matter).
    *server.state.network_info.lock() = Some(json!({
        "version": 280000,
        "subversion": "/Satoshi:28.0.0/",
        "protocolversion": 70016,
        "networkactive": true,
        "connections": 9,
        "connections_in": 1,
        "connections_out": 8,
    }));
    let info = nodes.chain_info().await.expect("chain info");
    assert_eq!(info.connections, Some(9));
}

/// A watcher on `server` that polls and refreshes only once an hour.
fn hourly_watcher(server: &ReplayServer) -> (tbg_node::RunningWatcher, CancellationToken) {
    let nodes = Arc::new(
        NodeSet::new(
            vec![server.endpoint("user", "pass")],
            TIMEOUT,
            Network::Regtest,
        )
        .unwrap(),
    );
    let shutdown = CancellationToken::new();
    let running = TemplateWatcher::spawn_with_trigger(
        nodes,
        WatcherConfig {
            block_poll: Duration::from_secs(3600),
            update_interval: Duration::from_secs(3600),
            zmq_hashblock: None,
            tip_memory: tbg_node::DEFAULT_TIP_MEMORY,
        },
        shutdown.clone(),
    );
    (running, shutdown)
}

#[tokio::test]
async fn watcher_publishes_chain_info_without_getnetworkinfo() {
    let server = ReplayServer::start("user", "pass").await;
    let (mut running, shutdown) = hourly_watcher(&server);
    let info = tokio::time::timeout(WAIT, running.chain_info.wait_for(Option::is_some))
        .await
        .expect("chain info in time")
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(
        (info.blocks, info.headers, info.connections),
        (103, 103, None)
    );
    // The template path is unaffected by the missing method.
    tokio::time::timeout(WAIT, running.templates.wait_for(Option::is_some))
        .await
        .expect("template in time")
        .unwrap();
    assert_eq!(*running.health.borrow(), NodeHealth::Up { node_index: 0 });
    shutdown.cancel();
    tokio::time::timeout(WAIT, running.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn watcher_refreshes_on_update_interval_without_new_block() {
    let server = ReplayServer::start("user", "pass").await;
    let nodes = Arc::new(
        NodeSet::new(
            vec![server.endpoint("user", "pass")],
            TIMEOUT,
            Network::Regtest,
        )
        .unwrap(),
    );
    let shutdown = CancellationToken::new();
    let (mut templates, _health, task) = TemplateWatcher::spawn(
        nodes,
        WatcherConfig {
            block_poll: Duration::from_secs(3600),
            update_interval: Duration::from_millis(50),
            zmq_hashblock: None,
            tip_memory: tbg_node::DEFAULT_TIP_MEMORY,
        },
        shutdown.clone(),
    );
    let first = tokio::time::timeout(WAIT, templates.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
    let refreshed = tokio::time::timeout(
        WAIT,
        templates.wait_for(|t| t.as_ref().is_some_and(|t| t.fetched_at > first.fetched_at)),
    )
    .await
    .expect("refresh in time")
    .unwrap()
    .clone()
    .unwrap();
    assert!(!refreshed.new_block, "same tip: not a new block");
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

/// A reload shortens `update_interval` of a running watcher: the refresh
/// then comes at the new period, without a restart.
#[tokio::test]
async fn watcher_takes_new_intervals_while_running() {
    let server = ReplayServer::start("user", "pass").await;
    let (mut running, shutdown) = hourly_watcher(&server);
    let first = tokio::time::timeout(WAIT, running.templates.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
    let polls_before = server.state.call_count("getbestblockhash");
    assert!(running
        .intervals
        .set(Duration::from_millis(20), Duration::from_millis(50)));
    assert!(
        !running
            .intervals
            .set(Duration::from_millis(20), Duration::from_millis(50)),
        "same values: no change"
    );
    let refreshed = tokio::time::timeout(
        WAIT,
        running
            .templates
            .wait_for(|t| t.as_ref().is_some_and(|t| t.fetched_at > first.fetched_at)),
    )
    .await
    .expect("refresh at the new update_interval, not after an hour")
    .unwrap()
    .clone()
    .unwrap();
    assert!(!refreshed.new_block);
    // The new block_poll too: getbestblockhash is polled again.
    let deadline = std::time::Instant::now() + WAIT;
    while server.state.call_count("getbestblockhash") <= polls_before {
        assert!(
            std::time::Instant::now() < deadline,
            "no poll at the new block_poll"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(WAIT, running.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn watcher_fetches_at_once_on_zmq_hashblock() {
    use zeromq::{Socket, SocketSend};
    let server = ReplayServer::start("user", "pass").await;
    let mut publisher = zeromq::PubSocket::new();
    let zmq_endpoint = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    let nodes = Arc::new(
        NodeSet::new(
            vec![server.endpoint("user", "pass")],
            TIMEOUT,
            Network::Regtest,
        )
        .unwrap(),
    );
    let shutdown = CancellationToken::new();
    // Polling and refresh far away: only ZMQ can trigger the second fetch.
    let (mut templates, _health, task) = TemplateWatcher::spawn(
        nodes,
        WatcherConfig {
            block_poll: Duration::from_secs(3600),
            update_interval: Duration::from_secs(3600),
            zmq_hashblock: Some(zmq_endpoint),
            tip_memory: tbg_node::DEFAULT_TIP_MEMORY,
        },
        shutdown.clone(),
    );
    tokio::time::timeout(WAIT, templates.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();

    *server.state.best_hash.lock() = RECORDED_BLOCK_102.to_owned();
    let new_tip = hash(RECORDED_BLOCK_102);
    let arrived = |t: &Option<Arc<tbg_node::FetchedTemplate>>| {
        t.as_ref().and_then(|t| t.previous_block_hash()) == Some(new_tip)
    };
    // The subscription reaches the publisher asynchronously, so publish
    // Core's 3-frame hashblock message until the watcher reacts (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !arrived(&templates.borrow()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fetch after zmq hashblock"
        );
        let mut message = zeromq::ZmqMessage::from("hashblock");
        message.push_back(bytes::Bytes::from(vec![0u8; 32]));
        message.push_back(bytes::Bytes::from(vec![0u8; 4]));
        publisher.send(message).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(50), templates.changed()).await;
    }
    assert!(templates.borrow().as_ref().unwrap().new_block);
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
