//! JSON-RPC over HTTP in Bitcoin Core's shape: HTTP Basic auth (user/password
//! or cookie), JSON-RPC 1.0 replies `{"result","error","id"}` (2.0 requests get
//! 2.0 replies), Core's error codes and HTTP statuses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use bitcoin::pow::Target;
use bitcoin::{Address, Amount, Block, BlockHash, Network};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::node::{NodeCore, StoredBlock, SubmitOutcome, REGTEST_BITS};
use crate::DevNodeError;

mod decode;
use decode::decode_transaction;

// Bitcoin Core's RPC error codes (src/rpc/protocol.h).
const RPC_MISC_ERROR: i64 = -1;
const RPC_TYPE_ERROR: i64 = -3;
const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;
const RPC_INVALID_PARAMETER: i64 = -8;
const RPC_DESERIALIZATION_ERROR: i64 = -22;
const RPC_INVALID_REQUEST: i64 = -32600;
const RPC_METHOD_NOT_FOUND: i64 = -32601;
const RPC_PARSE_ERROR: i64 = -32700;

/// Largest accepted HTTP request body.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Upper bound for generatetoaddress so one call cannot stall the node.
const MAX_GENERATE_BLOCKS: u64 = 10_000;

/// A JSON-RPC error object.
#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn internal(error: DevNodeError) -> Self {
        Self::new(RPC_MISC_ERROR, error.to_string())
    }
}

/// Accepted `Authorization: Basic` credentials.
pub(crate) struct RpcAuth {
    user_password: String,
    cookie: String,
}

impl RpcAuth {
    pub(crate) fn new(user: &str, password: &str, cookie_secret: &str) -> Self {
        Self {
            user_password: format!("{user}:{password}"),
            cookie: format!("__cookie__:{cookie_secret}"),
        }
    }

    fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        constant_time_eq(&decoded, self.user_password.as_bytes())
            | constant_time_eq(&decoded, self.cookie.as_bytes())
    }
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

struct ServerState {
    node: Arc<NodeCore>,
    auth: Arc<RpcAuth>,
}

/// A running HTTP server; stop it with [`RpcServer::stop`].
pub(crate) struct RpcServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RpcServer {
    pub(crate) async fn start(
        bind: SocketAddr,
        node: Arc<NodeCore>,
        auth: Arc<RpcAuth>,
    ) -> Result<Self, DevNodeError> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| DevNodeError::Io {
                context: format!("binding rpc server to {bind}"),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| DevNodeError::Io {
            context: "reading rpc server address".to_string(),
            source,
        })?;
        let app = Router::new()
            .fallback(handle_http)
            // submitblock carries hex of up to 4 MB blocks (8 MB of text).
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(Arc::new(ServerState { node, auth }));
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(%error, "devnode rpc server stopped with an error");
            }
        });
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight requests finish, closes idle
    /// keep-alive connections and waits until the listener is gone.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Signals the server to stop without waiting.
    pub(crate) fn cancel(&self) {
        self.shutdown.cancel();
    }
}

