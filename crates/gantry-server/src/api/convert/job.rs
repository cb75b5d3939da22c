//! Conversions between the public API's messages and core types.

use gantry_core as core;
use gantry_proto::v1 as api;
use tonic::Status;

use super::node::resources_to_api;

/// A spec from the API; a placement or probe that cannot be understood is
/// refused with the field named.
pub fn spec_from_api(s: api::JobSpec) -> Result<core::JobSpec, Status> {
    let r = s.resources.unwrap_or_default();
    let placement = core::PlacementPolicy::parse(&s.placement).ok_or_else(|| {
        Status::invalid_argument(format!(
            "placement: {:?} is not a policy (use strict, balanced or aggressive, or leave it empty for the cluster's default)",
            s.placement
        ))
    })?;
    let readiness = s.readiness.map(probe_from_api).transpose()?;
    Ok(core::JobSpec {
        name: s.name,
        argv: s.argv,
        env: s.env.into_iter().collect(),
        working_dir: s.working_dir,
        resources: core::Resources {
            cpu_millis: r.cpu_millis,
            memory_mib: r.memory_mib,
            gpus: r.gpus,
        },
        constraints: s.constraints.into_iter().collect(),
        count: s.count,
        priority: s.priority,
        timeout_ms: s.timeout_ms,
        max_attempts: s.max_attempts,
        idempotency_key: s.idempotency_key,
        shell: s.shell,
        spread: s.spread,
        gpu_model: s.gpu_model,
        gpu_min_memory_mib: s.gpu_min_memory_mib,
        placement,
        readiness,
        user: s.user,
        retention_ms: s.retention_ms,
    })
}

fn port(p: u32) -> Result<u16, Status> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Status::invalid_argument(format!("readiness.port: {p} is not a TCP port")))
}

fn probe_from_api(p: api::Probe) -> Result<core::Probe, Status> {
    use api::probe::Check;
    let check = match p.check {
        Some(Check::Exec(e)) => core::ProbeCheck::Exec { argv: e.argv },
        Some(Check::Tcp(t)) => core::ProbeCheck::Tcp {
            host: t.host,
            port: port(t.port)?,
        },
        Some(Check::Http(h)) => core::ProbeCheck::Http {
            host: h.host,
            port: port(h.port)?,
            path: h.path,
        },
        None => {
            return Err(Status::invalid_argument(
                "readiness: give one of exec, tcp or http",
            ));
        }
    };
    Ok(core::Probe {
        check,
        warmup_ms: p.warmup_ms,
        interval_ms: p.interval_ms,
        timeout_ms: p.timeout_ms,
    })
}

fn probe_to_api(p: &core::Probe) -> api::Probe {
    use api::probe::Check;
    let check = match &p.check {
        core::ProbeCheck::Exec { argv } => Check::Exec(api::ExecProbe { argv: argv.clone() }),
        core::ProbeCheck::Tcp { host, port } => Check::Tcp(api::TcpProbe {
            host: host.clone(),
            port: u32::from(*port),
        }),
        core::ProbeCheck::Http { host, port, path } => Check::Http(api::HttpProbe {
            host: host.clone(),
            port: u32::from(*port),
            path: path.clone(),
        }),
    };
    api::Probe {
        check: Some(check),
        warmup_ms: p.warmup_ms,
        interval_ms: p.interval_ms,
        timeout_ms: p.timeout_ms,
    }
}

pub fn spec_to_api(s: &core::JobSpec) -> api::JobSpec {
    api::JobSpec {
        name: s.name.clone(),
        argv: s.argv.clone(),
        env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        working_dir: s.working_dir.clone(),
        resources: Some(resources_to_api(&s.resources)),
        constraints: s
            .constraints
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        count: s.count,
        priority: s.priority,
        timeout_ms: s.timeout_ms,
        max_attempts: s.max_attempts,
        idempotency_key: s.idempotency_key.clone(),
        shell: s.shell,
        spread: s.spread,
        gpu_model: s.gpu_model.clone(),
        gpu_min_memory_mib: s.gpu_min_memory_mib,
        placement: s.placement.as_str().to_owned(),
        readiness: s.readiness.as_ref().map(probe_to_api),
        user: s.user.clone(),
        retention_ms: s.retention_ms,
    }
}

pub fn job_state_to_api(s: core::JobState) -> api::JobState {
    match s {
        core::JobState::Pending => api::JobState::Pending,
        core::JobState::Running => api::JobState::Running,
        core::JobState::Complete => api::JobState::Complete,
        core::JobState::Failed => api::JobState::Failed,
        core::JobState::Cancelled => api::JobState::Cancelled,
    }
}

pub fn job_state_from_api(v: i32) -> Result<core::JobState, Status> {
    match api::JobState::try_from(v) {
        Ok(api::JobState::Pending) => Ok(core::JobState::Pending),
        Ok(api::JobState::Running) => Ok(core::JobState::Running),
        Ok(api::JobState::Complete) => Ok(core::JobState::Complete),
        Ok(api::JobState::Failed) => Ok(core::JobState::Failed),
        Ok(api::JobState::Cancelled) => Ok(core::JobState::Cancelled),
        Ok(api::JobState::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "states: {v} is not a job state (use JOB_STATE_PENDING, ..._RUNNING, ..._COMPLETE, \
             ..._FAILED or ..._CANCELLED)"
        ))),
    }
}

