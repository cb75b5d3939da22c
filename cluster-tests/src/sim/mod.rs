//! Deterministic simulation: replicas (openraft over Gantry's sled storage
//! and state machine, with the leader's scheduling and liveness loops),
//! agents and clients run in one thread under tokio's paused clock, talking
//! over a simulated network with seeded loss, delay, partitions and
//! crashes. Every source of randomness — openraft's election timeouts
//! (through gantry-store's runtime, seeded: the one production runs on), the network, the fault
//! schedule, the workload, the agents — comes from the one seed, so a seed
//! replays exactly; [`Report::fingerprint`] proves it.
//!
//! What is simulated rather than real: gRPC (the network is in-process
//! calls with delays), the agent's processes (a timer), the disk (an
//! append is flushed after a drawn latency, and a crash loses the appends
//! not yet flushed, as SIGKILL does: [`disk`]). The real-process tests
//! (t80) cover those.

pub mod agent;
mod client;
mod conn;
pub mod disk;
pub mod invariants;
pub mod net;
pub mod replica;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gantry_client::api;
use gantry_core::JobState;
use openraft::AsyncRuntime;
use openraft::async_runtime::WatchReceiver;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checkers::{History, Outcome, Violation};
use agent::{Agent, Disk};
use client::Client;
use net::Net;
use replica::Replica;

/// The replicas' Raft types: production's own (its runtime draws election
/// timeouts from the seed under `gantry_store::runtime::seeded`).
pub type SimConfig = gantry_store::TypeConfig;

pub type SimRaft = gantry_store::Raft;

/// How long nothing new may be applied before a healed run counts as
/// settled: longer than any request's deadline.
const SETTLE_QUIET: Duration = Duration::from_secs(3);

/// Spawns a task that inherits a seed derived from its parent's.
pub fn spawn<F>(f: F) -> JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    <gantry_store::runtime::GantryRuntime as AsyncRuntime>::spawn(f)
}

/// Wall-clock milliseconds as the simulation sees them: a fixed epoch plus
/// virtual time, so commands carry the same timestamps on every replay.
/// Where the simulation's wall clock starts (ms since the Unix epoch).
pub const EPOCH_MS: u64 = 1_800_000_000_000;

pub fn now_ms() -> u64 {
    let start = START.with(|s| s.get()).unwrap_or_else(Instant::now);
    EPOCH_MS + u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

thread_local! {
    /// When the current run began (each run has its own runtime and thread).
    static START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// What one run does; everything but `fault_ms` is drawn from the seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Virtual milliseconds of faults and load before healing.
    pub fault_ms: u64,
    /// Virtual milliseconds allowed for every job to end after healing.
    pub settle_ms: u64,
    /// A bug to plant, to show the checkers catch it.
    pub plant: Option<Plant>,
    /// Half the faults crash the leader, each at a moment when a follower
    /// holds appends the leader has not flushed yet (waiting up to a second
    /// for one), and restart it before an election can end.
    pub crash_leaders_mid_flush: bool,
}

/// Bugs the simulation can plant in its replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// Reads are served from the replica's local state without a read
    /// barrier: a partitioned or lagging replica returns old versions.
    StaleReads,
    /// A restarted leader takes up its old term again without an election
    /// (openraft's default): one that lost unflushed appends reuses their
    /// log ids (see [`Options::crash_leaders_mid_flush`]).
    LeaderRestore,
    /// A bug planted in gantry-server's own code, which the simulation runs
    /// (debug builds only: see `gantry_server::plant`).
    Shipped(gantry_server::plant::Plant),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault_ms: 12_000,
            settle_ms: 90_000,
            plant: None,
            crash_leaders_mid_flush: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Params {
    pub replicas: u64,
    pub agents: usize,
    pub clients: usize,
    pub loss: f64,
    pub max_delay_ms: u64,
    /// Replicas whose clocks are off, and by how much (ms).
    pub skews: BTreeMap<u64, i64>,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub params: Params,
    pub faults: Vec<String>,
    pub submits: usize,
    pub acknowledged: usize,
    pub reads: usize,
    pub cancels: usize,
    pub messages: u64,
    pub dropped: u64,
    pub stale_reports: u64,
    /// Finished jobs the final state's garbage collection removed.
    pub collected: u64,
    pub duplicates_sent: u64,
    pub violations: Vec<Violation>,
    /// A hash of everything observable (history, faults, final state): two
    /// runs of one seed must give the same.
    pub fingerprint: u64,
    pub virtual_ms: u64,
    /// The final state's nodes and unfinished tasks, for a failing seed.
    pub final_state: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} replicas, {} agents, loss {:.3}, delay ≤{} ms, clock skews {:?}; {} faults; {} submits ({} acked), {} reads, {} cancels; {} messages ({} dropped); {} stale reports fenced ({} duplicates sent); {} jobs collected; {} violations; {:.1} s simulated; fingerprint {:016x}",
            self.seed,
            self.params.replicas,
            self.params.agents,
            self.params.loss,
            self.params.max_delay_ms,
            self.params.skews,
            self.faults.len(),
            self.submits,
            self.acknowledged,
            self.reads,
            self.cancels,
            self.messages,
            self.dropped,
            self.stale_reports,
            self.duplicates_sent,
            self.collected,
            self.violations.len(),
            self.virtual_ms as f64 / 1000.0,
            self.fingerprint,
        )
    }
}

