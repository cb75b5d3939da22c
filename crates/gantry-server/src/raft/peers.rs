//! One pooled channel per peer address, shared by the Raft network and
//! write forwarding.

use std::collections::HashMap;
use std::sync::Arc;

use gantry_proto::internal::v1::raft_service_client::RaftServiceClient;
use gantry_proto::transport::Transport;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{RwLock, watch};
use tonic::Status;
use tonic::transport::Channel;

/// Raft messages carry batches of log entries, each up to a whole client
/// request (`MAX_MESSAGE_BYTES`), so replica-to-replica messages get more room.
pub const MAX_INTERNAL_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

type TlsWatch = watch::Receiver<Arc<rustls::ServerConfig>>;

#[derive(Clone)]
pub struct Peers {
    transport: Transport,
    channels: Arc<RwLock<HashMap<String, Channel>>>,
    /// When the TLS files are renewed, pooled channels (which hold the old
    /// client certificate) are dropped and redialled with the new one.
    tls: Option<TlsWatch>,
    tls_seen: Arc<AtomicUsize>,
}

fn config_id(tls: &TlsWatch) -> usize {
    Arc::as_ptr(&tls.borrow()) as usize
}

impl Peers {
    pub fn new(transport: Transport, tls: Option<TlsWatch>) -> Self {
        let seen = tls.as_ref().map_or(0, config_id);
        Self {
            transport,
            channels: Arc::default(),
            tls,
            tls_seen: Arc::new(AtomicUsize::new(seen)),
        }
    }

    pub async fn channel(&self, addr: &str) -> Result<Channel, Status> {
        if let Some(tls) = &self.tls {
            let now = config_id(tls);
            if self.tls_seen.swap(now, Ordering::Relaxed) != now {
                tracing::info!("TLS certificates renewed: redialling peers");
                self.channels.write().await.clear();
            }
        }
        if let Some(ch) = self.channels.read().await.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self
            .transport
            .channel(addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(self
            .channels
            .write()
            .await
            .entry(addr.to_owned())
            .or_insert(ch)
            .clone())
    }

    pub async fn raft_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, Status> {
        Ok(RaftServiceClient::new(self.channel(addr).await?)
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES))
    }
}
