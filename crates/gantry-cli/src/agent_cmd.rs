//! `gantry agent`.

use std::path::PathBuf;
use std::time::Duration;

use gantry_agent::AgentConfig;

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
    /// Serve /metrics (Prometheus), /ready and /live over HTTP on HOST:PORT.
    #[arg(long, env = "GANTRY_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[arg(long, env = "GANTRY_LOG_FORMAT", default_value = "human")]
    log_format: gantry_telemetry::LogFormat,
    #[command(flatten)]
    security: crate::security::SecurityArgs,
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
        transport: args.security.transport()?,
        metrics_listen: args.metrics_listen,
    };
    gantry_agent::run(cfg, shutdown_signal())
        .await
        .map_err(|e| Failure {
            message: e.to_string(),
            code: EXIT_USAGE,
        })
}
