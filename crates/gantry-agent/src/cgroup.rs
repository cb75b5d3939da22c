//! Control groups for tasks: each attempt runs in a cgroup of its own, under
//! one directory per agent, with its memory (no swap beyond it), CPU quota
//! and process count limited; the whole group is killed when the attempt
//! ends, so children that left the process group (setsid, double fork) go
//! with it.
//!
//! cgroup v2 (one unified hierarchy) is used where it has the memory
//! controller; otherwise the v1 hierarchies `memory`, `cpu`, `cpuacct` and
//! `pids` (any of them may be missing: the limits it holds are then not
//! enforced and the agent says so). The agent's directory is
//! `<mount>/gantry/<node>.<hash of data dir>` (v1: in each hierarchy), so
//! several agents on one host, and a restarted agent, each find their own.
//! Only the kernel's files are written; the agent needs root (or a delegated
//! subtree) for it.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Below the mount point: the directory every Gantry agent uses.
pub const ROOT: &str = "gantry";
/// Task cgroups are slots (`slot-N`), made once and reused: making and
/// removing cgroups serialises on a kernel-wide lock, which a node starting
/// hundreds of short tasks a second would queue on.
pub const SLOT_PREFIX: &str = "slot-";
/// CFS period for CPU quotas.
const CPU_PERIOD_US: u64 = 100_000;

/// Which hierarchy a directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// The unified hierarchy: every controller in one directory.
    V2,
    V1Memory,
    V1Cpu,
    V1Cpuacct,
    V1Pids,
}

/// The agent's own cgroup directories, one per hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroups {
    pub dirs: Vec<(Kind, PathBuf)>,
}

/// One attempt's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// 0: none.
    pub memory_bytes: u64,
    /// Thousandths of a core; 0: no quota.
    pub cpu_millis: u64,
    /// 0: none.
    pub pids: u64,
}

