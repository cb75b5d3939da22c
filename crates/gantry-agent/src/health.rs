//! Node health: a few checks run every interval, scored, and reported to the
//! cluster in the hello and on heartbeats so it can stop placing work on a
//! node that is out of disk, overloaded, far away or has a sick GPU.
//!
//! The checks, each one `HealthCheck` named:
//! - `disk`: free space on the work dir ≥ `min_free_disk_bytes`;
//! - `memory`: MemAvailable (/proc/meminfo) ≥ `min_available_memory_bytes`;
//! - `load`: 1-minute load (/proc/loadavg) per CPU ≤ `max_load_per_cpu`;
//! - `latency`: the network path's round trip to the replica ≤ `max_rtt`,
//!   taken as the least of the last [`RTT_WINDOW`] heartbeats' round trips
//!   (passes until one is measured): a replica busy with other work delays
//!   some pongs, a slow path delays them all, and only the path is the
//!   node's to answer for;
//! - `gpu`, only on a node that registered GPUs: ONE check covering every
//!   aspect (visible count equals the registered count, temperature ≤
//!   `max_gpu_temperature_c`, no uncorrected ECC errors, memory readable and
//!   used ≤ total). One check rather than one per aspect keeps a GPU fault
//!   from outweighing the host checks in the score; its detail lists every
//!   aspect that failed.
//! - `runtime`: `true` (through PATH; else the agent's own binary) can be
//!   spawned in the work dir within `check_timeout`.
//!
//! The score is the share of checks that passed (integer percent); the node
//! is healthy when the score is at least `healthy_percent`.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use gantry_proto::v1::{GpuTelemetry, HealthCheck, HealthReport};

use crate::gpu::GpuSource;

pub const DISK: &str = "disk";
pub const MEMORY: &str = "memory";
pub const LOAD: &str = "load";
pub const LATENCY: &str = "latency";
pub const GPU: &str = "gpu";
pub const RUNTIME: &str = "runtime";

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Thresholds of the health checks.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// Time between two runs of the checks. Default 10 s.
    pub interval: Duration,
    /// Least free space on the work dir. Default 10 GiB.
    pub min_free_disk_bytes: u64,
    /// Least MemAvailable. Default 256 MiB.
    pub min_available_memory_bytes: u64,
    /// Most 1-minute load average per CPU. Default 4.0.
    pub max_load_per_cpu: f64,
    /// Most round trip to the replica (heartbeat to pong). Default 100 ms.
    pub max_rtt: Duration,
    /// Hottest a GPU may run, in °C. Default 90.
    pub max_gpu_temperature_c: u32,
    /// How long spawning a process, and reading the disk, memory, load and
    /// GPUs, may take before the check fails. Default 5 s.
    pub check_timeout: Duration,
    /// Least score (percent of checks passed) of a healthy node. Default 90.
    pub healthy_percent: u32,
}

/// The latest health report with the GPU telemetry read by the same run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthSnapshot {
    pub report: HealthReport,
    pub gpus: Vec<GpuTelemetry>,
}

// === impl HealthConfig ===

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(10),
            min_free_disk_bytes: 10 * GIB,
            min_available_memory_bytes: 256 * MIB,
            max_load_per_cpu: 4.0,
            max_rtt: Duration::from_millis(100),
            max_gpu_temperature_c: 90,
            check_timeout: Duration::from_secs(5),
            healthy_percent: 90,
        }
    }
}

impl HealthConfig {
    /// Refuses thresholds that would make the checks meaningless.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("health.interval: must be more than 0".into());
        }
        if self.check_timeout.is_zero() {
            return Err("health.check_timeout: must be more than 0".into());
        }
        if !(1..=100).contains(&self.healthy_percent) {
            return Err(format!(
                "health.healthy_percent: {} is not 1 to 100",
                self.healthy_percent
            ));
        }
        if !self.max_load_per_cpu.is_finite() || self.max_load_per_cpu <= 0.0 {
            return Err(format!(
                "health.max_load_per_cpu: {} is not a positive number",
                self.max_load_per_cpu
            ));
        }
        Ok(())
    }
}