/// One line for a run of many seeds.
pub fn summary(reports: &[Report]) -> String {
    let failed = reports.iter().filter(|r| !r.violations.is_empty()).count();
    format!(
        "simulation summary: {} seeds, {} faults, {} operations ({} submits acknowledged), {} messages ({} dropped), {} stale reports fenced, {} jobs collected, {} violations in {failed} seeds; {:.0} s simulated",
        reports.len(),
        reports.iter().map(|r| r.faults.len()).sum::<usize>(),
        reports
            .iter()
            .map(|r| r.submits + r.reads + r.cancels)
            .sum::<usize>(),
        reports.iter().map(|r| r.acknowledged).sum::<usize>(),
        reports.iter().map(|r| r.messages).sum::<u64>(),
        reports.iter().map(|r| r.dropped).sum::<u64>(),
        reports.iter().map(|r| r.stale_reports).sum::<u64>(),
        reports.iter().map(|r| r.collected).sum::<u64>(),
        reports.iter().map(|r| r.violations.len()).sum::<usize>(),
        reports.iter().map(|r| r.virtual_ms).sum::<u64>() as f64 / 1000.0,
    )
}

/// Runs one seed to the end, on a fresh single-threaded runtime with time
/// paused (it advances only when every task waits).
pub fn run(seed: u64, opts: &Options) -> Report {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed(seed, format!("could not build a runtime: {e}")),
    };
    // The run is this thread: a bug planted in the shipped code holds for it only.
    let shipped = match opts.plant {
        Some(Plant::Shipped(bug)) => Some(bug),
        _ => None,
    };
    if shipped.is_some() && !gantry_server::plant::set(shipped) {
        return failed(seed, "bugs can be planted in debug builds only".into());
    }
    let report = rt.block_on(gantry_store::runtime::seeded(
        seed,
        simulate(seed, opts.clone()),
    ));
    rt.shutdown_background();
    gantry_server::plant::set(None);
    report
}

fn failed(seed: u64, why: String) -> Report {
    Report {
        seed,
        params: Params {
            replicas: 0,
            agents: 0,
            clients: 0,
            loss: 0.0,
            max_delay_ms: 0,
            skews: BTreeMap::new(),
        },
        faults: Vec::new(),
        submits: 0,
        acknowledged: 0,
        reads: 0,
        cancels: 0,
        messages: 0,
        dropped: 0,
        stale_reports: 0,
        collected: 0,
        duplicates_sent: 0,
        violations: vec![Violation {
            invariant: "simulation ran",
            detail: why,
        }],
        fingerprint: 0,
        virtual_ms: 0,
        final_state: Vec::new(),
    }
}

/// Most a replica's clock is off in a run.
pub const MAX_SKEW_MS: i64 = 60_000;

