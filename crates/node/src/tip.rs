//! The best chain tip known from any node, so that failover never moves
//! miners back to an older tip.
//!
//! Every node's best block is surveyed in its own task (a slow node delays
//! only its own answer). A template is used only when the tip it builds on
//! is not behind the best tip known: by chain work when both nodes report
//! it (`getblockheader`), else by height. A node that is behind (a lagging
//! backup, a node restarted with an empty chain) is skipped for the next one
//! and used again once it has caught up. A tip with at least the best tip's
//! work is followed, at the same height or even a lower one: that is a
//! genuine reorg.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::BlockHash;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::nodeset::{NodeError, NodeSet};

/// A chain tip: a block, with its height and chain work when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tip {
    pub hash: BlockHash,
    /// Height of this block (a template's height minus one).
    pub height: Option<u64>,
    /// Core's `chainwork`, big-endian, so byte order is numeric order.
    pub chainwork: Option<[u8; 32]>,
}

impl Tip {
    /// The tip a getblocktemplate answer builds on (`previousblockhash`,
    /// `height` - 1); `None` when the answer lacks them.
    pub fn of_template(gbt: &Value) -> Option<Tip> {
        let hash = gbt
            .get("previousblockhash")
            .and_then(Value::as_str)
            .and_then(|s| BlockHash::from_str(s).ok())?;
        let height = gbt
            .get("height")
            .and_then(Value::as_u64)
            .and_then(|h| h.checked_sub(1));
        Some(Tip {
            hash,
            height,
            chainwork: None,
        })
    }

    fn describe(&self) -> String {
        match self.height {
            Some(height) => format!("{} at height {height}", self.hash),
            None => self.hash.to_string(),
        }
    }
}

/// How a tip compares with the best one known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TipOrder {
    /// The best tip itself.
    Same,
    /// Another tip with at least as much work (or height): follow it.
    NotBehind,
    /// Less work (or a lower height): a node that has not caught up.
    Behind,
}

/// Compares `candidate` with `best` (none known: never behind). What
/// cannot be compared (no work, no height) is not behind: following it is
/// what the pool did before it knew better.
pub fn compare(best: Option<&Tip>, candidate: &Tip) -> TipOrder {
    let Some(best) = best else {
        return TipOrder::NotBehind;
    };
    if best.hash == candidate.hash {
        return TipOrder::Same;
    }
    let behind = match (best.chainwork, candidate.chainwork) {
        (Some(best), Some(candidate)) => candidate < best,
        _ => match (best.height, candidate.height) {
            (Some(best), Some(candidate)) => candidate < best,
            _ => false,
        },
    };
    if behind {
        TipOrder::Behind
    } else {
        TipOrder::NotBehind
    }
}

/// The first template, in priority order, that does not build on a tip
/// behind the best known.
#[derive(Debug)]
pub struct TemplateSearch {
    /// Node index, Core's answer and its tip (`None`: no usable tip in it;
    /// used as before, the pool's parser judges it).
    pub found: Option<(usize, Value, Option<Tip>)>,
    /// Nodes that answered with a template behind the best tip.
    pub behind: Vec<(usize, Tip)>,
    /// Some node failed on the way (so trying again may find one).
    pub failures: usize,
}

impl NodeSet {
    /// getblocktemplate on each node in priority order until one answers
    /// with a template not behind `best`. `Err` only when no node answered
    /// at all; every node behind is `Ok` with `found: None`.
    pub async fn get_block_template_at_tip(
        &self,
        best: Option<&Tip>,
    ) -> Result<TemplateSearch, NodeError> {
        if self.is_empty() {
            return Err(NodeError::NoNodes);
        }
        let params = json!([{ "rules": self.template_rules() }]);
        let mut search = TemplateSearch {
            found: None,
            behind: Vec::new(),
            failures: 0,
        };
        let mut errors = Vec::new();
        for index in self.try_order() {
            let Some(node) = self.nodes().get(index) else {
                continue;
            };
            let gbt = match node.call::<Value>("getblocktemplate", params.clone()).await {
                Ok(gbt) => gbt,
                Err(error) => {
                    tracing::debug!(node = %node.client.endpoint().url, %error, "node failed, trying the next");
                    search.failures += 1;
                    errors.push(error);
                    continue;
                }
            };
            let Some(mut tip) = Tip::of_template(&gbt) else {
                search.found = Some((index, gbt, None));
                return Ok(search);
            };
            if best.is_none_or(|best| best.hash != tip.hash) {
                tip.chainwork = self.chainwork_on(index, tip.hash).await;
            }
            if compare(best, &tip) == TipOrder::Behind {
                search.behind.push((index, tip));
                continue;
            }
            search.found = Some((index, gbt, Some(tip)));
            return Ok(search);
        }
        if search.behind.is_empty() {
            return Err(NodeError::AllFailed {
                method: "getblocktemplate".to_owned(),
                errors,
            });
        }
        Ok(search)
    }

