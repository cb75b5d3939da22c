//! The Raft log payload and what applying it produced.
//!
//! `Command` is append-only: a variant, once released, is never removed or
//! changed in meaning, because old log entries and snapshots must still
//! apply. New behaviour gets a new variant.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::job::{AttemptRef, Exit, Job, JobId, JobSpec};
use crate::node::{Eligibility, Health, NodeId, NodeInfo, Session};

/// One job in a submission, with the id the proposer chose for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    pub id: JobId,
    pub spec: JobSpec,
    /// The W3C `traceparent` of the request that submitted it ("" if none):
    /// the job's life is one trace under it. Added later: older entries
    /// decode with none, and none is not written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_parent: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A batch of submissions: one log entry, applied atomically.
    SubmitJobs { now_ms: u64, jobs: Vec<NewJob> },
    CancelJob {
        now_ms: u64,
        job_id: JobId,
        reason: String,
    },
    /// An agent's stream was opened on `session.replica`: registers or
    /// updates the node, and marks it ready.
    NodeSessionOpened {
        now_ms: u64,
        node: NodeInfo,
        session: Session,
        /// The agent's first health report (none from older agents: the
        /// node keeps what it had). Added later.
        #[serde(default)]
        health: Option<Health>,
    },
    /// The stream `session_id` ended (ignored if a newer session replaced it).
    NodeSessionClosed {
        now_ms: u64,
        node_id: NodeId,
        session_id: String,
    },
    /// The leader saw no replica hold these nodes' sessions for the grace
    /// period: their live attempts are lost and retried.
    NodesLost { now_ms: u64, node_ids: Vec<NodeId> },
    /// One scheduling round. Each placement carries the fencing token it
    /// creates; apply re-checks each and skips those no longer valid.
    Assign {
        now_ms: u64,
        placements: Vec<Placement>,
    },
    /// Agent reports (started, finished), batched.
    ReportAttempts {
        now_ms: u64,
        reports: Vec<AttemptReport>,
    },
    SetEligibility {
        now_ms: u64,
        node_id: NodeId,
        eligibility: Eligibility,
    },
    /// A draining node's deadline passed: its live attempts are stopped and
    /// their tasks rescheduled.
    DrainExpired { now_ms: u64, node_id: NodeId },
    /// The node's health verdict changed (proposed by the replica holding
    /// `session_id`; ignored for any other session).
    NodeHealth {
        now_ms: u64,
        node_id: NodeId,
        session_id: String,
        health: Health,
    },
    /// The node's agent is shutting down gracefully (proposed by the replica
    /// holding `session_id`): the node drains until `deadline_ms`, and is
    /// eligible again when its agent next connects.
    NodeLeaving {
        now_ms: u64,
        node_id: NodeId,
        session_id: String,
        deadline_ms: u64,
    },
    /// Replaces the whole state with a saved snapshot (the text of
    /// [`crate::State::to_snapshot`]): an operator's restore. Nodes lose their
    /// sessions; every job counts as changed by this entry.
    RestoreState { now_ms: u64, snapshot: String },
    /// An operator blacklisted (`blacklisted`) or whitelisted the node.
    /// Whitelisting also forgets its infra failures.
    SetBlacklist {
        now_ms: u64,
        node_id: NodeId,
        blacklisted: bool,
        reason: String,
    },
    /// Turns on apply rules up to `rules` (see `state::RULES`). The leader
    /// proposes it once every voter runs a release that knows them, so
    /// replicas of two releases never apply one entry two ways.
    EnableRules { now_ms: u64, rules: u32 },
    /// Removes those of `job_ids` that are finished and past their
    /// retention at this entry's time (checked again at apply; apply rules 2).
    CollectJobs {
        now_ms: u64,
        retention: crate::state::Retention,
        job_ids: Vec<JobId>,
    },
}

