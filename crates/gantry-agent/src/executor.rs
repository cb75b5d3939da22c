//! Runs one attempt as a process in a process group of its own: argv
//! executed directly (a shell only when the job asks for one), an empty
//! working directory of its own (see `scratch`), live output in bounded chunks, a timeout, and cancel
//! that kills the whole group (SIGTERM, then SIGKILL after a grace period).
//! A service task with a readiness probe is reported ready when the probe
//! first passes, and killed if it does not within its warm-up window.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use gantry_proto::v1::agent_message::Msg;
use gantry_proto::v1::{
    AgentMessage, AttemptFinished, AttemptReady, AttemptStarted, AttemptToken, FailureClass,
    JobSpec, OutputChunk, OutputStream,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use crate::probe;

/// Largest live output chunk sent to the replica.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Output kept for the final report, per stream (the log keeps 16 KiB).
pub const TAIL_BYTES: usize = 16 * 1024;

/// Counts an attempt as running while alive.
struct Running<'a>(&'a crate::stats::AgentStats);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the agent stopped an attempt before it exited by itself.
#[derive(Debug)]
enum Stop {
    Timeout,
    Cancel(String),
    /// The readiness probe did not pass within the warm-up window.
    WarmUp(String),
}

pub struct Execution {
    pub token: AttemptToken,
    pub spec: JobSpec,
    /// Where attempts whose job names no working directory run.
    pub scratch: std::sync::Arc<crate::scratch::ScratchDirs>,
    pub kill_grace: Duration,
    pub events: mpsc::Sender<AgentMessage>,
    pub cancel: oneshot::Receiver<String>,
    /// Where to record the attempt's process group once it runs, so that an
    /// agent restarted after a crash can kill what its previous life left.
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
fn command_line(spec: &JobSpec) -> Vec<String> {
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
    let fresh = if exec.spec.working_dir.is_empty() {
        match scratch.take().await {
            Ok(s) => Some(s),
            Err(e) => {
                return finished(
                    &exec.token,
                    FailureClass::Infra,
                    format!("cannot create a working directory: {e}"),
                );
            }
        }
    } else {
        None
    };
    let dir = fresh
        .as_ref()
        .map_or_else(|| PathBuf::from(&exec.spec.working_dir), |s| s.path.clone());
    let report = run_in(&dir, exec).await;
    if let Some(s) = fresh {
        scratch.give_back(s).await;
    }
    report
}

/// [`run`] in the working directory `dir`.
async fn run_in(dir: &Path, exec: Execution) -> AttemptFinished {
    let Execution {
        token,
        spec,
        scratch: _,
        kill_grace,
        events,
        cancel,
        record,
        stats,
        gpus,
    } = exec;
    let readiness = match spec.readiness.as_ref() {
        None => None,
        Some(p) => match probe::Probe::from_spec(p, dir) {
            Ok(p) => Some(p),
            Err(e) => {
                return finished(
                    &token,
                    FailureClass::Workload,
                    format!("invalid readiness probe: {e}"),
                );
            }
        },
    };
    let argv = command_line(&spec);
    let Some(program) = argv.first() else {
        return finished(&token, FailureClass::Workload, "empty argv".into());
    };
    // A missing working directory makes spawn fail with the same error as
    // a missing program: say which it is.
    if !dir.as_os_str().is_empty() && !dir.is_dir() {
        return finished(
            &token,
            FailureClass::Workload,
            format!(
                "working directory {} does not exist on this node (or is not a directory)",
                dir.display()
            ),
        );
    }
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .envs(&spec.env)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so cancel and timeout reach every child.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(gpus) = &gpus {
        pin_gpus(&mut cmd, gpus);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return finished(
                &token,
                FailureClass::Workload,
                format!("cannot start {program:?}: {e}"),
            );
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    if let (Some(journal), Some(pgid)) = (&record, pgid) {
        journal.started(&token, pgid);
    }
    send(
        &events,
        Msg::Started(AttemptStarted {
            attempt: Some(token.clone()),
        }),
    );
    let stdout = child.stdout.take().map(|s| {
        let (t, e, st) = (token.clone(), events.clone(), stats.clone());
        tokio::spawn(pump(s, t, OutputStream::Stdout, e, st))
    });
    let stderr = child.stderr.take().map(|s| {
        let (t, e, st) = (token.clone(), events.clone(), stats.clone());
        tokio::spawn(pump(s, t, OutputStream::Stderr, e, st))
    });

    let mut tally = readiness.as_ref().map(probe::Tally::new);
    let (status, stop) = {
        let ready = become_ready(readiness.as_ref(), tally.as_mut(), &token, &events);
        wait_or_stop(&mut child, pgid, &spec, cancel, kill_grace, ready).await
    };
    // Whatever the main process left behind in its group goes too.
    if let Some(pgid) = pgid {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    let stdout_tail = match stdout {
        Some(h) => h.await.unwrap_or_default(),
        None => String::new(),
    };
    let stderr_tail = match stderr {
        Some(h) => h.await.unwrap_or_default(),
        None => String::new(),
    };
    let mut report = report(&token, status, stop, &spec);
    report.stdout_tail = stdout_tail;
    report.stderr_tail = stderr_tail;
    // Ready or not, the report says what the probe saw.
    report.diagnostics = tally.map(|t| t.diagnostics()).unwrap_or_default();
    report
}

/// Exposes exactly `gpus` to the task, whatever the job's env says: an empty
/// list hides every GPU.
fn pin_gpus(cmd: &mut Command, gpus: &[u32]) {
    let list = gpus
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    cmd.env("CUDA_VISIBLE_DEVICES", &list)
        .env("NVIDIA_VISIBLE_DEVICES", &list)
        // The indices are NVML's, which follow the PCI bus; CUDA's default
        // order (fastest first) can differ on mixed nodes.
        .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
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

async fn wait_or_stop(
    child: &mut Child,
    pgid: Option<i32>,
    spec: &JobSpec,
    mut cancel: oneshot::Receiver<String>,
    grace: Duration,
    ready: impl std::future::Future<Output = String>,
) -> (std::io::Result<ExitStatus>, Option<Stop>) {
    let timeout = async {
        if spec.timeout_ms == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(spec.timeout_ms)).await;
    };
    let stop = tokio::select! {
        status = child.wait() => return (status, None),
        () = timeout => Stop::Timeout,
        reason = &mut cancel => Stop::Cancel(reason.unwrap_or_else(|_| "agent shutting down".into())),
        message = ready => Stop::WarmUp(message),
    };
    if let Some(pgid) = pgid {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    }
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            child.wait().await
        }
    };
    (status, Some(stop))
}

fn report(
    token: &AttemptToken,
    status: std::io::Result<ExitStatus>,
    stop: Option<Stop>,
    spec: &JobSpec,
) -> AttemptFinished {
    use std::os::unix::process::ExitStatusExt;
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return finished(
                token,
                FailureClass::Infra,
                format!("waiting for the task failed: {e}"),
            );
        }
    };
    let (failure, message) = match (&stop, status.code(), status.signal()) {
        (Some(Stop::Timeout), _, _) => (
            FailureClass::Timeout,
            format!(
                "timed out after {} ms; process group killed",
                spec.timeout_ms
            ),
        ),
        (Some(Stop::Cancel(reason)), _, _) => (
            FailureClass::Cancelled,
            format!("cancelled ({reason}); process group killed"),
        ),
        (Some(Stop::WarmUp(message)), _, _) => (
            FailureClass::WarmUp,
            format!("{message}; process group killed"),
        ),
        (None, Some(0), _) => (FailureClass::Unspecified, String::new()),
        (None, Some(code), _) => (FailureClass::Workload, format!("exited with code {code}")),
        (None, None, Some(sig)) => (FailureClass::Workload, format!("killed by signal {sig}")),
        (None, None, None) => (
            FailureClass::Workload,
            "ended without an exit status".into(),
        ),
    };
    AttemptFinished {
        attempt: Some(token.clone()),
        exit_code: status.code(),
        signal: status.signal(),
        failure: failure as i32,
        message,
        ..AttemptFinished::default()
    }
}

/// Streams one output pipe in chunks and returns its tail.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    token: AttemptToken,
    stream: OutputStream,
    events: mpsc::Sender<AgentMessage>,
    stats: std::sync::Arc<crate::stats::AgentStats>,
) -> String {
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    let mut tail: VecDeque<u8> = VecDeque::with_capacity(TAIL_BYTES);
    let mut sequence = 0;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        for b in data {
            if tail.len() == TAIL_BYTES {
                tail.pop_front();
            }
            tail.push_back(*b);
        }
        let sent = send(
            &events,
            Msg::Output(OutputChunk {
                attempt: Some(token.clone()),
                stream: stream as i32,
                sequence,
                data: data.to_vec(),
            }),
        );
        let counter = if sent {
            &stats.output_bytes
        } else {
            &stats.output_dropped_bytes
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        sequence += 1;
    }
    String::from_utf8_lossy(&Vec::from(tail)).into_owned()
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
