//! Health: `grpc.health.v1` on the gRPC port, and the quorum probe that
//! drives it (and the HTTP `/ready`).
//!
//! A replica is SERVING only while it is part of a quorum: once a probe
//! interval it confirms a read index with the leader (a leader confirms its
//! leadership with a majority first), exactly what a linearizable read
//! needs. A replica cut off from its quorum, or with no leader, turns
//! NOT_SERVING within one interval plus the probe's deadline; it starts
//! NOT_SERVING until its first probe succeeds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::replica::Replica;

pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// Services whose status follows the quorum, besides "" (the whole server).
pub const SERVICES: &[&str] = &[
    "gantry.v1.JobService",
    "gantry.v1.ClusterService",
    "gantry.v1.NodeService",
    "gantry.v1.AgentService",
];

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for s in SERVICES {
        reporter.set_service_status(*s, status).await;
    }
}

/// Runs for the replica's life.
pub async fn probe_loop(replica: Arc<Replica>, reporter: HealthReporter) {
    set_all(&reporter, ServingStatus::NotServing).await;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Option<bool> = None;
    loop {
        tick.tick().await;
        let probe = replica.read_barrier(Instant::now() + PROBE_DEADLINE).await;
        let ok = probe.is_ok();
        replica.in_quorum.store(ok, Ordering::Relaxed);
        if last == Some(ok) {
            continue;
        }
        if ok {
            set_all(&reporter, ServingStatus::Serving).await;
            tracing::info!(id = replica.id, "part of a quorum: health SERVING");
        } else {
            set_all(&reporter, ServingStatus::NotServing).await;
            if let Err(e) = probe {
                tracing::warn!(id = replica.id, error = %e.message(), "not part of a quorum: health NOT_SERVING");
            }
        }
        last = Some(ok);
    }
}
