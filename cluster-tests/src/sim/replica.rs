//! One simulated replica: gantry-server's own replica (`gantry_server::Replica`:
//! its write path with group commit and forwarding, read-index reads,
//! session reports, and the leader's scheduling, liveness, drain and rules
//! loops) over Gantry's real sled storage and state machine, with the
//! simulated network as its port to its peers ([`SimPort`]) and a skewed
//! virtual clock; agents' streams are served by its own `serve_agent` (see
//! [`super::conn`]). What stays here is starting and crashing it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_core::{Command, JobId, NewJob, Outcome, State};
use gantry_proto::internal::v1::{LocalStatusResponse, SessionsReport, SessionsReportAck};
use gantry_server::{ForwardReply, PeerPort, ServerConfig};
use gantry_store::{Durability, StateMachineStore};
use openraft::BasicNode;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;

use super::disk::Disk;
use super::net::{Net, NetError, SimNetwork};
use super::{Plant, SimConfig, SimRaft, now_ms};

/// How long no replica may hold a node's session before the leader marks
/// it lost (gantry-server's `node_grace_ms`, shorter than its default so
/// runs see losses).
pub const NODE_GRACE_MS: u64 = 5_000;
/// How long a write or read may take (gantry-server's `request_timeout_ms`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// gantry-server's settings for a simulated replica: its defaults, with
/// Raft timings and compaction small so elections, snapshots, purges and
/// snapshot installs happen within a run.
/// How long a finished job is kept in the simulation (the cluster's default).
pub const JOB_RETENTION_MS: u64 = 2_000;

pub fn server_config(id: u64) -> ServerConfig {
    let mut c = ServerConfig {
        id,
        insecure: true,
        node_grace_ms: NODE_GRACE_MS,
        request_timeout_ms: REQUEST_TIMEOUT.as_millis() as u64,
        ..ServerConfig::default()
    };
    c.raft.heartbeat_ms = 100;
    c.raft.election_timeout_min_ms = 400;
    c.raft.election_timeout_max_ms = 800;
    c.raft.snapshot_every = 150;
    // Garbage collection runs within a run.
    c.job_retention = format!("{JOB_RETENTION_MS}ms");
    c.gc_interval_ms = 500;
    c
}

/// gantry-server's openraft configuration for `config`. `leader_restore`:
/// a planted bug (tests of the checkers only), openraft's default of
/// restoring a restarted leader without an election.
pub fn raft_config(config: &ServerConfig, leader_restore: bool) -> SimResult<openraft::Config> {
    let mut c = config.openraft().map_err(|e| e.to_string())?;
    c.cluster_name = "gantry-sim".into();
    c.enable_leader_restore = Some(leader_restore);
    Ok(c)
}

/// Why a write or read did not happen (its outcome may still be unknown).
pub type SimResult<T> = Result<T, String>;

pub struct Replica {
    pub id: u64,
    /// gantry-server's replica.
    server: Arc<gantry_server::Replica>,
    disk: Arc<Disk>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// A planted bug (tests of the checkers only): reads skip the read
    /// barrier and serve this replica's possibly stale state.
    stale_reads: bool,
}

/// gantry-server's port to its peers over the simulated network: each call
/// is served by the target replica's own `gantry_server::Replica`.
struct SimPort {
    net: Net,
    from: u64,
}

fn net_status(e: NetError) -> Status {
    match e {
        NetError::Refused => Status::unavailable("connection refused"),
        NetError::TimedOut => Status::deadline_exceeded("timed out"),
    }
}

impl SimPort {
    /// Runs `serve` on replica `to`'s gantry-server replica, over the
    /// simulated network, waiting at most until `deadline`.
    async fn ask<T, F, Fut>(&self, to: u64, deadline: Instant, serve: F) -> Result<T, Status>
    where
        F: FnOnce(Arc<gantry_server::Replica>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let left = deadline.saturating_duration_since(Instant::now());
        self.net
            .call(self.from, to, left, |r| serve(r.server.clone()))
            .await
            .map_err(net_status)?
    }
}

