//! `nats.url` as the NATS tools take it: one server or a cluster's
//! servers, comma-separated, in order of preference. A region lists its
//! own server first: the client uses it while it is up, then the next
//! one, and on a cluster it also learns the others from the server it
//! reached.

use std::time::Duration;

use async_nats::{Client, ServerAddr};

/// `nats.url` unusable, or the client refused its options.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Servers(#[from] ServerListError),
    #[error("connecting to NATS: {0}")]
    Connect(String),
}

/// A client for `nats.url` that connects in the background (NATS may be
/// down right now; the journal keeps the events meanwhile), tries the
/// servers in the order listed instead of shuffling them, and times a dial
/// out after `dial_timeout`.
pub async fn connect(urls: &str, dial_timeout: Duration) -> Result<Client, ConnectError> {
    let servers = server_addrs(urls)?;
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .retain_servers_order()
        .connection_timeout(dial_timeout)
        .connect(servers)
        .await
        .map_err(|error| ConnectError::Connect(error.to_string()))
}

/// A `nats.url` entry the client cannot use.
#[derive(Debug, thiserror::Error)]
#[error("nats url {entry:?}: {reason}")]
pub struct ServerListError {
    pub entry: String,
    pub reason: String,
}

/// Parses `nats://a:4222,nats://b:4222` (or bare `host:port` entries).
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>, ServerListError> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .map(|entry| {
            if entry.is_empty() {
                return Err(ServerListError {
                    entry: urls.to_owned(),
                    reason: "an empty entry in the list".to_owned(),
                });
            }
            entry
                .parse::<ServerAddr>()
                .map_err(|error| ServerListError {
                    entry: entry.to_owned(),
                    reason: error.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_list_gives_each_server() {
        let addrs =
            server_addrs("nats://10.0.0.1:4222, nats://10.0.0.2:4222,10.0.0.3:4223").unwrap();
        let hosts: Vec<(String, u16)> = addrs
            .iter()
            .map(|a| (a.host().to_owned(), a.port()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("10.0.0.1".to_owned(), 4222),
                ("10.0.0.2".to_owned(), 4222),
                ("10.0.0.3".to_owned(), 4223)
            ]
        );
    }

    #[test]
    fn an_empty_entry_or_a_bad_scheme_is_named() {
        let error = server_addrs("nats://a:4222,,nats://b:4222").unwrap_err();
        assert!(error.reason.contains("empty"), "{error}");
        let error = server_addrs("http://a:4222").unwrap_err();
        assert_eq!(error.entry, "http://a:4222");
    }
}