async fn handle_http(
    State(state): State<Arc<ServerState>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.auth.accepts(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")],
        )
            .into_response();
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "JSONRPC server handles only POST requests",
        )
            .into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => {
            let reply = legacy_reply(
                Value::Null,
                Err(RpcError::new(RPC_PARSE_ERROR, "Parse error")),
            );
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, &reply);
        }
    };
    match request {
        Value::Array(batch) => {
            let mut replies = Vec::with_capacity(batch.len());
            for request in batch {
                if let Some((_, reply)) = handle_request(&state.node, request).await {
                    replies.push(reply);
                }
            }
            json_response(StatusCode::OK, &Value::Array(replies))
        }
        request => match handle_request(&state.node, request).await {
            Some((status, reply)) => json_response(status, &reply),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Handles one request object; `None` for a JSON-RPC 2.0 notification.
async fn handle_request(node: &Arc<NodeCore>, request: Value) -> Option<(StatusCode, Value)> {
    let Value::Object(request) = request else {
        let reply = legacy_reply(
            Value::Null,
            Err(RpcError::new(RPC_INVALID_REQUEST, "Invalid Request object")),
        );
        return Some((StatusCode::BAD_REQUEST, reply));
    };
    let is_v2 = request.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let id = request.get("id").cloned();
    let outcome = match request.get("method").and_then(Value::as_str) {
        None => Err(RpcError::new(
            RPC_INVALID_REQUEST,
            "Method must be a string",
        )),
        Some(method) => {
            let params = match request.get("params") {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(params)) => Ok(params.clone()),
                Some(_) => Err(RpcError::new(
                    RPC_INVALID_REQUEST,
                    "Params must be an array",
                )),
            };
            match params {
                Ok(params) => {
                    let node = Arc::clone(node);
                    let method = method.to_string();
                    tokio::task::spawn_blocking(move || dispatch(&node, &method, &params))
                        .await
                        .unwrap_or_else(|error| {
                            Err(RpcError::new(RPC_MISC_ERROR, error.to_string()))
                        })
                }
                Err(error) => Err(error),
            }
        }
    };
    if is_v2 {
        let id = id?;
        let reply = match outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": id}),
            Err(error) => json!({
                "jsonrpc": "2.0",
                "error": {"code": error.code, "message": error.message},
                "id": id,
            }),
        };
        return Some((StatusCode::OK, reply));
    }
    // Bitcoin Core's legacy (1.0) mode maps errors onto HTTP statuses.
    let status = match &outcome {
        Ok(_) => StatusCode::OK,
        Err(error) if error.code == RPC_METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        Err(error) if error.code == RPC_INVALID_REQUEST => StatusCode::BAD_REQUEST,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Some((status, legacy_reply(id.unwrap_or(Value::Null), outcome)))
}

fn legacy_reply(id: Value, outcome: Result<Value, RpcError>) -> Value {
    match outcome {
        Ok(result) => json!({"result": result, "error": null, "id": id}),
        Err(error) => json!({
            "result": null,
            "error": {"code": error.code, "message": error.message},
            "id": id,
        }),
    }
}

/// Runs one RPC method (blocking: called from `spawn_blocking`).
fn dispatch(node: &NodeCore, method: &str, params: &[Value]) -> Result<Value, RpcError> {
    match method {
        "getblocktemplate" => get_block_template(node, params),
        "submitblock" => submit_block(node, params),
        "getbestblockhash" => {
            let tip = node.tip().map_err(RpcError::internal)?;
            Ok(json!(tip.hash.to_string()))
        }
        "getblockcount" => {
            let tip = node.tip().map_err(RpcError::internal)?;
            Ok(json!(tip.height))
        }
        "getblockhash" => {
            let height = integer_param(params, 0, "height")?;
            u32::try_from(height)
                .ok()
                .and_then(|height| node.block_hash_at(height))
                .map(|hash| json!(hash.to_string()))
                .ok_or_else(|| RpcError::new(RPC_INVALID_PARAMETER, "Block height out of range"))
        }
        "getblock" => get_block(node, params),
        "getblockheader" => get_block_header(node, params),
        "getblockchaininfo" => get_blockchain_info(node),
        "getmininginfo" => get_mining_info(node),
        "getnetworkinfo" => Ok(get_network_info()),
        "validateaddress" => decode::validate_address(params),
        "decoderawtransaction" => decode::decode_raw_transaction(params),
        // A hint to prefer a block among equal-work tips; the devnode has
        // one chain and no peers, so there is nothing to prefer.
        "preciousblock" => hash_param(params, 0, "blockhash").map(|_| Value::Null),
        "generatetoaddress" => generate_to_address(node, params),
        _ => Err(RpcError::new(RPC_METHOD_NOT_FOUND, "Method not found")),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn required<'a>(params: &'a [Value], index: usize, name: &str) -> Result<&'a Value, RpcError> {
    match params.get(index) {
        None | Some(Value::Null) => Err(RpcError::new(
            RPC_MISC_ERROR,
            format!("missing required parameter '{name}'"),
        )),
        Some(value) => Ok(value),
    }
}

fn integer_param(params: &[Value], index: usize, name: &str) -> Result<i64, RpcError> {
    let value = required(params, index, name)?;
    value.as_i64().ok_or_else(|| {
        RpcError::new(
            RPC_TYPE_ERROR,
            format!(
                "JSON value of type {} is not of expected type number",
                type_name(value)
            ),
        )
    })
}

fn string_param<'a>(params: &'a [Value], index: usize, name: &str) -> Result<&'a str, RpcError> {
    let value = required(params, index, name)?;
    value.as_str().ok_or_else(|| {
        RpcError::new(
            RPC_TYPE_ERROR,
            format!(
                "JSON value of type {} is not of expected type string",
                type_name(value)
            ),
        )
    })
}

