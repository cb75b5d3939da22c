//! The Gantry agent (`gantry agent`): registers the node's capacity, holds
//! one bidirectional stream to any replica (outbound only), runs the
//! attempts it is assigned and streams back output and results.
//!
//! Running attempts do not depend on the stream: when a replica dies the
//! agent reconnects to another one (exponential backoff with jitter),
//! reports what it still runs, and re-sends finished reports the cluster has
//! not acknowledged. The replica tells it to kill anything the cluster no
//! longer assigns to it.

pub mod capacity;
pub mod cgroup;
pub mod confine;
pub mod executor;
mod finished;
pub mod gpu;
pub mod health;
pub mod journal;
mod lease;
pub mod probe;
mod recover;

pub use lease::MIN_FENCE_WINDOW;
use lease::{FIRST_LEASE_POLL, LEASE_WAIT, check_grace, fence_watch, renew_lease};
use recover::{recover, resume};
pub mod scratch;
pub mod stats;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gantry_proto::transport::{MAX_MESSAGE_BYTES, Transport};
use gantry_proto::v1::agent_message::Msg as AgentMsg;
use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::server_message::Msg as ServerMsg;
use gantry_proto::v1::{
    AgentMessage, AttemptFinished, AttemptToken, Heartbeat, Hello, JobSpec, Resources,
};
use rand::Rng;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// Events queued towards the replica (output is dropped past this).
const EVENT_QUEUE: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often repeated connection failures are summarised in the log.
const WARN_SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub servers: Vec<String>,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    /// 0: no limit besides resources.
    pub max_tasks: u32,
    /// Overrides for detected capacity.
    pub cpu_millis: Option<u64>,
    pub memory_mib: Option<u64>,
    /// How long a cancelled task gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// On shutdown: how long running attempts may take to finish before
    /// they are stopped and handed back to the cluster.
    pub shutdown_grace: Duration,
    pub transport: Transport,
    /// Where to serve `/metrics`, `/ready` and `/live` over HTTP; off when unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Health check thresholds and interval.
    pub health: health::HealthConfig,
    /// A GPU inventory file (test/simulation input) read instead of NVML.
    pub gpu_inventory: Option<PathBuf>,
    /// Supervisors, cgroups, the task user and limits.
    pub confine: confine::ConfineConfig,
    /// How long before the cluster's node grace ends the agent's tasks are
    /// stopped when the cluster stops confirming the node.
    pub fence_margin: Duration,
}

type Key = (String, u32, u32);

fn key(t: &AttemptToken) -> Key {
    (t.job_id.clone(), t.task, t.attempt)
}

struct Running {
    cancel: Option<oneshot::Sender<String>>,
    handle: JoinHandle<()>,
    /// Not started yet: waiting for a lease, assigned on this stream
    /// (`Shared::stream`). Dropped when another stream opens.
    waiting_on: Option<u64>,
}

/// Shared between the stream and the executors.
struct Shared {
    cfg: AgentConfig,
    capacity: Resources,
    gpus: Vec<gantry_proto::v1::GpuInfo>,
    running: Mutex<HashMap<Key, Running>>,
    /// Finished reports not yet acknowledged by the cluster.
    unacked: Mutex<BTreeMap<Key, AttemptFinished>>,
    /// Attempts reported finished lately (see `finished`).
    finished: Mutex<finished::Finished>,
    events: mpsc::Sender<AgentMessage>,
    stats: Arc<stats::AgentStats>,
    /// Which process groups attempts run in, for recovery after a crash.
    journal: journal::Journal,
    /// Working directories for attempts that name none.
    scratch: Arc<scratch::ScratchDirs>,
    /// Where GPU facts come from; the health checks read it every interval.
    gpu_source: Arc<gpu::GpuSource>,
    /// The latest health report and GPU telemetry: the check loop writes it,
    /// the hello, heartbeats and /metrics read it.
    health: watch::Sender<Arc<health::HealthSnapshot>>,
    /// The last heartbeat round trips on the current stream, for the
    /// latency check.
    rtt: Mutex<health::RttWindow>,
    confinement: Arc<confine::Confinement>,
    /// Until when (CLOCK_BOOTTIME ms) the cluster is known not to have
    /// given this node's tasks away: supervisors stop their tasks then.
    lease: watch::Sender<u64>,
    /// The cluster's node grace, as the last welcome said (0: not known).
    grace_ms: std::sync::atomic::AtomicU64,
    /// The latest moment (CLOCK_BOOTTIME ms) the lease was seen lapsed: an
    /// assignment that arrived before it is not started after it.
    last_lapse: std::sync::atomic::AtomicU64,
    /// Set when the agent must stop (a configuration the cluster refutes).
    fatal: watch::Sender<Option<String>>,
    /// Counts streams opened (changed only while `running` is locked).
    stream: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The agent's clock for heartbeats (CLOCK_BOOTTIME ms): the replica
    /// echoes it in a pong, so no clock agreement is needed.
    fn clock_ms(&self) -> u64 {
        supervisor::boot_ms()
    }
}

