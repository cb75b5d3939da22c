//! The agent's own metrics (Prometheus text on `--metrics-listen`, with
//! `/live` and `/ready`): attempts running, output streamed and dropped,
//! streams opened and reconnects. Everything else about a node (its
//! attempts' outcomes) is in the replicas' metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Counters shared by the stream and the executors.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub running: AtomicU64,
    pub attempts_started: AtomicU64,
    pub output_bytes: AtomicU64,
    /// Live output dropped because the queue to the replica was full.
    pub output_dropped_bytes: AtomicU64,
    pub streams_opened: AtomicU64,
    pub reconnects: AtomicU64,
    pub connected: AtomicBool,
}

/// Marks the agent connected while alive.
pub(crate) struct Connected<'a>(pub &'a AgentStats);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.connected.store(false, Ordering::Relaxed);
    }
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: &AtomicU64) {
    let c: Counter = Counter::default();
    c.inc_by(v.load(Ordering::Relaxed));
    reg.register(name, help, c);
}

pub fn render(s: &AgentStats) -> String {
    let mut reg = Registry::with_prefix("gantry_agent");
    let running: Gauge = Gauge::default();
    running.set(i64::try_from(s.running.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    reg.register("running_tasks", "Attempts running on this node", running);
    let connected: Gauge = Gauge::default();
    connected.set(i64::from(s.connected.load(Ordering::Relaxed)));
    reg.register(
        "connected",
        "1 while a stream to a replica is open",
        connected,
    );
    counter(
        &mut reg,
        "attempts_started",
        "Attempts started",
        &s.attempts_started,
    );
    counter(
        &mut reg,
        "output_bytes",
        "Task output streamed to the replica",
        &s.output_bytes,
    );
    counter(
        &mut reg,
        "output_dropped_bytes",
        "Live task output dropped because the queue to the replica was full (the final tails are kept)",
        &s.output_dropped_bytes,
    );
    counter(
        &mut reg,
        "streams_opened",
        "Streams opened to a replica",
        &s.streams_opened,
    );
    counter(
        &mut reg,
        "reconnects",
        "Streams opened after the first (replica lost, restarted or moved)",
        &s.reconnects,
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    out
}

async fn metrics(State(s): State<Arc<AgentStats>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&s),
    )
}

async fn ready(State(s): State<Arc<AgentStats>>) -> impl IntoResponse {
    if s.connected.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready: connected to a replica\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no replica stream\n",
        )
    }
}

/// Serves `/metrics`, `/ready` and `/live` on `listener`.
pub fn serve(
    listener: TcpListener,
    stats: Arc<AgentStats>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "ok\n" }))
        .with_state(stats);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((addr, task))
}
