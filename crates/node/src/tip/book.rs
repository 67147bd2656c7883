//! What the watcher knows of the nodes' tips: each node's last word, and
//! the best tip among them.
//!
//! The best tip is never a memory of its own: it is the best of what the
//! nodes say now. A node's word is replaced by its next one (a node that
//! was on the best tip and now reports another, after an operator's
//! `invalidateblock`, no longer holds the pool on it), and forgotten once
//! the node has not answered for `memory` (a node with the best tip that
//! went away: its tip is kept while it may come back, a restart, so that a
//! lagging backup cannot move miners back, but not for ever). Without
//! that, a tip no node builds on would make every template "behind" and
//! keep miners on stale work indefinitely.

use std::time::{Duration, Instant};

use bitcoin::BlockHash;

use super::{compare, Tip, TipOrder};
use crate::nodeset::NodeSet;

/// How long the last word of a node that stopped answering still counts:
/// a bitcoind restart is usually shorter; a backup that lags this long
/// behind a vanished primary is what the pool has.
pub const DEFAULT_TIP_MEMORY: Duration = Duration::from_secs(180);

/// One node as the book sees it.
#[derive(Debug, Default)]
struct NodeWord {
    /// The tip it last reported (survey, or a template built on it).
    tip: Option<Tip>,
    /// When that was asked: an answer asked earlier is out of date.
    asked: Option<Instant>,
    /// Since when it has not answered (`None`: answering, or not asked).
    silent_since: Option<Instant>,
    /// Its last answer was a success (`None`: no answer yet).
    answering: Option<bool>,
    /// Last seen on a tip that is not followed (logged once per episode).
    lagging: bool,
}

#[derive(Debug)]
pub(crate) struct TipBook {
    /// The best tip some node reports (or reported within `memory`).
    pub(crate) best: Option<Tip>,
    nodes: Vec<NodeWord>,
    memory: Duration,
}

impl TipBook {
    pub(crate) fn new(nodes: usize, memory: Duration) -> TipBook {
        TipBook {
            best: None,
            nodes: (0..nodes).map(|_| NodeWord::default()).collect(),
            memory,
        }
    }

    /// Node `index` is on `tip` (its survey, or a template built on it),
    /// as asked at `asked`. Returns how `tip` compares with the best tip
    /// before; the best tip is then recomputed with this word replacing
    /// the node's previous one. An answer asked before the node's last
    /// word is out of date and changes nothing.
    pub(crate) fn report(&mut self, index: usize, tip: &Tip, asked: Instant) -> TipOrder {
        let order = compare(self.best.as_ref(), tip);
        let mut tip = tip.clone();
        self.fill_in(&mut tip);
        let Some(node) = self.nodes.get_mut(index) else {
            return order;
        };
        if node.asked.is_some_and(|known| asked < known) {
            return order;
        }
        node.tip = Some(tip);
        node.asked = Some(asked);
        node.silent_since = None;
        node.answering = Some(true);
        self.rebuild();
        order
    }

    /// Node `index` did not answer a question asked at `asked`; returns
    /// whether every node has now failed its last question.
    pub(crate) fn failed(&mut self, index: usize, asked: Instant) -> bool {
        if let Some(node) = self.nodes.get_mut(index) {
            if node.asked.is_none_or(|known| asked >= known) {
                node.asked = Some(asked);
                node.answering = Some(false);
                node.silent_since.get_or_insert(asked);
            }
        }
        self.nodes.iter().all(|n| n.answering == Some(false))
    }

