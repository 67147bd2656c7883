//! Keeps the newest block template in a watch channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::BlockHash;
use serde_json::Value;
use std::str::FromStr;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::nodeset::{ChainInfo, NodeSet};
pub use crate::tip::DEFAULT_TIP_MEMORY;
use crate::tip::{self, TipBook};

/// First retry delay after every node failed; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Longest wait between two ZMQ reconnection attempts.
const MAX_ZMQ_BACKOFF: Duration = Duration::from_secs(5);

/// Period of the getblockchaininfo + getnetworkinfo poll, which runs in its
/// own task so it never delays a template fetch.
pub const CHAIN_INFO_POLL: Duration = Duration::from_secs(10);

/// How the watcher polls.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// getbestblockhash period (ckpool's `blockpoll`, in ms there).
    pub block_poll: Duration,
    /// Template refresh period without a new block (ckpool's
    /// `update_interval`), so new mempool transactions get mined.
    pub update_interval: Duration,
    /// Core's `-zmqpubhashblock` address, e.g. `tcp://127.0.0.1:28332`:
    /// a new block triggers an immediate fetch. Polling continues anyway.
    pub zmq_hashblock: Option<String>,
    /// How long the tip of a node that stopped answering still counts as
    /// the best tip ([`DEFAULT_TIP_MEMORY`]): long enough that a restart
    /// of the node with the best tip does not move miners back to a
    /// lagging backup's, short enough that a tip no node reports any more
    /// does not keep them on stale work.
    pub tip_memory: Duration,
}

/// One getblocktemplate answer, as published by the watcher.
#[derive(Clone, Debug)]
pub struct FetchedTemplate {
    /// Core's getblocktemplate result, unparsed.
    pub gbt: Value,
    /// Which node (priority index) answered.
    pub node_index: usize,
    pub fetched_at: Instant,
    /// `previousblockhash` differs from the previous template's (true for
    /// the first template): miners must drop their old jobs.
    pub new_block: bool,
}

impl FetchedTemplate {
    /// The template's `previousblockhash`, if present and valid.
    pub fn previous_block_hash(&self) -> Option<BlockHash> {
        previous_hash_of(&self.gbt)
    }
}

/// Whether the watcher can reach any node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    /// No template fetched yet and no failure yet.
    Starting,
    /// The last call succeeded on this node.
    Up { node_index: usize },
    /// Every node failed since `since`; the last template stays published.
    AllDown { since: Instant },
    /// Since `since`, every node that answers is behind the best tip (or
    /// on a competitor of equal work), so no template is used: miners keep
    /// the last work, which may be going stale. Ends when a node is on the
    /// best tip again, or when the best tip's node has been silent for
    /// `tip_memory` and the pool follows what the others say.
    Behind { since: Instant },
}

/// Spawns the template-watching task.
pub struct TemplateWatcher;

impl TemplateWatcher {
    /// Starts watching. Returns the template channel (`None` until the first
    /// template), the health channel and the task, which ends when
    /// `shutdown` is cancelled.
    pub fn spawn(
        nodes: Arc<NodeSet>,
        config: WatcherConfig,
        shutdown: CancellationToken,
    ) -> (
        watch::Receiver<Option<Arc<FetchedTemplate>>>,
        watch::Receiver<NodeHealth>,
        JoinHandle<()>,
    ) {
        let running = TemplateWatcher::spawn_with_trigger(nodes, config, shutdown);
        (running.templates, running.health, running.task)
    }

