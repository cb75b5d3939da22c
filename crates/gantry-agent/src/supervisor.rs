//! The per-task supervisor: a small process of its own (`gantry supervise`,
//! started by the agent for every attempt) that starts the task, reaps it,
//! and stops it when the agent's lease runs out, whether or not the agent
//! is still alive.
//!
//! The agent sends the spec on the supervisor's stdin; the supervisor
//! listens on an abstract Unix socket named after the agent and the attempt
//! (only processes of its own user may talk to it), answers "ok" on stdout,
//! makes the task's cgroup, and starts the task in it (the cgroup joined,
//! the session left, rlimits set and the task's user taken between fork and
//! exec). Then it serves one agent connection at a time: live output,
//! `Started` and `Finished` frames out; `Lease`, `Stop` and `Ack` in.
//!
//! The lease is a deadline on CLOCK_BOOTTIME (which keeps counting through a
//! suspend), renewed by the agent while the cluster confirms its node is
//! alive (see docs/architecture.md, "Fencing"). When it passes, the whole
//! task is killed: the agent died, froze or lost the cluster, and the
//! cluster will soon run the task elsewhere. When the task's main process
//! exits, whatever it left in its cgroup is killed and its output drained
//! with a bound; the result goes to the connected agent, or, if none takes
//! it within a few seconds, to `DATA_DIR/results/` for the next agent.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::cgroup::{Limits, TaskCgroup};

/// Largest frame on the supervisor socket (output chunks are 64 KiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Output kept for the final report, per stream.
pub const TAIL_BYTES: usize = 16 * 1024;
/// How long the output of a finished task is drained once its main
/// process exited (children holding the pipes were killed).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long a result waits for an agent before it is written to disk.
const HOLD_RESULT: Duration = Duration::from_secs(3);
/// How often the lease and the stop deadline are checked.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// How long a kill keeps at a cgroup until it is empty.
const KILL_LIMIT: Duration = Duration::from_secs(5);
/// Output frames queued towards a slow agent before output is dropped.
const OUT_QUEUE: usize = 256;

/// What the agent tells the supervisor to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// The abstract socket name to listen on.
    pub socket: String,
    pub argv: Vec<String>,
    /// The task's whole environment.
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    /// (uid, gid) to run as; `None` keeps the supervisor's.
    pub user: Option<(u32, u32)>,
    /// The task's cgroup; `None` where limits cannot be enforced.
    pub cgroup: Option<TaskCgroup>,
    pub limits: Limits,
    /// RLIMIT_NOFILE and RLIMIT_CORE.
    pub nofile: u64,
    pub core: u64,
    /// Where a result no agent took is left.
    pub result_file: PathBuf,
    /// The first lease deadline (CLOCK_BOOTTIME, ms).
    pub lease_ms: u64,
    /// The job's timeout (enforced by the agent; kept for one that re-attaches).
    pub timeout_ms: u64,
}

/// What a supervisor says first to an agent while its task runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
    /// CLOCK_BOOTTIME ms.
    pub started_ms: u64,
    pub dir: PathBuf,
    pub timeout_ms: u64,
    pub memory_limit_bytes: u64,
}

/// What happened to the task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the task.
    pub oom: bool,
    /// The lease ran out and the task was killed (the reason).
    pub fenced: Option<String>,
    /// The lease (CLOCK_BOOTTIME ms) that ran out: the same for every task
    /// of the agent, so the cluster counts the lapse once.
    #[serde(default)]
    pub fenced_lease_ms: u64,
    /// The task could not be started: the program (workload's fault).
    pub spawn_error: Option<String>,
    /// The task could not be started: the node (cgroup, user).
    pub setup_error: Option<String>,
    /// Processes still in the cgroup after the kill (stuck in the kernel).
    pub escaped: usize,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub cpu_usage_ns: Option<u64>,
    pub started_ms: u64,
    /// The memory limit the task had (0: none), for the OOM message.
    pub memory_limit_bytes: u64,
}

/// Frames between the agent and a supervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Supervisor → agent: the task runs.
    Started(Box<Started>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Finished(Box<Outcome>),
    /// Agent → supervisor: the new lease deadline (CLOCK_BOOTTIME ms).
    Lease(u64),
    /// Agent → supervisor: SIGTERM now, SIGKILL after `grace_ms`.
    Stop {
        grace_ms: u64,
    },
    /// Agent → supervisor: the result is the agent's now; exit.
    Ack,
}

