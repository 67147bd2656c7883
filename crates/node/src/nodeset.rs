//! Several nodes in priority order: failover for reads, fan-out for blocks.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::{BlockHash, Network};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::endpoint::NodeEndpoint;
use crate::rpc::{RpcClient, RpcError, RpcObserver};

/// How long a node that failed is skipped before it is tried again (unless
/// every node is down, when all are tried at once).
pub const DEFAULT_DOWN_RETRY: Duration = Duration::from_secs(2);

/// Why a [`NodeSet`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no node is configured")]
    NoNodes,
    #[error("every node failed {method}: {}", join_errors(errors))]
    AllFailed {
        method: String,
        /// One error per node tried, in priority order.
        errors: Vec<RpcError>,
    },
    #[error("node {url} answered {method} with an invalid block hash {value:?}")]
    BadHash {
        url: String,
        method: String,
        value: String,
    },
    #[error(transparent)]
    Client(RpcError),
}

fn join_errors(errors: &[RpcError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Health of one node, for logs, metrics and an admin page.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub url: String,
    /// False after the last call to it failed.
    pub up: bool,
    pub last_error: Option<String>,
    pub last_ok: Option<Instant>,
    /// Latency of the last successful call.
    pub rpc_latency: Option<Duration>,
}

/// A node's view of the chain and of its peers (getblockchaininfo and
/// getnetworkinfo), for the "node is behind" and "few peers" alerts.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainInfo {
    /// Priority index of the node that answered.
    pub node_index: usize,
    /// Height of the node's validated tip.
    pub blocks: u64,
    /// Height of the best header the node knows.
    pub headers: u64,
    pub initial_block_download: bool,
    /// Core's estimate in `0..=1` of how much of the chain is verified.
    pub verification_progress: f64,
    /// Peer count (getnetworkinfo `connections`); `None` when the node
    /// does not answer getnetworkinfo.
    pub connections: Option<u64>,
    pub fetched_at: Instant,
}

/// The getblockchaininfo fields [`ChainInfo`] keeps.
#[derive(serde::Deserialize)]
struct BlockchainInfoAnswer {
    blocks: u64,
    headers: u64,
    #[serde(default)]
    initialblockdownload: bool,
    #[serde(default)]
    verificationprogress: f64,
}

#[derive(serde::Deserialize)]
struct NetworkInfoAnswer {
    connections: u64,
}

struct NodeState {
    up: bool,
    last_error: Option<String>,
    last_failure: Option<Instant>,
    last_ok: Option<Instant>,
    rpc_latency: Option<Duration>,
}

pub(crate) struct Node {
    pub(crate) client: RpcClient,
    state: Mutex<NodeState>,
}

/// Nodes in priority order.
pub struct NodeSet {
    nodes: Vec<Node>,
    network: Network,
    down_retry: Duration,
}

impl std::fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSet")
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.client).collect::<Vec<_>>(),
            )
            .field("network", &self.network)
            .finish()
    }
}

impl NodeSet {
    /// `endpoints` in priority order; `timeout` bounds each RPC call;
    /// `network` adds the `signet` rule to getblocktemplate on signet.
    pub fn new(
        endpoints: Vec<NodeEndpoint>,
        timeout: Duration,
        network: Network,
    ) -> Result<NodeSet, NodeError> {
        let nodes = endpoints
            .into_iter()
            .map(|endpoint| {
                Ok(Node {
                    client: RpcClient::new(endpoint, timeout).map_err(NodeError::Client)?,
                    state: Mutex::new(NodeState {
                        up: true,
                        last_error: None,
                        last_failure: None,
                        last_ok: None,
                        rpc_latency: None,
                    }),
                })
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        Ok(NodeSet {
            nodes,
            network,
            down_retry: DEFAULT_DOWN_RETRY,
        })
    }

    /// Report every RPC call's latency to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn RpcObserver>) -> NodeSet {
        self.nodes = self
            .nodes
            .into_iter()
            .map(|node| Node {
                client: node.client.with_observer(observer.clone()),
                state: node.state,
            })
            .collect();
        self
    }

    /// How long a failed node is skipped before it is tried again
    /// (default [`DEFAULT_DOWN_RETRY`]; zero = always try in order).
    pub fn with_down_retry(mut self, down_retry: Duration) -> NodeSet {
        self.down_retry = down_retry;
        self
    }

    pub(crate) fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn network(&self) -> Network {
        self.network
    }

    /// The rules sent with getblocktemplate on this network.
    pub fn template_rules(&self) -> Vec<&'static str> {
        if self.network == Network::Signet {
            vec!["segwit", "signet"]
        } else {
            vec!["segwit"]
        }
    }

    /// getblocktemplate on the first node that answers, in priority order.
    /// Returns the node's index and Core's JSON answer.
    pub async fn get_block_template(&self) -> Result<(usize, Value), NodeError> {
        let params = json!([{ "rules": self.template_rules() }]);
        self.first_ok("getblocktemplate", params).await
    }

