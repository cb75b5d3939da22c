//! A harness that runs a cluster of the real `gantry` binary: start, SIGKILL,
//! restart with the same data, wipe and rejoin. Used by the multi-process
//! tests and the benchmark programs.
//!
//! The binary is found through `GANTRY_BIN`, else next to the test or bench
//! executable (`target/<profile>/gantry`): build it first with
//! `cargo build -p gantry-cli` (the README's test command does).

mod agents;
pub mod checkers;
pub mod cost;
pub mod faults;
pub mod linearizable;
pub mod netns;
pub mod ports;
pub mod sim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use gantry_client::{Client, ClientOptions};
pub use gantry_proto::transport::{TlsPaths, Transport};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
pub use ports::free_addrs;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Raft timings for tests: fast elections on loopback.
#[derive(Clone, Debug)]
pub struct Timings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_every: u64,
    /// How long a node may go without a session before it is lost.
    pub node_grace_ms: u64,
}

impl Default for Timings {
    /// The tests' own Raft timings, or a profile to measure under the fault
    /// schedules: `GANTRY_TEST_RAFT=fast` (heartbeat 20 ms, elections
    /// 60-120 ms) or `GANTRY_TEST_RAFT=slow` (heartbeat 100 ms, elections
    /// 600-1200 ms).
    fn default() -> Self {
        let (heartbeat_ms, election_min_ms, election_max_ms) =
            match std::env::var("GANTRY_TEST_RAFT").as_deref() {
                Ok("fast") => (20, 60, 120),
                Ok("slow") => (100, 600, 1_200),
                _ => (50, 300, 600),
            };
        Self {
            heartbeat_ms,
            election_min_ms,
            election_max_ms,
            snapshot_every: 1_000,
            // Room for the agents' 1 s fence margin and a busy test machine.
            node_grace_ms: 5_000,
        }
    }
}

pub struct Replica {
    pub id: u64,
    pub addr: String,
    /// Plain HTTP: /metrics, /health, /ready, /live.
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Started with `--join`: never bootstraps, waits to be contacted.
    join: bool,
    /// A command the replica runs under, one that execs it (e.g. `env
    /// LD_PRELOAD=… FAKETIME=+60s`), so the replica stays this process's child.
    wrapper: Vec<String>,
    child: Option<Child>,
}

pub struct Agent {
    pub node_id: String,
    /// Plain HTTP: /metrics, /ready, /live.
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    servers: Vec<String>,
    /// Flags added to (or replacing) the harness's defaults.
    extra_args: Vec<String>,
    child: Option<Child>,
}

/// Health thresholds for test agents: a test machine is often short of disk
/// and busy (load, slow heartbeats), which must not make every node
/// unhealthy. Tests of health checks pass their own (see `start_agent_with`).
const AGENT_TEST_DEFAULTS: &[(&str, &str)] = &[
    ("--health-min-free-disk", "0"),
    ("--health-min-available-memory", "0"),
    ("--health-max-rtt", "60s"),
    ("--health-max-load-per-cpu", "10000"),
    ("--health-interval", "1s"),
    // Stop at once on SIGTERM, as tests of shutdown expect; the graceful
    // hand-back has its own test.
    ("--shutdown-grace", "0s"),
    // Most tests' tasks write marker files into the test's own directories,
    // which only root may enter; t24's tests run tasks as the default
    // unprivileged user. Cgroups and supervisors are on everywhere.
    ("--task-user", "root"),
    // The clusters' node grace is short (5 s): stop a cut-off node's tasks
    // 1 s before it ends rather than the production 3 s.
    ("--fence-margin", "1s"),
];

impl Drop for Cluster {
    fn drop(&mut self) {
        self.clean_up_agents();
    }
}

pub struct Cluster {
    pub replicas: BTreeMap<u64, Replica>,
    pub agents: BTreeMap<String, Agent>,
    /// With mTLS: the CA and where certificates are written.
    pki: Option<(PathBuf, gantry_pki::Pair)>,
    peers: String,
    timings: Timings,
    bin: PathBuf,
    /// Replicas in their own network namespaces (partitions possible).
    netns: Option<netns::Netns>,
    /// Extra environment for every replica and agent this cluster starts.
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

/// The `gantry` binary under test.
pub fn gantry_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("GANTRY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/test-binary or target/<profile>/bench-binary
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("gantry");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the gantry binary was not found next to {}: run `cargo build -p gantry-cli` \
         (with --release for benchmarks) or set GANTRY_BIN",
        exe.display()
    )
}

