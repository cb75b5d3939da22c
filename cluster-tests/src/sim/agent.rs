//! A simulated agent: holds one session on one replica at a time, moves to
//! another when its replica stops answering, runs the attempts it is given
//! for a seeded time, and reports them until a report is acknowledged — the
//! decisions of gantry-agent, with a timer for a process. What it keeps "on
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

use super::net::{Endpoint, Net};

const POLL: Duration = Duration::from_millis(100);
const CALL_TIMEOUT: Duration = Duration::from_millis(800);

/// What survives the agent's crashes.
#[derive(Default)]
pub struct Disk {
    /// Attempts started and not yet finished.
    pub running: BTreeSet<AttemptRef>,
    /// Attempts this agent finished (never run twice).
    pub done: BTreeSet<AttemptRef>,
    /// Reports not yet acknowledged by a replica.
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
        let mut session: Option<(u64, String)> = None;
        let mut failures = 0u32;
        let mut next_replica = self.rng.random_range(0..self.replicas.len());
        let mut sessions = 0u64;
        loop {
            tokio::time::sleep(POLL).await;
            let Some((replica, sid)) = session.clone() else {
                let target = self.replicas[next_replica % self.replicas.len()];
                next_replica += 1;
                sessions += 1;
                let sid = format!("{}-{}-{}", self.node_id, self.incarnation, sessions);
                let (info, s) = (self.node_info(), sid.clone());
                let opened = self
                    .net
                    .call(
                        self.endpoint,
                        target,
                        Duration::from_secs(3),
                        |r| async move { r.open_session(info, s).await },
                    )
                    .await;
                if matches!(opened, Ok(Ok(()))) {
                    session = Some((target, sid));
                    failures = 0;
                    self.disk.lock().await.sessions_opened += 1;
                }
                continue;
            };
            let (node, s) = (self.node_id.clone(), sid.clone());
            let beat = self
                .net
                .call(self.endpoint, replica, CALL_TIMEOUT, |r| async move {
                    r.sync(&node, &s).await
                })
                .await;
            let assigned = match beat {
                Ok(Some(a)) => {
                    failures = 0;
                    a
                }
                // The replica no longer holds our session: open a new one.
                Ok(None) => {
                    session = None;
                    continue;
                }
                Err(_) => {
                    failures += 1;
                    if failures >= 3 {
                        session = None;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            {
                let mut disk = self.disk.lock().await;
                // Running here but no longer assigned (the node was marked
                // lost and the task moved on): the dispatcher cancels it.
                let gone: Vec<AttemptRef> = running
                    .keys()
                    .filter(|r| !assigned.iter().any(|(a, _)| a == *r))
                    .cloned()
                    .collect();
                for attempt in gone {
                    running.remove(&attempt);
                    disk.running.remove(&attempt);
                    disk.done.insert(attempt.clone());
                    let exit = Exit {
                        failure: Some(FailureClass::Cancelled),
                        message: "no longer assigned to this node".into(),
                        ..Exit::default()
                    };
                    disk.unacked
                        .push(self.report(attempt, AttemptEvent::Finished(exit)));
                }
                for (attempt, cancel) in assigned {
                    if cancel {
                        if running.remove(&attempt).is_some() {
                            disk.running.remove(&attempt);
                            disk.done.insert(attempt.clone());
                            let exit = Exit {
                                failure: Some(FailureClass::Cancelled),
                                message: "cancelled".into(),
                                ..Exit::default()
                            };
                            let r = self.report(attempt, AttemptEvent::Finished(exit));
                            disk.unacked.push(r);
                        }
                        continue;
                    }
                    if running.contains_key(&attempt) || disk.done.contains(&attempt) {
                        continue;
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
                    running.insert(attempt.clone(), (now + took, exit));
                    disk.running.insert(attempt.clone());
                    let r = self.report(attempt, AttemptEvent::Started);
                    disk.unacked.push(r);
                }
                let finished: Vec<AttemptRef> = running
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(a, _)| a.clone())
                    .collect();
                for a in finished {
                    if let Some((_, exit)) = running.remove(&a) {
                        disk.running.remove(&a);
                        disk.done.insert(a.clone());
                        let r = self.report(a, AttemptEvent::Finished(exit));
                        disk.unacked.push(r);
                    }
                }
            }
            let reports = self.disk.lock().await.unacked.clone();
            if reports.is_empty() {
                continue;
            }
            let sent = reports.len();
            let batch = reports.clone();
            let acked = self
                .net
                .call(
                    self.endpoint,
                    replica,
                    Duration::from_secs(3),
                    |r| async move { r.report(batch).await },
                )
                .await;
            if matches!(acked, Ok(Ok(()))) {
                let mut disk = self.disk.lock().await;
                // Now and then a report is sent twice (as after a lost ack):
                // fencing must ignore the copy.
                if self.rng.random_bool(0.05) {
                    disk.duplicates_sent += 1;
                    let again = reports[self.rng.random_range(0..sent)].clone();
                    drop(disk);
                    let _ = self
                        .net
                        .call(self.endpoint, replica, CALL_TIMEOUT, |r| async move {
                            r.report(vec![again]).await
                        })
                        .await;
                    disk = self.disk.lock().await;
                }
                disk.unacked.drain(..sent);
            }
        }
    }
}
