//! `gantry dev`: a local cluster of replicas as child processes on loopback.
//!
//! Writes `DIR/cluster.json` (each member's id, address, pid, data dir, log)
//! and `DIR/env` (`. DIR/env` points the CLI at the cluster). Re-running it
//! with the same directory restarts the same cluster, jobs and all;
//! `--fresh` starts over. Ctrl-C or SIGTERM stops every child.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use gantry_client::{Client, ClientOptions};
use gantry_proto::transport::{TlsPaths, Transport};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::Failure;
use crate::server_cmd::shutdown_signal;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where replicas keep their data, logs, cluster.json and env.
    #[arg(long, default_value = ".gantry-dev")]
    data_dir: PathBuf,
    /// Number of replicas (odd: 1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Number of agents (compute nodes) on this machine.
    #[arg(long, default_value_t = 2)]
    agents: u64,
    /// Delete any previous dev cluster in --data-dir first.
    #[arg(long)]
    fresh: bool,
    /// Plaintext without authentication instead of mTLS with generated certificates.
    #[arg(long)]
    insecure: bool,
}

/// TLS flags for a child, or `--insecure`.
fn security_args(pki: Option<&Path>, role: &str, name: &str) -> Vec<String> {
    match pki {
        None => vec!["--insecure".into()],
        Some(dir) => vec![
            "--ca".into(),
            dir.join("ca.pem").display().to_string(),
            "--cert".into(),
            dir.join(format!("{role}-{name}.pem")).display().to_string(),
            "--key".into(),
            dir.join(format!("{role}-{name}-key.pem"))
                .display()
                .to_string(),
        ],
    }
}

/// The dev cluster's CA and certificates, made once in DIR/pki.
fn ensure_certs(dir: &Path, replicas: u64, agents: u64) -> anyhow::Result<PathBuf> {
    use gantry_pki::{Identity, LeafSpec, Role};
    let pki = dir.join("pki");
    let ca = if pki.join(gantry_pki::CA_CERT).exists() {
        gantry_pki::load_ca(&pki)?
    } else {
        let ca = gantry_pki::new_ca(3650)?;
        gantry_pki::write_pair(&pki, "ca", &ca)?;
        ca
    };
    let mut leaves: Vec<(Role, String)> = (1..=replicas)
        .map(|i| (Role::Server, format!("replica-{i}")))
        .collect();
    leaves.extend((1..=agents).map(|i| (Role::Agent, format!("dev-agent-{i}"))));
    leaves.push((Role::Client, "admin".into()));
    for (role, name) in leaves {
        let stem = format!("{}-{name}", role.as_str());
        if pki.join(format!("{stem}.pem")).exists() {
            continue;
        }
        let spec = LeafSpec {
            identity: Identity { role, name },
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse()?],
            days: 365,
            backdate_days: 0,
        };
        gantry_pki::write_pair(&pki, &stem, &gantry_pki::issue(&ca, &spec)?)?;
    }
    Ok(pki)
}

#[derive(Serialize, Deserialize)]
struct ClusterFile {
    replicas: Vec<Member>,
    #[serde(default)]
    agents: Vec<AgentMember>,
}

#[derive(Serialize, Deserialize)]
struct AgentMember {
    node_id: String,
    pid: u32,
    data_dir: PathBuf,
    log: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Member {
    id: u64,
    address: String,
    pid: u32,
    data_dir: PathBuf,
    log: PathBuf,
}

/// Free loopback ports: bound on port 0 and released for the children.
fn free_ports(n: u64) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// The previous cluster's addresses, when this directory holds one.
fn previous_addresses(dir: &Path, n: u64) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("cluster.json")).ok()?;
    let file: ClusterFile = serde_json::from_str(&text).ok()?;
    (file.replicas.len() as u64 == n)
        .then(|| file.replicas.into_iter().map(|m| m.address).collect())
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn spawn_agent(
    dir: &Path,
    i: u64,
    servers: &str,
    pki: Option<&Path>,
) -> anyhow::Result<(Child, AgentMember)> {
    let node_id = format!("dev-agent-{i}");
    let data_dir = dir.join(&node_id);
    let log = dir.join(format!("{node_id}.log"));
    let out = log_file(&log)?;
    let exe = std::env::current_exe().context("finding the gantry binary")?;
    let child = Command::new(exe)
        .args([
            "agent",
            "--servers",
            servers,
            "--node-id",
            &node_id,
            "--label",
            "dev=true",
            // A laptop is often short of the production default's 10 GiB
            // free; a local cluster should still run jobs.
            "--health-min-free-disk",
            "1Gi",
            // Ctrl-C stops the local cluster's tasks rather than waiting
            // for them to finish.
            "--shutdown-grace",
            "0s",
        ])
        .args(security_args(pki, "agent", &node_id))
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Ctrl-C reaches `gantry dev` only, which stops the agents first.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting an agent")?;
    let member = AgentMember {
        node_id,
        pid: child.id().unwrap_or(0),
        data_dir,
        log,
    };
    Ok((child, member))
}

