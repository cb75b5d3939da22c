//! The one place where Gantry builds gRPC servers and channels, so that
//! transport security and limits are decided once for every listener and
//! every outbound connection (replica to replica, CLI and agents to replicas).
//!
//! Security is mutual TLS under the cluster CA: every listener requires a
//! client certificate, every channel presents one and verifies the server
//! against the CA. Plaintext exists only as the explicit [`Transport::insecure`].

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod reload;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};

/// The largest gRPC message any Gantry service accepts or sends (documented
/// in docs/api.md). Larger requests fail with `OUT_OF_RANGE`/`RESOURCE_EXHAUSTED`
/// before any work is done.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long establishing a connection may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a process's TLS material lives (a `[tls]` table in a config file).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM): peers must chain to it.
    pub ca: PathBuf,
    /// This process's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Transport settings shared by servers and channels.
#[derive(Clone, Debug)]
pub struct Transport {
    tls: Option<TlsPaths>,
}

/// Why an address or the TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

/// Kept for callers that name the address error.
pub type AddressError = TransportError;

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Transport {
    /// Plaintext HTTP/2: only behind an explicit `--insecure`.
    pub fn insecure() -> Self {
        Self { tls: None }
    }

    /// Mutual TLS with the given files. They are checked now (errors name
    /// the file) and read again for every new channel, so renewed files are
    /// used by the next connection without a restart.
    pub fn mtls(paths: &TlsPaths) -> Result<Self, TransportError> {
        client_tls(paths)?;
        Ok(Self {
            tls: Some(paths.clone()),
        })
    }

    pub fn is_secure(&self) -> bool {
        self.tls.is_some()
    }

    pub fn tls_paths(&self) -> Option<&TlsPaths> {
        self.tls.as_ref()
    }

    /// A lazily connecting channel to `addr` (`host:port` or a URL). Nothing
    /// is dialled until the first call, and a broken connection is redialled
    /// by the channel itself, so callers keep one channel per peer.
    pub fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("{scheme}://{addr}")
        };
        let mut endpoint = Endpoint::from_shared(url).map_err(|e| TransportError::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        if let Some(paths) = &self.tls {
            endpoint = endpoint
                .tls_config(client_tls(paths)?)
                .map_err(|e| TransportError::Tls(e.to_string()))?;
        }
        Ok(endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    /// A server builder with Gantry's transport settings. TLS on the
    /// server side is done by [`reload::incoming`], so certificates can be
    /// renewed without a restart.
    pub fn server(&self) -> Server {
        Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
    }
}

fn client_tls(paths: &TlsPaths) -> Result<ClientTlsConfig, TransportError> {
    let ca = Certificate::from_pem(read(&paths.ca)?);
    let identity = Identity::from_pem(read(&paths.cert)?, read(&paths.key)?);
    Ok(ClientTlsConfig::new().ca_certificate(ca).identity(identity))
}
