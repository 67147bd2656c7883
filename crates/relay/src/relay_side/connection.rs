//! The connection to the primary: connect, authenticate, serve frames,
//! reconnect; the outbox of found blocks until the primary stored them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tbg_pool::{BlockStatus, PoolLink, StoredBlock};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{LinkEvent, RelayConfig, Shared};
use crate::primary::{unix_ms, AbortOnDrop};
use crate::wire::{forward_lines, read_line, write_line, WireError};
use crate::{Body, LinkError, LinkSession, RelayHandshake};

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

pub(super) async fn connect_loop(
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
