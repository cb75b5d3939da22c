//! A simulated agent: holds one stream to one replica at a time, speaking
//! gantry's agent protocol (hello, heartbeats, started / finished reports;
//! assignments, cancels, acks back), moves to another replica when its
//! stream ends or goes silent, runs the attempts it is given for a seeded
//! time, and re-sends finished reports until acknowledged — the decisions
//! of gantry-agent, with a timer for a process. What it keeps "on
//! disk" (attempts it started, results not yet acknowledged) survives its
//! crashes, and after one it reports the attempts it had running as infra
//! failures, as the real agent's crash recovery does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gantry_core::{
    AttemptEvent, AttemptRef, AttemptReport, Exit, FailureClass, NodeInfo, Resources,
};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::Mutex;
use tokio::time::Instant;

use gantry_proto::v1 as pb;
use gantry_proto::v1::AgentMessage;
use gantry_proto::v1::agent_message::Msg;
use gantry_proto::v1::server_message::Msg as SMsg;

use super::conn::{self, Conn};
use super::net::{Endpoint, Net};
use super::now_ms;

const POLL: Duration = Duration::from_millis(100);
/// An agent that hears nothing (not even a pong) for this long drops the
/// stream and connects to another replica.
const SILENCE_LIMIT: Duration = Duration::from_secs(3);
/// How long before the cluster could give the node's tasks away the agent
/// stops them (gantry-agent's `--fence-margin`).
const FENCE_MARGIN_MS: u64 = 1_000;
/// How long an assignment waits for the node's first lease (gantry-agent's).
const LEASE_WAIT_MS: u64 = 10_000;

/// What survives the agent's crashes.
#[derive(Default)]
pub struct Disk {
    /// Attempts started and not yet finished.
    pub running: BTreeSet<AttemptRef>,
    /// Attempts this agent finished (never run twice).
    pub done: BTreeSet<AttemptRef>,
    /// Finished reports not yet acknowledged by a replica.
    pub unacked: Vec<AttemptReport>,
    pub sessions_opened: u64,
    pub duplicates_sent: u64,
}

pub struct Agent {
    pub node_id: String,
    pub endpoint: Endpoint,
    pub replicas: Vec<u64>,
    pub net: Net,
    pub disk: Arc<Mutex<Disk>>,
    pub rng: StdRng,
    /// Every execution on every node, for the checkers.
    pub executions: Executions,
    /// Attempts running here now: when each ends, and how.
    pub running: BTreeMap<AttemptRef, (Instant, Exit)>,
    /// Assignments on this stream not started yet (no lease holds), with
    /// when each arrived.
    pub waiting: Vec<(AttemptRef, u64)>,
    /// When the lease last ran out (virtual ms).
    pub last_lapse_ms: u64,
    /// Until when (virtual ms) the cluster is known not to have given this
    /// node's tasks away; 0 before the first confirmation.
    pub lease_ms: u64,
    /// The cluster's node grace, from the stream's welcome.
    pub grace_ms: u64,
}

