//! Nodes and attempts: sessions, placement, reports, loss and retries.

use std::collections::BTreeSet;

use super::{State, job_mut, pending_key};
use crate::command::{AttemptEvent, AttemptReport, NodeError, Outcome, Placement};
use crate::job::{
    AttemptRef, AttemptState, Exit, FailureClass, Job, JobSpec, JobState, Resources, TaskState,
};
use crate::node::{
    BLACKLIST_INFRA_FAILURES, BLACKLIST_TTL_MS, Blacklist, Eligibility, Health, Node, NodeInfo,
    NodeStatus, Session,
};
use crate::{Attempt, limits};

/// First retry delay; doubles per failure up to [`RETRY_BACKOFF_MAX_MS`].
pub const RETRY_BACKOFF_BASE_MS: u64 = 1_000;
pub const RETRY_BACKOFF_MAX_MS: u64 = 60_000;

fn backoff_ms(failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(16);
    (RETRY_BACKOFF_BASE_MS << shift).min(RETRY_BACKOFF_MAX_MS)
}

/// What a node has committed to live attempts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub resources: Resources,
    pub tasks: u32,
    /// The GPUs live attempts hold (node-local indices).
    pub gpu_ids: BTreeSet<u32>,
}

impl Usage {
    /// Whether `spec` fits on `node` on top of this usage: task slots, CPU,
    /// memory, and enough free GPUs of the model and memory it asks for. A
    /// capacity of 0 for a resource means the node offers none of it.
    pub fn fits(&self, node: &NodeInfo, spec: &JobSpec) -> bool {
        let cap = &node.capacity;
        let req = &spec.resources;
        (node.max_tasks == 0 || self.tasks < node.max_tasks)
            && self.resources.cpu_millis + req.cpu_millis <= cap.cpu_millis
            && self.resources.memory_mib + req.memory_mib <= cap.memory_mib
            && self.resources.gpus + req.gpus <= cap.gpus
            && self.pick_gpus(node, spec).is_some()
    }

    /// The GPUs `spec` would get on `node`: the lowest free indices that
    /// match its model and memory. `None` if too few are free. Apply and the
    /// scheduler both choose with this, so a plan and its commit agree.
    pub fn pick_gpus(&self, node: &NodeInfo, spec: &JobSpec) -> Option<Vec<u32>> {
        let want = spec.resources.gpus as usize;
        if want == 0 {
            return Some(Vec::new());
        }
        let model = spec.gpu_model.to_lowercase();
        let picked: Vec<u32> = node
            .gpu_list()
            .into_iter()
            .filter(|g| !self.gpu_ids.contains(&g.index))
            .filter(|g| model.is_empty() || g.model.to_lowercase().contains(&model))
            .filter(|g| g.memory_mib >= spec.gpu_min_memory_mib)
            .map(|g| g.index)
            .take(want)
            .collect();
        (picked.len() == want).then_some(picked)
    }

    /// Counts one more task holding `req` and the GPUs `gpus`.
    pub fn add(&mut self, req: &Resources, gpus: &[u32]) {
        self.resources.cpu_millis += req.cpu_millis;
        self.resources.memory_mib += req.memory_mib;
        self.resources.gpus += req.gpus;
        self.tasks += 1;
        self.gpu_ids.extend(gpus.iter().copied());
    }

    /// Undoes [`Usage::add`] for a task that ended.
    fn remove(&mut self, req: &Resources, gpus: &[u32]) {
        self.resources.cpu_millis = self.resources.cpu_millis.saturating_sub(req.cpu_millis);
        self.resources.memory_mib = self.resources.memory_mib.saturating_sub(req.memory_mib);
        self.resources.gpus = self.resources.gpus.saturating_sub(req.gpus);
        self.tasks = self.tasks.saturating_sub(1);
        for g in gpus {
            self.gpu_ids.remove(g);
        }
    }
}