fn hash_param(params: &[Value], index: usize, name: &str) -> Result<BlockHash, RpcError> {
    let text = string_param(params, index, name)?;
    if text.len() != 64 {
        return Err(RpcError::new(
            RPC_INVALID_PARAMETER,
            format!(
                "{name} must be of length 64 (not {}, for '{text}')",
                text.len()
            ),
        ));
    }
    text.parse().map_err(|_| {
        RpcError::new(
            RPC_INVALID_PARAMETER,
            format!("{name} must be hexadecimal string (not '{text}')"),
        )
    })
}

fn target_hex(bits: bitcoin::CompactTarget) -> String {
    hex::encode(Target::from_compact(bits).to_be_bytes())
}

fn difficulty(bits: bitcoin::CompactTarget) -> f64 {
    Target::from_compact(bits).difficulty_float()
}

fn regtest_bits() -> bitcoin::CompactTarget {
    bitcoin::CompactTarget::from_consensus(REGTEST_BITS)
}

fn bits_hex(bits: bitcoin::CompactTarget) -> String {
    format!("{:08x}", bits.to_consensus())
}

fn btc(amount: Amount) -> Value {
    json!(amount.to_btc())
}

fn get_block_template(node: &NodeCore, params: &[Value]) -> Result<Value, RpcError> {
    let request = params.first().and_then(Value::as_object);
    let mode = request
        .and_then(|request| request.get("mode"))
        .and_then(Value::as_str)
        .unwrap_or("template");
    if mode != "template" {
        return Err(RpcError::new(RPC_INVALID_PARAMETER, "Invalid mode"));
    }
    let has_segwit = request
        .and_then(|request| request.get("rules"))
        .and_then(Value::as_array)
        .is_some_and(|rules| rules.iter().any(|rule| rule.as_str() == Some("segwit")));
    if !has_segwit {
        return Err(RpcError::new(
            RPC_INVALID_PARAMETER,
            "getblocktemplate must be called with the segwit rule set (call with {\"rules\": [\"segwit\"]})",
        ));
    }
    let template = node.template().map_err(RpcError::internal)?;
    let txids: Vec<_> = template
        .entries
        .iter()
        .map(|entry| entry.tx.compute_txid())
        .collect();
    let transactions: Vec<Value> = template
        .entries
        .iter()
        .map(|entry| {
            // depends: 1-based positions of in-template parents.
            let depends: Vec<usize> = entry
                .tx
                .input
                .iter()
                .filter_map(|input| {
                    txids
                        .iter()
                        .position(|txid| *txid == input.previous_output.txid)
                        .map(|position| position + 1)
                })
                .collect();
            json!({
                "data": bitcoin::consensus::encode::serialize_hex(&entry.tx),
                "txid": entry.tx.compute_txid().to_string(),
                "hash": entry.tx.compute_wtxid().to_string(),
                "depends": depends,
                "fee": entry.fee.to_sat(),
                "sigops": entry.sigop_cost(),
                "weight": entry.tx.weight().to_wu(),
            })
        })
        .collect();
    let previous = template.previous_block_hash.to_string();
    Ok(json!({
        "capabilities": ["proposal"],
        "version": 0x2000_0000,
        "rules": ["csv", "!segwit", "taproot"],
        "vbavailable": {},
        "vbrequired": 0,
        "previousblockhash": previous,
        "transactions": transactions,
        "coinbaseaux": {},
        "coinbasevalue": template.coinbase_value.to_sat(),
        "longpollid": format!("{previous}{}", template.mempool_sequence),
        "target": target_hex(template.bits),
        "mintime": template.min_time,
        "mutable": ["time", "transactions", "prevblock"],
        "noncerange": "00000000ffffffff",
        "sigoplimit": 80_000,
        "sizelimit": 4_000_000,
        "weightlimit": 4_000_000,
        "curtime": template.cur_time,
        "bits": bits_hex(template.bits),
        "height": template.height,
        "default_witness_commitment": hex::encode(template.witness_commitment_script().as_bytes()),
    }))
}

