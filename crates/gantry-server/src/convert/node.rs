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

pub fn node_to_api(n: &core::Node, usage: &core::Usage) -> api::Node {
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
    }
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
            gpus: c.gpus,
        },
        max_tasks: h.max_tasks,
        agent_version: h.version.chars().take(64).collect(),
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
