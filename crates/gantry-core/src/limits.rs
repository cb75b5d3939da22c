//! Documented limits on what a client may submit, checked by the replica
//! that receives a request, before anything is proposed to the log.
//! docs/api.md lists the same numbers; change both together.

use thiserror::Error;

use crate::job::JobSpec;

/// Jobs in one SubmitJobs request (one log entry).
pub const MAX_JOBS_PER_SUBMIT: usize = 1_000;
/// Tasks per job (`count`).
pub const MAX_TASKS_PER_JOB: u32 = 10_000;
/// argv entries, and their total size in bytes.
pub const MAX_ARGV_ENTRIES: usize = 1_024;
pub const MAX_ARGV_BYTES: usize = 64 * 1024;
/// env entries, and the total size of keys and values in bytes.
pub const MAX_ENV_ENTRIES: usize = 1_024;
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Name, working dir, idempotency key, label keys and values.
pub const MAX_NAME_BYTES: usize = 256;
pub const MAX_PATH_BYTES: usize = 4_096;
pub const MAX_CONSTRAINTS: usize = 64;
pub const MAX_ATTEMPTS: u32 = 100;
/// 1,024 cores, in thousandths of a core.
pub const MAX_CPU_MILLIS: u64 = 1_024_000;
pub const MAX_MEMORY_MIB: u64 = 16 * 1024 * 1024;
pub const MAX_GPUS: u32 = 64;
/// Cancel reasons.
pub const MAX_REASON_BYTES: usize = 1_024;
/// Host-caused failures a task is retried for, on top of `max_attempts`.
pub const MAX_INFRA_RETRIES: u32 = 10;
/// The stdout and stderr tails kept with a result in the log, each.
pub const MAX_OUTPUT_TAIL_BYTES: usize = 16 * 1024;

/// A readiness probe's warm-up window, at most (a day).
pub const MAX_PROBE_WARMUP_MS: u64 = 24 * 60 * 60 * 1000;
/// Health checks an agent may report, and the size of each name and detail.
pub const MAX_HEALTH_CHECKS: usize = 32;
pub const MAX_HEALTH_DETAIL_BYTES: usize = 256;

/// Cuts `s` to at most `max` bytes, on a character boundary (never panics).
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

/// Keeps the last `MAX_OUTPUT_TAIL_BYTES` of `s`, on a character boundary.
pub fn truncate_tail(s: &mut String) {
    if s.len() <= MAX_OUTPUT_TAIL_BYTES {
        return;
    }
    let mut cut = s.len() - MAX_OUTPUT_TAIL_BYTES;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    s.drain(..cut);
}

/// Why a spec was refused. The message names the field and the limit.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    pub field: String,
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        problem: problem.into(),
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(err(
            field,
            format!("is {} bytes, the limit is {max}", value.len()),
        ));
    }
    Ok(())
}

/// Every entry must be something exec can pass: a NUL byte would end it
/// early (the task would run with other arguments than the job says, or
/// fail every attempt), so it is refused with the entry named.
fn check_exec_args(field: &str, argv: &[String]) -> Result<(), ValidationError> {
    match argv.iter().position(|a| a.contains('\0')) {
        Some(i) => Err(err(
            format!("{field}[{i}]"),
            "contains a NUL byte, which no program's arguments can hold",
        )),
        None => Ok(()),
    }
}

/// A working directory may not climb out of where it is given (`..`), and
/// a path cannot hold a NUL byte.
/// A user name as `useradd` takes it (or a numeric uid); empty: the node's default.
fn check_user(user: &str) -> Result<(), ValidationError> {
    let ok = user.len() <= 32
        && user.chars().enumerate().all(|(i, c)| {
            c.is_ascii_lowercase() || c == '_' || (i > 0 && (c.is_ascii_digit() || c == '-'))
        })
        || (!user.is_empty() && user.len() <= 10 && user.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(err(
            "user",
            "is not a user name (lowercase letters, digits, '_' and '-', at most 32, not starting with a digit or '-') or a numeric uid",
        ))
    }
}

fn check_working_dir(dir: &str) -> Result<(), ValidationError> {
    if dir.contains('\0') {
        return Err(err("working_dir", "contains a NUL byte"));
    }
    if std::path::Path::new(dir)
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(err(
            "working_dir",
            format!(
                "{dir:?} has a '..' component: a task's working directory may not climb out of the one it is given"
            ),
        ));
    }
    Ok(())
}