/// Builds the report from check results: score = passed × 100 / total
/// (rounded down), healthy when score ≥ `healthy_percent`. No checks means
/// nothing failed.
pub fn report(checks: Vec<HealthCheck>, healthy_percent: u32, checked_at_ms: u64) -> HealthReport {
    let passed = checks.iter().filter(|c| c.passed).count();
    let score = match checks.len() {
        0 => 100,
        total => u32::try_from(passed * 100 / total).unwrap_or(100),
    };
    HealthReport {
        score,
        healthy: score >= healthy_percent,
        checks,
        checked_at_ms,
    }
}

/// The check that says whether tasks are held to their limits here. It is
/// advisory: it does not count in the score (a node without cgroups runs
/// tasks as well as before), but placement policy `strict` avoids a node
/// where it fails, and `gantry node status` shows it.
pub const LIMITS_CHECK: &str = "limits";

/// Adds the limits check to a report (its score and verdict unchanged).
pub fn with_limits_check(mut report: HealthReport, why_not: Option<&str>) -> HealthReport {
    report.checks.push(HealthCheck {
        name: LIMITS_CHECK.into(),
        passed: why_not.is_none(),
        detail: match why_not {
            None => "tasks run in cgroups with memory, CPU and process limits".into(),
            Some(why) => format!("limits are not enforced on this node: {why}"),
        },
    });
    report
}

/// Whether two reports say the same thing (their time aside): a heartbeat
/// re-sends the report only when this is false.
pub fn same_findings(a: &HealthReport, b: &HealthReport) -> bool {
    a.score == b.score && a.healthy == b.healthy && a.checks == b.checks
}

/// The failed checks as `name: detail; …`, for logs.
pub fn failing(report: &HealthReport) -> String {
    report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Logs when the verdict differs from `previous` (None: the first report),
/// so a node whose health does not change stays quiet.
pub fn log_verdict_change(previous: Option<bool>, next: &HealthReport) {
    if previous == Some(next.healthy) {
        return;
    }
    if next.healthy {
        tracing::info!(score = next.score, "node healthy");
    } else {
        tracing::warn!(score = next.score, failing = %failing(next), "node unhealthy");
    }
}

/// Runs every check once. `registered_gpus` is how many GPUs the node
/// registered (0: no GPU check); `rtt` the last measured round trip.
pub async fn run_checks(
    cfg: &HealthConfig,
    work_dir: &Path,
    source: &Arc<GpuSource>,
    registered_gpus: usize,
    rtt: Option<Duration>,
) -> (HealthReport, Vec<GpuTelemetry>) {
    let (host, runtime) = tokio::join!(
        host_checks(cfg, work_dir, source),
        check_runtime(work_dir, cfg.check_timeout)
    );
    let (mut checks, telemetry) = host;
    checks.push(check_latency(rtt, cfg.max_rtt));
    if registered_gpus > 0 {
        checks.push(check_gpus(
            registered_gpus,
            &telemetry,
            cfg.max_gpu_temperature_c,
        ));
    }
    checks.push(runtime);
    let checked_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let gpus = telemetry.unwrap_or_default();
    (report(checks, cfg.healthy_percent, checked_at_ms), gpus)
}

type HostFindings = (Vec<HealthCheck>, Result<Vec<GpuTelemetry>, String>);

/// Host reads given up on after `check_timeout` that have not returned yet
/// (a hung NFS mount, a wedged driver). Each holds one of tokio's blocking
/// threads, which `tokio::fs` and process spawning also need, so past
/// `MAX_STUCK` no more are started until one returns.
static STUCK: AtomicUsize = AtomicUsize::new(0);
const MAX_STUCK: usize = 2;
const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// Disk, memory, load and GPU telemetry: blocking reads (statvfs on a hung
/// mount never returns), so they run on a blocking thread under a timeout.
async fn host_checks(cfg: &HealthConfig, work_dir: &Path, source: &Arc<GpuSource>) -> HostFindings {
    let stuck = STUCK.load(Ordering::SeqCst);
    if stuck >= MAX_STUCK {
        return unanswered(format!(
            "{stuck} earlier reads have not returned (a hung mount or GPU driver?)"
        ));
    }
    let state = Arc::new(AtomicU8::new(RUNNING));
    let job = {
        let (cfg, dir, source, state) = (
            cfg.clone(),
            work_dir.to_owned(),
            source.clone(),
            state.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let findings = read_host(&cfg, &dir, &source);
            // Whichever of this job and the timeout below comes second
            // balances STUCK.
            if state.swap(DONE, Ordering::SeqCst) == ABANDONED {
                STUCK.fetch_sub(1, Ordering::SeqCst);
            }
            findings
        })
    };
    match tokio::time::timeout(cfg.check_timeout, job).await {
        Ok(Ok(findings)) => findings,
        Ok(Err(e)) => unanswered(format!("the reads stopped: {e}")),
        Err(_) => {
            STUCK.fetch_add(1, Ordering::SeqCst);
            if state.swap(ABANDONED, Ordering::SeqCst) == DONE {
                STUCK.fetch_sub(1, Ordering::SeqCst);
            }
            unanswered(format!(
                "no answer within {} (a hung mount or GPU driver?)",
                duration(cfg.check_timeout)
            ))
        }
    }
}

