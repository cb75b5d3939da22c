//! The replica: its write and read paths (find the leader, propose locally
//! or forward, group commit, linearizable reads through a read index) and
//! the one clock proposers stamp commands with.

pub mod clock;
pub mod group_commit;
pub mod port;
mod read;

use std::sync::Arc;
use std::time::Duration;

use gantry_core::{Command, Outcome};
use gantry_store::{Raft, ReplicaId, StateReader};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::agents::sessions::{Liveness, Sessions};
use crate::ops::config::ServerConfig;
use crate::raft::peers::Peers;

/// The answer to a forwarded write, as the leader sends it back.
pub type ForwardReply = Result<(Outcome, u64), ForwardError>;

#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardError {
    /// The replica asked is not the leader (any more).
    NotLeader,
    /// The leader could not commit the write; the message says why.
    Failed(String),
    /// The leader refused new work (see `admission`); the message says why.
    /// Added later: a replica from before it cannot decode this answer and
    /// reports an internal error instead.
    Refused(String),
}

/// Why one try at a write did not succeed.
#[derive(Clone)]
pub(crate) enum Try {
    /// Leadership moved: look for the leader again.
    Again,
    Fail(Status),
}

/// Pause between tries while leadership settles.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

pub struct Replica {
    pub id: ReplicaId,
    pub raft: Raft,
    pub state: StateReader,
    /// gRPC channels to the peers, for the public API's calls between them.
    pub peers: Peers,
    /// How this replica asks its peers (forwarded writes, read index,
    /// session reports): gRPC in production, the simulated network in the
    /// simulation.
    pub port: Arc<dyn port::PeerPort>,
    pub config: Arc<ServerConfig>,
    /// Agent streams this replica holds.
    pub sessions: Sessions,
    /// On the leader: when each node's session was last confirmed.
    pub liveness: Liveness,
    /// Live output of attempts on nodes whose streams this replica holds.
    pub output: crate::agents::output::OutputHub,
    /// mTLS: callers are identified and authorized by certificate.
    pub secure: bool,
    /// Submit requests per client identity.
    pub submit_limit: crate::api::ratelimit::RateLimiter,
    /// Agent streams per node.
    pub streams: crate::api::ratelimit::StreamCounter,
    /// Whether the last quorum probe succeeded (see `health`).
    pub in_quorum: std::sync::atomic::AtomicBool,
    /// Propose → committed and applied, for writes this replica led.
    pub write_latency: prometheus_client::metrics::histogram::Histogram,
    /// On the leader: the time every entry it proposes is stamped with.
    pub entry_clock: crate::replica::clock::EntryClock,
    /// This replica's clock against the leader's.
    pub skew: crate::replica::clock::Skew,
    /// Whether new submissions are taken now (disk reserve, backlog).
    pub admission: crate::api::admission::Admission,
    /// Pending tasks the scheduler read, over all its rounds on this replica.
    pub scheduler_examined: prometheus_client::metrics::counter::Counter,
    /// Wakes the dispatchers of the nodes an applied entry changed.
    pub wakeups: crate::agents::dispatch::Wakeups,
    /// Submissions waiting to share a Raft entry (see `group_commit`).
    pub(crate) submits: crate::replica::group_commit::Queue,
    /// Submissions waiting to share one request forwarded to the leader.
    pub(crate) forwards: crate::replica::group_commit::Queue,
    /// Cancelled when the replica begins to stop: ends its long-lived
    /// streams (see `until_stopped`).
    pub stopping: tokio_util::sync::CancellationToken,
}

fn unavailable_no_leader(waited: Duration) -> Status {
    Status::unavailable(format!(
        "no leader was elected within {waited:?}: fewer than a majority of replicas are reachable"
    ))
}

// === impl Replica ===

/// What a stream this replica serves ends with when the replica stops.
fn stopped_status() -> Status {
    Status::unavailable("the replica is shutting down; connect to another replica")
}

