//! Simulated agents for the benchmarks: each one a real
//! `AgentService.Connect` stream (mTLS with its own agent certificate when
//! the cluster has a CA) that heartbeats like `gantry agent`, runs no-op
//! tasks (finished at once, or after `task_ms`), re-sends unacknowledged
//! results and its running attempts when it reconnects, and moves to
//! another replica when its stream breaks. Thousands live in one process.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gantry_proto::transport::Transport;
use gantry_proto::v1::agent_message::Msg as AgentMsg;
use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::server_message::Msg as ServerMsg;
use gantry_proto::v1::{AgentMessage, AttemptFinished, AttemptToken, Heartbeat, Hello, Resources};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use cluster_tests::Cluster;

/// What all simulated agents saw, summed.
#[derive(Default)]
pub struct AgentStats {
    /// Assign messages received.
    pub assigned: AtomicU64,
    /// Assigns of a second or later attempt: a task the cluster rescheduled.
    pub rescheduled: AtomicU64,
    /// Finished reports the cluster acknowledged (committed).
    pub acked: AtomicU64,
    /// Streams open now (a Welcome was received and the stream is alive).
    pub connected: AtomicU64,
    /// Streams that broke and were opened again.
    pub reconnects: AtomicU64,
    /// While set, the time each job's first Assign arrived is kept.
    pub record: AtomicBool,
    pub assigned_at: Mutex<HashMap<String, Instant>>,
    /// Set when the benchmark is over: broken streams are expected then.
    pub done: AtomicBool,
}

impl AgentStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One simulated agent's attempts, kept across reconnects.
#[derive(Default)]
struct Local {
    running: HashMap<(String, u32, u32), AttemptToken>,
    unacked: HashMap<(String, u32, u32), AttemptFinished>,
    tx: Option<mpsc::Sender<AgentMessage>>,
}

fn key(t: &AttemptToken) -> (String, u32, u32) {
    (t.job_id.clone(), t.task, t.attempt)
}

/// A set of simulated agents; dropping it ends their streams.
pub struct SimAgents {
    pub stats: Arc<AgentStats>,
    pub node_ids: Vec<String>,
    handles: Vec<JoinHandle<()>>,
}

impl SimAgents {
    /// Starts `n` agents named `{prefix}-{i}`, spread over `cluster`'s
    /// running replicas; each task takes `task_ms` (0: finished at once).
    pub fn start(cluster: &Cluster, prefix: &str, n: usize, task_ms: u64) -> anyhow::Result<Self> {
        let addrs = cluster.live_addrs();
        anyhow::ensure!(!addrs.is_empty(), "no replica is running");
        let stats = Arc::new(AgentStats::default());
        let mut handles = Vec::with_capacity(n);
        let mut node_ids = Vec::with_capacity(n);
        for i in 0..n {
            let node_id = format!("{prefix}-{i}");
            let transport = match cluster.ca() {
                Some(_) => Transport::mtls(&cluster.issue(gantry_pki::Role::Agent, &node_id)?)?,
                None => Transport::insecure(),
            };
            // Agent i starts at replica i mod 3, as agents spread by their own lists.
            let mut order = addrs.clone();
            order.rotate_left(i % addrs.len());
            let stats = stats.clone();
            let id = node_id.clone();
            handles.push(tokio::spawn(async move {
                run(id, order, transport, stats, task_ms).await;
            }));
            node_ids.push(node_id);
        }
        Ok(Self {
            stats,
            node_ids,
            handles,
        })
    }

    /// Ends the streams of the agents at `indices` (as if their hosts died).
    pub fn kill(&self, indices: &[usize]) {
        for i in indices {
            if let Some(h) = self.handles.get(*i) {
                h.abort();
            }
        }
    }
}