fn read_host(cfg: &HealthConfig, dir: &Path, source: &GpuSource) -> HostFindings {
    let checks = vec![
        check_disk(dir, cfg.min_free_disk_bytes),
        check_memory(cfg.min_available_memory_bytes),
        check_load(cfg.max_load_per_cpu),
    ];
    (checks, source.telemetry())
}

fn unanswered(why: String) -> HostFindings {
    let checks = [DISK, MEMORY, LOAD]
        .into_iter()
        .map(|name| check(name, false, why.clone()))
        .collect();
    (checks, Err(why))
}

fn check(name: &str, passed: bool, detail: String) -> HealthCheck {
    HealthCheck {
        name: name.into(),
        passed,
        detail,
    }
}

/// Free space (for unprivileged users) on the filesystem holding `dir`.
pub fn check_disk(dir: &Path, min_free_bytes: u64) -> HealthCheck {
    match nix::sys::statvfs::statvfs(dir) {
        // The field types are u32 or u64 depending on the target.
        #[allow(clippy::useless_conversion)]
        Ok(s) => {
            let free = u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size()));
            check(
                DISK,
                free >= min_free_bytes,
                format!(
                    "{} free on {}, need {}",
                    bytes(free),
                    dir.display(),
                    bytes(min_free_bytes)
                ),
            )
        }
        Err(e) => check(DISK, false, format!("cannot stat {}: {e}", dir.display())),
    }
}

/// MemAvailable: what the kernel can give without swapping, cache included.
pub fn check_memory(min_available_bytes: u64) -> HealthCheck {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| crate::capacity::meminfo_kib(&s, "MemAvailable"))
        .map(|kib| kib.saturating_mul(1024));
    match available {
        Some(a) => check(
            MEMORY,
            a >= min_available_bytes,
            format!(
                "{} available, need {}",
                bytes(a),
                bytes(min_available_bytes)
            ),
        ),
        None => check(
            MEMORY,
            false,
            "cannot read MemAvailable from /proc/meminfo".into(),
        ),
    }
}

pub fn check_load(max_per_cpu: f64) -> HealthCheck {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    load_check(load, host_cpus(), max_per_cpu)
}