/// Mounted cgroup hierarchies: (kind, mount point).
fn mounts(mountinfo: &str) -> Vec<(Kind, PathBuf)> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let opts = right.nth(1).unwrap_or_default();
        let mount = PathBuf::from(unescape(mount));
        match fstype {
            "cgroup2" => found.push((Kind::V2, mount)),
            "cgroup" => {
                for opt in opts.split(',') {
                    let kind = match opt {
                        "memory" => Kind::V1Memory,
                        "cpu" => Kind::V1Cpu,
                        "cpuacct" => Kind::V1Cpuacct,
                        "pids" => Kind::V1Pids,
                        _ => continue,
                    };
                    if !found.iter().any(|(k, _)| *k == kind) {
                        found.push((kind, mount.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// mountinfo escapes spaces and a few other bytes as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A name safe for one path component.
pub fn component(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match clean.as_str() {
        "" | "." | ".." => format!("_{clean}"),
        _ => clean,
    }
}

impl Cgroups {
    /// Finds the hierarchies, makes this agent's directories and checks they
    /// can be written; `Err` says why tasks cannot be confined here.
    pub fn open(agent_name: &str) -> Result<Cgroups, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        Self::open_in(&mounts(&mountinfo), agent_name)
    }

    fn open_in(mounts: &[(Kind, PathBuf)], agent_name: &str) -> Result<Cgroups, String> {
        let v2 = mounts
            .iter()
            .find(|(k, m)| *k == Kind::V2 && has_controller(m, "memory"));
        let v1: Vec<_> = mounts.iter().filter(|(k, _)| *k != Kind::V2).collect();
        let dirs = if let Some((_, mount)) = v2 {
            let top = mount.join(ROOT);
            let agent = top.join(agent_name);
            make_dir(&top)?;
            make_dir(&agent)?;
            // Controllers reach a child only when its parent delegates them.
            for dir in [mount.as_path(), top.as_path(), agent.as_path()] {
                enable_controllers(dir)?;
            }
            vec![(Kind::V2, agent)]
        } else if v1.iter().any(|(k, _)| *k == Kind::V1Memory) {
            let mut dirs = Vec::new();
            for (kind, mount) in v1 {
                let agent = mount.join(ROOT).join(agent_name);
                make_dir(&mount.join(ROOT))?;
                make_dir(&agent)?;
                dirs.push((*kind, agent));
            }
            dirs
        } else {
            return Err("no cgroup hierarchy with the memory controller is mounted".into());
        };
        let cgroups = Cgroups { dirs };
        // Prove it: a task's directory can be made, limited and removed.
        let probe = cgroups.task("probe");
        probe.create(&Limits {
            memory_bytes: 1 << 30,
            cpu_millis: 1000,
            pids: 100,
        })?;
        probe.remove();
        Ok(cgroups)
    }

    /// An agent's directories where they exist, made by nobody (for
    /// cleaning up after an agent that will not run again).
    pub fn existing(agent_name: &str) -> Cgroups {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Cgroups {
            dirs: mounts(&mountinfo)
                .into_iter()
                .map(|(k, m)| (k, m.join(ROOT).join(agent_name)))
                .filter(|(_, d)| d.is_dir())
                .collect(),
        }
    }

    /// Which limits these hierarchies can hold, for the log and the node's report.
    pub fn missing(&self) -> Vec<&'static str> {
        let has = |k: Kind| self.dirs.iter().any(|(d, _)| *d == k || *d == Kind::V2);
        let mut missing = Vec::new();
        if !has(Kind::V1Cpu) {
            missing.push("cpu");
        }
        if !has(Kind::V1Pids) {
            missing.push("pids");
        }
        missing
    }

    /// The cgroup of one attempt (nothing is made until `create`).
    pub fn task(&self, name: &str) -> TaskCgroup {
        TaskCgroup {
            dirs: self
                .dirs
                .iter()
                .map(|(k, d)| (*k, d.join(component(name))))
                .collect(),
        }
    }

    /// Removes the agent's directories and the empty slots in them (on a
    /// clean exit).
    pub fn remove_if_empty(&self) {
        for (_, d) in &self.dirs {
            if let Ok(entries) = std::fs::read_dir(d) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(d);
        }
    }

    /// The slot numbers whose directories exist (`slot-N`).
    pub fn existing_slots(&self) -> Vec<u32> {
        let Some((_, d)) = self.dirs.first() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(d) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(SLOT_PREFIX)?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

fn has_controller(mount: &Path, name: &str) -> bool {
    std::fs::read_to_string(mount.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == name))
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

fn enable_controllers(dir: &Path) -> Result<(), String> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for c in ["memory", "cpu", "pids"] {
        if available.split_whitespace().any(|a| a == c) {
            write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    // O_TRUNC as a shell's `>` does: ignored by the kernel's files.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// One attempt's cgroup (a directory per hierarchy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCgroup {
    pub dirs: Vec<(Kind, PathBuf)>,
}

impl TaskCgroup {
    /// Makes the directories (if they are not there from an earlier
    /// attempt) and writes the limits, resetting what is not asked for.
    pub fn create(&self, limits: &Limits) -> Result<(), String> {
        let bytes = |n: u64, none: &str| -> String {
            if n > 0 {
                n.to_string()
            } else {
                none.to_owned()
            }
        };
        let quota = limits.cpu_millis * CPU_PERIOD_US / 1000;
        for (kind, dir) in &self.dirs {
            make_dir(dir)?;
            match kind {
                Kind::V2 => {
                    write(&dir.join("memory.max"), &bytes(limits.memory_bytes, "max"))?;
                    // Absent without swap accounting: nothing to hold then.
                    let swap = if limits.memory_bytes > 0 { "0" } else { "max" };
                    let _ = write(&dir.join("memory.swap.max"), swap);
                    write(
                        &dir.join("cpu.max"),
                        &format!("{} {CPU_PERIOD_US}", bytes(quota, "max")),
                    )?;
                    write(&dir.join("pids.max"), &bytes(limits.pids, "max"))?;
                }
                Kind::V1Memory => {
                    let limit = bytes(limits.memory_bytes, "-1");
                    // memory + swap may never be below memory alone: lift it
                    // first, then set both (absent without swap accounting).
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    let _ = write(&memsw, "-1");
                    let file = dir.join("memory.limit_in_bytes");
                    if write(&file, &limit).is_err() {
                        // Cache an earlier attempt left above the new limit.
                        let _ = write(&dir.join("memory.force_empty"), "0");
                        write(&file, &limit)?;
                    }
                    let _ = write(&memsw, &limit);
                }
                Kind::V1Cpu => {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &bytes(quota, "-1"))?;
                }
                Kind::V1Pids => write(&dir.join("pids.max"), &bytes(limits.pids, "max"))?,
                Kind::V1Cpuacct => {}
            }
        }
        Ok(())
    }

    /// `cgroup.procs` of each directory the task joins, opened for writing:
    /// the child writes "0" to each after fork, before exec (no allocation
    /// there). A task without a CPU quota stays out of the v1 `cpu` and
    /// `cpuacct` hierarchies: each v1 join is a migration that stalls every
    /// fork on the host for a moment.
    pub fn procs_files(&self, limits: &Limits) -> Result<Vec<std::fs::File>, String> {
        self.dirs
            .iter()
            .filter(|(k, _)| limits.cpu_millis > 0 || !matches!(k, Kind::V1Cpu | Kind::V1Cpuacct))
            .map(|(_, d)| {
                let p = d.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))
            })
            .collect()
    }

    /// Every process in the group.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for (_, d) in &self.dirs {
            if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs everything in the group until it is empty (or `limit`
    /// passes: a process stuck in the kernel); true once empty.
    pub fn kill_all(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // cgroup v2 (5.14+) kills the whole subtree at once.
            for (kind, d) in &self.dirs {
                if *kind == Kind::V2 {
                    let _ = write(&d.join("cgroup.kill"), "1");
                }
            }
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to every process in the group.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// How many processes of the group the kernel's OOM killer has killed
    /// (ever: compare with the count before a task starts).
    pub fn oom_kills(&self) -> u64 {
        self.dirs
            .iter()
            .filter_map(|(kind, d)| {
                let file = match kind {
                    Kind::V2 => "memory.events",
                    Kind::V1Memory => "memory.oom_control",
                    _ => return None,
                };
                let text = std::fs::read_to_string(d.join(file)).ok()?;
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// CPU time the group used, in nanoseconds (None where not accounted).
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        self.dirs.iter().find_map(|(kind, d)| match kind {
            Kind::V2 => std::fs::read_to_string(d.join("cpu.stat"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .map(|us| us * 1000),
            Kind::V1Cpuacct => std::fs::read_to_string(d.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok(),
            _ => None,
        })
    }

    /// Removes the (empty) directories; a busy one is retried briefly.
    pub fn remove(&self) {
        for (_, d) in &self.dirs {
            for _ in 0..20 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    Ok(()) => break,
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
