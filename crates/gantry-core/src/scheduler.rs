//! The scheduler: a pure function from the state to one round of placements.
//! It reads a snapshot of the state and returns a plan; it never writes. The
//! leader proposes the plan as one `Command::Assign`, and apply re-checks
//! every placement.

use std::collections::BTreeMap;

use crate::command::Placement;
use crate::job::{AttemptRef, JobSpec};
use crate::node::Node;
use crate::state::{State, Usage};

/// Places pending tasks whose backoff has passed, highest priority first
/// (then oldest job), at most `limit` of them.
///
/// Feasible nodes are ready, connected, eligible, carry every label the job
/// requires and have room (CPU, memory, GPUs, task slots). Among them, the
/// default ranking bin-packs (the fullest node that fits, leaving whole
/// nodes free for big tasks); a job with `spread` goes to the emptiest.
/// Ties go to the lowest node id, so the plan is deterministic.
pub fn schedule(state: &State, now_ms: u64, limit: usize) -> Vec<Placement> {
    let mut nodes: BTreeMap<&str, (&Node, Usage)> = state
        .nodes()
        .filter(|n| n.accepts_work())
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
        let Some(node_id) = best_node(&nodes, &job.spec) else {
            continue;
        };
        if let Some((_, usage)) = nodes.get_mut(node_id) {
            usage.add(&job.spec.resources);
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

fn feasible(node: &Node, usage: &Usage, spec: &JobSpec) -> bool {
    spec.constraints
        .iter()
        .all(|(k, v)| node.info.labels.get(k) == Some(v))
        && usage.fits(&node.info, &spec.resources)
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

fn best_node<'a>(nodes: &BTreeMap<&'a str, (&Node, Usage)>, spec: &JobSpec) -> Option<&'a str> {
    let mut best: Option<(&'a str, f64)> = None;
    for (id, (node, usage)) in nodes {
        if !feasible(node, usage, spec) {
            continue;
        }
        let score = fullness(node, usage, spec);
        let better = match best {
            None => true,
            Some((_, b)) if spec.spread => score < b,
            Some((_, b)) => score > b,
        };
        if better {
            best = Some((id, score));
        }
    }
    best.map(|(id, _)| id)
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