#[tonic::async_trait]
impl PeerPort for SimPort {
    async fn propose(
        &self,
        leader: u64,
        _addr: &str,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<ForwardReply, Status> {
        let cmd = cmd.clone();
        self.ask(leader, deadline, |s| async move {
            Ok(s.propose_forwarded(cmd, deadline).await)
        })
        .await
    }

    async fn read_index(&self, leader: u64, _addr: &str, deadline: Instant) -> Result<u64, Status> {
        self.ask(leader, deadline, |s| async move {
            s.serve_read_index(deadline).await
        })
        .await
    }

    async fn report_sessions(
        &self,
        leader: u64,
        _addr: &str,
        report: SessionsReport,
        deadline: Instant,
    ) -> Result<SessionsReportAck, Status> {
        self.ask(leader, deadline, |s| async move {
            s.accept_sessions_report(report).await
        })
        .await
    }

    async fn local_status(
        &self,
        peer: u64,
        _addr: &str,
        deadline: Instant,
    ) -> Result<LocalStatusResponse, Status> {
        self.ask(peer, deadline, |s| async move { Ok(s.local_status()) })
            .await
    }
}

impl Replica {
    /// Starts a replica over `db` (its data, kept across simulated crashes).
    /// `disk_seed` draws its simulated fsync latencies; `plant` is a bug to
    /// plant (tests of the checkers only).
    pub async fn start(
        id: u64,
        db: &sled::Db,
        net: &Net,
        plant: Option<Plant>,
        disk_seed: u64,
        skew_ms: i64,
    ) -> SimResult<Arc<Self>> {
        let (log, sm): (_, StateMachineStore<SimConfig>) =
            gantry_store::from_db(db, Durability::Process).map_err(|e| e.to_string())?;
        let disk = Disk::new(log, disk_seed);
        let state = sm.reader();
        let network = SimNetwork {
            net: net.clone(),
            from: id,
        };
        let config = server_config(id);
        let leader_restore = plant == Some(Plant::LeaderRestore);
        let raft_config = Arc::new(raft_config(&config, leader_restore)?);
        let raft = SimRaft::new(id, raft_config, network, disk.log(), sm)
            .await
            .map_err(|e| e.to_string())?;
        let parts = gantry_server::Parts {
            raft,
            state,
            // Never dialled: every call the simulation makes goes through the port.
            peers: gantry_server::PeerChannels::new(
                gantry_proto::transport::Transport::insecure(),
                None,
            ),
            port: Arc::new(SimPort {
                net: net.clone(),
                from: id,
            }),
            secure: false,
            wall: Box::new(move || now_ms().saturating_add_signed(skew_ms)),
        };
        let (server, tasks) = gantry_server::Replica::start(config, parts);
        let replica = Arc::new(Replica {
            id,
            server,
            disk,
            tasks: Mutex::default(),
            stale_reads: plant == Some(Plant::StaleReads),
        });
        *replica.tasks.lock().await = tasks;
        Ok(replica)
    }

    /// Lowest id bootstraps, once, as in production.
    pub async fn initialize(&self, members: &[u64]) -> SimResult<()> {
        let nodes: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|m| (*m, BasicNode::new(format!("sim-{m}"))))
            .collect();
        self.raft()
            .initialize(nodes)
            .await
            .map_err(|e| e.to_string())
    }

    /// A crash: every task stops and Raft shuts down; what was flushed
    /// stays, and appends that were not are lost. Returns how many entries
    /// the log lost (or why the loss could not be applied).
    pub async fn crash(&self) -> SimResult<u64> {
        for t in self.tasks.lock().await.drain(..) {
            t.abort();
        }
        self.server.stopping.cancel();
        let _ = self.raft().shutdown().await;
        self.disk.kill().await.map_err(|e| e.to_string())
    }

    /// Whether a follower holds an entry that is not yet flushed here (a
    /// crash now loses it from this log only).
    pub async fn followers_hold_unflushed(&self) -> bool {
        let Some(first) = self.disk.first_unflushed().await else {
            return false;
        };
        let metrics = self.raft().metrics();
        let m = metrics.borrow_watched();
        m.replication.as_ref().is_some_and(|r| {
            r.iter()
                .any(|(id, matched)| *id != self.id && matched.is_some_and(|l| l.index >= first))
        })
    }

    /// gantry-server's replica (agents' streams are served by it).
    pub fn server(&self) -> &Arc<gantry_server::Replica> {
        &self.server
    }

    pub fn raft(&self) -> &SimRaft {
        &self.server.raft
    }

    pub async fn read_state<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        self.server.state.read(f).await
    }

    /// Commits `cmd` through the leader by `deadline` (gantry-server's write path).
    pub async fn write(&self, cmd: Command, deadline: Instant) -> SimResult<(Outcome, u64)> {
        self.server
            .write(cmd, deadline)
            .await
            .map_err(|s| s.message().to_owned())
    }

    /// This replica's wall clock, skewed as the run drew it.
    pub fn clock(&self) -> u64 {
        self.server.now_ms()
    }

    pub async fn submit(&self, job: NewJob, deadline: Instant) -> SimResult<u64> {
        let cmd = Command::SubmitJobs {
            now_ms: self.clock(),
            jobs: vec![job],
        };
        match self.write(cmd, deadline).await? {
            (Outcome::Submitted(Ok(_)), index) => Ok(index),
            (other, _) => Err(format!("submit refused: {other:?}")),
        }
    }

    /// The job's (modify index, state), `None` if there is no such job.
    pub async fn get_job(
        &self,
        id: &str,
        deadline: Instant,
    ) -> SimResult<Option<(u64, gantry_core::JobState)>> {
        if !self.stale_reads {
            self.server
                .read_barrier(deadline)
                .await
                .map_err(|s| s.message().to_owned())?;
        }
        Ok(self
            .read_state(|s, _| s.job(id).map(|j| (j.modify_index, j.state)))
            .await)
    }

    pub async fn cancel(
        &self,
        id: JobId,
        deadline: Instant,
    ) -> SimResult<Result<(u64, gantry_core::JobState), String>> {
        let cmd = Command::CancelJob {
            now_ms: self.clock(),
            job_id: id,
            reason: "simulation".into(),
        };
        match self.write(cmd, deadline).await? {
            (Outcome::Cancelled(Ok(job)), _) => Ok(Ok((job.modify_index, job.state))),
            (Outcome::Cancelled(Err(e)), _) => Ok(Err(e.to_string())),
            (other, _) => Err(format!("unexpected outcome {other:?}")),
        }
    }
}