fn task_state_to_api(s: core::TaskState) -> api::TaskState {
    match s {
        core::TaskState::Pending => api::TaskState::Pending,
        core::TaskState::Assigned => api::TaskState::Assigned,
        core::TaskState::Running => api::TaskState::Running,
        core::TaskState::Succeeded => api::TaskState::Succeeded,
        core::TaskState::Failed => api::TaskState::Failed,
        core::TaskState::Cancelled => api::TaskState::Cancelled,
    }
}

/// A job for the API; tasks only when `with_tasks` (GetJob).
pub fn job_to_api(j: &core::Job, with_tasks: bool) -> api::Job {
    let c = j.task_counts();
    api::Job {
        id: j.id.clone(),
        spec: Some(spec_to_api(&j.spec)),
        state: job_state_to_api(j.state) as i32,
        submitted_at_ms: j.submitted_at_ms,
        updated_at_ms: j.updated_at_ms,
        create_index: j.create_index,
        modify_index: j.modify_index,
        trace_id: gantry_telemetry::otel::trace_id_of(&j.trace_parent).to_owned(),
        seq: j.seq,
        cancel_reason: j.cancel_reason.clone(),
        task_counts: Some(api::TaskCounts {
            pending: c.pending,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
        }),
        tasks: if with_tasks {
            j.tasks
                .iter()
                .map(|t| api::Task {
                    index: t.index,
                    state: task_state_to_api(t.state) as i32,
                    attempts: t.attempts.iter().map(attempt_to_api).collect(),
                    workload_failures: t.workload_failures,
                    infra_failures: t.infra_failures,
                    failure_reason: t.failure_reason.clone(),
                    not_before_ms: t.not_before_ms,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

fn attempt_to_api(a: &core::Attempt) -> api::Attempt {
    api::Attempt {
        number: a.number,
        node_id: a.node_id.clone(),
        state: a.state.as_str().to_owned(),
        assigned_at_ms: a.assigned_at_ms,
        started_at_ms: a.started_at_ms,
        finished_at_ms: a.finished_at_ms,
        exit_code: a.exit.exit_code,
        signal: a.exit.signal,
        failure_class: a
            .exit
            .failure
            .map(|f| f.as_str().to_owned())
            .unwrap_or_default(),
        message: a.exit.message.clone(),
        stdout_tail: a.exit.stdout_tail.clone(),
        stderr_tail: a.exit.stderr_tail.clone(),
        cancel_requested: a.cancel_requested,
        gpus: a.gpus.clone(),
        ready_at_ms: a.ready_at_ms,
        // The finished report's view wins; before that, what readiness said.
        diagnostics: if a.exit.diagnostics.is_empty() {
            a.diagnostics.clone()
        } else {
            a.exit.diagnostics.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_spec_round_trips() {
        let mut s = api::JobSpec {
            name: "n".into(),
            argv: vec!["a".into(), "b".into()],
            count: 2,
            priority: -1,
            timeout_ms: 5,
            max_attempts: 4,
            idempotency_key: "k".into(),
            shell: true,
            spread: true,
            working_dir: "/w".into(),
            resources: Some(api::Resources {
                cpu_millis: 1,
                memory_mib: 2,
                gpus: 3,
            }),
            gpu_model: "A100".into(),
            gpu_min_memory_mib: 40_000,
            placement: "strict".into(),
            readiness: Some(api::Probe {
                check: Some(api::probe::Check::Http(api::HttpProbe {
                    host: String::new(),
                    port: 8080,
                    path: "/health".into(),
                })),
                warmup_ms: 5000,
                interval_ms: 100,
                timeout_ms: 0,
            }),
            ..Default::default()
        };
        s.env.insert("A".into(), "1".into());
        s.constraints.insert("zone".into(), "a".into());
        assert_eq!(spec_to_api(&spec_from_api(s.clone()).unwrap()), s);
        let bad = api::JobSpec {
            placement: "lenient".into(),
            ..s.clone()
        };
        let e = spec_from_api(bad).unwrap_err();
        assert!(e.message().starts_with("placement:"), "{e}");
        let mut bad = s;
        bad.readiness = Some(api::Probe {
            check: Some(api::probe::Check::Tcp(api::TcpProbe {
                host: String::new(),
                port: 70_000,
            })),
            ..Default::default()
        });
        assert!(
            spec_from_api(bad)
                .unwrap_err()
                .message()
                .starts_with("readiness.port")
        );
    }

    #[test]
    fn t10_unknown_state_is_invalid_argument() {
        assert_eq!(
            job_state_from_api(99).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            job_state_from_api(0).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(job_state_from_api(5).unwrap(), core::JobState::Cancelled);
    }
}