/// A node's live attempts and the resources they hold, kept together so
/// placing a task costs the same however many already run there (the
/// usage used to be summed over the node's attempts on every placement).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Live {
    attempts: BTreeSet<AttemptRef>,
    usage: Usage,
}

impl Live {
    pub(super) fn insert(&mut self, r: AttemptRef, req: &Resources, gpus: &[u32]) {
        if self.attempts.insert(r) {
            self.usage.add(req, gpus);
        }
    }

    fn remove(&mut self, r: &AttemptRef, req: &Resources, gpus: &[u32]) {
        if self.attempts.remove(r) {
            self.usage.remove(req, gpus);
        }
    }
}

/// Job state from its tasks (a cancelled job stays cancelled).
fn refresh_job(job: &mut Job, index: u64, now_ms: u64) {
    job.updated_at_ms = now_ms;
    job.modify_index = index;
    if job.state == JobState::Cancelled {
        return;
    }
    let tasks = &job.tasks;
    job.state = if tasks.iter().all(|t| t.state.is_terminal()) {
        if tasks.iter().all(|t| t.state == TaskState::Succeeded) {
            JobState::Complete
        } else {
            JobState::Failed
        }
    } else if tasks
        .iter()
        .any(|t| matches!(t.state, TaskState::Assigned | TaskState::Running))
        || tasks.iter().any(|t| t.state.is_terminal())
    {
        JobState::Running
    } else {
        JobState::Pending
    };
}

impl State {
    pub(super) fn apply_session_opened(
        &mut self,
        now_ms: u64,
        info: &NodeInfo,
        session: &Session,
        health: Option<&Health>,
    ) -> Outcome {
        let node = self.nodes.entry(info.id.clone()).or_insert_with(|| Node {
            info: info.clone(),
            status: NodeStatus::Ready,
            eligibility: Eligibility::Eligible,
            session: None,
            registered_at_ms: now_ms,
            updated_at_ms: now_ms,
            health: Health::default(),
            reputation: Default::default(),
            blacklist: None,
            leaving: false,
        });
        // Back after a graceful shutdown: take work again.
        if node.leaving {
            node.leaving = false;
            node.eligibility = Eligibility::Eligible;
        }
        node.info = info.clone();
        node.status = NodeStatus::Ready;
        node.session = Some(session.clone());
        node.updated_at_ms = now_ms;
        if let Some(h) = health {
            node.health = h.clone();
        }
        Outcome::Node(Ok(()))
    }

