//! How this node confines its tasks: the supervisor command, the cgroups,
//! the user tasks run as, their limits and their environment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use gantry_proto::v1::{AttemptToken, JobSpec, Resources};

use crate::cgroup::{Cgroups, Limits};

/// Processes a task may have at once unless the agent says otherwise.
pub const DEFAULT_PIDS_MAX: u64 = 4096;
/// Open files a task may have.
pub const DEFAULT_NOFILE: u64 = 65_536;
/// PATH for tasks when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The agent's settings for confining tasks (from its command line).
#[derive(Clone, Debug)]
pub struct ConfineConfig {
    /// The command that runs a supervisor (`gantry supervise`).
    pub supervisor: Vec<OsString>,
    /// Confine tasks in cgroups; off only for nodes that cannot (the agent
    /// then reports the node as not enforcing limits).
    pub cgroups: bool,
    /// The user tasks run as when the agent runs as root.
    pub task_user: String,
    /// Users jobs may name (`--user`), besides the task user.
    pub allowed_users: Vec<String>,
    /// Most processes per task (0: no limit).
    pub pids_max: u64,
    /// Absolute working directories jobs may name (each a path prefix);
    /// none by default: a job's `--workdir` is relative to its own directory.
    pub allowed_workdirs: Vec<PathBuf>,
}

impl Default for ConfineConfig {
    fn default() -> Self {
        ConfineConfig {
            supervisor: Vec::new(),
            cgroups: true,
            task_user: "nobody".into(),
            allowed_users: Vec::new(),
            pids_max: DEFAULT_PIDS_MAX,
            allowed_workdirs: Vec::new(),
        }
    }
}

/// A resolved user: name, uid, gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// What `ConfineConfig` means on this node, resolved once at start.
#[derive(Debug)]
pub struct Confinement {
    pub supervisor: Vec<OsString>,
    /// Names this agent's sockets and cgroups (node id and data dir).
    pub agent_name: String,
    /// `None`: limits are not enforced on this node (`why_not` says why).
    pub cgroups: Option<Cgroups>,
    pub why_not: Option<String>,
    /// `None`: tasks run as the agent's own user (the agent is not root).
    pub user: Option<TaskUser>,
    pub allowed_users: Vec<String>,
    pub allowed_workdirs: Vec<PathBuf>,
    pub node_id: String,
    pub results_dir: PathBuf,
    /// The memory limit of a task that asks for none: what the node offers.
    pub node_memory_bytes: u64,
    pub pids_max: u64,
    pub nofile: u64,
    /// PATH and LANG given to tasks.
    path: String,
    lang: String,
    /// Cgroup slots no attempt holds, and the next number to make.
    free_slots: tokio::sync::Mutex<Vec<u32>>,
    next_slot: std::sync::atomic::AtomicU32,
}

/// FNV-1a: a stable hash for names (the standard hasher may change between releases).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The name of an agent's cgroup directories and supervisor sockets: its
/// node id and a hash of its data dir (two agents on one host differ; a
/// restarted one finds its own).
pub fn agent_name(node_id: &str, data_dir: &Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!(
        "{}.{:08x}",
        crate::cgroup::component(node_id),
        fnv(dir.as_os_str().as_encoded_bytes()) as u32
    )
}