async fn shared_metrics_listener(
    cfg: &AgentConfig,
) -> Result<Option<tokio::net::TcpListener>, AgentError> {
    match cfg.metrics_listen {
        Some(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|e| {
                AgentError::Config(format!("metrics_listen: cannot listen on {addr}: {e}"))
            }),
        None => Ok(None),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid agent configuration: {0}")]
    Config(String),
}

/// Runs the agent until `shutdown` resolves; then cancels every running
/// attempt (killing its process group) and waits for them to end.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    if cfg.servers.is_empty() {
        return Err(AgentError::Config(
            "servers: give at least one replica address (--servers or GANTRY_SERVERS)".into(),
        ));
    }
    if cfg.node_id.is_empty() {
        return Err(AgentError::Config("node_id: must not be empty".into()));
    }
    let work = cfg.data_dir.join("work");
    prepare_data_dir(&cfg.data_dir)?;
    cfg.health.validate().map_err(AgentError::Config)?;
    let (journal, open_attempts) = journal::Journal::open(&cfg.data_dir).map_err(|e| {
        AgentError::Config(format!(
            "data_dir: cannot write {}: {e}",
            cfg.data_dir.join(journal::FILE).display()
        ))
    })?;
    let gpu_source = Arc::new(gpu::GpuSource::detect(cfg.gpu_inventory.as_deref()));
    let gpus = gpu_source
        .inventory()
        .map_err(|e| AgentError::Config(format!("gpu_inventory: {e}")))?;
    let capacity = Resources {
        cpu_millis: cfg.cpu_millis.unwrap_or_else(capacity::cpu_millis),
        memory_mib: cfg.memory_mib.unwrap_or_else(capacity::memory_mib),
        gpus: gpus.len() as u32,
    };
    tracing::info!(node = %cfg.node_id, ?capacity, "agent starting");
    let confinement = Arc::new(
        confine::Confinement::resolve(
            &cfg.confine,
            &cfg.node_id,
            &cfg.data_dir,
            capacity.memory_mib,
        )
        .map_err(AgentError::Config)?,
    );
    log_confinement(&confinement);
    let (lease, _) = watch::channel(0u64);
    let recovered = recover(&confinement, open_attempts).await;
    confinement.adopt_slots(&recovered.busy).await;
    let keep: Vec<PathBuf> = recovered.running.iter().map(|r| r.dir.clone()).collect();
    let scratch = Arc::new(scratch::ScratchDirs::open(&work, &keep).map_err(|e| {
        AgentError::Config(format!("data_dir: cannot use {}: {e}", work.display()))
    })?);
    // Checked once before the first connection so the hello carries a
    // report and the cluster judges the node from its first moment.
    let (report, telemetry) = health::run_checks(
        &cfg.health,
        &cfg.data_dir.join("work"),
        &gpu_source,
        gpus.len(),
        None,
    )
    .await;
    health::log_verdict_change(None, &report);
    let report = health::with_limits_check(report, confinement.why_not.as_deref());
    let (health, _) = watch::channel(Arc::new(health::HealthSnapshot {
        report,
        gpus: telemetry,
    }));
    let stats = Arc::new(stats::AgentStats::default());
    let metrics = match shared_metrics_listener(&cfg).await? {
        Some(l) => {
            let (addr, task) = stats::serve(l, stats.clone(), health.subscribe())
                .map_err(|e| AgentError::Config(format!("metrics_listen: {e}")))?;
            tracing::info!(%addr, "serving /metrics, /ready and /live");
            Some(task)
        }
        None => None,
    };
    let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
    let shared = Arc::new(Shared {
        cfg,
        capacity,
        gpus,
        running: Mutex::default(),
        unacked: Mutex::new(recovered.reports),
        finished: Default::default(),
        events,
        stats,
        journal,
        scratch,
        gpu_source,
        health,
        rtt: Mutex::default(),
        confinement,
        lease,
        grace_ms: std::sync::atomic::AtomicU64::new(0),
        last_lapse: std::sync::atomic::AtomicU64::new(0),
        stream: std::sync::atomic::AtomicU64::new(0),
        fatal: watch::channel(None).0,
    });
    for r in recovered.running {
        resume(&shared, r).await;
    }
    let checks = tokio::spawn(health_loop(shared.clone()));
    let fence = tokio::spawn(fence_watch(shared.clone()));
    let connected = connect_loop(shared.clone(), events_rx);
    tokio::pin!(connected);
    let mut fatal = shared.fatal.subscribe();
    let mut failed = None;
    tokio::select! {
        () = &mut connected => {}
        Ok(reason) = fatal.wait_for(Option::is_some) => {
            failed = reason.clone();
        }
        () = shutdown => {
            // The stream stays up while running attempts finish, so their
            // results (and the cluster's hand-back) still flow.
            tokio::select! {
                () = &mut connected => {}
                () = leave(&shared) => {}
            }
        }
    }
    checks.abort();
    fence.abort();
    stop_all(&shared).await;
    if let Some(m) = metrics {
        m.abort();
    }
    if shared.running.lock().await.is_empty()
        && let Some(cg) = &shared.confinement.cgroups
    {
        cg.remove_if_empty();
    }
    match failed {
        Some(reason) => Err(AgentError::Config(reason)),
        None => Ok(()),
    }
}

