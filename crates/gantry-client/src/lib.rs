//! A typed Gantry client that talks to any replica.
//!
//! Replicas forward writes to the leader themselves, so a client never needs
//! to know who leads. This client keeps one channel per replica, sticks to
//! the last replica that answered, and on a transport failure or
//! `UNAVAILABLE` moves to the next one until its retry deadline. A follower
//! names the leader in its reply to a write ([`gantry_proto::LEADER_HINT`]);
//! when that address is one of this client's, later calls go there, which
//! saves the forwarding hop (turn it off with [`ClientOptions::follow_leader`]). Submits are
//! made safe to retry by giving every job without an idempotency key a fresh
//! one, so a retried submit whose first try was committed returns the same job.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gantry_proto::transport::Transport;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_proto::v1::job_service_client::JobServiceClient;
use gantry_proto::v1::node_service_client::NodeServiceClient;
use gantry_proto::v1::{
    AddReplicaRequest, CancelJobRequest, ClusterStatusRequest, ClusterStatusResponse, Eligibility,
    GetJobRequest, Job, JobEvent, JobSpec, ListJobsRequest, ListJobsResponse, ListNodesRequest,
    LogChunk, LogsRequest, Node, RemoveReplicaRequest, SetEligibilityRequest, SubmitJobsRequest,
    SubmitJobsResponse, WatchRequest,
};
use gantry_telemetry::otel::InjectContext;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A channel whose requests carry the caller's trace context (`traceparent`).
type Traced = InterceptedService<Channel, InjectContext>;

pub use gantry_proto::v1 as api;

/// The environment variable the CLI reads replica addresses from.
pub const SERVERS_ENV: &str = "GANTRY_SERVERS";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no replica addresses given: pass --servers host:port,... or set {SERVERS_ENV}")]
    NoServers,
    #[error(transparent)]
    Address(#[from] gantry_proto::transport::AddressError),
    /// The server's answer, with its gRPC code and message.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Status),
}

impl ClientError {
    /// The gRPC code, when the error came from a server.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

/// Knobs for [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline for one RPC to one replica.
    pub request_timeout: Duration,
    /// How long to keep trying other replicas after failures.
    pub retry_deadline: Duration,
    pub transport: Transport,
    /// Move to the leader a follower names in its reply to a write (only
    /// to an address in this client's list). On by default.
    pub follow_leader: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(15),
            // Tests and tools set their own; the CLI refuses to run without
            // TLS files or an explicit --insecure.
            transport: Transport::insecure(),
            follow_leader: true,
        }
    }
}

/// See the crate docs.
#[derive(Debug)]
pub struct Client {
    channels: Vec<(String, Channel)>,
    current: AtomicUsize,
    opts: ClientOptions,
}

/// Whether a failed call may be tried again, on another replica.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // A deadline on one replica (e.g. a partitioned follower) is worth
        // one more try elsewhere while the overall deadline allows.
        Code::DeadlineExceeded => true,
        _ => false,
    }
}

// === impl Client ===

impl Client {
    /// A client for the given replica addresses (`host:port`, comma lists allowed).
    pub fn new<S: AsRef<str>>(servers: &[S], opts: ClientOptions) -> Result<Self, ClientError> {
        let mut channels = Vec::new();
        for addr in servers
            .iter()
            .flat_map(|s| s.as_ref().split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            channels.push((addr.to_owned(), opts.transport.channel(addr)?));
        }
        if channels.is_empty() {
            return Err(ClientError::NoServers);
        }
        Ok(Self {
            channels,
            current: AtomicUsize::new(0),
            opts,
        })
    }

    /// A client for `GANTRY_SERVERS`.
    pub fn from_env(opts: ClientOptions) -> Result<Self, ClientError> {
        let servers = std::env::var(SERVERS_ENV).unwrap_or_default();
        Self::new(&[servers], opts)
    }

    /// The addresses this client tries, in order.
    pub fn servers(&self) -> Vec<&str> {
        self.channels.iter().map(|(a, _)| a.as_str()).collect()
    }

    /// The address the next call goes to first.
    pub fn current_server(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        &self.channels[i].0
    }

    /// A write's reply, after following its [`gantry_proto::LEADER_HINT`]
    /// when the leader it names is one of this client's replicas.
    fn followed<T>(&self, reply: tonic::Response<T>) -> T {
        let leader = reply
            .metadata()
            .get(gantry_proto::LEADER_HINT)
            .and_then(|v| v.to_str().ok());
        if self.opts.follow_leader
            && let Some(i) = leader.and_then(|l| self.channels.iter().position(|(a, _)| a == l))
        {
            self.current.store(i, Ordering::Relaxed);
        }
        reply.into_inner()
    }

