//! The replicated state and its deterministic `apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::command::{CancelError, Command, NewJob, Outcome, SubmitError, Submitted};
use crate::job::{AttemptRef, Job, JobId, JobSpec, JobState, Task, TaskState};
use crate::node::{Node, NodeId};

mod gc;
mod lifecycle;

pub use gc::{Due, Retention, finished_at};
pub use lifecycle::Usage;

fn pending_key_parts(priority: i32, seq: u64, task: u32) -> PendingKey {
    (-i64::from(priority), seq, task)
}

/// What every replica holds, built only by [`State::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Shared with snapshot copies: a job is copied only when it changes
    /// while a snapshot of it is being written (`Arc::make_mut`).
    jobs: BTreeMap<JobId, Arc<Job>>,
    nodes: BTreeMap<NodeId, Node>,
    next_seq: u64,
    /// Reports refused by fencing (wrong attempt or wrong node), replicated
    /// so every replica counts the same.
    stale_reports: u64,
    // Indexes derived from `jobs`; rebuilt on restore, never serialised.
    by_seq: BTreeMap<u64, JobId>,
    idempotency: BTreeMap<String, JobId>,
    /// Live (assigned or running) attempts per node, with what they hold.
    live: BTreeMap<NodeId, lifecycle::Live>,
    /// Pending tasks in scheduling order: (-priority, job seq, task index).
    pending: BTreeSet<PendingKey>,
    /// Which nodes recent entries changed, for the replicas' dispatchers.
    touched: Recent<TOUCHED_KEPT>,
    /// Which jobs recent entries changed, for watchers.
    changed: Recent<CHANGED_KEPT>,
    /// The latest time an applied entry carried: a new leader stamps no
    /// entry earlier than this.
    clock: Clock,
    /// Apply rules turned on by `EnableRules` (see [`RULES`]).
    rules: u32,
    /// Finished jobs garbage-collected so far, and when last.
    collected: u64,
    last_collection_ms: u64,
}

/// The newest apply rules this release knows:
/// 1. infra failures that carry the same event id count once for the node
///    (one agent crash that took six attempts down is one event).
/// 2. `CollectJobs` entries (job garbage collection): a release before it
///    cannot read them, so the leader proposes none until rules 2 are on.
pub const RULES: u32 = 2;

/// The latest entry time. Derived (after a restore, the latest time the
/// state holds), so left out of equality like the histories above.
#[derive(Clone, Copy, Debug, Default)]
struct Clock(u64);

impl PartialEq for Clock {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Clock {}

/// Recent (index, key) changes, newest last. `touched`: the nodes whose
/// dispatch view an entry changed (what they should run, their cancels,
/// session or status), so a replica wakes only those dispatchers. `changed`:
/// the jobs an entry changed, so a watcher finds them without reading every
/// job. Derived, never serialised, and left out of equality (two replicas
/// agree on state, not on this history).
#[derive(Clone, Debug, Default)]
struct Recent<const KEPT: usize> {
    log: std::collections::VecDeque<(u64, String)>,
    /// Changes at or below this index may be missing from `log`.
    floor: u64,
}

/// Node changes [`State::nodes_touched_after`] can answer for.
const TOUCHED_KEPT: usize = 65_536;
/// Job changes [`State::jobs_changed_after`] answers from its log (older
/// cursors read every job): 128 entries of 1,000 jobs, or many more small ones.
const CHANGED_KEPT: usize = 131_072;

impl<const KEPT: usize> Recent<KEPT> {
    fn push(&mut self, index: u64, key: &str) {
        if self
            .log
            .back()
            .is_some_and(|(i, k)| *i == index && k == key)
        {
            return;
        }
        self.log.push_back((index, key.to_owned()));
        if self.log.len() > KEPT
            && let Some((i, _)) = self.log.pop_front()
        {
            self.floor = self.floor.max(i);
        }
    }

    /// Everything may have changed up to `index`.
    fn forget(&mut self, index: u64) {
        self.log.clear();
        self.floor = self.floor.max(index);
    }

