//! The Raft network: openraft's RPCs over the internal gRPC service.
//!
//! Requests and responses are openraft's own serde types, encoded as JSON
//! inside `RaftPayload` bytes (see proto/gantry/internal/v1/raft.proto).
//! Replication is pipelined over one `StreamAppend` call per openraft
//! replication session: the leader sends each new batch of entries as a
//! message without waiting for the answer to the previous one (one unary
//! `AppendEntries` call per batch, each waiting on the follower's fsync, is
//! the fallback for replicas that do not know the call). An append that
//! carries only a commit index is held briefly for the next entries to
//! carry it (see `commit_hold`).

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::Stream;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::Fatal;
use openraft::network::stream_append_sequential;
use openraft::raft::StreamAppendResult;

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

use crate::raft::commit_hold::{self, Outgoing, Sent};
use crate::raft::peers::Peers;
use crate::raft::reachability::Reachability;

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
    /// Per target: kept across the clients openraft makes for it, so a
    /// peer's backoff and what was logged about it outlive one term.
    reach: std::sync::Arc<tokio::sync::Mutex<std::collections::HashMap<ReplicaId, Reachability>>>,
}

impl NetworkFactory {
    pub fn new(peers: Peers) -> Self {
        Self {
            peers,
            reach: std::sync::Arc::default(),
        }
    }
}

pub struct PeerClient {
    peers: Peers,
    target: ReplicaId,
    addr: String,
    /// Whether the target takes `StreamAppend`; a replica from before it
    /// answers UNIMPLEMENTED once and is sent one `AppendEntries` at a time.
    streaming: bool,
    /// Replication to a peer that does not answer backs off.
    reach: Reachability,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: ReplicaId, node: &BasicNode) -> Self::Network {
        let reach = {
            let mut all = self.reach.lock().await;
            let r = all
                .entry(target)
                .or_insert_with(|| Reachability::new(target, &node.addr));
            if r.addr() != node.addr {
                *r = Reachability::new(target, &node.addr);
            }
            r.clone()
        };
        PeerClient {
            peers: self.peers.clone(),
            target,
            addr: node.addr.clone(),
            streaming: true,
            reach,
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

    /// Opens one `StreamAppend` call carrying `input`; its answers in order.
    async fn open_stream<S>(
        &mut self,
        input: S,
        timeout: Duration,
    ) -> Result<BoxStream<'static, AppendAnswer>, RPCError<TypeConfig>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let mut client = self
            .peers
            .raft_client(&self.addr)
            .await
            .map_err(to_rpc_error)?;
        let (sent_tx, sent) = tokio::sync::mpsc::unbounded_channel();
        let target = self.target;
        let outgoing = Outgoing::new(input, sent_tx);
        let requests = futures::stream::unfold(outgoing, move |mut out| async move {
            let req = out.next().await?;
            match encode(&req) {
                Ok(data) => Some((RaftPayload { data }, out)),
                Err(e) => {
                    tracing::error!(target_replica = target, error = %e, "could not encode an append; ending the stream");
                    None
                }
            }
        });
        let responses = match tokio::time::timeout(timeout, client.stream_append(requests)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) if s.code() == Code::Unimplemented => {
                tracing::info!(
                    target_replica = target,
                    "replica does not take StreamAppend (an older version); replicating one AppendEntries at a time"
                );
                self.streaming = false;
                return Err(RPCError::Unreachable(Unreachable::new(&s)));
            }
            Ok(Err(s)) => return Err(to_rpc_error(s)),
            Err(_) => {
                return Err(net_err(format!(
                    "replica {target} at {} did not open a replication stream within {timeout:?}",
                    self.addr
                )));
            }
        };
        let answers = Answers {
            responses,
            sent,
            unanswered: VecDeque::new(),
            ready: VecDeque::new(),
            timeout,
            target,
            done: false,
            reach: self.reach.clone(),
        };
        let stream = futures::stream::unfold(answers, |mut a| async move {
            let item = a.next().await?;
            Some((item, a))
        });
        Ok(Box::pin(stream))
    }
}

/// What is left of a pipelined replication stream: the target's answers,
/// what became of each request (see `commit_hold`), and answers settled
/// but not yet handed to openraft.
struct Answers {
    responses: tonic::Streaming<RaftPayload>,
    sent: tokio::sync::mpsc::UnboundedReceiver<Sent>,
    unanswered: VecDeque<Sent>,
    ready: VecDeque<AppendAnswer>,
    timeout: Duration,
    target: ReplicaId,
    done: bool,
    /// A stream that fails makes the next one wait (see `reachability`).
    reach: Reachability,
}

type AppendAnswer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl Answers {
    /// The next answer, in request order. A request unanswered for `timeout`
    /// fails the stream (a target that stopped answering without closing the
    /// connection); an idle stream, with nothing to answer, waits for the
    /// leader's next request as long as it takes.
    async fn next(&mut self) -> Option<AppendAnswer> {
        loop {
            if let Some(a) = self.ready.pop_front() {
                return Some(a);
            }
            if self.done {
                return None;
            }
            while let Ok(s) = self.sent.try_recv() {
                self.unanswered.push_back(s);
            }
            let deadline = commit_hold::oldest_sent(&self.unanswered).map(|t| t + self.timeout);
            let overdue = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                m = self.responses.message() => m,
                Some(s) = self.sent.recv() => {
                    self.unanswered.push_back(s);
                    continue;
                }
                () = overdue => {
                    self.done = true;
                    let e = net_err(format!(
                        "replica {} did not answer an append within {:?}",
                        self.target, self.timeout
                    ));
                    self.reach.failed(&e).await;
                    return Some(Err(e));
                }
            };
            let answer = match message {
                Ok(Some(p)) => self.decode(&p.data),
                Ok(None) => return None,
                Err(status) => Err(to_rpc_error(status)),
            };
            // Requests superseded before the one answered share its answer
            // when it is a success; a failure stands for the first of them
            // (openraft stops reading at a failure).
            let superseded = commit_hold::settle(&mut self.unanswered).unwrap_or_default();
            if matches!(answer, Ok(Ok(_))) {
                self.ready
                    .extend(superseded.into_iter().map(|id| Ok(Ok(id))));
            }
            self.done = answer.is_err();
            if let Err(e) = &answer {
                self.reach.failed(e).await;
            }
            self.ready.push_back(answer);
        }
    }

    fn decode(&self, data: &[u8]) -> AppendAnswer {
        let decoded: Result<Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>, _> =
            decode(data);
        match decoded {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(fatal)) => Err(net_err(format!("replica {} refused: {fatal}", self.target))),
            Err(e) => Err(net_err(format!(
                "replica {} sent an undecodable append result: {e}",
                self.target
            ))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    /// Pipelined replication over one `StreamAppend` call: requests go out
    /// as openraft makes them, without waiting for earlier answers.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        if !self.streaming {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
            self.reach.wait().await;
            let opened = self.open_stream(input, timeout).await;
            match &opened {
                Ok(_) => self.reach.succeeded().await,
                Err(e) => self.reach.failed(e).await,
            }
            opened
        })
    }
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
        self.reach.wait().await;
        let answer = self
            .unary(&rpc, timeout, |mut c, r| async move {
                c.append_entries(r).await
            })
            .await;
        match &answer {
            Ok(_) => self.reach.succeeded().await,
            Err(e) => self.reach.failed(e).await,
        }
        answer
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

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