/// What a replica is made of besides its settings: its Raft node and
/// applied state, and how it reaches its peers and reads the time.
pub struct Parts {
    pub raft: Raft,
    pub state: StateReader,
    pub peers: Peers,
    pub port: Arc<dyn port::PeerPort>,
    /// Whether callers are authenticated by certificate (mTLS).
    pub secure: bool,
    /// The wall clock (ms since the epoch): [`clock::now_ms`] in production,
    /// the simulation's (skewed per replica) there.
    pub wall: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Replica {
    /// Builds the replica and starts what every replica runs, in production
    /// and in the simulation alike: the leader-only loops (while it leads),
    /// its session reports, the dispatchers' wake-ups and group commit.
    /// The tasks returned end when aborted or when Raft shuts down.
    pub fn start(
        config: ServerConfig,
        parts: Parts,
    ) -> (Arc<Self>, Vec<tokio::task::JoinHandle<()>>) {
        use crate::replica::group_commit::{self, Route};
        let (submits, submit_batches) = group_commit::queue();
        let (forwards, forward_batches) = group_commit::queue();
        let wall = parts.wall;
        let replica = Arc::new(Replica {
            id: config.id,
            raft: parts.raft,
            state: parts.state,
            peers: parts.peers,
            port: parts.port,
            sessions: Default::default(),
            liveness: Default::default(),
            output: Default::default(),
            secure: parts.secure,
            submit_limit: crate::api::ratelimit::RateLimiter::new(
                config.submit_rate,
                config.submit_burst,
            ),
            streams: Default::default(),
            in_quorum: Default::default(),
            write_latency: crate::ops::metrics::write_latency_histogram(),
            scheduler_examined: Default::default(),
            admission: Default::default(),
            entry_clock: clock::EntryClock::with_wall(wall),
            skew: Default::default(),
            wakeups: Default::default(),
            submits,
            forwards,
            stopping: Default::default(),
            config: Arc::new(config),
        });
        use gantry_store::runtime::spawn;
        let tasks = vec![
            spawn(crate::leader::supervise(replica.clone())),
            spawn(crate::agents::report::report_sessions(replica.clone())),
            spawn(crate::agents::dispatch::wake_touched(replica.clone())),
            spawn(group_commit::run(
                replica.clone(),
                Route::Raft,
                submit_batches,
            )),
            spawn(group_commit::run(
                replica.clone(),
                Route::Leader,
                forward_batches,
            )),
        ];
        (replica, tasks)
    }

    /// This replica's own view of Raft (what `LocalStatus` answers).
    pub fn local_status(&self) -> gantry_proto::internal::v1::LocalStatusResponse {
        crate::raft::internal::local_status(self)
    }

    /// This replica's wall clock (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.entry_clock.wall()
    }
}

impl Replica {
    /// `stream`, ending with UNAVAILABLE when this replica begins to stop.
    /// Every long-lived stream it serves (agent sessions, replication, watch
    /// and log follows) goes through this: graceful shutdown waits for open
    /// streams, and a peer that keeps one open (a leader replicating, an
    /// agent) would otherwise hold the replica up for ever.
    pub fn until_stopped<T, S>(
        &self,
        stream: S,
    ) -> impl futures::Stream<Item = Result<T, Status>> + Send + 'static
    where
        T: Send + 'static,
        S: futures::Stream<Item = Result<T, Status>> + Send + 'static,
    {
        use futures::StreamExt;
        let token = self.stopping.clone();
        futures::stream::unfold(Some((Box::pin(stream), token)), |state| async move {
            let (mut stream, token) = state?;
            tokio::select! {
                biased;
                () = token.cancelled() => Some((Err(stopped_status()), None)),
                item = stream.next() => item.map(|item| (item, Some((stream, token)))),
            }
        })
    }

    /// Nodes the applied state says are lost: a leader confirms no session
    /// of theirs until they are registered again. `None` while this leader
    /// has not applied what earlier leaders committed: a loss among those
    /// entries would go unseen, so it confirms nothing until then.
    pub async fn lost_nodes(&self, deadline: Instant) -> Option<std::collections::HashSet<String>> {
        if !self.establish_entry_clock(deadline).await {
            return None;
        }
        let lost = self
            .state
            .read(|s, _| {
                s.node_ids(gantry_core::NodeStatus::Lost)
                    .map(str::to_owned)
                    .collect()
            })
            .await;
        Some(lost)
    }

