//! `gantry agent`.

use std::path::PathBuf;
use std::time::Duration;

use gantry_agent::AgentConfig;
use gantry_agent::health::HealthConfig;

use crate::server_cmd::shutdown_signal;
use crate::{EXIT_USAGE, Failure, parse};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Replica addresses (HOST:PORT, comma-separated); the agent connects to one at a time.
    #[arg(long, env = "GANTRY_SERVERS", value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// This node's id (defaults to the host name).
    #[arg(long, env = "GANTRY_NODE_ID")]
    node_id: Option<String>,
    /// Node label KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = parse::key_value)]
    labels: Vec<(String, String)>,
    /// Where attempts get their working directories.
    #[arg(
        long,
        env = "GANTRY_AGENT_DATA_DIR",
        default_value = "/var/lib/gantry-agent"
    )]
    data_dir: PathBuf,
    /// Most tasks at once (0: limited by resources only).
    #[arg(long, env = "GANTRY_MAX_TASKS", default_value_t = 0)]
    max_tasks: u32,
    /// CPU to offer, instead of every core: cores (4) or millicores (3500m).
    #[arg(long, value_parser = parse::cpu_millis)]
    cpu: Option<u64>,
    /// Memory to offer, instead of all of it: MiB, 512Mi or 2Gi.
    #[arg(long, value_parser = parse::memory_mib)]
    mem: Option<u64>,
    /// Time between SIGTERM and SIGKILL when a task is cancelled or times out.
    #[arg(long, value_parser = parse::duration_ms, default_value = "5s")]
    kill_grace: u64,
    /// On SIGTERM: how long running tasks may take to finish before they are
    /// stopped and handed back to run elsewhere (no new tasks meanwhile).
    /// 0 stops them at once.
    #[arg(long, env = "GANTRY_AGENT_SHUTDOWN_GRACE", value_parser = parse::duration_ms, default_value = "30s")]
    shutdown_grace: u64,
    /// Serve /metrics (Prometheus), /ready and /live over HTTP on HOST:PORT.
    #[arg(long, env = "GANTRY_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// GPU inventory JSON to read instead of NVML: a test/simulation input,
    /// never for real nodes ({"gpus":[{"uuid":…,"model":…,"memory_total_mib":…}]}).
    #[arg(long, env = "GANTRY_AGENT_GPU_INVENTORY", value_name = "FILE")]
    gpu_inventory: Option<PathBuf>,
    #[command(flatten)]
    health: HealthArgs,
    #[command(flatten)]
    tasks: TaskArgs,
    #[arg(long, env = "GANTRY_LOG_FORMAT", default_value = "human")]
    log_format: gantry_telemetry::LogFormat,
    #[command(flatten)]
    security: crate::security::SecurityArgs,
}

/// How tasks are confined (docs/operations.md, "Task limits and users").
#[derive(clap::Args)]
#[command(next_help_heading = "Tasks")]
struct TaskArgs {
    /// The user tasks run as when the agent runs as root (a name or uid).
    #[arg(long, env = "GANTRY_AGENT_TASK_USER", default_value = "nobody")]
    task_user: String,
    /// Users a job may ask to run as (`job submit --user`), comma-separated.
    #[arg(long, env = "GANTRY_AGENT_ALLOW_TASK_USER", value_delimiter = ',')]
    allow_task_user: Vec<String>,
    /// Do not put tasks in cgroups: no memory, CPU or process limits (the
    /// node then reports it, and placement policy strict avoids it).
    #[arg(long, env = "GANTRY_AGENT_NO_CGROUPS")]
    no_cgroups: bool,
    /// An absolute working directory jobs may name (`--workdir /data/x`),
    /// as a path prefix; repeatable. Without it a job's work dir is
    /// relative to its own directory.
    #[arg(long, env = "GANTRY_AGENT_ALLOW_WORKDIR", value_delimiter = ',')]
    allow_workdir: Vec<PathBuf>,
    /// Most processes (and threads) one task may have; 0: no limit.
    #[arg(long, env = "GANTRY_AGENT_TASK_PIDS_MAX", default_value_t = gantry_agent::confine::DEFAULT_PIDS_MAX)]
    task_pids_max: u64,
    /// How long before the cluster's node grace ends the node's tasks are
    /// stopped when the cluster stops confirming it (agent dead, frozen or
    /// cut off): the cluster runs them elsewhere only after the grace.
    #[arg(long, env = "GANTRY_AGENT_FENCE_MARGIN", value_parser = parse::duration_ms, default_value = "3s")]
    fence_margin: u64,
}

/// Health check thresholds; the defaults are `HealthConfig::default()`'s.
#[derive(clap::Args)]
#[command(next_help_heading = "Health checks")]
struct HealthArgs {
    /// Time between two runs of the health checks.
    #[arg(long, env = "GANTRY_AGENT_HEALTH_INTERVAL", value_parser = positive_duration_ms, default_value = "10s")]
    health_interval: u64,
    /// Least free space on DATA_DIR/work: MiB (10240), 512Mi or 10Gi.
    #[arg(long, env = "GANTRY_AGENT_HEALTH_MIN_FREE_DISK", value_parser = parse::memory_mib, default_value = "10Gi")]
    health_min_free_disk: u64,
    /// Least available memory (MemAvailable): MiB (256), 512Mi or 2Gi.
    #[arg(long, env = "GANTRY_AGENT_HEALTH_MIN_AVAILABLE_MEMORY", value_parser = parse::memory_mib, default_value = "256Mi")]
    health_min_available_memory: u64,
    /// Longest heartbeat round trip to the replica.
    #[arg(long, env = "GANTRY_AGENT_HEALTH_MAX_RTT", value_parser = positive_duration_ms, default_value = "100ms")]
    health_max_rtt: u64,
    /// Highest 1-minute load average per CPU.
    #[arg(long, env = "GANTRY_AGENT_HEALTH_MAX_LOAD_PER_CPU", value_parser = positive_number, default_value = "4.0")]
    health_max_load_per_cpu: f64,
    /// Hottest a GPU may run, in °C.
    #[arg(long, env = "GANTRY_AGENT_HEALTH_MAX_GPU_TEMP", value_parser = clap::value_parser!(u32).range(1..=200), default_value_t = 90)]
    health_max_gpu_temp: u32,
    /// Least share of health checks passed (percent) for the node to be healthy.
    #[arg(long, env = "GANTRY_AGENT_HEALTH_HEALTHY_PERCENT", value_parser = clap::value_parser!(u32).range(1..=100), default_value_t = 90)]
    health_healthy_percent: u32,
}