/// Clock skews for half the runs: each replica off by up to a minute either
/// way. Drawn from a generator of their own, so the rest of a seed's
/// schedule is what it was before clocks were skewed.
fn skews(seed: u64, ids: &[u64]) -> BTreeMap<u64, i64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc10c_5eed_c10c_5eed);
    if !rng.random_bool(0.5) {
        return BTreeMap::new();
    }
    ids.iter()
        .map(|id| (*id, rng.random_range(-MAX_SKEW_MS..=MAX_SKEW_MS)))
        .collect()
}

fn api_state(s: JobState) -> i32 {
    (match s {
        JobState::Pending => api::JobState::Pending,
        JobState::Running => api::JobState::Running,
        JobState::Complete => api::JobState::Complete,
        JobState::Failed => api::JobState::Failed,
        JobState::Cancelled => api::JobState::Cancelled,
    }) as i32
}

/// A simulated agent: its task (when running), its disk, its incarnation.
type AgentSlot = (Option<JoinHandle<()>>, Arc<Mutex<Disk>>, u64);

struct World {
    plant: Option<Plant>,
    net: Net,
    dbs: BTreeMap<u64, sled::Db>,
    replicas: BTreeMap<u64, Arc<Replica>>,
    agents: BTreeMap<usize, AgentSlot>,
    ids: Vec<u64>,
    rng: StdRng,
    /// Each replica's clock skew (ms), drawn once per run.
    skews: BTreeMap<u64, i64>,
    /// What every agent ran, and when.
    executions: agent::Executions,
}

impl World {
    async fn start_replica(&mut self, id: u64) -> Result<(), String> {
        let db = self
            .dbs
            .get(&id)
            .ok_or_else(|| format!("no data for replica {id}"))?;
        let disk_seed = self.rng.random();
        let skew = self.skews.get(&id).copied().unwrap_or(0);
        let r = Replica::start(id, db, &self.net, self.plant, disk_seed, skew).await?;
        self.net.set_up(id, Some(r.clone())).await;
        self.replicas.insert(id, r);
        Ok(())
    }

    /// Kills replica `id`; says what its log lost.
    async fn crash_replica(&mut self, id: u64) -> String {
        let Some(r) = self.replicas.remove(&id) else {
            return String::new();
        };
        self.net.set_up(id, None).await;
        match r.crash().await {
            Ok(0) => String::new(),
            Ok(n) => format!(" ({n} unflushed entries lost)"),
            Err(e) => format!(" (losing its unflushed entries failed: {e})"),
        }
    }

    fn start_agent(&mut self, k: usize) {
        let Some((handle, disk, incarnation)) = self.agents.get_mut(&k) else {
            return;
        };
        *incarnation += 1;
        let agent = Agent {
            node_id: format!("node-{k}"),
            endpoint: 1_000 + k as u64,
            replicas: self.ids.clone(),
            net: self.net.clone(),
            disk: disk.clone(),
            rng: StdRng::seed_from_u64(self.rng.random()),
            executions: self.executions.clone(),
            running: BTreeMap::new(),
            waiting: Vec::new(),
            lease_ms: 0,
            last_lapse_ms: 0,
            grace_ms: 0,
        };
        *handle = Some(spawn(agent.run()));
    }

    fn crash_agent(&mut self, k: usize) {
        if let Some(a) = self.agents.get_mut(&k)
            && let Some(h) = a.0.take()
        {
            h.abort();
            self.executions.node_crashed(&format!("node-{k}"));
        }
    }

    async fn leader(&self) -> Option<Arc<Replica>> {
        for r in self.replicas.values() {
            let m = r.raft().metrics().borrow_watched().clone();
            if m.state.is_leader() && m.current_leader == Some(r.id) {
                return Some(r.clone());
            }
        }
        None
    }
}