    /// Runs `call` against replicas until one answers with something other
    /// than a retryable failure, or the retry deadline passes.
    async fn with_retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.opts.retry_deadline;
        let mut backoff = Duration::from_millis(20);
        let mut tries_this_round = 0;
        loop {
            let i = self.current.load(Ordering::Relaxed) % self.channels.len();
            let (addr, channel) = &self.channels[i];
            let result = tokio::time::timeout(self.opts.request_timeout, call(channel.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "replica {addr} did not answer within {:?}",
                        self.opts.request_timeout
                    )))
                });
            let status = match result {
                Ok(v) => return Ok(v),
                Err(s) if retryable(&s) => s,
                Err(s) => return Err(ClientError::Status(s)),
            };
            tracing::debug!(replica = %addr, error = %status, "call failed; trying the next replica");
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % self.channels.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tries_this_round += 1;
            if tokio::time::Instant::now() + backoff >= deadline {
                return Err(ClientError::Status(status));
            }
            // Sweep all replicas once quickly, then back off between sweeps.
            if tries_this_round >= self.channels.len() {
                tries_this_round = 0;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }

    fn jobs(channel: Channel) -> JobServiceClient<Traced> {
        JobServiceClient::with_interceptor(channel, InjectContext)
            .max_decoding_message_size(gantry_proto::transport::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(gantry_proto::transport::MAX_MESSAGE_BYTES)
    }

    fn cluster(channel: Channel) -> ClusterServiceClient<Traced> {
        ClusterServiceClient::with_interceptor(channel, InjectContext)
    }

    /// Submits jobs in one request (one log entry). Jobs without an
    /// idempotency key get a fresh one so the request can be retried safely
    /// (time-ordered, UUIDv7: the cluster's key index grows at its end).
    pub async fn submit_jobs(
        &self,
        mut jobs: Vec<JobSpec>,
    ) -> Result<SubmitJobsResponse, ClientError> {
        for job in jobs.iter_mut().filter(|j| j.idempotency_key.is_empty()) {
            job.idempotency_key = uuid::Uuid::now_v7().to_string();
        }
        let req = SubmitJobsRequest { jobs };
        self.with_retry(|ch| {
            let req = req.clone();
            async move { Ok(self.followed(Self::jobs(ch).submit_jobs(req).await?)) }
        })
        .await
    }

    pub async fn get_job(&self, job_id: &str, stale: bool) -> Result<Job, ClientError> {
        let req = GetJobRequest {
            job_id: job_id.to_owned(),
            stale,
        };
        self.with_retry(|ch| {
            let req = req.clone();
            async move {
                let resp = Self::jobs(ch).get_job(req).await?.into_inner();
                resp.job
                    .ok_or_else(|| Status::internal("server returned no job"))
            }
        })
        .await
    }

    pub async fn list_jobs(&self, req: ListJobsRequest) -> Result<ListJobsResponse, ClientError> {
        self.with_retry(|ch| {
            let req = req.clone();
            async move { Ok(Self::jobs(ch).list_jobs(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn cancel_job(&self, job_id: &str, reason: &str) -> Result<Job, ClientError> {
        let req = CancelJobRequest {
            job_id: job_id.to_owned(),
            reason: reason.to_owned(),
        };
        self.with_retry(|ch| {
            let req = req.clone();
            async move {
                let resp = self.followed(Self::jobs(ch).cancel_job(req).await?);
                resp.job
                    .ok_or_else(|| Status::internal("server returned no job"))
            }
        })
        .await
    }

    /// Job changes after `from_index` (every job when `job_id` is empty).
    /// Opening the stream is retried on other replicas; a broken stream is
    /// the caller's to reopen from the last event's index.
    pub async fn watch(
        &self,
        job_id: &str,
        from_index: u64,
    ) -> Result<tonic::Streaming<JobEvent>, ClientError> {
        let req = WatchRequest {
            job_id: job_id.to_owned(),
            from_index,
        };
        self.with_retry(|ch| {
            let req = req.clone();
            async move { Ok(Self::jobs(ch).watch(req).await?.into_inner()) }
        })
        .await
    }

    /// A task's output: live while it runs (to the end with `follow`), the
    /// stored tails after.
    pub async fn logs(
        &self,
        job_id: &str,
        task: u32,
        follow: bool,
    ) -> Result<tonic::Streaming<LogChunk>, ClientError> {
        let req = LogsRequest {
            job_id: job_id.to_owned(),
            task,
            follow,
        };
        self.with_retry(|ch| {
            let req = req.clone();
            async move { Ok(Self::jobs(ch).logs(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn list_nodes(&self, stale: bool) -> Result<Vec<Node>, ClientError> {
        self.with_retry(|ch| async move {
            Ok(NodeServiceClient::with_interceptor(ch, InjectContext)
                .list_nodes(ListNodesRequest { stale })
                .await?
                .into_inner()
                .nodes)
        })
        .await
    }

    /// Cordon, uncordon or drain a node (`drain_deadline_ms` for draining).
    pub async fn set_eligibility(
        &self,
        node_id: &str,
        eligibility: Eligibility,
        drain_deadline_ms: u64,
    ) -> Result<Node, ClientError> {
        let req = SetEligibilityRequest {
            node_id: node_id.to_owned(),
            eligibility: eligibility as i32,
            drain_deadline_ms,
        };
        self.with_retry(|ch| {
            let req = req.clone();
            async move {
                let resp = NodeServiceClient::with_interceptor(ch, InjectContext)
                    .set_eligibility(req)
                    .await?;
                self.followed(resp)
                    .node
                    .ok_or_else(|| Status::internal("server returned no node"))
            }
        })
        .await
    }

    /// Blacklists (`blacklisted`) or whitelists a node.
    pub async fn set_blacklist(
        &self,
        node_id: &str,
        blacklisted: bool,
        reason: &str,
    ) -> Result<Node, ClientError> {
        let req = api::SetBlacklistRequest {
            node_id: node_id.to_owned(),
            blacklisted,
            reason: reason.to_owned(),
        };
        self.with_retry(|ch| {
            let req = req.clone();
            async move {
                let resp = NodeServiceClient::with_interceptor(ch, InjectContext)
                    .set_blacklist(req)
                    .await?;
                self.followed(resp)
                    .node
                    .ok_or_else(|| Status::internal("server returned no node"))
            }
        })
        .await
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        self.cluster_status_with(false).await
    }

    /// Garbage-collects finished jobs now: those past their retention, or
    /// with `older_than_ms` every job finished at least that long ago.
    pub async fn collect_garbage(
        &self,
        older_than_ms: Option<u64>,
    ) -> Result<api::CollectGarbageResponse, ClientError> {
        self.with_retry(|ch| async move {
            Ok(Self::cluster(ch)
                .collect_garbage(api::CollectGarbageRequest { older_than_ms })
                .await?
                .into_inner())
        })
        .await
    }

    /// The whole replicated state as of a linearizable read, and the
    /// applied index it was taken at.
    pub async fn save_snapshot(&self) -> Result<(Vec<u8>, u64), ClientError> {
        self.with_retry(|ch| async move {
            let mut stream = Self::cluster(ch)
                .save_snapshot(api::SaveSnapshotRequest {})
                .await?
                .into_inner();
            let (mut data, mut index) = (Vec::new(), 0);
            while let Some(chunk) = stream.message().await? {
                if index == 0 {
                    index = chunk.index;
                }
                data.extend_from_slice(&chunk.data);
            }
            Ok((data, index))
        })
        .await
    }

    /// Replaces the cluster's state with a saved one (refused while it holds
    /// jobs, unless `force`).
    pub async fn restore_snapshot(
        &self,
        data: &[u8],
        force: bool,
    ) -> Result<api::RestoreSnapshotResponse, ClientError> {
        const CHUNK: usize = 1024 * 1024;
        self.with_retry(|ch| async move {
            let mut chunks: Vec<api::SnapshotData> = data
                .chunks(CHUNK)
                .map(|c| api::SnapshotData {
                    data: c.to_vec(),
                    ..Default::default()
                })
                .collect();
            match chunks.first_mut() {
                Some(first) => first.force = force,
                None => chunks.push(api::SnapshotData {
                    force,
                    ..Default::default()
                }),
            }
            Ok(Self::cluster(ch)
                .restore_snapshot(tokio_stream::iter(chunks))
                .await?
                .into_inner())
        })
        .await
    }

    /// Status with each replica's state digest (costly on a large state).
    pub async fn cluster_status_with(
        &self,
        with_digest: bool,
    ) -> Result<ClusterStatusResponse, ClientError> {
        self.with_retry(|ch| async move {
            Ok(Self::cluster(ch)
                .status(ClusterStatusRequest { with_digest })
                .await?
                .into_inner())
        })
        .await
    }

    pub async fn add_replica(
        &self,
        id: u64,
        address: &str,
    ) -> Result<ClusterStatusResponse, ClientError> {
        let req = AddReplicaRequest {
            id,
            address: address.to_owned(),
        };
        self.with_retry(|ch| {
            let req = req.clone();
            async move {
                let resp = Self::cluster(ch).add_replica(req).await?.into_inner();
                Ok(resp.status.unwrap_or_default())
            }
        })
        .await
    }

    pub async fn remove_replica(&self, id: u64) -> Result<ClusterStatusResponse, ClientError> {
        self.with_retry(|ch| async move {
            let resp = Self::cluster(ch)
                .remove_replica(RemoveReplicaRequest { id })
                .await?
                .into_inner();
            Ok(resp.status.unwrap_or_default())
        })
        .await
    }
}