    /// As [`TemplateWatcher::spawn`], plus a trigger that asks for a new
    /// template at once (the pool pulls it after one of its blocks is
    /// accepted, instead of waiting for the next poll).
    pub fn spawn_with_trigger(
        nodes: Arc<NodeSet>,
        config: WatcherConfig,
        shutdown: CancellationToken,
    ) -> RunningWatcher {
        let (template_tx, template_rx) = watch::channel(None);
        let (health_tx, health_rx) = watch::channel(NodeHealth::Starting);
        // Capacity 1: one pending "fetch now" wake-up is enough; when full a
        // fetch is already due, so further requests are dropped.
        let (wake_tx, wake_rx) = mpsc::channel(1);
        if let Some(address) = config.zmq_hashblock.clone() {
            tokio::spawn(zmq_hashblock_task(
                address,
                wake_tx.clone(),
                shutdown.clone(),
            ));
        }
        let (chain_info_tx, chain_info_rx) = watch::channel(None);
        tokio::spawn(chain_info_loop(
            nodes.clone(),
            CHAIN_INFO_POLL,
            shutdown.clone(),
            chain_info_tx,
        ));
        let (intervals_tx, intervals_rx) = watch::channel(Intervals {
            block_poll: config.block_poll,
            update_interval: config.update_interval,
        });
        let task = tokio::spawn(watch_loop(
            nodes,
            intervals_rx,
            shutdown,
            template_tx,
            health_tx,
            wake_rx,
            config.tip_memory,
        ));
        RunningWatcher {
            templates: template_rx,
            health: health_rx,
            task,
            refresh: RefreshTrigger(wake_tx),
            chain_info: chain_info_rx,
            intervals: IntervalControl(Arc::new(intervals_tx)),
        }
    }
}

/// What [`TemplateWatcher::spawn_with_trigger`] hands back.
pub struct RunningWatcher {
    /// The latest template (`None` until the first).
    pub templates: watch::Receiver<Option<Arc<FetchedTemplate>>>,
    pub health: watch::Receiver<NodeHealth>,
    /// Ends when the shutdown token is cancelled.
    pub task: JoinHandle<()>,
    pub refresh: RefreshTrigger,
    /// The answering node's blocks, headers and peers, refreshed every
    /// [`CHAIN_INFO_POLL`]; `None` until known and while no node answers
    /// getblockchaininfo (an old value would hide that the node is gone).
    pub chain_info: watch::Receiver<Option<ChainInfo>>,
    /// Changes `block_poll` and `update_interval` while it runs.
    pub intervals: IntervalControl,
}