    pub(super) fn apply_node_health(
        &mut self,
        now_ms: u64,
        node_id: &str,
        session_id: &str,
        health: &Health,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return Outcome::Node(Err(NodeError::NotFound(node_id.to_owned())));
        };
        // A report carried by a session that has since been replaced is old news.
        if node.session.as_ref().is_some_and(|s| s.id == session_id) {
            node.health = health.clone();
            node.updated_at_ms = now_ms;
        }
        Outcome::Node(Ok(()))
    }

    pub(super) fn apply_set_blacklist(
        &mut self,
        now_ms: u64,
        node_id: &str,
        blacklisted: bool,
        reason: &str,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return Outcome::Node(Err(NodeError::NotFound(node_id.to_owned())));
        };
        if blacklisted {
            node.blacklist = Some(Blacklist {
                reason: if reason.is_empty() {
                    "blacklisted by an operator".to_owned()
                } else {
                    reason.to_owned()
                },
                since_ms: now_ms,
                until_ms: 0,
            });
        } else {
            node.blacklist = None;
            node.reputation.clear_infra_failures(now_ms);
        }
        node.updated_at_ms = now_ms;
        Outcome::Node(Ok(()))
    }

    /// Whether one more node may be blacklisted automatically now.
    fn may_auto_blacklist(&self, now_ms: u64) -> bool {
        let present = self
            .nodes
            .values()
            .filter(|n| n.status != NodeStatus::Lost)
            .count();
        let automatic = self
            .nodes
            .values()
            .filter(|n| {
                n.blacklist
                    .as_ref()
                    .is_some_and(|b| b.until_ms != 0 && b.active_at(now_ms))
            })
            .count();
        automatic < (present / 3).max(1)
    }

    /// Feeds an attempt's outcome into its node's reputation: successes and
    /// infra-class failures count, nothing else does. Enough recent infra
    /// failures blacklist the node for [`BLACKLIST_TTL_MS`].
    fn record_outcome(
        &mut self,
        now_ms: u64,
        node_id: &str,
        infra: bool,
        message: &str,
        event: &str,
    ) {
        let rules = self.rules;
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        if !infra {
            node.reputation.record_success(now_ms);
            return;
        }
        // Rules 1: one event (an agent crash) is one failure, however many
        // attempts it took down.
        if rules >= 1 && !event.is_empty() {
            if node.reputation.last_infra_event == event {
                return;
            }
            node.reputation.last_infra_event = event.to_owned();
        }
        node.reputation.record_infra_failure(now_ms);
        let (infra_milli, _) = node.reputation.at(now_ms);
        let over = infra_milli >= BLACKLIST_INFRA_FAILURES * 1000 && !node.blacklisted_at(now_ms);
        // Like YARN's max-node-blacklist-ratio: at most a third of the nodes
        // (at least one) are out automatically at a time, so a fault that
        // hits every host (or a bug) cannot stop the whole cluster; the
        // record keeps counting, and an operator can still blacklist more.
        if !over || !self.may_auto_blacklist(now_ms) {
            return;
        }
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        let mut reason = format!(
            "{:.1} recent infra failures (threshold {BLACKLIST_INFRA_FAILURES}); last: {message}",
            infra_milli as f64 / 1000.0
        );
        limits::truncate_utf8(&mut reason, limits::MAX_REASON_BYTES);
        node.blacklist = Some(Blacklist {
            reason,
            since_ms: now_ms,
            until_ms: now_ms + BLACKLIST_TTL_MS,
        });
        node.updated_at_ms = now_ms;
    }

    pub(super) fn apply_session_closed(
        &mut self,
        now_ms: u64,
        node_id: &str,
        session_id: &str,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return Outcome::Node(Err(NodeError::NotFound(node_id.to_owned())));
        };
        if node.session.as_ref().is_some_and(|s| s.id == session_id) {
            node.session = None;
            node.updated_at_ms = now_ms;
        }
        Outcome::Node(Ok(()))
    }

    pub(super) fn apply_eligibility(
        &mut self,
        now_ms: u64,
        node_id: &str,
        eligibility: Eligibility,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return Outcome::Node(Err(NodeError::NotFound(node_id.to_owned())));
        };
        node.eligibility = eligibility;
        // An operator's choice stays after the agent reconnects.
        node.leaving = false;
        node.updated_at_ms = now_ms;
        Outcome::Node(Ok(()))
    }

    pub(super) fn apply_node_leaving(
        &mut self,
        now_ms: u64,
        node_id: &str,
        session_id: &str,
        deadline_ms: u64,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return Outcome::Node(Err(NodeError::NotFound(node_id.to_owned())));
        };
        // Only the current session speaks for the agent; an operator's
        // cordon or drain is left as it is.
        if node.session.as_ref().is_some_and(|s| s.id == session_id)
            && node.eligibility == Eligibility::Eligible
        {
            node.eligibility = Eligibility::Draining { deadline_ms };
            node.leaving = true;
            node.updated_at_ms = now_ms;
        }
        Outcome::Node(Ok(()))
    }

    pub(super) fn apply_drain_expired(
        &mut self,
        index: u64,
        now_ms: u64,
        node_id: &str,
    ) -> Outcome {
        let draining = self
            .nodes
            .get(node_id)
            .is_some_and(|n| matches!(n.eligibility, Eligibility::Draining { deadline_ms } if deadline_ms <= now_ms));
        if !draining {
            return Outcome::Node(Err(NodeError::NotFound(node_id.to_owned())));
        }
        let live: Vec<AttemptRef> = self.live_attempts(node_id).cloned().collect();
        for r in live {
            if let Some(job) = job_mut(&mut self.jobs, &mut self.changed, index, &r.job_id)
                && let Some(task) = job.tasks.get_mut(r.task as usize)
                && let Some(a) = task.attempts.last_mut().filter(|a| a.number == r.attempt)
            {
                a.cancel_requested = true;
                a.drained = true;
                job.modify_index = index;
                job.updated_at_ms = now_ms;
            }
        }
        Outcome::Node(Ok(()))
    }

    pub(super) fn apply_nodes_lost(
        &mut self,
        index: u64,
        now_ms: u64,
        node_ids: &[String],
    ) -> Outcome {
        let mut attempts_lost = 0;
        for id in node_ids {
            let Some(node) = self.nodes.get_mut(id) else {
                continue;
            };
            node.status = NodeStatus::Lost;
            node.session = None;
            node.updated_at_ms = now_ms;
            let live: Vec<AttemptRef> = self
                .live
                .remove(id)
                .unwrap_or_default()
                .attempts
                .into_iter()
                .collect();
            let message =
                format!("node {id} lost: no replica held its session for the grace period");
            // One loss is one infra failure for the node, however many attempts it took down.
            if !live.is_empty() {
                self.record_outcome(now_ms, id, true, &message, "");
            }
            for r in live {
                let exit = Exit {
                    failure: Some(FailureClass::Infra),
                    message: message.clone(),
                    ..Exit::default()
                };
                self.finish_attempt(index, now_ms, &r, AttemptState::Lost, exit);
                attempts_lost += 1;
            }
        }
        Outcome::NodesLost { attempts_lost }
    }

    pub(super) fn apply_assign(
        &mut self,
        index: u64,
        now_ms: u64,
        placements: &[Placement],
    ) -> Outcome {
        let (mut placed, mut skipped) = (0, 0);
        for p in placements {
            if self.place(index, now_ms, p) {
                placed += 1;
            } else {
                skipped += 1;
            }
        }
        Outcome::Assigned { placed, skipped }
    }

    /// Re-checks one placement against the current state and applies it.
    fn place(&mut self, index: u64, now_ms: u64, p: &Placement) -> bool {
        let Some(node) = self.nodes.get(&p.node_id) else {
            return false;
        };
        if !node.accepts_work(now_ms) {
            return false;
        }
        let usage = self.usage(&p.node_id);
        let Some(job) = self.jobs.get(&p.attempt.job_id) else {
            return false;
        };
        let Some(task) = job.tasks.get(p.attempt.task as usize) else {
            return false;
        };
        let valid = job.state != JobState::Cancelled
            && task.state == TaskState::Pending
            && task.not_before_ms <= now_ms
            && p.attempt.attempt as usize == task.attempts.len() + 1
            && usage.fits(&node.info, &job.spec)
            && job
                .spec
                .constraints
                .iter()
                .all(|(k, v)| node.info.labels.get(k) == Some(v));
        if !valid {
            return false;
        }
        let key = pending_key(job, task.index);
        let gpus = usage.pick_gpus(&node.info, &job.spec).unwrap_or_default();
        let Some(job) = job_mut(&mut self.jobs, &mut self.changed, index, &p.attempt.job_id) else {
            return false;
        };
        let Some(task) = job.tasks.get_mut(p.attempt.task as usize) else {
            return false;
        };
        task.attempts.push(Attempt {
            number: p.attempt.attempt,
            node_id: p.node_id.clone(),
            state: AttemptState::Assigned,
            assigned_at_ms: now_ms,
            started_at_ms: 0,
            finished_at_ms: 0,
            cancel_requested: false,
            drained: false,
            exit: Exit::default(),
            gpus,
            ready_at_ms: 0,
            diagnostics: String::new(),
        });
        task.state = TaskState::Assigned;
        refresh_job(job, index, now_ms);
        self.pending.remove(&key);
        let held = job
            .tasks
            .get(p.attempt.task as usize)
            .and_then(|t| t.attempts.last())
            .map_or(&[][..], |a| &a.gpus[..]);
        self.live.entry(p.node_id.clone()).or_default().insert(
            p.attempt.clone(),
            &job.spec.resources,
            held,
        );
        self.touch(index, &p.node_id);
        true
    }

    pub(super) fn apply_reports(
        &mut self,
        index: u64,
        now_ms: u64,
        reports: &[AttemptReport],
    ) -> Outcome {
        let (mut accepted, mut stale) = (0, 0);
        for r in reports {
            if self.accept_report(index, now_ms, r) {
                accepted += 1;
            } else {
                stale += 1;
                self.stale_reports += 1;
            }
        }
        Outcome::Reported { accepted, stale }
    }

    /// Fencing: only the current live attempt, only from its own node.
    fn accept_report(&mut self, index: u64, now_ms: u64, r: &AttemptReport) -> bool {
        let current = self
            .jobs
            .get(&r.attempt.job_id)
            .and_then(|j| j.tasks.get(r.attempt.task as usize))
            .and_then(|t| t.live_attempt())
            .is_some_and(|a| a.number == r.attempt.attempt && a.node_id == r.node_id);
        if !current {
            return false;
        }
        match &r.event {
            AttemptEvent::Started => {
                if let Some(job) =
                    job_mut(&mut self.jobs, &mut self.changed, index, &r.attempt.job_id)
                    && let Some(task) = job.tasks.get_mut(r.attempt.task as usize)
                    && let Some(a) = task.attempts.last_mut()
                    && a.state == AttemptState::Assigned
                {
                    a.state = AttemptState::Running;
                    a.started_at_ms = now_ms;
                    if task.state == TaskState::Assigned {
                        task.state = TaskState::Running;
                    }
                    refresh_job(job, index, now_ms);
                }
            }
            AttemptEvent::Ready { diagnostics } => {
                if let Some(job) =
                    job_mut(&mut self.jobs, &mut self.changed, index, &r.attempt.job_id)
                    && let Some(task) = job.tasks.get_mut(r.attempt.task as usize)
                    && let Some(a) = task.attempts.last_mut()
                    && a.ready_at_ms == 0
                {
                    a.ready_at_ms = now_ms;
                    a.diagnostics = diagnostics.clone();
                    limits::truncate_tail(&mut a.diagnostics);
                    job.modify_index = index;
                    job.updated_at_ms = now_ms;
                }
            }
            AttemptEvent::Finished(exit) => {
                let state = match exit.failure {
                    None => AttemptState::Succeeded,
                    Some(FailureClass::Cancelled) => AttemptState::Cancelled,
                    Some(_) => AttemptState::Failed,
                };
                let mut exit = exit.clone();
                limits::truncate_tail(&mut exit.stdout_tail);
                limits::truncate_tail(&mut exit.stderr_tail);
                limits::truncate_tail(&mut exit.diagnostics);
                match exit.failure {
                    None => self.record_outcome(now_ms, &r.node_id, false, "", ""),
                    Some(FailureClass::Infra) => self.record_outcome(
                        now_ms,
                        &r.node_id,
                        true,
                        &exit.message,
                        &exit.infra_event,
                    ),
                    // The job's own failures (and cancels, timeouts, warm-ups)
                    // say nothing about the host.
                    Some(_) => {}
                }
                self.finish_attempt(index, now_ms, &r.attempt, state, exit);
            }
        }
        true
    }

    /// Ends a live attempt and moves its task on: done, retried or failed.
    fn finish_attempt(
        &mut self,
        index: u64,
        now_ms: u64,
        r: &AttemptRef,
        state: AttemptState,
        exit: Exit,
    ) {
        let Some(job) = job_mut(&mut self.jobs, &mut self.changed, index, &r.job_id) else {
            return;
        };
        let max_attempts = job.spec.max_attempts;
        let Some(task) = job.tasks.get_mut(r.task as usize) else {
            return;
        };
        let Some(attempt) = task.attempts.last_mut().filter(|a| a.number == r.attempt) else {
            return;
        };
        self.touched.push(index, &attempt.node_id);
        if let Some(live) = self.live.get_mut(&attempt.node_id) {
            live.remove(r, &job.spec.resources, &attempt.gpus);
            // An index rebuilt from a snapshot has no empty entries: keep
            // none here either, so the two are equal.
            if live.attempts.is_empty() {
                self.live.remove(&attempt.node_id);
            }
        }
        let failure = exit.failure;
        let message = exit.message.clone();
        let drained = attempt.drained;
        attempt.state = state;
        attempt.finished_at_ms = now_ms;
        attempt.exit = exit;
        let mut requeue = false;
        if task.state == TaskState::Cancelled {
            // The job was cancelled while this attempt ran: it stays cancelled.
        } else if drained && failure.is_some() {
            // Stopped by a drain: run it elsewhere, no failure counted.
            requeue = true;
        } else {
            match failure {
                None => task.state = TaskState::Succeeded,
                Some(FailureClass::Cancelled) => task.state = TaskState::Cancelled,
                Some(FailureClass::Workload | FailureClass::Timeout | FailureClass::WarmUp) => {
                    task.workload_failures += 1;
                    if task.workload_failures < max_attempts {
                        requeue = true;
                        task.not_before_ms = now_ms + backoff_ms(task.workload_failures);
                    } else {
                        task.state = TaskState::Failed;
                        task.failure_reason = format!(
                            "{} of {max_attempts} attempts failed; last: {message}",
                            task.workload_failures
                        );
                    }
                }
                Some(FailureClass::Infra) => {
                    task.infra_failures += 1;
                    if task.infra_failures <= limits::MAX_INFRA_RETRIES {
                        requeue = true;
                        task.not_before_ms = now_ms + backoff_ms(task.infra_failures);
                    } else {
                        task.state = TaskState::Failed;
                        task.failure_reason = format!(
                            "{} host failures (limit {}); last: {message}",
                            task.infra_failures,
                            limits::MAX_INFRA_RETRIES
                        );
                    }
                }
            }
        }
        if requeue {
            task.state = TaskState::Pending;
        }
        let task_index = task.index;
        refresh_job(job, index, now_ms);
        if requeue {
            self.pending.insert(pending_key(job, task_index));
        }
    }

    /// Resources held by live attempts on `node_id`.
    pub fn usage(&self, node_id: &str) -> Usage {
        self.live
            .get(node_id)
            .map(|l| l.usage.clone())
            .unwrap_or_default()
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The ids of the nodes in `status`.
    pub fn node_ids(&self, status: NodeStatus) -> impl Iterator<Item = &str> {
        self.nodes
            .values()
            .filter(move |n| n.status == status)
            .map(Node::id)
    }

    /// Live attempts on a node (what it should be running).
    pub fn live_attempts(&self, node_id: &str) -> impl Iterator<Item = &AttemptRef> {
        self.live
            .get(node_id)
            .into_iter()
            .flat_map(|l| l.attempts.iter())
    }

    /// Pending tasks in scheduling order: priority, then submission order.
    pub fn pending_tasks(&self) -> impl Iterator<Item = (&Job, u32)> {
        self.pending.iter().filter_map(|(_, seq, task)| {
            let id = self.by_seq.get(seq)?;
            Some((self.job(id)?, *task))
        })
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Reports refused by fencing since the cluster began.
    pub fn stale_reports(&self) -> u64 {
        self.stale_reports
    }
}