fn spawn_replica(
    dir: &Path,
    id: u64,
    addr: &str,
    peers: &str,
    pki: Option<&Path>,
) -> anyhow::Result<(Child, Member)> {
    let data_dir = dir.join(format!("replica-{id}"));
    let log = dir.join(format!("replica-{id}.log"));
    let log_file = log_file(&log)?;
    let exe = std::env::current_exe().context("finding the gantry binary")?;
    let child = Command::new(exe)
        .args([
            "server",
            "--id",
            &id.to_string(),
            "--listen",
            addr,
            "--peers",
            peers,
        ])
        .args(security_args(pki, "server", &format!("replica-{id}")))
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        // Ctrl-C reaches `gantry dev` only: it stops the agents first.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting a replica")?;
    let member = Member {
        id,
        address: addr.to_owned(),
        pid: child.id().unwrap_or(0),
        data_dir,
        log,
    };
    Ok((child, member))
}

pub async fn run(args: DevArgs) -> Result<(), Failure> {
    let _telemetry = gantry_telemetry::init(gantry_telemetry::LogFormat::Human, "gantry-dev");
    Ok(run_inner(args).await?)
}

async fn run_inner(args: DevArgs) -> anyhow::Result<()> {
    if args.replicas == 0 || args.replicas > 7 {
        bail!("--replicas must be between 1 and 7 (3 or 5 for fault tolerance)");
    }
    let dir = &args.data_dir;
    if args.fresh && dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let addresses = match previous_addresses(&dir, args.replicas) {
        Some(a) => {
            println!(
                "Restarting the dev cluster in {} (use --fresh to start over)",
                dir.display()
            );
            a
        }
        None => free_ports(args.replicas)?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect(),
    };
    let peers = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let pki = if args.insecure {
        None
    } else {
        Some(ensure_certs(&dir, args.replicas, args.agents)?)
    };
    let mut children = Vec::new();
    let mut members = Vec::new();
    for (i, addr) in addresses.iter().enumerate() {
        let (child, member) = spawn_replica(&dir, i as u64 + 1, addr, &peers, pki.as_deref())?;
        children.push(child);
        members.push(member);
    }
    let servers = addresses.join(",");
    let env_file = dir.join("env");
    let mut env = format!("export GANTRY_SERVERS={servers}\n");
    let transport = match &pki {
        Some(p) => {
            for (var, file) in [
                ("GANTRY_CA", "ca.pem"),
                ("GANTRY_CERT", "client-admin.pem"),
                ("GANTRY_KEY", "client-admin-key.pem"),
            ] {
                env.push_str(&format!("export {var}={}\n", p.join(file).display()));
            }
            Transport::mtls(&TlsPaths {
                ca: p.join("ca.pem"),
                cert: p.join("client-admin.pem"),
                key: p.join("client-admin-key.pem"),
            })?
        }
        None => {
            env.push_str("export GANTRY_INSECURE=true\n");
            Transport::insecure()
        }
    };
    std::fs::write(&env_file, env)?;

    let opts = ClientOptions {
        transport,
        ..ClientOptions::default()
    };
    let client = Client::new(std::slice::from_ref(&servers), opts)?;
    let leader = wait_for_leader(&client, &mut children).await?;
    let mut agents = Vec::new();
    for i in 1..=args.agents {
        let (child, member) = spawn_agent(&dir, i, &servers, pki.as_deref())?;
        children.push(child);
        agents.push(member);
    }
    std::fs::write(
        dir.join("cluster.json"),
        serde_json::to_string_pretty(&ClusterFile {
            replicas: members,
            agents,
        })?,
    )?;
    wait_for_agents(&client, args.agents).await?;
    println!(
        "\nGantry dev cluster: {} replicas (leader: replica {leader}), {} agents\n\
         \n  servers:  {servers}\
         \n  data:     {}\
         \n  logs:     {}/replica-N.log\
         \n\nIn another shell:\
         \n  . {}\
         \n  gantry job submit -- echo hello\
         \n  gantry node list\
         \n  gantry job list\
         \n  gantry cluster status\
         \n\nCtrl-C stops the cluster.",
        args.replicas,
        args.agents,
        dir.display(),
        dir.display(),
        env_file.display(),
    );
    let respawn = |i: usize| -> Option<anyhow::Result<Child>> {
        let addr = addresses.get(i)?;
        Some(spawn_replica(&dir, i as u64 + 1, addr, &peers, pki.as_deref()).map(|(c, _)| c))
    };
    supervise(&mut children, respawn).await;
    stop_all(&mut children, args.replicas as usize).await;
    println!("dev cluster stopped");
    Ok(())
}

