//! One pooled channel per peer address, shared by the Raft network and
//! write forwarding.

use std::collections::HashMap;
use std::sync::Arc;

use gantry_proto::internal::v1::raft_service_client::RaftServiceClient;
use gantry_proto::transport::Transport;
use tokio::sync::RwLock;
use tonic::Status;
use tonic::transport::Channel;

/// Raft messages carry batches of log entries, each up to a whole client
/// request (`MAX_MESSAGE_BYTES`), so replica-to-replica messages get more room.
pub const MAX_INTERNAL_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Clone)]
pub struct Peers {
    transport: Transport,
    channels: Arc<RwLock<HashMap<String, Channel>>>,
}

impl Peers {
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            channels: Arc::default(),
        }
    }

    pub async fn channel(&self, addr: &str) -> Result<Channel, Status> {
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
