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

const POLL: Duration = Duration::from_millis(100);
/// An agent that hears nothing (not even a pong) for this long drops the
/// stream and connects to another replica.
const SILENCE_LIMIT: Duration = Duration::from_secs(3);

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
    /// Which incarnation this is (for unique session ids).
    pub incarnation: u64,
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
        let mut running: BTreeMap<AttemptRef, (Instant, Exit)> = BTreeMap::new();
        let mut next_replica = self.rng.random_range(0..self.replicas.len());
        loop {
            tokio::time::sleep(POLL).await;
            let target = self.replicas[next_replica % self.replicas.len()];
            next_replica += 1;
            let hello = self.hello(&running).await;
            let Ok(mut conn) = conn::open(&self.net, self.endpoint, target, hello).await else {
                continue;
            };
            self.disk.lock().await.sessions_opened += 1;
            self.session(&mut conn, &mut running).await;
        }
    }

    /// The first message on a stream: this node, what it runs, and the
    /// results not yet acknowledged (as gantry-agent sends it).
    async fn hello(&self, running: &BTreeMap<AttemptRef, (Instant, Exit)>) -> AgentMessage {
        let info = self.node_info();
        let unacknowledged = self
            .disk
            .lock()
            .await
            .unacked
            .iter()
            .filter_map(|r| match &r.event {
                AttemptEvent::Finished(exit) => Some(finished(&r.attempt, exit)),
                _ => None,
            })
            .collect();
        agent_msg(Msg::Hello(pb::Hello {
            node_id: info.id,
            labels: info.labels.into_iter().collect(),
            capacity: Some(pb::Resources {
                cpu_millis: info.capacity.cpu_millis,
                memory_mib: info.capacity.memory_mib,
                gpus: info.capacity.gpus,
            }),
            max_tasks: info.max_tasks,
            version: info.agent_version,
            running: running.keys().map(token).collect(),
            unacknowledged,
            ..pb::Hello::default()
        }))
    }

    /// One session: runs what it is assigned, reports, heartbeats; returns
    /// when the stream ends or the replica goes silent.
    async fn session(
        &mut self,
        conn: &mut Conn,
        running: &mut BTreeMap<AttemptRef, (Instant, Exit)>,
    ) {
        let mut heard = Instant::now();
        let mut beat = tokio::time::interval(gantry_server::HEARTBEAT_INTERVAL);
        let mut tick = tokio::time::interval(POLL);
        loop {
            // Biased: a fixed order, which the simulation replays (tokio's random one it cannot).
            tokio::select! {
                biased;
                m = conn.rx.recv() => {
                    let Some(Ok(m)) = m else { return };
                    heard = Instant::now();
                    if !self.handle(conn, running, m).await {
                        return;
                    }
                }
                _ = beat.tick() => {
                    if heard.elapsed() > SILENCE_LIMIT {
                        return;
                    }
                    let hb = pb::Heartbeat { sent_at_ms: super::now_ms(), ..pb::Heartbeat::default() };
                    if !conn.send(agent_msg(Msg::Heartbeat(hb))) {
                        return;
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let due: Vec<AttemptRef> = running
                        .iter()
                        .filter(|(_, (at, _))| *at <= now)
                        .map(|(a, _)| a.clone())
                        .collect();
                    for a in due {
                        if let Some((_, exit)) = running.remove(&a)
                            && !self.finish(conn, a, exit).await
                        {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Records a finished attempt (on "disk" until acknowledged) and reports it.
    async fn finish(&self, conn: &Conn, attempt: AttemptRef, exit: Exit) -> bool {
        let m = finished(&attempt, &exit);
        let mut disk = self.disk.lock().await;
        disk.running.remove(&attempt);
        disk.done.insert(attempt.clone());
        disk.unacked
            .push(self.report(attempt, AttemptEvent::Finished(exit)));
        conn.send(agent_msg(Msg::Finished(m)))
    }

    /// One message from the replica; false if the stream is gone.
    async fn handle(
        &mut self,
        conn: &Conn,
        running: &mut BTreeMap<AttemptRef, (Instant, Exit)>,
        m: pb::ServerMessage,
    ) -> bool {
        match m.msg {
            Some(SMsg::Assign(a)) => {
                let Some(attempt) = a.attempt.map(attempt_ref) else {
                    return true;
                };
                let mut disk = self.disk.lock().await;
                if running.contains_key(&attempt) || disk.done.contains(&attempt) {
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
                running.insert(attempt.clone(), (Instant::now() + took, exit));
                disk.running.insert(attempt.clone());
                let started = pb::AttemptStarted {
                    attempt: Some(token(&attempt)),
                };
                conn.send(agent_msg(Msg::Started(started)))
            }
            Some(SMsg::Cancel(c)) => {
                let Some(attempt) = c.attempt.map(attempt_ref) else {
                    return true;
                };
                if running.remove(&attempt).is_none() {
                    return true;
                }
                let exit = Exit {
                    failure: Some(FailureClass::Cancelled),
                    message: c.reason,
                    ..Exit::default()
                };
                self.finish(conn, attempt, exit).await
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
            Some(SMsg::Welcome(_)) | Some(SMsg::Pong(_)) | None => true,
        }
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