/// Milliseconds on CLOCK_BOOTTIME: monotonic, and counting while suspended.
pub fn boot_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is always readable on Linux");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0) / 1_000_000
}

pub async fn write_frame(w: &mut (impl AsyncWrite + Unpin), f: &Frame) -> std::io::Result<()> {
    let (tag, body): (u8, std::borrow::Cow<[u8]>) = match f {
        Frame::Started(s) => (b'S', serde_json::to_vec(s)?.into()),
        Frame::Stdout(d) => (b'O', d.as_slice().into()),
        Frame::Stderr(d) => (b'E', d.as_slice().into()),
        Frame::Finished(o) => (b'F', serde_json::to_vec(o)?.into()),
        Frame::Lease(ms) => (b'L', ms.to_be_bytes().to_vec().into()),
        Frame::Stop { grace_ms } => (b'K', grace_ms.to_be_bytes().to_vec().into()),
        Frame::Ack => (b'A', Vec::new().into()),
    };
    let len = u32::try_from(body.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut buf = Vec::with_capacity(5 + body.len());
    buf.push(tag);
    buf.extend(len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await
}

/// The next frame; `None` at a clean end of stream.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Frame>> {
    let tag = match r.read_u8().await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("frame of {len} bytes (limit {MAX_FRAME})")));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    let u64_of = |b: &[u8]| -> std::io::Result<u64> {
        Ok(u64::from_be_bytes(
            b.try_into().map_err(|_| bad("bad frame".into()))?,
        ))
    };
    Ok(Some(match tag {
        b'S' => Frame::Started(Box::new(
            serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?,
        )),
        b'O' => Frame::Stdout(body),
        b'E' => Frame::Stderr(body),
        b'F' => Frame::Finished(Box::new(
            serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?,
        )),
        b'L' => Frame::Lease(u64_of(&body)?),
        b'K' => Frame::Stop {
            grace_ms: u64_of(&body)?,
        },
        b'A' => Frame::Ack,
        t => return Err(bad(format!("unknown frame {t}"))),
    }))
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// The socket address of a supervisor.
pub fn address(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

/// Connects to a running supervisor; `Err` when none listens there.
pub async fn connect(name: &str) -> std::io::Result<tokio::net::UnixStream> {
    let s = std::os::unix::net::UnixStream::connect_addr(&address(name)?)?;
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

/// `gantry supervise`: runs the spec read from stdin; the exit code is 0
/// once the result is delivered or written.
pub fn main() -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gantry supervise: cannot start a runtime: {e}");
            return 70;
        }
    };
    match rt.block_on(supervise()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gantry supervise: {e}");
            1
        }
    }
}

async fn supervise() -> Result<(), String> {
    let mut raw = Vec::new();
    tokio::io::stdin()
        .take(16 << 20)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("reading the spec: {e}"))?;
    let spec: Spec = serde_json::from_slice(&raw).map_err(|e| format!("bad spec: {e}"))?;
    // Out of the agent's session: its terminal's signals are not ours.
    let _ = nix::unistd::setsid();
    let listener = std::os::unix::net::UnixListener::bind_addr(
        &address(&spec.socket).map_err(|e| format!("socket name {:?}: {e}", spec.socket))?,
    )
    .map_err(|e| format!("cannot listen on {:?}: {e}", spec.socket))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| e.to_string())?;
    // The agent waits for this line before it connects; then stdout goes.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(b"ok\n").and_then(|()| out.flush());
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let mut task = Supervised::start(&spec);
    task.serve(&spec, listener).await;
    Ok(())
}

/// The connected agent, if any: frames queued towards it.
type AgentLink = Option<mpsc::Sender<Frame>>;

struct Supervised {
    child: Option<tokio::process::Child>,
    pid: i32,
    outcome: Outcome,
    tails: Vec<tokio::task::JoinHandle<String>>,
    out_rx: mpsc::Receiver<Frame>,
    /// The slot's OOM kills and CPU time before this task (slots are reused).
    oom_before: u64,
    cpu_before: u64,
}