/// Looks a user up by name or numeric uid.
pub fn lookup_user(name: &str) -> Result<TaskUser, String> {
    let found = if let Ok(uid) = name.parse::<u32>() {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
    } else {
        nix::unistd::User::from_name(name)
    };
    match found {
        Ok(Some(u)) => Ok(TaskUser {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(format!("user {name:?} does not exist on this node")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}

impl Confinement {
    /// Resolves the settings: finds the cgroups, looks the task user up.
    /// Errors are configuration mistakes (an unknown task user); a node
    /// without usable cgroups is reported, not refused.
    pub fn resolve(
        cfg: &ConfineConfig,
        node_id: &str,
        data_dir: &Path,
        node_memory_mib: u64,
    ) -> Result<Confinement, String> {
        let agent_name = agent_name(node_id, data_dir);
        let (cgroups, why_not) = if cfg.cgroups {
            match Cgroups::open(&agent_name) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, Some("turned off (--no-cgroups)".into()))
        };
        let root = nix::unistd::geteuid().is_root();
        let user = if root {
            Some(lookup_user(&cfg.task_user).map_err(|e| format!("task_user: {e}"))?)
        } else {
            None
        };
        Ok(Confinement {
            supervisor: cfg.supervisor.clone(),
            agent_name,
            cgroups,
            why_not,
            user,
            allowed_users: cfg.allowed_users.clone(),
            allowed_workdirs: cfg.allowed_workdirs.clone(),
            node_id: node_id.to_owned(),
            results_dir: data_dir.join("results"),
            node_memory_bytes: node_memory_mib << 20,
            pids_max: cfg.pids_max,
            nofile: DEFAULT_NOFILE,
            path: std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
            lang: std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
            free_slots: tokio::sync::Mutex::const_new(Vec::new()),
            next_slot: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Takes over the slots an earlier run of the agent made: those in
    /// `busy` (attempts still running) stay out of the pool.
    pub async fn adopt_slots(&self, busy: &std::collections::BTreeSet<u32>) {
        let Some(cg) = &self.cgroups else { return };
        let existing = cg.existing_slots();
        let next = existing.iter().chain(busy).max().map_or(0, |n| n + 1);
        self.next_slot
            .store(next, std::sync::atomic::Ordering::Relaxed);
        let mut free = self.free_slots.lock().await;
        free.extend(existing.into_iter().filter(|n| !busy.contains(n)));
    }

    /// A cgroup slot for an attempt (`None` without cgroups).
    pub async fn take_slot(&self) -> Option<u32> {
        self.cgroups.as_ref()?;
        let reused = self.free_slots.lock().await.pop();
        Some(reused.unwrap_or_else(|| {
            self.next_slot
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        }))
    }

    /// The slot's attempt is over and its cgroup empty: a later one may use it.
    pub async fn give_back_slot(&self, n: u32) {
        self.free_slots.lock().await.push(n);
    }

    /// The cgroup of slot `n`.
    pub fn slot_cgroup(&self, n: u32) -> Option<crate::cgroup::TaskCgroup> {
        let cg = self.cgroups.as_ref()?;
        Some(cg.task(&format!("{}{n}", crate::cgroup::SLOT_PREFIX)))
    }

    /// Whether a job may run in the absolute directory `dir`.
    pub fn allows_workdir(&self, dir: &Path) -> bool {
        self.allowed_workdirs.iter().any(|p| dir.starts_with(p))
    }

    /// The allowed absolute working directories, for an error message.
    pub fn allowed_workdirs_text(&self) -> String {
        if self.allowed_workdirs.is_empty() {
            return "none: gantry agent --allow-workdir PREFIX allows some".into();
        }
        let all: Vec<String> = self
            .allowed_workdirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!("under {}", all.join(", "))
    }

    /// Whether the node holds tasks to their limits.
    pub fn enforcing(&self) -> bool {
        self.cgroups.is_some()
    }

    /// The (uid, gid) an attempt runs as: the job's user if the node allows
    /// it, else the node's task user; `None` keeps the agent's own.
    pub fn user_for(&self, job_user: &str) -> Result<Option<(u32, u32)>, String> {
        let Some(default) = &self.user else {
            if job_user.is_empty() {
                return Ok(None);
            }
            return Err(format!(
                "the job asks to run as {job_user:?}, but this node's agent is not root and runs every task as its own user"
            ));
        };
        if job_user.is_empty() || job_user == default.name {
            return Ok(Some((default.uid, default.gid)));
        }
        let u = lookup_user(job_user)?;
        let allowed = self
            .allowed_users
            .iter()
            .any(|a| *a == u.name || a.parse::<u32>().is_ok_and(|uid| uid == u.uid));
        if !allowed {
            return Err(format!(
                "the job asks to run as {job_user:?}, which this node does not allow (allowed: {}; see gantry agent --allow-task-user)",
                self.allowed_list()
            ));
        }
        Ok(Some((u.uid, u.gid)))
    }

    fn allowed_list(&self) -> String {
        let mut all: Vec<&str> = self.user.iter().map(|u| u.name.as_str()).collect();
        all.extend(self.allowed_users.iter().map(String::as_str));
        all.join(", ")
    }

    /// The limits an attempt is held to: what it asked for, or the node's
    /// memory when it asked for none (CPU unlimited then).
    pub fn limits(&self, asked: Option<&Resources>) -> Limits {
        let asked = asked.copied().unwrap_or_default();
        Limits {
            memory_bytes: if asked.memory_mib > 0 {
                asked.memory_mib << 20
            } else {
                self.node_memory_bytes
            },
            cpu_millis: asked.cpu_millis,
            pids: self.pids_max,
        }
    }

    /// The task's environment: the job's, plus PATH, HOME and LANG where it
    /// sets none, and the GANTRY_* variables (and the GPU pinning) over it.
    pub fn environment(
        &self,
        t: &AttemptToken,
        spec: &JobSpec,
        dir: &Path,
        gpus: Option<&[u32]>,
    ) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), self.path.clone());
        env.insert("HOME".into(), dir.display().to_string());
        env.insert("LANG".into(), self.lang.clone());
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (k, v) in [
            ("GANTRY_JOB_ID", t.job_id.clone()),
            ("GANTRY_TASK_INDEX", t.task.to_string()),
            ("GANTRY_TASK_COUNT", spec.count.max(1).to_string()),
            ("GANTRY_ATTEMPT", t.attempt.to_string()),
            ("GANTRY_NODE_ID", self.node_id.clone()),
        ] {
            env.insert(k.into(), v);
        }
        if let Some(gpus) = gpus {
            crate::executor::gpu_env(&mut env, gpus);
        }
        env.into_iter().collect()
    }

    /// The abstract socket name of an attempt's supervisor.
    pub fn socket_name(&self, t: &AttemptToken) -> String {
        let key = format!("{}/{}", self.agent_name, crate::executor::attempt_name(t));
        format!("gantry-supervisor/{:016x}", fnv(key.as_bytes()))
    }

    /// Where a supervisor leaves a result no agent took.
    pub fn result_file(&self, t: &AttemptToken) -> PathBuf {
        self.results_dir.join(format!(
            "{}.json",
            crate::cgroup::component(&crate::executor::attempt_name(t))
        ))
    }
}
