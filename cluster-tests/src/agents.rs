//! The agents of a test cluster: `gantry agent` processes started, killed,
//! stopped, restarted and frozen, and waiting for their nodes to be ready.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use gantry_client::Client;

use crate::{AGENT_TEST_DEFAULTS, Agent, Cluster, free_addrs, wait_for};

impl Cluster {
    /// Starts an agent that tries the given replicas in this order.
    pub fn start_agent(&mut self, node_id: &str, replica_ids: &[u64]) -> anyhow::Result<()> {
        self.start_agent_with(node_id, replica_ids, &[])
    }

    /// [`Cluster::start_agent`] with more flags; a flag given here replaces
    /// the harness's default for it (e.g. `--health-min-free-disk`).
    pub fn start_agent_with(
        &mut self,
        node_id: &str,
        replica_ids: &[u64],
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        let servers = replica_ids
            .iter()
            .map(|id| self.replicas[id].addr.clone())
            .collect();
        let metrics_addr = free_addrs(1)?.remove(0);
        self.agents.insert(
            node_id.to_owned(),
            Agent {
                node_id: node_id.to_owned(),
                metrics_addr,
                data_dir: self.dir.path().join(format!("agent-{node_id}")),
                log: self.dir.path().join(format!("agent-{node_id}.log")),
                servers,
                extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
                child: None,
            },
        );
        self.spawn_agent(node_id)
    }

    fn spawn_agent(&mut self, node_id: &str) -> anyhow::Result<()> {
        let security = self.security_args(gantry_pki::Role::Agent, node_id)?;
        let a = self.agents.get_mut(node_id).context("no such agent")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.log)?;
        let child = Command::new(&self.bin)
            .args([
                "agent",
                "--servers",
                &a.servers.join(","),
                "--node-id",
                node_id,
            ])
            .arg("--data-dir")
            .arg(&a.data_dir)
            .args(["--kill-grace", "1s"])
            .args(["--metrics-listen", &a.metrics_addr])
            .args(
                AGENT_TEST_DEFAULTS
                    .iter()
                    .filter(|(flag, _)| !a.extra_args.iter().any(|x| x == flag))
                    .flat_map(|(flag, value)| [*flag, *value]),
            )
            .args(&a.extra_args)
            .args(&security)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        a.child = Some(child);
        Ok(())
    }

    fn agent_pid(&self, node_id: &str) -> anyhow::Result<Pid> {
        let pid = self.agents[node_id]
            .child
            .as_ref()
            .and_then(Child::id)
            .context("agent is not running")?;
        Ok(Pid::from_raw(i32::try_from(pid)?))
    }

    /// SIGKILL an agent (its tasks' process groups live on, as after a crash).
    pub async fn kill_agent(&mut self, node_id: &str) -> anyhow::Result<()> {
        kill(self.agent_pid(node_id)?, Signal::SIGKILL)?;
        if let Some(mut c) = self.agents.get_mut(node_id).and_then(|a| a.child.take()) {
            c.wait().await?;
        }
        Ok(())
    }

    /// SIGKILLs the supervisors of an agent's attempts (their process groups,
    /// from the agent's journal) and so the tasks under them: with
    /// [`Cluster::kill_agent`], the node as a crash leaves it. Returns how
    /// many were killed.
    pub fn kill_supervisors(&self, node_id: &str) -> anyhow::Result<usize> {
        let open = gantry_agent::journal::Journal::read_open(&self.agents[node_id].data_dir);
        let mut killed = 0;
        for r in open.values().filter(|r| r.pgid > 1) {
            if nix::sys::signal::killpg(Pid::from_raw(r.pgid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        Ok(killed)
    }

    /// After a test: each agent, its supervisors and tasks killed, and its
    /// cgroup directories removed (a test's agents never run again).
    pub(crate) fn clean_up_agents(&mut self) {
        for (node_id, a) in &self.agents {
            if let Some(pid) = a.child.as_ref().and_then(Child::id) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = self.kill_supervisors(node_id);
            let name = gantry_agent::confine::agent_name(node_id, &a.data_dir);
            let cgroups = gantry_agent::cgroup::Cgroups::existing(&name);
            for (_, dir) in &cgroups.dirs {
                let Ok(slots) = std::fs::read_dir(dir) else {
                    continue;
                };
                for slot in slots
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                {
                    let task = gantry_agent::cgroup::TaskCgroup {
                        dirs: vec![(gantry_agent::cgroup::Kind::V2, slot.path())],
                    };
                    task.kill_all(Duration::from_secs(2));
                }
            }
            cgroups.remove_if_empty();
        }
    }

    /// SIGTERM an agent and wait for it to exit.
    pub async fn stop_agent(&mut self, node_id: &str) -> anyhow::Result<std::process::ExitStatus> {
        kill(self.agent_pid(node_id)?, Signal::SIGTERM)?;
        let mut c = self
            .agents
            .get_mut(node_id)
            .and_then(|a| a.child.take())
            .context("agent is not running")?;
        Ok(tokio::time::timeout(Duration::from_secs(30), c.wait()).await??)
    }

    pub fn restart_agent(&mut self, node_id: &str) -> anyhow::Result<()> {
        self.spawn_agent(node_id)
    }

    /// SIGSTOP / SIGCONT an agent.
    pub fn pause_agent(&self, node_id: &str, paused: bool) -> anyhow::Result<()> {
        let sig = if paused {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(self.agent_pid(node_id)?, sig)?;
        Ok(())
    }

    pub fn agent_log(&self, node_id: &str) -> String {
        std::fs::read_to_string(&self.agents[node_id].log).unwrap_or_default()
    }

    /// Waits until these nodes are ready and connected.
    pub async fn wait_nodes_ready(&self, node_ids: &[&str]) -> anyhow::Result<()> {
        let client = Client::new(&self.live_addrs(), self.client_options()?)?;
        wait_for("nodes to be ready", Duration::from_secs(30), || async {
            let nodes = client.list_nodes(false).await.ok()?;
            node_ids
                .iter()
                .all(|id| {
                    nodes
                        .iter()
                        .any(|n| n.id == *id && n.status == "ready" && n.session_replica != 0)
                })
                .then_some(())
        })
        .await
    }

    /// Names and process ids of the running agents.
    pub fn agent_pids(&self) -> Vec<(String, u32)> {
        self.agents
            .iter()
            .filter_map(|(name, a)| Some((format!("agent {name}"), a.child.as_ref()?.id()?)))
            .collect()
    }
}
