//! The primary's side of the link: relays connect in, prove they hold the
//! secret, get the current template at once and every new one as it comes,
//! a heartbeat every `heartbeat`, and send the blocks their miners find,
//! which the primary stores and submits to its own nodes before it says
//! `block_stored`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use tbg_pool::{PoolLink, RelayedBlock, Templates};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::{read_line, write_line};
use crate::{Body, LinkError, PrimaryHandshake};

#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    pub bind: SocketAddr,
    pub secret: Vec<u8>,
    /// This region's name, told to every relay.
    pub region: String,
    /// This pool's own instance id: no relay may use it.
    pub instance_id: Option<u8>,
    pub heartbeat: Duration,
    /// A relay silent this long (no heartbeat) is dropped.
    pub peer_timeout: Duration,
    /// Most relays connected at once; more are refused (closed).
    pub max_relays: usize,
    /// Longest time from accept to an authenticated hello.
    pub handshake_timeout: Duration,
}

impl PrimaryConfig {
    pub fn new(bind: SocketAddr, secret: &[u8], region: &str) -> PrimaryConfig {
        PrimaryConfig {
            bind,
            secret: secret.to_vec(),
            region: region.to_owned(),
            instance_id: None,
            heartbeat: Duration::from_secs(3),
            peer_timeout: Duration::from_secs(10),
            max_relays: 64,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// One connected relay, for `/status` and the health monitor.
#[derive(Debug, Clone, Serialize)]
pub struct RelayPeer {
    pub region: String,
    pub instance_id: u8,
    pub address: String,
    pub connected_for_s: f64,
    /// The relay's own tip height, from its last heartbeat.
    pub height: Option<u64>,
    pub blocks_received: u64,
}

struct PeerEntry {
    region: String,
    instance_id: u8,
    address: SocketAddr,
    since: Instant,
    height: Option<u64>,
    blocks_received: u64,
    stop: CancellationToken,
    id: u64,
}

/// Counters of the listening side.
#[derive(Debug, Default)]
pub struct PrimaryCounters {
    pub handshakes_failed: AtomicU64,
    pub relays_refused: AtomicU64,
    pub blocks_received: AtomicU64,
    pub blocks_refused: AtomicU64,
    pub templates_sent: AtomicU64,
}

#[derive(Default)]
struct Registry {
    peers: Mutex<Vec<PeerEntry>>,
    next_id: AtomicU64,
    counters: PrimaryCounters,
}

/// The running listener.
pub struct PrimaryLink {
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl PrimaryLink {
    /// Binds and serves until [`PrimaryLink::stop`].
    pub async fn start(
        config: PrimaryConfig,
        templates: Templates,
        pool: PoolLink,
    ) -> std::io::Result<PrimaryLink> {
        let listener = TcpListener::bind(config.bind).await?;
        let local_addr = listener.local_addr()?;
        let registry = Arc::new(Registry::default());
        let stop = CancellationToken::new();
        tracing::info!(%local_addr, region = %config.region, "relay link listening");
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::new(config),
            templates,
            pool,
            registry.clone(),
            stop.clone(),
        ));
        Ok(PrimaryLink {
            local_addr,
            registry,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn relays(&self) -> Vec<RelayPeer> {
        let now = Instant::now();
        self.registry
            .peers
            .lock()
            .iter()
            .map(|peer| RelayPeer {
                region: peer.region.clone(),
                instance_id: peer.instance_id,
                address: peer.address.to_string(),
                connected_for_s: now.saturating_duration_since(peer.since).as_secs_f64(),
                height: peer.height,
                blocks_received: peer.blocks_received,
            })
            .collect()
    }

    pub fn counters(&self) -> &PrimaryCounters {
        &self.registry.counters
    }

    /// Closes the listener and every relay connection.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<PrimaryConfig>,
    templates: Templates,
    pool: PoolLink,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (stream, address) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, go on.
                tracing::warn!(%error, "relay link: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= config.max_relays {
            registry
                .counters
                .relays_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%address, max = config.max_relays, "relay link: too many connections; refused");
            continue;
        }
        let connection = Connection {
            config: config.clone(),
            templates: templates.clone(),
            pool: pool.clone(),
            registry: registry.clone(),
            address,
            stop: stop.child_token(),
        };
        connections.spawn(connection.serve(stream));
    }
    connections.close();
    connections.wait().await;
}

struct Connection {
    config: Arc<PrimaryConfig>,
    templates: Templates,
    pool: PoolLink,
    registry: Arc<Registry>,
    address: SocketAddr,
    stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("no authenticated hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("silent for {0:?}")]
    Silent(Duration),
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let address = self.address;
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let handshake = tokio::time::timeout(
            self.config.handshake_timeout,
            self.handshake(&mut reader, &mut write),
        )
        .await
        .unwrap_or(Err(ServeError::HandshakeTimeout(
            self.config.handshake_timeout,
        )));
        let (session, entry_id, peer_stop) = match handshake {
            Ok(Some(accepted)) => accepted,
            Ok(None) => return,
            Err(error) => {
                self.registry
                    .counters
                    .handshakes_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%address, %error, "relay link: handshake failed; closed");
                return;
            }
        };
        let outcome = self
            .run(session, reader, &mut write, entry_id, &peer_stop)
            .await;
        let region = {
            let mut peers = self.registry.peers.lock();
            let region = peers
                .iter()
                .find(|p| p.id == entry_id)
                .map(|p| p.region.clone());
            peers.retain(|p| p.id != entry_id);
            region.unwrap_or_default()
        };
        match outcome {
            Ok(()) => tracing::info!(%address, %region, "relay link: relay disconnected"),
            Err(error) => {
                tracing::warn!(%address, %region, %error, "relay link: relay connection ended")
            }
        }
    }

    /// The challenge, the relay's hello, the welcome (or a refusal).
    async fn handshake(
        &self,
        reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        write: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> Result<Option<(crate::LinkSession, u64, CancellationToken)>, ServeError> {
        let handshake =
            PrimaryHandshake::new(&self.config.secret, &self.config.region, rand::random());
        write_line(write, &handshake.challenge()).await?;
        let mut buffer = Vec::new();
        let hello_line = read_line(reader, &mut buffer).await?;
        let (welcome, hello, session) = match handshake.accept(&hello_line) {
            Ok(accepted) => accepted,
            Err(error) => {
                // The relay's operator reads why in the relay's log.
                let _ = write_line(write, &PrimaryHandshake::refusal(&error.to_string())).await;
                return Err(error.into());
            }
        };
        let decision = {
            let mut peers = self.registry.peers.lock();
            let clash = peers
                .iter()
                .find(|p| p.instance_id == hello.instance_id && p.region != hello.region)
                .map(|p| p.region.clone());
            if self.config.instance_id == Some(hello.instance_id) {
                Err(format!(
                    "instance_id {} is the primary's own; give each region its own",
                    hello.instance_id
                ))
            } else if let Some(other) = clash {
                Err(format!(
                    "instance_id {} is in use by region {other:?}; give each region its own",
                    hello.instance_id
                ))
            } else {
                // The same region again (it reconnected before its old
                // connection timed out here): the new one replaces it.
                for old in peers.iter().filter(|p| p.region == hello.region) {
                    old.stop.cancel();
                }
                peers.retain(|p| p.region != hello.region);
                let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
                let stop = self.stop.child_token();
                peers.push(PeerEntry {
                    region: hello.region.clone(),
                    instance_id: hello.instance_id,
                    address: self.address,
                    since: Instant::now(),
                    height: None,
                    blocks_received: 0,
                    stop: stop.clone(),
                    id,
                });
                Ok((id, stop))
            }
        };
        match decision {
            Err(reason) => {
                self.registry
                    .counters
                    .relays_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(address = %self.address, region = %hello.region, %reason, "relay link: relay refused");
                let _ = write_line(write, &PrimaryHandshake::refusal(&reason)).await;
                Ok(None)
            }
            Ok((id, stop)) => {
                write_line(write, &welcome).await?;
                tracing::info!(address = %self.address, region = %hello.region,
                    instance_id = hello.instance_id, "relay link: relay connected");
                Ok(Some((session, id, stop)))
            }
        }
    }

    async fn run(
        &self,
        mut session: crate::LinkSession,
        reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
        write: &mut tokio::net::tcp::OwnedWriteHalf,
        entry_id: u64,
        peer_stop: &CancellationToken,
    ) -> Result<(), ServeError> {
        let (lines, mut incoming) = mpsc::channel(16);
        let reader_task = tokio::spawn(crate::wire::forward_lines(reader, lines));
        let _reader_guard = AbortOnDrop(reader_task);
        // Blocks stored: their hashes (or refusals) come back here.
        let (answers_tx, mut answers) = mpsc::channel::<Body>(64);
        let mut templates = self.templates.clone();
        let mut generation = 0u64;
        // The current template at once.
        templates.mark_changed();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut tip: Option<(u64, String)> = None;
        loop {
            tokio::select! {
                () = peer_stop.cancelled() => return Ok(()),
                changed = templates.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let template = templates.borrow_and_update().clone();
                    if let Some(template) = template {
                        generation += 1;
                        tip = tip_of(&template.gbt);
                        let frame = session.seal(&Body::Template {
                            generation,
                            template: template.gbt.clone(),
                        });
                        write_line(write, &frame).await?;
                        self.registry.counters.templates_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > self.config.peer_timeout {
                        return Err(ServeError::Silent(self.config.peer_timeout));
                    }
                    let (height, hash) = tip.clone().unwrap_or_default();
                    let frame = session.seal(&Body::Heartbeat {
                        height,
                        tip: hash,
                        sent_ms: unix_ms(),
                    });
                    write_line(write, &frame).await?;
                }
                answer = answers.recv() => {
                    if let Some(answer) = answer {
                        write_line(write, &session.seal(&answer)).await?;
                    }
                }
                line = incoming.recv() => {
                    let line = match line {
                        Some(Ok(line)) => line,
                        Some(Err(error)) => return Err(error.into()),
                        None => return Ok(()),
                    };
                    last_heard = Instant::now();
                    match session.open(&line)? {
                        Body::Heartbeat { height, .. } => self.set_height(entry_id, height),
                        Body::Block { hash, height, hex, user, worker, reward_sats } => {
                            let block = RelayedBlock {
                                origin: self.region_of(entry_id),
                                hash,
                                height: u32::try_from(height).unwrap_or(u32::MAX),
                                block_hex: hex,
                                user,
                                worker,
                                reward_sats,
                            };
                            self.take_block(entry_id, block, answers_tx.clone());
                        }
                        other => {
                            tracing::warn!(address = %self.address, frame = ?std::mem::discriminant(&other),
                                "relay link: a frame only the primary sends; ignored");
                        }
                    }
                }
            }
        }
    }

    /// `change` applied to this connection's registry entry, if it is
    /// still there (a newer connection of the same region replaces it).
    fn with_peer<T>(&self, entry_id: u64, change: impl FnOnce(&mut PeerEntry) -> T) -> Option<T> {
        self.registry
            .peers
            .lock()
            .iter_mut()
            .find(|p| p.id == entry_id)
            .map(change)
    }

    fn region_of(&self, entry_id: u64) -> String {
        self.with_peer(entry_id, |peer| peer.region.clone())
            .unwrap_or_default()
    }

    fn set_height(&self, entry_id: u64, height: u64) {
        self.with_peer(entry_id, |peer| peer.height = Some(height));
    }

    /// Checks and stores the block; answers once it is in the store.
    fn take_block(&self, entry_id: u64, block: RelayedBlock, answers: mpsc::Sender<Body>) {
        let hash = block.hash.clone();
        let counters = &self.registry.counters;
        match self.pool.take_relayed_block(block) {
            Ok(stored) => {
                counters.blocks_received.fetch_add(1, Ordering::Relaxed);
                self.with_peer(entry_id, |peer| peer.blocks_received += 1);
                tokio::spawn(async move {
                    // Resolves when the store has it (or could not write
                    // it: the block is then submitted from memory, and the
                    // relay still has it in its own store).
                    let _ = stored.await;
                    let _ = answers.send(Body::BlockStored { hash }).await;
                });
            }
            Err(error) => {
                counters.blocks_refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(address = %self.address, %hash, %error,
                    "relay link: a relay sent a block that does not check out; refused");
                let reason = error.to_string();
                tokio::spawn(async move {
                    let _ = answers.send(Body::BlockRefused { hash, reason }).await;
                });
            }
        }
    }
}

/// The template's tip: (height of its previous block, its hash).
pub(crate) fn tip_of(gbt: &serde_json::Value) -> Option<(u64, String)> {
    let height = gbt.get("height")?.as_u64()?.checked_sub(1)?;
    let hash = gbt.get("previousblockhash")?.as_str()?.to_owned();
    Some((height, hash))
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