const MIB: u64 = 1024 * 1024;

impl HealthArgs {
    fn config(&self) -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(self.health_interval),
            min_free_disk_bytes: self.health_min_free_disk.saturating_mul(MIB),
            min_available_memory_bytes: self.health_min_available_memory.saturating_mul(MIB),
            max_load_per_cpu: self.health_max_load_per_cpu,
            max_rtt: Duration::from_millis(self.health_max_rtt),
            max_gpu_temperature_c: self.health_max_gpu_temp,
            healthy_percent: self.health_healthy_percent,
            ..HealthConfig::default()
        }
    }
}

/// A duration above zero (clap names the flag in the error).
fn positive_duration_ms(s: &str) -> Result<u64, String> {
    match parse::duration_ms(s)? {
        0 => Err(format!("{s:?} must be more than 0")),
        ms => Ok(ms),
    }
}

fn positive_number(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("{s:?} is not a number above 0")),
    }
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}

pub async fn run(args: AgentArgs) -> Result<(), Failure> {
    let telemetry = gantry_telemetry::init(args.log_format, "gantry-agent");
    let result = run_agent(args).await;
    telemetry.shutdown().await;
    result
}

async fn run_agent(args: AgentArgs) -> Result<(), Failure> {
    if args.security.insecure {
        tracing::warn!(
            "--insecure: the agent talks plaintext gRPC and proves nothing about itself"
        );
    }
    let node_id = args.node_id.or_else(hostname).ok_or_else(|| Failure {
        message: "invalid configuration: node_id: pass --node-id (the host name is unknown)".into(),
        code: EXIT_USAGE,
    })?;
    let cfg = AgentConfig {
        servers: args.servers,
        node_id,
        labels: args.labels.into_iter().collect(),
        data_dir: args.data_dir,
        max_tasks: args.max_tasks,
        cpu_millis: args.cpu,
        memory_mib: args.mem,
        kill_grace: Duration::from_millis(args.kill_grace),
        shutdown_grace: Duration::from_millis(args.shutdown_grace),
        transport: args.security.transport()?,
        metrics_listen: args.metrics_listen,
        health: args.health.config(),
        gpu_inventory: args.gpu_inventory,
        confine: gantry_agent::confine::ConfineConfig {
            supervisor: supervisor_command()?,
            cgroups: !args.tasks.no_cgroups,
            task_user: args.tasks.task_user,
            allowed_users: args.tasks.allow_task_user,
            pids_max: args.tasks.task_pids_max,
            allowed_workdirs: args.tasks.allow_workdir,
        },
        fence_margin: Duration::from_millis(args.tasks.fence_margin),
    };
    gantry_agent::run(cfg, shutdown_signal())
        .await
        .map_err(|e| Failure {
            message: e.to_string(),
            code: EXIT_USAGE,
        })
}

/// This binary's `supervise` subcommand.
fn supervisor_command() -> Result<Vec<std::ffi::OsString>, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure {
        message: format!("cannot find this program's path to start task supervisors: {e}"),
        code: EXIT_USAGE,
    })?;
    Ok(vec![exe.into_os_string(), "supervise".into()])
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(extra: &[&str]) -> Result<AgentArgs, clap::Error> {
        let args = ["gantry", "--servers", "127.0.0.1:1"].iter().chain(extra);
        Cli::try_parse_from(args).map(|c| c.agent)
    }

    #[test]
    fn t10_health_flags_default_to_the_agents_defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.health.config(), HealthConfig::default());
        assert_eq!(args.gpu_inventory, None);
    }

    #[test]
    fn t10_health_flags_parse_units_and_name_themselves_when_wrong() {
        let args = parse(&[
            "--health-min-free-disk",
            "2Gi",
            "--health-interval",
            "1m",
            "--health-max-load-per-cpu",
            "1.5",
            "--gpu-inventory",
            "/tmp/gpus.json",
        ])
        .unwrap();
        let cfg = args.health.config();
        assert_eq!(cfg.min_free_disk_bytes, 2 * 1024 * MIB);
        assert_eq!(cfg.interval, Duration::from_secs(60));
        assert_eq!(cfg.max_load_per_cpu, 1.5);
        for (flag, value) in [
            ("--health-healthy-percent", "0"),
            ("--health-healthy-percent", "101"),
            ("--health-interval", "0s"),
            ("--health-max-rtt", "soon"),
            ("--health-max-load-per-cpu", "0"),
            ("--health-max-load-per-cpu", "NaN"),
            ("--health-max-gpu-temp", "0"),
            ("--health-min-free-disk", "1Ti"),
        ] {
            let e = parse(&[flag, value]).err().unwrap().to_string();
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
    }
}