    /// Keys changed after `after`; `None` when that history is not kept.
    fn after(&self, after: u64) -> Option<BTreeSet<&str>> {
        if after < self.floor {
            return None;
        }
        Some(
            self.log
                .iter()
                .rev()
                .take_while(|(i, _)| *i > after)
                .map(|(_, k)| k.as_str())
                .collect(),
        )
    }
}

impl<const KEPT: usize> PartialEq for Recent<KEPT> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<const KEPT: usize> Eq for Recent<KEPT> {}

/// The job `id`, to be changed by the entry at `index`, which is noted in
/// `changed` for watchers (a job noted but left unchanged costs a lookup).
fn job_mut<'a>(
    jobs: &'a mut BTreeMap<JobId, Arc<Job>>,
    changed: &mut Recent<CHANGED_KEPT>,
    index: u64,
    id: &str,
) -> Option<&'a mut Job> {
    let job = jobs.get_mut(id)?;
    changed.push(index, id);
    Some(Arc::make_mut(job))
}

/// Scheduling order of a pending task: higher priority first, then older jobs.
pub(crate) type PendingKey = (i64, u64, u32);

fn pending_key(job: &Job, task: u32) -> PendingKey {
    pending_key_parts(job.spec.priority, job.seq, task)
}

/// Which jobs a listing wants.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Empty: all states.
    pub states: Vec<JobState>,
    pub name_prefix: String,
}

impl JobFilter {
    fn matches(&self, job: &Job) -> bool {
        (self.states.is_empty() || self.states.contains(&job.state))
            && job.spec.name.starts_with(&self.name_prefix)
    }
}

/// One page of a listing, in submission order.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub jobs: Vec<Job>,
    /// The `seq` to continue after, when there may be more.
    pub next_after: Option<u64>,
}

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot could not be encoded or decoded: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("snapshot format version {0} is not supported (this build reads {SNAPSHOT_VERSION})")]
    Version(u32),
}

const SNAPSHOT_VERSION: u32 = 1;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    next_seq: u64,
    stale_reports: u64,
    #[serde(skip_serializing_if = "is_zero")]
    rules: u32,
    #[serde(skip_serializing_if = "is_zero_u64")]
    collected: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    last_collection_ms: u64,
    jobs: Vec<&'a Job>,
    nodes: Vec<&'a Node>,
}

/// What a snapshot holds, taken by [`State::snapshot_copy`].
#[derive(Clone, Debug)]
pub struct SnapshotCopy {
    next_seq: u64,
    stale_reports: u64,
    rules: u32,
    collected: u64,
    last_collection_ms: u64,
    /// In id order; written in submission (seq) order.
    jobs: Vec<Arc<Job>>,
    nodes: Vec<Node>,
}

impl SnapshotCopy {
    /// The snapshot of the state as it was when copied ([`State::to_snapshot`]'s bytes).
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut jobs: Vec<&Job> = self.jobs.iter().map(|j| &**j).collect();
        jobs.sort_unstable_by_key(|j| j.seq);
        let out = SnapshotOut {
            version: SNAPSHOT_VERSION,
            next_seq: self.next_seq,
            stale_reports: self.stale_reports,
            rules: self.rules,
            collected: self.collected,
            last_collection_ms: self.last_collection_ms,
            jobs,
            nodes: self.nodes.iter().collect(),
        };
        Ok(serde_json::to_vec(&out)?)
    }
}

#[derive(Deserialize)]
struct SnapshotIn {
    version: u32,
    next_seq: u64,
    stale_reports: u64,
    #[serde(default)]
    rules: u32,
    #[serde(default)]
    collected: u64,
    #[serde(default)]
    last_collection_ms: u64,
    jobs: Vec<Job>,
    nodes: Vec<Node>,
}

// === impl State ===

