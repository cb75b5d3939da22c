//! Readiness probes for service tasks: an exec, TCP or HTTP check tried every
//! interval until it first passes or the warm-up window ends.
//!
//! A try has three outcomes, kept apart because the people reading them must
//! tell "nothing answered" (the service is not listening yet, the command
//! could not run) from "it answered no" (the health check itself fails).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gantry_proto::v1 as pb;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Warm-up window when the probe gives 0.
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(60);
/// Time between tries when the probe gives 0.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Limit of one try when the probe gives 0.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Output kept from one try: an exec probe's stdout+stderr, an HTTP body.
pub const DETAIL_BYTES: usize = 1024;
/// The most a diagnostics text holds: it travels in every Ready and Finished
/// report and is stored with the attempt, so it must stay small.
pub const DIAGNOSTICS_BYTES: usize = 4 * 1024;
/// Where TCP and HTTP probes connect when the probe names no host.
const DEFAULT_HOST: &str = "127.0.0.1";
/// A warm-up failure's message carries at most this much of the last outcome
/// (the diagnostics carry all of it).
const MESSAGE_OUTCOME_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("the probe has no check (exec, tcp or http)")]
    NoCheck,
    #[error("exec probe: argv is empty")]
    EmptyArgv,
    #[error("port {0} is not a TCP port (1-65535)")]
    BadPort(u32),
    #[error("http probe: path {0:?} must start with '/'")]
    BadPath(String),
}

/// What one try saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed(String),
    /// It answered no: the command exited non-zero or was killed, or the
    /// server answered with a status other than 2xx/3xx.
    Failed(String),
    /// Nothing answered: connect refused, reset or timed out; the command
    /// could not be started or did not finish in time.
    Unreachable(String),
}

/// The check a probe runs, resolved from the spec (defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// argv run directly (no shell) in `dir`.
    Exec {
        argv: Vec<String>,
        dir: PathBuf,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Http {
        host: String,
        port: u16,
        path: String,
    },
}

/// A readiness probe ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub check: Check,
    pub warmup: Duration,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Where probing stands; kept outside [`wait_ready`] so that the caller still
/// has the diagnostics when it stops waiting early (the task exited).
#[derive(Debug, Clone)]
pub struct Tally {
    probe: String,
    warmup: Duration,
    tries: u32,
    unreachable: u32,
    failed: u32,
    last: Option<Outcome>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Trying,
    Ready,
    Expired,
}

/// Tries `probe` every interval until the first pass (`Ok`) or the end of
/// the warm-up window (`Err`); both carry the diagnostics.
pub async fn wait_ready(probe: &Probe, tally: &mut Tally) -> Result<String, String> {
    let deadline = Instant::now() + probe.warmup;
    loop {
        let began = Instant::now();
        if began >= deadline {
            tally.state = State::Expired;
            return Err(tally.diagnostics());
        }
        // A try never runs past the window: the verdict comes on time.
        let outcome = probe.try_within(probe.timeout.min(deadline - began)).await;
        if tally.record(outcome) {
            return Ok(tally.diagnostics());
        }
        tokio::time::sleep_until((began + probe.interval).min(deadline)).await;
    }
}

// === impl Outcome ===

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed(_))
    }

    pub fn detail(&self) -> &str {
        match self {
            Outcome::Passed(d) | Outcome::Failed(d) | Outcome::Unreachable(d) => d,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Outcome::Passed(_) => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::Unreachable(_) => "unreachable",
        };
        write!(f, "{kind}: {}", self.detail())
    }
}

// === impl Probe ===

impl Probe {
    /// Resolves a spec's probe; exec probes run in `dir`, the task's
    /// working directory.
    pub fn from_spec(spec: &pb::Probe, dir: &Path) -> Result<Self, ProbeError> {
        use pb::probe::Check as C;
        let check = match spec.check.as_ref().ok_or(ProbeError::NoCheck)? {
            C::Exec(e) if e.argv.is_empty() => return Err(ProbeError::EmptyArgv),
            C::Exec(e) => Check::Exec {
                argv: e.argv.clone(),
                dir: dir.to_owned(),
            },
            C::Tcp(t) => Check::Tcp {
                host: host(&t.host),
                port: port(t.port)?,
            },
            C::Http(h) => {
                let path = if h.path.is_empty() {
                    "/".to_owned()
                } else if h.path.starts_with('/') {
                    h.path.clone()
                } else {
                    return Err(ProbeError::BadPath(h.path.clone()));
                };
                Check::Http {
                    host: host(&h.host),
                    port: port(h.port)?,
                    path,
                }
            }
        };
        let or = |ms: u64, default: Duration| {
            if ms == 0 {
                default
            } else {
                Duration::from_millis(ms)
            }
        };
        Ok(Probe {
            check,
            warmup: or(spec.warmup_ms, DEFAULT_WARMUP),
            interval: or(spec.interval_ms, DEFAULT_INTERVAL),
            timeout: or(spec.timeout_ms, DEFAULT_TIMEOUT),
        })
    }