    /// Forgets the word of nodes silent for `memory` at `now`; returns
    /// whether the best tip changed.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let memory = self.memory;
        let mut forgot = false;
        for node in &mut self.nodes {
            let expired = node
                .silent_since
                .is_some_and(|since| now.saturating_duration_since(since) >= memory);
            if expired && node.tip.is_some() {
                node.tip = None;
                forgot = true;
            }
        }
        if !forgot {
            return false;
        }
        let before = self.best_hash();
        self.rebuild();
        let changed = self.best_hash() != before;
        if changed {
            tracing::warn!(
                best_tip = %self.best.as_ref().map(Tip::describe).unwrap_or_default(),
                silent_for = ?memory,
                "the node that had the best tip has not answered: following what the answering nodes say"
            );
        }
        changed
    }

    /// When [`TipBook::expire`] next has something to forget.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .filter(|node| node.tip.is_some())
            .filter_map(|node| node.silent_since)
            .min()
            .map(|since| since + self.memory)
    }

    pub(crate) fn best_hash(&self) -> Option<BlockHash> {
        self.best.as_ref().map(|tip| tip.hash)
    }

    /// Logs node `index` being on a tip that is not followed, or following
    /// again, once per change.
    pub(crate) fn set_lagging(&mut self, nodes: &NodeSet, index: usize, tip: Option<&Tip>) {
        let tie = tip.is_some_and(|tip| compare(self.best.as_ref(), tip) == TipOrder::Tie);
        let best = self.best.as_ref().map(Tip::describe).unwrap_or_default();
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        match tip {
            Some(tip) if !node.lagging => {
                node.lagging = true;
                let why = if tie {
                    "node is on a competing tip of equal work: the pool keeps the tip it saw first until one side has more work"
                } else {
                    "node is behind the best known tip: its templates are not used until it catches up"
                };
                tracing::warn!(node = %nodes.url_of(index), node_tip = %tip.describe(), best_tip = %best, "{why}");
            }
            None if node.lagging => {
                node.lagging = false;
                tracing::info!(node = %nodes.url_of(index), "node is on the best known tip again");
            }
            _ => {}
        }
    }

    /// Height and work of `tip` from another description of the same block.
    fn fill_in(&self, tip: &mut Tip) {
        let known = self
            .best
            .iter()
            .chain(self.nodes.iter().filter_map(|node| node.tip.as_ref()))
            .filter(|known| known.hash == tip.hash);
        for known in known {
            tip.height = tip.height.or(known.height);
            tip.chainwork = tip.chainwork.or(known.chainwork);
        }
    }

    /// The best of the nodes' tips. On equal work the current best stays
    /// while some node still reports it (the first seen, as Core keeps
    /// it); otherwise the first in priority order.
    fn rebuild(&mut self) {
        let reported = |hash: BlockHash| {
            self.nodes
                .iter()
                .any(|node| node.tip.as_ref().is_some_and(|tip| tip.hash == hash))
        };
        let mut best = self.best.take().filter(|best| reported(best.hash));
        for tip in self.nodes.iter().filter_map(|node| node.tip.as_ref()) {
            match compare(best.as_ref(), tip) {
                TipOrder::Ahead => best = Some(tip.clone()),
                TipOrder::Same => {
                    if let Some(best) = best.as_mut() {
                        best.height = best.height.or(tip.height);
                        best.chainwork = best.chainwork.or(tip.chainwork);
                    }
                }
                TipOrder::Tie | TipOrder::Behind => {}
            }
        }
        self.best = best;
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn tip(byte: u8, height: u64) -> Tip {
        let mut work = [0u8; 32];
        work[31] = u8::try_from(height).unwrap();
        Tip {
            hash: BlockHash::from_str(&format!("{byte:02x}").repeat(32)).unwrap(),
            height: Some(height),
            chainwork: Some(work),
        }
    }

    fn best_height(book: &TipBook) -> Option<u64> {
        book.best.as_ref().and_then(|t| t.height)
    }

    const MEMORY: Duration = Duration::from_secs(180);

    #[test]
    fn the_best_is_the_best_word_and_all_failing_is_noticed() {
        let now = Instant::now();
        let mut book = TipBook::new(2, MEMORY);
        assert_eq!(book.report(0, &tip(1, 10), now), TipOrder::Ahead);
        assert_eq!(book.report(1, &tip(2, 5), now), TipOrder::Behind);
        assert_eq!(best_height(&book), Some(10));
        assert!(!book.failed(0, now));
        assert!(book.failed(1, now));
        // Node 1 answers again: not every node is failing any more.
        assert_eq!(book.report(1, &tip(2, 5), now), TipOrder::Behind);
        assert!(!book.failed(0, now));
    }

    #[test]
    fn a_node_that_reports_another_tip_no_longer_holds_the_best() {
        // Node 0 had the best tip; after an invalidateblock it reports a
        // lower one, and node 1 is at 8: the pool follows node 1.
        let now = Instant::now();
        let mut book = TipBook::new(2, MEMORY);
        book.report(0, &tip(1, 10), now);
        book.report(1, &tip(2, 8), now);
        assert_eq!(book.report(0, &tip(3, 7), now), TipOrder::Behind);
        assert_eq!(best_height(&book), Some(8));
        // A single node is followed wherever it goes.
        let mut alone = TipBook::new(1, MEMORY);
        alone.report(0, &tip(1, 10), now);
        alone.report(0, &tip(3, 9), now);
        assert_eq!(best_height(&alone), Some(9));
    }

    #[test]
    fn a_silent_node_holds_the_best_for_its_memory_then_is_forgotten() {
        let start = Instant::now();
        let mut book = TipBook::new(2, MEMORY);
        book.report(0, &tip(1, 10), start);
        book.report(1, &tip(2, 7), start);
        assert_eq!(book.next_expiry(), None);
        let silent = start + Duration::from_secs(1);
        book.failed(0, silent);
        // A restart: the lagging backup does not move the miners back.
        assert!(!book.expire(silent + MEMORY - Duration::from_millis(1)));
        assert_eq!(best_height(&book), Some(10));
        assert_eq!(book.next_expiry(), Some(silent + MEMORY));
        // Later failures do not push the deadline back.
        book.failed(0, silent + Duration::from_secs(60));
        assert_eq!(book.next_expiry(), Some(silent + MEMORY));
        // Gone for good: what the answering node says.
        assert!(book.expire(silent + MEMORY));
        assert_eq!(best_height(&book), Some(7));
        assert_eq!(book.next_expiry(), None);
        // Back, still on its tip: ahead again.
        let back = silent + MEMORY + Duration::from_secs(1);
        assert_eq!(book.report(0, &tip(1, 10), back), TipOrder::Ahead);
        assert_eq!(best_height(&book), Some(10));
    }

    #[test]
    fn on_equal_work_the_first_seen_tip_stays() {
        let now = Instant::now();
        let mut book = TipBook::new(2, MEMORY);
        // The backup (1) has the pool's own block at 11; the primary (0)
        // comes back with a competitor at 11.
        book.report(1, &tip(0xaa, 11), now);
        assert_eq!(book.report(0, &tip(0xbb, 11), now), TipOrder::Tie);
        assert_eq!(book.best_hash(), Some(tip(0xaa, 11).hash));
        // Either side with more work wins.
        assert_eq!(book.report(0, &tip(0xbc, 12), now), TipOrder::Ahead);
        assert_eq!(book.best_hash(), Some(tip(0xbc, 12).hash));
    }

    #[test]
    fn an_answer_asked_before_the_nodes_last_word_changes_nothing() {
        let start = Instant::now();
        let later = start + Duration::from_millis(50);
        let mut book = TipBook::new(1, MEMORY);
        // A template on 11 (asked later) is learned before a survey answer
        // of 10 that waited in the channel.
        book.report(0, &tip(2, 11), later);
        book.report(0, &tip(1, 10), start);
        assert_eq!(best_height(&book), Some(11));
        book.failed(0, start);
        assert_eq!(
            book.next_expiry(),
            None,
            "an old failure is out of date too"
        );
    }
}
