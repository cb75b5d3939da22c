//! Runs one attempt under a supervisor process of its own (see
//! `supervisor`): argv executed directly (a shell only when the job asks for
//! one), an empty working directory of its own (see `scratch`), live output
//! in bounded chunks, a timeout, and cancel that stops the whole task
//! (SIGTERM, then SIGKILL after a grace period), cgroup and all.
//! A service task with a readiness probe is reported ready when the probe
//! first passes, and killed if it does not within its warm-up window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gantry_proto::v1::agent_message::Msg;
use gantry_proto::v1::{
    AgentMessage, AttemptFinished, AttemptReady, AttemptStarted, AttemptToken, FailureClass,
    JobSpec, OutputChunk, OutputStream,
};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::{probe, supervisor};

/// Largest live output chunk sent to the replica.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Output kept for the final report, per stream (the log keeps 16 KiB).
pub const TAIL_BYTES: usize = supervisor::TAIL_BYTES;

/// Counts an attempt as running while alive.
struct Running<'a>(&'a crate::stats::AgentStats);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the agent stopped an attempt before it exited by itself.
#[derive(Debug)]
pub(crate) enum Stop {
    Timeout,
    Cancel(String),
    /// The readiness probe did not pass within the warm-up window.
    WarmUp(String),
}

pub struct Execution {
    pub token: AttemptToken,
    /// How tasks are confined on this node (supervisor, cgroups, user).
    pub confinement: std::sync::Arc<crate::confine::Confinement>,
    /// The lease deadline (CLOCK_BOOTTIME ms) the supervisor holds the task to.
    pub lease: tokio::sync::watch::Receiver<u64>,
    pub spec: JobSpec,
    /// Where attempts whose job names no working directory run.
    pub scratch: std::sync::Arc<crate::scratch::ScratchDirs>,
    pub kill_grace: Duration,
    pub events: mpsc::Sender<AgentMessage>,
    pub cancel: oneshot::Receiver<String>,
    /// Where to record the attempt's supervisor once it runs, so that an
    /// agent restarted after a crash can find it again.
    pub record: Option<crate::journal::Journal>,
    pub stats: std::sync::Arc<crate::stats::AgentStats>,
    /// The GPUs the attempt may use (node-local NVML indices); `None` on a
    /// node without GPUs, where the environment is left alone.
    pub gpus: Option<Vec<u32>>,
}

/// Queues a live event; false if it was dropped.
fn send(events: &mpsc::Sender<AgentMessage>, msg: Msg) -> bool {
    // Live events are best effort: when the queue to the replica is full
    // (disconnected, slow), output is dropped; the finished report is kept
    // separately until the cluster acknowledges it.
    events.try_send(AgentMessage { msg: Some(msg) }).is_ok()
}

fn finished(token: &AttemptToken, failure: FailureClass, message: String) -> AttemptFinished {
    AttemptFinished {
        attempt: Some(token.clone()),
        failure: failure as i32,
        message,
        ..AttemptFinished::default()
    }
}

/// The argv to execute: the job's own, or `sh -c SCRIPT sh ARGS...` when it asks for a shell.
pub fn command_line(spec: &JobSpec) -> Vec<String> {
    if spec.shell {
        let mut argv = vec!["/bin/sh".to_owned(), "-c".to_owned()];
        argv.push(spec.argv.first().cloned().unwrap_or_default());
        argv.push("sh".to_owned());
        argv.extend(spec.argv.iter().skip(1).cloned());
        argv
    } else {
        spec.argv.clone()
    }
}