impl Supervised {
    /// Makes the cgroup and starts the task; a failure is kept as the outcome.
    fn start(spec: &Spec) -> Supervised {
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let mut s = Supervised {
            child: None,
            pid: 0,
            outcome: Outcome {
                started_ms: boot_ms(),
                memory_limit_bytes: spec.limits.memory_bytes,
                ..Outcome::default()
            },
            tails: Vec::new(),
            out_rx,
            oom_before: 0,
            cpu_before: 0,
        };
        // The agent may have stopped (frozen, say) between handing over the
        // spec and now: a task is never started past its lease.
        let now = boot_ms();
        if now >= spec.lease_ms {
            s.outcome.fenced_lease_ms = spec.lease_ms;
            s.outcome.fenced = Some(format!(
                "the agent's lease had run out {} ms before the task could start; it was not started",
                now - spec.lease_ms
            ));
            return s;
        }
        let procs = match &spec.cgroup {
            None => Vec::new(),
            Some(cg) => match cg
                .create(&spec.limits)
                .and_then(|()| cg.procs_files(&spec.limits))
            {
                Ok(files) => {
                    // A slot is handed out only once emptied: anything in it
                    // belongs to someone else.
                    if !cg.pids().is_empty() {
                        s.outcome.setup_error = Some(
                            "the task's cgroup slot still holds processes of an earlier task"
                                .into(),
                        );
                        return s;
                    }
                    s.oom_before = cg.oom_kills();
                    s.cpu_before = cg.cpu_usage_ns().unwrap_or(0);
                    files
                }
                Err(e) => {
                    s.outcome.setup_error = Some(format!("cannot make the task's cgroup: {e}"));
                    return s;
                }
            },
        };
        let Some(program) = spec.argv.first() else {
            s.outcome.spawn_error = Some("empty argv".into());
            return s;
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let fds: Vec<i32> = procs.iter().map(AsRawFd::as_raw_fd).collect();
        // Lowering is always allowed; raising past the hard limit is not
        // (without CAP_SYS_RESOURCE), so the task gets at most what we have.
        let (_, hard_nofile) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .unwrap_or((0, 0));
        let nofile = spec.nofile.min(hard_nofile);
        let (_, hard_core) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE)
                .unwrap_or((0, 0));
        let (user, core) = (spec.user, spec.core.min(hard_core));
        #[allow(unsafe_code)]
        // SAFETY: between fork and exec only async-signal-safe system calls
        // are made (write, setsid, setrlimit, setgroups, setgid, setuid,
        // prctl), on values prepared before the fork; nothing allocates.
        unsafe {
            cmd.pre_exec(move || child_setup(&fds, user, nofile, core));
        }
        match cmd.spawn() {
            Ok(mut child) => {
                s.pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
                if let Some(o) = child.stdout.take() {
                    s.tails
                        .push(tokio::spawn(pump(o, out_tx.clone(), Frame::Stdout)));
                }
                if let Some(e) = child.stderr.take() {
                    s.tails.push(tokio::spawn(pump(e, out_tx, Frame::Stderr)));
                }
                s.child = Some(child);
            }
            Err(e) if e.raw_os_error().is_some_and(is_setup_errno) => {
                s.outcome.setup_error = Some(format!("cannot set up the task's process: {e}"));
            }
            Err(e) => s.outcome.spawn_error = Some(format!("cannot start {program:?}: {e}")),
        }
        drop(procs);
        s
    }