    /// One try, limited by the probe's timeout.
    pub async fn try_once(&self) -> Outcome {
        self.try_within(self.timeout).await
    }

    async fn try_within(&self, limit: Duration) -> Outcome {
        match &self.check {
            Check::Exec { argv, dir } => exec(argv, dir, limit).await,
            Check::Tcp { host, port } => tcp(host, *port, limit).await,
            Check::Http { host, port, path } => http(host, *port, path, limit).await,
        }
    }
}

/// Names the exact check, as an operator would retype it.
impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.check {
            Check::Exec { argv, dir } => {
                let quoted: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
                write!(f, "exec [{}] in {}", quoted.join(","), dir.display())
            }
            Check::Tcp { host, port } => write!(f, "tcp {}", authority(host, *port)),
            Check::Http { host, port, path } => {
                write!(f, "http GET http://{}{path}", authority(host, *port))
            }
        }
    }
}

fn host(given: &str) -> String {
    // "[::1]" is how people write an IPv6 host; connecting wants "::1".
    let host = given.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        DEFAULT_HOST.to_owned()
    } else {
        host.to_owned()
    }
}

fn port(given: u32) -> Result<u16, ProbeError> {
    match u16::try_from(given) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ProbeError::BadPort(given)),
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn bound(mut text: String, max: usize) -> String {
    const MARK: char = '…';
    if text.len() > max {
        let mut cut = max.saturating_sub(MARK.len_utf8());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push(MARK);
    }
    text
}

// === impl Tally ===

impl Tally {
    pub fn new(probe: &Probe) -> Self {
        Tally {
            probe: probe.to_string(),
            warmup: probe.warmup,
            tries: 0,
            unreachable: 0,
            failed: 0,
            last: None,
            state: State::Trying,
        }
    }

    /// Counts a try; true when it passed (the task is ready).
    pub fn record(&mut self, outcome: Outcome) -> bool {
        self.tries += 1;
        match &outcome {
            Outcome::Passed(_) => self.state = State::Ready,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Unreachable(_) => self.unreachable += 1,
        }
        let passed = outcome.passed();
        self.last = Some(outcome);
        passed
    }

    pub fn ready(&self) -> bool {
        self.state == State::Ready
    }

    pub fn last(&self) -> Option<&Outcome> {
        self.last.as_ref()
    }

    /// The one-line reason for a warm-up failure, e.g.
    /// "not ready within 30s warm-up: unreachable: connect: Connection refused".
    pub fn warm_up_failure(&self) -> String {
        let last = match &self.last {
            Some(o) => o.to_string(),
            None => "no try finished".to_owned(),
        };
        let first_line = last.lines().next().unwrap_or_default().to_owned();
        format!(
            "not ready within {} warm-up: {}",
            human(self.warmup),
            bound(first_line, MESSAGE_OUTCOME_BYTES)
        )
    }

    /// Human text, at most [`DIAGNOSTICS_BYTES`]: the probe, how many tries
    /// (and how many reached nothing vs were answered no), the last outcome.
    pub fn diagnostics(&self) -> String {
        let Some(last) = &self.last else {
            return bound(
                format!("{}: no try finished yet", self.probe),
                DIAGNOSTICS_BYTES,
            );
        };
        let verdict = match self.state {
            State::Ready => "ready".to_owned(),
            State::Expired => format!("not ready within {} warm-up", human(self.warmup)),
            State::Trying => "not ready yet".to_owned(),
        };
        let tries = if self.tries == 1 { "try" } else { "tries" };
        bound(
            format!(
                "{}: {verdict} after {} {tries} ({} unreachable, {} failed); last: {last}",
                self.probe, self.tries, self.unreachable, self.failed
            ),
            DIAGNOSTICS_BYTES,
        )
    }
}

// === tries ===

async fn tcp(host: &str, port: u16, limit: Duration) -> Outcome {
    let target = authority(host, port);
    match tokio::time::timeout(limit, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Outcome::Passed(format!("connected to {target}")),
        Ok(Err(e)) => Outcome::Unreachable(format!("connect to {target}: {e}")),
        Err(_) => Outcome::Unreachable(format!(
            "connect to {target}: timed out after {}",
            human(limit)
        )),
    }
}