/// The repository's root, where `deploy/` and `docs/` are.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_owned()
}

/// Runs the `gantry` CLI against `servers` of a plaintext cluster.
pub fn run_cli(servers: &[String], args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(gantry_bin()?)
        .args(args)
        .args(["--servers", &servers.join(","), "--insecure"])
        .output()?)
}

/// [`run_cli`], as a user reads it: whether it succeeded, and its stdout
/// followed by its stderr.
pub fn run_cli_text(servers: &[String], args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = run_cli(servers, args)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === impl Cluster ===

impl Cluster {
    /// Starts `n` replicas (plaintext, `--insecure`) and waits for a leader.
    pub async fn start(n: usize, timings: Timings) -> anyhow::Result<Self> {
        Self::start_with(gantry_bin()?, n, timings, false, false, Vec::new(), None).await
    }

    /// Starts `n` replicas each in its own network namespace, so that
    /// [`Cluster::cut`] and [`Cluster::split`] can partition them. Where
    /// namespaces cannot be made (not root, no `ip`), falls back to
    /// loopback, says so on stderr, and [`Cluster::partitionable`] is false.
    pub async fn start_partitionable(n: usize, timings: Timings) -> anyhow::Result<Self> {
        Self::start_with(gantry_bin()?, n, timings, false, true, Vec::new(), None).await
    }

    pub fn partitionable(&self) -> bool {
        self.netns.is_some()
    }

    /// Drops every packet replica `from` sends to replica `to`.
    pub fn cut(&self, from: u64, to: u64) -> anyhow::Result<()> {
        self.netns
            .as_ref()
            .context("partitions need network namespaces")?
            .cut(from, to)
    }

    /// Cuts both ways between the two groups of replicas.
    pub fn split(&self, a: &[u64], b: &[u64]) -> anyhow::Result<()> {
        self.netns
            .as_ref()
            .context("partitions need network namespaces")?
            .split(a, b)
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        match &self.netns {
            Some(n) => n.heal(),
            None => Ok(()),
        }
    }

    /// Starts `n` replicas with mTLS under a CA made for this cluster.
    pub async fn start_secure(n: usize, timings: Timings) -> anyhow::Result<Self> {
        Self::start_with(gantry_bin()?, n, timings, true, false, Vec::new(), None).await
    }

    /// Starts `n` replicas, with mTLS when `secure`, whose processes and
    /// agents get `env` (the benchmarks raise the submit rate limit so).
    pub async fn start_with_options(
        n: usize,
        timings: Timings,
        secure: bool,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        Self::start_with(gantry_bin()?, n, timings, secure, false, env, None).await
    }

    /// [`Self::start_with_options`] with another `gantry` binary than
    /// `GANTRY_BIN` names (the benchmarks' baseline: an earlier build).
    pub async fn start_binary(
        bin: PathBuf,
        n: usize,
        timings: Timings,
        secure: bool,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, n, timings, secure, false, env, None).await
    }

    /// Starts `n` replicas (plaintext) whose processes, and the agents
    /// started later, get `env` (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub async fn start_with_env(
        n: usize,
        timings: Timings,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        Self::start_with(gantry_bin()?, n, timings, false, false, env, None).await
    }

    /// Starts `n` replicas (plaintext) whose data dirs are under
    /// `data_root` (e.g. a small filesystem the test mounted) instead of
    /// the cluster's temporary dir; logs stay in the latter.
    pub async fn start_with_data_root(
        n: usize,
        timings: Timings,
        env: Vec<(String, String)>,
        data_root: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            gantry_bin()?,
            n,
            timings,
            false,
            false,
            env,
            Some(data_root),
        )
        .await
    }

    async fn start_with(
        bin: PathBuf,
        n: usize,
        timings: Timings,
        secure: bool,
        partitionable: bool,
        env: Vec<(String, String)>,
        data_root: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut dir = tempfile::Builder::new()
            .prefix("gantry-cluster-")
            .tempdir()?;
        // GANTRY_KEEP_TEST_DIRS=1 keeps data and logs for a post-mortem.
        dir.disable_cleanup(std::env::var_os("GANTRY_KEEP_TEST_DIRS").is_some());
        let ids: Vec<u64> = (1..=n as u64).collect();
        let netns = if partitionable {
            match netns::Netns::create(&ids) {
                Ok(ns) => Some(ns),
                Err(e) => {
                    eprintln!(
                        "network namespaces unavailable ({e:#}): replicas run on loopback and partition faults are skipped"
                    );
                    None
                }
            }
        } else {
            None
        };
        let mut addrs = free_addrs(2 * n)?;
        if let Some(ns) = &netns {
            // Each namespace has its own address; the ports stay unique anyway.
            for (i, a) in addrs.iter_mut().enumerate() {
                let port = a.rsplit(':').next().unwrap_or("0").to_owned();
                *a = format!("{}:{port}", ns.ip(ids[i % n]));
            }
        }
        let metrics_addrs = addrs.split_off(n);
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut replicas = BTreeMap::new();
        for (i, (addr, metrics_addr)) in addrs.into_iter().zip(metrics_addrs).enumerate() {
            let id = i as u64 + 1;
            replicas.insert(
                id,
                Replica {
                    id,
                    addr,
                    metrics_addr,
                    data_dir: data_root
                        .unwrap_or(dir.path())
                        .join(format!("replica-{id}")),
                    log: dir.path().join(format!("replica-{id}.log")),
                    join: false,
                    wrapper: Vec::new(),
                    child: None,
                },
            );
        }
        let pki = if secure {
            let ca = gantry_pki::new_ca(30)?;
            let pki_dir = dir.path().join("pki");
            gantry_pki::write_pair(&pki_dir, "ca", &ca)?;
            Some((pki_dir, ca))
        } else {
            None
        };
        let mut cluster = Self {
            replicas,
            pki,
            agents: BTreeMap::new(),
            peers,
            timings,
            bin,
            netns,
            env,
            dir,
        };
        let ids: Vec<u64> = cluster.replicas.keys().copied().collect();
        if cluster.pki.is_some() {
            for id in &ids {
                cluster.issue(gantry_pki::Role::Server, &format!("replica-{id}"))?;
            }
            cluster.issue(gantry_pki::Role::Client, "admin")?;
        }
        for id in ids {
            cluster.spawn(id)?;
        }
        if let Err(e) = cluster.leader().await {
            // Say why, so a failure on a busy machine can be told apart
            // from a replica that never came up.
            return Err(e.context(cluster.diagnose()));
        }
        Ok(cluster)
    }

    /// Each replica's state for an error message: whether its process
    /// exited, and the end of its log.
    pub fn diagnose(&mut self) -> String {
        let mut out = String::from("replicas:");
        for r in self.replicas.values_mut() {
            let state = match r.child.as_mut().map(|c| c.try_wait()) {
                None => "not started".to_owned(),
                Some(Ok(None)) => "running".to_owned(),
                Some(Ok(Some(status))) => format!("exited ({status})"),
                Some(Err(e)) => format!("unknown ({e})"),
            };
            let log = std::fs::read_to_string(&r.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n    ");
            out.push_str(&format!(
                "\n  replica {} at {}: {state}; last log lines:\n    {tail}",
                r.id, r.addr
            ));
        }
        out
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate from this cluster's CA (once per role and name).
    pub fn issue(&self, role: gantry_pki::Role, name: &str) -> anyhow::Result<TlsPaths> {
        let (dir, ca) = self.pki.as_ref().context("this cluster runs without TLS")?;
        let stem = format!("{}-{name}", role.as_str());
        let paths = TlsPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        if !paths.cert.exists() {
            let spec = gantry_pki::LeafSpec {
                identity: gantry_pki::Identity {
                    role,
                    name: name.to_owned(),
                },
                dns: vec!["localhost".into()],
                ips: vec!["127.0.0.1".parse()?],
                days: 30,
                backdate_days: 0,
            };
            gantry_pki::write_pair(dir, &stem, &gantry_pki::issue(ca, &spec)?)?;
        }
        Ok(paths)
    }

    /// The CA itself, to mint unusual certificates in tests.
    pub fn ca(&self) -> Option<&gantry_pki::Pair> {
        self.pki.as_ref().map(|(_, ca)| ca)
    }

    /// `--ca/--cert/--key` for a child process, or `--insecure`.
    fn security_args(&self, role: gantry_pki::Role, name: &str) -> anyhow::Result<Vec<String>> {
        if self.pki.is_none() {
            return Ok(vec!["--insecure".into()]);
        }
        let p = self.issue(role, name)?;
        Ok(vec![
            "--ca".into(),
            p.ca.display().to_string(),
            "--cert".into(),
            p.cert.display().to_string(),
            "--key".into(),
            p.key.display().to_string(),
        ])
    }

    /// Client options: the admin client certificate, or plaintext.
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        let transport = match &self.pki {
            Some(_) => Transport::mtls(&self.issue(gantry_pki::Role::Client, "admin")?)?,
            None => Transport::insecure(),
        };
        Ok(ClientOptions {
            transport,
            ..ClientOptions::default()
        })
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let t = self.timings.clone();
        let security = self.security_args(gantry_pki::Role::Server, &format!("replica-{id}"))?;
        let r = self.replicas.get_mut(&id).context("no such replica")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log)?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(&ns.exec(id)[1..]).arg(&self.bin);
                c
            }
            None => match r.wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(&self.bin);
                    c
                }
                None => Command::new(&self.bin),
            },
        };
        let child = cmd
            .arg("server")
            .args([
                "--id",
                &id.to_string(),
                "--listen",
                &r.addr,
                "--peers",
                &self.peers,
                "--metrics-listen",
                &r.metrics_addr,
            ])
            .args(r.join.then_some("--join"))
            .arg("--data-dir")
            .arg(&r.data_dir)
            .args(["--heartbeat-ms", &t.heartbeat_ms.to_string()])
            .args(["--election-timeout-min-ms", &t.election_min_ms.to_string()])
            .args(["--election-timeout-max-ms", &t.election_max_ms.to_string()])
            .args(["--snapshot-every", &t.snapshot_every.to_string()])
            .args(["--node-grace-ms", &t.node_grace_ms.to_string()])
            .args(&security)
            // The shipped default filter: what a replica logs is part of
            // what the fault tests measure.
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        r.child = Some(child);
        Ok(())
    }

    /// Addresses of the replicas that are running.
    pub fn live_addrs(&self) -> Vec<String> {
        self.replicas
            .values()
            .filter(|r| r.child.is_some())
            .map(|r| r.addr.clone())
            .collect()
    }

    /// A client for the given replicas only.
    pub fn client(&self, ids: &[u64]) -> anyhow::Result<Client> {
        let addrs: Vec<String> = ids
            .iter()
            .map(|id| self.replicas[id].addr.clone())
            .collect();
        Ok(Client::new(&addrs, self.client_options()?)?)
    }

    /// The leader every running replica agrees on.
    pub async fn leader(&self) -> anyhow::Result<u64> {
        let live: Vec<u64> = self
            .replicas
            .values()
            .filter(|r| r.child.is_some())
            .map(|r| r.id)
            .collect();
        let clients: Vec<Client> = live
            .iter()
            .map(|id| self.client(&[*id]))
            .collect::<Result<_, _>>()?;
        wait_for("an agreed leader", Duration::from_secs(30), || async {
            let mut seen = None;
            for c in &clients {
                let s = c.cluster_status().await.ok()?;
                if s.leader_id == 0 || seen.is_some_and(|l| l != s.leader_id) {
                    return None;
                }
                seen = Some(s.leader_id);
            }
            seen.filter(|l| live.contains(l))
        })
        .await
    }

    /// Ids of running replicas other than `id`.
    pub fn others(&self, id: u64) -> Vec<u64> {
        self.replicas
            .values()
            .filter(|r| r.child.is_some() && r.id != id)
            .map(|r| r.id)
            .collect()
    }

    fn signal(&self, id: u64, sig: Signal) -> anyhow::Result<()> {
        let pid = self.replicas[&id]
            .child
            .as_ref()
            .and_then(Child::id)
            .context("replica is not running")?;
        kill(Pid::from_raw(i32::try_from(pid)?), sig)?;
        Ok(())
    }

    /// SIGSTOP (true) or SIGCONT (false) a replica.
    pub fn pause(&self, id: u64, paused: bool) -> anyhow::Result<()> {
        self.signal(
            id,
            if paused {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            },
        )
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, Signal::SIGKILL)?;
        if let Some(mut c) = self.replicas.get_mut(&id).and_then(|r| r.child.take()) {
            c.wait().await?;
        }
        Ok(())
    }

    /// Stops a replica gracefully (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self, id: u64) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(id, Signal::SIGTERM)?;
        let mut c = self
            .replicas
            .get_mut(&id)
            .and_then(|r| r.child.take())
            .context("replica is not running")?;
        Ok(tokio::time::timeout(Duration::from_secs(30), c.wait()).await??)
    }

    /// Runs replica `id` under `wrapper` from its next (re)start on, e.g.
    /// `["env", "LD_PRELOAD=…/libfaketime.so.1", "FAKETIME=+60s"]` for a clock a
    /// minute ahead. The wrapper must exec the replica, not fork it.
    pub fn set_wrapper(&mut self, id: u64, wrapper: &[&str]) {
        if let Some(r) = self.replicas.get_mut(&id) {
            r.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        }
    }

    /// How replica `id` exited, if it exited by itself (it is then no
    /// longer counted as running).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let r = self.replicas.get_mut(&id)?;
        let status = r.child.as_mut()?.try_wait().ok()??;
        r.child = None;
        Some(status)
    }

    /// Starts a stopped replica again with the same data directory.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// Starts a stopped replica with `--join`, as the operations guide does
    /// for a replica whose data was lost: it never bootstraps a cluster of
    /// its own and waits for the leader to catch it up.
    pub fn restart_joining(&mut self, id: u64) -> anyhow::Result<()> {
        self.replicas.get_mut(&id).context("no such replica")?.join = true;
        self.spawn(id)
    }

    /// Deletes a stopped replica's data directory.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        let r = &self.replicas[&id];
        if r.child.is_some() {
            bail!("stop replica {id} before wiping it");
        }
        std::fs::remove_dir_all(&r.data_dir)?;
        Ok(())
    }

    /// The replica's log output so far.
    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.replicas[&id].log).unwrap_or_default()
    }

    /// The highest Raft term any running replica reports (each election
    /// any replica starts raises it); replicas that do not answer within
    /// a second (paused) are left out.
    pub async fn max_term(&self) -> Option<u64> {
        let mut max = None;
        for r in self.replicas.values().filter(|r| r.child.is_some()) {
            let got = tokio::time::timeout(
                Duration::from_secs(1),
                http_get(&r.metrics_addr, "/metrics"),
            )
            .await;
            if let Ok(Ok((200, text))) = got
                && let Some(t) = sample(&text, "gantry_raft_term")
            {
                max = max.max(Some(t as u64));
            }
        }
        max
    }

    /// The process id of a running replica.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.replicas[&id].child.as_ref().and_then(Child::id)
    }
}

/// A plain HTTP/1.0 GET (what a Prometheus scrape or a load balancer's
/// probe does): the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((code, body.to_owned()))
}

/// The value of one sample in Prometheus text, by its full name and labels
/// as printed (e.g. `gantry_jobs{state="complete"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Every job, page by page (linearizable reads).
pub async fn all_jobs(
    client: &Client,
) -> Result<Vec<gantry_client::api::Job>, gantry_client::ClientError> {
    let mut req = gantry_client::api::ListJobsRequest {
        page_size: 1000,
        ..Default::default()
    };
    let mut jobs = Vec::new();
    loop {
        let page = client.list_jobs(req.clone()).await?;
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        req.page_token = page.next_page_token;
    }
}
