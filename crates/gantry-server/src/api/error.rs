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
        CancelError::NotFound(_) => Status::not_found(e.to_string()),
    }
}

/// An outcome that does not belong to the command proposed: a bug, not bad input.
pub fn unexpected_outcome(what: &str) -> Status {
    Status::internal(format!("unexpected outcome for {what}"))
}
