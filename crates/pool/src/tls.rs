//! Stratum over TLS: the certificate the TLS port serves, loaded from PEM
//! files at start and again on every reload (a renewed certificate goes
//! into service without a restart; connected miners keep their session).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::PoolError;

/// Where the TLS port listens and what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub bind: SocketAddr,
    /// PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf.
    pub key_file: PathBuf,
    /// A connection with no finished handshake after this long is closed.
    pub handshake_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS certificate file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("the TLS key file {0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("the TLS certificate {cert} and key {key} do not go together: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// A loaded certificate and key, ready to serve.
#[derive(Clone)]
pub struct TlsIdentity {
    acceptor: TlsAcceptor,
    /// SHA-256 of the leaf certificate (DER), hex: what logs and clients
    /// compare to tell two certificates apart.
    pub fingerprint: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn pem_error(what: &'static str, path: &Path, error: rustls::pki_types::pem::Error) -> TlsError {
    let source = match error {
        rustls::pki_types::pem::Error::Io(source) => source,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{other:?}")),
    };
    TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    }
}

impl TlsIdentity {
    /// Reads and checks the pair (blocking: small local files; call it from
    /// `spawn_blocking` in async code). The key must be the leaf's.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<TlsIdentity, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert_file)
            .map_err(|e| pem_error("certificate file", cert_file, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("certificate file", cert_file, e))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate(cert_file.to_owned()));
        };
        let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
        let key = match PrivateKeyDer::from_pem_file(key_file) {
            Ok(key) => key,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NoKey(key_file.to_owned()))
            }
            Err(error) => return Err(pem_error("key file", key_file, error)),
        };
        let mismatch = |reason: String| TlsError::Mismatch {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
            reason,
        };
        // One provider, named here: the process may link several.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| mismatch(e.to_string()))?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
        certified
            .keys_match()
            .map_err(|e| mismatch(e.to_string()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| mismatch(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| mismatch(e.to_string()))?;
        Ok(TlsIdentity {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint,
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// The identity in service; swapped by a reload, read at each accept.
pub(crate) struct TlsPort {
    pub(crate) settings: TlsSettings,
    pub(crate) identity: parking_lot::RwLock<TlsIdentity>,
}

impl TlsPort {
    pub(crate) fn current(&self) -> TlsIdentity {
        self.identity.read().clone()
    }
}

/// Loads the TLS port's certificate and binds it (before the plain port
/// serves: a pool whose TLS port cannot start does not start).
pub(crate) async fn open_port(
    settings: TlsSettings,
) -> Result<(tokio::net::TcpListener, Arc<TlsPort>, SocketAddr), PoolError> {
    let identity = load_identity(&settings).await?;
    let bind_error = |source| PoolError::Bind {
        addr: settings.bind,
        source,
    };
    let listener = crate::listen::stratum_listener(settings.bind).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let port = Arc::new(TlsPort {
        settings,
        identity: parking_lot::RwLock::new(identity),
    });
    Ok((listener, port, addr))
}

pub(crate) async fn load_identity(settings: &TlsSettings) -> Result<TlsIdentity, TlsError> {
    let (cert, key) = (settings.cert_file.clone(), settings.key_file.clone());
    tokio::task::spawn_blocking(move || TlsIdentity::load(&cert, &key))
        .await
        .unwrap_or_else(|join| {
            Err(TlsError::Read {
                what: "certificate file",
                path: settings.cert_file.clone(),
                source: std::io::Error::other(join),
            })
        })
}
