//! The accept loop: limits, one task per connection, graceful shutdown.
//! Each port (plain, TLS, V2, or V1 and V2 shared) runs one loop; a TLS or
//! V2 connection's handshake, and a shared port's sniffing, happen in the
//! connection's own task, after the limits admitted it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::guard::Ticket;
use crate::limits::LimitKind;
use crate::session::{CloseReason, Session};
use crate::tls::TlsPort;
use crate::work_source::CurrentWork;
use crate::PoolShared;

/// What a port speaks.
#[derive(Clone)]
pub(crate) enum Port {
    Plain,
    Tls(Arc<TlsPort>),
    Sv2(Arc<crate::sv2::Sv2Settings>),
    /// V1 and V2 on one port, told apart by each connection's first bytes.
    Shared(Arc<crate::sv2::Sv2Settings>),
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<PoolShared>,
    work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
    mut shutdown: watch::Receiver<bool>,
    port: Port,
) {
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // An IPv4 miner on the dual-stack socket is ::ffff:a.b.c.d:
                // events, logs, limits and allow-lists see a.b.c.d.
                (
                    stream,
                    std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port()),
                )
            }
            Err(error) => {
                // Out of file descriptors and the like: wait, doubling, and retry.
                tracing::warn!(%error, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let now = Instant::now();
        let ticket = match admit(&shared, peer, now) {
            Ok(ticket) => ticket,
            Err(kind) => {
                shared
                    .counters
                    .connections_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared
                    .guard
                    .refused(&shared.counters, kind, peer, None, now);
                // Closed at once, before a session or a buffer exists.
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let client_id = shared
            .client_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shared = shared.clone();
        let work_rx = work_rx.clone();
        let shutdown = shutdown.clone();
        let port = port.clone();
        shared.counters.connection_opened();
        let task = async move {
            let reason = match port {
                Port::Plain => {
                    let session = Box::new(Session::new(shared.clone(), client_id, peer));
                    session.run(stream, work_rx, shutdown).await
                }
                // Boxed: a TLS session's state (the handshake, rustls'
                // connection) is kilobytes, and every plain connection's
                // task would otherwise be as large.
                Port::Tls(tls) => {
                    let session = Box::new(Session::new(shared.clone(), client_id, peer));
                    Box::pin(serve_tls(&tls, session, stream, work_rx, shutdown)).await
                }
                // A V2 connection's channels are sessions of their own.
                Port::Sv2(sv2) => {
                    let accepted = Accepted {
                        shared: shared.clone(),
                        client_id,
                        peer,
                        at: now,
                    };
                    Box::pin(crate::sv2::serve_connection(
                        accepted, stream, work_rx, shutdown, sv2,
                    ))
                    .await
                }
                Port::Shared(sv2) => {
                    let accepted = Accepted {
                        shared: shared.clone(),
                        client_id,
                        peer,
                        at: now,
                    };
                    Box::pin(serve_shared(accepted, stream, work_rx, shutdown, sv2)).await
                }
            };
            shared.counters.connection_closed();
            let live = shared.live();
            shared.guard.release(
                ticket,
                reason,
                &live.limits,
                &shared.counters,
                peer,
                Instant::now(),
            );
        };
        tracker.spawn(task);
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// `maxclients`, then the per-source limits (see `limits::IpTable`).
fn admit(shared: &PoolShared, peer: SocketAddr, now: Instant) -> Result<Ticket, LimitKind> {
    let settings = shared.live();
    let max = settings.max_clients;
    if max != 0 && crate::PoolCounters::get(&shared.counters.connections) >= max as u64 {
        return Err(LimitKind::MaxClients);
    }
    shared
        .guard
        .admit(&settings.limits, &shared.counters, peer, now)
}

/// A connection the limits admitted, before its protocol's own state.
pub(crate) struct Accepted {
    pub(crate) shared: Arc<PoolShared>,
    pub(crate) client_id: u64,
    pub(crate) peer: SocketAddr,
    /// When it was accepted: its handshake and authorize deadlines run
    /// from here, whatever sniffing its protocol took.
    pub(crate) at: Instant,
}

/// A connection on the shared port: V1 or V2 by its first bytes, then
/// served exactly as on a port of its own.
async fn serve_shared(
    accepted: Accepted,
    stream: TcpStream,
    work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
    mut shutdown: watch::Receiver<bool>,
    sv2: Arc<crate::sv2::Sv2Settings>,
) -> CloseReason {
    use crate::sniff::{SniffEnd, Sniffed};
    // The V1 session exists from the accept, so that its authorize timeout
    // counts the sniffing too.
    let session = Box::new(Session::new(
        accepted.shared.clone(),
        accepted.client_id,
        accepted.peer,
    ));
    // Both protocols speak first; a connection silent past the shorter of
    // the two deadlines would be closed by either.
    let deadline = sv2
        .handshake_timeout
        .min(accepted.shared.live().authorize_timeout);
    let sniffed = tokio::select! {
        _ = shutdown.changed() => return CloseReason::Shutdown,
        sniffed = crate::sniff::sniff(&stream, deadline, SNIFF_PATIENCE) => sniffed,
    };
    match sniffed {
        Ok(Sniffed::V2) => {
            drop(session);
            crate::sv2::serve_connection(accepted, stream, work_rx, shutdown, sv2).await
        }
        Ok(Sniffed::V1 | Sniffed::Undecided) => session.run(stream, work_rx, shutdown).await,
        Err(SniffEnd::Closed) => CloseReason::ClientClosed,
        Err(SniffEnd::Silent) => CloseReason::AuthorizeTimeout,
        Err(SniffEnd::IoError) => CloseReason::IoError,
    }
}

/// How long the first bytes of a connection may stay undecided (a V1 line
/// in pieces) before they count as V1.
const SNIFF_PATIENCE: Duration = Duration::from_millis(500);

/// The TLS port's connection: the handshake (bounded in time), then the
/// same session as plain TCP.
async fn serve_tls(
    tls: &TlsPort,
    session: Box<Session>,
    stream: TcpStream,
    work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
    shutdown: watch::Receiver<bool>,
) -> CloseReason {
    let (peer, shared) = (session.peer, session.shared.clone());
    let handshake = tls.current().acceptor().accept(stream);
    match tokio::time::timeout(tls.settings.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => session.run(stream, work_rx, shutdown).await,
        Ok(Err(error)) => {
            // A plain-TCP miner on the TLS port, a scanner, an old client:
            // nothing of a session exists yet.
            tracing::debug!(%peer, %error, "TLS handshake failed");
            shared.counters.tls_handshake_failed();
            CloseReason::TlsHandshake
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            shared.counters.tls_handshake_failed();
            CloseReason::TlsHandshake
        }
    }
}
