//! The replica-to-replica service: Raft RPCs, forwarded writes, read index
//! and local status.

use std::sync::Arc;

use futures::StreamExt;
use gantry_core::Command;
use gantry_proto::internal::v1::raft_service_server::RaftService;
use gantry_proto::internal::v1::{
    LocalStatusRequest, LocalStatusResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
    SessionsReport, SessionsReportAck, SnapshotChunk, TailOutputRequest,
};
use gantry_store::{Snapshot, SnapshotMeta, Vote};
use openraft::async_runtime::WatchReceiver;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::api::deadline::deadline;
use crate::raft::network::{decode, encode};
use crate::replica::Replica;

/// The largest snapshot a replica accepts over the wire.
pub const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024 * 1024;

pub struct InternalService {
    pub(crate) replica: Arc<Replica>,
}

fn payload<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let data = encode(v).map_err(|e| Status::internal(format!("encoding reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

fn bad_payload(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft payload: {e}"))
}

/// This replica's own view of Raft, from its metrics.
pub(crate) fn local_status(replica: &Replica) -> LocalStatusResponse {
    let rx = replica.raft.metrics();
    let m = rx.borrow_watched();
    LocalStatusResponse {
        id: replica.id,
        role: role_name(m.state).to_owned(),
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        leader_id: m.current_leader.unwrap_or(0),
        has_leader: m.current_leader.is_some(),
        state_digest: 0,
        clock_offset_ms: replica.skew.offset_ms(),
        data_dir_free_bytes: replica.admission.free(),
        nospace_alarm: replica.admission.disk_low(),
        rules: gantry_core::RULES,
    }
}

/// A hash of the applied state and the index it is at. Replicas that
/// applied the same log prefix must agree (invariant 5).
pub(crate) async fn state_digest(replica: &Replica) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    replica
        .state
        .read(|s, index| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.to_snapshot().unwrap_or_default().hash(&mut h);
            (index, h.finish())
        })
        .await
}

pub(crate) fn role_name(s: openraft::ServerState) -> &'static str {
    match s {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl RaftService for InternalService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        payload(&self.replica.raft.append_entries(rpc).await)
    }

    type StreamAppendStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

    /// The follower side of pipelined replication: each request goes to
    /// openraft as it arrives, each result comes back in order. A request
    /// that does not decode ends the stream after the results before it
    /// (the leader starts a new one from what was acknowledged).
    async fn stream_append(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let input = tokio_stream::StreamExt::map_while(req.into_inner(), |msg| {
            match msg {
            Ok(p) => decode::<openraft::raft::AppendEntriesRequest<gantry_store::TypeConfig>>(&p.data)
                .map_err(|e| tracing::warn!(error = %e, "undecodable append in a replication stream; ending it"))
                .ok(),
            Err(status) => {
                tracing::debug!(error = %status, "replication stream from the leader ended");
                None
            }
        }
        });
        let output = self.replica.raft.stream_append(input).map(|result| {
            encode(&result)
                .map(|data| RaftPayload { data })
                .map_err(|e| Status::internal(format!("encoding an append result: {e}")))
        });
        Ok(Response::new(Box::pin(self.replica.until_stopped(output))))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        payload(&self.replica.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        payload(&self.replica.raft.pre_vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad_payload)?;
        let reply = self
            .replica
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(openraft::errors::RaftError::<gantry_store::TypeConfig>::Fatal);
        payload(&reply)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = decode(&first.header).map_err(bad_payload)?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if data.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "snapshot is larger than the {MAX_SNAPSHOT_BYTES}-byte limit"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        payload(
            &self
                .replica
                .raft
                .install_full_snapshot(vote, snapshot)
                .await,
        )
    }

    async fn propose(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let cmd: Command = decode(&req.into_inner().data).map_err(bad_payload)?;
        payload(&self.replica.propose_forwarded(cmd, deadline).await)
    }

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let deadline = deadline(&req, self.replica.config.request_timeout());
        let read_index = self.replica.serve_read_index(deadline).await?;
        Ok(Response::new(ReadIndexResponse { read_index }))
    }

    async fn local_status(
        &self,
        req: Request<LocalStatusRequest>,
    ) -> Result<Response<LocalStatusResponse>, Status> {
        let mut status = local_status(&self.replica);
        if req.into_inner().with_digest {
            let (index, digest) = state_digest(&self.replica).await;
            status.applied_index = index;
            status.state_digest = digest;
        }
        Ok(Response::new(status))
    }

    type TailOutputStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<gantry_proto::v1::LogChunk, Status>> + Send>,
    >;

    async fn tail_output(
        &self,
        req: Request<TailOutputRequest>,
    ) -> Result<Response<Self::TailOutputStream>, Status> {
        let r = req.into_inner();
        let attempt = gantry_core::AttemptRef {
            job_id: r.job_id,
            task: r.task,
            attempt: r.attempt,
        };
        let tail = self.replica.output.tail(&r.node_id, attempt).await;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(crate::api::watch::stream_tail(tail, r.follow, tx));
        Ok(Response::new(Box::pin(self.replica.until_stopped(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))))
    }

    async fn report_sessions(
        &self,
        req: Request<SessionsReport>,
    ) -> Result<Response<SessionsReportAck>, Status> {
        let ack = self
            .replica
            .accept_sessions_report(req.into_inner())
            .await?;
        Ok(Response::new(ack))
    }
}
