//! The agent's own metrics (Prometheus text on `--metrics-listen`, with
//! `/live` and `/ready`): attempts running, output streamed and dropped,
//! streams opened and reconnects; the latest health report and per-GPU
//! telemetry. Everything else about a node (its attempts' outcomes) is in
//! the replicas' metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use gantry_proto::v1::GpuTelemetry;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::HealthSnapshot;

const MIB: f64 = 1024.0 * 1024.0;

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

/// What `/metrics` and `/ready` read.
#[derive(Clone)]
struct MetricsState {
    stats: Arc<AgentStats>,
    health: watch::Receiver<Arc<HealthSnapshot>>,
}

type GpuLabels = [(&'static str, String); 3];

fn gpu_labels(g: &GpuTelemetry) -> GpuLabels {
    [
        ("gpu", g.index.to_string()),
        ("uuid", g.uuid.clone()),
        ("model", g.model.clone()),
    ]
}

fn gpu_gauge(
    reg: &mut Registry,
    name: &str,
    help: &str,
    gpus: &[GpuTelemetry],
    value: impl Fn(&GpuTelemetry) -> f64,
) {
    let family = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
    for g in gpus {
        family.get_or_create(&gpu_labels(g)).set(value(g));
    }
    reg.register(name, help, family);
}

fn register_health(reg: &mut Registry, h: &HealthSnapshot) {
    // Before the first check there is no score to give; 0 would read as
    // "everything failed".
    if !h.report.checks.is_empty() {
        let score: Gauge = Gauge::default();
        score.set(i64::from(h.report.score));
        reg.register(
            "health_score",
            "Share of the node's health checks that passed (0-100)",
            score,
        );
        let healthy: Gauge = Gauge::default();
        healthy.set(i64::from(h.report.healthy));
        reg.register(
            "healthy",
            "1 while the health score reaches the agent's healthy threshold",
            healthy,
        );
        let passed = Family::<[(&'static str, String); 1], Gauge>::default();
        for c in &h.report.checks {
            passed
                .get_or_create(&[("check", c.name.clone())])
                .set(i64::from(c.passed));
        }
        reg.register(
            "health_check_passed",
            "1 when the health check passed at the last run",
            passed,
        );
    }
    if h.gpus.is_empty() {
        return;
    }
    gpu_gauge(
        reg,
        "gpu_memory_used_bytes",
        "GPU memory in use",
        &h.gpus,
        |g| g.memory_used_mib as f64 * MIB,
    );
    gpu_gauge(
        reg,
        "gpu_memory_total_bytes",
        "GPU memory installed",
        &h.gpus,
        |g| g.memory_total_mib as f64 * MIB,
    );
    gpu_gauge(
        reg,
        "gpu_utilization_ratio",
        "Share of the last sample period a kernel ran on the GPU (0-1)",
        &h.gpus,
        |g| f64::from(g.utilization_percent) / 100.0,
    );
    gpu_gauge(
        reg,
        "gpu_temperature_celsius",
        "GPU die temperature",
        &h.gpus,
        |g| f64::from(g.temperature_c),
    );
    gpu_gauge(reg, "gpu_power_watts", "GPU power draw", &h.gpus, |g| {
        f64::from(g.power_mw) / 1000.0
    });
    gpu_gauge(
        reg,
        "gpu_ecc_errors",
        "Uncorrected ECC errors since the driver loaded",
        &h.gpus,
        |g| g.ecc_errors as f64,
    );
}

pub fn render(s: &AgentStats, health: &HealthSnapshot) -> String {
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
    register_health(&mut reg, health);
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    out
}

async fn metrics(State(m): State<MetricsState>) -> impl IntoResponse {
    // Cloned out so the watch is not borrowed while encoding.
    let health = m.health.borrow().clone();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&m.stats, &health),
    )
}

async fn ready(State(m): State<MetricsState>) -> impl IntoResponse {
    if m.stats.connected.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready: connected to a replica\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no replica stream\n",
        )
    }
}

/// Serves `/metrics`, `/ready` and `/live` on `listener`; `health` is the
/// latest health report and GPU telemetry.
pub fn serve(
    listener: TcpListener,
    stats: Arc<AgentStats>,
    health: watch::Receiver<Arc<HealthSnapshot>>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "ok\n" }))
        .with_state(MetricsState { stats, health });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_proto::v1::{HealthCheck, HealthReport};

    #[test]
    fn t10_health_and_gpu_metrics_appear_once_known() {
        let s = AgentStats::default();
        let before = render(&s, &HealthSnapshot::default());
        assert!(!before.contains("health_score"), "{before}");
        let snapshot = HealthSnapshot {
            report: HealthReport {
                score: 80,
                healthy: false,
                checks: vec![HealthCheck {
                    name: "disk".into(),
                    passed: false,
                    detail: String::new(),
                }],
                checked_at_ms: 1,
            },
            gpus: vec![GpuTelemetry {
                index: 0,
                uuid: "GPU-a".into(),
                model: "A100".into(),
                memory_total_mib: 2,
                memory_used_mib: 1,
                utilization_percent: 50,
                temperature_c: 40,
                power_mw: 60000,
                ecc_errors: 0,
            }],
        };
        let m = render(&s, &snapshot);
        for line in [
            "gantry_agent_health_score 80",
            "gantry_agent_healthy 0",
            "gantry_agent_health_check_passed{check=\"disk\"} 0",
            "gantry_agent_gpu_memory_used_bytes{gpu=\"0\",uuid=\"GPU-a\",model=\"A100\"} 1048576.0",
            "gantry_agent_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-a\",model=\"A100\"} 0.5",
            "gantry_agent_gpu_power_watts{gpu=\"0\",uuid=\"GPU-a\",model=\"A100\"} 60.0",
        ] {
            assert!(m.contains(line), "{line} missing from\n{m}");
        }
    }
}