impl Agent {
    pub fn node_info(&self) -> NodeInfo {
        NodeInfo {
            id: self.node_id.clone(),
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: 4_000,
                memory_mib: 8_192,
                gpus: 0,
            },
            max_tasks: 4,
            agent_version: "sim".into(),
            gpus: Vec::new(),
        }
    }

    fn report(&self, attempt: AttemptRef, event: AttemptEvent) -> AttemptReport {
        AttemptReport {
            node_id: self.node_id.clone(),
            attempt,
            event,
        }
    }

    /// Runs until aborted (a crash).
    pub async fn run(mut self) {
        // Crash recovery: what was running when we died is gone.
        {
            let mut disk = self.disk.lock().await;
            let leftovers: Vec<AttemptRef> =
                std::mem::take(&mut disk.running).into_iter().collect();
            for a in leftovers {
                disk.done.insert(a.clone());
                let exit = Exit {
                    failure: Some(FailureClass::Infra),
                    message: "the agent restarted; the task's process was gone".into(),
                    ..Exit::default()
                };
                let r = self.report(a, AttemptEvent::Finished(exit));
                disk.unacked.push(r);
            }
        }
        let mut next_replica = self.rng.random_range(0..self.replicas.len());
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let target = self.replicas[next_replica % self.replicas.len()];
            next_replica += 1;
            let (hello, in_hello) = self.hello().await;
            // Tasks keep running (and the lease keeps fencing them) while
            // the agent is between streams.
            let net = self.net.clone();
            let open = conn::open(&net, self.endpoint, target, hello);
            tokio::pin!(open);
            let opened = loop {
                tokio::select! {
                    biased;
                    c = &mut open => break c,
                    _ = tick.tick() => { self.tick(None).await; }
                }
            };
            let Ok(mut conn) = opened else {
                continue;
            };
            self.disk.lock().await.sessions_opened += 1;
            // Results that came while the stream was opening follow the
            // hello (gantry-agent queues them for the next stream).
            let later: Vec<AttemptReport> = self
                .disk
                .lock()
                .await
                .unacked
                .iter()
                .filter(|r| !in_hello.contains(&r.attempt))
                .cloned()
                .collect();
            for r in later {
                if let AttemptEvent::Finished(exit) = &r.event {
                    conn.send(agent_msg(Msg::Finished(finished(&r.attempt, exit))));
                }
            }
            trace(|| format!("{} session on {target}", self.node_id));
            self.session(&mut conn).await;
            trace(|| format!("{} session on {target} ended", self.node_id));
        }
    }

    /// The first message on a stream: this node, what it runs, and the
    /// results not yet acknowledged (as gantry-agent sends it).
    async fn hello(&self) -> (AgentMessage, BTreeSet<AttemptRef>) {
        let info = self.node_info();
        let (unacknowledged, in_hello): (Vec<_>, BTreeSet<_>) = self
            .disk
            .lock()
            .await
            .unacked
            .iter()
            .filter_map(|r| match &r.event {
                AttemptEvent::Finished(exit) => {
                    Some((finished(&r.attempt, exit), r.attempt.clone()))
                }
                _ => None,
            })
            .unzip();
        let hello = agent_msg(Msg::Hello(pb::Hello {
            node_id: info.id,
            labels: info.labels.into_iter().collect(),
            capacity: Some(pb::Resources {
                cpu_millis: info.capacity.cpu_millis,
                memory_mib: info.capacity.memory_mib,
                gpus: info.capacity.gpus,
            }),
            max_tasks: info.max_tasks,
            version: info.agent_version,
            running: self.running.keys().map(token).collect(),
            unacknowledged,
            ..pb::Hello::default()
        }));
        (hello, in_hello)
    }

    /// One session: runs what it is assigned, reports, heartbeats; returns
    /// when the stream ends or the replica goes silent. Assignments not
    /// started for want of a lease are dropped with it (the next stream's
    /// dispatcher sends again what is still meant for this node).
    async fn session(&mut self, conn: &mut Conn) {
        let mut heard = Instant::now();
        let mut beat = tokio::time::interval(gantry_server::HEARTBEAT_INTERVAL);
        let mut tick = tokio::time::interval(POLL);
        self.waiting.clear();
        loop {
            // Biased: a fixed order, which the simulation replays (tokio's random one it cannot).
            tokio::select! {
                biased;
                m = conn.rx.recv() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(status)) => {
                            // The replica ends the stream of a node marked
                            // lost; by then no lease of the node's may hold
                            // (the cluster runs its tasks elsewhere).
                            let now = now_ms();
                            if status.code() == tonic::Code::Aborted
                                && status.message().contains("marked lost")
                                && self.lease_ms > now
                            {
                                self.executions.leased_when_lost(&self.node_id, now, self.lease_ms);
                            }
                            return;
                        }
                        None => return,
                    };
                    heard = Instant::now();
                    if !self.handle(conn, m).await {
                        return;
                    }
                }
                _ = beat.tick() => {
                    if heard.elapsed() > SILENCE_LIMIT {
                        return;
                    }
                    let hb = pb::Heartbeat { sent_at_ms: now_ms(), ..pb::Heartbeat::default() };
                    if !conn.send(agent_msg(Msg::Heartbeat(hb))) {
                        return;
                    }
                }
                _ = tick.tick() => {
                    if !self.tick(Some(conn)).await {
                        return;
                    }
                }
            }
        }
    }

    /// What the agent's supervisors do on their own: stop every task when
    /// the lease lapses, start waiting assignments once it holds, and end
    /// tasks whose time is up. Reports go on `conn` when there is one.
    async fn tick(&mut self, conn: Option<&Conn>) -> bool {
        let now = now_ms();
        if self.lease_ms != 0 && self.lease_ms <= now {
            self.last_lapse_ms = self.lease_ms;
            for a in std::mem::take(&mut self.running).into_keys() {
                let exit =
                    infra("the node's lease ran out: stopped before the cluster runs it elsewhere");
                if !self.finish(conn, a, exit).await {
                    return false;
                }
            }
        }
        // As gantry-agent's start: an assignment waits for a lease (at most
        // LEASE_WAIT for a first one), and one that arrived before a lapse
        // is not started after it.
        let leased = self.lease_ms > now;
        for (a, received) in std::mem::take(&mut self.waiting) {
            let waited_out = now.saturating_sub(received) > LEASE_WAIT_MS;
            if !leased && !waited_out {
                self.waiting.push((a, received));
                continue;
            }
            let Some(conn) = conn else {
                continue;
            };
            let ok = if self.last_lapse_ms >= received || (self.lease_ms != 0 && !leased) {
                let exit = infra("not started: the node's lease ran out after it was assigned");
                self.finish(Some(conn), a, exit).await
            } else {
                self.start(conn, a).await
            };
            if !ok {
                return false;
            }
        }
        let at = Instant::now();
        let due: Vec<AttemptRef> = self
            .running
            .iter()
            .filter(|(_, (end, _))| *end <= at)
            .map(|(a, _)| a.clone())
            .collect();
        for a in due {
            if let Some((_, exit)) = self.running.remove(&a)
                && !self.finish(conn, a, exit).await
            {
                return false;
            }
        }
        true
    }

    /// Starts an attempt: it "runs" for a drawn time, with a drawn result.
    async fn start(&mut self, conn: &Conn, attempt: AttemptRef) -> bool {
        let mut disk = self.disk.lock().await;
        if self.running.contains_key(&attempt) || disk.done.contains(&attempt) {
            return true;
        }
        let took = Duration::from_millis(self.rng.random_range(50..1_500));
        let exit = if self.rng.random_bool(0.8) {
            Exit {
                exit_code: Some(0),
                ..Exit::default()
            }
        } else {
            Exit {
                exit_code: Some(1),
                failure: Some(FailureClass::Workload),
                message: "exit status 1".into(),
                ..Exit::default()
            }
        };
        self.running
            .insert(attempt.clone(), (Instant::now() + took, exit));
        disk.running.insert(attempt.clone());
        drop(disk);
        self.executions.started(&self.node_id, &attempt);
        trace(|| format!("{} start {attempt}", self.node_id));
        let started = pb::AttemptStarted {
            attempt: Some(token(&attempt)),
        };
        conn.send(agent_msg(Msg::Started(started)))
    }

    /// Records an attempt's end (on "disk" until acknowledged) and reports
    /// it on `conn`, if there is one (else the next hello carries it).
    async fn finish(&self, conn: Option<&Conn>, attempt: AttemptRef, exit: Exit) -> bool {
        self.executions.ended(&self.node_id, &attempt);
        trace(|| format!("{} finish {attempt} conn={}", self.node_id, conn.is_some()));
        let m = finished(&attempt, &exit);
        let mut disk = self.disk.lock().await;
        disk.running.remove(&attempt);
        disk.done.insert(attempt.clone());
        disk.unacked
            .push(self.report(attempt, AttemptEvent::Finished(exit)));
        conn.is_none_or(|c| c.send(agent_msg(Msg::Finished(m))))
    }

    /// One message from the replica; false if the stream is gone.
    async fn handle(&mut self, conn: &Conn, m: pb::ServerMessage) -> bool {
        trace(|| {
            format!(
                "{} got {:?} lease {}",
                self.node_id,
                m.msg,
                self.lease_ms.saturating_sub(1_800_000_000_000)
            )
        });
        match m.msg {
            Some(SMsg::Welcome(w)) => {
                self.grace_ms = w.node_grace_ms;
                true
            }
            Some(SMsg::Pong(p)) => {
                // As gantry-agent's renew_lease: the leader's confirmation
                // came no earlier than the heartbeat's sending less the
                // age the replica gives it.
                if let Some(ago) = p.confirmed_ago_ms
                    && self.grace_ms > 0
                {
                    let lease = (p.sent_at_ms.saturating_sub(ago) + self.grace_ms)
                        .saturating_sub(FENCE_MARGIN_MS);
                    self.lease_ms = self.lease_ms.max(lease);
                }
                true
            }
            Some(SMsg::Assign(a)) => {
                let Some(attempt) = a.attempt.map(attempt_ref) else {
                    return true;
                };
                if self.lease_ms > now_ms() {
                    self.start(conn, attempt).await
                } else {
                    if !self.waiting.iter().any(|(w, _)| *w == attempt) {
                        self.waiting.push((attempt, now_ms()));
                    }
                    true
                }
            }
            Some(SMsg::Cancel(c)) => {
                let Some(attempt) = c.attempt.map(attempt_ref) else {
                    return true;
                };
                let waited = self.waiting.iter().any(|(w, _)| *w == attempt);
                self.waiting.retain(|(w, _)| *w != attempt);
                let ran = self.running.remove(&attempt).is_some();
                // As gantry-agent: one that finished here is left alone; one
                // this agent never had was cancelled before its assignment
                // arrived, and is reported ended.
                let finished_here =
                    !ran && !waited && self.disk.lock().await.done.contains(&attempt);
                if finished_here {
                    return true;
                }
                let exit = Exit {
                    failure: Some(FailureClass::Cancelled),
                    message: c.reason,
                    ..Exit::default()
                };
                self.finish(Some(conn), attempt, exit).await
            }
            Some(SMsg::Ack(a)) => {
                let Some(attempt) = a.attempt.map(attempt_ref) else {
                    return true;
                };
                let mut disk = self.disk.lock().await;
                let acked: Vec<AttemptReport> = disk
                    .unacked
                    .iter()
                    .filter(|r| r.attempt == attempt)
                    .cloned()
                    .collect();
                disk.unacked.retain(|r| r.attempt != attempt);
                trace(|| format!("{} ack {attempt}", self.node_id));
                // Now and then a report is sent twice (as after a lost ack):
                // fencing must ignore the copy.
                if let Some(AttemptReport {
                    event: AttemptEvent::Finished(exit),
                    ..
                }) = acked.first()
                    && self.rng.random_bool(0.05)
                {
                    disk.duplicates_sent += 1;
                    return conn.send(agent_msg(Msg::Finished(finished(&attempt, exit))));
                }
                true
            }
            None => true,
        }
    }
}

