//! The best chain tip the nodes report, so that failover never moves
//! miners back to an older tip.
//!
//! Every node's best block is surveyed in its own task (a slow node delays
//! only its own answer). A template is used only when it builds on the
//! best tip or on one with strictly more work: by chain work when both
//! are known (`getblockheader`), else by height. A node that is behind (a
//! lagging backup) is skipped for the next one and used again once it has
//! caught up. More work is followed even at a lower height (a genuine
//! reorg); equal work is not: like Bitcoin Core, the pool keeps the tip it
//! saw first, which may be its own miner's block that a returning node's
//! competitor must not orphan.
//!
//! The best tip is what some node says *now* ([`TipBook`], `tip/book.rs`):
//! a node's report is replaced by its next one and forgotten when it has
//! not answered for a while, so a tip no node builds on any more (an
//! operator's `invalidateblock`, a node on a split that went away) does not
//! hold the pool on stale work for ever.

mod book;

pub(crate) use book::TipBook;
pub use book::DEFAULT_TIP_MEMORY;

use std::cmp::Ordering;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    pub(crate) fn describe(&self) -> String {
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
    /// Strictly more work (or height, when the work is unknown), or
    /// nothing to compare with: follow it.
    Ahead,
    /// Another block with the same work (or height): a competitor. Not
    /// followed: the first seen stays, as in Bitcoin Core, until one side
    /// has more work.
    Tie,
    /// Less work (or a lower height): a node that has not caught up.
    Behind,
}

impl TipOrder {
    /// A template on such a tip may be handed to miners.
    pub fn is_followed(self) -> bool {
        matches!(self, TipOrder::Same | TipOrder::Ahead)
    }
}

/// Compares `candidate` with `best` (none known: ahead). What cannot be
/// compared (no work, no height) is ahead: following it is what the pool
/// did before it knew better.
pub fn compare(best: Option<&Tip>, candidate: &Tip) -> TipOrder {
    let Some(best) = best else {
        return TipOrder::Ahead;
    };
    if best.hash == candidate.hash {
        return TipOrder::Same;
    }
    let order = match (best.chainwork, candidate.chainwork) {
        (Some(best), Some(candidate)) => candidate.cmp(&best),
        _ => match (best.height, candidate.height) {
            (Some(best), Some(candidate)) => candidate.cmp(&best),
            _ => Ordering::Greater,
        },
    };
    match order {
        Ordering::Greater => TipOrder::Ahead,
        Ordering::Equal => TipOrder::Tie,
        Ordering::Less => TipOrder::Behind,
    }
}

/// The first template, in priority order, on the best tip or ahead of it.
#[derive(Debug)]
pub struct TemplateSearch {
    /// Node index, Core's answer and its tip (`None`: no usable tip in it;
    /// used as before, the pool's parser judges it).
    pub found: Option<(usize, Value, Option<Tip>)>,
    /// Nodes that answered with a template that is not followed: behind
    /// the best tip, or on a competitor of equal work.
    pub behind: Vec<(usize, Tip)>,
    /// Some node failed on the way (so trying again may find one).
    pub failures: usize,
}

impl NodeSet {
    /// getblocktemplate on each node in priority order until one answers
    /// with a template on `best` or ahead of it. `Err` only when no node
    /// answered at all; every node behind (or tied) is `Ok` with `found:
    /// None`.
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
            if !compare(best, &tip).is_followed() {
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

/// One node's answer in the survey: its tip, or that it did not answer,
/// and when it was asked (an answer older than what the book already
/// knows of that node is ignored).
pub(crate) type SurveyReport = (usize, Result<Tip, ()>, Instant);

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
        let asked = Instant::now();
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = nodes.best_tip_on(index) => answer,
        };
        let seen = answer.as_ref().map(|tip| tip.hash).map_err(|_| ());
        if last.as_ref() != Some(&seen) {
            last = Some(seen);
            if reports
                .send((index, answer.map_err(|_| ()), asked))
                .await
                .is_err()
            {
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
    fn lower_work_is_behind_equal_work_a_tie_and_only_more_work_followed() {
        let best = tip(1, Some(100), Some(50));
        assert_eq!(compare(None, &best), TipOrder::Ahead);
        assert_eq!(compare(Some(&best), &tip(1, None, None)), TipOrder::Same);
        // A lagging node (or one restarted with an empty chain).
        assert_eq!(
            compare(Some(&best), &tip(2, Some(3), Some(4))),
            TipOrder::Behind
        );
        // A competitor of equal work at the same height: the first seen
        // stays (it may be the pool's own block).
        assert_eq!(
            compare(Some(&best), &tip(3, Some(100), Some(50))),
            TipOrder::Tie
        );
        assert!(!TipOrder::Tie.is_followed() && !TipOrder::Behind.is_followed());
        assert_eq!(
            compare(Some(&best), &tip(4, Some(101), Some(51))),
            TipOrder::Ahead
        );
        // More work at a lower height (testnet's minimum-difficulty blocks).
        assert_eq!(
            compare(Some(&best), &tip(5, Some(99), Some(60))),
            TipOrder::Ahead
        );
        // Without work, by height; without either, followed.
        let by_height = tip(1, Some(100), None);
        assert_eq!(
            compare(Some(&by_height), &tip(6, Some(99), None)),
            TipOrder::Behind
        );
        assert_eq!(
            compare(Some(&by_height), &tip(7, Some(100), None)),
            TipOrder::Tie
        );
        assert_eq!(
            compare(Some(&by_height), &tip(8, Some(101), None)),
            TipOrder::Ahead
        );
        assert_eq!(
            compare(Some(&by_height), &tip(9, None, None)),
            TipOrder::Ahead
        );
        assert!(TipOrder::Same.is_followed() && TipOrder::Ahead.is_followed());
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
}
