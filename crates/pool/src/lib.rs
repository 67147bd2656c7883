//! The solo-mining Stratum V1 server.
//!
//! Layers, each knowing only the one below: `server` (accept loop, limits,
//! shutdown) -> `session` (one connection: lines -> requests -> answers) ->
//! `tbg-stratum` (messages) and `tbg-work` (jobs, shares). Work comes in
//! through `work_source` from the node watcher; found blocks leave through
//! `blocks`; events go to an `EventSink`.
#![forbid(unsafe_code)]

pub mod blocks;
pub mod coalesce;
pub mod counters;
pub mod extranonce;
mod guard;
pub mod limits;
mod link;
mod listen;
pub mod memory;
mod notify;
mod server;
pub mod service;
pub mod session;
pub mod settings;
mod sniff;
pub mod stats;
pub mod sv2;
pub mod tls;
pub mod usersig;
pub mod view;
pub mod work_source;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tbg_events::{EventData, EventFactory, EventSink};
use tbg_journal::Journal;
use tbg_node::{FetchedTemplate, NodeHealth, NodeSet, RefreshTrigger};
use tokio::sync::{mpsc, watch};

/// How long a graceful stop waits for blocks still being submitted: the
/// default node RPC timeout, so a node that is down cannot hold it longer.
pub const BLOCK_SUBMIT_GRACE: Duration = Duration::from_secs(10);

