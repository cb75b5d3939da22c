//! The Raft log payload and what applying it produced.
//!
//! `Command` is append-only: a variant, once released, is never removed or
//! changed in meaning, because old log entries and snapshots must still
//! apply. New behaviour gets a new variant.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::job::{Job, JobId, JobSpec};

/// One job in a submission, with the id the proposer chose for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    pub id: JobId,
    pub spec: JobSpec,
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

/// The result of applying one log entry, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Entries that carry no command (Raft's blank and membership entries).
    None,
    Submitted(Result<Vec<Submitted>, SubmitError>),
    Cancelled(Result<Box<Job>, CancelError>),
}

// Raft logs show entries by their Display form; keep it short.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SubmitJobs { jobs, .. } => write!(f, "submit {} job(s)", jobs.len()),
            Self::CancelJob { job_id, .. } => write!(f, "cancel job {job_id}"),
        }
    }
}