    /// The best block of node `index` with its height and work. The header
    /// lookup is best effort and does not count against the node's health
    /// (a node may lack getblockheader): the tip is then compared by what
    /// is known.
    pub async fn best_tip_on(&self, index: usize) -> Result<Tip, NodeError> {
        let Some(node) = self.nodes().get(index) else {
            return Err(NodeError::NoNodes);
        };
        let hex = node
            .call::<String>("getbestblockhash", json!([]))
            .await
            .map_err(|error| NodeError::AllFailed {
                method: "getbestblockhash".to_owned(),
                errors: vec![error],
            })?;
        let hash = BlockHash::from_str(&hex).map_err(|_| NodeError::BadHash {
            url: node.client.endpoint().url.clone(),
            method: "getbestblockhash".to_owned(),
            value: hex.clone(),
        })?;
        let (height, chainwork) = match self.header_on(index, hash).await {
            Some(header) => (Some(header.height), parse_work(&header.chainwork)),
            None => (None, None),
        };
        Ok(Tip {
            hash,
            height,
            chainwork,
        })
    }

    async fn chainwork_on(&self, index: usize, hash: BlockHash) -> Option<[u8; 32]> {
        self.header_on(index, hash)
            .await
            .and_then(|header| parse_work(&header.chainwork))
    }

    async fn header_on(&self, index: usize, hash: BlockHash) -> Option<HeaderAnswer> {
        let node = self.nodes().get(index)?;
        node.client
            .call::<HeaderAnswer>("getblockheader", json!([hash.to_string(), true]))
            .await
            .map_err(|error| tracing::debug!(%error, "no chain work from getblockheader"))
            .ok()
    }

    /// URL of node `index`, for logs.
    pub(crate) fn url_of(&self, index: usize) -> String {
        self.nodes()
            .get(index)
            .map(|n| n.client.endpoint().url.clone())
            .unwrap_or_default()
    }
}

#[derive(serde::Deserialize)]
struct HeaderAnswer {
    height: u64,
    chainwork: String,
}

/// 64 hex digits, big-endian.
fn parse_work(hex_text: &str) -> Option<[u8; 32]> {
    if hex_text.len() != 64 {
        return None;
    }
    let mut work = [0u8; 32];
    for (i, byte) in work.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(work)
}

/// One node's answer in the survey: its tip, or that it did not answer.
pub(crate) type SurveyReport = (usize, Result<Tip, ()>);

/// Asks node `index` for its best block every `period` (as it is now) and
/// reports when the answer changes (another tip, or up/down), until
/// `shutdown`.
pub(crate) async fn survey_node(
    nodes: Arc<NodeSet>,
    index: usize,
    mut period: watch::Receiver<Duration>,
    reports: mpsc::Sender<SurveyReport>,
    shutdown: CancellationToken,
) {
    let mut last: Option<Result<BlockHash, ()>> = None;
    loop {
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = nodes.best_tip_on(index) => answer,
        };
        let seen = answer.as_ref().map(|tip| tip.hash).map_err(|_| ());
        if last.as_ref() != Some(&seen) {
            last = Some(seen);
            if reports.send((index, answer.map_err(|_| ()))).await.is_err() {
                return;
            }
        }
        let wait = *period.borrow_and_update();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            // A new period takes effect at once.
            changed = period.changed() => if changed.is_err() { return },
        }
    }
}

/// What the watcher knows of the nodes' tips.
#[derive(Debug)]
pub(crate) struct TipBook {
    pub(crate) best: Option<Tip>,
    /// Each node's last survey answer (`None`: not answering or unknown).
    answering: Vec<Option<bool>>,
    /// Nodes last seen behind the best tip (logged once per episode).
    lagging: Vec<bool>,
}

impl TipBook {
    pub(crate) fn new(nodes: usize) -> TipBook {
        TipBook {
            best: None,
            answering: vec![None; nodes],
            lagging: vec![false; nodes],
        }
    }

