//! The relay's side of the link: connects out to the primary, mines its
//! templates while it is heard, fails over to the local node's after the
//! failover timeout and back once the primary is steady (see
//! [`crate::failover`]), and sends every block its miners find to the
//! primary until the primary says it stored it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tbg_pool::{PoolLink, StoredBlock, Templates};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::failover::{Failover, Source};

mod connection;
mod select;

use connection::connect_loop;
use select::select_loop;

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
