//! The stratum listener. `[::]:PORT` takes IPv6 and IPv4 miners on one
//! socket (IPV6_V6ONLY off, whatever the system's default); a host without
//! IPv6 gets `0.0.0.0:PORT` instead, with a warning.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::server::Port;
use crate::tls::TlsPort;
use crate::{PoolError, PoolSettings};

/// The ports a pool serves, bound before anything else starts.
pub(crate) struct Ports {
    /// Each listener with what it speaks.
    pub(crate) listeners: Vec<(TcpListener, Port)>,
    pub(crate) stratum: SocketAddr,
    pub(crate) tls: Option<(SocketAddr, Arc<TlsPort>)>,
    /// Where V2 miners connect: a port of its own, or the V1 port.
    pub(crate) sv2: Option<SocketAddr>,
}

/// Binds the V1 port, then the TLS and V2 ports when configured; V2 on
/// the V1 port (`Sv2Settings::bind` unset) makes that port a shared one.
pub(crate) async fn open_ports(settings: &PoolSettings) -> Result<Ports, PoolError> {
    let bind = |addr: SocketAddr| {
        let bind_error = |source| PoolError::Bind { addr, source };
        let listener = stratum_listener(addr).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        Ok::<_, PoolError>((listener, local))
    };
    let (listener, stratum) = bind(settings.stratum_bind)?;
    let network = settings.network;
    let mut ports = Ports {
        listeners: Vec::new(),
        stratum,
        tls: None,
        sv2: None,
    };
    let shared_v2 = settings.sv2.clone().filter(|sv2| sv2.bind.is_none());
    match shared_v2 {
        Some(sv2) => {
            tracing::info!(%stratum, %network, authority_public_key = %sv2.key.public_base58(),
                "stratum server listening, V1 and V2 on one port");
            ports.sv2 = Some(stratum);
            ports
                .listeners
                .push((listener, Port::Shared(Arc::new(sv2))));
        }
        None => {
            tracing::info!(%stratum, %network, "stratum server listening");
            ports.listeners.push((listener, Port::Plain));
        }
    }
    if let Some(tls_settings) = settings.tls.clone() {
        let (listener, port, addr) = crate::tls::open_port(tls_settings).await?;
        tracing::info!(%addr, fingerprint = %port.current().fingerprint,
            "stratum TLS server listening");
        ports.listeners.push((listener, Port::Tls(port.clone())));
        ports.tls = Some((addr, port));
    }
    if let Some(sv2) = settings.sv2.clone() {
        if let Some(addr) = sv2.bind {
            let (listener, addr) = bind(addr)?;
            tracing::info!(%addr, authority_public_key = %sv2.key.public_base58(),
                "stratum v2 server listening");
            ports.sv2 = Some(addr);
            ports.listeners.push((listener, Port::Sv2(Arc::new(sv2))));
        }
    }
    Ok(ports)
}

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
