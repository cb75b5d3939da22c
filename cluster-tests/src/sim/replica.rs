//! One simulated replica: openraft over Gantry's real sled storage and
//! state machine, the write path (propose here or forward to the leader),
//! read-index reads, agent sessions, and the leader's loops (scheduling and
//! node liveness) — the same decisions as gantry-server's replica.rs and
//! leader.rs, over the simulated network instead of gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_core::{
    AttemptRef, AttemptReport, Command, JobId, NewJob, NodeInfo, NodeStatus, Outcome, Session,
    State, scheduler,
};
use gantry_store::{Durability, StateMachineStore, StateReader};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{BasicNode, ReadPolicy};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::disk::Disk;
use super::net::{Net, NetError, SimNetwork};
use super::{Plant, SimConfig, SimRaft, now_ms, spawn};

const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a replica keeps an agent's session without a heartbeat.
pub const SESSION_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long no replica may hold a node's session before the leader marks it lost.
pub const NODE_GRACE: Duration = Duration::from_secs(4);
const SESSION_REPORT_INTERVAL: Duration = Duration::from_millis(500);
const SCHEDULER_TICK: Duration = Duration::from_millis(200);

/// `leader_restore`: a planted bug (tests of the checkers only), openraft's
/// default of restoring a restarted leader without an election.
pub fn raft_config(leader_restore: bool) -> Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "gantry-sim".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // Small, so snapshots, purges and snapshot installs happen in runs.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(150),
        max_in_snapshot_log_to_keep: 50,
        purge_batch_size: 50,
        allow_log_reversion: Some(true),
        // As in production (gantry-server's config).
        enable_pre_vote: Some(true),
        enable_leader_restore: Some(leader_restore),
        ..Default::default()
    };
    Arc::new(c.validate().unwrap_or_default())
}

/// Why a write or read did not happen (its outcome may still be unknown).
pub type SimResult<T> = Result<T, String>;

