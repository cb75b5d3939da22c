//! What a replica costs while a fault lasts: its CPU time (from /proc) and
//! what it writes to its log. A fault the replicas handle correctly can
//! still make one of them spin or flood its disk with log lines; these
//! figures are how the fault tests notice.

use std::time::Duration;

use tokio::time::Instant;

use crate::Cluster;

/// One reading of a replica's process and log.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    cpu_s: f64,
    log_bytes: usize,
    log_lines: usize,
}

impl Sample {
    /// Reads replica `id` now; `None` while it is not running.
    pub fn take(cluster: &Cluster, id: u64) -> Option<Self> {
        let pid = cluster.pid(id)?;
        let (cpu_s, _) = process_usage(pid)?;
        let log = cluster.log_text(id);
        Some(Self {
            at: Instant::now(),
            cpu_s,
            log_bytes: log.len(),
            log_lines: log.lines().count(),
        })
    }
}

/// What a replica spent between two samples.
#[derive(Clone, Debug)]
pub struct Cost {
    pub window: Duration,
    pub cpu_s: f64,
    pub log_lines: usize,
    pub log_bytes: usize,
}

/// The most a replica may spend while a peer is down (per window of
/// [`Bounds::per`]): generous, so only a replica that spins or logs per
/// retry fails them, never a slow machine.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Share of one core.
    pub cpu_share: f64,
    /// Log lines per `per`.
    pub log_lines: usize,
    pub per: Duration,
}

/// A follower down for 30 s: a few percent of a core and a handful of lines
/// expected; a tenth of a core and 100 lines allowed.
pub const PEER_DOWN: Bounds = Bounds {
    cpu_share: 0.10,
    log_lines: 100,
    per: Duration::from_secs(30),
};

impl Cost {
    pub fn between(a: &Sample, b: &Sample) -> Self {
        Self {
            window: b.at.duration_since(a.at),
            cpu_s: (b.cpu_s - a.cpu_s).max(0.0),
            log_lines: b.log_lines.saturating_sub(a.log_lines),
            log_bytes: b.log_bytes.saturating_sub(a.log_bytes),
        }
    }

    /// Share of one core used over the window.
    pub fn cpu_share(&self) -> f64 {
        self.cpu_s / self.window.as_secs_f64().max(1e-3)
    }

    /// Log lines scaled to `per`.
    pub fn lines_per(&self, per: Duration) -> f64 {
        self.log_lines as f64 * per.as_secs_f64() / self.window.as_secs_f64().max(1e-3)
    }

    /// `Ok` within `bounds`, else what was exceeded.
    pub fn check(&self, bounds: Bounds) -> Result<(), String> {
        let mut over = Vec::new();
        if self.cpu_share() > bounds.cpu_share {
            over.push(format!(
                "CPU {:.1} % of a core (bound {:.0} %)",
                self.cpu_share() * 100.0,
                bounds.cpu_share * 100.0
            ));
        }
        let lines = self.lines_per(bounds.per);
        if lines > bounds.log_lines as f64 {
            over.push(format!(
                "{lines:.0} log lines per {:?} (bound {})",
                bounds.per, bounds.log_lines
            ));
        }
        if over.is_empty() {
            Ok(())
        } else {
            Err(over.join("; "))
        }
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.window.as_secs_f64().max(1e-3);
        write!(
            f,
            "{:.2} CPU s in {secs:.1} s ({:.1} % of a core), {} log lines ({:.0} bytes/s)",
            self.cpu_s,
            self.cpu_share() * 100.0,
            self.log_lines,
            self.log_bytes as f64 / secs
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, cpu_s: f64, lines: usize) -> Sample {
        Sample {
            at,
            cpu_s,
            log_bytes: lines * 100,
            log_lines: lines,
        }
    }

    #[test]
    fn bounds_are_rates_over_the_window() {
        let t = Instant::now();
        let quiet = Cost::between(
            &sample(t, 1.0, 10),
            &sample(t + Duration::from_secs(30), 1.9, 40),
        );
        assert!(quiet.check(PEER_DOWN).is_ok(), "{quiet}");
        let spinning = Cost::between(
            &sample(t, 1.0, 10),
            &sample(t + Duration::from_secs(10), 6.0, 20_000),
        );
        let err = spinning.check(PEER_DOWN).unwrap_err();
        assert!(err.contains("CPU") && err.contains("log lines"), "{err}");
    }
}