impl Drop for SimAgents {
    fn drop(&mut self) {
        self.stats.done.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

async fn run(
    node_id: String,
    addrs: Vec<String>,
    transport: Transport,
    stats: Arc<AgentStats>,
    task_ms: u64,
) {
    let local = Arc::new(Mutex::new(Local::default()));
    let mut attempt = 0usize;
    loop {
        let addr = &addrs[attempt % addrs.len()];
        let result = session(&node_id, addr, &transport, &stats, &local, task_ms).await;
        if stats.done.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = result {
            tracing::debug!(node = %node_id, error = %e, "simulated agent's stream broke");
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        attempt += 1;
        // Back off a little so a dead replica is not hammered; the next
        // replica in the list is tried.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn session(
    node_id: &str,
    addr: &str,
    transport: &Transport,
    stats: &Arc<AgentStats>,
    local: &Arc<Mutex<Local>>,
    task_ms: u64,
) -> anyhow::Result<()> {
    let channel = transport.channel(addr)?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(1024);
    let hello = {
        let mut l = local.lock().await;
        l.tx = Some(tx.clone());
        Hello {
            node_id: node_id.to_owned(),
            capacity: Some(Resources {
                cpu_millis: 1_000_000,
                memory_mib: 1_000_000,
                gpus: 0,
            }),
            version: "bench".into(),
            running: l.running.values().cloned().collect(),
            unacknowledged: l.unacked.values().cloned().collect(),
            ..Hello::default()
        }
    };
    tx.send(AgentMessage {
        msg: Some(AgentMsg::Hello(hello)),
    })
    .await?;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    // Aborted however this session ends (also when the agent is killed
    // and this future dropped): its sender would keep the stream open.
    let mut heartbeat: Option<AbortOnDrop> = None;
    let result = async {
        while let Some(m) = inbound.message().await? {
            match m.msg {
                Some(ServerMsg::Welcome(w)) => {
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                    let every = Duration::from_millis(w.heartbeat_interval_ms.max(100));
                    let tx = tx.clone();
                    heartbeat = Some(AbortOnDrop(tokio::spawn(async move {
                        let start = Instant::now();
                        let mut tick = tokio::time::interval(every);
                        loop {
                            tick.tick().await;
                            let hb = Heartbeat {
                                sent_at_ms: start.elapsed().as_millis() as u64,
                                ..Heartbeat::default()
                            };
                            let m = AgentMessage {
                                msg: Some(AgentMsg::Heartbeat(hb)),
                            };
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                    })));
                }
                Some(ServerMsg::Assign(a)) => {
                    let Some(token) = a.attempt else { continue };
                    stats.assigned.fetch_add(1, Ordering::Relaxed);
                    if token.attempt > 1 {
                        stats.rescheduled.fetch_add(1, Ordering::Relaxed);
                    }
                    if stats.record.load(Ordering::Relaxed) {
                        stats
                            .assigned_at
                            .lock()
                            .await
                            .entry(token.job_id.clone())
                            .or_insert_with(Instant::now);
                    }
                    {
                        let mut l = local.lock().await;
                        if l.running.contains_key(&key(&token))
                            || l.unacked.contains_key(&key(&token))
                        {
                            continue; // re-sent after a reconnect: already ours
                        }
                        l.running.insert(key(&token), token.clone());
                    }
                    if task_ms == 0 {
                        finish(local, token).await;
                    } else {
                        let local = local.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(task_ms)).await;
                            finish(&local, token).await;
                        });
                    }
                }
                Some(ServerMsg::Ack(a)) => {
                    if let Some(t) = a.attempt
                        && local.lock().await.unacked.remove(&key(&t)).is_some()
                    {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    }
    .await;
    if heartbeat.is_some() {
        stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
    result
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The no-op ended: report it (kept until acknowledged, re-sent on reconnect).
async fn finish(local: &Arc<Mutex<Local>>, token: AttemptToken) {
    let done = AttemptFinished {
        attempt: Some(token.clone()),
        exit_code: Some(0),
        ..AttemptFinished::default()
    };
    let tx = {
        let mut l = local.lock().await;
        l.running.remove(&key(&token));
        l.unacked.insert(key(&token), done.clone());
        l.tx.clone()
    };
    if let Some(tx) = tx {
        // A broken stream drops it here; the reconnect's Hello carries it.
        let _ = tx
            .send(AgentMessage {
                msg: Some(AgentMsg::Finished(done)),
            })
            .await;
    }
}
