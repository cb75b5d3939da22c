//! Loops that run only on the leader (the scheduler, node liveness, drain
//! deadlines, turning on new apply rules, job garbage collection), started
//! when this replica gains leadership and stopped when it loses it.

pub mod gc;
pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use gantry_core::{Command, Eligibility, NodeStatus, scheduler};
use openraft::async_runtime::WatchReceiver;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::replica::Replica;

/// Most placements in one Assign entry.
const MAX_PLACEMENTS_PER_ROUND: usize = 1_000;
/// How often the scheduler looks again when nothing changed (retry backoffs expire).
const SCHEDULER_TICK: Duration = Duration::from_millis(500);
/// After a round, the scheduler rests this many times as long as the round
/// took (it then uses at most a quarter of the leader's time).
const SCHEDULER_REST_FACTOR: u32 = 3;
/// A liveness tick later than this is the leader's own stall, not the nodes'.
const STALL_EXCUSED_AFTER: Duration = Duration::from_millis(500);
/// How often replicas report their sessions and the leader checks liveness.
pub const SESSION_REPORT_INTERVAL: Duration = Duration::from_secs(1);

fn spawn(task: impl Future<Output = ()> + Send + 'static) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(gantry_store::runtime::spawn(task))
}

/// Watches leadership and runs the leader-only loops while it lasts.
pub async fn supervise(replica: Arc<Replica>) {
    let mut metrics = replica.raft.metrics();
    // Aborted when dropped: the leader loops end with `supervise`, also when
    // it is aborted (a replica stopped in-process, a simulated crash).
    let mut loops: Vec<AbortOnDropHandle<()>> = Vec::new();
    loop {
        let leading = {
            let m = metrics.borrow_watched();
            m.current_leader == Some(replica.id) && m.state.is_leader()
        };
        if leading && loops.is_empty() {
            tracing::info!(
                id = replica.id,
                "leadership gained: starting the scheduler and liveness loops"
            );
            replica.liveness.reset().await;
            loops.push(spawn(schedule_loop(replica.clone())));
            loops.push(spawn(liveness_loop(replica.clone())));
            loops.push(spawn(crate::leader::rules::enable_when_all_know(
                replica.clone(),
            )));
            loops.push(spawn(gc::collect_loop(replica.clone())));
        } else if !leading && !loops.is_empty() {
            tracing::info!(id = replica.id, "leadership lost: stopping leader loops");
            loops.clear();
        }
        if metrics.changed().await.is_err() {
            break;
        }
    }
}