async fn wait_for_leader(client: &Client, children: &mut [Child]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "replica {} exited during start-up ({status}); see its log in the data dir",
                    i + 1
                );
            }
        }
        if let Ok(s) = client.cluster_status().await
            && s.leader_id != 0
        {
            return Ok(s.leader_id);
        }
        if Instant::now() > deadline {
            bail!("no leader was elected within 30s; see the replica logs in the data dir");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_agents(client: &Client, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(nodes) = client.list_nodes(true).await
            && nodes
                .iter()
                .filter(|n| n.status == "ready" && n.session_replica != 0)
                .count() as u64
                >= n
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agents did not connect within 30s; see dev-agent-N.log in the data dir");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs until Ctrl-C/SIGTERM, reporting children that exit on their own.
/// A replica that exits because its storage failed (exit code 74) is
/// started again, as systemd or Kubernetes would; `respawn(i)` starts
/// child `i` anew (`None` for the agents).
async fn supervise(
    children: &mut [Child],
    respawn: impl Fn(usize) -> Option<anyhow::Result<Child>>,
) {
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut reported = vec![false; children.len()];
    loop {
        tokio::select! {
            () = &mut signal => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, c) in children.iter_mut().enumerate() {
                    if reported[i] {
                        continue;
                    }
                    let Ok(Some(status)) = c.try_wait() else { continue };
                    if status.code() == Some(i32::from(crate::EXIT_STORAGE)) {
                        eprintln!("replica {} stopped on a storage failure ({status}); starting it again (its log says why)", i + 1);
                        match respawn(i) {
                            Some(Ok(new)) => {
                                *c = new;
                                continue;
                            }
                            Some(Err(e)) => eprintln!("could not start replica {} again: {e:#}", i + 1),
                            None => {}
                        }
                    }
                    eprintln!("child {} exited ({status}); the others keep running", i + 1);
                    reported[i] = true;
                }
            }
        }
    }
}

/// Stops the agents (children from `first_agent` on) and waits for them:
/// each stops its tasks and reports them while the replicas still run.
/// Then the replicas. SIGTERM, then SIGKILL to a child still running after
/// `STOP_WAIT` (an agent's supervisors then stop its tasks on their own
/// when its lease runs out).
async fn stop_all(children: &mut [Child], first_agent: usize) {
    let (replicas, agents) = children.split_at_mut(first_agent.min(children.len()));
    for group in [agents, replicas] {
        for c in group.iter() {
            if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for c in group.iter_mut() {
            if tokio::time::timeout(STOP_WAIT, c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

/// How long a child may take to stop (an agent: its tasks' kill grace).
const STOP_WAIT: Duration = Duration::from_secs(15);
