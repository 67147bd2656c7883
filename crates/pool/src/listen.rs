//! The stratum listener. `[::]:PORT` takes IPv6 and IPv4 miners on one
//! socket (IPV6_V6ONLY off, whatever the system's default); a host without
//! IPv6 gets `0.0.0.0:PORT` instead, with a warning.

use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Pending connections the kernel queues before the pool accepts them.
const BACKLOG: i32 = 1024;

fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // A restarted pool binds at once, whatever its old connections' state.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Binds `addr`; the unspecified IPv6 address falls back to IPv4's when the
/// host has no IPv6 (a kernel booted with `ipv6.disable=1`, a container).
pub(crate) fn stratum_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match bind_socket(addr) {
        Ok(listener) => Ok(listener),
        Err(error) if addr.ip().is_unspecified() && addr.is_ipv6() && no_ipv6(&error) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%error, fallback = %v4, "no IPv6 on this host: stratum on IPv4 only");
            bind_socket(v4)
        }
        Err(error) => Err(error),
    }
}

fn no_ipv6(error: &std::io::Error) -> bool {
    // EAFNOSUPPORT (97) or EADDRNOTAVAIL (99) on Linux.
    matches!(error.raw_os_error(), Some(97 | 99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ipv6_wildcard_takes_ipv4_and_ipv6_clients() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipped: this host has no IPv6 loopback");
            return;
        }
        let listener = stratum_listener("[::]:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        for client in ["127.0.0.1", "::1"] {
            let target = SocketAddr::new(client.parse().unwrap(), port);
            let connecting = tokio::net::TcpStream::connect(target);
            let (connected, accepted) = tokio::join!(connecting, listener.accept());
            connected.unwrap();
            let (_, peer) = accepted.unwrap();
            assert_eq!(peer.ip().to_canonical().to_string(), client);
        }
    }
}
