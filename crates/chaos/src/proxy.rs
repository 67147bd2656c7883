//! A TCP proxy that injects network faults between two local processes
//! (the pool and its node): its mode changes at run time and applies to new
//! and existing connections alike.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ChaosError;

/// What the proxy does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards both ways.
    Pass,
    /// Closes every existing connection and each new one right after accepting it.
    Refuse,
    /// A partition: accepts connections and holds them open, never forwards a
    /// byte (reads stop, so senders fill their buffers). When the mode goes
    /// back to `Pass`, held connections carry on as after a healed network.
    Blackhole,
    /// Forwards each chunk after this delay.
    Delay(Duration),
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyMode::Pass => write!(f, "pass"),
            ProxyMode::Refuse => write!(f, "refuse"),
            ProxyMode::Blackhole => write!(f, "blackhole"),
            ProxyMode::Delay(delay) => write!(f, "delay({} ms)", delay.as_millis()),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
}

/// A running proxy; stops (with every connection) when dropped.
pub struct FaultProxy {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    counters: Arc<Counters>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, in `Pass` mode.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy, ChaosError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| ChaosError::io("fault proxy: bind", e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| ChaosError::io("fault proxy: local address", e))?;
        let (mode, mode_rx) = watch::channel(ProxyMode::Pass);
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(listener, upstream, mode_rx, counters.clone()));
        tracing::debug!(%local_addr, %upstream, "fault proxy listening");
        Ok(FaultProxy {
            local_addr,
            upstream,
            mode,
            counters,
            accept_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the mode; existing connections follow at once.
    pub fn set_mode(&self, mode: ProxyMode) {
        tracing::info!(%mode, proxy = %self.local_addr, "fault proxy mode");
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections currently open on the client side (held ones included).
    pub fn open_connections(&self) -> u64 {
        self.counters.open.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it
        // drops them all.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of descriptors and the like: try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                counters.open.fetch_add(1, Ordering::Relaxed);
                let counters = counters.clone();
                let mode = mode.clone();
                connections.spawn(async move {
                    handle_connection(client, upstream, mode).await;
                    counters.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Waits until traffic may flow: the delay to apply, or `None` when the
/// connection must be dropped (refuse mode, or the proxy is going away).
async fn wait_passable(mode: &mut watch::Receiver<ProxyMode>) -> Option<Duration> {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            ProxyMode::Pass => return Some(Duration::ZERO),
            ProxyMode::Delay(delay) => return Some(delay),
            ProxyMode::Refuse => return None,
            ProxyMode::Blackhole => {}
        }
        if mode.changed().await.is_err() {
            return None;
        }
    }
}

async fn until_refused(mut mode: watch::Receiver<ProxyMode>) {
    loop {
        if *mode.borrow_and_update() == ProxyMode::Refuse {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}

async fn handle_connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
) {
    // A connection accepted during a partition is held, unanswered, until it ends.
    if wait_passable(&mut mode).await.is_none() {
        return;
    }
    let server = tokio::select! {
        connected = TcpStream::connect(upstream) => match connected {
            Ok(server) => server,
            Err(error) => {
                tracing::debug!(%error, %upstream, "fault proxy: upstream unreachable");
                return;
            }
        },
        _ = until_refused(mode.clone()) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let both_ways = async {
        tokio::join!(
            pump(client_read, server_write, mode.clone()),
            pump(server_read, client_write, mode.clone()),
        )
    };
    tokio::select! {
        _ = both_ways => {}
        _ = until_refused(mode.clone()) => {}
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // No reading during a partition: the sender's data stays in its buffers.
        let Some(_) = wait_passable(&mut mode).await else {
            return;
        };
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(read) => read,
        };
        // The mode may have changed while reading: a chunk read just before a
        // partition is held until it ends.
        let Some(delay) = wait_passable(&mut mode).await else {
            return;
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(read) = stream.read(&mut buffer).await {
                        if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(
        stream: &mut TcpStream,
        message: &[u8],
        timeout: Duration,
    ) -> Option<Vec<u8>> {
        stream.write_all(message).await.ok()?;
        let mut answer = vec![0u8; message.len()];
        match tokio::time::timeout(timeout, stream.read_exact(&mut answer)).await {
            Ok(Ok(_)) => Some(answer),
            _ => None,
        }
    }

    /// Reads until EOF or error; true if the connection was closed in time.
    async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
        let mut buffer = [0u8; 64];
        matches!(
            tokio::time::timeout(timeout, stream.read(&mut buffer)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn pass_forwards_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let answer = roundtrip(&mut stream, b"hello", Duration::from_secs(5)).await;
        assert_eq!(answer.as_deref(), Some(&b"hello"[..]));
        assert_eq!(proxy.accepted_connections(), 1);
    }

    /// A passing proxy to an echo server, and a connection through it that
    /// has echoed once.
    async fn proxy_with_a_live_connection() -> (FaultProxy, TcpStream) {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut existing = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(roundtrip(&mut existing, b"a", Duration::from_secs(5))
            .await
            .is_some());
        (proxy, existing)
    }

    #[tokio::test]
    async fn refuse_drops_existing_and_new_connections() {
        let (proxy, mut existing) = proxy_with_a_live_connection().await;

        proxy.set_mode(ProxyMode::Refuse);
        assert!(closed_within(&mut existing, Duration::from_secs(5)).await);
        let mut new = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(roundtrip(&mut new, b"b", Duration::from_millis(500))
            .await
            .is_none());
        assert!(closed_within(&mut new, Duration::from_secs(5)).await);

        proxy.set_mode(ProxyMode::Pass);
        let mut after = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(roundtrip(&mut after, b"c", Duration::from_secs(5))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn blackhole_holds_connections_silently_and_heals() {
        let (proxy, mut existing) = proxy_with_a_live_connection().await;

        proxy.set_mode(ProxyMode::Blackhole);
        // Existing and new connections stay open and get nothing back.
        let mut new = TcpStream::connect(proxy.local_addr()).await.unwrap();
        existing.write_all(b"held").await.unwrap();
        new.write_all(b"new1").await.unwrap();
        let mut buffer = [0u8; 4];
        let silent =
            tokio::time::timeout(Duration::from_millis(600), existing.read(&mut buffer)).await;
        assert!(
            silent.is_err(),
            "nothing may come back during the blackhole"
        );
        let silent = tokio::time::timeout(Duration::from_millis(200), new.read(&mut buffer)).await;
        assert!(silent.is_err(), "a new connection is held, not closed");
        assert_eq!(proxy.open_connections(), 2);

        // The partition ends: what was held goes through.
        proxy.set_mode(ProxyMode::Pass);
        let mut answer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), existing.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"held");
        tokio::time::timeout(Duration::from_secs(5), new.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"new1");
    }

    #[tokio::test]
    async fn delay_slows_every_chunk() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        proxy.set_mode(ProxyMode::Delay(Duration::from_millis(150)));
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let started = Instant::now();
        let answer = roundtrip(&mut stream, b"slow", Duration::from_secs(5)).await;
        assert_eq!(answer.as_deref(), Some(&b"slow"[..]));
        // Delayed on the way there and on the way back.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );

        proxy.set_mode(ProxyMode::Pass);
        assert_eq!(proxy.mode(), ProxyMode::Pass);
        assert!(roundtrip(&mut stream, b"fast", Duration::from_secs(5))
            .await
            .is_some());
    }
}