/// Aborts the HTTP connection's driver when the try ends.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http(host: &str, port: u16, path: &str, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    let target = authority(host, port);
    let timed_out = |what: &str| {
        Outcome::Unreachable(format!("{what} {target}: timed out after {}", human(limit)))
    };
    let stream = match timeout_at(deadline, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Outcome::Unreachable(format!("connect to {target}: {e}")),
        Err(_) => return timed_out("connect to"),
    };
    let handshake = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream));
    let (mut sender, conn) = match timeout_at(deadline, handshake).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Outcome::Unreachable(format!("HTTP handshake with {target}: {e}")),
        Err(_) => return timed_out("HTTP handshake with"),
    };
    let _driver = AbortOnDrop(tokio::spawn(conn));
    let request = hyper::Request::get(path)
        .header(HOST, &target)
        .header(
            USER_AGENT,
            concat!("gantry-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new());
    let request = match request {
        Ok(r) => r,
        Err(e) => return Outcome::Unreachable(format!("cannot build GET {path}: {e}")),
    };
    let response = match timeout_at(deadline, sender.send_request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Outcome::Unreachable(format!("no answer from {target}: {e}")),
        Err(_) => return timed_out("waiting for an answer from"),
    };
    let status = response.status();
    let status_line = format!("{:?} {status}", response.version());
    if status.is_success() || status.is_redirection() {
        return Outcome::Passed(status_line);
    }
    let body = read_body(response.into_body(), deadline).await;
    Outcome::Failed(format!("{status_line}{}", body.describe("body")))
}

/// The start of a response body, read until the try's deadline at most.
async fn read_body(mut body: Incoming, deadline: Instant) -> Captured {
    let mut captured = Captured::default();
    while let Ok(Some(Ok(frame))) = timeout_at(deadline, body.frame()).await {
        if let Ok(data) = frame.into_data() {
            captured.push(&data);
            if captured.cut {
                break;
            }
        }
    }
    captured
}

/// The first [`DETAIL_BYTES`] of some output.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    /// More came than was kept.
    cut: bool,
}

impl Captured {
    fn push(&mut self, data: &[u8]) {
        let room = DETAIL_BYTES - self.bytes.len();
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        self.cut |= data.len() > room;
    }

    /// Reads `pipe` to its end, keeping the start.
    async fn drain(&mut self, mut pipe: impl AsyncRead + Unpin) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await
            && n > 0
        {
            // Past the limit the pipe is still read, or the probe would
            // block on a full pipe and look like a timeout.
            self.push(&buf[..n]);
        }
    }

    /// "; NAME: TEXT", or "; no NAME".
    fn describe(&self, name: &str) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let text = text.trim_end();
        if text.is_empty() {
            return format!("; no {name}");
        }
        let more = if self.cut { "…" } else { "" };
        format!("; {name}: {text}{more}")
    }
}

/// Kills the probe command's process group: on timeout, when the try is
/// abandoned (the task ended), and after the command exits (anything it
/// left behind must not hold the output pipe open or linger).
struct Group(Option<i32>);

impl Group {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn exec(argv: &[String], dir: &Path, limit: Duration) -> Outcome {
    let Some((program, args)) = argv.split_first() else {
        return Outcome::Unreachable("empty argv".into());
    };
    // One pipe for stdout and stderr, so the detail shows them interleaved
    // as a terminal would.
    let pipe = std::io::pipe().and_then(|(r, w)| Ok((r, w.try_clone()?, w)));
    let (reader, out, err) = match pipe {
        Ok(p) => p,
        Err(e) => return Outcome::Unreachable(format!("cannot create a pipe: {e}")),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // The command holds our copies of the pipe's write end: reading would
    // never see the end of the output while they are open.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::Unreachable(format!("cannot run {program:?}: {e}")),
    };
    let group = Group(child.id().and_then(|p| i32::try_from(p).ok()));
    let reader = match tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) {
        Ok(r) => r,
        Err(e) => return Outcome::Unreachable(format!("cannot read the probe's output: {e}")),
    };
    let mut output = Captured::default();
    let ran = tokio::time::timeout(limit, async {
        let wait = async {
            let status = child.wait().await;
            group.kill();
            status
        };
        let (status, ()) = tokio::join!(wait, output.drain(reader));
        status
    })
    .await;
    let status = match ran {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Outcome::Unreachable(format!("waiting for {program:?} failed: {e}"));
        }
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            return Outcome::Unreachable(format!(
                "timed out after {}; process group killed{}",
                human(limit),
                output.describe("output")
            ));
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let output = output.describe("output");
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Passed(format!("exited with code 0{output}")),
        (Some(code), _) => Outcome::Failed(format!("exited with code {code}{output}")),
        (None, Some(sig)) => Outcome::Failed(format!("killed by signal {sig}{output}")),
        (None, None) => Outcome::Failed(format!("ended without an exit status{output}")),
    }
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