    /// getbestblockhash on the first node that answers.
    pub async fn best_block_hash(&self) -> Result<BlockHash, NodeError> {
        let (index, hex) = self
            .first_ok::<String>("getbestblockhash", json!([]))
            .await?;
        self.parse_hash(index, "getbestblockhash", &hex)
    }

    /// getblockhash(height) on the first node that answers.
    pub async fn block_hash_at(&self, height: u32) -> Result<BlockHash, NodeError> {
        let (index, hex) = self
            .first_ok::<String>("getblockhash", json!([height]))
            .await?;
        self.parse_hash(index, "getblockhash", &hex)
    }

    /// getblockchaininfo on the first node that answers, then getnetworkinfo
    /// on that same node. A failed getnetworkinfo (such as `-32601` from a
    /// node that lacks it) only leaves `connections` empty and does not mark
    /// the node down.
    pub async fn chain_info(&self) -> Result<ChainInfo, NodeError> {
        let (node_index, chain) = self
            .first_ok::<BlockchainInfoAnswer>("getblockchaininfo", json!([]))
            .await?;
        let connections = match self.nodes.get(node_index) {
            Some(node) => match node
                .client
                .call::<NetworkInfoAnswer>("getnetworkinfo", json!([]))
                .await
            {
                Ok(answer) => Some(answer.connections),
                Err(error) => {
                    tracing::debug!(%error, "no peer count from getnetworkinfo");
                    None
                }
            },
            None => None,
        };
        Ok(ChainInfo {
            node_index,
            blocks: chain.blocks,
            headers: chain.headers,
            initial_block_download: chain.initialblockdownload,
            verification_progress: chain.verificationprogress,
            connections,
            fetched_at: Instant::now(),
        })
    }

    /// Health of every node, in priority order.
    pub fn status(&self) -> Vec<NodeStatus> {
        self.nodes
            .iter()
            .map(|node| {
                let state = node.state.lock();
                NodeStatus {
                    url: node.client.endpoint().url.clone(),
                    up: state.up,
                    last_error: state.last_error.clone(),
                    last_ok: state.last_ok,
                    rpc_latency: state.rpc_latency,
                }
            })
            .collect()
    }

    fn parse_hash(&self, index: usize, method: &str, hex: &str) -> Result<BlockHash, NodeError> {
        BlockHash::from_str(hex).map_err(|_| NodeError::BadHash {
            url: self
                .nodes
                .get(index)
                .map(|n| n.client.endpoint().url.clone())
                .unwrap_or_default(),
            method: method.to_owned(),
            value: hex.to_owned(),
        })
    }

    /// Whether `node` should be tried now: up, or down for long enough.
    fn worth_trying(&self, node: &Node, now: Instant) -> bool {
        let state = node.state.lock();
        state.up
            || match state.last_failure {
                None => true,
                Some(failed) => now.saturating_duration_since(failed) >= self.down_retry,
            }
    }

    /// Indexes of the nodes worth trying now, in priority order: nodes down
    /// for less than `down_retry` are left out, unless every node is: then
    /// all are tried, so a recovered node is found at once.
    pub(crate) fn try_order(&self) -> Vec<usize> {
        let now = Instant::now();
        let order: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes.get(i).is_some_and(|n| self.worth_trying(n, now)))
            .collect();
        if order.is_empty() {
            (0..self.nodes.len()).collect()
        } else {
            order
        }
    }

    /// Calls `method` on each node in priority order until one answers.
    async fn first_ok<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<(usize, T), NodeError> {
        if self.nodes.is_empty() {
            return Err(NodeError::NoNodes);
        }
        let mut errors = Vec::new();
        for index in self.try_order() {
            let Some(node) = self.nodes.get(index) else {
                continue;
            };
            match node.call::<T>(method, params.clone()).await {
                Ok(value) => return Ok((index, value)),
                Err(error) => {
                    tracing::debug!(node = %node.client.endpoint().url, %error, "node failed, trying the next");
                    errors.push(error);
                }
            }
        }
        Err(NodeError::AllFailed {
            method: method.to_owned(),
            errors,
        })
    }
}

impl Node {
    /// One call, recorded in the node's health (up, last error, latency).
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, RpcError> {
        let started = Instant::now();
        let result = self.client.call::<T>(method, params).await;
        let mut state = self.state.lock();
        match &result {
            Ok(_) => {
                if !state.up {
                    tracing::debug!(node = %self.client.endpoint().url, "node is back up");
                }
                state.up = true;
                state.last_ok = Some(Instant::now());
                state.rpc_latency = Some(started.elapsed());
            }
            Err(error) => {
                state.up = false;
                state.last_error = Some(error.to_string());
                state.last_failure = Some(Instant::now());
            }
        }
        result
    }
}
