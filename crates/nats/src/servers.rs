//! `nats.url` as the NATS tools take it: one server or a cluster's
//! servers, comma-separated, in order of preference. A region lists its
//! own server first: the client uses it while it is up, then the next
//! one, and on a cluster it also learns the others from the server it
//! reached.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ServerAddr};

/// How a client proves itself to NATS beyond the URL's user and password
/// or token: TLS with a private CA, a client certificate for servers that
/// verify clients (`verify: true`), a `.creds` file (JWT and nkey).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NatsAccess {
    /// PEM CA that signed the servers' certificates; set, TLS is required.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate chain and key of this client (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// A NATS credentials file (`nsc` or `nats` made it).
    pub creds_file: Option<PathBuf>,
}

/// `nats.url` unusable, or the client refused its options.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Servers(#[from] ServerListError),
    #[error("connecting to NATS: {0}")]
    Connect(String),
    /// A TLS or credentials file that cannot be read: named at once
    /// rather than retried as if NATS were down.
    #[error("nats file {path}: {reason}")]
    File { path: String, reason: String },
}

/// A client for `nats.url` that connects in the background (NATS may be
/// down right now; the journal keeps the events meanwhile), tries the
/// servers in the order listed instead of shuffling them, and times a dial
/// out after `dial_timeout`; `access` adds TLS and credentials.
pub async fn connect(
    urls: &str,
    dial_timeout: Duration,
    access: &NatsAccess,
) -> Result<Client, ConnectError> {
    let servers = server_addrs(urls)?;
    let files = [
        access.tls_ca_file.as_ref(),
        access.tls_client.as_ref().map(|(cert, _)| cert),
        access.tls_client.as_ref().map(|(_, key)| key),
    ];
    for path in files.into_iter().flatten() {
        if let Err(error) = tokio::fs::File::open(path).await {
            return Err(file_error(path, error));
        }
    }
    let mut options = match &access.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|error| file_error(path, error))?,
        None => async_nats::ConnectOptions::new(),
    };
    // async-nats reads no credentials from the URL itself: the first entry
    // that carries them gives them (user and password, or a token alone).
    let userinfo = servers
        .iter()
        .find_map(|addr| Some((addr.username()?, addr.password())));
    if let Some((user, password)) = userinfo {
        options = match password {
            Some(password) => options.user_and_password(decoded(user), decoded(password)),
            None => options.token(decoded(user)),
        };
    }
    if let Some(ca) = &access.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &access.tls_client {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    options
        .retry_on_initial_connect()
        .retain_servers_order()
        .connection_timeout(dial_timeout)
        .connect(servers)
        .await
        .map_err(|error| ConnectError::Connect(error.to_string()))
}

/// A URL's user or password as typed (`%20` is a space).
fn decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn file_error(path: &std::path::Path, error: std::io::Error) -> ConnectError {
    ConnectError::File {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// A `nats.url` entry the client cannot use.
#[derive(Debug, thiserror::Error)]
#[error("nats url {entry:?}: {reason}")]
pub struct ServerListError {
    pub entry: String,
    pub reason: String,
}

/// `entry` with each server's user, password or token (what comes before
/// an `@`) replaced, for an error message.
fn without_userinfo(entries: &str) -> String {
    entries
        .split(',')
        .map(|entry| {
            let Some((before, host)) = entry.rsplit_once('@') else {
                return entry.to_owned();
            };
            match before.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://<redacted>@{host}"),
                None => format!("<redacted>@{host}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `nats://a:4222,nats://b:4222` (or bare `host:port` entries).
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>, ServerListError> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .map(|entry| {
            if entry.is_empty() {
                return Err(ServerListError {
                    entry: without_userinfo(urls),
                    reason: "an empty entry in the list".to_owned(),
                });
            }
            entry
                .parse::<ServerAddr>()
                .map_err(|error| ServerListError {
                    entry: without_userinfo(entry),
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
        let error = server_addrs("http://user:secret@a:4222").unwrap_err();
        assert_eq!(error.entry, "http://<redacted>@a:4222");
        let error = server_addrs("nats://token@a:4222,,").unwrap_err();
        assert!(!error.to_string().contains("token"), "{error}");
    }
}
