//! The scheduler: a pure function from the state to one round of placements.
//! It reads a snapshot of the state and returns a plan; it never writes. The
//! leader proposes the plan as one `Command::Assign`, and apply re-checks
//! every placement.

use std::collections::BTreeMap;

use crate::command::Placement;
use crate::job::{AttemptRef, JobSpec, PlacementPolicy};
use crate::node::Node;
use crate::state::{State, Usage};

/// Places pending tasks whose backoff has passed, highest priority first
/// (then oldest job), at most `limit` of them, with `balanced` as the
/// cluster's default placement policy.
pub fn schedule(state: &State, now_ms: u64, limit: usize) -> Vec<Placement> {
    schedule_with(state, now_ms, limit, PlacementPolicy::Balanced)
}

/// [`schedule`] with the cluster's default policy for jobs that name none.
///
/// Feasible nodes are ready, connected, eligible, not blacklisted, carry
/// every label the job requires and have room (CPU, memory, task slots, and
/// free GPUs of the model and memory asked for); the job's policy narrows
/// them further (`balanced`: healthy ones; `strict`: healthy ones with a
/// proven success record; `aggressive`: no more). Among them the ranking
/// bin-packs (the fullest node that fits, leaving whole nodes free for big
/// tasks; a job with `spread` goes to the emptiest), weighed with the node's
/// health score and its share of successes. Ties go to the lowest node id,
/// so the plan is deterministic.
pub fn schedule_with(
    state: &State,
    now_ms: u64,
    limit: usize,
    default_policy: PlacementPolicy,
) -> Vec<Placement> {
    let mut nodes: BTreeMap<&str, (&Node, Usage)> = state
        .nodes()
        .filter(|n| n.accepts_work(now_ms))
        .map(|n| (n.id(), (n, state.usage(n.id()))))
        .collect();
    let mut placements = Vec::new();
    if nodes.is_empty() {
        return placements;
    }
    for (job, task_index) in state.pending_tasks() {
        if placements.len() >= limit {
            break;
        }
        let Some(task) = job.tasks.get(task_index as usize) else {
            continue;
        };
        if task.not_before_ms > now_ms {
            continue;
        }
        let policy = match job.spec.placement {
            PlacementPolicy::ClusterDefault => default_policy,
            p => p,
        };
        let Some(node_id) = best_node(&nodes, &job.spec, policy, now_ms) else {
            continue;
        };
        if let Some((node, usage)) = nodes.get_mut(node_id) {
            let gpus = usage.pick_gpus(&node.info, &job.spec).unwrap_or_default();
            usage.add(&job.spec.resources, &gpus);
        }
        placements.push(Placement {
            attempt: AttemptRef {
                job_id: job.id.clone(),
                task: task_index,
                attempt: task.attempts.len() as u32 + 1,
            },
            node_id: node_id.to_owned(),
        });
    }
    placements
}

/// Whether the policy lets `node` take new work at all.
fn admits(policy: PlacementPolicy, node: &Node, now_ms: u64) -> bool {
    match policy {
        PlacementPolicy::Aggressive => true,
        PlacementPolicy::Balanced | PlacementPolicy::ClusterDefault => node.health.healthy,
        PlacementPolicy::Strict => node.health.healthy && node.reputation.is_proven(now_ms),
    }
}

fn feasible(node: &Node, usage: &Usage, spec: &JobSpec) -> bool {
    spec.constraints
        .iter()
        .all(|(k, v)| node.info.labels.get(k) == Some(v))
        && usage.fits(&node.info, spec)
}

/// How full a node would be after taking `spec`, 0 (empty) to 1 (full),
/// averaged over the resources it offers and its task slots.
fn fullness(node: &Node, usage: &Usage, spec: &JobSpec) -> f64 {
    let cap = &node.info.capacity;
    let r = &spec.resources;
    let mut parts = Vec::with_capacity(4);
    let mut frac = |used: u64, want: u64, cap: u64| {
        if cap > 0 {
            parts.push((used + want) as f64 / cap as f64);
        }
    };
    frac(usage.resources.cpu_millis, r.cpu_millis, cap.cpu_millis);
    frac(usage.resources.memory_mib, r.memory_mib, cap.memory_mib);
    frac(
        u64::from(usage.resources.gpus),
        u64::from(r.gpus),
        u64::from(cap.gpus),
    );
    frac(u64::from(usage.tasks), 1, u64::from(node.info.max_tasks));
    if parts.is_empty() {
        0.0
    } else {
        parts.iter().sum::<f64>() / parts.len() as f64
    }
}

/// Weights of the ranking: packing (or spreading) first, then health and
/// the node's record. Equal health and records leave the packing order as is.
const PACKING_WEIGHT: f64 = 0.6;
const HEALTH_WEIGHT: f64 = 0.2;
const RECORD_WEIGHT: f64 = 0.2;

/// A node's rank for `spec`; higher is better.
pub fn rank(node: &Node, usage: &Usage, spec: &JobSpec, now_ms: u64) -> f64 {
    let full = fullness(node, usage, spec);
    let packing = if spec.spread { 1.0 - full } else { full };
    PACKING_WEIGHT * packing
        + HEALTH_WEIGHT * f64::from(node.health.score.min(100)) / 100.0
        + RECORD_WEIGHT * node.reputation.success_share(now_ms)
}

fn best_node<'a>(
    nodes: &BTreeMap<&'a str, (&Node, Usage)>,
    spec: &JobSpec,
    policy: PlacementPolicy,
    now_ms: u64,
) -> Option<&'a str> {
    let mut best: Option<(&'a str, f64)> = None;
    for (id, (node, usage)) in nodes {
        if !admits(policy, node, now_ms) || !feasible(node, usage, spec) {
            continue;
        }
        let score = rank(node, usage, spec, now_ms);
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((id, score));
        }
    }
    best.map(|(id, _)| id)
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