impl JobSpec {
    /// Checks the spec against the limits above.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(err(
                "argv",
                "is empty: give the program to run and its arguments",
            ));
        }
        if self.argv.len() > MAX_ARGV_ENTRIES {
            return Err(err(
                "argv",
                format!(
                    "has {} entries, the limit is {MAX_ARGV_ENTRIES}",
                    self.argv.len()
                ),
            ));
        }
        let argv_bytes: usize = self.argv.iter().map(String::len).sum();
        if argv_bytes > MAX_ARGV_BYTES {
            return Err(err(
                "argv",
                format!("is {argv_bytes} bytes, the limit is {MAX_ARGV_BYTES}"),
            ));
        }
        if self.env.len() > MAX_ENV_ENTRIES {
            return Err(err(
                "env",
                format!(
                    "has {} entries, the limit is {MAX_ENV_ENTRIES}",
                    self.env.len()
                ),
            ));
        }
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if env_bytes > MAX_ENV_BYTES {
            return Err(err(
                "env",
                format!("is {env_bytes} bytes, the limit is {MAX_ENV_BYTES}"),
            ));
        }
        if let Some(k) = self.env.keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(err("env", format!("key {k:?} is empty or contains '='")));
        }
        check_exec_args("argv", &self.argv)?;
        for (k, v) in &self.env {
            if k.contains('\0') || v.contains('\0') {
                return Err(err(
                    format!("env[{k:?}]"),
                    "contains a NUL byte, which no program's environment can hold",
                ));
            }
        }
        check_len("name", &self.name, MAX_NAME_BYTES)?;
        check_len("idempotency_key", &self.idempotency_key, MAX_NAME_BYTES)?;
        check_len("working_dir", &self.working_dir, MAX_PATH_BYTES)?;
        check_working_dir(&self.working_dir)?;
        check_user(&self.user)?;
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(err(
                "constraints",
                format!(
                    "has {} entries, the limit is {MAX_CONSTRAINTS}",
                    self.constraints.len()
                ),
            ));
        }
        for (k, v) in &self.constraints {
            if k.is_empty() {
                return Err(err("constraints", "a label key is empty"));
            }
            check_len("constraints", k, MAX_NAME_BYTES)?;
            check_len("constraints", v, MAX_NAME_BYTES)?;
        }
        if self.count > MAX_TASKS_PER_JOB {
            return Err(err(
                "count",
                format!("is {}, the limit is {MAX_TASKS_PER_JOB}", self.count),
            ));
        }
        if self.max_attempts > MAX_ATTEMPTS {
            return Err(err(
                "max_attempts",
                format!("is {}, the limit is {MAX_ATTEMPTS}", self.max_attempts),
            ));
        }
        let r = &self.resources;
        if r.cpu_millis > MAX_CPU_MILLIS {
            return Err(err(
                "resources.cpu_millis",
                format!("is {}, the limit is {MAX_CPU_MILLIS}", r.cpu_millis),
            ));
        }
        if r.memory_mib > MAX_MEMORY_MIB {
            return Err(err(
                "resources.memory_mib",
                format!("is {}, the limit is {MAX_MEMORY_MIB}", r.memory_mib),
            ));
        }
        if r.gpus > MAX_GPUS {
            return Err(err(
                "resources.gpus",
                format!("is {}, the limit is {MAX_GPUS}", r.gpus),
            ));
        }
        check_len("gpu_model", &self.gpu_model, MAX_NAME_BYTES)?;
        if r.gpus == 0 && (!self.gpu_model.is_empty() || self.gpu_min_memory_mib > 0) {
            return Err(err(
                "resources.gpus",
                "is 0 but gpu_model or gpu_min_memory_mib is set: ask for at least 1 GPU",
            ));
        }
        if let Some(p) = &self.readiness {
            p.validate()?;
        }
        Ok(())
    }
}

impl crate::job::Probe {
    fn validate(&self) -> Result<(), ValidationError> {
        use crate::job::ProbeCheck;
        match &self.check {
            ProbeCheck::Exec { argv } => {
                check_exec_args("readiness.exec.argv", argv)?;
                if argv.first().is_none_or(String::is_empty) {
                    return Err(err(
                        "readiness.exec.argv",
                        "is empty: give the probe command",
                    ));
                }
                if argv.len() > MAX_ARGV_ENTRIES
                    || argv.iter().map(String::len).sum::<usize>() > MAX_ARGV_BYTES
                {
                    return Err(err(
                        "readiness.exec.argv",
                        format!("is over {MAX_ARGV_ENTRIES} entries or {MAX_ARGV_BYTES} bytes"),
                    ));
                }
            }
            ProbeCheck::Tcp { host, port } | ProbeCheck::Http { host, port, .. } => {
                check_len("readiness.host", host, MAX_NAME_BYTES)?;
                if *port == 0 {
                    return Err(err("readiness.port", "is 0: give the port to probe"));
                }
            }
        }
        if let ProbeCheck::Http { path, .. } = &self.check {
            check_len("readiness.http.path", path, MAX_PATH_BYTES)?;
            if !path.is_empty() && !path.starts_with('/') {
                return Err(err("readiness.http.path", "must start with '/'"));
            }
        }
        if self.warmup_ms > MAX_PROBE_WARMUP_MS {
            return Err(err(
                "readiness.warmup_ms",
                format!("is {}, the limit is {MAX_PROBE_WARMUP_MS}", self.warmup_ms),
            ));
        }
        if self.interval_ms > self.warmup_ms.max(60_000) || self.timeout_ms > MAX_PROBE_WARMUP_MS {
            return Err(err(
                "readiness.interval_ms",
                "is longer than the warm-up window (or a minute): the probe would never run",
            ));
        }
        Ok(())
    }
}

