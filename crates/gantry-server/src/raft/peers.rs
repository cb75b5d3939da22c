//! One pooled channel per peer address, shared by the Raft network and
//! write forwarding.

use std::collections::HashMap;
use std::sync::Arc;

use gantry_proto::internal::v1::raft_service_client::RaftServiceClient;
use gantry_proto::transport::Transport;
use std::sync::atomic::{AtomicUsize, Ordering};

use gantry_core::Command;
use gantry_proto::internal::v1::{
    LocalStatusRequest, LocalStatusResponse, RaftPayload, ReadIndexRequest, SessionsReport,
    SessionsReportAck,
};
use gantry_store::ReplicaId;
use tokio::sync::{RwLock, watch};
use tokio::time::Instant;

use crate::raft::network::{decode, encode};
use crate::replica::ForwardReply;
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

/// `msg` as a request that times out at `deadline`.
fn until<T>(msg: T, deadline: Instant) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(deadline.saturating_duration_since(Instant::now()));
    req
}

/// The port over gRPC: each call on the pooled channel to the peer's address.
#[tonic::async_trait]
impl crate::replica::port::PeerPort for Peers {
    async fn propose(
        &self,
        leader: ReplicaId,
        addr: &str,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<ForwardReply, Status> {
        let mut client = self.raft_client(addr).await?;
        let data = encode(cmd).map_err(|e| Status::internal(e.to_string()))?;
        let mut req = until(RaftPayload { data }, deadline);
        // The leader's span continues the caller's trace.
        gantry_telemetry::otel::inject(req.metadata_mut());
        let reply = client.propose(req).await?.into_inner();
        decode::<ForwardReply>(&reply.data).map_err(|e| {
            Status::internal(format!("leader {leader} sent an undecodable reply: {e}"))
        })
    }

    async fn read_index(
        &self,
        _leader: ReplicaId,
        addr: &str,
        deadline: Instant,
    ) -> Result<u64, Status> {
        let mut client = self.raft_client(addr).await?;
        Ok(client
            .read_index(until(ReadIndexRequest {}, deadline))
            .await?
            .into_inner()
            .read_index)
    }

    async fn report_sessions(
        &self,
        _leader: ReplicaId,
        addr: &str,
        report: SessionsReport,
        deadline: Instant,
    ) -> Result<SessionsReportAck, Status> {
        let mut client = self.raft_client(addr).await?;
        Ok(client
            .report_sessions(until(report, deadline))
            .await?
            .into_inner())
    }

    async fn local_status(
        &self,
        _peer: ReplicaId,
        addr: &str,
        deadline: Instant,
    ) -> Result<LocalStatusResponse, Status> {
        let mut client = self.raft_client(addr).await?;
        Ok(client
            .local_status(until(LocalStatusRequest { with_digest: false }, deadline))
            .await?
            .into_inner())
    }
}