    /// A tip some node builds on or reports; returns how it compares with
    /// the best before, and makes it the best when it is not behind.
    pub(crate) fn learn(&mut self, tip: &Tip) -> TipOrder {
        let order = compare(self.best.as_ref(), tip);
        match order {
            TipOrder::Behind => {}
            TipOrder::Same => {
                // Same block: keep whichever description knows more.
                if let Some(best) = self.best.as_mut() {
                    best.height = best.height.or(tip.height);
                    best.chainwork = best.chainwork.or(tip.chainwork);
                }
            }
            TipOrder::NotBehind => self.best = Some(tip.clone()),
        }
        order
    }

    /// Records node `index`'s survey answer; returns whether every node
    /// has now failed its last survey.
    pub(crate) fn answered(&mut self, index: usize, ok: bool) -> bool {
        if let Some(slot) = self.answering.get_mut(index) {
            *slot = Some(ok);
        }
        self.answering.iter().all(|a| *a == Some(false))
    }

    /// Logs node `index` falling behind or catching up, once per change.
    pub(crate) fn set_lagging(&mut self, nodes: &NodeSet, index: usize, tip: Option<&Tip>) {
        let Some(slot) = self.lagging.get_mut(index) else {
            return;
        };
        match tip {
            Some(tip) if !*slot => {
                *slot = true;
                tracing::warn!(
                    node = %nodes.url_of(index),
                    node_tip = %tip.describe(),
                    best_tip = %self.best.as_ref().map(Tip::describe).unwrap_or_default(),
                    "node is behind the best known tip: its templates are not used until it catches up"
                );
            }
            None if *slot => {
                *slot = false;
                tracing::info!(node = %nodes.url_of(index), "node caught up with the best known tip");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tip(byte: u8, height: Option<u64>, work: Option<u8>) -> Tip {
        Tip {
            hash: BlockHash::from_str(&format!("{byte:02x}").repeat(32)).unwrap(),
            height,
            chainwork: work.map(|w| {
                let mut bytes = [0u8; 32];
                bytes[31] = w;
                bytes
            }),
        }
    }

    #[test]
    fn lower_work_is_behind_and_equal_or_more_work_is_followed() {
        let best = tip(1, Some(100), Some(50));
        assert_eq!(compare(None, &best), TipOrder::NotBehind);
        assert_eq!(compare(Some(&best), &tip(1, None, None)), TipOrder::Same);
        // A lagging node (or one restarted with an empty chain).
        assert_eq!(
            compare(Some(&best), &tip(2, Some(3), Some(4))),
            TipOrder::Behind
        );
        // A reorg to a same-height tip of equal work, or a higher one.
        assert_eq!(
            compare(Some(&best), &tip(3, Some(100), Some(50))),
            TipOrder::NotBehind
        );
        assert_eq!(
            compare(Some(&best), &tip(4, Some(101), Some(51))),
            TipOrder::NotBehind
        );
        // More work at a lower height (testnet's minimum-difficulty blocks).
        assert_eq!(
            compare(Some(&best), &tip(5, Some(99), Some(60))),
            TipOrder::NotBehind
        );
        // Without work, by height; without either, followed.
        let by_height = tip(1, Some(100), None);
        assert_eq!(
            compare(Some(&by_height), &tip(6, Some(99), None)),
            TipOrder::Behind
        );
        assert_eq!(
            compare(Some(&by_height), &tip(7, Some(100), None)),
            TipOrder::NotBehind
        );
        assert_eq!(
            compare(Some(&by_height), &tip(8, None, None)),
            TipOrder::NotBehind
        );
    }

    #[test]
    fn a_template_names_the_tip_it_builds_on() {
        let gbt = json!({"previousblockhash": "11".repeat(32), "height": 105});
        let tip = Tip::of_template(&gbt).unwrap();
        assert_eq!(tip.height, Some(104));
        assert_eq!(Tip::of_template(&json!({"height": 1})), None);
        assert_eq!(
            parse_work(&format!("{}ff", "0".repeat(62))).unwrap()[31],
            255
        );
        assert_eq!(parse_work("zz"), None);
    }

    #[test]
    fn the_book_keeps_the_best_and_notices_when_all_nodes_fail() {
        let mut book = TipBook::new(2);
        assert_eq!(book.learn(&tip(1, Some(10), Some(10))), TipOrder::NotBehind);
        assert_eq!(book.learn(&tip(2, Some(5), Some(5))), TipOrder::Behind);
        assert_eq!(book.best.as_ref().map(|t| t.height), Some(Some(10)));
        assert!(!book.answered(0, false));
        assert!(book.answered(1, false));
        assert!(!book.answered(1, true));
    }
}