/// Runs the attempt to its end and returns the finished report.
pub async fn run(exec: Execution) -> AttemptFinished {
    let stats = exec.stats.clone();
    stats.attempts_started.fetch_add(1, Ordering::Relaxed);
    stats.running.fetch_add(1, Ordering::Relaxed);
    let _running = Running(&stats);
    let scratch = exec.scratch.clone();
    let user = match exec.confinement.user_for(&exec.spec.user) {
        Ok(u) => u,
        Err(e) => return finished(&exec.token, FailureClass::Workload, e),
    };
    let asked = PathBuf::from(&exec.spec.working_dir);
    // An absolute work dir only where the node allows it; a relative one
    // (or none) is inside the attempt's own directory.
    if asked.is_absolute() && !exec.confinement.allows_workdir(&asked) {
        return finished(
            &exec.token,
            FailureClass::Workload,
            format!(
                "working directory {} is outside what this node allows ({}); give a path relative to the task's own directory",
                asked.display(),
                exec.confinement.allowed_workdirs_text()
            ),
        );
    }
    let fresh = if asked.is_absolute() {
        None
    } else {
        match scratch.take(user).await {
            Ok(s) => Some(s),
            Err(e) => {
                return finished(
                    &exec.token,
                    FailureClass::Infra,
                    format!("cannot create a working directory: {e}"),
                );
            }
        }
    };
    let dir = match &fresh {
        None => Ok(asked),
        Some(s) if asked.as_os_str().is_empty() => Ok(s.path.clone()),
        Some(s) => {
            let dir = s.path.join(&asked);
            match make_owned_dirs(&s.path, &asked, user) {
                Ok(()) => Ok(dir),
                Err(e) => Err(format!(
                    "cannot create working directory {}: {e}",
                    dir.display()
                )),
            }
        }
    };
    let report = match dir {
        Ok(dir) => run_in(&dir, user, exec).await,
        Err(e) => finished(&exec.token, FailureClass::Infra, e),
    };
    if let Some(s) = fresh {
        scratch.give_back(s).await;
    }
    report
}

