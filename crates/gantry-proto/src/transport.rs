//! The one place where Gantry builds gRPC servers and channels, so that
//! transport security and limits are decided once for every listener and
//! every outbound connection (replica to replica, CLI and agents to replicas).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Server};

/// The largest gRPC message any Gantry service accepts or sends (documented
/// in docs/api.md). Larger requests fail with `OUT_OF_RANGE`/`RESOURCE_EXHAUSTED`
/// before any work is done.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long establishing a connection may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Transport settings shared by servers and channels.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    /// Plaintext HTTP/2. Until the PKI lands (issue 4) this is the only mode.
    pub insecure: bool,
}

/// Why an address could not be turned into a channel.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {addr:?}: {reason}")]
pub struct AddressError {
    pub addr: String,
    pub reason: String,
}

impl Transport {
    /// A lazily connecting channel to `addr` (`host:port` or a URL). Nothing
    /// is dialled until the first call, and a broken connection is redialled
    /// by the channel itself, so callers keep one channel per peer.
    pub fn channel(&self, addr: &str) -> Result<Channel, AddressError> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url).map_err(|e| AddressError {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    /// A server builder with Gantry's transport settings.
    pub fn server(&self) -> Server {
        Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
    }
}
