//! Nodes.

use gantry_core as core;
use gantry_proto::v1 as api;
use tonic::Status;

pub(super) fn resources_to_api(r: &core::Resources) -> api::Resources {
    api::Resources {
        cpu_millis: r.cpu_millis,
        memory_mib: r.memory_mib,
        gpus: r.gpus,
    }
}

/// A node for the API as of `now_ms` (blacklist expiry, decayed reputation).
/// GPU telemetry and the last check time are the leader's to add.
pub fn node_to_api(n: &core::Node, usage: &core::Usage, now_ms: u64) -> api::Node {
    let (infra, successes) = n.reputation.at(now_ms);
    let blacklist = n.blacklist.as_ref().filter(|b| b.active_at(now_ms));
    let (eligibility, drain_deadline_ms) = match n.eligibility {
        core::Eligibility::Eligible => ("eligible", 0),
        core::Eligibility::Cordoned => ("cordoned", 0),
        core::Eligibility::Draining { deadline_ms } => ("draining", deadline_ms),
    };
    api::Node {
        id: n.info.id.clone(),
        labels: n
            .info
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        capacity: Some(resources_to_api(&n.info.capacity)),
        allocated: Some(resources_to_api(&usage.resources)),
        max_tasks: n.info.max_tasks,
        running_tasks: usage.tasks,
        status: n.status.as_str().to_owned(),
        eligibility: eligibility.to_owned(),
        drain_deadline_ms,
        session_replica: n.session.as_ref().map_or(0, |s| s.replica),
        updated_at_ms: n.updated_at_ms,
        agent_version: n.info.agent_version.clone(),
        last_seen_ms: 0,
        health_score: n.health.score,
        healthy: n.health.healthy,
        failing_checks: n
            .health
            .failing
            .iter()
            .map(|c| api::HealthCheck {
                name: c.name.clone(),
                passed: false,
                detail: c.detail.clone(),
            })
            .collect(),
        last_check_ms: n.health.checked_at_ms,
        gpus: n
            .info
            .gpu_list()
            .into_iter()
            .map(|g| api::GpuTelemetry {
                index: g.index,
                uuid: g.uuid,
                model: g.model,
                memory_total_mib: g.memory_mib,
                ..Default::default()
            })
            .collect(),
        gpus_in_use: usage.gpu_ids.iter().copied().collect(),
        infra_failures: infra as f64 / 1000.0,
        successes: successes as f64 / 1000.0,
        blacklisted: blacklist.is_some(),
        blacklist_reason: blacklist.map(|b| b.reason.clone()).unwrap_or_default(),
        blacklisted_until_ms: blacklist.map_or(0, |b| b.until_ms),
    }
}

/// The health an agent reports, cut to the documented limits.
pub fn health_from_api(r: &api::HealthReport) -> core::Health {
    let failing = r
        .checks
        .iter()
        .filter(|c| !c.passed)
        .take(core::limits::MAX_HEALTH_CHECKS)
        .map(|c| {
            let mut name = c.name.clone();
            let mut detail = c.detail.clone();
            core::limits::truncate_utf8(&mut name, 64);
            core::limits::truncate_utf8(&mut detail, core::limits::MAX_HEALTH_DETAIL_BYTES);
            core::FailingCheck { name, detail }
        })
        .collect();
    core::Health {
        score: r.score.min(100),
        healthy: r.healthy,
        failing,
        checked_at_ms: r.checked_at_ms,
    }
}

/// The GPUs an agent registers: at most `MAX_GPUS`, distinct indices, names
/// within the limits.
fn gpus_from_hello(h: &api::Hello) -> Result<Vec<core::Gpu>, Status> {
    let max = core::limits::MAX_NAME_BYTES;
    if h.gpus.len() > core::limits::MAX_GPUS as usize {
        return Err(Status::invalid_argument(format!(
            "hello.gpus: {} GPUs, the limit is {}",
            h.gpus.len(),
            core::limits::MAX_GPUS
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    h.gpus
        .iter()
        .map(|g| {
            if !seen.insert(g.index) || g.uuid.len() > max || g.model.len() > max {
                return Err(Status::invalid_argument(format!(
                    "hello.gpus: GPU {} is listed twice or its uuid or model is over {max} bytes",
                    g.index
                )));
            }
            Ok(core::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_mib: g.memory_total_mib,
            })
        })
        .collect()
}

/// The node an agent describes in its hello, checked against the limits.
pub fn node_info_from_hello(h: &api::Hello) -> Result<core::NodeInfo, Status> {
    let max = core::limits::MAX_NAME_BYTES;
    if h.node_id.is_empty() || h.node_id.len() > max {
        return Err(Status::invalid_argument(format!(
            "hello.node_id: must be 1 to {max} bytes"
        )));
    }
    if h.labels.len() > core::limits::MAX_CONSTRAINTS
        || h.labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > max || v.len() > max)
    {
        return Err(Status::invalid_argument(format!(
            "hello.labels: at most {} labels, keys non-empty, keys and values at most {max} bytes",
            core::limits::MAX_CONSTRAINTS
        )));
    }
    let c = h.capacity.unwrap_or_default();
    let gpus = gpus_from_hello(h)?;
    Ok(core::NodeInfo {
        id: h.node_id.clone(),
        labels: h
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        capacity: core::Resources {
            cpu_millis: c.cpu_millis,
            memory_mib: c.memory_mib,
            // The inventory, when given, is the count: a task is never
            // promised a GPU the node cannot name.
            gpus: if gpus.is_empty() {
                c.gpus.min(core::limits::MAX_GPUS)
            } else {
                gpus.len() as u32
            },
        },
        max_tasks: h.max_tasks,
        agent_version: h.version.chars().take(64).collect(),
        gpus,
    })
}

pub fn eligibility_from_api(
    e: i32,
    drain_deadline_ms: u64,
    now_ms: u64,
) -> Result<core::Eligibility, Status> {
    match api::Eligibility::try_from(e) {
        Ok(api::Eligibility::Eligible) => Ok(core::Eligibility::Eligible),
        Ok(api::Eligibility::Cordoned) => Ok(core::Eligibility::Cordoned),
        Ok(api::Eligibility::Draining) => Ok(core::Eligibility::Draining {
            deadline_ms: now_ms.saturating_add(drain_deadline_ms),
        }),
        _ => Err(Status::invalid_argument(
            "eligibility: use ELIGIBILITY_ELIGIBLE, ELIGIBILITY_CORDONED or ELIGIBILITY_DRAINING",
        )),
    }
}
