//! Metrics in the Prometheus text format (OpenMetrics), and the HTTP
//! endpoint that serves them with `/health`, `/ready` and `/live`.
//!
//! What comes from the replicated state (jobs, attempts, task durations,
//! pending tasks) is computed from this replica's applied state at scrape
//! time, so every replica reports the same figures at the same applied
//! index; what is this process's own (Raft position, agent streams, gRPC
//! requests) is its own. See docs/operations.md for the list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use gantry_core::{AttemptState, JobState};
use openraft::async_runtime::WatchReceiver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::replica::Replica;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
    class: String,
}

/// gRPC requests and errors by method, counted by [`crate::ops::grpc_metrics`].
#[derive(Clone, Default)]
pub struct GrpcCounters {
    pub requests: Family<MethodLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
}

/// Seconds from proposing an entry to its being applied.
const WRITE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub fn write_latency_histogram() -> Histogram {
    Histogram::new(WRITE_BUCKETS.iter().copied())
}

/// Task durations are bucketed in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

fn gauge(reg: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    reg.register(name, help, g);
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The replica's metrics now, as Prometheus text.
pub async fn render(replica: &Replica, grpc: &GrpcCounters) -> String {
    let m = replica.raft.metrics().borrow_watched().clone();
    let mut reg = Registry::with_prefix("gantry");

    gauge(
        &mut reg,
        "replica_id",
        "This replica's id",
        as_i64(replica.id),
    );
    gauge(
        &mut reg,
        "raft_term",
        "Current Raft term",
        as_i64(m.current_term),
    );
    gauge(
        &mut reg,
        "raft_leader",
        "Id of the replica this one follows as leader (0: none known)",
        as_i64(m.current_leader.unwrap_or(0)),
    );
    gauge(
        &mut reg,
        "raft_is_leader",
        "1 if this replica is the leader",
        i64::from(m.state.is_leader() && m.current_leader == Some(replica.id)),
    );
    gauge(
        &mut reg,
        "raft_last_log_index",
        "Index of the last entry in this replica's log",
        as_i64(m.last_log_index.unwrap_or(0)),
    );
    gauge(
        &mut reg,
        "raft_commit_index",
        "Index of the last entry known committed",
        as_i64(m.local_committed.map_or(0, |l| l.index)),
    );
    gauge(
        &mut reg,
        "raft_applied_index",
        "Index of the last entry applied to the state machine",
        as_i64(m.last_applied.map_or(0, |l| l.index)),
    );
    gauge(
        &mut reg,
        "in_quorum",
        "1 if the last quorum probe succeeded (what health reports)",
        i64::from(replica.in_quorum.load(Ordering::Relaxed)),
    );
    gauge(
        &mut reg,
        "connected_agents",
        "Agent streams this replica holds",
        replica.sessions.nodes().await.len() as i64,
    );

    let jobs: Family<StateLabels, Gauge> = Family::default();
    let attempts: Family<OutcomeLabels, Gauge> = Family::default();
    let durations = Histogram::new(DURATION_BUCKETS.iter().copied());
    let health: Family<NodeLabels, Gauge> = Family::default();
    let now = crate::replica::clock::now_ms();
    let (received, pending, stale, unhealthy, blacklisted, gc) = replica
        .state
        .read(|s, _| {
            let mut retained = 0u64;
            for j in s.jobs() {
                retained += u64::from(j.state.is_terminal());
                jobs.get_or_create(&StateLabels {
                    state: job_state(j.state).into(),
                })
                .inc();
                for t in &j.tasks {
                    for a in t.attempts.iter().filter(|a| !a.state.is_live()) {
                        let class = a.exit.failure.map_or("none", |c| c.as_str());
                        attempts
                            .get_or_create(&OutcomeLabels {
                                outcome: attempt_state(a.state).into(),
                                class: class.into(),
                            })
                            .inc();
                        if a.started_at_ms > 0 && a.finished_at_ms >= a.started_at_ms {
                            durations.observe((a.finished_at_ms - a.started_at_ms) as f64 / 1000.0);
                        }
                    }
                }
            }
            let (mut unhealthy, mut blacklisted) = (0, 0);
            for n in s.nodes() {
                unhealthy += i64::from(!n.health.healthy);
                blacklisted += i64::from(n.blacklisted_at(now));
                health
                    .get_or_create(&NodeLabels {
                        node: n.id().to_owned(),
                    })
                    .set(i64::from(n.health.score));
            }
            (
                s.jobs_submitted(),
                s.pending_count(),
                s.stale_reports(),
                unhealthy,
                blacklisted,
                (retained, s.jobs_collected(), s.last_collection_ms()),
            )
        })
        .await;
    let (retained, collected, last_collection_ms) = gc;
    gauge(
        &mut reg,
        "jobs_retained",
        "Finished jobs held until their retention passes",
        as_i64(retained),
    );
    let collected_c: Counter = Counter::default();
    collected_c.inc_by(collected);
    reg.register(
        "jobs_collected",
        "Finished jobs garbage-collected after their retention",
        collected_c,
    );
    gauge(
        &mut reg,
        "jobs_last_collection_timestamp_seconds",
        "When finished jobs were last garbage-collected (0: never)",
        as_i64(last_collection_ms / 1_000),
    );
    gauge(
        &mut reg,
        "nodes_unhealthy",
        "Nodes whose agent's health verdict is unhealthy (no new tasks under balanced/strict placement)",
        unhealthy,
    );
    gauge(
        &mut reg,
        "nodes_blacklisted",
        "Nodes blacklisted now (automatically for infra failures, or by an operator)",
        blacklisted,
    );
    reg.register(
        "node_health_score",
        "Each node's health score, 0-100, as last written to the log",
        health,
    );
    let received_c: Counter = Counter::default();
    received_c.inc_by(received);
    reg.register(
        "jobs_received",
        "Jobs submitted to the cluster (garbage-collected ones included)",
        received_c,
    );
    reg.register("jobs", "Jobs by state", jobs);
    reg.register(
        "attempts_finished",
        "Finished attempts by outcome and failure class (workload, timeout, infra, cancelled; none for success)",
        attempts,
    );
    reg.register(
        "task_duration_seconds",
        "Run time of finished attempts (start to end)",
        durations,
    );
    gauge(
        &mut reg,
        "pending_tasks",
        "Tasks waiting for a node",
        pending as i64,
    );
    let stale_c: Counter = Counter::default();
    stale_c.inc_by(stale);
    reg.register(
        "stale_reports",
        "Agent reports refused by fencing (not the attempt's current node or session)",
        stale_c,
    );
    reg.register(
        "raft_apply_latency_seconds",
        "Time from proposing an entry on this replica (the leader) to its being committed and applied",
        replica.write_latency.clone(),
    );
    reg.register(
        "submissions_refused",
        "Submit requests refused with RESOURCE_EXHAUSTED by admission (disk reserve, pending limit, backlog)",
        replica.admission.refused.clone(),
    );
    gauge(
        &mut reg,
        "data_dir_free_bytes",
        "Free space in this replica's data dir at the last check",
        as_i64(replica.admission.free()),
    );
    if let Some(offset) = replica.skew.offset_ms() {
        gauge(
            &mut reg,
            "clock_offset_ms",
            "This replica's clock against the leader's (leader minus this replica, ms); warned past 500",
            offset,
        );
    }
    gauge(
        &mut reg,
        "nospace_alarm",
        "1 while the data dir's free space is below the reserve (new submissions refused)",
        i64::from(replica.admission.disk_low()),
    );
    reg.register(
        "scheduler_tasks_examined",
        "Pending tasks the scheduler read while this replica led (a round stops reading when no node has a task slot left)",
        replica.scheduler_examined.clone(),
    );
    reg.register(
        "grpc_requests",
        "gRPC requests received, by method",
        grpc.requests.clone(),
    );
    reg.register(
        "grpc_errors",
        "gRPC requests answered with an error status, by method and code",
        grpc.errors.clone(),
    );

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    out
}

fn job_state(s: JobState) -> &'static str {
    s.as_str()
}

