//! `gantry`: one binary for the replica (`server`), a local cluster (`dev`)
//! and the CLI (`job`, `cluster`). A thin clap layer over gantry-server and
//! gantry-client.

mod agent_cmd;
mod certs_cmd;
mod cluster_cmd;
mod dev;
mod job_cmd;
mod node_cmd;
mod output;
mod parse;
mod security;
mod server_cmd;
mod system_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gantry_client::{Client, ClientError, ClientOptions};

/// jemalloc instead of the system allocator: a replica's request path
/// allocates and frees many small buffers across threads (HTTP/2 frames, TLS
/// records, decoded messages, log entries); see docs/benchmarks.md for what
/// it changed.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit codes, after sysexits.h.
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Refused for now (rate limit, a full disk, a saturated cluster): retry later.
pub const EXIT_TEMPFAIL: u8 = 75;
/// A replica's Raft core stopped on a storage failure (or another fatal
/// error) it cannot recover from in-process: its supervisor restarts it.
pub const EXIT_STORAGE: u8 = 74;

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "A highly available job orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every client command takes.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// Replica addresses (HOST:PORT, comma-separated); any replica will do.
    #[arg(long, env = "GANTRY_SERVERS", value_delimiter = ',', global = true)]
    pub servers: Vec<String>,
    /// Print JSON (the API's proto3 JSON mapping) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to keep trying replicas before giving up, in seconds.
    #[arg(long, default_value_t = 15, global = true)]
    pub retry_seconds: u64,
    #[command(flatten)]
    pub security: security::SecurityArgs,
}

impl ClientArgs {
    pub fn client(&self) -> Result<Client, Failure> {
        let opts = ClientOptions {
            retry_deadline: std::time::Duration::from_secs(self.retry_seconds),
            transport: self.security.transport()?,
            ..ClientOptions::default()
        };
        Ok(Client::new(&self.servers, opts)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a replica.
    Server(Box<server_cmd::ServerArgs>),
    /// Run an agent: connect to the cluster and run the tasks it assigns.
    Agent(Box<agent_cmd::AgentArgs>),
    /// Make the cluster CA and role certificates.
    Certs {
        #[command(subcommand)]
        command: certs_cmd::CertsCommand,
    },
    /// Run a local cluster of replicas as child processes (for trying Gantry out).
    Dev(dev::DevArgs),
    /// Submit, inspect, list and cancel jobs.
    Job {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: job_cmd::JobCommand,
    },
    /// List nodes; cordon, uncordon and drain them.
    Node {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: node_cmd::NodeCommand,
    },
    /// Inspect and change the set of replicas.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cluster_cmd::ClusterCommand,
    },
    /// Cluster-wide maintenance: garbage-collect finished jobs.
    System {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: system_cmd::SystemCommand,
    },
    /// A task's supervisor (started by the agent; reads its spec on stdin).
    #[command(hide = true)]
    Supervise,
}

/// What a failed command reports and how it exits.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e.code() {
            Some(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => EXIT_UNAVAILABLE,
            Some(tonic::Code::ResourceExhausted) => EXIT_TEMPFAIL,
            None => EXIT_USAGE,
            Some(_) => 1,
        };
        Failure {
            message: e.to_string(),
            code,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            message: format!("{e:#}"),
            code: 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version print and succeed; a usage error exits
            // 64 (EX_USAGE) like every other configuration error.
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Command::Supervise = cli.command {
        // Before any runtime: the supervisor makes its own, single-threaded.
        return ExitCode::from(u8::try_from(gantry_agent::supervisor::main()).unwrap_or(1));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server_cmd::run(*args).await,
            Command::Agent(args) => agent_cmd::run(*args).await,
            Command::Certs { command } => certs_cmd::run(command),
            Command::Dev(args) => dev::run(args).await,
            Command::Node { client, command } => node_cmd::run(&client, command).await,
            Command::Job { client, command } => {
                let telemetry = gantry_telemetry::init_export_only("gantry-cli");
                // The root of a submitted job's trace.
                let span = tracing::info_span!("gantry job", otel.kind = "client");
                let r = tracing::Instrument::instrument(job_cmd::run(&client, command), span).await;
                telemetry.shutdown().await;
                r
            }
            Command::Cluster { client, command } => cluster_cmd::run(&client, command).await,
            Command::System { client, command } => system_cmd::run(&client, command).await,
            Command::Supervise => unreachable!("handled before the runtime starts"),
        }
    });
    // A task stuck in blocking I/O (a storage call on a failing disk) must
    // not keep the process, and the data dir's lock, alive after the end.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