async fn schedule_loop(replica: Arc<Replica>) {
    let mut metrics = replica.raft.metrics();
    let policy = replica.config.placement_policy();
    // Backoffs and deadlines are compared with the time entries carry.
    replica
        .establish_entry_clock(Instant::now() + replica.config.request_timeout())
        .await;
    loop {
        // Anything applied after this is looked at by the next round.
        let applied = metrics.borrow_watched().last_applied;
        let now = replica.entry_clock.now();
        let started = Instant::now();
        let (placements, examined, spans) = replica
            .state
            .read(|s, _| {
                let round = scheduler::schedule_round(s, now, MAX_PLACEMENTS_PER_ROUND, policy);
                let placements = round.placements;
                // A span per placement in its job's trace, until committed.
                let spans: Vec<tracing::Span> = placements
                    .iter()
                    .filter_map(|p| {
                        let trace = &s.job(&p.attempt.job_id)?.trace_parent;
                        (!trace.is_empty()).then(|| {
                            let span = tracing::info_span!("scheduled", job = %p.attempt.job_id, task = p.attempt.task, attempt = p.attempt.attempt, node = %p.node_id);
                            gantry_telemetry::otel::set_parent(&span, trace);
                            span
                        })
                    })
                    .collect();
                (placements, round.examined, spans)
            })
            .await;
        let took = started.elapsed();
        replica.scheduler_examined.inc_by(examined as u64);
        let full_round = placements.len() >= MAX_PLACEMENTS_PER_ROUND;
        if !placements.is_empty() {
            let n = placements.len();
            let deadline = Instant::now() + replica.config.request_timeout();
            match replica
                .write(
                    Command::Assign {
                        now_ms: now,
                        placements,
                    },
                    deadline,
                )
                .await
            {
                Ok(_) => {
                    drop(spans);
                    tracing::debug!(placed = n, "scheduling round committed");
                    if full_round {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "scheduling round not committed"),
            }
        }
        // A round that read the whole queue costs in proportion to it: rest
        // a few times as long before the next, so that with a long queue
        // the scheduler takes at most a share of the leader's time and
        // applies, reports and reads keep theirs.
        tokio::time::sleep(pause_after(took)).await;
        // Woken by newly applied entries (new work, finished attempts,
        // nodes), or by the tick for retry backoffs.
        let _ = tokio::time::timeout(SCHEDULER_TICK, async {
            while metrics.changed().await.is_ok() {
                if metrics.borrow_watched().last_applied != applied {
                    return;
                }
            }
        })
        .await;
    }
}

/// The rest after a scheduling round that took `took`.
fn pause_after(took: Duration) -> Duration {
    took.saturating_mul(SCHEDULER_REST_FACTOR)
        .min(SCHEDULER_TICK)
}

async fn liveness_loop(replica: Arc<Replica>) {
    let grace = replica.config.node_grace();
    let every = SESSION_REPORT_INTERVAL / 2;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        // A tick this late means the leader itself was starved: excuse
        // every node the time it could not hear about them.
        let late = last.elapsed().saturating_sub(every);
        last = Instant::now();
        if late > STALL_EXCUSED_AFTER {
            tracing::warn!(
                ?late,
                "the liveness loop ran late (this replica is starved of CPU?): not counting that time against any node"
            );
            replica.liveness.excuse(late).await;
        }
        expire_drains(&replica).await;
        let ready: Vec<String> = replica
            .state
            .read(|s, _| s.node_ids(NodeStatus::Ready).map(str::to_owned).collect())
            .await;
        let lost = replica.liveness.expired(&ready, grace).await;
        if lost.is_empty() {
            continue;
        }
        tracing::warn!(nodes = ?lost, ?grace, "no replica held these nodes' sessions for the grace period: marking them lost");
        let deadline = Instant::now() + replica.config.request_timeout();
        let cmd = Command::NodesLost {
            now_ms: replica.now_ms(),
            node_ids: lost.clone(),
        };
        // Proposed here or not at all: a loop that outlived this replica's
        // leadership decides from confirmations the new leader has taken
        // over, and a forwarded loss would fence agents holding its leases.
        match replica.propose_as_leader(cmd, deadline).await {
            Ok(_) => replica.liveness.forget(&lost).await,
            Err(e) => tracing::warn!(error = %e, "could not record lost nodes"),
        }
    }
}

/// Draining nodes past their deadline: stop what still runs there.
async fn expire_drains(replica: &Replica) {
    let now = replica.entry_clock.now();
    let expired: Vec<String> = replica
        .state
        .read(|s, _| {
            s.nodes()
                .filter(|n| matches!(n.eligibility, Eligibility::Draining { deadline_ms } if deadline_ms <= now))
                .filter(|n| {
                    s.live_attempts(n.id()).any(|r| {
                        s.job(&r.job_id)
                            .and_then(|j| j.tasks.get(r.task as usize))
                            .and_then(|t| t.attempts.last())
                            .is_some_and(|a| !a.cancel_requested)
                    })
                })
                .map(|n| n.id().to_owned())
                .collect()
        })
        .await;
    for node_id in expired {
        tracing::info!(node = %node_id, "drain deadline passed: stopping its tasks to run them elsewhere");
        let deadline = Instant::now() + replica.config.request_timeout();
        let cmd = Command::DrainExpired {
            now_ms: now,
            node_id,
        };
        if let Err(e) = replica.write(cmd, deadline).await {
            tracing::warn!(error = %e, "could not record a drain deadline");
        }
    }
}