pub struct Replica {
    pub id: u64,
    raft: SimRaft,
    disk: Arc<Disk>,
    reader: StateReader,
    net: Net,
    /// Agent sessions held here: node → (the session, last heartbeat).
    sessions: Mutex<BTreeMap<String, (Session, Instant)>>,
    /// On the leader: when some replica last reported each node's session
    /// (gantry-server's own).
    liveness: gantry_server::Liveness,
    loops: Mutex<Vec<JoinHandle<()>>>,
    /// A planted bug (tests of the checkers only): reads skip the read
    /// barrier and serve this replica's possibly stale state.
    stale_reads: bool,
    /// How far this replica's wall clock is off (ms, either way).
    skew_ms: i64,
    /// On the leader: the time entries are stamped with (gantry-server's
    /// own, over this replica's skewed clock).
    entry_clock: gantry_server::EntryClock,
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
        let reader = sm.reader();
        let network = SimNetwork {
            net: net.clone(),
            from: id,
        };
        let leader_restore = plant == Some(Plant::LeaderRestore);
        let raft = SimRaft::new(id, raft_config(leader_restore), network, disk.log(), sm)
            .await
            .map_err(|e| e.to_string())?;
        let replica = Arc::new(Replica {
            id,
            raft,
            disk,
            reader,
            net: net.clone(),
            sessions: Mutex::default(),
            liveness: gantry_server::Liveness::default(),
            loops: Mutex::default(),
            stale_reads: plant == Some(Plant::StaleReads),
            skew_ms,
            entry_clock: gantry_server::EntryClock::with_wall(move || {
                now_ms().saturating_add_signed(skew_ms)
            }),
        });
        let mut loops = replica.loops.lock().await;
        loops.push(spawn(supervise(replica.clone())));
        loops.push(spawn(report_sessions(replica.clone())));
        loops.push(spawn(expire_sessions(replica.clone())));
        drop(loops);
        Ok(replica)
    }

    /// Lowest id bootstraps, once, as in production.
    pub async fn initialize(&self, members: &[u64]) -> SimResult<()> {
        let nodes: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|m| (*m, BasicNode::new(format!("sim-{m}"))))
            .collect();
        self.raft.initialize(nodes).await.map_err(|e| e.to_string())
    }

    /// A crash: every loop stops and Raft shuts down; what was flushed
    /// stays, and appends that were not are lost. Returns how many entries
    /// the log lost (or why the loss could not be applied).
    pub async fn crash(&self) -> SimResult<u64> {
        for l in self.loops.lock().await.drain(..) {
            l.abort();
        }
        let _ = self.raft.shutdown().await;
        self.disk.kill().await.map_err(|e| e.to_string())
    }

    /// Whether a follower holds an entry that is not yet flushed here (a
    /// crash now loses it from this log only).
    pub async fn followers_hold_unflushed(&self) -> bool {
        let Some(first) = self.disk.first_unflushed().await else {
            return false;
        };
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.replication.as_ref().is_some_and(|r| {
            r.iter()
                .any(|(id, matched)| *id != self.id && matched.is_some_and(|l| l.index >= first))
        })
    }

    pub fn raft(&self) -> &SimRaft {
        &self.raft
    }

    pub async fn read_state<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        self.reader.read(f).await
    }

    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Commits `cmd` through the leader by `deadline`.
    pub async fn write(&self, cmd: Command, deadline: Instant) -> SimResult<(Outcome, u64)> {
        loop {
            let result = match self.leader() {
                Some(l) if l == self.id => self.propose_local(cmd.clone()).await,
                Some(l) => {
                    let cmd = cmd.clone();
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self
                        .net
                        .call(
                            self.id,
                            l,
                            left,
                            |r| async move { r.propose_local(cmd).await },
                        )
                        .await
                    {
                        Ok(r) => r,
                        Err(NetError::Refused) => Err(Retry::Again),
                        Err(NetError::TimedOut) => {
                            Err(Retry::Fail("leader did not answer in time".into()))
                        }
                    }
                }
                None => Err(Retry::Again),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(Retry::Fail(e)) => return Err(e),
                Err(Retry::Again) if Instant::now() + RETRY_PAUSE >= deadline => {
                    return Err("no leader before the deadline".into());
                }
                Err(Retry::Again) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    /// Once per term: the entries earlier leaders committed applied, and
    /// entry time going on from the latest of them (as gantry-server's
    /// `establish_entry_clock`).
    async fn establish_entry_clock(&self) -> bool {
        let (term, last) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.current_term, m.last_log_index)
        };
        if self.entry_clock.established(term) {
            return true;
        }
        let applied = self
            .raft
            .wait(Some(Duration::from_secs(2)))
            .applied_index_at_least(last, "earlier terms applied")
            .await;
        if applied.is_err() {
            // Not established: stamping now could go earlier than an
            // earlier term's entry that commits later.
            return false;
        }
        let latest = self.reader.read(|s, _| s.clock_ms()).await;
        self.entry_clock.establish(term, latest);
        true
    }

    /// The leader's time for entries and deadlines.
    fn entry_now(&self) -> u64 {
        self.entry_clock.now()
    }

    /// This replica's wall clock, skewed as the run drew it.
    pub fn clock(&self) -> u64 {
        now_ms().saturating_add_signed(self.skew_ms)
    }

    /// The leader stamps every entry with its own clock, never earlier than
    /// the last entry (as gantry-server's `propose_raw`).
    async fn propose_local(&self, mut cmd: Command) -> Result<(Outcome, u64), Retry> {
        if !self.establish_entry_clock().await {
            return Err(Retry::Again);
        }
        cmd.restamp(self.entry_clock.stamp());
        match self.raft.client_write(cmd.into()).await {
            Ok(resp) => Ok((resp.data, resp.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(Retry::Again),
            Err(e) => Err(Retry::Fail(e.to_string())),
        }
    }

    async fn leader_read_index(&self) -> Result<u64, Retry> {
        match self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(l) => Ok(l.read_log_id().index()),
            Err(e) if e.forward_to_leader().is_some() => Err(Retry::Again),
            Err(e) => Err(Retry::Fail(e.to_string())),
        }
    }

    /// Waits until this replica has applied everything committed before the
    /// call (read-index), so the read that follows is linearizable.
    pub async fn read_barrier(&self, deadline: Instant) -> SimResult<()> {
        loop {
            let index = match self.leader() {
                Some(l) if l == self.id => self.leader_read_index().await,
                Some(l) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self
                        .net
                        .call(
                            self.id,
                            l,
                            left,
                            |r| async move { r.leader_read_index().await },
                        )
                        .await
                    {
                        Ok(r) => r,
                        Err(NetError::Refused) => Err(Retry::Again),
                        Err(NetError::TimedOut) => Err(Retry::Fail("leader timed out".into())),
                    }
                }
                None => Err(Retry::Again),
            };
            match index {
                Ok(index) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return self
                        .raft
                        .wait(Some(left))
                        .applied_index_at_least(Some(index), "read")
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                }
                Err(Retry::Fail(e)) => return Err(e),
                Err(Retry::Again) if Instant::now() + RETRY_PAUSE >= deadline => {
                    return Err("no leader before the deadline".into());
                }
                Err(Retry::Again) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
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
            self.read_barrier(deadline).await?;
        }
        Ok(self
            .reader
            .read(|s, _| s.job(id).map(|j| (j.modify_index, j.state)))
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

    // --- The agent-facing side (what AgentService.Connect does) ---

    pub async fn open_session(&self, node: NodeInfo, session_id: String) -> SimResult<()> {
        let session = Session {
            id: session_id,
            replica: self.id,
            opened_at_ms: self.clock(),
        };
        let node_id = node.id.clone();
        let cmd = Command::NodeSessionOpened {
            now_ms: self.clock(),
            node,
            session: session.clone(),
            health: None,
        };
        self.write(cmd, Instant::now() + Duration::from_secs(2))
            .await?;
        self.sessions
            .lock()
            .await
            .insert(node_id, (session, Instant::now()));
        Ok(())
    }

    /// A heartbeat on the session, then what the dispatcher does on each
    /// round: `None` if this replica does not hold the session (a newer one
    /// replaced it, or the node was marked lost), else the node's live
    /// attempts, each with whether a cancel was requested.
    pub async fn sync(&self, node_id: &str, session_id: &str) -> Option<Vec<(AttemptRef, bool)>> {
        match self.sessions.lock().await.get_mut(node_id) {
            Some((s, seen)) if s.id == session_id => *seen = Instant::now(),
            _ => return None,
        }
        let (status, current) = self
            .reader
            .read(|s, _| {
                let n = s.node(node_id);
                (
                    n.map(|n| n.status),
                    n.and_then(|n| n.session.as_ref()).map(|x| x.id.clone()),
                )
            })
            .await;
        // Replaced by a newer session, or marked lost while held here (the
        // agent registers again on a new one, as gantry-server's dispatcher
        // has it): the session ends.
        let replaced = current.as_ref().is_some_and(|id| id != session_id);
        let lost = current.is_none() && status == Some(NodeStatus::Lost);
        if replaced || lost {
            let mut held = self.sessions.lock().await;
            if held.get(node_id).is_some_and(|(s, _)| s.id == session_id) {
                held.remove(node_id);
            }
            return None;
        }
        Some(self.assignments(node_id).await)
    }

    async fn assignments(&self, node_id: &str) -> Vec<(AttemptRef, bool)> {
        self.reader
            .read(|s, _| {
                s.live_attempts(node_id)
                    .map(|r| {
                        let cancel = s
                            .job(&r.job_id)
                            .and_then(|j| j.tasks.get(r.task as usize))
                            .and_then(|t| t.attempts.last())
                            .is_some_and(|a| a.cancel_requested);
                        (r.clone(), cancel)
                    })
                    .collect()
            })
            .await
    }

    pub async fn report(&self, reports: Vec<AttemptReport>) -> SimResult<()> {
        let cmd = Command::ReportAttempts {
            now_ms: self.clock(),
            reports,
        };
        self.write(cmd, Instant::now() + Duration::from_secs(2))
            .await
            .map(|_| ())
    }

    async fn confirm_sessions(&self, nodes: Vec<String>) {
        let lost: std::collections::BTreeSet<String> = self
            .reader
            .read(|s, _| s.node_ids(NodeStatus::Lost).map(str::to_owned).collect())
            .await;
        let seen = now_ms();
        self.liveness
            .confirm(nodes.into_iter().map(|n| (n, seen)), |id| lost.contains(id))
            .await;
    }
}

enum Retry {
    Again,
    Fail(String),
}

/// Tasks aborted when this is dropped (also when its owner is aborted).
#[derive(Default)]
struct Owned(Vec<JoinHandle<()>>);

impl Drop for Owned {
    fn drop(&mut self) {
        for l in &self.0 {
            l.abort();
        }
    }
}

/// Runs the leader-only loops while this replica leads.
async fn supervise(replica: Arc<Replica>) {
    let mut metrics = replica.raft.metrics();
    let mut owned = Owned::default();
    let loops = &mut owned.0;
    loop {
        let leading = {
            let m = metrics.borrow_watched();
            m.current_leader == Some(replica.id) && m.state.is_leader()
        };
        if leading && loops.is_empty() {
            replica.liveness.reset().await;
            loops.push(spawn(schedule_loop(replica.clone())));
            loops.push(spawn(liveness_loop(replica.clone())));
        } else if !leading && !loops.is_empty() {
            for l in loops.drain(..) {
                l.abort();
            }
        }
        if metrics.changed().await.is_err() {
            break;
        }
    }
}

async fn schedule_loop(replica: Arc<Replica>) {
    let mut metrics = replica.raft.metrics();
    replica.establish_entry_clock().await;
    loop {
        let now = replica.entry_now();
        let placements = replica
            .reader
            .read(|s, _| scheduler::schedule(s, now, 1_000))
            .await;
        if !placements.is_empty() {
            let cmd = Command::Assign {
                now_ms: now,
                placements,
            };
            if replica
                .write(cmd, Instant::now() + Duration::from_secs(2))
                .await
                .is_ok()
            {
                continue;
            }
        }
        let applied = metrics.borrow_watched().last_applied;
        let woken = tokio::time::timeout(SCHEDULER_TICK, async {
            while metrics.changed().await.is_ok() {
                if metrics.borrow_watched().last_applied != applied {
                    return true;
                }
            }
            false
        })
        .await;
        if woken == Ok(false) {
            return; // Raft shut down.
        }
    }
}

async fn liveness_loop(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(SESSION_REPORT_INTERVAL);
    loop {
        tick.tick().await;
        let ready: Vec<String> = replica
            .reader
            .read(|s, _| s.node_ids(NodeStatus::Ready).map(str::to_owned).collect())
            .await;
        // gantry-server's own decision (a node seen for the first time, by a
        // new leader or ready again after a loss, gets a full grace).
        let lost = replica.liveness.expired(&ready, NODE_GRACE).await;
        if lost.is_empty() {
            continue;
        }
        let cmd = Command::NodesLost {
            now_ms: replica.clock(),
            node_ids: lost.clone(),
        };
        if replica
            .write(cmd, Instant::now() + Duration::from_secs(2))
            .await
            .is_ok()
        {
            replica.liveness.forget(&lost).await;
        }
    }
}

/// Every replica tells the leader which sessions it holds.
async fn report_sessions(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(SESSION_REPORT_INTERVAL);
    loop {
        tick.tick().await;
        let nodes: Vec<String> = replica.sessions.lock().await.keys().cloned().collect();
        if nodes.is_empty() {
            continue;
        }
        match replica.leader() {
            Some(l) if l == replica.id => replica.confirm_sessions(nodes).await,
            Some(l) => {
                let _ = replica
                    .net
                    .call(replica.id, l, SESSION_REPORT_INTERVAL, |r| async move {
                        r.confirm_sessions(nodes).await
                    })
                    .await;
            }
            None => {}
        }
    }
}

/// A session whose agent went quiet ends, as a broken stream does.
async fn expire_sessions(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let expired: Vec<(String, String)> = {
            let mut s = replica.sessions.lock().await;
            let gone: Vec<(String, String)> = s
                .iter()
                .filter(|(_, (_, seen))| now.duration_since(*seen) > SESSION_TIMEOUT)
                .map(|(n, (session, _))| (n.clone(), session.id.clone()))
                .collect();
            for (n, _) in &gone {
                s.remove(n);
            }
            gone
        };
        for (node_id, session_id) in expired {
            let cmd = Command::NodeSessionClosed {
                now_ms: replica.clock(),
                node_id,
                session_id,
            };
            let _ = replica
                .write(cmd, Instant::now() + Duration::from_secs(2))
                .await;
        }
    }
}
