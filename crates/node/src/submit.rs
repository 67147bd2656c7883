//! Found blocks: `submitblock` to every node at once, and where a block
//! stands on each node's best chain (`getblockheader`, `getblockhash`).
//!
//! Nothing here retries or decides to give up: that is the pool's block
//! keeper, which calls these until a node takes the block or the chain has
//! moved past it. This module only says, per node, what happened, keeping
//! "the node could not be asked" apart from "the node said no".

use std::str::FromStr;

use bitcoin::BlockHash;
use serde_json::json;

use crate::nodeset::NodeSet;
use crate::rpc::RpcError;

/// Core's `RPC_IN_WARMUP`: the node is starting and answers nothing yet.
const RPC_IN_WARMUP: i64 = -28;
/// Core's `RPC_INVALID_ADDRESS_OR_KEY`, which getblockheader answers for a
/// block the node does not know.
const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;

/// One node's answer to `submitblock`.
#[derive(Debug)]
pub enum SubmitAnswer {
    /// `null`: the block was accepted.
    Accepted,
    /// `"duplicate"`: the node already has it (counts as accepted).
    Duplicate,
    /// `"inconclusive"` or `"duplicate-inconclusive"`: Core stored the block
    /// but did not connect it (it is on a branch that is not, or not yet,
    /// the best chain). Whether it made it is asked with getblockheader.
    Inconclusive(String),
    /// Any other answer string, such as `"high-hash"` or `"bad-prevblk"`:
    /// the node looked at the block and refused it.
    Rejected(String),
    /// The node could not be asked (connection refused, timeout, warming
    /// up, credentials refused, not Core's JSON): nothing is known of the
    /// block there, so this is never counted as a rejection.
    Unreachable(RpcError),
    /// The node answered with an RPC error about the block itself (such as
    /// `-22`, block decode failed).
    Failed(RpcError),
}

impl SubmitAnswer {
    /// From the result of one `submitblock` call.
    pub fn from_result(result: Result<Option<String>, RpcError>) -> SubmitAnswer {
        match result {
            Ok(None) => SubmitAnswer::Accepted,
            Ok(Some(text)) if text == "duplicate" => SubmitAnswer::Duplicate,
            Ok(Some(text)) if text == "inconclusive" || text == "duplicate-inconclusive" => {
                SubmitAnswer::Inconclusive(text)
            }
            Ok(Some(text)) => SubmitAnswer::Rejected(text),
            Err(error) if is_unreachable(&error) => SubmitAnswer::Unreachable(error),
            Err(error) => SubmitAnswer::Failed(error),
        }
    }

    /// The node connected the block to its best chain (`null`). Not
    /// `duplicate`: Core answers that for a block it holds on a side branch
    /// too, so where such a block stands is asked with getblockheader.
    pub fn is_accepted(&self) -> bool {
        matches!(self, SubmitAnswer::Accepted)
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, SubmitAnswer::Unreachable(_))
    }

    /// The node refused the block itself (not for being unreachable).
    pub fn is_rejection(&self) -> bool {
        matches!(self, SubmitAnswer::Rejected(_) | SubmitAnswer::Failed(_))
    }

    /// Short text for logs, events and the status API.
    pub fn describe(&self) -> String {
        match self {
            SubmitAnswer::Accepted => "accepted".to_string(),
            SubmitAnswer::Duplicate => "duplicate".to_string(),
            SubmitAnswer::Inconclusive(text) => text.clone(),
            SubmitAnswer::Rejected(reason) => format!("rejected: {reason}"),
            SubmitAnswer::Unreachable(error) => format!("unreachable: {error}"),
            SubmitAnswer::Failed(error) => format!("error: {error}"),
        }
    }
}

/// Errors that say nothing about the block: the node was not reached or
/// could not work on it yet.
fn is_unreachable(error: &RpcError) -> bool {
    match error {
        RpcError::Transport { .. }
        | RpcError::Auth { .. }
        | RpcError::Cookie { .. }
        | RpcError::Http { .. }
        | RpcError::BadJson { .. }
        | RpcError::Client(_) => true,
        RpcError::Rpc { code, .. } => *code == RPC_IN_WARMUP,
    }
}

#[derive(Debug)]
pub struct NodeSubmitAnswer {
    pub url: String,
    pub answer: SubmitAnswer,
}

/// Where a block stands, by the nodes that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainPosition {
    /// On a node's best chain, with this many confirmations (1 = the tip):
    /// the most any node reports, so a lagging node does not hold it back.
    InBestChain { confirmations: u64 },
    /// Every node that answered has another block at the height with at
    /// least one block on top of it: more work than ours, which is stale
    /// (never accepted) or orphaned (accepted, then reorganised away).
    Replaced { by: BlockHash, best_height: u64 },
    /// Not on a best chain, but not yet passed either (the race may still
    /// go our way), or no node could be asked.
    Undecided { nodes_answered: usize },
}

#[derive(serde::Deserialize)]
struct HeaderAnswer {
    confirmations: i64,
}

/// One node's view of the block.
enum NodeView {
    InBestChain(u64),
    Replaced(BlockHash, u64),
    Open,
    NoAnswer,
}

/// [`NodeSet::chain_report`]: the verdict, and which nodes answered that
/// they do not have the block at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub position: ChainPosition,
    /// Priority indexes of the nodes that answered getblockheader with
    /// "not found": worth a submitblock.
    pub missing_on: Vec<usize>,
}

impl NodeSet {
    /// `submitblock` to every node at once; each node's answer in priority
    /// order. Never fails as a whole: an unreachable node is an answer.
    pub async fn submit_block_to_all(&self, block_hex: &str) -> Vec<NodeSubmitAnswer> {
        let all: Vec<usize> = (0..self.nodes().len()).collect();
        self.submit_block_to(block_hex, &all).await
    }