async fn simulate(seed: u64, opts: Options) -> Report {
    let start = Instant::now();
    START.with(|s| s.set(Some(start)));
    let mut rng = StdRng::seed_from_u64(seed);
    let params = Params {
        replicas: if rng.random_bool(0.25) { 5 } else { 3 },
        agents: rng.random_range(2..=3),
        clients: 3,
        loss: if rng.random_bool(0.5) {
            rng.random_range(0.0..0.03)
        } else {
            0.0
        },
        max_delay_ms: rng.random_range(2..=40),
        skews: BTreeMap::new(),
    };
    let net = Net::new(rng.random(), params.loss, 1, params.max_delay_ms);
    let ids: Vec<u64> = (1..=params.replicas).collect();
    let mut dbs = BTreeMap::new();
    for id in &ids {
        match sled::Config::new().temporary(true).open() {
            Ok(db) => {
                dbs.insert(*id, db);
            }
            Err(e) => return failed(seed, format!("sled: {e}")),
        }
    }
    let mut world = World {
        plant: opts.plant,
        net: net.clone(),
        dbs,
        replicas: BTreeMap::new(),
        agents: BTreeMap::new(),
        ids: ids.clone(),
        rng: StdRng::seed_from_u64(rng.random()),
        skews: skews(seed, &ids),
        executions: agent::Executions::default(),
    };
    let params = Params {
        skews: world.skews.clone(),
        ..params
    };
    for id in &ids {
        if let Err(e) = world.start_replica(*id).await {
            return failed(seed, format!("replica {id} did not start: {e}"));
        }
    }
    if let Err(e) = world.replicas[&1].initialize(&ids).await {
        return failed(seed, format!("bootstrap: {e}"));
    }
    for k in 0..params.agents {
        world
            .agents
            .insert(k, (None, Arc::new(Mutex::new(Disk::default())), 0));
        world.start_agent(k);
    }

    // The monitor: every replica's state, sampled on a fixed virtual period.
    let invariants = Arc::new(Mutex::new(invariants::all()));
    let monitor = {
        let (net, invariants) = (net.clone(), invariants.clone());
        spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let at_ms = start.elapsed().as_millis() as u64;
                for r in net.up_replicas().await {
                    let applied_log_id = r
                        .raft()
                        .metrics()
                        .borrow_watched()
                        .last_applied
                        .map(|l| (l.index, l.to_string()));
                    let mut inv = invariants.lock().await;
                    r.read_state(|state, applied| {
                        let digest = n.is_multiple_of(5).then(|| digest(state));
                        let o = invariants::Observation {
                            replica: r.id,
                            at_ms,
                            applied,
                            applied_log_id: applied_log_id.clone(),
                            state,
                            digest,
                        };
                        for i in inv.iter_mut() {
                            i.observe(&o);
                        }
                    })
                    .await;
                }
            }
        })
    };

    // The workload.
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..params.clients {
        let client = Client {
            c,
            net: net.clone(),
            ids: ids.clone(),
            rng: StdRng::seed_from_u64(rng.random()),
            history: history.clone(),
            start,
        };
        clients.push(spawn(client.run(stop.clone())));
    }

    // The faults.
    let mut faults = Vec::new();
    let minority = (params.replicas as usize - 1) / 2;
    let mut down: Vec<u64> = Vec::new();
    let mut agents_down: Vec<usize> = Vec::new();
    while start.elapsed() < Duration::from_millis(opts.fault_ms) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_500))).await;
        let at = start.elapsed().as_millis();
        let leader = world.leader().await.map(|l| l.id);
        let mid_flush = opts.crash_leaders_mid_flush;
        let pick = if mid_flush && rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(0..100)
        };
        let what = match pick {
            0..=19 if down.len() < minority => {
                let up: Vec<u64> = ids.iter().copied().filter(|i| !down.contains(i)).collect();
                let victim = if mid_flush || rng.random_bool(0.5) {
                    leader.unwrap_or(up[0])
                } else {
                    up[rng.random_range(0..up.len())]
                };
                if mid_flush && let Some(r) = world.replicas.get(&victim) {
                    // Kill it when followers hold appends it has not flushed,
                    // if that happens within a second.
                    for _ in 0..1_000 {
                        if r.followers_hold_unflushed().await {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let lost = world.crash_replica(victim).await;
                if mid_flush && leader == Some(victim) {
                    // Back before the others' election timeouts end.
                    let ms = rng.random_range(20..250);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    match world.start_replica(victim).await {
                        Ok(()) => format!("crash leader {victim}{lost}, restart it {ms} ms later"),
                        Err(e) => format!("restart replica {victim} failed: {e}"),
                    }
                } else {
                    down.push(victim);
                    format!("crash replica {victim}{lost}")
                }
            }
            0..=34 if !down.is_empty() => {
                let id = down.remove(rng.random_range(0..down.len()));
                match world.start_replica(id).await {
                    Ok(()) => format!("restart replica {id}"),
                    Err(e) => format!("restart replica {id} failed: {e}"),
                }
            }
            35..=44 => {
                let Some(l) = leader else { continue };
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
                net.cut(&[l], &others).await;
                net.cut(&others, &[l]).await;
                format!("isolate leader {l}")
            }
            45..=52 => {
                let Some(l) = leader else { continue };
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
                if rng.random_bool(0.5) {
                    net.cut(&[l], &others).await;
                    format!("one-way: leader {l} cannot send")
                } else {
                    net.cut(&others, &[l]).await;
                    format!("one-way: leader {l} cannot receive")
                }
            }
            53..=62 => {
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.random_range(0..=i));
                }
                let (minor, major) = shuffled.split_at(minority.max(1));
                net.cut(minor, major).await;
                net.cut(major, minor).await;
                format!("split {minor:?} from {major:?}")
            }
            63..=74 => {
                net.heal().await;
                "heal partitions".to_string()
            }
            75..=84 if agents_down.len() + 1 < params.agents => {
                let k = rng.random_range(0..params.agents);
                if agents_down.contains(&k) {
                    continue;
                }
                world.crash_agent(k);
                agents_down.push(k);
                format!("crash agent node-{k}")
            }
            75..=89 if !agents_down.is_empty() => {
                let k = agents_down.remove(0);
                world.start_agent(k);
                format!("restart agent node-{k}")
            }
            90..=99 => {
                let mut s = net.state().await;
                s.loss = if s.loss > params.loss {
                    params.loss
                } else {
                    0.2
                };
                format!("message loss now {:.2}", s.loss)
            }
            _ => continue,
        };
        faults.push(format!("{at} ms: {what}"));
    }

    // Heal everything, stop the load, let the cluster finish its work.
    net.heal().await;
    net.state().await.loss = params.loss;
    for id in std::mem::take(&mut down) {
        if let Err(e) = world.start_replica(id).await {
            faults.push(format!("restart replica {id} failed: {e}"));
        }
    }
    for k in std::mem::take(&mut agents_down) {
        world.start_agent(k);
    }
    faults.push(format!("{} ms: healed", start.elapsed().as_millis()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let settle_until = Instant::now() + Duration::from_millis(opts.settle_ms);
    // Settled: every job ended and every replica at one index, and nothing
    // new applied for longer than a request may take (a submit whose client
    // gave up can still be committed until its deadline).
    let mut quiet_since: Option<(Instant, u64)> = None;
    let final_state = loop {
        let settled = match world.leader().await {
            Some(l) => {
                let mut applied = Vec::new();
                for r in world.replicas.values() {
                    applied.push(r.raft().metrics().borrow_watched().last_applied);
                }
                let same = applied.windows(2).all(|w| w[0] == w[1]);
                let done = l
                    .read_state(|s, _| s.jobs().all(|j| j.state.is_terminal()))
                    .await;
                let index = applied.first().copied().flatten().map_or(0, |l| l.index);
                let since = match quiet_since {
                    Some((at, i)) if i == index && same && done => at,
                    _ => Instant::now(),
                };
                quiet_since = Some((since, index));
                (same && done && since.elapsed() > SETTLE_QUIET).then_some(l)
            }
            None => None,
        };
        if let Some(l) = settled {
            break Some(l);
        }
        if Instant::now() >= settle_until {
            break world.leader().await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // One last sample of every replica, now that they agree.
    tokio::time::sleep(Duration::from_millis(600)).await;
    monitor.abort();

    let h = history.lock().await.clone();
    let executions = world.executions.all();
    let leased_at_loss = world.executions.leased_at_loss();
    let mut violations = Vec::new();
    let (final_digest, (stale_reports, collected), described) = match &final_state {
        Some(l) => {
            l.read_state(|s, _| {
                let end = invariants::End {
                    history: &h,
                    state: s,
                    executions: &executions,
                    leased_at_loss: &leased_at_loss,
                };
                let mut inv = invariants.try_lock();
                if let Ok(inv) = inv.as_mut() {
                    for i in inv.iter_mut() {
                        violations.extend(i.finish(&end));
                    }
                }
                (
                    digest(s),
                    (s.stale_reports(), s.jobs_collected()),
                    describe(s),
                )
            })
            .await
        }
        None => {
            violations.push(Violation {
                invariant: "a leader after healing",
                detail: format!("no leader {} ms after healing", opts.settle_ms),
            });
            (0, (0, 0), Vec::new())
        }
    };
    let mut duplicates_sent = 0;
    for (_, disk, _) in world.agents.values() {
        duplicates_sent += disk.lock().await.duplicates_sent;
    }
    for k in 0..params.agents {
        world.crash_agent(k);
    }
    for id in ids {
        world.crash_replica(id).await;
    }
    let (messages, dropped) = {
        let s = net.state().await;
        (s.delivered, s.dropped)
    };
    let violations_found = !violations.is_empty();
    let mut fp = std::collections::hash_map::DefaultHasher::new();
    // Error texts are left out: openraft's may carry wall-clock times.
    for op in &h.submits {
        (
            op.client,
            op.invoke,
            op.complete,
            key(&op.outcome),
            op.index,
        )
            .hash(&mut fp);
    }
    for op in &h.reads {
        (&op.job_id, op.invoke, op.complete, key(&op.outcome)).hash(&mut fp);
    }
    for op in &h.cancels {
        (&op.job_id, op.invoke, op.complete, key(&op.outcome)).hash(&mut fp);
    }
    faults.hash(&mut fp);
    final_digest.hash(&mut fp);
    (messages, dropped).hash(&mut fp);
    Report {
        seed,
        params,
        faults,
        submits: h.submits.len(),
        acknowledged: h
            .submits
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Ok(_)))
            .count(),
        reads: h.reads.len(),
        cancels: h.cancels.len(),
        messages,
        dropped,
        stale_reports,
        collected,
        duplicates_sent,
        violations,
        fingerprint: fp.finish(),
        virtual_ms: start.elapsed().as_millis() as u64,
        final_state: if violations_found {
            described
        } else {
            Vec::new()
        },
    }
}

/// Nodes and unfinished tasks, one line each.
fn describe(s: &gantry_core::State) -> Vec<String> {
    let mut out: Vec<String> = s
        .nodes()
        .map(|n| {
            format!(
                "node {}: {:?} {:?} session {:?} live {:?}",
                n.id(),
                n.status,
                n.eligibility,
                n.session.as_ref().map(|x| (&x.id, x.replica)),
                s.live_attempts(n.id()).collect::<Vec<_>>()
            )
        })
        .collect();
    for j in s.jobs().filter(|j| !j.state.is_terminal()) {
        for t in &j.tasks {
            out.push(format!(
                "job {} task {}: {:?} not before {} attempts {:?}",
                j.id,
                t.index,
                t.state,
                t.not_before_ms,
                t.attempts
                    .iter()
                    .map(|a| (a.number, &a.node_id, a.state, a.cancel_requested))
                    .collect::<Vec<_>>()
            ));
        }
    }
    out
}

/// An outcome without its error text.
fn key<T: std::fmt::Debug>(o: &Outcome<T>) -> String {
    match o {
        Outcome::Ok(v) => format!("ok {v:?}"),
        Outcome::Fail(_) => "fail".into(),
        Outcome::Unknown(_) => "unknown".into(),
    }
}

fn digest(s: &gantry_core::State) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.to_snapshot().unwrap_or_default().hash(&mut h);
    h.finish()
}