impl Command {
    /// When the proposer made the entry (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        match self {
            Self::SubmitJobs { now_ms, .. }
            | Self::CancelJob { now_ms, .. }
            | Self::NodeSessionOpened { now_ms, .. }
            | Self::NodeSessionClosed { now_ms, .. }
            | Self::NodesLost { now_ms, .. }
            | Self::Assign { now_ms, .. }
            | Self::ReportAttempts { now_ms, .. }
            | Self::SetEligibility { now_ms, .. }
            | Self::DrainExpired { now_ms, .. }
            | Self::NodeHealth { now_ms, .. }
            | Self::NodeLeaving { now_ms, .. }
            | Self::RestoreState { now_ms, .. }
            | Self::SetBlacklist { now_ms, .. }
            | Self::EnableRules { now_ms, .. }
            | Self::CollectJobs { now_ms, .. } => *now_ms,
        }
    }

    /// Stamps the entry with `now_ms`, the leader's time at proposal: the
    /// deadlines its proposer derived from its own clock (a drain's end, a
    /// session's opening) move by as much, so one replica's skewed clock
    /// never reaches the state.
    pub fn restamp(&mut self, now_ms: u64) {
        let old = self.now_ms();
        let shift = |t: &mut u64| {
            if *t != 0 {
                *t = if now_ms >= old {
                    t.saturating_add(now_ms - old)
                } else {
                    t.saturating_sub(old - now_ms)
                };
            }
        };
        match self {
            Self::NodeSessionOpened { session, .. } => shift(&mut session.opened_at_ms),
            Self::NodeLeaving { deadline_ms, .. } => shift(deadline_ms),
            Self::SetEligibility {
                eligibility: Eligibility::Draining { deadline_ms },
                ..
            } => shift(deadline_ms),
            _ => {}
        }
        match self {
            Self::SubmitJobs { now_ms: t, .. }
            | Self::CancelJob { now_ms: t, .. }
            | Self::NodeSessionOpened { now_ms: t, .. }
            | Self::NodeSessionClosed { now_ms: t, .. }
            | Self::NodesLost { now_ms: t, .. }
            | Self::Assign { now_ms: t, .. }
            | Self::ReportAttempts { now_ms: t, .. }
            | Self::SetEligibility { now_ms: t, .. }
            | Self::DrainExpired { now_ms: t, .. }
            | Self::NodeHealth { now_ms: t, .. }
            | Self::NodeLeaving { now_ms: t, .. }
            | Self::RestoreState { now_ms: t, .. }
            | Self::SetBlacklist { now_ms: t, .. }
            | Self::EnableRules { now_ms: t, .. }
            | Self::CollectJobs { now_ms: t, .. } => *t = now_ms,
        }
    }
}

/// A task placed on a node, with the attempt number that fences it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub attempt: AttemptRef,
    pub node_id: NodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptEvent {
    Started,
    Finished(Exit),
    /// The readiness probe passed; the text says what it ran and saw.
    Ready {
        diagnostics: String,
    },
}

/// What a node said about one of its attempts. `node_id` is the node whose
/// session carried the report, never a field the agent chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub node_id: NodeId,
    pub attempt: AttemptRef,
    pub event: AttemptEvent,
}

/// One submitted job as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub job_id: JobId,
    /// The idempotency key matched an existing job with the same spec.
    pub existing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum SubmitError {
    #[error(
        "jobs[{position}]: idempotency key {key:?} is already used by job {existing} with a different spec"
    )]
    IdempotencyConflict {
        position: usize,
        key: String,
        existing: JobId,
    },
    #[error("jobs[{position}]: job id {id} already exists")]
    DuplicateId { position: usize, id: JobId },
}

#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum CancelError {
    #[error("job {0} not found")]
    NotFound(JobId),
}

#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum NodeError {
    #[error("node {0} not found")]
    NotFound(NodeId),
}

/// The result of applying one log entry, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Entries that carry no command (Raft's blank and membership entries).
    None,
    Submitted(Result<Vec<Submitted>, SubmitError>),
    Cancelled(Result<Box<Job>, CancelError>),
    Node(Result<(), NodeError>),
    Assigned {
        placed: u32,
        skipped: u32,
    },
    /// `stale`: reports ignored because they were not for the current live
    /// attempt or came from another node (fencing).
    Reported {
        accepted: u32,
        stale: u32,
    },
    NodesLost {
        attempts_lost: u32,
    },
    Restored(Result<RestoreSummary, String>),
    /// Jobs a `CollectJobs` entry removed.
    Collected {
        collected: u32,
    },
}

/// What a restore brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSummary {
    pub jobs: u64,
    pub nodes: u64,
}

// Raft logs show entries by their Display form; keep it short.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SubmitJobs { jobs, .. } => write!(f, "submit {} job(s)", jobs.len()),
            Self::CancelJob { job_id, .. } => write!(f, "cancel job {job_id}"),
            Self::NodeSessionOpened { node, session, .. } => {
                write!(
                    f,
                    "node {} session {} on replica {}",
                    node.id, session.id, session.replica
                )
            }
            Self::NodeSessionClosed { node_id, .. } => write!(f, "node {node_id} session closed"),
            Self::NodesLost { node_ids, .. } => write!(f, "nodes lost: {node_ids:?}"),
            Self::Assign { placements, .. } => write!(f, "assign {} task(s)", placements.len()),
            Self::ReportAttempts { reports, .. } => {
                write!(f, "{} attempt report(s)", reports.len())
            }
            Self::SetEligibility {
                node_id,
                eligibility,
                ..
            } => {
                write!(f, "node {node_id} {eligibility:?}")
            }
            Self::DrainExpired { node_id, .. } => write!(f, "drain deadline of node {node_id}"),
            Self::NodeHealth {
                node_id, health, ..
            } => write!(f, "node {node_id} health {}", health.score),
            Self::SetBlacklist {
                node_id,
                blacklisted,
                ..
            } => write!(f, "node {node_id} blacklisted={blacklisted}"),
            Self::NodeLeaving { node_id, .. } => write!(f, "node {node_id} leaving"),
            Self::EnableRules { rules, .. } => write!(f, "enable apply rules {rules}"),
            Self::CollectJobs { job_ids, .. } => {
                write!(f, "collect {} finished job(s)", job_ids.len())
            }
            Self::RestoreState { snapshot, .. } => {
                write!(f, "restore a {} byte snapshot", snapshot.len())
            }
        }
    }
}