    async fn serve(&mut self, spec: &Spec, listener: tokio::net::UnixListener) {
        let me = nix::unistd::geteuid().as_raw();
        let mut lease = spec.lease_ms;
        let mut agent: AgentLink = None;
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Frame>(64);
        let mut kill_at: Option<tokio::time::Instant> = None;
        let mut finished_at: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        if self.child.is_none() {
            finished_at = Some(tokio::time::Instant::now());
        }
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    // Only the agent's user; a task of another user cannot renew its lease.
                    if !stream.peer_cred().is_ok_and(|c| c.uid() == me) {
                        continue;
                    }
                    let link = attach_agent(stream, cmd_tx.clone());
                    // Started whenever the task was started (even if it has
                    // ended since), then the result if there is one.
                    if self.pid > 0 {
                        let _ = link.try_send(Frame::Started(Box::new(Started {
                            pid: self.pid,
                            started_ms: self.outcome.started_ms,
                            dir: spec.dir.clone(),
                            timeout_ms: spec.timeout_ms,
                            memory_limit_bytes: spec.limits.memory_bytes,
                        })));
                    }
                    if finished_at.is_some() {
                        self.flush_output(&link);
                        let _ = link.try_send(Frame::Finished(Box::new(self.outcome.clone())));
                    }
                    agent = Some(link);
                }
                Some(frame) = cmd_rx.recv() => match frame {
                    // Every lease an agent sends is a valid bound; a
                    // restarted one knows less than its predecessor did.
                    Frame::Lease(ms) => lease = lease.max(ms),
                    Frame::Stop { grace_ms } if finished_at.is_none() => {
                        self.signal(spec, nix::sys::signal::Signal::SIGTERM);
                        let at = tokio::time::Instant::now() + Duration::from_millis(grace_ms);
                        kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
                    }
                    Frame::Ack if finished_at.is_some() => {
                        return;
                    }
                    _ => {}
                },
                // Held (up to the queue's bound) while no agent is connected.
                Some(out) = self.out_rx.recv(), if agent.is_some() => {
                    if let Some(a) = &agent {
                        // A slow or frozen agent loses live output, never the task's time.
                        let _ = a.try_send(out);
                    }
                }
                status = wait(&mut self.child), if finished_at.is_none() => {
                    self.finish(spec, status).await;
                    finished_at = Some(tokio::time::Instant::now());
                    if let Some(a) = &agent {
                        self.flush_output(a);
                        let _ = a.try_send(Frame::Finished(Box::new(self.outcome.clone())));
                    }
                }
                _ = tick.tick() => {
                    if agent.as_ref().is_some_and(mpsc::Sender::is_closed) {
                        agent = None;
                    }
                    match finished_at {
                        None if boot_ms() >= lease => {
                            if self.outcome.fenced.is_none() {
                                self.outcome.fenced_lease_ms = lease;
                                let late = boot_ms().saturating_sub(lease);
                                self.outcome.fenced = Some(format!(
                                    "the agent's lease ran out {late} ms ago (agent dead, frozen or cut off from the cluster); the task was killed"
                                ));
                            }
                            self.kill(spec);
                        }
                        None => {
                            if kill_at.is_some_and(|k| tokio::time::Instant::now() >= k) {
                                self.kill(spec);
                            }
                        }
                        Some(at) if agent.is_none() && at.elapsed() >= HOLD_RESULT => {
                            self.leave_result(spec);
                                return;
                        }
                        Some(at) if at.elapsed() >= HOLD_RESULT * 10 => {
                            // An agent that holds the socket and never acknowledges.
                            self.leave_result(spec);
                                return;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }

    /// Output still queued goes before the result.
    fn flush_output(&mut self, link: &mpsc::Sender<Frame>) {
        while let Ok(f) = self.out_rx.try_recv() {
            let _ = link.try_send(f);
        }
    }

    fn signal(&self, spec: &Spec, sig: nix::sys::signal::Signal) {
        match &spec.cgroup {
            Some(cg) => cg.signal(sig),
            None if self.pid > 1 => {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid), sig);
            }
            None => {}
        }
    }

    /// SIGKILL to the whole task.
    fn kill(&self, spec: &Spec) {
        match &spec.cgroup {
            Some(cg) => {
                // A process in uninterruptible sleep dies when it leaves it.
                cg.kill_all(KILL_LIMIT);
            }
            None => self.signal(spec, nix::sys::signal::Signal::SIGKILL),
        }
    }