pub use blocks::{
    BlockRecord, BlockStatus, BlockStore, BlockStoreError, FoundBlock, RelayedBlock,
    RelayedBlockError, StoredBlock,
};
pub use counters::PoolCounters;
pub use link::PoolLink;
pub use service::{NodeSettings, PoolService, RegionWiring, ServiceError, Templates};
pub use settings::PoolSettings;
pub use stats::{StatsRegistry, UserSnapshot, WorkerSnapshot};
pub use view::{PoolStatus, PoolView};
pub use work_source::CurrentWork;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot listen for miners on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Found blocks could not be kept: the pool does not start without
    /// the store it was configured with.
    #[error(transparent)]
    BlockStore(#[from] BlockStoreError),
    /// The TLS port's certificate or key does not load.
    #[error("stratum_tls: {0}")]
    Tls(#[from] tls::TlsError),
}

/// State every session shares.
pub(crate) struct PoolShared {
    /// The settings the pool started with; the keys a reload may change are
    /// read from `live()` instead.
    pub(crate) settings: PoolSettings,
    /// The current settings, swapped by `PoolHandle::reload` (SIGHUP).
    live: parking_lot::RwLock<Arc<PoolSettings>>,
    /// Bumped after each swap of `live`: sessions re-read their cached copy
    /// only when it moved (one atomic load per line, not a lock).
    pub(crate) live_generation: AtomicU64,
    /// The abuse limits' per-source table and log budget.
    pub(crate) guard: guard::Guard,
    pub(crate) extranonces: extranonce::ExtranonceAllocator,
    pub(crate) stats: StatsRegistry,
    pub(crate) user_sigs: Arc<usersig::UserSigCache>,
    /// Swapped when a reload changes the Redis URL.
    user_sig_requests: parking_lot::RwLock<Option<mpsc::Sender<String>>>,
    pub(crate) difficulty_memory: memory::DifficultyMemory,
    pub(crate) counters: Arc<PoolCounters>,
    pub(crate) blocks: blocks::BlockLog,
    /// Hashes of the blocks already handed to `block_found`: one solution
    /// is submitted once, however often and on whatever connection it
    /// arrives (sessions claim it in their share verdict).
    pub(crate) found_blocks: parking_lot::Mutex<tbg_work::FoundBlocks>,
    /// Found blocks on disk (`None`: in memory only).
    pub(crate) block_store: Option<BlockStore>,
    /// Cancelled when the pool stops: ends the block keepers' retries
    /// (the store has what they had not finished).
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// Cancelled when a graceful stop's time for the connections is up:
    /// each session still open ends at its next wait (a read, a write, the
    /// journal), so that no share is judged after the stop stopped waiting
    /// for the blocks being stored and submitted.
    pub(crate) sessions_stop: tokio_util::sync::CancellationToken,
    events: Arc<dyn EventSink>,
    pub(crate) journal: Option<Journal>,
    event_factory: EventFactory,
    job_counter: AtomicU64,
    client_counter: AtomicU64,
    nodes: Arc<NodeSet>,
    node_health: watch::Receiver<NodeHealth>,
    pub(crate) refresh: Option<RefreshTrigger>,
    /// Blocks being submitted to the nodes: a graceful stop waits for them.
    pub(crate) block_submissions: tokio_util::task::TaskTracker,
    /// A relay region's link to its primary: each block this pool's miners
    /// find, once it is in the block store.
    block_tap: Option<mpsc::Sender<StoredBlock>>,
    epoch: Instant,
}

impl PoolShared {
    /// Records an event: into the journal first (returns its seq, 0 without
    /// a journal or when the journal refused it), then to the best-effort
    /// sinks. Use [`PoolShared::try_emit`] where a refusal matters.
    pub(crate) fn emit(&self, data: EventData) -> u64 {
        self.try_emit(data).unwrap_or(0)
    }

    /// Like `emit`, but `None` when the journal refused the event (its ring
    /// is full because SQLite is failing, or its file cannot be written):
    /// nothing that depends on it may be confirmed. The datagram sink still
    /// gets it, and a refused block event is logged whole at error level,
    /// because a block is submitted to the node regardless.
    pub(crate) fn try_emit(&self, data: EventData) -> Option<u64> {
        let mut event = self.event_factory.make(data);
        self.counters.event_emitted();
        // Serialized once, for the journal and the datagram sink.
        let json = event.to_json();
        let journaled = match &self.journal {
            None => Some(0),
            Some(journal) => match journal.append_serialized(&event, &json) {
                Ok(seq) => Some(seq),
                Err(error) => {
                    if matches!(
                        event.data,
                        EventData::BlockFound { .. } | EventData::BlockSubmitted { .. }
                    ) {
                        tracing::error!(%error, event = %event.to_json(),
                            "block event NOT journaled; it is only in this log and the datagram socket");
                    }
                    // The miner hears "Journal full" for such a share: the
                    // sinks hear the same, not "accepted".
                    if let EventData::ShareSubmitted {
                        accepted,
                        reject_reason,
                        ..
                    } = &mut event.data
                    {
                        if *accepted {
                            *accepted = false;
                            *reject_reason =
                                Some(tbg_stratum::RejectReason::JournalFull.message().to_owned());
                        }
                    }
                    None
                }
            },
        };
        if journaled.is_some() {
            self.events.emit_serialized(event, &json);
        } else {
            // The share may have been rewritten to "Journal full" above.
            self.events.emit(event);
        }
        journaled
    }

    /// Seconds since the pool started: the clock vardiff runs on.
    pub(crate) fn seconds(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.epoch).as_secs_f64()
    }

    /// A new connection's (or V2 channel's) client id.
    pub(crate) fn next_client_id(&self) -> u64 {
        self.client_counter.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn next_job_id(&self) -> u64 {
        self.job_counter.fetch_add(1, Ordering::Relaxed)
    }

    /// The settings now in force (see `PoolHandle::reload`).
    pub(crate) fn live(&self) -> Arc<PoolSettings> {
        self.live.read().clone()
    }

    pub(crate) fn request_user_sig(&self, address: &str) {
        if let Some(requests) = self.user_sig_requests.read().as_ref() {
            // Full: the periodic refresh picks the address up instead.
            let _ = requests.try_send(address.to_string());
        }
    }

    /// Stores and submits a found block; the receiver resolves once it is
    /// in the block store (or the store failed).
    pub(crate) fn block_found(
        self: &Arc<Self>,
        block: FoundBlock,
    ) -> tokio::sync::oneshot::Receiver<()> {
        blocks::keeper::found(self, block)
    }

    /// Hands a block this pool found to the relay link, if there is one.
    /// Never waits: when the link's queue is full the block is still in the
    /// store, which the link reads again on every connect and every
    /// rescan.
    pub(crate) fn forward_found_block(&self, block: &StoredBlock) {
        if let Some(tap) = &self.block_tap {
            if tap.try_send(block.clone()).is_err() {
                tracing::warn!(hash = %block.hash,
                    "relay link queue full; the block goes to the primary from the block store");
            }
        }
    }
}

/// Everything the pool needs from outside.
pub struct PoolDeps {
    /// Templates from the node watcher (`None` until the first one).
    pub templates: watch::Receiver<Option<Arc<FetchedTemplate>>>,
    /// Whether any node answers (from the same watcher).
    pub node_health: watch::Receiver<NodeHealth>,
    /// Asks the watcher for a new template (after one of our blocks is accepted).
    pub refresh: Option<RefreshTrigger>,
    /// Where found blocks go.
    pub nodes: Arc<NodeSet>,
    /// Best-effort sinks (the plan's datagram socket).
    pub events: Arc<dyn EventSink>,
    /// The durable journal: when set, a miner hears "accepted" only once the
    /// events of its share are committed.
    pub journal: Option<Journal>,
    pub event_factory: EventFactory,
    /// A relay region: every block found here, once stored, for the link
    /// to the primary (bounded by the caller's channel).
    pub block_tap: Option<mpsc::Sender<StoredBlock>>,
}

/// A running pool.
pub struct PoolHandle {
    local_addr: SocketAddr,
    /// The TLS port and what it serves, when there is one.
    tls: Option<(SocketAddr, Arc<tls::TlsPort>)>,
    sv2_addr: Option<SocketAddr>,
    shared: Arc<PoolShared>,
    work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
    shutdown_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The Redis signature refresher; replaced when a reload changes the URL.
    user_sig_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Starts the pool: binds the stratum port, then serves until shutdown.
pub async fn start(settings: PoolSettings, deps: PoolDeps) -> Result<PoolHandle, PoolError> {
    // Before the port opens: a pool that cannot keep its blocks does not
    // mine, and blocks of an earlier run are resumed from the start.
    let (block_store, stored_blocks) = match settings.block_dir.clone() {
        Some(dir) => {
            let opened = tokio::task::spawn_blocking(move || {
                let store = BlockStore::open(dir)?;
                let loaded = store.load()?;
                Ok::<_, BlockStoreError>((store, loaded))
            })
            .await
            .map_err(|e| BlockStoreError::Io {
                dir: settings.block_dir.clone().unwrap_or_default(),
                action: "opening",
                source: std::io::Error::other(e),
            })??;
            (Some(opened.0), Some(opened.1))
        }
        None => {
            tracing::warn!(
                "no block store: a found block no node took yet is lost if the pool stops"
            );
            (None, None)
        }
    };
    let ports = listen::open_ports(&settings).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let user_sigs = Arc::new(usersig::UserSigCache::default());
    let stats = StatsRegistry::default();
    let mut background = Vec::new();

    let shared = Arc::new(PoolShared {
        extranonces: extranonce::ExtranonceAllocator::with_prefix(
            settings.extranonce1_len,
            settings.session_resume_window,
            settings.instance_id,
        ),
        difficulty_memory: memory::DifficultyMemory::new(settings.difficulty_memory),
        live: parking_lot::RwLock::new(Arc::new(settings.clone())),
        live_generation: AtomicU64::new(0),
        guard: guard::Guard::new(&settings.limits, Instant::now()),
        settings,
        stats,
        user_sigs,
        user_sig_requests: parking_lot::RwLock::new(None),
        counters: Arc::new(PoolCounters::default()),
        blocks: blocks::BlockLog::default(),
        found_blocks: parking_lot::Mutex::default(),
        block_store,
        stopping: tokio_util::sync::CancellationToken::new(),
        sessions_stop: tokio_util::sync::CancellationToken::new(),
        events: deps.events,
        journal: deps.journal,
        event_factory: deps.event_factory,
        job_counter: AtomicU64::new(rand::random::<u32>().into()),
        client_counter: AtomicU64::new(1),
        nodes: deps.nodes,
        node_health: deps.node_health,
        refresh: deps.refresh,
        block_submissions: tokio_util::task::TaskTracker::new(),
        block_tap: deps.block_tap,
        epoch: Instant::now(),
    });
    if let Some(loaded) = stored_blocks {
        blocks::keeper::resume(&shared, loaded);
    }
    let user_sig_task = shared
        .settings
        .redis_url
        .clone()
        .map(|url| usersig::spawn_for_pool(&shared, url, shutdown_rx.clone()));

    let (work_tx, work_rx) = watch::channel(None);
    background.push(tokio::spawn(work_source::run(
        shared.clone(),
        deps.templates,
        work_tx,
    )));
    background.push(tokio::spawn(maintenance(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    let servers: Vec<_> = ports
        .listeners
        .into_iter()
        .map(|(listener, port)| {
            server::serve(
                listener,
                shared.clone(),
                work_rx.clone(),
                shutdown_rx.clone(),
                port,
            )
        })
        .collect();
    // One task for every port: a stop waits for the connections of each.
    let server = tokio::spawn(async move {
        futures::future::join_all(servers).await;
    });
    Ok(PoolHandle {
        local_addr: ports.stratum,
        tls: ports.tls,
        sv2_addr: ports.sv2,
        shared,
        work_rx,
        shutdown_tx,
        server,
        background,
        user_sig_task: parking_lot::Mutex::new(user_sig_task),
    })
}

/// Prunes idle records now and then so memory stays bounded.
async fn maintenance(shared: Arc<PoolShared>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {
                let now = Instant::now();
                shared.difficulty_memory.prune(now);
                shared.stats.prune(shared.settings.difficulty_memory, now);
            }
        }
    }
}

impl PoolHandle {
    /// The stratum address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Stratum V2 port actually bound, when `[stratum_v2]` is on.
    pub fn sv2_addr(&self) -> Option<SocketAddr> {
        self.sv2_addr
    }

    /// The TLS port actually bound, when `[stratum_tls]` is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|(addr, _)| *addr)
    }

    /// Reads the TLS certificate and key again (SIGHUP: certbot renewed
    /// them) from the paths of `new` and serves them to the next TLS
    /// connections; connected miners keep their session. A pair that does
    /// not load changes nothing. `Ok(None)` without a TLS port; otherwise
    /// the fingerprint now served.
    pub async fn reload_tls(
        &self,
        new: Option<&tls::TlsSettings>,
    ) -> Result<Option<String>, tls::TlsError> {
        let Some((_, port)) = &self.tls else {
            return Ok(None);
        };
        // The bind and the timeout stay as started; the files may move.
        let mut paths = port.settings.clone();
        if let Some(new) = new {
            paths.cert_file = new.cert_file.clone();
            paths.key_file = new.key_file.clone();
        }
        let identity = tls::load_identity(&paths).await?;
        let fingerprint = identity.fingerprint.clone();
        *port.identity.write() = identity;
        Ok(Some(fingerprint))
    }

    pub fn counters(&self) -> &PoolCounters {
        &self.shared.counters
    }

    pub fn stats(&self) -> &StatsRegistry {
        &self.shared.stats
    }

    pub fn blocks(&self) -> Vec<BlockRecord> {
        self.shared.blocks.records()
    }

    /// The work currently handed to miners.
    pub fn current_work(&self) -> Option<Arc<CurrentWork>> {
        self.work_rx.borrow().clone()
    }

    /// Waits until work is available or `timeout` passes.
    pub async fn wait_for_work(&self, timeout: Duration) -> Option<Arc<CurrentWork>> {
        let mut rx = self.work_rx.clone();
        let wait = async move {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|work| work.clone())
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// What the relay link may do with this pool.
    pub fn link(&self) -> PoolLink {
        PoolLink::new(self.shared.clone())
    }

    /// A cloneable read-only view for the metrics and status endpoints.
    pub fn view(&self) -> PoolView {
        PoolView::new(self.shared.clone(), self.work_rx.clone())
    }

    pub fn status(&self) -> PoolStatus {
        self.view().status()
    }

    /// Graceful stop: stop accepting, tell every miner to reconnect while
    /// still answering what it had already sent, wait (at most `grace`) for
    /// the connections to close, then for blocks still being submitted (at
    /// most [`BLOCK_SUBMIT_GRACE`]), then commit the journal.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown_tx.send(true);
        let mut server = self.server;
        if tokio::time::timeout(grace, &mut server).await.is_err() {
            // Connections still open (a miner that does not read, a write
            // waiting for its timeout): they end now, at their next wait.
            // A share judged before that has its block, if it was one, in
            // `block_submissions` already; none is judged after.
            self.shared.sessions_stop.cancel();
            if tokio::time::timeout(session::SESSION_STOP_WAIT, &mut server)
                .await
                .is_err()
            {
                tracing::error!("stopping: connections still open after they were told to end");
            }
        }
        // A block found in the last moments is worth a longer stop: its
        // submission and its `block_submitted` event are not cut short.
        let submissions = &self.shared.block_submissions;
        submissions.close();
        if !submissions.is_empty() {
            tracing::info!(
                blocks = submissions.len(),
                "stopping: waiting for block submissions"
            );
            if tokio::time::timeout(BLOCK_SUBMIT_GRACE, submissions.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    blocks = submissions.len(),
                    durable = self.shared.block_store.is_some(),
                    "stopping with block submissions unanswered by the nodes; the block store has them for the next start"
                );
            }
        }
        self.shared.stopping.cancel();
        for task in self.background {
            task.abort();
        }
        if let Some(task) = self.user_sig_task.lock().take() {
            task.abort();
        }
        // Disconnect events are in the journal queue: commit them.
        if let Some(journal) = self.shared.journal.clone() {
            if let Err(error) = journal.close().await {
                tracing::error!(%error, "journal flush at shutdown failed");
            }
        }
    }

    /// Applies the settings that can change while miners are connected (see
    /// [`settings::LIVE_SETTINGS`]); the others keep their running values.
    /// Connected miners keep their difficulty; new ones get the new
    /// settings; the pool tag goes into the next job. Returns what changed.
    pub fn reload(&self, new: &PoolSettings) -> Vec<settings::SettingChange> {
        let current = self.shared.live();
        let (next, changes) = current.with_live_from(new);
        if changes.is_empty() {
            return changes;
        }
        let redis_changed = next.redis_url != current.redis_url;
        *self.shared.live.write() = Arc::new(next.clone());
        self.shared.live_generation.fetch_add(1, Ordering::Release);
        if redis_changed {
            let mut task = self.user_sig_task.lock();
            if let Some(old) = task.take() {
                old.abort();
            }
            *self.shared.user_sig_requests.write() = None;
            *task = next.redis_url.clone().map(|url| {
                usersig::spawn_for_pool(&self.shared, url, self.shutdown_tx.subscribe())
            });
        }
        changes
    }

    /// The settings now in force.
    pub fn live_settings(&self) -> Arc<PoolSettings> {
        self.shared.live()
    }

    /// The journal, when the pool has one.
    pub fn journal(&self) -> Option<&Journal> {
        self.shared.journal.as_ref()
    }
}
