//! The accept loop: limits, one task per connection, graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::session::Session;
use crate::work_source::CurrentWork;
use crate::PoolShared;

/// Connections per IP, so one host cannot take every slot.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn try_add(&self, ip: IpAddr, limit: usize) -> bool {
        let mut map = self.0.lock();
        let count = map.entry(ip).or_insert(0);
        if limit != 0 && *count >= limit {
            return false;
        }
        *count += 1;
        true
    }

    fn remove(&self, ip: IpAddr) {
        let mut map = self.0.lock();
        if let Some(count) = map.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&ip);
            }
        }
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<PoolShared>,
    work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tracker = TaskTracker::new();
    let per_ip = Arc::new(PerIp::default());
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(error) => {
                // Out of file descriptors and the like: wait, doubling, and retry.
                tracing::warn!(%error, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if !admit(&shared, &per_ip, peer) {
            shared
                .counters
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let client_id = shared
            .client_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = Session::new(shared.clone(), client_id, peer);
        let shared = shared.clone();
        let per_ip = per_ip.clone();
        let work_rx = work_rx.clone();
        let shutdown = shutdown.clone();
        shared.counters.connection_opened();
        tracker.spawn(async move {
            session.run(stream, work_rx, shutdown).await;
            shared.counters.connection_closed();
            per_ip.remove(peer.ip());
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

fn admit(shared: &PoolShared, per_ip: &PerIp, peer: SocketAddr) -> bool {
    let settings = shared.live();
    let max = settings.max_clients;
    if max != 0 && crate::PoolCounters::get(&shared.counters.connections) >= max as u64 {
        tracing::debug!(%peer, "refused: maxclients reached");
        return false;
    }
    if !per_ip.try_add(peer.ip(), settings.max_connections_per_ip) {
        tracing::debug!(%peer, "refused: too many connections from this address");
        return false;
    }
    true
}