impl State {
    /// Applies one committed command. Deterministic: the result depends only
    /// on the state, `index` and `cmd`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Outcome {
        self.clock.0 = self.clock.0.max(cmd.now_ms());
        match cmd {
            Command::NodeSessionOpened { node, .. } => self.touch(index, &node.id),
            Command::NodeSessionClosed { node_id, .. }
            | Command::SetEligibility { node_id, .. }
            | Command::DrainExpired { node_id, .. }
            | Command::NodeHealth { node_id, .. }
            | Command::SetBlacklist { node_id, .. }
            | Command::NodeLeaving { node_id, .. } => self.touch(index, node_id),
            Command::NodesLost { node_ids, .. } => {
                for id in node_ids {
                    self.touch(index, id);
                }
            }
            // These touch the nodes they change as they apply.
            Command::SubmitJobs { .. }
            | Command::CancelJob { .. }
            | Command::Assign { .. }
            | Command::ReportAttempts { .. }
            | Command::RestoreState { .. }
            | Command::EnableRules { .. }
            | Command::CollectJobs { .. } => {}
        }
        match cmd {
            Command::SubmitJobs { now_ms, jobs } => {
                Outcome::Submitted(self.apply_submit(index, *now_ms, jobs))
            }
            Command::CancelJob {
                now_ms,
                job_id,
                reason,
            } => Outcome::Cancelled(
                self.apply_cancel(index, *now_ms, job_id, reason)
                    .map(Box::new),
            ),
            Command::NodeSessionOpened {
                now_ms,
                node,
                session,
                health,
            } => self.apply_session_opened(*now_ms, node, session, health.as_ref()),
            Command::NodeSessionClosed {
                now_ms,
                node_id,
                session_id,
            } => self.apply_session_closed(*now_ms, node_id, session_id),
            Command::NodesLost { now_ms, node_ids } => {
                self.apply_nodes_lost(index, *now_ms, node_ids)
            }
            Command::Assign { now_ms, placements } => self.apply_assign(index, *now_ms, placements),
            Command::ReportAttempts { now_ms, reports } => {
                self.apply_reports(index, *now_ms, reports)
            }
            Command::SetEligibility {
                now_ms,
                node_id,
                eligibility,
            } => self.apply_eligibility(*now_ms, node_id, *eligibility),
            Command::DrainExpired { now_ms, node_id } => {
                self.apply_drain_expired(index, *now_ms, node_id)
            }
            Command::NodeHealth {
                now_ms,
                node_id,
                session_id,
                health,
            } => self.apply_node_health(*now_ms, node_id, session_id, health),
            Command::SetBlacklist {
                now_ms,
                node_id,
                blacklisted,
                reason,
            } => self.apply_set_blacklist(*now_ms, node_id, *blacklisted, reason),
            Command::NodeLeaving {
                now_ms,
                node_id,
                session_id,
                deadline_ms,
            } => self.apply_node_leaving(*now_ms, node_id, session_id, *deadline_ms),
            Command::RestoreState { now_ms, snapshot } => {
                Outcome::Restored(self.apply_restore(index, *now_ms, snapshot))
            }
            Command::EnableRules { rules, .. } => {
                self.rules = self.rules.max(*rules);
                Outcome::None
            }
            Command::CollectJobs {
                now_ms,
                retention,
                job_ids,
            } => Outcome::Collected {
                collected: self.apply_collect(index, *now_ms, retention, job_ids),
            },
        }
    }

    /// The apply rules in force (0: the first release's).
    pub fn rules(&self) -> u32 {
        self.rules
    }

    fn apply_submit(
        &mut self,
        index: u64,
        now_ms: u64,
        jobs: &[NewJob],
    ) -> Result<Vec<Submitted>, SubmitError> {
        // Decide everything first so that a rejected batch changes nothing.
        let mut results = Vec::with_capacity(jobs.len());
        let mut batch_keys: BTreeMap<&str, (&JobId, JobSpec)> = BTreeMap::new();
        let mut batch_ids: BTreeSet<&str> = BTreeSet::new();
        let mut to_insert = Vec::with_capacity(jobs.len());
        for (position, new) in jobs.iter().enumerate() {
            let spec = new.spec.clone().normalized();
            let key = new.spec.idempotency_key.as_str();
            if !key.is_empty() {
                let earlier = self
                    .idempotency
                    .get(key)
                    .and_then(|id| self.jobs.get(id))
                    .map(|j| (&j.id, j.spec.clone()))
                    .or_else(|| batch_keys.get(key).cloned());
                if let Some((existing, existing_spec)) = earlier {
                    if existing_spec != spec {
                        return Err(SubmitError::IdempotencyConflict {
                            position,
                            key: key.to_owned(),
                            existing: existing.clone(),
                        });
                    }
                    results.push(Submitted {
                        job_id: existing.clone(),
                        existing: true,
                    });
                    continue;
                }
                batch_keys.insert(key, (&new.id, spec.clone()));
            }
            // The same id with the same spec is a replay of this very command
            // (a forwarded write retried after a lost reply): answer as before.
            // One lookup in the job index per job: it is the largest map.
            let same_id = self.jobs.get(&new.id);
            if let Some(existing) = same_id.filter(|j| j.spec == spec) {
                results.push(Submitted {
                    job_id: existing.id.clone(),
                    existing: true,
                });
                continue;
            }
            if same_id.is_some() || !batch_ids.insert(&new.id) {
                return Err(SubmitError::DuplicateId {
                    position,
                    id: new.id.clone(),
                });
            }
            results.push(Submitted {
                job_id: new.id.clone(),
                existing: false,
            });
            to_insert.push((new.id.clone(), spec, new.trace_parent.clone()));
        }
        for (id, spec, trace_parent) in to_insert {
            let seq = self.next_seq;
            self.next_seq += 1;
            let tasks = (0..spec.count)
                .map(|index| Task {
                    index,
                    state: TaskState::Pending,
                    attempts: Vec::new(),
                    not_before_ms: 0,
                    workload_failures: 0,
                    infra_failures: 0,
                    failure_reason: String::new(),
                })
                .collect();
            let job = Job {
                id: id.clone(),
                seq,
                spec,
                state: JobState::Pending,
                submitted_at_ms: now_ms,
                updated_at_ms: now_ms,
                create_index: index,
                modify_index: index,
                cancel_reason: String::new(),
                tasks,
                trace_parent,
            };
            self.index_job(&job);
            self.changed.push(index, &id);
            self.jobs.insert(id, Arc::new(job));
        }
        Ok(results)
    }

    fn apply_cancel(
        &mut self,
        index: u64,
        now_ms: u64,
        id: &str,
        reason: &str,
    ) -> Result<Job, CancelError> {
        let job = job_mut(&mut self.jobs, &mut self.changed, index, id)
            .ok_or_else(|| CancelError::NotFound(id.to_owned()))?;
        let mut nodes = Vec::new();
        // Cancelling a finished job is a no-op, like Nomad's stop on a dead job.
        if !job.state.is_terminal() {
            job.state = JobState::Cancelled;
            job.updated_at_ms = now_ms;
            job.modify_index = index;
            job.cancel_reason = reason.to_owned();
            for task in job.tasks.iter_mut().filter(|t| !t.state.is_terminal()) {
                if task.state == TaskState::Pending {
                    self.pending
                        .remove(&pending_key_parts(job.spec.priority, job.seq, task.index));
                }
                task.state = TaskState::Cancelled;
                // A live attempt stays live (and keeps its resources) until
                // its node reports it killed.
                if let Some(a) = task.attempts.last_mut().filter(|a| a.state.is_live()) {
                    a.cancel_requested = true;
                    nodes.push(a.node_id.clone());
                }
            }
        }
        let job = job.clone();
        for n in nodes {
            self.touch(index, &n);
        }
        Ok(job)
    }

    /// Replaces everything with a saved state. An undecodable snapshot
    /// changes nothing (the proposer checks it first; this is the backstop).
    fn apply_restore(
        &mut self,
        index: u64,
        now_ms: u64,
        snapshot: &str,
    ) -> Result<crate::command::RestoreSummary, String> {
        let mut restored = State::from_snapshot(snapshot.as_bytes()).map_err(|e| e.to_string())?;
        // The sessions belonged to the old cluster's replicas: agents open
        // new ones, or their nodes are found lost after the grace period.
        for node in restored.nodes.values_mut() {
            node.session = None;
            node.updated_at_ms = now_ms;
        }
        // Watchers resume by index: every job is news as of this entry.
        for job in restored.jobs.values_mut().map(Arc::make_mut) {
            job.modify_index = index;
        }
        let summary = crate::command::RestoreSummary {
            jobs: restored.jobs.len() as u64,
            nodes: restored.nodes.len() as u64,
        };
        *self = restored;
        self.touch_all(index);
        Ok(summary)
    }

    /// Records that the entry at `index` changed what `node_id` should run.
    pub(crate) fn touch(&mut self, index: u64, node_id: &str) {
        self.touched.push(index, node_id);
    }

    /// Everything may have changed up to `index` (a snapshot was installed).
    pub fn touch_all(&mut self, index: u64) {
        self.touched.forget(index);
        self.changed.forget(index);
    }

    /// Nodes that entries after `after` changed; `None` when that history
    /// is no longer kept (every node may have changed).
    pub fn nodes_touched_after(&self, after: u64) -> Option<BTreeSet<&str>> {
        self.touched.after(after)
    }

    /// Adds `job` to the derived indexes.
    fn index_job(&mut self, job: &Job) {
        self.by_seq.insert(job.seq, job.id.clone());
        if !job.spec.idempotency_key.is_empty() {
            self.idempotency
                .insert(job.spec.idempotency_key.clone(), job.id.clone());
        }
        for task in &job.tasks {
            if task.state == TaskState::Pending {
                self.pending.insert(pending_key(job, task.index));
            }
            if let Some(a) = task.live_attempt() {
                let r = AttemptRef {
                    job_id: job.id.clone(),
                    task: task.index,
                    attempt: a.number,
                };
                self.live.entry(a.node_id.clone()).or_default().insert(
                    r,
                    &job.spec.resources,
                    &a.gpus,
                );
            }
        }
    }

    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id).map(|j| &**j)
    }

    /// Jobs changed by entries after `index` (in id order). From the log of
    /// recent changes when it reaches back that far, else by reading every
    /// job: a watcher used to read every job on every entry applied.
    pub fn jobs_changed_after(&self, index: u64) -> Vec<&Job> {
        match self.changed.after(index) {
            Some(ids) => ids
                .into_iter()
                .filter_map(|id| self.job(id))
                .filter(|j| j.modify_index > index)
                .collect(),
            None => self.jobs_changed_after_by_scan(index),
        }
    }

    fn jobs_changed_after_by_scan(&self, index: u64) -> Vec<&Job> {
        self.jobs().filter(|j| j.modify_index > index).collect()
    }

    /// Every job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(|j| &**j)
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Up to `limit` jobs matching `filter`, with `seq` greater than `after`.
    pub fn list_jobs(&self, filter: &JobFilter, after: Option<u64>, limit: usize) -> Page {
        let start = after.map_or(0, |s| s.saturating_add(1));
        let mut jobs = Vec::new();
        let mut next_after = None;
        for id in self.by_seq.range(start..).map(|(_, id)| id) {
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            if !filter.matches(job) {
                continue;
            }
            if jobs.len() == limit {
                next_after = jobs.last().map(|j: &Job| j.seq);
                break;
            }
            jobs.push(Job::clone(job));
        }
        Page { jobs, next_after }
    }

    /// Serialises the state for a Raft snapshot.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        self.snapshot_copy().encode()
    }

    /// A copy of what [`State::to_snapshot`] writes (the derived indexes
    /// are left behind), so that a replica can encode a snapshot while it
    /// goes on applying entries. Jobs are shared, not copied: taking the
    /// copy of 150,000 jobs takes milliseconds, where copying them took
    /// 100-200 ms and encoding them several times that, all with the state
    /// locked.
    pub fn snapshot_copy(&self) -> SnapshotCopy {
        SnapshotCopy {
            next_seq: self.next_seq,
            stale_reports: self.stale_reports,
            rules: self.rules,
            collected: self.collected,
            last_collection_ms: self.last_collection_ms,
            jobs: self.jobs.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
        }
    }

    /// Rebuilds a state from [`State::to_snapshot`]'s bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let snap: SnapshotIn = serde_json::from_slice(bytes)?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(snap.version));
        }
        let mut state = State {
            next_seq: snap.next_seq,
            stale_reports: snap.stale_reports,
            rules: snap.rules,
            collected: snap.collected,
            last_collection_ms: snap.last_collection_ms,
            nodes: snap
                .nodes
                .into_iter()
                .map(|n| (n.info.id.clone(), n))
                .collect(),
            ..State::default()
        };
        for job in snap.jobs {
            state.index_job(&job);
            state.jobs.insert(job.id.clone(), Arc::new(job));
        }
        // Changes up to the snapshot are in it, not in the log of changes.
        let newest = state.jobs().map(|j| j.modify_index).max().unwrap_or(0);
        state.changed.forget(newest);
        let latest = state.jobs().map(|j| j.updated_at_ms);
        let latest = latest
            .chain(state.nodes().map(|n| n.updated_at_ms))
            .chain([state.last_collection_ms])
            .max();
        state.clock = Clock(latest.unwrap_or(0));
        Ok(state)
    }

    /// The latest time an applied entry carried (or, after a restore, the
    /// latest time the state holds).
    pub fn clock_ms(&self) -> u64 {
        self.clock.0
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