/// One execution of an attempt on a node, in the run's virtual time (ms).
#[derive(Clone, Debug)]
pub struct Execution {
    pub node: String,
    pub attempt: AttemptRef,
    pub start_ms: u64,
    /// `None` while it runs (to the end of the run).
    pub end_ms: Option<u64>,
}

/// Every execution on every simulated node, shared by the agents (what
/// the real-process tests read from the tasks' own beats), and every time
/// an agent learnt its node was lost while its lease still held.
// A std mutex: a crashed agent's executions are ended from synchronous code.
#[allow(clippy::disallowed_types)]
#[derive(Clone, Default)]
pub struct Executions(Arc<std::sync::Mutex<(Vec<Execution>, Vec<String>)>>);

impl Executions {
    fn leased_when_lost(&self, node: &str, now: u64, lease: u64) {
        if let Ok(mut all) = self.0.lock() {
            all.1.push(format!(
                "{node} was told at {} ms it is lost, its lease holding until {} ms",
                now - super::EPOCH_MS,
                lease - super::EPOCH_MS
            ));
        }
    }

    /// Where an agent learnt its node was lost while its lease held.
    pub fn leased_at_loss(&self) -> Vec<String> {
        self.0.lock().map(|all| all.1.clone()).unwrap_or_default()
    }