/// Creates `relative` (each of its components) under `base`, owned by
/// `user` when given, as a task's own directories are.
fn make_owned_dirs(base: &Path, relative: &Path, user: Option<(u32, u32)>) -> std::io::Result<()> {
    let mut dir = base.to_path_buf();
    for part in relative.components() {
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`run`] in the working directory `dir`.
async fn run_in(dir: &Path, user: Option<(u32, u32)>, exec: Execution) -> AttemptFinished {
    let readiness = match exec.spec.readiness.as_ref() {
        None => None,
        Some(p) => match probe::Probe::from_spec(p, dir) {
            Ok(p) => Some(p),
            Err(e) => {
                return finished(
                    &exec.token,
                    FailureClass::Workload,
                    format!("invalid readiness probe: {e}"),
                );
            }
        },
    };
    let argv = command_line(&exec.spec);
    if argv.is_empty() {
        return finished(&exec.token, FailureClass::Workload, "empty argv".into());
    }
    // A missing working directory makes spawn fail with the same error as
    // a missing program: say which it is.
    if !dir.as_os_str().is_empty() && !dir.is_dir() {
        return finished(
            &exec.token,
            FailureClass::Workload,
            format!(
                "working directory {} does not exist on this node (or is not a directory)",
                dir.display()
            ),
        );
    }
    // Cancelled while it waited for the node's lease: nothing to start.
    let mut exec = exec;
    if let Ok(reason) = exec.cancel.try_recv() {
        return finished(
            &exec.token,
            FailureClass::Cancelled,
            format!("cancelled ({reason}) before it started"),
        );
    }
    let c = exec.confinement.clone();
    let slot = c.take_slot().await;
    let limits = c.limits(exec.spec.resources.as_ref());
    let spec = supervisor::Spec {
        socket: c.socket_name(&exec.token),
        argv,
        env: c.environment(&exec.token, &exec.spec, dir, exec.gpus.as_deref()),
        dir: dir.to_path_buf(),
        user,
        cgroup: slot.and_then(|n| c.slot_cgroup(n)),
        limits,
        nofile: c.nofile,
        core: 0,
        result_file: c.result_file(&exec.token),
        lease_ms: *exec.lease.borrow(),
        timeout_ms: exec.spec.timeout_ms,
    };
    let link = match launch(&c.supervisor, &spec).await {
        Ok(l) => l,
        Err(e) => {
            return finished(
                &exec.token,
                FailureClass::Infra,
                format!("cannot start the task's supervisor: {e}"),
            );
        }
    };
    if let Some(journal) = &exec.record {
        journal.started(&exec.token, link.pid, slot);
    }
    let (report, emptied) = attach(exec, link, readiness, None).await;
    if let (Some(n), true) = (slot, emptied) {
        c.give_back_slot(n).await;
    }
    report
}

/// Follows an attempt whose supervisor a previous run of the agent started
/// (`first` is the frame it answered with), in working directory `dir`.
pub async fn resume(
    exec: Execution,
    link: Link,
    first: supervisor::Frame,
    dir: PathBuf,
    slot: Option<u32>,
) -> AttemptFinished {
    let stats = exec.stats.clone();
    stats.running.fetch_add(1, Ordering::Relaxed);
    let _running = Running(&stats);
    let scratch = exec.scratch.clone();
    let c = exec.confinement.clone();
    let (report, emptied) = attach(exec, link, None, Some(first)).await;
    if let (Some(n), true) = (slot, emptied) {
        c.give_back_slot(n).await;
    }
    if let Some(s) = scratch.adopt(&dir) {
        scratch.give_back(s).await;
    }
    report
}

/// A running supervisor: its process group and the connection to it.
pub struct Link {
    pub pid: i32,
    pub stream: tokio::net::UnixStream,
}

/// Starts a supervisor for `spec` and connects to it.
async fn launch(argv: &[std::ffi::OsString], spec: &supervisor::Spec) -> std::io::Result<Link> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let Some(program) = argv.first() else {
        return Err(std::io::Error::other("no supervisor command configured"));
    };
    let mut child = Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own group: the agent's terminal's Ctrl-C is not the task's.
        .process_group(0)
        .spawn()?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let body = serde_json::to_vec(spec)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body).await?;
    }
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        tokio::io::BufReader::new(out).read_line(&mut line).await?;
    }
    if line.trim() != "ok" {
        let status = child.wait().await?;
        return Err(std::io::Error::other(format!(
            "the supervisor did not start ({status})"
        )));
    }
    // The supervisor outlives this agent if need be; it is reaped here
    // while the agent lives.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let stream = supervisor::connect(&spec.socket).await?;
    Ok(Link { pid, stream })
}

