//! The relay's side of the link: connects out to the primary, mines its
//! templates while it is heard, fails over to the local node's after the
//! failover timeout and back once the primary is steady (see
//! [`crate::failover`]), and sends every block its miners find to the
//! primary until the primary says it stored it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tbg_events::EventData;
use tbg_node::FetchedTemplate;
use tbg_pool::{BlockStatus, PoolLink, StoredBlock, Templates};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::failover::{Failover, Source, Switch};
use crate::primary::{tip_of, unix_ms, AbortOnDrop};
use crate::wire::{forward_lines, read_line, write_line, WireError};
use crate::{Body, LinkError, LinkSession, RelayHandshake};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The primary's relay link, `host:port`.
    pub primary: String,
    pub secret: Vec<u8>,
    /// This region's name.
    pub region: String,
    pub instance_id: u8,
    pub heartbeat: Duration,
    pub failover_timeout: Duration,
    pub failback_after: Duration,
    /// Longest wait for a TCP connection and the handshake.
    pub connect_timeout: Duration,
    /// Longest wait between two connection attempts.
    pub retry_max: Duration,
}

impl RelayConfig {
    pub fn new(primary: &str, secret: &[u8], region: &str, instance_id: u8) -> RelayConfig {
        RelayConfig {
            primary: primary.to_owned(),
            secret: secret.to_vec(),
            region: region.to_owned(),
            instance_id,
            heartbeat: Duration::from_secs(3),
            failover_timeout: Duration::from_secs(10),
            failback_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// The relay side as `/status`, metrics and the health monitor show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayStatus {
    /// `starting`, `primary` or `local`: whose templates the miners get.
    pub source: &'static str,
    /// The primary's region, once a handshake told it.
    pub primary_region: Option<String>,
    /// The link is up (authenticated).
    pub connected: bool,
    /// Seconds since the primary was last heard.
    pub primary_silent_s: Option<f64>,
    pub failovers: u64,
    pub failbacks: u64,
    /// Blocks sent to the primary (again after a reconnect counts again).
    pub blocks_sent: u64,
    /// Blocks the primary said it stored.
    pub blocks_stored_by_primary: u64,
    /// Blocks found here the primary has not confirmed storing yet.
    pub blocks_unconfirmed: u64,
    /// Why the link went down or could not be set up, last time.
    pub last_error: Option<String>,
    /// Blocks the primary's template is behind this relay's own node while
    /// `source` is `primary`: the miners get the local node's templates
    /// until the primary catches up (its tip is stale here). 0 otherwise.
    pub primary_behind_blocks: u64,
}

/// What the connection tells the selector.
enum LinkEvent {
    Up,
    Heard,
    Template(serde_json::Value),
    Lost(String),
}

struct Shared {
    config: RelayConfig,
    status: Mutex<RelayStatus>,
    failover: Mutex<Failover>,
    pool: OnceLock<PoolLink>,
    /// The local node's tip height, for the relay's heartbeats.
    local_height: AtomicU64,
    stop: CancellationToken,
}

/// A running relay side.
pub struct RelayLink {
    shared: Arc<Shared>,
    events: Mutex<Option<mpsc::Receiver<LinkEvent>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RelayLink {
    /// Starts connecting to the primary. `blocks`: the pool's found blocks
    /// (its `block_tap`). Give the pool [`RelayLink::router`] as its
    /// template route, then [`RelayLink::attach`] the started pool.
    pub fn start(config: RelayConfig, blocks: mpsc::Receiver<StoredBlock>) -> Arc<RelayLink> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            failover: Mutex::new(Failover::new(
                config.failover_timeout,
                config.failback_after,
                now,
            )),
            config,
            status: Mutex::new(RelayStatus {
                source: Source::Starting.as_str(),
                ..RelayStatus::default()
            }),
            pool: OnceLock::new(),
            local_height: AtomicU64::new(0),
            stop: CancellationToken::new(),
        });
        let (events_tx, events_rx) = mpsc::channel(64);
        let connection = tokio::spawn(connect_loop(shared.clone(), events_tx, blocks));
        Arc::new(RelayLink {
            shared,
            events: Mutex::new(Some(events_rx)),
            tasks: Mutex::new(vec![connection]),
        })
    }

