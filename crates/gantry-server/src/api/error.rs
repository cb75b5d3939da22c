//! The one place where domain errors become gRPC statuses.

use gantry_core::{CancelError, SubmitError, ValidationError};
use tonic::Status;

pub fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn submit(e: SubmitError) -> Status {
    match e {
        SubmitError::IdempotencyConflict { .. } | SubmitError::DuplicateId { .. } => {
            Status::already_exists(e.to_string())
        }
    }
}

pub fn cancel(e: CancelError) -> Status {
    match e {
        CancelError::NotFound(id) => job_not_found(&id),
    }
}

/// An outcome that does not belong to the command proposed: a bug, not bad input.
pub fn unexpected_outcome(what: &str) -> Status {
    Status::internal(format!("unexpected outcome for {what}"))
}

/// A job this replica does not hold: never submitted, or removed by
/// garbage collection once it had been finished longer than its retention.
pub fn job_not_found(job_id: &str) -> Status {
    Status::not_found(format!(
        "job {job_id} not found: never submitted, or garbage-collected after it finished (finished jobs are kept for their retention, --job-retention, default 24h)"
    ))
}
