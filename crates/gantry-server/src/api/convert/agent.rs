//! Attempt tokens and results on the agent stream.

use gantry_core as core;
use gantry_proto::v1 as api;
use tonic::Status;

pub fn token_to_api(r: &core::AttemptRef) -> api::AttemptToken {
    api::AttemptToken {
        job_id: r.job_id.clone(),
        task: r.task,
        attempt: r.attempt,
    }
}

pub fn token_from_api(t: Option<api::AttemptToken>) -> Result<core::AttemptRef, Status> {
    let t = t.ok_or_else(|| Status::invalid_argument("attempt: missing"))?;
    if t.job_id.is_empty() || t.job_id.len() > core::limits::MAX_NAME_BYTES || t.attempt == 0 {
        return Err(Status::invalid_argument(
            "attempt: not a valid attempt token",
        ));
    }
    Ok(core::AttemptRef {
        job_id: t.job_id,
        task: t.task,
        attempt: t.attempt,
    })
}

pub fn exit_from_api(f: api::AttemptFinished) -> core::Exit {
    let failure = match api::FailureClass::try_from(f.failure) {
        Ok(api::FailureClass::Unspecified) => None,
        Ok(api::FailureClass::Workload) => Some(core::FailureClass::Workload),
        Ok(api::FailureClass::Timeout) => Some(core::FailureClass::Timeout),
        Ok(api::FailureClass::Cancelled) => Some(core::FailureClass::Cancelled),
        Ok(api::FailureClass::WarmUp) => Some(core::FailureClass::WarmUp),
        // Infra, and anything this replica does not know, counts against the host.
        Ok(api::FailureClass::Infra) | Err(_) => Some(core::FailureClass::Infra),
    };
    let mut exit = core::Exit {
        exit_code: f.exit_code,
        signal: f.signal,
        failure,
        message: f.message,
        stdout_tail: f.stdout_tail,
        stderr_tail: f.stderr_tail,
        diagnostics: f.diagnostics,
        infra_event: f.infra_event,
    };
    // An id, not a message: anything longer is not one an agent made.
    core::limits::truncate_utf8(&mut exit.infra_event, 128);
    core::limits::truncate_tail(&mut exit.stdout_tail);
    core::limits::truncate_tail(&mut exit.stderr_tail);
    core::limits::truncate_tail(&mut exit.diagnostics);
    core::limits::truncate_utf8(&mut exit.message, core::limits::MAX_REASON_BYTES);
    exit
}