    /// The pool's template route: takes the local node's templates,
    /// returns what the miners get.
    pub fn router(self: &Arc<Self>) -> Box<dyn FnOnce(Templates) -> Templates + Send> {
        let link = self.clone();
        Box::new(move |local: Templates| {
            let (out_tx, out_rx) = watch::channel(None);
            let events = link.events.lock().take().expect("the router is used once");
            let task = tokio::spawn(select_loop(link.shared.clone(), local, events, out_tx));
            link.tasks.lock().push(task);
            out_rx
        })
    }

    /// The started pool: for the region events and the block store.
    pub fn attach(&self, pool: PoolLink) {
        let _ = self.shared.pool.set(pool);
    }

    pub fn status(&self) -> RelayStatus {
        let mut status = self.shared.status.lock().clone();
        status.primary_silent_s = self
            .shared
            .failover
            .lock()
            .silence(Instant::now())
            .map(|d| d.as_secs_f64());
        status
    }

    pub async fn stop(&self) {
        self.shared.stop.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Feeds the pool the primary's or the local node's templates.
async fn select_loop(
    shared: Arc<Shared>,
    mut local: Templates,
    mut events: mpsc::Receiver<LinkEvent>,
    out: watch::Sender<Option<Arc<FetchedTemplate>>>,
) {
    let mut primary_template: Option<Arc<FetchedTemplate>> = None;
    // On the primary's source but mining the local node's work: it is ahead.
    let mut ahead_locally = false;
    // Since when, and whether that was logged.
    let mut behind_since: Option<(Instant, bool)> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `new_block` is the switch of source alone: a new tip is seen by the
    // pool itself (its previous block changes), and the same tip from the
    // other source (the primary catching up with our node) must not make
    // the miners drop their work a second time.
    let publish = |template: Option<Arc<FetchedTemplate>>, switched: bool| {
        if let Some(template) = template {
            let template = if template.new_block || switched {
                Arc::new(FetchedTemplate {
                    new_block: switched,
                    fetched_at: if switched {
                        Instant::now()
                    } else {
                        template.fetched_at
                    },
                    ..(*template).clone()
                })
            } else {
                template
            };
            out.send_replace(Some(template));
        }
    };
    // Miners get work at once: the local node's, until the primary is heard.
    let first = local.borrow_and_update().clone();
    if let Some((height, _)) = first.as_ref().and_then(|t| tip_of(&t.gbt)) {
        shared.local_height.store(height, Ordering::Relaxed);
    }
    publish(first, false);
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            changed = local.changed() => {
                if changed.is_err() {
                    return;
                }
                let template = local.borrow_and_update().clone();
                if let Some(height) = template.as_ref().and_then(|t| tip_of(&t.gbt)) {
                    shared.local_height.store(height.0, Ordering::Relaxed);
                }
                if ahead_locally || !shared.failover.lock().source().is_primary() {
                    publish(template, false);
                }
            }
            event = events.recv() => {
                let Some(event) = event else { return };
                let now = Instant::now();
                match event {
                    LinkEvent::Up => {}
                    LinkEvent::Heard => shared.failover.lock().heard(now),
                    LinkEvent::Template(gbt) => {
                        shared.failover.lock().heard(now);
                        let new_block = primary_template.as_ref().map(|t| t.previous_block_hash())
                            != Some(tbg_node::previous_hash_of(&gbt));
                        let template = Arc::new(FetchedTemplate {
                            gbt,
                            node_index: 0,
                            fetched_at: now,
                            new_block,
                        });
                        primary_template = Some(template.clone());
                        if !ahead_locally && shared.failover.lock().source().is_primary() {
                            publish(Some(template), false);
                        }
                    }
                    LinkEvent::Lost(reason) => shared.failover.lock().lost(&reason),
                }
            }
            _ = ticker.tick() => {}
        }
        let switch = shared
            .failover
            .lock()
            .poll(Instant::now(), primary_template.is_some());
        // A primary whose node lags (or is on a shorter fork) would have
        // our miners build on a tip this region's node has passed: their
        // blocks could only be orphaned. The local node's work meanwhile;
        // the primary's again once it is level (no failover: it is heard).
        let behind = primary_behind(&shared, primary_template.as_deref());
        shared.status.lock().primary_behind_blocks = behind;
        let was_ahead = std::mem::replace(&mut ahead_locally, behind > 0);
        // Our node often hears of a block a moment before the primary's
        // template for it comes: only a lag that lasts is worth a warning.
        match (&behind_since, ahead_locally) {
            (None, true) => behind_since = Some((Instant::now(), false)),
            (Some((since, false)), true) if since.elapsed() >= LAG_WORTH_A_WARNING => {
                tracing::warn!(behind, lagging_s = since.elapsed().as_secs_f64(),
                    "relay: the primary's template is behind this region's node; mining the local node's until it catches up");
                behind_since = Some((*since, true));
            }
            (Some((since, warned)), false) => {
                if *warned && switch.is_none() {
                    tracing::info!(
                        lagged_s = since.elapsed().as_secs_f64(),
                        "relay: the primary caught up; mining its templates again"
                    );
                }
                behind_since = None;
            }
            _ => {}
        }
        match switch {
            Some(switch) => {
                on_switch(&shared, &switch);
                match switch {
                    Switch::Failover { .. } => publish(local.borrow().clone(), true),
                    Switch::Joined | Switch::Failback { .. } if ahead_locally => {
                        publish(local.borrow().clone(), true)
                    }
                    Switch::Joined | Switch::Failback { .. } => {
                        publish(primary_template.clone(), true)
                    }
                }
            }
            None if ahead_locally && !was_ahead => publish(local.borrow().clone(), false),
            None if was_ahead && !ahead_locally => publish(primary_template.clone(), false),
            None => {}
        }
    }
}