/// The two polling periods of a running watcher, changeable (a SIGHUP
/// reload): a change takes effect at once, counted from the last fetch.
#[derive(Clone, Debug)]
pub struct IntervalControl(Arc<watch::Sender<Intervals>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Intervals {
    block_poll: Duration,
    update_interval: Duration,
}

impl IntervalControl {
    /// Sets both periods; returns whether either changed.
    pub fn set(&self, block_poll: Duration, update_interval: Duration) -> bool {
        let new = Intervals {
            block_poll,
            update_interval,
        };
        self.0.send_if_modified(|current| {
            let changed = *current != new;
            *current = new;
            changed
        })
    }
}

/// Asks the watcher for a new template now.
#[derive(Clone, Debug)]
pub struct RefreshTrigger(mpsc::Sender<()>);

impl RefreshTrigger {
    /// Never blocks; a request while one is pending is merged into it.
    pub fn request(&self) {
        let _ = self.0.try_send(());
    }
}

/// A getblocktemplate answer's `previousblockhash`, if present and valid.
pub fn previous_hash_of(gbt: &Value) -> Option<BlockHash> {
    gbt.get("previousblockhash")
        .and_then(Value::as_str)
        .and_then(|s| BlockHash::from_str(s).ok())
}

fn set_health(health_tx: &watch::Sender<NodeHealth>, health: NodeHealth) {
    health_tx.send_if_modified(|current| {
        match (&*current, &health) {
            (NodeHealth::AllDown { .. }, NodeHealth::AllDown { .. }) => {}
            (_, NodeHealth::AllDown { .. }) => {
                tracing::warn!("every Bitcoin Core node is unreachable: miners keep the last work until one is back");
            }
            (NodeHealth::Behind { .. }, NodeHealth::Behind { .. }) => {}
            (_, NodeHealth::Behind { .. }) => {
                tracing::warn!("every answering Bitcoin Core node is behind the best known tip: miners keep the work on it");
            }
            (NodeHealth::AllDown { since }, NodeHealth::Up { node_index }) => {
                tracing::info!(node_index, down_for = ?since.elapsed(), "a Bitcoin Core node is reachable again");
            }
            _ => {}
        }
        // Keep the first `since` while still down (or behind).
        let unchanged = match (&*current, &health) {
            (NodeHealth::AllDown { .. }, NodeHealth::AllDown { .. }) => true,
            (NodeHealth::Behind { .. }, NodeHealth::Behind { .. }) => true,
            (a, b) => a == b,
        };
        if !unchanged {
            *current = health;
        }
        !unchanged
    });
}

async fn watch_loop(
    nodes: Arc<NodeSet>,
    mut intervals: watch::Receiver<Intervals>,
    shutdown: CancellationToken,
    template_tx: watch::Sender<Option<Arc<FetchedTemplate>>>,
    health_tx: watch::Sender<NodeHealth>,
    mut zmq_rx: mpsc::Receiver<()>,
    tip_memory: Duration,
) {
    let mut need_fetch = true;
    let mut backoff = MIN_BACKOFF;
    let mut retry_at = Instant::now();
    let mut config = *intervals.borrow_and_update();
    // When the last template came: the next refresh is due a period later
    // (so a reloaded period counts from it).
    let mut last_fetch = Instant::now();
    let mut intervals_open = true;
    let mut current_prev: Option<BlockHash> = None;
    let mut zmq_open = true;
    // Every node's best block, each in its own task at `block_poll`.
    let (period_tx, period_rx) = watch::channel(config.block_poll);
    let (survey_tx, mut survey_rx) = mpsc::channel(4 * nodes.len().max(1));
    for index in 0..nodes.len() {
        tokio::spawn(tip::survey_node(
            nodes.clone(),
            index,
            period_rx.clone(),
            survey_tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(survey_tx);
    let mut survey_open = !nodes.is_empty();
    let mut book = TipBook::new(nodes.len(), tip_memory);
    // The pending fetch was asked for only by a survey that saw another
    // tip: a template on the current tip is then not published again.
    let mut new_tip_only = false;

    loop {
        // A silent node's tip forgotten: the best tip may now be another.
        if book.expire(Instant::now()) {
            if !need_fetch {
                need_fetch = true;
                new_tip_only = true;
            }
            retry_at = Instant::now();
        }
        if need_fetch && Instant::now() >= retry_at {
            let asked = Instant::now();
            let best_asked = book.best_hash();
            match nodes.get_block_template_at_tip(book.best.as_ref()).await {
                Ok(search) => {
                    for (index, tip) in &search.behind {
                        book.set_lagging(&nodes, *index, Some(tip));
                        book.report(*index, tip, asked);
                    }
                    // A node that had the best tip builds on a lower one
                    // now: the best tip moved, ask again at once.
                    let best_moved = book.best_hash() != best_asked;
                    match search.found {
                        Some((node_index, gbt, tip)) => {
                            book.set_lagging(&nodes, node_index, None);
                            if let Some(tip) = &tip {
                                book.report(node_index, tip, asked);
                            }
                            let prev = previous_hash_of(&gbt);
                            let new_block = current_prev.is_none() || prev != current_prev;
                            if new_block || !new_tip_only {
                                current_prev = prev;
                                let fetched_at = Instant::now();
                                template_tx.send_replace(Some(Arc::new(FetchedTemplate {
                                    gbt,
                                    node_index,
                                    fetched_at,
                                    new_block,
                                })));
                                last_fetch = fetched_at;
                            }
                            set_health(&health_tx, NodeHealth::Up { node_index });
                            need_fetch = false;
                            backoff = MIN_BACKOFF;
                        }
                        None => {
                            // Every node that answered is behind the best
                            // tip: miners keep the work on it, and the pool
                            // is not ready (that work may be going stale).
                            // A survey that sees a node catch up asks again;
                            // after a failure on the way, so does the
                            // backoff; the best tip's word expiring, too.
                            set_health(
                                &health_tx,
                                NodeHealth::Behind {
                                    since: Instant::now(),
                                },
                            );
                            if best_moved {
                                retry_at = Instant::now();
                            } else if search.failures > 0 {
                                retry_at = Instant::now() + backoff;
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            } else {
                                need_fetch = false;
                                last_fetch = Instant::now();
                            }
                        }
                    }
                    new_tip_only = false;
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot fetch a block template");
                    set_health(
                        &health_tx,
                        NodeHealth::AllDown {
                            since: Instant::now(),
                        },
                    );
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    new_tip_only = false;
                }
            }
        }

        let next_refresh = last_fetch + config.update_interval;
        let mut wake_at = if need_fetch { retry_at } else { next_refresh };
        if let Some(expiry) = book.next_expiry() {
            wake_at = wake_at.min(expiry);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            message = zmq_rx.recv(), if zmq_open => {
                match message {
                    Some(()) => {
                        need_fetch = true;
                        new_tip_only = false;
                        retry_at = Instant::now();
                    }
                    None => zmq_open = false,
                }
                continue;
            }
            changed = intervals.changed(), if intervals_open => {
                if changed.is_err() {
                    intervals_open = false;
                    continue;
                }
                config = *intervals.borrow_and_update();
                period_tx.send_replace(config.block_poll);
                continue;
            }
            report = survey_rx.recv(), if survey_open => {
                let Some((index, answer, asked)) = report else {
                    survey_open = false;
                    continue;
                };
                match answer {
                    Ok(tip) => {
                        let was_down = matches!(*health_tx.borrow(), NodeHealth::AllDown { .. });
                        let best_before = book.best_hash();
                        let order = book.report(index, &tip, asked);
                        if !order.is_followed() {
                            book.set_lagging(&nodes, index, Some(&tip));
                        }
                        // Another tip to follow, a node that answers again,
                        // or a best tip that moved (its node reported
                        // another one).
                        let best_moved = book.best_hash() != best_before
                            && book.best_hash() != current_prev;
                        let follow = order.is_followed() && Some(tip.hash) != current_prev;
                        if was_down || follow || best_moved {
                            if !need_fetch {
                                need_fetch = true;
                                new_tip_only = !was_down;
                            }
                            retry_at = Instant::now();
                        }
                    }
                    Err(()) => {
                        let all_failed = book.failed(index, asked);
                        if !all_failed && !need_fetch {
                            // Whether another node has the best tip, or
                            // every answering one is behind (readiness).
                            need_fetch = true;
                            new_tip_only = true;
                            retry_at = Instant::now();
                        }
                        if all_failed {
                            tracing::debug!("no node answers getbestblockhash");
                            set_health(
                                &health_tx,
                                NodeHealth::AllDown {
                                    since: Instant::now(),
                                },
                            );
                            if !need_fetch {
                                need_fetch = true;
                                new_tip_only = false;
                                retry_at = Instant::now() + backoff;
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                    }
                }
                continue;
            }
        }

        if need_fetch {
            continue;
        }
        if Instant::now() >= next_refresh {
            need_fetch = true;
            new_tip_only = false;
        }
    }
}

/// Publishes [`NodeSet::chain_info`] every `period` until `shutdown`.
async fn chain_info_loop(
    nodes: Arc<NodeSet>,
    period: Duration,
    shutdown: CancellationToken,
    chain_info_tx: watch::Sender<Option<ChainInfo>>,
) {
    let mut ticker = tokio::time::interval(period);
    // After a slow answer, poll again one period later, not in a burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let info = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = nodes.chain_info() => match result {
                Ok(info) => Some(info),
                Err(error) => {
                    tracing::debug!(%error, "cannot read the node's chain info");
                    None
                }
            },
        };
        chain_info_tx.send_replace(info);
    }
}

/// Subscribes to Core's `hashblock` topic and wakes the watcher on each
/// message; reconnects with backoff when the socket fails.
// TODO: zeromq 0.4 does not report a silently vanished publisher; polling
// (block_poll) stays on as the safety net, so a dead ZMQ link only costs
// latency.
async fn zmq_hashblock_task(address: String, wake: mpsc::Sender<()>, shutdown: CancellationToken) {
    use zeromq::{Socket, SocketRecv};
    let mut backoff = MIN_BACKOFF;
    loop {
        let session = async {
            let mut socket = zeromq::SubSocket::new();
            socket.connect(&address).await?;
            socket.subscribe("hashblock").await?;
            tracing::debug!(%address, "zmq hashblock subscribed");
            backoff = MIN_BACKOFF;
            loop {
                let message = socket.recv().await?;
                let is_hashblock = message
                    .get(0)
                    .is_some_and(|topic| topic.as_ref() == b"hashblock");
                if is_hashblock {
                    // Full means a fetch is already pending: dropping is fine.
                    let _ = wake.try_send(());
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), zeromq::ZmqError>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => {
                if let Err(error) = result {
                    tracing::debug!(%address, %error, "zmq hashblock connection failed");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_ZMQ_BACKOFF);
    }
}