    /// The main process exited: the rest goes, the output is drained.
    async fn finish(&mut self, spec: &Spec, status: std::io::Result<std::process::ExitStatus>) {
        use std::os::unix::process::ExitStatusExt;
        self.kill(spec);
        if let Some(cg) = &spec.cgroup {
            self.outcome.escaped = cg.pids().len();
            self.outcome.oom = cg.oom_kills() > self.oom_before;
            self.outcome.cpu_usage_ns =
                cg.cpu_usage_ns().map(|n| n.saturating_sub(self.cpu_before));
        }
        match status {
            Ok(s) => {
                self.outcome.exit_code = s.code();
                self.outcome.signal = s.signal();
            }
            Err(e) => self.outcome.setup_error = Some(format!("waiting for the task failed: {e}")),
        }
        let tails: Vec<_> = self.tails.drain(..).collect();
        let mut got = Vec::new();
        for t in tails {
            match tokio::time::timeout(DRAIN_LIMIT, t).await {
                Ok(Ok(tail)) => got.push(tail),
                _ => got.push(String::new()),
            }
        }
        let mut got = got.into_iter();
        self.outcome.stdout_tail = got.next().unwrap_or_default();
        self.outcome.stderr_tail = got.next().unwrap_or_default();
    }

    fn leave_result(&self, spec: &Spec) {
        let Ok(body) = serde_json::to_vec(&self.outcome) else {
            return;
        };
        let tmp = spec.result_file.with_extension("tmp");
        // Readable by the agent's user only, like the rest of its state.
        let written = {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(&body))
                .and_then(|()| std::fs::rename(&tmp, &spec.result_file))
        };
        if let Err(e) = written {
            eprintln!(
                "gantry supervise: cannot write {}: {e}",
                spec.result_file.display()
            );
        }
    }
}

/// errnos of the privileged set-up between fork and exec (not the program's).
fn is_setup_errno(errno: i32) -> bool {
    use nix::libc;
    matches!(errno, libc::EPERM | libc::EINVAL | libc::EAGAIN)
}

async fn wait(
    child: &mut Option<tokio::process::Child>,
) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Reads frames from an agent connection into `cmds`; returns the sender
/// for frames towards it (closed once the connection ends).
fn attach_agent(stream: tokio::net::UnixStream, cmds: mpsc::Sender<Frame>) -> mpsc::Sender<Frame> {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let (gone, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    // The writer ends (closing `tx`) when the agent hangs up or stops reading.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) if write_frame(&mut wr, &f).await.is_ok() => {}
                    _ => break,
                },
                _ = &mut gone_rx => break,
            }
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(f)) = read_frame(&mut rd).await {
            if cmds.send(f).await.is_err() {
                break;
            }
        }
        let _ = gone.send(());
    });
    tx
}

/// Between fork and exec: join the cgroup, leave the session, set rlimits,
/// take the task's user. Only system calls, on values made before the fork.
fn child_setup(
    procs: &[i32],
    user: Option<(u32, u32)>,
    nofile: u64,
    core: u64,
) -> std::io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    use nix::unistd::{Gid, Uid};
    for fd in procs {
        let fd = borrowed(*fd);
        nix::unistd::write(fd, b"0")?;
    }
    nix::unistd::setsid()?;
    if nofile > 0 {
        setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile)?;
    }
    setrlimit(Resource::RLIMIT_CORE, core, core)?;
    if let Some((uid, gid)) = user {
        nix::unistd::setgroups(&[])?;
        nix::unistd::setgid(Gid::from_raw(gid))?;
        nix::unistd::setuid(Uid::from_raw(uid))?;
    }
    // Should the supervisor itself be killed, the task goes too (set last:
    // a change of user clears it).
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    Ok(())
}

/// A borrowed descriptor for a raw one known to be open.
fn borrowed(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    #[allow(unsafe_code)]
    // SAFETY: `fd` is one of the cgroup.procs files the supervisor opened
    // before forking; they are kept open until the child has exec'd.
    unsafe {
        std::os::fd::BorrowedFd::borrow_raw(fd)
    }
}

/// Streams one output pipe as frames; returns its tail.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    out: mpsc::Sender<Frame>,
    frame: fn(Vec<u8>) -> Frame,
) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail: VecDeque<u8> = VecDeque::with_capacity(TAIL_BYTES);
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        let keep = data.len().min(TAIL_BYTES);
        let over = (tail.len() + keep).saturating_sub(TAIL_BYTES);
        tail.drain(..over);
        tail.extend(&data[data.len() - keep..]);
        // Dropped when the queue is full: live output is best effort.
        let _ = out.try_send(frame(data.to_vec()));
    }
    String::from_utf8_lossy(&Vec::from(tail)).into_owned()
}