fn attempt_state(s: AttemptState) -> &'static str {
    s.as_str()
}

#[derive(Clone)]
struct Http {
    replica: Arc<Replica>,
    grpc: GrpcCounters,
}

async fn metrics(AxumState(h): AxumState<Http>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&h.replica, &h.grpc).await,
    )
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(AxumState(h): AxumState<Http>) -> impl IntoResponse {
    if h.replica.in_quorum.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready: part of a quorum\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not part of a quorum\n",
        )
    }
}

async fn health(AxumState(h): AxumState<Http>) -> impl IntoResponse {
    let m = h.replica.raft.metrics().borrow_watched().clone();
    let in_quorum = h.replica.in_quorum.load(Ordering::Relaxed);
    let body = serde_json::json!({
        "id": h.replica.id,
        "in_quorum": in_quorum,
        "leader": m.current_leader,
        "term": m.current_term,
        "applied_index": m.last_applied.map_or(0, |l| l.index),
    });
    let code = if in_quorum {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
}

/// Serves `/metrics`, `/health`, `/ready` and `/live` on `listener`.
pub fn serve(
    listener: TcpListener,
    replica: Arc<Replica>,
    grpc: GrpcCounters,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/live", get(live))
        .with_state(Http { replica, grpc });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((addr, task))
}
