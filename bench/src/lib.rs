//! Helpers shared by the benchmark programs.

pub mod agents;
pub mod echo;
pub mod etcd;
pub mod load;
pub mod overload;
pub mod ratio;
pub mod submits;

use std::time::Duration;

use cluster_tests::Cluster;

/// `cluster`'s replica processes, named `"{label} {id}"`.
pub fn replica_pids(cluster: &Cluster, label: &str) -> Vec<(String, u32)> {
    cluster
        .replicas
        .keys()
        .filter_map(|id| Some((format!("{label} {id}"), cluster.pid(*id)?)))
        .collect()
}

/// The `p` quantile (0..=1) of sorted durations, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Cores and CPU model, printed beside every figure.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    format!("{cores} cores, {cpu}, {mem_gib:.0} GiB")
}

/// Attempts the leader marked lost with their node (a node is only lost
/// when no replica held its agent's stream for the grace period).
pub async fn attempts_lost(cluster: &Cluster) -> anyhow::Result<f64> {
    let leader = cluster.leader().await?;
    let (_, text) =
        cluster_tests::http_get(&cluster.replicas[&leader].metrics_addr, "/metrics").await?;
    Ok(cluster_tests::sample(
        &text,
        "gantry_attempts_finished{outcome=\"lost\",class=\"infra\"}",
    )
    .unwrap_or(0.0))
}

pub use cluster_tests::cost::process_usage;

/// Resident memory (MiB) of a process now, from /proc; `None` once it is gone.
/// CPU seconds every core of the machine has spent busy since boot
/// (`/proc/stat`: user, nice, system, irq, softirq, steal).
pub fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| ticks.get(*i))
        .sum();
    // /proc/stat counts in USER_HZ, 100 on every Linux architecture.
    busy / 100.0
}

pub fn rss_now(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    Some(kib / 1024.0)
}

/// CPU per operation, by process, between two readings of /proc: a header
/// naming the processes, then one line per row, in microseconds. /proc
/// counts in 10 ms ticks, so a row needs some seconds of load to read well.
pub struct CpuPerOp {
    /// A short column name (ten characters) and the pid, per process.
    columns: Vec<(String, u32)>,
    lines: Vec<String>,
}

impl CpuPerOp {
    pub fn new(columns: Vec<(String, u32)>) -> Self {
        Self {
            columns,
            lines: Vec::new(),
        }
    }

    /// Each process's CPU seconds so far (0 for one that is gone), to pass
    /// to [`Self::add`] after the row.
    pub fn mark(&self) -> Vec<f64> {
        self.columns
            .iter()
            .map(|(_, pid)| process_usage(*pid).map_or(0.0, |(c, _)| c))
            .collect()
    }

    /// Each process's CPU microseconds per operation: `ops` since `mark`.
    pub fn per_op(&self, mark: &[f64], ops: usize) -> Vec<f64> {
        mark.iter()
            .zip(self.mark())
            .map(|(b, a)| (a - b) * 1e6 / ops.max(1) as f64)
            .collect()
    }

    /// The row `row`: `ops` operations since `mark`.
    pub fn add(&mut self, row: &str, mark: &[f64], ops: usize) {
        let per = self.per_op(mark, ops);
        let mut line = format!("{row:<38}");
        for v in &per {
            line.push_str(&format!(" {v:>10.0}"));
        }
        line.push_str(&format!(" {:>10.0}", per.iter().sum::<f64>()));
        self.lines.push(line);
    }