/// Follows a supervised attempt to its end: output, readiness, lease
/// renewals, cancel and timeout; returns the finished report, and whether
/// its cgroup is known to be empty (its slot may be used again).
/// `reattached`: a restarted agent took over a running supervisor.
pub async fn attach(
    exec: Execution,
    link: Link,
    readiness: Option<probe::Probe>,
    mut first: Option<supervisor::Frame>,
) -> (AttemptFinished, bool) {
    let reattached = first.is_some();
    let Execution {
        token,
        spec,
        kill_grace,
        events,
        mut cancel,
        stats,
        mut lease,
        confinement,
        ..
    } = exec;
    let (mut rd, mut wr) = link.stream.into_split();
    let renew = supervisor::Frame::Lease(*lease.borrow_and_update());
    if supervisor::write_frame(&mut wr, &renew).await.is_err() {
        let report = finished(
            &token,
            FailureClass::Infra,
            "the task's supervisor hung up".into(),
        );
        return (report, false);
    }
    let mut tally = readiness.as_ref().map(probe::Tally::new);
    let mut ready = Box::pin(become_ready(
        readiness.as_ref(),
        tally.as_mut(),
        &token,
        &events,
    ));
    let mut stop: Option<Stop> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut sequence = [0u64; 2];
    let outcome = loop {
        let until = deadline;
        let timeout = async move {
            match until {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let event = if let Some(f) = first.take() {
            Event::Frame(Ok(Some(f)))
        } else {
            tokio::select! {
                f = supervisor::read_frame(&mut rd) => Event::Frame(f),
                () = timeout, if stop.is_none() => Event::Stop(Stop::Timeout),
                reason = &mut cancel, if stop.is_none() => Event::Stop(Stop::Cancel(
                    reason.unwrap_or_else(|_| "agent shutting down".into()),
                )),
                message = &mut ready, if stop.is_none() => Event::Stop(Stop::WarmUp(message)),
                Ok(()) = lease.changed() => Event::Lease,
            }
        };
        match event {
            Event::Stop(s) => {
                stop = Some(s);
                let grace_ms = u64::try_from(kill_grace.as_millis()).unwrap_or(u64::MAX);
                let _ =
                    supervisor::write_frame(&mut wr, &supervisor::Frame::Stop { grace_ms }).await;
            }
            Event::Lease => {
                let f = supervisor::Frame::Lease(*lease.borrow_and_update());
                let _ = supervisor::write_frame(&mut wr, &f).await;
            }
            Event::Frame(Ok(Some(frame))) => match frame {
                supervisor::Frame::Started(st) => {
                    if spec.timeout_ms > 0 {
                        let elapsed = supervisor::boot_ms().saturating_sub(st.started_ms);
                        let left = Duration::from_millis(spec.timeout_ms.saturating_sub(elapsed));
                        deadline = Some(tokio::time::Instant::now() + left);
                    }
                    if !reattached {
                        send(
                            &events,
                            Msg::Started(AttemptStarted {
                                attempt: Some(token.clone()),
                            }),
                        );
                    }
                }
                supervisor::Frame::Stdout(data) => {
                    output(
                        &events,
                        &stats,
                        &token,
                        OutputStream::Stdout,
                        &mut sequence[0],
                        data,
                    );
                }
                supervisor::Frame::Stderr(data) => {
                    output(
                        &events,
                        &stats,
                        &token,
                        OutputStream::Stderr,
                        &mut sequence[1],
                        data,
                    );
                }
                supervisor::Frame::Finished(o) => {
                    let _ = supervisor::write_frame(&mut wr, &supervisor::Frame::Ack).await;
                    break Some(*o);
                }
                _ => {}
            },
            Event::Frame(_) => break None,
        }
    };
    drop(ready);
    let outcome = match outcome.or_else(|| take_result_file(&confinement.result_file(&token))) {
        Some(o) => o,
        None => {
            let report = finished(
                &token,
                FailureClass::Infra,
                "the task's supervisor exited without a result".into(),
            );
            return (report, false);
        }
    };
    if outcome.escaped > 0 {
        tracing::warn!(
            processes = outcome.escaped,
            "processes of the task survived SIGKILL (stuck in the kernel?)"
        );
    }
    let mut report = report(&token, &outcome, stop, &spec);
    report.diagnostics = tally.map(|t| t.diagnostics()).unwrap_or_default();
    (report, outcome.escaped == 0)
}

enum Event {
    Frame(std::io::Result<Option<supervisor::Frame>>),
    Stop(Stop),
    Lease,
}

/// A result a supervisor left on disk (no agent took it in time); removed once read.
pub fn take_result_file(path: &Path) -> Option<supervisor::Outcome> {
    let body = std::fs::read(path).ok()?;
    let _ = std::fs::remove_file(path);
    serde_json::from_slice(&body).ok()
}

/// The cgroup and supervisor name of an attempt.
pub fn attempt_name(t: &AttemptToken) -> String {
    format!("{}.{}.{}", t.job_id, t.task, t.attempt)
}

/// Forwards a chunk of live output.
fn output(
    events: &mpsc::Sender<AgentMessage>,
    stats: &crate::stats::AgentStats,
    token: &AttemptToken,
    stream: OutputStream,
    sequence: &mut u64,
    data: Vec<u8>,
) {
    let n = data.len() as u64;
    let sent = send(
        events,
        Msg::Output(OutputChunk {
            attempt: Some(token.clone()),
            stream: stream as i32,
            sequence: *sequence,
            data,
        }),
    );
    *sequence += 1;
    let counter = if sent {
        &stats.output_bytes
    } else {
        &stats.output_dropped_bytes
    };
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Exposes exactly `gpus` to the task, whatever the job's env says: an empty
/// list hides every GPU.
pub fn gpu_env(env: &mut BTreeMap<String, String>, gpus: &[u32]) {
    let list = gpus
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    env.insert("CUDA_VISIBLE_DEVICES".into(), list.clone());
    env.insert("NVIDIA_VISIBLE_DEVICES".into(), list);
    // The indices are NVML's, which follow the PCI bus; CUDA's default
    // order (fastest first) can differ on mixed nodes.
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
}

/// Probes until ready, then reports Ready and waits forever; returns (the
/// failure message) only if the warm-up window ends first. Without a probe it
/// never returns.
async fn become_ready(
    probe: Option<&probe::Probe>,
    tally: Option<&mut probe::Tally>,
    token: &AttemptToken,
    events: &mpsc::Sender<AgentMessage>,
) -> String {
    let (Some(probe), Some(tally)) = (probe, tally) else {
        return std::future::pending().await;
    };
    match probe::wait_ready(probe, tally).await {
        Ok(diagnostics) => {
            tracing::info!(%diagnostics, "attempt ready");
            send(
                events,
                Msg::Ready(AttemptReady {
                    attempt: Some(token.clone()),
                    diagnostics,
                }),
            );
            std::future::pending().await
        }
        Err(diagnostics) => {
            tracing::warn!(%diagnostics, "attempt not ready within its warm-up; killing it");
            tally.warm_up_failure()
        }
    }
}

pub(crate) fn report(
    token: &AttemptToken,
    o: &supervisor::Outcome,
    stop: Option<Stop>,
    spec: &JobSpec,
) -> AttemptFinished {
    if let Some(e) = &o.setup_error {
        return finished(token, FailureClass::Infra, e.clone());
    }
    if let Some(e) = &o.spawn_error {
        return finished(token, FailureClass::Workload, e.clone());
    }
    let infra_event = if o.fenced.is_some() {
        format!("lease-lapsed:{}", o.fenced_lease_ms)
    } else {
        String::new()
    };
    let (failure, message) = match (&o.fenced, &stop, o.exit_code, o.signal) {
        (Some(why), _, _, _) => (FailureClass::Infra, format!("stopped on the node: {why}")),
        (None, Some(Stop::Timeout), _, _) => (
            FailureClass::Timeout,
            format!(
                "timed out after {} ms; the task was killed",
                spec.timeout_ms
            ),
        ),
        (None, Some(Stop::Cancel(reason)), _, _) => (
            FailureClass::Cancelled,
            format!("cancelled ({reason}); the task was killed"),
        ),
        (None, Some(Stop::WarmUp(message)), _, _) => (
            FailureClass::WarmUp,
            format!("{message}; the task was killed"),
        ),
        (None, None, _, _) if o.oom => (
            FailureClass::Workload,
            format!(
                "out of memory: limit {} MiB (killed by the kernel's OOM killer)",
                o.memory_limit_bytes >> 20
            ),
        ),
        (None, None, Some(0), _) => (FailureClass::Unspecified, String::new()),
        (None, None, Some(code), _) => (FailureClass::Workload, format!("exited with code {code}")),
        (None, None, None, Some(sig)) => {
            (FailureClass::Workload, format!("killed by signal {sig}"))
        }
        (None, None, None, None) => (
            FailureClass::Workload,
            "ended without an exit status".into(),
        ),
    };
    AttemptFinished {
        attempt: Some(token.clone()),
        exit_code: o.exit_code,
        signal: o.signal,
        failure: failure as i32,
        message,
        stdout_tail: o.stdout_tail.clone(),
        stderr_tail: o.stderr_tail.clone(),
        infra_event,
        ..AttemptFinished::default()
    }
}