/// The data dir holds the journal and results (the agent's user only);
/// tasks need to pass through it to their working directories.
fn prepare_data_dir(dir: &std::path::Path) -> Result<(), AgentError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail = |what: &std::path::Path, e: std::io::Error| {
        AgentError::Config(format!("data_dir: cannot use {}: {e}", what.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    // Traversable, not listable: tasks reach their own directories only.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| fail(dir, e))?;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).map_err(|e| fail(&work, e))?;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| fail(&work, e))?;
    let results = dir.join("results");
    match std::fs::DirBuilder::new().mode(0o700).create(&results) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(fail(&results, e)),
        _ => {}
    }
    std::fs::set_permissions(&results, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(&results, e))?;
    Ok(())
}

fn log_confinement(c: &confine::Confinement) {
    match (&c.cgroups, &c.why_not) {
        (Some(cg), _) => {
            let missing = cg.missing();
            tracing::info!(dirs = ?cg.dirs.iter().map(|(_, d)| d.display().to_string()).collect::<Vec<_>>(), "tasks run in cgroups (memory, CPU and process limits)");
            if !missing.is_empty() {
                tracing::warn!(
                    ?missing,
                    "these cgroup controllers are not mounted: their limits are not enforced"
                );
            }
        }
        (None, why) => tracing::warn!(
            reason = why.as_deref().unwrap_or("unknown"),
            "task limits are NOT enforced on this node (no usable cgroups); the node reports it and placement policy strict avoids it"
        ),
    }
    match &c.user {
        Some(u) if u.uid == 0 => tracing::warn!(
            "tasks run as root (--task-user root): a task can read this agent's keys and act as it"
        ),
        Some(u) => tracing::info!(user = %u.name, uid = u.uid, "tasks run as an unprivileged user"),
        None => tracing::info!("the agent is not root: tasks run as its own user"),
    }
}

/// An attempt's execution on this node, and the sender that cancels it.
fn execution(
    shared: &Arc<Shared>,
    token: AttemptToken,
    spec: JobSpec,
    gpus: Vec<u32>,
) -> (executor::Execution, oneshot::Sender<String>) {
    let (cancel_tx, cancel) = oneshot::channel();
    let exec = executor::Execution {
        token,
        spec,
        confinement: shared.confinement.clone(),
        lease: shared.lease.subscribe(),
        scratch: shared.scratch.clone(),
        kill_grace: shared.cfg.kill_grace,
        events: shared.events.clone(),
        cancel,
        record: Some(shared.journal.clone()),
        stats: shared.stats.clone(),
        // A node without GPUs leaves CUDA's environment as the job set it.
        gpus: (!shared.gpus.is_empty()).then_some(gpus),
    };
    (exec, cancel_tx)
}

/// An attempt ended: keep its report until the cluster acknowledges it.
async fn finish(shared: &Shared, token: AttemptToken, report: AttemptFinished) {
    let k = key(&token);
    tracing::info!(attempt = ?k, failure = report.failure, message = %report.message, "finished");
    shared.finished.lock().await.insert(k.clone());
    shared
        .unacked
        .lock()
        .await
        .insert(k.clone(), report.clone());
    shared.running.lock().await.remove(&k);
    let _ = shared.events.try_send(AgentMessage {
        msg: Some(AgentMsg::Finished(report)),
    });
}

/// A graceful exit: the node drains (no new tasks), running attempts get
/// `shutdown_grace` to finish; at the deadline the cluster stops the rest to
/// run them elsewhere (without counting a failure). Returns once nothing
/// runs and every result is acknowledged, or a little after the deadline.
async fn leave(shared: &Shared) {
    let grace = shared.cfg.shutdown_grace;
    let running = shared.running.lock().await.len();
    tracing::info!(
        running,
        ?grace,
        "shutting down: no new tasks; running ones get the grace period"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    if grace.is_zero() {
        return;
    }
    let msg = AgentMessage {
        msg: Some(AgentMsg::Leaving(gantry_proto::v1::Leaving {
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        })),
    };
    let _ = shared.events.send(msg).await;
    // Past the deadline the cluster's stop (SIGTERM, kill grace) and the
    // reports need a moment; after that, stop_all kills what is left.
    let limit = tokio::time::Instant::now() + grace + shared.cfg.kill_grace + LEAVE_SLACK;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let idle = shared.running.lock().await.is_empty() && shared.unacked.lock().await.is_empty();
        if idle {
            tracing::info!("every attempt finished and reported: exiting");
            return;
        }
        if tokio::time::Instant::now() >= limit {
            tracing::warn!("shutdown grace period over: stopping what still runs");
            return;
        }
    }
}

/// Time after the grace period and kill grace for the last reports.
const LEAVE_SLACK: Duration = Duration::from_secs(5);

async fn stop_all(shared: &Shared) {
    let running: Vec<Running> = shared
        .running
        .lock()
        .await
        .drain()
        .map(|(_, r)| r)
        .collect();
    if !running.is_empty() {
        tracing::info!(count = running.len(), "stopping running attempts");
    }
    for mut r in running {
        if let Some(c) = r.cancel.take() {
            let _ = c.send("agent shutting down".into());
        }
        let _ = r.handle.await;
    }
}

async fn connect_loop(shared: Arc<Shared>, mut events: mpsc::Receiver<AgentMessage>) {
    let servers = shared.cfg.servers.clone();
    let mut backoff = BACKOFF_MIN;
    let mut next = 0;
    // Failed tries since the last stream that worked, and when they were
    // last mentioned: the first failure is logged, then a summary a minute.
    let mut failed: u64 = 0;
    let mut last_warned = tokio::time::Instant::now();
    loop {
        let server = &servers[next % servers.len()];
        let opened_at = tokio::time::Instant::now();
        match session(&shared, server, &mut events).await {
            Ok(()) => {
                tracing::info!(%server, "stream closed by the replica; reconnecting");
                backoff = BACKOFF_MIN;
                failed = 0;
            }
            Err(e) => {
                // A stream that lasted a while worked: its end starts a new count.
                if opened_at.elapsed() > BACKOFF_MAX {
                    failed = 0;
                }
                failed += 1;
                if failed == 1 {
                    tracing::warn!(%server, error = %e, "agent stream failed; trying the next replica");
                    last_warned = tokio::time::Instant::now();
                } else if last_warned.elapsed() >= WARN_SUMMARY_EVERY {
                    tracing::warn!(%server, error = %e, failed_tries = failed, "still no replica holds this agent's stream; retrying");
                    last_warned = tokio::time::Instant::now();
                } else {
                    tracing::debug!(%server, error = %e, "agent stream failed; trying the next replica");
                }
                next += 1;
            }
        }
        // Jitter spreads reconnects of many agents after a replica dies.
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One stream: hello, then pump events up and orders down until it ends.
async fn session(
    shared: &Arc<Shared>,
    server: &str,
    events: &mut mpsc::Receiver<AgentMessage>,
) -> Result<(), tonic::Status> {
    let channel = shared
        .cfg
        .transport
        .channel(server)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel::<AgentMessage>(256);
    // Read before the hello so the watch is not borrowed across its awaits.
    let health = Some(shared.health.borrow().report.clone());
    let hello = Hello {
        node_id: shared.cfg.node_id.clone(),
        labels: shared.cfg.labels.clone().into_iter().collect(),
        capacity: Some(shared.capacity),
        max_tasks: shared.cfg.max_tasks,
        version: env!("CARGO_PKG_VERSION").into(),
        running: open_stream(shared)
            .await
            .into_iter()
            .map(|(job_id, task, attempt)| AttemptToken {
                job_id,
                task,
                attempt,
            })
            .collect(),
        unacknowledged: shared.unacked.lock().await.values().cloned().collect(),
        gpus: shared.gpus.clone(),
        health,
    };
    let _ = out
        .send(AgentMessage {
            msg: Some(AgentMsg::Hello(hello)),
        })
        .await;
    let mut inbound = client
        .connect(ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    let welcome = match inbound.message().await? {
        Some(gantry_proto::v1::ServerMessage {
            msg: Some(ServerMsg::Welcome(w)),
        }) => w,
        _ => return Err(tonic::Status::internal("the replica did not send welcome")),
    };
    tracing::info!(%server, replica = welcome.replica_id, session = %welcome.session_id, "connected");
    check_grace(shared, welcome.node_grace_ms)?;
    let opened = supervisor::boot_ms();
    if shared.stats.streams_opened.fetch_add(1, Ordering::Relaxed) > 0 {
        shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
    } else {
        // systemd (Type=notify): connected to the cluster. A no-op elsewhere.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
    shared.stats.connected.store(true, Ordering::Relaxed);
    let _connected = stats::Connected(&shared.stats);
    // A round trip measured to another replica says nothing about this one.
    shared.rtt.lock().await.clear();
    let mut health_sent = None;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(
        welcome.heartbeat_interval_ms.max(100),
    ));
    loop {
        tokio::select! {
            m = inbound.message() => match m? {
                Some(m) => {
                    // A stream that outlived a lapse of the lease (the agent
                    // was frozen, or cut off while the stream stayed open)
                    // may hold assignments the cluster has since given to
                    // another node: start afresh on a new stream, whose
                    // assignments are current.
                    let lease = *shared.lease.borrow();
                    if lease != 0 && lease >= opened && lease <= supervisor::boot_ms() {
                        tracing::warn!(%server, "this stream outlived the node's lease: reconnecting rather than acting on what it holds");
                        return Err(tonic::Status::unavailable("the lease ran out during this stream"));
                    }
                    handle(shared, m.msg).await
                }
                None => return Ok(()),
            },
            Some(ev) = events.recv() => {
                if out.send(ev).await.is_err() {
                    return Err(tonic::Status::unavailable("stream closed"));
                }
            }
            _ = heartbeat.tick() => {
                let hb = heartbeat_message(shared, &mut health_sent);
                if out.send(hb).await.is_err() {
                    return Err(tonic::Status::unavailable("stream closed"));
                }
            }
            // Until the first confirmation, ask often: tasks wait for it.
            () = tokio::time::sleep(FIRST_LEASE_POLL), if *shared.lease.borrow() == 0 => {
                let hb = heartbeat_message(shared, &mut health_sent);
                if out.send(hb).await.is_err() {
                    return Err(tonic::Status::unavailable("stream closed"));
                }
            }
        }
    }
}

/// A new stream begins: assignments of earlier streams that have not
/// started are dropped (the cluster may have given them to another node
/// since: a node marked lost has its stream ended), and the new stream's
/// dispatcher sends again those still meant for this node. Returns the
/// attempts this agent runs, for the hello.
async fn open_stream(shared: &Shared) -> Vec<Key> {
    let mut running = shared.running.lock().await;
    shared.stream.fetch_add(1, Ordering::Relaxed);
    running.retain(|k, r| {
        let keep = r.waiting_on.is_none();
        if !keep {
            tracing::info!(attempt = ?k, "dropping an assignment of the last stream that has not started: the new stream sends it again if it is still this node's");
            r.handle.abort();
        }
        keep
    });
    running.keys().cloned().collect()
}

async fn handle(shared: &Arc<Shared>, msg: Option<ServerMsg>) {
    match msg {
        Some(ServerMsg::Assign(a)) => {
            let (Some(token), Some(spec)) = (a.attempt, a.spec) else {
                return;
            };
            start(shared, token, spec, a.traceparent, a.gpus).await;
        }
        Some(ServerMsg::Cancel(c)) => {
            let Some(token) = c.attempt else { return };
            let k = key(&token);
            let mut running = shared.running.lock().await;
            if let Some(r) = running.get_mut(&k) {
                if let Some(cancel) = r.cancel.take() {
                    tracing::info!(attempt = ?k, reason = %c.reason, "cancelling");
                    let _ = cancel.send(c.reason);
                }
                return;
            }
            drop(running);
            // Cancelled before its assignment reached this node: it never
            // started here, and says so, or the cluster would hold it live
            // (and its resources) for ever. A report for an attempt that is
            // no longer current is fenced off.
            let known = shared.finished.lock().await.contains(&k);
            if !known && !shared.unacked.lock().await.contains_key(&k) {
                tracing::info!(attempt = ?k, reason = %c.reason, "cancelled before it started here");
                let report = AttemptFinished {
                    attempt: Some(token.clone()),
                    failure: gantry_proto::v1::FailureClass::Cancelled as i32,
                    message: format!("cancelled before it started on this node: {}", c.reason),
                    ..AttemptFinished::default()
                };
                finish(shared, token, report).await;
            }
        }
        Some(ServerMsg::Ack(a)) => {
            if let Some(token) = a.attempt {
                let k = key(&token);
                shared.unacked.lock().await.remove(&k);
                shared.journal.ended(k);
            }
        }
        Some(ServerMsg::Pong(p)) => {
            let rtt = shared.clock_ms().saturating_sub(p.sent_at_ms);
            shared.rtt.lock().await.push(Duration::from_millis(rtt));
            renew_lease(shared, p.sent_at_ms, p.confirmed_ago_ms);
        }
        Some(ServerMsg::Welcome(_)) | None => {}
    }
}

async fn start(
    shared: &Arc<Shared>,
    token: AttemptToken,
    spec: JobSpec,
    traceparent: String,
    gpus: Vec<u32>,
) {
    let k = key(&token);
    let mut running = shared.running.lock().await;
    // Assignments are level-triggered: one running or finished is not started
    // again. `unacked` is checked while `running` is held because a finishing
    // attempt enters `unacked` before it leaves `running`.
    if running.contains_key(&k) || shared.unacked.lock().await.contains_key(&k) {
        return;
    }
    let (exec, cancel_tx) = execution(shared, token.clone(), spec, gpus);
    let shared2 = shared.clone();
    let mut lease = shared.lease.subscribe();
    let received = supervisor::boot_ms();
    let stream = shared.stream.load(Ordering::Relaxed);
    tracing::info!(attempt = ?k, "starting");
    let k2 = k.clone();
    let handle = tokio::spawn(async move {
        // A task starts under a lease: a fresh agent waits for the cluster's
        // first confirmation of its node (moments), not longer.
        let valid = lease.wait_for(|l| *l > supervisor::boot_ms());
        let _ = tokio::time::timeout(LEASE_WAIT, valid).await;
        let current = *lease.borrow();
        drop(lease);
        {
            let mut running = shared2.running.lock().await;
            // Another stream opened meanwhile and dropped this one.
            if shared2.stream.load(Ordering::Relaxed) != stream {
                return;
            }
            if let Some(r) = running.get_mut(&k2) {
                r.waiting_on = None;
            }
        }
        // The lease lapsed since the assignment arrived (the agent froze,
        // or lost the cluster): the cluster may have given the attempt to
        // another node. Not started, and reported so: an infra failure the
        // cluster retries if the attempt is still current, and fences off
        // if it is not.
        let now = supervisor::boot_ms();
        let lapse = shared2.last_lapse.load(Ordering::Relaxed);
        if lapse >= received || (current != 0 && current <= now) {
            tracing::warn!(attempt = ?key(&token), "not starting an assignment that arrived before the node's lease ran out");
            let report = AttemptFinished {
                attempt: Some(token.clone()),
                failure: gantry_proto::v1::FailureClass::Infra as i32,
                message: "not started: the node's lease ran out after it was assigned (its agent froze or lost the cluster)".into(),
                infra_event: format!("lease-lapsed:{}", lapse.max(current)),
                ..AttemptFinished::default()
            };
            finish(&shared2, token, report).await;
            return;
        }
        // The attempt's run, in the job's trace under the dispatch.
        let span = tracing::info_span!("run", job = %token.job_id, task = token.task, attempt = token.attempt);
        gantry_telemetry::otel::set_parent(&span, &traceparent);
        let report = tracing::Instrument::instrument(executor::run(exec), span).await;
        finish(&shared2, token, report).await;
    });
    running.insert(
        k,
        Running {
            cancel: Some(cancel_tx),
            handle,
            waiting_on: Some(stream),
        },
    );
}

/// A heartbeat: the agent's clock (echoed in the pong for the round trip),
/// the GPUs' telemetry, and the health report when its findings changed
/// since the last one sent on this stream (always on a stream's first).
fn heartbeat_message(
    shared: &Shared,
    health_sent: &mut Option<gantry_proto::v1::HealthReport>,
) -> AgentMessage {
    let snapshot = shared.health.borrow().clone();
    let health = if health_sent
        .as_ref()
        .is_some_and(|sent| health::same_findings(sent, &snapshot.report))
    {
        None
    } else {
        *health_sent = Some(snapshot.report.clone());
        Some(snapshot.report.clone())
    };
    AgentMessage {
        msg: Some(AgentMsg::Heartbeat(Heartbeat {
            sent_at_ms: shared.clock_ms(),
            health,
            gpus: snapshot.gpus.clone(),
        })),
    }
}

/// Runs the health checks every interval and publishes the result; logs only
/// when the verdict flips, so a steady node stays quiet.
async fn health_loop(shared: Arc<Shared>) {
    let cfg = &shared.cfg.health;
    let work_dir = shared.cfg.data_dir.join("work");
    let mut tick = tokio::time::interval(cfg.interval);
    // A slow run is not followed by a burst of catch-up runs.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the checks just ran at start.
    tick.tick().await;
    loop {
        tick.tick().await;
        let rtt = shared.rtt.lock().await.path();
        let (report, gpus) =
            health::run_checks(cfg, &work_dir, &shared.gpu_source, shared.gpus.len(), rtt).await;
        let was_healthy = shared.health.borrow().report.healthy;
        health::log_verdict_change(Some(was_healthy), &report);
        shared
            .health
            .send_replace(Arc::new(health::HealthSnapshot { report, gpus }));
    }
}