/// A primary behind for this long is logged (shorter: a block race).
const LAG_WORTH_A_WARNING: Duration = Duration::from_secs(2);

/// Blocks the primary's template is behind the local node's tip, while the
/// relay mines the primary's; 0 otherwise. Heights stand in for work: a
/// longer branch with less work is rare (testnet's minimum-difficulty
/// blocks can make one), and then the relay mines its node's tip for a
/// while, which that node considers best anyway.
fn primary_behind(shared: &Shared, primary: Option<&FetchedTemplate>) -> u64 {
    if !shared.failover.lock().source().is_primary() {
        return 0;
    }
    let Some((primary_height, _)) = primary.and_then(|t| tip_of(&t.gbt)) else {
        return 0;
    };
    shared
        .local_height
        .load(Ordering::Relaxed)
        .saturating_sub(primary_height)
}

fn on_switch(shared: &Shared, switch: &Switch) {
    let source = shared.failover.lock().source();
    let primary = {
        let mut status = shared.status.lock();
        status.source = source.as_str();
        match switch {
            Switch::Failover { .. } => status.failovers += 1,
            Switch::Failback { .. } => status.failbacks += 1,
            Switch::Joined => {}
        }
        status
            .primary_region
            .clone()
            .unwrap_or_else(|| shared.config.primary.clone())
    };
    let event = match switch {
        Switch::Joined => {
            tracing::info!(%primary, "relay: mining the primary's templates");
            return;
        }
        Switch::Failover { silent, reason } => {
            tracing::error!(%primary, silent_s = silent.as_secs_f64(), %reason,
                "relay FAILOVER: mining the local node's templates");
            EventData::RegionFailover {
                primary,
                silent_s: silent.as_secs_f64(),
                reason: reason.clone(),
            }
        }
        Switch::Failback {
            failed_over_for,
            steady_for,
        } => {
            tracing::warn!(%primary, failed_over_s = failed_over_for.as_secs_f64(),
                steady_s = steady_for.as_secs_f64(), "relay failback: mining the primary's templates again");
            EventData::RegionFailback {
                primary,
                failed_over_s: failed_over_for.as_secs_f64(),
                steady_s: steady_for.as_secs_f64(),
            }
        }
    };
    match shared.pool.get() {
        Some(pool) => {
            pool.emit(event);
        }
        None => tracing::warn!("relay: a switch before the pool started; not journaled"),
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Link(#[from] LinkError),
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = tokio::net::tcp::OwnedWriteHalf;

async fn connect(
    config: &RelayConfig,
) -> Result<(LinkSession, String, Reader, Writer), ConnectError> {
    let attempt = async {
        let stream = TcpStream::connect(&config.primary)
            .await
            .map_err(|e| ConnectError::Connect(config.primary.clone(), e))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut buffer = Vec::new();
        let mut handshake = RelayHandshake::new(
            &config.secret,
            &config.region,
            config.instance_id,
            rand::random(),
        );
        let challenge = read_line(&mut reader, &mut buffer).await?;
        write_line(&mut write, &handshake.on_challenge(&challenge)?).await?;
        let welcome = read_line(&mut reader, &mut buffer).await?;
        let (region, session) = handshake.on_welcome(&welcome)?;
        Ok((session, region, reader, write))
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout(config.connect_timeout)))
}

/// Blocks found here that the primary has not said it stored.
struct Outbox {
    blocks: HashMap<String, StoredBlock>,
    /// The block store was read for unsettled blocks at this time.
    scanned: Option<Instant>,
}

/// Bound of the outbox: blocks are rare; past this, the oldest waits for
/// the next store scan.
const OUTBOX_MAX: usize = 256;
/// The block store is read again at a connect at most this often.
const STORE_SCAN_EVERY: Duration = Duration::from_secs(600);

impl Outbox {
    /// A block found while the link is down: kept for the next connection.
    fn hold(&mut self, shared: &Shared, block: StoredBlock) {
        tracing::warn!(hash = %block.hash, height = block.height,
            "relay link: no link to the primary; the block is sent once there is one");
        self.add(block);
        shared.status.lock().blocks_unconfirmed = self.blocks.len() as u64;
    }

    fn add(&mut self, block: StoredBlock) {
        if self.blocks.len() >= OUTBOX_MAX && !self.blocks.contains_key(&block.hash) {
            if let Some(oldest) = self
                .blocks
                .values()
                .min_by_key(|b| b.found_at)
                .map(|b| b.hash.clone())
            {
                self.blocks.remove(&oldest);
            }
        }
        self.blocks.insert(block.hash.clone(), block);
    }

    /// At a connect: the store's unsettled blocks of this pool's miners.
    async fn scan_store(&mut self, shared: &Shared) {
        if self
            .scanned
            .is_some_and(|at| at.elapsed() < STORE_SCAN_EVERY)
        {
            return;
        }
        let Some(store) = shared.pool.get().and_then(PoolLink::block_store) else {
            return;
        };
        self.scanned = Some(Instant::now());
        match tokio::task::spawn_blocking(move || store.load()).await {
            Ok(Ok(loaded)) => {
                for block in loaded.blocks {
                    let unsettled =
                        matches!(block.status, BlockStatus::Pending | BlockStatus::Accepted);
                    if unsettled && block.origin.is_none() {
                        self.add(block);
                    }
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "relay: reading the block store"),
            Err(error) => tracing::warn!(%error, "relay: block store task"),
        }
    }
}

async fn connect_loop(
    shared: Arc<Shared>,
    events: mpsc::Sender<LinkEvent>,
    mut blocks: mpsc::Receiver<StoredBlock>,
) {
    let mut outbox = Outbox {
        blocks: HashMap::new(),
        scanned: None,
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        // Blocks found while there is no link wait in the outbox (and
        // `/status` counts them) until a connection sends them.
        let connecting = connect(&shared.config);
        tokio::pin!(connecting);
        let attempt = loop {
            tokio::select! {
                () = shared.stop.cancelled() => return,
                attempt = &mut connecting => break attempt,
                block = blocks.recv() => match block {
                    Some(block) => outbox.hold(&shared, block),
                    None => return,
                },
            }
        };
        let reason = match attempt {
            Err(error) => error.to_string(),
            Ok((session, region, reader, writer)) => {
                backoff = Duration::from_millis(250);
                tracing::info!(primary = %shared.config.primary, %region, "relay link: connected to the primary");
                {
                    let mut status = shared.status.lock();
                    status.connected = true;
                    status.primary_region = Some(region);
                }
                if events.send(LinkEvent::Up).await.is_err() {
                    return;
                }
                outbox.scan_store(&shared).await;
                match serve(
                    &shared,
                    session,
                    reader,
                    writer,
                    &events,
                    &mut blocks,
                    &mut outbox,
                )
                .await
                {
                    Ok(()) => return,
                    Err(error) => error.to_string(),
                }
            }
        };
        tracing::warn!(primary = %shared.config.primary, %reason, retry_in = ?backoff, "relay link: no link to the primary");
        {
            let mut status = shared.status.lock();
            status.connected = false;
            status.last_error = Some(reason.clone());
        }
        if events.send(LinkEvent::Lost(reason)).await.is_err() {
            return;
        }
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = shared.stop.cancelled() => return,
                () = &mut pause => break,
                block = blocks.recv() => match block {
                    Some(block) => outbox.hold(&shared, block),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(shared.config.retry_max);
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the primary was silent for {0:?}")]
    Silent(Duration),
}

/// One authenticated connection, until it fails (Ok: the relay stops).
async fn serve(
    shared: &Shared,
    mut session: LinkSession,
    reader: Reader,
    mut writer: Writer,
    events: &mpsc::Sender<LinkEvent>,
    blocks: &mut mpsc::Receiver<StoredBlock>,
    outbox: &mut Outbox,
) -> Result<(), ServeError> {
    let (lines_tx, mut lines) = mpsc::channel(16);
    let _reader = AbortOnDrop(tokio::spawn(forward_lines(reader, lines_tx)));
    let send_block = |session: &mut LinkSession, block: &StoredBlock| {
        session.seal(&Body::Block {
            hash: block.hash.clone(),
            height: u64::from(block.height),
            hex: block.block_hex.clone(),
            user: block.user.clone(),
            worker: block.worker.clone(),
            reward_sats: block.reward_sats,
        })
    };
    for block in outbox.blocks.values() {
        write_line(&mut writer, &send_block(&mut session, block)).await?;
        shared.status.lock().blocks_sent += 1;
    }
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        shared.status.lock().blocks_unconfirmed = outbox.blocks.len() as u64;
        tokio::select! {
            () = shared.stop.cancelled() => return Ok(()),
            block = blocks.recv() => {
                let Some(block) = block else { return Ok(()) };
                tracing::info!(hash = %block.hash, height = block.height, "relay link: sending the block to the primary");
                // Queued first: a write that fails (the link just died)
                // must leave the block for the next connection.
                let frame = send_block(&mut session, &block);
                outbox.add(block);
                write_line(&mut writer, &frame).await?;
                shared.status.lock().blocks_sent += 1;
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= shared.config.failover_timeout {
                    return Err(ServeError::Silent(shared.config.failover_timeout));
                }
                let frame = session.seal(&Body::Heartbeat {
                    height: shared.local_height.load(Ordering::Relaxed),
                    tip: String::new(),
                    sent_ms: unix_ms(),
                });
                write_line(&mut writer, &frame).await?;
            }
            line = lines.recv() => {
                let line = match line {
                    Some(line) => line?,
                    None => return Err(WireError::Closed.into()),
                };
                let body = session.open(&line)?;
                last_heard = Instant::now();
                let event = match body {
                    Body::Template { template, .. } => LinkEvent::Template(template),
                    Body::Heartbeat { .. } => LinkEvent::Heard,
                    Body::BlockStored { hash } => {
                        if outbox.blocks.remove(&hash).is_some() {
                            tracing::info!(%hash, "relay link: the primary stored the block");
                            shared.status.lock().blocks_stored_by_primary += 1;
                        }
                        LinkEvent::Heard
                    }
                    Body::BlockRefused { hash, reason } => {
                        tracing::error!(%hash, %reason, "relay link: the primary REFUSED a block of ours (a bug: see the primary's log); it stays in our store and goes to our node");
                        outbox.blocks.remove(&hash);
                        LinkEvent::Heard
                    }
                    Body::Block { .. } => {
                        tracing::warn!("relay link: the primary sent a block frame; ignored");
                        LinkEvent::Heard
                    }
                };
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
