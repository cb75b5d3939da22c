//! The scheduler: a pure function from the state to one round of placements.
//! It reads a snapshot of the state and returns a plan; it never writes. The
//! leader proposes the plan as one `Command::Assign`, and apply re-checks
//! every placement.

use std::collections::{BTreeMap, BinaryHeap};

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
    schedule_round(state, now_ms, limit, default_policy).placements
}

/// One round's plan, and how many pending tasks it looked at to make it.
#[derive(Debug, Default)]
pub struct Round {
    pub placements: Vec<Placement>,
    pub examined: usize,
}

/// [`schedule_with`], also counting the pending tasks the round read: a
/// round's cost grows with that number, so the leader paces its rounds by it.
pub fn schedule_round(
    state: &State,
    now_ms: u64,
    limit: usize,
    default_policy: PlacementPolicy,
) -> Round {
    let mut nodes: BTreeMap<&str, Slot<'_>> = state
        .nodes()
        .filter(|n| n.accepts_work(now_ms))
        .map(|n| {
            let slot = Slot {
                node: n,
                usage: state.usage(n.id()),
                version: 0,
            };
            (n.id(), slot)
        })
        .collect();
    let mut placements = Vec::new();
    if nodes.is_empty() {
        return Round::default();
    }
    // Every task takes a task slot: once no node has one left, nothing else
    // can be placed, and the rest of the pending tasks need not be looked at
    // (a full cluster with a long queue would otherwise read the whole queue
    // each round, for every task that finishes).
    let mut nodes_with_slots = nodes
        .values()
        .filter(|s| has_slot(s.node, &s.usage))
        .count();
    let mut examined = 0;
    if nodes_with_slots == 0 {
        return Round {
            placements,
            examined,
        };
    }
    // One ranking per shape of task, built when the shape first comes up and
    // kept current as nodes fill: a placement changes only its own node, so
    // the next task of a shape costs a heap operation, not a scan of every
    // node, and a shape that fits nowhere costs nothing after its first try.
    let mut queues: BTreeMap<Shape<'_>, Queue<'_>> = BTreeMap::new();
    for (job, task_index) in state.pending_tasks() {
        if placements.len() >= limit || nodes_with_slots == 0 {
            break;
        }
        examined += 1;
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
        let queue = queues
            .entry(shape(&job.spec, policy))
            .or_insert_with(|| Queue::build(&nodes, &job.spec, policy, now_ms));
        let Some(node_id) = queue.best(&nodes) else {
            continue;
        };
        let Some(slot) = nodes.get_mut(node_id) else {
            continue;
        };
        let gpus = slot
            .usage
            .pick_gpus(&slot.node.info, &job.spec)
            .unwrap_or_default();
        slot.usage.add(&job.spec.resources, &gpus);
        slot.version += 1;
        if !has_slot(slot.node, &slot.usage) {
            nodes_with_slots -= 1;
        }
        for q in queues.values_mut() {
            q.refresh(node_id, slot, now_ms);
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
    Round {
        placements,
        examined,
    }
}

/// A node as the round sees it: what it holds so far, and how many times
/// this round has placed on it (so a ranking can tell a stale entry).
struct Slot<'a> {
    node: &'a Node,
    usage: Usage,
    version: u32,
}

/// A node's rank for one shape, as of one version of the node.
struct Ranked<'a> {
    score: f64,
    id: &'a str,
    version: u32,
}

// Highest score first; on a tie the lowest node id, as a scan in id order
// keeping the first strict maximum would pick.
impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.id.cmp(self.id))
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

/// The feasible nodes for one shape, best first. Every feasible node has
/// exactly one entry with its current version; entries of older versions
/// are dropped when they surface. Nodes only fill up during a round, so a
/// node that stops fitting never fits again and needs no entry.
struct Queue<'a> {
    spec: &'a JobSpec,
    policy: PlacementPolicy,
    heap: BinaryHeap<Ranked<'a>>,
}

impl<'a> Queue<'a> {
    fn build(
        nodes: &BTreeMap<&'a str, Slot<'a>>,
        spec: &'a JobSpec,
        policy: PlacementPolicy,
        now_ms: u64,
    ) -> Self {
        let heap = nodes
            .iter()
            .filter(|(_, s)| admits(policy, s.node, now_ms) && feasible(s.node, &s.usage, spec))
            .map(|(id, s)| Ranked {
                score: rank(s.node, &s.usage, spec, now_ms),
                id,
                version: s.version,
            })
            .collect();
        Self { spec, policy, heap }
    }

    /// The best node now, if any fits.
    fn best(&mut self, nodes: &BTreeMap<&'a str, Slot<'a>>) -> Option<&'a str> {
        while let Some(top) = self.heap.peek() {
            if nodes.get(top.id).is_some_and(|s| s.version == top.version) {
                return Some(top.id);
            }
            self.heap.pop();
        }
        None
    }

    /// `id` was just placed on: rank it again, if it still fits.
    fn refresh(&mut self, id: &'a str, slot: &Slot<'a>, now_ms: u64) {
        if admits(self.policy, slot.node, now_ms) && feasible(slot.node, &slot.usage, self.spec) {
            self.heap.push(Ranked {
                score: rank(slot.node, &slot.usage, self.spec, now_ms),
                id,
                version: slot.version,
            });
        }
    }
}

/// What decides whether a task fits a node and how nodes rank for it.
type Shape<'a> = (
    u64,
    u64,
    u32,
    &'a str,
    u64,
    &'a BTreeMap<String, String>,
    PlacementPolicy,
    bool,
);

fn shape(spec: &JobSpec, policy: PlacementPolicy) -> Shape<'_> {
    let r = &spec.resources;
    (
        r.cpu_millis,
        r.memory_mib,
        r.gpus,
        &spec.gpu_model,
        spec.gpu_min_memory_mib,
        &spec.constraints,
        policy,
        spec.spread,
    )
}

/// Whether `node` has a task slot free (a node without a slot limit always has).
fn has_slot(node: &Node, usage: &Usage) -> bool {
    node.info.max_tasks == 0 || usage.tasks < node.info.max_tasks
}

/// Whether the policy lets `node` take new work at all.
fn admits(policy: PlacementPolicy, node: &Node, now_ms: u64) -> bool {
    match policy {
        PlacementPolicy::Aggressive => true,
        PlacementPolicy::Balanced | PlacementPolicy::ClusterDefault => node.health.healthy,
        PlacementPolicy::Strict => {
            node.health.healthy && node.reputation.is_proven(now_ms) && enforces_limits(node)
        }
    }
}

/// The agent's advisory check of that name fails where tasks are not held
/// to their limits (no usable cgroups).
pub const LIMITS_CHECK: &str = "limits";

fn enforces_limits(node: &Node) -> bool {
    !node.health.failing.iter().any(|c| c.name == LIMITS_CHECK)
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
    // Summed in place: this runs for every node for every task placed.
    let (mut sum, mut parts) = (0.0, 0u32);
    let mut frac = |used: u64, want: u64, cap: u64| {
        if cap > 0 {
            sum += (used + want) as f64 / cap as f64;
            parts += 1;
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
    if parts == 0 {
        0.0
    } else {
        sum / f64::from(parts)
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

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