/// Checks the size of a whole submit request.
pub fn validate_batch(specs: &[JobSpec]) -> Result<(), ValidationError> {
    if specs.is_empty() {
        return Err(err("jobs", "is empty: submit at least one job"));
    }
    if specs.len() > MAX_JOBS_PER_SUBMIT {
        return Err(err(
            "jobs",
            format!(
                "has {} jobs, the limit per request is {MAX_JOBS_PER_SUBMIT}",
                specs.len()
            ),
        ));
    }
    for (i, s) in specs.iter().enumerate() {
        s.validate().map_err(|e| ValidationError {
            field: format!("jobs[{i}].{}", e.field),
            problem: e.problem,
        })?;
    }
    Ok(())
}

/// Checks a cancel reason.
pub fn validate_reason(reason: &str) -> Result<(), ValidationError> {
    check_len("reason", reason, MAX_REASON_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            argv: vec!["/bin/true".into()],
            ..JobSpec::default()
        }
    }

    #[test]
    fn t10_empty_argv_is_refused_with_the_field_named() {
        let e = JobSpec::default().validate().unwrap_err();
        assert_eq!(e.field, "argv");
        assert!(e.to_string().contains("argv: is empty"));
    }

    #[test]
    fn t10_limits_are_enforced() {
        let mut s = spec();
        s.count = MAX_TASKS_PER_JOB + 1;
        assert_eq!(s.validate().unwrap_err().field, "count");
        let mut s = spec();
        s.resources.gpus = MAX_GPUS + 1;
        assert_eq!(s.validate().unwrap_err().field, "resources.gpus");
        let mut s = spec();
        s.argv.push("x".repeat(MAX_ARGV_BYTES));
        assert_eq!(s.validate().unwrap_err().field, "argv");
        let mut s = spec();
        s.env.insert("A=B".into(), "c".into());
        assert_eq!(s.validate().unwrap_err().field, "env");
    }

    #[test]
    fn t10_task_users_are_names_or_uids() {
        for ok in ["", "nobody", "svc_train-1", "_x", "1000"] {
            let mut s = spec();
            s.user = ok.into();
            assert!(s.validate().is_ok(), "{ok:?}");
        }
        for bad in [
            "Root",
            "-x",
            "a b",
            "x:y",
            "1a2b;",
            "../etc",
            &"u".repeat(33),
        ] {
            let mut s = spec();
            s.user = bad.into();
            assert_eq!(s.validate().unwrap_err().field, "user", "{bad:?}");
        }
    }

    #[test]
    fn t10_bytes_exec_cannot_take_and_escaping_work_dirs_are_refused() {
        let mut s = spec();
        s.argv.push("a\0b".into());
        let e = s.validate().unwrap_err();
        assert_eq!(e.field, "argv[1]");
        assert!(e.problem.contains("NUL"), "{e}");
        let mut s = spec();
        s.env.insert("K".into(), "v\0".into());
        assert_eq!(s.validate().unwrap_err().field, "env[\"K\"]");
        for bad in ["../../etc", "a/../../b", "/tmp/../etc", ".."] {
            let mut s = spec();
            s.working_dir = bad.into();
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, "working_dir", "{bad}");
            assert!(e.problem.contains("'..'"), "{e}");
        }
        for ok in ["", "data", "./data/x", "/srv/work"] {
            let mut s = spec();
            s.working_dir = ok.into();
            assert!(s.validate().is_ok(), "{ok}");
        }
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn t10_batch_limits_name_the_job() {
        assert_eq!(validate_batch(&[]).unwrap_err().field, "jobs");
        let too_many = vec![spec(); MAX_JOBS_PER_SUBMIT + 1];
        assert_eq!(validate_batch(&too_many).unwrap_err().field, "jobs");
        let e = validate_batch(&[spec(), JobSpec::default()]).unwrap_err();
        assert_eq!(e.field, "jobs[1].argv");
    }
}
