//! Helpers shared by the benchmark programs.

pub mod agents;
pub mod echo;
pub mod etcd;
pub mod load;
pub mod ratio;
pub mod submits;

use std::time::Duration;

use crate::Cluster;

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

/// CPU time (user + system, seconds) and peak resident memory (MiB) of a
/// process so far, from /proc; `None` once it is gone.
pub fn process_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: utime is the
    // 14th field of the line, stime the 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc counts in USER_HZ, which Linux's user ABI fixes at 100.
    let hz = 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Some((ticks / hz, peak_kib / 1024.0))
}

/// Resident memory (MiB) of a process now, from /proc; `None` once it is gone.
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
