//! The Raft network: openraft's RPCs over the internal gRPC service.
//!
//! Requests and responses are openraft's own serde types, encoded as JSON
//! inside `RaftPayload` bytes (see proto/gantry/internal/v1/raft.proto).

use std::future::Future;
use std::time::Duration;

use gantry_proto::internal::v1::{RaftPayload, SnapshotChunk};
use gantry_store::{ReplicaId, Snapshot, TypeConfig, Vote};
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;

use crate::peers::Peers;

/// Snapshot data is sent in chunks of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// The shortest deadline given to an append or vote RPC. openraft's own TTL
/// for appends equals the heartbeat interval, which is too tight for a
/// loaded 2-core machine flushing a large batch.
const MIN_RPC_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(b)
}

/// Makes a client per target replica; channels come from the shared pool.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) peers: Peers,
}

pub struct PeerClient {
    peers: Peers,
    target: ReplicaId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: ReplicaId, node: &BasicNode) -> Self::Network {
        PeerClient {
            peers: self.peers.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

fn to_rpc_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn net_err(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(msg.to_string()))
}

// === impl PeerClient ===

impl PeerClient {
    /// Sends one unary request and decodes openraft's `Result` from the reply.
    async fn unary<Req, Resp, Fut>(
        &self,
        req: &Req,
        timeout: Duration,
        call: impl FnOnce(
            gantry_proto::internal::v1::raft_service_client::RaftServiceClient<
                tonic::transport::Channel,
            >,
            tonic::Request<RaftPayload>,
        ) -> Fut,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self
            .peers
            .raft_client(&self.addr)
            .await
            .map_err(to_rpc_error)?;
        let mut request = tonic::Request::new(RaftPayload {
            data: encode(req).map_err(net_err)?,
        });
        request.set_timeout(timeout);
        let reply = tokio::time::timeout(timeout, call(client, request))
            .await
            .map_err(|_| {
                net_err(format!(
                    "replica {} at {} did not answer within {timeout:?}",
                    self.target, self.addr
                ))
            })?
            .map_err(to_rpc_error)?;
        let result: Result<Resp, RaftError<TypeConfig>> =
            decode(&reply.into_inner().data).map_err(net_err)?;
        result.map_err(|e| net_err(format!("replica {} refused: {e}", self.target)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
        self.unary(&rpc, timeout, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = option.hard_ttl();
        self.unary(&rpc, timeout, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = option.hard_ttl();
        // A replica from before pre-vote (during a rolling upgrade) does not
        // know the call: it counts as granting, as openraft does for a
        // network without it, so a mixed cluster can still elect.
        let granted: Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>> =
            Ok(VoteResponse::new(rpc.vote, None, true));
        let fallback = encode(&granted).map_err(net_err)?;
        self.unary(&rpc, timeout, |mut c, r| async move {
            match c.pre_vote(r).await {
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    Ok(tonic::Response::new(RaftPayload { data: fallback }))
                }
                other => other,
            }
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
        self.unary(&req, timeout, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self
            .peers
            .raft_client(&self.addr)
            .await
            .map_err(|s| StreamingError::from(to_rpc_error(s)))?;
        let header =
            encode(&(vote, &snapshot.meta)).map_err(|e| StreamingError::from(net_err(e)))?;
        let data = snapshot.snapshot;
        let mut chunks: Vec<SnapshotChunk> = data
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .map(|c| SnapshotChunk {
                header: Vec::new(),
                data: c.to_vec(),
            })
            .collect();
        match chunks.first_mut() {
            Some(first) => first.header = header,
            None => chunks.push(SnapshotChunk {
                header,
                data: Vec::new(),
            }),
        }
        tracing::info!(
            target_replica = self.target,
            bytes = data.len(),
            "sending snapshot"
        );
        let send = client.install_snapshot(tokio_stream::iter(chunks));
        let reply = tokio::select! {
            r = send => r.map_err(|s| StreamingError::from(to_rpc_error(s)))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let result: Result<SnapshotResponse<TypeConfig>, openraft::errors::Fatal<TypeConfig>> =
            decode(&reply.into_inner().data).map_err(|e| StreamingError::from(net_err(e)))?;
        result.map_err(|e| {
            StreamingError::from(net_err(format!(
                "replica {} refused snapshot: {e}",
                self.target
            )))
        })
    }
}