fn submit_block(node: &NodeCore, params: &[Value]) -> Result<Value, RpcError> {
    let text = string_param(params, 0, "hexdata")?;
    let decode_failed = || RpcError::new(RPC_DESERIALIZATION_ERROR, "Block decode failed");
    let bytes = hex::decode(text).map_err(|_| decode_failed())?;
    let block: Block = bitcoin::consensus::deserialize(&bytes).map_err(|_| decode_failed())?;
    if !matches!(block.txdata.first(), Some(tx) if tx.is_coinbase()) {
        return Err(RpcError::new(
            RPC_DESERIALIZATION_ERROR,
            "Block does not start with a coinbase",
        ));
    }
    let outcome = node.submit_block(&block).map_err(RpcError::internal)?;
    Ok(match outcome {
        SubmitOutcome::Accepted => Value::Null,
        SubmitOutcome::Duplicate => json!("duplicate"),
        SubmitOutcome::Inconclusive => json!("inconclusive"),
        SubmitOutcome::Rejected(reason) => json!(reason),
    })
}

fn generate_to_address(node: &NodeCore, params: &[Value]) -> Result<Value, RpcError> {
    let count = integer_param(params, 0, "nblocks")?;
    let address_text = string_param(params, 1, "address")?;
    let address = address_text
        .parse::<Address<_>>()
        .ok()
        .and_then(|address| address.require_network(Network::Regtest).ok())
        .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?;
    let count = u64::try_from(count)
        .ok()
        .filter(|count| *count <= MAX_GENERATE_BLOCKS)
        .and_then(|count| u32::try_from(count).ok())
        .ok_or_else(|| {
            RpcError::new(
                RPC_INVALID_PARAMETER,
                format!("nblocks must be between 0 and {MAX_GENERATE_BLOCKS}"),
            )
        })?;
    let hashes = node
        .mine_blocks(count, &address.script_pubkey())
        .map_err(RpcError::internal)?;
    Ok(json!(hashes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()))
}

fn verbosity_param(params: &[Value]) -> Result<u8, RpcError> {
    match params.get(1) {
        None | Some(Value::Null) => Ok(1),
        Some(Value::Bool(verbose)) => Ok(u8::from(*verbose)),
        Some(value) => match value.as_u64() {
            Some(level) => Ok(u8::try_from(level.min(3)).unwrap_or(3)),
            None => Err(RpcError::new(
                RPC_TYPE_ERROR,
                format!(
                    "JSON value of type {} is not of expected type number",
                    type_name(value)
                ),
            )),
        },
    }
}

fn load_block(node: &NodeCore, hash: &BlockHash) -> Result<StoredBlock, RpcError> {
    node.stored_block(hash)
        .map_err(RpcError::internal)?
        .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block not found"))
}

fn header_fields(stored: &StoredBlock) -> Map<String, Value> {
    let header = &stored.block.header;
    let confirmations = stored
        .active_tip_height
        .map_or(-1, |tip| i64::from(tip) - i64::from(stored.height) + 1);
    let mut fields = Map::new();
    fields.insert("hash".into(), json!(header.block_hash().to_string()));
    fields.insert("confirmations".into(), json!(confirmations));
    fields.insert("height".into(), json!(stored.height));
    fields.insert("version".into(), json!(header.version.to_consensus()));
    fields.insert(
        "versionHex".into(),
        json!(format!("{:08x}", header.version.to_consensus())),
    );
    fields.insert("merkleroot".into(), json!(header.merkle_root.to_string()));
    fields.insert("time".into(), json!(header.time));
    fields.insert("mediantime".into(), json!(stored.median_time_past));
    fields.insert("nonce".into(), json!(header.nonce));
    fields.insert("bits".into(), json!(bits_hex(header.bits)));
    fields.insert("target".into(), json!(target_hex(header.bits)));
    fields.insert("difficulty".into(), json!(difficulty(header.bits)));
    fields.insert(
        "chainwork".into(),
        json!(hex::encode(stored.chain_work.to_be_bytes())),
    );
    fields.insert("nTx".into(), json!(stored.block.txdata.len()));
    if stored.height > 0 {
        fields.insert(
            "previousblockhash".into(),
            json!(header.prev_blockhash.to_string()),
        );
    }
    if let Some(next) = stored.next_block_hash {
        fields.insert("nextblockhash".into(), json!(next.to_string()));
    }
    fields
}

fn get_block_header(node: &NodeCore, params: &[Value]) -> Result<Value, RpcError> {
    let hash = hash_param(params, 0, "blockhash")?;
    let stored = load_block(node, &hash)?;
    let verbose = !matches!(params.get(1), Some(Value::Bool(false)));
    if !verbose {
        return Ok(json!(bitcoin::consensus::encode::serialize_hex(
            &stored.block.header
        )));
    }
    Ok(Value::Object(header_fields(&stored)))
}