    /// The leader this replica knows of now, and its address; `None` while
    /// there is none (an election) or its address is not in the membership.
    pub fn known_leader(&self) -> Option<(ReplicaId, String)> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    /// The current leader and its address, waiting for one until `deadline`.
    pub async fn leader(&self, deadline: Instant) -> Result<(ReplicaId, String), Status> {
        let started = Instant::now();
        let mut rx = self.raft.metrics();
        loop {
            if let Some(leader) = self.known_leader() {
                return Ok(leader);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("replica is shutting down")),
                Err(_) => return Err(unavailable_no_leader(started.elapsed())),
            }
        }
    }

    /// Commits `cmd` through the leader, wherever it is, by `deadline`.
    /// Returns the outcome of applying it and its log index.
    pub async fn write(&self, cmd: Command, deadline: Instant) -> Result<(Outcome, u64), Status> {
        // Boxed: the write path (forwarding over tonic, openraft's client
        // write) is a future of several KiB, and the long-lived tasks that
        // write now and then (three per agent session) would otherwise
        // carry all of it while they wait for something else.
        Box::pin(self.write_unboxed(cmd, deadline)).await
    }

    async fn write_unboxed(
        &self,
        cmd: Command,
        deadline: Instant,
    ) -> Result<(Outcome, u64), Status> {
        loop {
            let (leader, addr) = self.leader(deadline).await?;
            let result = match (&cmd, leader == self.id) {
                (_, true) => self.propose_local(cmd.clone(), deadline).await,
                (Command::SubmitJobs { now_ms, jobs }, false) => {
                    Self::batched(&self.forwards, *now_ms, jobs.clone(), deadline).await
                }
                (_, false) => self.forward(leader, &addr, &cmd, deadline).await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(Try::Fail(status)) => return Err(status),
                Err(Try::Again) => {
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(Status::unavailable(
                            "leadership kept changing until the deadline; the write was not committed",
                        ));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn propose_local(&self, cmd: Command, deadline: Instant) -> Result<(Outcome, u64), Try> {
        match cmd {
            Command::SubmitJobs { now_ms, jobs } => {
                Self::batched(&self.submits, now_ms, jobs, deadline).await
            }
            cmd => self.propose_raw(cmd, deadline).await,
        }
    }

    /// Queues a submission for `queue`'s next batch and waits for its own answer.
    async fn batched(
        queue: &crate::replica::group_commit::Queue,
        now_ms: u64,
        jobs: Vec<gantry_core::NewJob>,
        deadline: Instant,
    ) -> Result<(Outcome, u64), Try> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = crate::replica::group_commit::Pending {
            now_ms,
            jobs,
            deadline,
            reply,
        };
        if queue.send(pending).await.is_err() {
            return Err(Try::Fail(Status::unavailable(
                "the replica is shutting down",
            )));
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Try::Fail(Status::unavailable(
                "the replica shut down during the write; its outcome is unknown, retry with \
                 the same idempotency key",
            ))),
            Err(_) => Err(Try::Fail(Status::unavailable(
                "the write was not committed before the deadline (no quorum?); its outcome is \
                 unknown, retry with the same idempotency key",
            ))),
        }
    }

    /// Proposes `cmd` as one entry and waits until it is committed and applied.
    pub(crate) async fn propose_raw(
        &self,
        mut cmd: Command,
        deadline: Instant,
    ) -> Result<(Outcome, u64), Try> {
        // Every time in the log is the leader's, taken here: never the
        // clock of the replica that forwarded the request, nor an agent's.
        if !self.establish_entry_clock(deadline).await {
            // Stamping before the earlier terms' entries are applied could
            // stamp this entry earlier than one of theirs.
            return Err(Try::Fail(Status::unavailable(
                "this new leader has not applied the earlier terms' entries yet; retry",
            )));
        }
        cmd.restamp(self.entry_clock.stamp());
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, self.raft.client_write(cmd.into())).await {
            Ok(Ok(resp)) => {
                self.write_latency.observe(started.elapsed().as_secs_f64());
                Ok((resp.data, resp.log_id.index))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(Try::Again),
            Ok(Err(e)) => Err(Try::Fail(Status::unavailable(format!(
                "the write was not committed: {e}; its outcome is unknown, retry with the same idempotency key"
            )))),
            Err(_) => Err(Try::Fail(Status::unavailable(
                "the write was not committed before the deadline (no quorum?); its outcome is \
                 unknown, retry with the same idempotency key",
            ))),
        }
    }

    /// Proposes `cmd` here, only while this replica leads, never forwarded:
    /// for decisions made from this leader's own view (a node's loss, from
    /// the confirmations it took in), which a replica that has stopped
    /// leading must not get committed by the leader that replaced it.
    pub(crate) async fn propose_as_leader(
        &self,
        cmd: Command,
        deadline: Instant,
    ) -> Result<(Outcome, u64), Status> {
        match self.propose_raw(cmd, deadline).await {
            Ok(v) => Ok(v),
            Err(Try::Again) => Err(Status::unavailable(
                "this replica no longer leads: its decision is dropped",
            )),
            Err(Try::Fail(s)) => Err(s),
        }
    }

    /// Once per term, before the first stamp: apply what earlier leaders
    /// committed (this replica may not have yet), and stamp nothing earlier
    /// than the latest entry time then in the state, so time in the log
    /// never goes back across a change of leader.
    /// False if the earlier terms' entries were not applied by `deadline`
    /// (the clock is then not established: the next proposal tries again).
    pub(crate) async fn establish_entry_clock(&self, deadline: Instant) -> bool {
        let (term, last) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.current_term, m.last_log_index)
        };
        if self.entry_clock.established(term) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = self
            .raft
            .wait(Some(left))
            .applied_index_at_least(last, "entries of earlier terms applied")
            .await
        {
            tracing::warn!(error = %e, "the earlier terms' entries are not applied yet: not stamping entries");
            return false;
        }
        let latest = self.state.read(|s, _| s.clock_ms()).await;
        let behind = self.entry_clock.establish(term, latest);
        if behind > crate::replica::clock::SKEW_WARN.as_millis() as u64 {
            tracing::warn!(
                behind_ms = behind,
                "this leader's clock is behind the latest entry's time: entry times go on from that entry at this clock's rate (fix the clock)"
            );
        }
        true
    }

    /// Leader side of a forwarded write.
    pub async fn propose_forwarded(&self, cmd: Command, deadline: Instant) -> ForwardReply {
        if let Command::SubmitJobs { jobs, .. } = &cmd {
            let tasks = jobs.iter().map(|j| u64::from(j.spec.count.max(1))).sum();
            if let Err(s) = self.admission.check(self, tasks) {
                return Err(ForwardError::Refused(s.message().to_owned()));
            }
        }
        match self.propose_local(cmd, deadline).await {
            Ok(v) => Ok(v),
            Err(Try::Again) => Err(ForwardError::NotLeader),
            Err(Try::Fail(s)) => Err(ForwardError::Failed(s.message().to_owned())),
        }
    }

    /// Forwards `cmd` to whichever replica leads now; [`Try::Again`] if
    /// that is this one (the caller proposes it here on its next try).
    pub(crate) async fn forward_to_leader(
        &self,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<(Outcome, u64), Try> {
        let (leader, addr) = self.leader(deadline).await.map_err(Try::Fail)?;
        if leader == self.id {
            return Err(Try::Again);
        }
        self.forward(leader, &addr, cmd, deadline).await
    }

    async fn forward(
        &self,
        leader: ReplicaId,
        addr: &str,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<(Outcome, u64), Try> {
        let asked = self.port.propose(leader, addr, cmd, deadline);
        let reply = match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(r)) => r,
            // The leader is unreachable: it may have died; find the new one.
            Ok(Err(s)) if s.code() == Code::Unavailable => {
                tracing::debug!(leader, error = %s, "forwarding failed; looking for the leader again");
                return Err(Try::Again);
            }
            Ok(Err(s)) => return Err(Try::Fail(s)),
            Err(_) => {
                return Err(Try::Fail(Status::unavailable(format!(
                    "leader {leader} did not confirm the write before the deadline; its outcome \
                     is unknown, retry with the same idempotency key"
                ))));
            }
        };
        match reply {
            Ok(v) => Ok(v),
            Err(ForwardError::NotLeader) => Err(Try::Again),
            Err(ForwardError::Failed(msg)) => Err(Try::Fail(Status::unavailable(msg))),
            Err(ForwardError::Refused(msg)) => Err(Try::Fail(Status::resource_exhausted(msg))),
        }
    }
}
