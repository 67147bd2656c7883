//! The nodes' block relay between regions, played by the harness: the
//! embedded node has no peer-to-peer network. A node with more work has
//! its missing blocks submitted to the others, never to or from a host
//! that is cut off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tbg_node::RpcClient;

/// The nodes' block relay, played by the harness.
pub struct Gossip {
    cut: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gossip {
    pub(crate) fn start(nodes: Vec<RpcClient>) -> Gossip {
        let cut = Arc::new(Mutex::new(vec![false; nodes.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(gossip_loop(nodes, cut.clone(), stop.clone()));
        Gossip {
            cut,
            stop,
            task: Some(task),
        }
    }

    pub(crate) fn set_cut(&self, index: usize, cut: bool) {
        self.cut.lock().unwrap_or_else(|e| e.into_inner())[index] = cut;
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// (best block hash, chain work as fixed-width hex: compares as a number).
async fn tip(node: &RpcClient) -> Option<(String, String)> {
    let info: Value = node.call("getblockchaininfo", json!([])).await.ok()?;
    Some((
        info["bestblockhash"].as_str()?.to_owned(),
        info["chainwork"].as_str()?.to_owned(),
    ))
}

async fn gossip_loop(nodes: Vec<RpcClient>, cut: Arc<Mutex<Vec<bool>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let tips = futures_tips(&nodes).await;
        let cut_now = cut.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (from, from_tip) in tips.iter().enumerate() {
            let Some((from_hash, from_work)) = from_tip else {
                continue;
            };
            for (to, to_tip) in tips.iter().enumerate() {
                let Some((to_hash, to_work)) = to_tip else {
                    continue;
                };
                if from == to
                    || cut_now[from]
                    || cut_now[to]
                    || from_work <= to_work
                    || from_hash == to_hash
                {
                    continue;
                }
                relay_blocks(&nodes[from], &nodes[to], from_hash).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn futures_tips(nodes: &[RpcClient]) -> Vec<Option<(String, String)>> {
    let mut tips = Vec::with_capacity(nodes.len());
    for node in nodes {
        tips.push(tip(node).await);
    }
    tips
}

/// Submits to `to` the blocks of `from`'s chain up to `hash` it lacks.
async fn relay_blocks(from: &RpcClient, to: &RpcClient, hash: &str) {
    let mut missing = Vec::new();
    let mut cursor = hash.to_owned();
    while missing.len() < 2_000 {
        if to
            .call::<Value>("getblockheader", json!([cursor]))
            .await
            .is_ok()
        {
            break;
        }
        let Ok(header) = from.call::<Value>("getblockheader", json!([cursor])).await else {
            return;
        };
        missing.push(cursor.clone());
        match header["previousblockhash"].as_str() {
            Some(previous) => cursor = previous.to_owned(),
            None => break,
        }
    }
    for hash in missing.iter().rev() {
        let Ok(hex) = from.call::<String>("getblock", json!([hash, 0])).await else {
            return;
        };
        if to.call::<Value>("submitblock", json!([hex])).await.is_err() {
            return;
        }
    }
}