fn get_block(node: &NodeCore, params: &[Value]) -> Result<Value, RpcError> {
    let hash = hash_param(params, 0, "blockhash")?;
    let verbosity = verbosity_param(params)?;
    let stored = load_block(node, &hash)?;
    if verbosity == 0 {
        return Ok(json!(bitcoin::consensus::encode::serialize_hex(
            &stored.block
        )));
    }
    let block = &stored.block;
    let mut fields = header_fields(&stored);
    let stripped_size = block.txdata.iter().map(|tx| tx.base_size()).sum::<usize>()
        + 80
        + bitcoin::VarInt(block.txdata.len() as u64).size();
    fields.insert("strippedsize".into(), json!(stripped_size));
    fields.insert("size".into(), json!(block.total_size()));
    fields.insert("weight".into(), json!(block.weight().to_wu()));
    let transactions: Vec<Value> = if verbosity == 1 {
        block
            .txdata
            .iter()
            .map(|tx| json!(tx.compute_txid().to_string()))
            .collect()
    } else {
        block.txdata.iter().map(decode_transaction).collect()
    };
    fields.insert("tx".into(), Value::Array(transactions));
    Ok(Value::Object(fields))
}

fn get_blockchain_info(node: &NodeCore) -> Result<Value, RpcError> {
    let tip = node.tip().map_err(RpcError::internal)?;
    let bits = tip.header.bits;
    Ok(json!({
        "chain": "regtest",
        "blocks": tip.height,
        "headers": tip.height,
        "bestblockhash": tip.hash.to_string(),
        "bits": bits_hex(bits),
        "target": target_hex(bits),
        "difficulty": difficulty(bits),
        "time": tip.header.time,
        "mediantime": tip.median_time_past,
        "verificationprogress": 1,
        "initialblockdownload": false,
        "chainwork": hex::encode(tip.chain_work.to_be_bytes()),
        "size_on_disk": node.size_on_disk(),
        "pruned": false,
        "warnings": [],
    }))
}

/// Core's getnetworkinfo shape. The devnode has no P2P side, so it has no
/// peers and no local addresses.
fn get_network_info() -> Value {
    json!({
        "version": 280000,
        "subversion": "/Satoshi:28.0.0/",
        "protocolversion": 70016,
        "localservices": "0000000000000c09",
        "localservicesnames": ["NETWORK_LIMITED", "WITNESS", "P2P_V2"],
        "localrelay": true,
        "timeoffset": 0,
        "networkactive": true,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        "networks": [],
        "relayfee": 1e-05,
        "incrementalfee": 1e-05,
        "localaddresses": [],
        "warnings": [],
    })
}

fn get_mining_info(node: &NodeCore) -> Result<Value, RpcError> {
    let tip = node.tip().map_err(RpcError::internal)?;
    let (pooled, weight) = node.mempool_summary();
    let bits = regtest_bits();
    // Core reserves 8000 weight units for the coinbase in its templates.
    let template_weight = weight + 8_000;
    Ok(json!({
        "blocks": tip.height,
        "currentblockweight": template_weight,
        "currentblocktx": pooled,
        "bits": bits_hex(tip.header.bits),
        "difficulty": difficulty(tip.header.bits),
        "target": target_hex(tip.header.bits),
        "networkhashps": node.work_rate(120),
        "pooledtx": pooled,
        "blockmintxfee": 1e-08,
        "chain": "regtest",
        "next": {
            "height": tip.height.saturating_add(1),
            "bits": bits_hex(bits),
            "difficulty": difficulty(bits),
            "target": target_hex(bits),
        },
        "warnings": [],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_accepts_password_and_cookie_only() {
        let auth = RpcAuth::new("alice", "secret", "c00k1e");
        let header_for = |credentials: &str| {
            let mut headers = HeaderMap::new();
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            headers.insert(
                header::AUTHORIZATION,
                format!("Basic {encoded}").parse().expect("valid header"),
            );
            headers
        };
        assert!(auth.accepts(&header_for("alice:secret")));
        assert!(auth.accepts(&header_for("__cookie__:c00k1e")));
        assert!(!auth.accepts(&header_for("alice:wrong")));
        assert!(!auth.accepts(&HeaderMap::new()));
    }

    #[test]
    fn regtest_target_matches_bitcoin_core() {
        assert_eq!(
            target_hex(regtest_bits()),
            "7fffff0000000000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(bits_hex(regtest_bits()), "207fffff");
        assert!((difficulty(regtest_bits()) - 4.656542373906925e-10).abs() < 1e-20);
    }
}