    fn started(&self, node: &str, attempt: &AttemptRef) {
        if let Ok(mut all) = self.0.lock() {
            all.0.push(Execution {
                node: node.to_owned(),
                attempt: attempt.clone(),
                start_ms: now_ms(),
                end_ms: None,
            });
        }
    }

    fn ended(&self, node: &str, attempt: &AttemptRef) {
        self.end_where(|e| e.node == node && e.attempt == *attempt);
    }

    /// The node's agent crashed: everything it ran is gone.
    pub fn node_crashed(&self, node: &str) {
        self.end_where(|e| e.node == node);
    }

    fn end_where(&self, f: impl Fn(&Execution) -> bool) {
        if let Ok(mut all) = self.0.lock() {
            let now = now_ms();
            for e in all.0.iter_mut().filter(|e| e.end_ms.is_none() && f(e)) {
                e.end_ms = Some(now);
            }
        }
    }

    pub fn all(&self) -> Vec<Execution> {
        self.0.lock().map(|all| all.0.clone()).unwrap_or_default()
    }
}

fn infra(message: &str) -> Exit {
    Exit {
        failure: Some(FailureClass::Infra),
        message: message.into(),
        ..Exit::default()
    }
}

/// `GANTRY_SIM_TRACE=1` prints what each agent sends and gets, with the
/// run's virtual time (ms): for reading a replayed seed.
fn trace(line: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("GANTRY_SIM_TRACE").is_some()) {
        eprintln!("{} {}", now_ms() - super::EPOCH_MS, line());
    }
}

fn agent_msg(m: Msg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

fn token(r: &AttemptRef) -> pb::AttemptToken {
    pb::AttemptToken {
        job_id: r.job_id.clone(),
        task: r.task,
        attempt: r.attempt,
    }
}

fn attempt_ref(t: pb::AttemptToken) -> AttemptRef {
    AttemptRef {
        job_id: t.job_id,
        task: t.task,
        attempt: t.attempt,
    }
}

fn finished(attempt: &AttemptRef, exit: &Exit) -> pb::AttemptFinished {
    let failure = match exit.failure {
        None => pb::FailureClass::Unspecified,
        Some(FailureClass::Workload) => pb::FailureClass::Workload,
        Some(FailureClass::Timeout) => pb::FailureClass::Timeout,
        Some(FailureClass::Infra) => pb::FailureClass::Infra,
        Some(FailureClass::Cancelled) => pb::FailureClass::Cancelled,
        Some(FailureClass::WarmUp) => pb::FailureClass::WarmUp,
    };
    pb::AttemptFinished {
        attempt: Some(token(attempt)),
        exit_code: exit.exit_code,
        signal: exit.signal,
        failure: failure as i32,
        message: exit.message.clone(),
        ..pb::AttemptFinished::default()
    }
}