/// The load average counts the whole host, so it is divided by the host's
/// CPUs (/proc/stat), not by the ones this process may use (a container's
/// quota would make a busy host look overloaded).
fn host_cpus() -> usize {
    let counted = std::fs::read_to_string("/proc/stat").ok().map(|s| {
        s.lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count()
    });
    match counted {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn load_check(load: Option<f64>, cpus: usize, max_per_cpu: f64) -> HealthCheck {
    let Some(load) = load else {
        return check(LOAD, false, "cannot read /proc/loadavg".into());
    };
    let per_cpu = load / cpus.max(1) as f64;
    check(
        LOAD,
        per_cpu <= max_per_cpu,
        format!(
            "1-minute load {per_cpu:.2} per CPU ({load:.2} on {cpus} CPUs), max {max_per_cpu:.2}"
        ),
    )
}

/// A node the replica hears from late makes every exchange slow; until a
/// pong has come back there is nothing to judge.
/// Heartbeat round trips the latency check looks at.
pub const RTT_WINDOW: usize = 5;

/// The last [`RTT_WINDOW`] round trips to the current replica.
#[derive(Debug, Default)]
pub struct RttWindow(std::collections::VecDeque<Duration>);

impl RttWindow {
    pub fn push(&mut self, rtt: Duration) {
        if self.0.len() == RTT_WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(rtt);
    }

    /// Forgets them (a new stream, perhaps to another replica).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The network path's round trip: the least of the window.
    pub fn path(&self) -> Option<Duration> {
        self.0.iter().min().copied()
    }
}

pub fn check_latency(rtt: Option<Duration>, max: Duration) -> HealthCheck {
    match rtt {
        None => check(
            LATENCY,
            true,
            "round trip to the replica not measured yet".into(),
        ),
        Some(rtt) => check(
            LATENCY,
            rtt <= max,
            format!(
                "round trip to the replica {}, max {}",
                duration(rtt),
                duration(max)
            ),
        ),
    }
}

/// Every GPU aspect in one check (see the module documentation).
pub fn check_gpus(
    registered: usize,
    telemetry: &Result<Vec<GpuTelemetry>, String>,
    max_temperature_c: u32,
) -> HealthCheck {
    let gpus = match telemetry {
        Ok(gpus) => gpus,
        Err(e) => return check(GPU, false, e.clone()),
    };
    let mut problems = Vec::new();
    if gpus.len() != registered {
        problems.push(format!(
            "{} GPUs visible, {registered} registered",
            gpus.len()
        ));
    }
    for g in gpus {
        if g.temperature_c > max_temperature_c {
            problems.push(format!(
                "GPU {} at {} °C, max {max_temperature_c} °C",
                g.index, g.temperature_c
            ));
        }
        if g.ecc_errors > 0 {
            problems.push(format!(
                "GPU {}: {} uncorrected ECC errors, max 0",
                g.index, g.ecc_errors
            ));
        }
        if g.memory_total_mib == 0 || g.memory_used_mib > g.memory_total_mib {
            problems.push(format!(
                "GPU {}: memory reads {} MiB used of {} MiB",
                g.index, g.memory_used_mib, g.memory_total_mib
            ));
        }
    }
    if problems.is_empty() {
        let hottest = gpus.iter().map(|g| g.temperature_c).max().unwrap_or(0);
        check(
            GPU,
            true,
            format!(
                "{} GPUs, hottest {hottest} °C (max {max_temperature_c} °C), no ECC errors",
                gpus.len()
            ),
        )
    } else {
        check(GPU, false, problems.join("; "))
    }
}

/// Whether the node can still start a task: fork/exec works, the work dir
/// is usable as a working directory, and it happens in reasonable time.
/// The process is `true` from PATH or, where there is none (an image that
/// holds only gantry), the agent's own binary with `--version`.
pub async fn check_runtime(work_dir: &Path, timeout: Duration) -> HealthCheck {
    let started = tokio::time::Instant::now();
    let run = async {
        match spawn_in(work_dir, Path::new("true"), &[]).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && work_dir.is_dir() => {
                let exe = std::env::current_exe()?;
                spawn_in(work_dir, &exe, &["--version"]).await
            }
            other => other,
        }
    };
    let dir = work_dir.display();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(status)) if status.success() => check(
            RUNTIME,
            true,
            format!(
                "spawned a process in {dir} in {}, max {}",
                duration(started.elapsed()),
                duration(timeout)
            ),
        ),
        Ok(Ok(status)) => check(RUNTIME, false, format!("a process in {dir}: {status}")),
        Ok(Err(e)) => check(
            RUNTIME,
            false,
            format!("cannot spawn a process in {dir}: {e}"),
        ),
        Err(_) => check(
            RUNTIME,
            false,
            format!(
                "a process in {dir} did not finish within {}",
                duration(timeout)
            ),
        ),
    }
}

async fn spawn_in(
    dir: &Path,
    program: &Path,
    args: &[&str],
) -> std::io::Result<std::process::ExitStatus> {
    tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?
        .wait()
        .await
}

