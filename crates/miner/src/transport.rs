//! The miner's connection: plain TCP (`stratum+tcp://`) or TLS
//! (`stratum+ssl://`), one type for both so the client and the miner are
//! written once.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::MinerError;

/// How to reach the pool over TLS: the name its certificate must carry
/// and the roots it must chain to.
#[derive(Clone)]
pub struct MinerTls {
    pub server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for MinerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MinerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl MinerTls {
    /// Trusts the certificates of `ca_file` (PEM) only: a private pool's own
    /// CA, or its self-signed certificate.
    pub fn with_ca_file(ca_file: &Path, server_name: &str) -> Result<MinerTls, MinerError> {
        let tls_error =
            |detail: String| MinerError::Tls(format!("{}: {detail}", ca_file.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| tls_error(e.to_string()))? {
            let cert = cert.map_err(|e| tls_error(e.to_string()))?;
            roots.add(cert).map_err(|e| tls_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(tls_error("no PEM certificate in it".into()));
        }
        MinerTls::with_roots(roots, server_name)
    }

    /// Trusts the system's certificate store (a pool with a public
    /// certificate, e.g. from Let's Encrypt).
    pub fn with_system_roots(server_name: &str) -> Result<MinerTls, MinerError> {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(MinerError::Tls(
                "no usable certificate in the system's store (install ca-certificates, or give the pool's CA file)"
                    .into(),
            ));
        }
        MinerTls::with_roots(roots, server_name)
    }

    fn with_roots(roots: rustls::RootCertStore, server_name: &str) -> Result<MinerTls, MinerError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| MinerError::Tls(format!("{server_name:?} is no server name: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MinerError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(MinerTls {
            server_name,
            config: Arc::new(config),
        })
    }
}

/// A connection to the pool, TLS or not.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Connects to `addr` (from `local` if given) with no Nagle delay, then
    /// does the TLS handshake when `tls` is set.
    pub async fn connect(
        addr: SocketAddr,
        local: Option<IpAddr>,
        tls: Option<&MinerTls>,
    ) -> Result<Transport, MinerError> {
        let stream = crate::client::connect_tcp(addr, local).await?;
        match tls {
            None => Ok(Transport::Plain(stream)),
            Some(tls) => {
                let connector = TlsConnector::from(tls.config.clone());
                let stream = connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|e| MinerError::Tls(format!("handshake with {addr}: {e}")))?;
                Ok(Transport::Tls(Box::new(stream)))
            }
        }
    }

    /// SHA-256 (hex) of the certificate the pool presented; `None` on plain
    /// TCP.
    pub fn peer_certificate_sha256(&self) -> Option<String> {
        use sha2::Digest;
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(stream) => {
                let (_, connection) = stream.get_ref();
                let leaf = connection.peer_certificates()?.first()?;
                Some(hex::encode(sha2::Sha256::digest(leaf.as_ref())))
            }
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