    pub fn table(&self, unit: &str) -> String {
        let mut out = format!("{:<38}", format!("CPU µs per {unit}, by process"));
        for (name, _) in &self.columns {
            out.push_str(&format!(" {name:>10}"));
        }
        out.push_str(&format!(" {:>10}\n", "all"));
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// One line per process: CPU seconds and peak RSS, and their totals.
pub fn usage_table(processes: &[(String, u32)]) -> String {
    let mut out = String::from("process              CPU s   peak RSS MiB\n");
    let (mut cpu, mut rss) = (0.0, 0.0);
    for (name, pid) in processes {
        if let Some((c, r)) = process_usage(*pid) {
            out.push_str(&format!("{name:<20} {c:>6.2}   {r:>12.1}\n"));
            cpu += c;
            rss += r;
        }
    }
    out.push_str(&format!("{:<20} {cpu:>6.2}   {rss:>12.1}\n", "total"));
    out
}

/// What a process's threads have used so far, by kind of thread: CPU
/// seconds and context switches, from each thread's /proc entry.
///
/// Sampled profiles of these replicas attribute much of their time to the
/// kernel's context-switch path, where a sample cannot tell whose work it
/// was; the scheduler's own per-thread run time can. A thread that exits
/// between two readings takes its share with it (sled's pool keeps seven
/// threads for good; the rest are long-lived).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThreadUsage {
    /// Kind of thread (see [`thread_kind`]) → (CPU seconds, context switches).
    pub by_kind: std::collections::BTreeMap<String, (f64, u64)>,
}

/// The kind of a thread, from its name: numbered siblings are one kind.
pub fn thread_kind(comm: &str) -> String {
    let comm = comm.trim();
    match comm {
        "tokio-rt-worker" => "tokio workers".into(),
        "gantry-fsync" => "log flusher".into(),
        c if c.starts_with("sled-io") => "sled I/O pool".into(),
        c => c
            .trim_end_matches(|ch: char| ch.is_ascii_digit() || ch == '-')
            .to_owned(),
    }
}

impl ThreadUsage {
    /// `pid`'s threads now; empty once the process is gone.
    pub fn of(pid: u32) -> Self {
        let mut usage = Self::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return usage;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            let (Some(comm), Some(schedstat), Some(status)) =
                (read("comm"), read("schedstat"), read("status"))
            else {
                continue;
            };
            // schedstat: nanoseconds on the CPU, waiting, and timeslices.
            let run_ns: f64 = schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            let switches: u64 = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            let e = usage.by_kind.entry(thread_kind(&comm)).or_default();
            e.0 += run_ns / 1e9;
            e.1 += switches;
        }
        usage
    }

    /// What was used from `before` to `self`, kind by kind.
    pub fn since(&self, before: &Self) -> Self {
        let by_kind = self
            .by_kind
            .iter()
            .map(|(k, (cpu, sw))| {
                let (cpu0, sw0) = before.by_kind.get(k).copied().unwrap_or_default();
                (k.clone(), ((cpu - cpu0).max(0.0), sw.saturating_sub(sw0)))
            })
            .collect();
        Self { by_kind }
    }

    /// Adds `other` to `self`, kind by kind.
    pub fn add(&mut self, other: &Self) {
        for (k, (cpu, sw)) in &other.by_kind {
            let e = self.by_kind.entry(k.clone()).or_default();
            e.0 += cpu;
            e.1 += sw;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_threads_are_grouped_by_kind_and_differences_never_go_negative() {
        assert_eq!(thread_kind("tokio-rt-worker"), "tokio workers");
        assert_eq!(thread_kind("sled-io-12"), "sled I/O pool");
        assert_eq!(thread_kind("gantry-fsync"), "log flusher");
        assert_eq!(thread_kind("gantry"), "gantry");
        assert_eq!(thread_kind("etcd"), "etcd");
        let mut a = ThreadUsage::default();
        a.by_kind.insert("tokio workers".into(), (2.0, 10));
        let mut b = ThreadUsage::default();
        b.by_kind.insert("tokio workers".into(), (1.5, 4));
        b.by_kind.insert("sled I/O pool".into(), (0.5, 7));
        // A kind that appeared only later counts from zero; one that went
        // away (its threads exited) is left out.
        let d = b.since(&a);
        assert_eq!(d.by_kind["tokio workers"], (0.0, 0));
        assert_eq!(d.by_kind["sled I/O pool"], (0.5, 7));
        let mut sum = d.clone();
        sum.add(&d);
        assert_eq!(sum.by_kind["sled I/O pool"], (1.0, 14));
    }

    #[test]
    fn t11_this_process_threads_are_read_and_a_gone_process_has_none() {
        let me = ThreadUsage::of(std::process::id());
        assert!(!me.by_kind.is_empty(), "no threads read from /proc");
        assert!(ThreadUsage::of(u32::MAX).by_kind.is_empty());
    }
}