/// `512 MiB`, `10 GiB`, `3.2 GiB`.
fn bytes(n: u64) -> String {
    let (unit, name) = match n {
        n if n >= GIB => (GIB, "GiB"),
        n if n >= MIB => (MIB, "MiB"),
        _ => return format!("{n} B"),
    };
    if n.is_multiple_of(unit) {
        format!("{} {name}", n / unit)
    } else {
        format!("{:.1} {name}", n as f64 / unit as f64)
    }
}

/// `250 ms`, `5 s`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(passed: usize, failed: usize) -> Vec<HealthCheck> {
        (0..passed)
            .map(|i| check(&format!("ok{i}"), true, String::new()))
            .chain((0..failed).map(|i| check(&format!("bad{i}"), false, "why".into())))
            .collect()
    }

    #[test]
    fn t10_score_is_the_share_passed_and_90_percent_is_healthy() {
        let r = report(checks(9, 1), 90, 7);
        assert_eq!((r.score, r.healthy, r.checked_at_ms), (90, true, 7));
        let r = report(checks(4, 1), 90, 0);
        assert_eq!((r.score, r.healthy), (80, false));
        let r = report(checks(2, 1), 60, 0);
        assert_eq!((r.score, r.healthy), (66, true));
        let r = report(checks(6, 0), 100, 0);
        assert_eq!((r.score, r.healthy), (100, true));
        let r = report(checks(0, 3), 1, 0);
        assert_eq!((r.score, r.healthy), (0, false));
        assert_eq!(report(Vec::new(), 90, 0).score, 100);
        assert_eq!(
            failing(&report(checks(1, 2), 90, 0)),
            "bad0: why; bad1: why"
        );
    }

    #[test]
    fn t10_a_report_changes_with_its_findings_not_its_time() {
        let a = report(checks(5, 0), 90, 1);
        assert!(same_findings(&a, &report(checks(5, 0), 90, 2)));
        assert!(!same_findings(&a, &report(checks(4, 1), 90, 1)));
        let mut b = a.clone();
        b.checks[0].detail = "12 GiB free".into();
        assert!(!same_findings(&a, &b));
    }

    #[test]
    fn t10_defaults_are_documented_and_valid() {
        let d = HealthConfig::default();
        assert_eq!(d.interval, Duration::from_secs(10));
        assert_eq!(d.min_free_disk_bytes, 10 * GIB);
        assert_eq!(d.healthy_percent, 90);
        assert_eq!(d.validate(), Ok(()));
        let bad = HealthConfig {
            healthy_percent: 0,
            ..d.clone()
        };
        assert!(bad.validate().unwrap_err().contains("healthy_percent"));
        let bad = HealthConfig {
            max_load_per_cpu: f64::NAN,
            ..d
        };
        assert!(bad.validate().unwrap_err().contains("max_load_per_cpu"));
    }

    #[test]
    fn t20_disk_check_compares_free_space_with_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let c = check_disk(dir.path(), u64::MAX);
        assert!(!c.passed, "{c:?}");
        assert!(
            c.detail.contains("free on") && c.detail.contains("need"),
            "{c:?}"
        );
        let c = check_disk(dir.path(), 0);
        assert!(c.passed, "{c:?}");
        let c = check_disk(&dir.path().join("missing"), 0);
        assert!(!c.passed && c.detail.starts_with("cannot stat"), "{c:?}");
    }

    #[test]
    fn t20_latency_is_judged_by_the_path_not_a_busy_replicas_pongs() {
        let max = Duration::from_millis(100);
        let mut w = RttWindow::default();
        assert_eq!(w.path(), None);
        // A replica starved of CPU answers some heartbeats late.
        for ms in [2, 450, 3, 900, 2] {
            w.push(Duration::from_millis(ms));
        }
        assert!(check_latency(w.path(), max).passed);
        // A slow path delays every pong.
        for ms in [250, 300, 260, 280, 270] {
            w.push(Duration::from_millis(ms));
        }
        assert!(!check_latency(w.path(), max).passed);
        assert_eq!(w.path(), Some(Duration::from_millis(250)));
        w.clear();
        assert_eq!(w.path(), None);
    }

    #[test]
    fn t20_memory_load_and_latency_checks() {
        assert!(check_memory(0).passed);
        assert!(!check_memory(u64::MAX).passed);
        assert!(check_load(f64::MAX).passed);
        let c = load_check(Some(10.0), 2, 4.0);
        assert!(!c.passed);
        assert_eq!(
            c.detail,
            "1-minute load 5.00 per CPU (10.00 on 2 CPUs), max 4.00"
        );
        assert!(!load_check(None, 2, 4.0).passed);
        let max = Duration::from_millis(100);
        assert!(check_latency(None, max).passed);
        assert!(check_latency(Some(Duration::from_millis(100)), max).passed);
        let c = check_latency(Some(Duration::from_millis(250)), max);
        assert!(!c.passed);
        assert_eq!(c.detail, "round trip to the replica 250 ms, max 100 ms");
    }

    fn gpu(index: u32) -> GpuTelemetry {
        GpuTelemetry {
            index,
            uuid: format!("GPU-{index}"),
            model: "A100".into(),
            memory_total_mib: 81920,
            temperature_c: 40,
            ..GpuTelemetry::default()
        }
    }

    #[test]
    fn t20_gpu_check_lists_every_failed_aspect() {
        assert!(check_gpus(2, &Ok(vec![gpu(0), gpu(1)]), 90).passed);
        let mut hot = gpu(1);
        hot.temperature_c = 95;
        hot.ecc_errors = 3;
        hot.memory_used_mib = 90000;
        let c = check_gpus(3, &Ok(vec![gpu(0), hot]), 90);
        assert!(!c.passed);
        assert_eq!(
            c.detail,
            "2 GPUs visible, 3 registered; GPU 1 at 95 °C, max 90 °C; \
             GPU 1: 3 uncorrected ECC errors, max 0; \
             GPU 1: memory reads 90000 MiB used of 81920 MiB"
        );
        let c = check_gpus(1, &Err("GPU 0: temperature: Unknown".into()), 90);
        assert!(!c.passed && c.detail.contains("temperature"));
    }

    #[tokio::test]
    async fn t20_runtime_check_spawns_in_the_work_dir() {
        let dir = tempfile::tempdir().unwrap();
        let c = check_runtime(dir.path(), Duration::from_secs(5)).await;
        assert!(c.passed, "{c:?}");
        let c = check_runtime(&dir.path().join("missing"), Duration::from_secs(5)).await;
        assert!(!c.passed, "{c:?}");
        assert!(c.detail.starts_with("cannot spawn a process"), "{c:?}");
    }

    #[tokio::test]
    async fn t30_run_checks_reports_every_check_and_the_inventory_gpus() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = dir.path().join("gpus.json");
        std::fs::write(
            &inventory,
            r#"{"gpus":[{"uuid":"GPU-a","model":"m","memory_total_mib":1024,"temperature_c":50}]}"#,
        )
        .unwrap();
        let source = Arc::new(GpuSource::File(inventory.clone()));
        let cfg = HealthConfig {
            min_free_disk_bytes: 0,
            min_available_memory_bytes: 0,
            max_load_per_cpu: f64::MAX,
            ..HealthConfig::default()
        };
        let (r, gpus) = run_checks(&cfg, dir.path(), &source, 1, None).await;
        let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [DISK, MEMORY, LOAD, LATENCY, GPU, RUNTIME]);
        assert!(r.healthy && r.score == 100, "{r:?}");
        assert!(r.checked_at_ms > 0);
        assert_eq!(gpus.len(), 1);

        // The file is re-read: a hot GPU now fails the gpu check (5/6 = 83 %).
        std::fs::write(
            &inventory,
            r#"{"gpus":[{"uuid":"GPU-a","model":"m","memory_total_mib":1024,"temperature_c":99}]}"#,
        )
        .unwrap();
        let rtt = Some(Duration::from_millis(1));
        let (r, _) = run_checks(&cfg, dir.path(), &source, 1, rtt).await;
        assert_eq!((r.score, r.healthy), (83, false), "{r:?}");
        assert_eq!(failing(&r), "gpu: GPU 0 at 99 °C, max 90 °C");

        // A node without GPUs has no gpu check.
        let (r, _) = run_checks(&cfg, dir.path(), &Arc::new(GpuSource::None), 0, rtt).await;
        assert_eq!(r.checks.len(), 5);
    }
}