    /// `submitblock` to the nodes at `indexes` (priority order) at once.
    pub async fn submit_block_to(
        &self,
        block_hex: &str,
        indexes: &[usize],
    ) -> Vec<NodeSubmitAnswer> {
        let calls = indexes
            .iter()
            .filter_map(|&index| self.nodes().get(index))
            .map(|node| async move {
                let result = node
                    .client
                    .call::<Option<String>>("submitblock", json!([block_hex]))
                    .await;
                NodeSubmitAnswer {
                    url: node.client.endpoint().url.clone(),
                    answer: SubmitAnswer::from_result(result),
                }
            });
        futures::future::join_all(calls).await
    }

    /// Where block `hash` at `height` stands: on some node's best chain, or
    /// replaced on every node that answered, or undecided. Asks every node
    /// at once.
    pub async fn chain_position(&self, hash: BlockHash, height: u32) -> ChainPosition {
        self.chain_report(hash, height).await.position
    }

    /// As [`NodeSet::chain_position`], with the nodes that lack the block.
    pub async fn chain_report(&self, hash: BlockHash, height: u32) -> ChainReport {
        let views = futures::future::join_all(
            self.nodes()
                .iter()
                .map(|node| node_view(&node.client, hash, height)),
        )
        .await;
        let missing_on = views
            .iter()
            .enumerate()
            .filter(|(_, (_, known))| !known)
            .map(|(index, _)| index)
            .collect();
        let mut replaced = None;
        let mut answered = 0;
        let mut open = false;
        let mut best_confirmations = None;
        for (view, _) in views {
            match view {
                NodeView::InBestChain(confirmations) => {
                    best_confirmations = best_confirmations.max(Some(confirmations));
                }
                NodeView::Replaced(by, best_height) => {
                    answered += 1;
                    replaced = Some((by, best_height));
                }
                NodeView::Open => {
                    answered += 1;
                    open = true;
                }
                NodeView::NoAnswer => {}
            }
        }
        let position = match (best_confirmations, replaced) {
            (Some(confirmations), _) => ChainPosition::InBestChain { confirmations },
            (None, Some((by, best_height))) if !open => ChainPosition::Replaced { by, best_height },
            _ => ChainPosition::Undecided {
                nodes_answered: answered,
            },
        };
        ChainReport {
            position,
            missing_on,
        }
    }
}

/// One node's view, and whether it knows the block (false only when it
/// answered "not found"; a node that did not answer is not asked again).
async fn node_view(
    client: &crate::rpc::RpcClient,
    hash: BlockHash,
    height: u32,
) -> (NodeView, bool) {
    let mut known = true;
    match client
        .call::<HeaderAnswer>("getblockheader", json!([hash.to_string(), true]))
        .await
    {
        Ok(header) if header.confirmations >= 1 => {
            return (
                NodeView::InBestChain(header.confirmations.unsigned_abs()),
                true,
            )
        }
        // Known but on a side branch (-1), or not known at all: what is at
        // the height on its best chain decides.
        Ok(_) => {}
        Err(RpcError::Rpc { code, .. }) if code == RPC_INVALID_ADDRESS_OR_KEY => known = false,
        Err(error) => {
            tracing::debug!(%error, %hash, "no answer about a found block");
            return (NodeView::NoAnswer, true);
        }
    }
    let best = match client.call::<u64>("getblockcount", json!([])).await {
        Ok(best) => best,
        Err(_) => return (NodeView::NoAnswer, known),
    };
    if best <= u64::from(height) {
        // Nothing on top of the height yet: the block may still win.
        return (NodeView::Open, known);
    }
    let view = match client.call::<String>("getblockhash", json!([height])).await {
        Ok(text) => match BlockHash::from_str(&text) {
            Ok(at_height) if at_height == hash => {
                NodeView::InBestChain(best - u64::from(height) + 1)
            }
            Ok(at_height) => NodeView::Replaced(at_height, best),
            Err(_) => NodeView::NoAnswer,
        },
        Err(_) => NodeView::NoAnswer,
    };
    (view, known)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport() -> RpcError {
        RpcError::Transport {
            url: "n".into(),
            method: "submitblock".into(),
            reason: "connection refused".into(),
            timed_out: false,
        }
    }

    fn rpc(code: i64) -> RpcError {
        RpcError::Rpc {
            url: "n".into(),
            method: "submitblock".into(),
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn answers_are_classified_as_core_means_them() {
        assert!(SubmitAnswer::from_result(Ok(None)).is_accepted());
        // Core says "duplicate" for a block it holds off its best chain too.
        let duplicate = SubmitAnswer::from_result(Ok(Some("duplicate".into())));
        assert!(matches!(duplicate, SubmitAnswer::Duplicate));
        assert!(!duplicate.is_accepted() && !duplicate.is_rejection());
        for text in ["inconclusive", "duplicate-inconclusive"] {
            let answer = SubmitAnswer::from_result(Ok(Some(text.into())));
            assert!(matches!(answer, SubmitAnswer::Inconclusive(_)), "{text}");
            assert!(!answer.is_accepted() && !answer.is_rejection());
        }
        let high = SubmitAnswer::from_result(Ok(Some("high-hash".into())));
        assert!(high.is_rejection() && !high.is_unreachable());
        // Never reached, or starting up: not a rejection.
        assert!(SubmitAnswer::from_result(Err(transport())).is_unreachable());
        assert!(SubmitAnswer::from_result(Err(rpc(RPC_IN_WARMUP))).is_unreachable());
        let decode = SubmitAnswer::from_result(Err(rpc(-22)));
        assert!(decode.is_rejection() && !decode.is_unreachable());
    }
}
