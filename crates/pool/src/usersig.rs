//! Per-user coinbase signatures from Redis (`user_coinbase:<address>`).
//!
//! A miner's signature goes into the scriptSig of the coinbase of blocks that
//! pay them. Only 1 to 20 characters of `A-Za-z0-9 _-.:!#/` are taken;
//! anything else is refused and never written into a block. Redis is
//! optional: without it, or while it is down, the pool mines with its
//! default tag and keeps going.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};

pub const MAX_USER_SIG_CHARS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserSigError {
    #[error("coinbase signature is empty")]
    Empty,
    #[error("coinbase signature is {0} characters, at most 20 are allowed")]
    TooLong(usize),
    #[error("coinbase signature contains {0:?}, only A-Za-z0-9 and ' _-.:!#/' are allowed")]
    BadCharacter(char),
}

/// Checks a signature against the allowed alphabet and length.
pub fn validate_user_sig(raw: &str) -> Result<&str, UserSigError> {
    if raw.is_empty() {
        return Err(UserSigError::Empty);
    }
    let chars = raw.chars().count();
    if chars > MAX_USER_SIG_CHARS {
        return Err(UserSigError::TooLong(chars));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " _-.:!#/".contains(*c)))
    {
        return Err(UserSigError::BadCharacter(bad));
    }
    Ok(raw)
}

/// The signatures currently known, by payout address.
#[derive(Debug, Default)]
pub struct UserSigCache {
    signatures: RwLock<HashMap<String, String>>,
    redis_up: std::sync::atomic::AtomicBool,
}

impl UserSigCache {
    pub fn get(&self, address: &str) -> Option<String> {
        self.signatures.read().get(address).cloned()
    }

    pub fn set(&self, address: &str, signature: Option<String>) {
        let mut signatures = self.signatures.write();
        match signature {
            Some(sig) => {
                signatures.insert(address.to_string(), sig);
            }
            None => {
                signatures.remove(address);
            }
        }
    }

    pub fn redis_up(&self) -> bool {
        self.redis_up.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Asks the refresher to look up an address now (a new miner authorized).
/// The channel is bounded; when full, the address waits for the next
/// periodic refresh.
pub type LookupRequests = mpsc::Sender<String>;

const KEY_PREFIX: &str = "user_coinbase:";

/// Keeps `cache` in step with Redis for the addresses `active()` returns,
/// every `interval`, and at once for addresses sent on the returned channel.
pub fn spawn_refresher(
    redis_url: String,
    cache: Arc<UserSigCache>,
    active: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> (LookupRequests, tokio::task::JoinHandle<()>) {
    let (lookup_tx, mut lookup_rx) = mpsc::channel::<String>(1024);
    let task = tokio::spawn(async move {
        let client = match redis::Client::open(redis_url.as_str()) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "redis_url is not usable; mining with the default coinbase tag");
                return;
            }
        };
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            let addresses: Vec<String> = tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => active(),
                Some(first) = lookup_rx.recv() => {
                    let mut batch = vec![first];
                    while let Ok(more) = lookup_rx.try_recv() { batch.push(more); }
                    batch
                }
            };
            let unique: Vec<String> = addresses
                .into_iter()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if unique.is_empty() {
                continue;
            }
            if connection.is_none() {
                let connect = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.get_multiplexed_async_connection(),
                );
                match connect.await {
                    Ok(Ok(conn)) => {
                        if warned {
                            tracing::info!("redis is back; per-user coinbase signatures resume");
                        }
                        warned = false;
                        connection = Some(conn);
                    }
                    Ok(Err(error)) => {
                        if !warned {
                            tracing::warn!(%error, "redis unreachable; mining with the default coinbase tag");
                            warned = true;
                        }
                    }
                    Err(_) => {
                        if !warned {
                            tracing::warn!(
                                "redis connect timed out; mining with the default coinbase tag"
                            );
                            warned = true;
                        }
                    }
                }
            }
            let Some(conn) = connection.as_mut() else {
                cache
                    .redis_up
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                continue;
            };
            let keys: Vec<String> = unique.iter().map(|a| format!("{KEY_PREFIX}{a}")).collect();
            let mut command = redis::cmd("MGET");
            command.arg(&keys);
            let fetch = tokio::time::timeout(
                Duration::from_secs(2),
                command.query_async::<Vec<Option<String>>>(conn),
            );
            match fetch.await {
                Ok(Ok(values)) => {
                    cache
                        .redis_up
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    for (address, value) in unique.iter().zip(values) {
                        let signature = value.and_then(|raw| match validate_user_sig(&raw) {
                            Ok(sig) => Some(sig.to_string()),
                            Err(error) => {
                                tracing::warn!(address = %address, %error, "ignoring coinbase signature from redis");
                                None
                            }
                        });
                        cache.set(address, signature);
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "redis lookup failed; keeping the signatures already known");
                    cache
                        .redis_up
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    connection = None;
                    warned = true;
                }
                Err(_) => {
                    tracing::warn!("redis lookup timed out; keeping the signatures already known");
                    cache
                        .redis_up
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    connection = None;
                    warned = true;
                }
            }
        }
    });
    (lookup_tx, task)
}

/// Keeps the per-user signatures in step with Redis at `url`; the lookup
/// channel goes into `shared`.
pub(crate) fn spawn_for_pool(
    shared: &Arc<crate::PoolShared>,
    url: String,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(shared);
    let active: Arc<dyn Fn() -> Vec<String> + Send + Sync> = Arc::new(move || {
        weak.upgrade()
            .map(|shared| {
                shared
                    .stats
                    .users(std::time::Instant::now())
                    .into_iter()
                    .filter(|u| u.workers_connected > 0)
                    .map(|u| u.address)
                    .collect()
            })
            .unwrap_or_default()
    });
    let (requests, task) = spawn_refresher(
        url,
        shared.user_sigs.clone(),
        active,
        shared.settings.user_sig_refresh,
        shutdown,
    );
    *shared.user_sig_requests.write() = Some(requests);
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        assert_eq!(
            validate_user_sig("Satoshi #1/2.0:ok!_-"),
            Ok("Satoshi #1/2.0:ok!_-")
        );
        assert_eq!(validate_user_sig(""), Err(UserSigError::Empty));
        assert_eq!(
            validate_user_sig("a".repeat(21).as_str()),
            Err(UserSigError::TooLong(21))
        );
        assert_eq!(
            validate_user_sig("evil\"json"),
            Err(UserSigError::BadCharacter('"'))
        );
        assert_eq!(
            validate_user_sig("new\nline"),
            Err(UserSigError::BadCharacter('\n'))
        );
        assert_eq!(
            validate_user_sig("émoji"),
            Err(UserSigError::BadCharacter('é'))
        );
    }
}
