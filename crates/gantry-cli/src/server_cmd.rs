//! `gantry server`: flags and `GANTRY_*` variables over an optional TOML
//! file, validated into a `ServerConfig`; bad configuration exits 64.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gantry_server::{AdmissionLimits, RaftTimings, ServerConfig, parse_peers};
use gantry_telemetry::LogFormat;
use serde::Deserialize;

use crate::{EXIT_STORAGE, EXIT_USAGE, Failure};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// TOML file with the same settings (flags and GANTRY_* variables win).
    #[arg(long, env = "GANTRY_CONFIG")]
    config: Option<PathBuf>,
    /// This replica's id (1 or more), one of the ids in --peers.
    #[arg(long, env = "GANTRY_ID")]
    id: Option<u64>,
    /// Take the id from a name ending in an ordinal: `gantry-0` is replica 1
    /// (for a Kubernetes StatefulSet: --id-from-ordinal $(POD_NAME)).
    #[arg(long, env = "GANTRY_ID_FROM_ORDINAL", conflicts_with = "id")]
    id_from_ordinal: Option<String>,
    /// Address to listen on, HOST:PORT.
    #[arg(long, env = "GANTRY_LISTEN")]
    listen: Option<String>,
    /// Serve /metrics (Prometheus), /health, /ready and /live over HTTP on HOST:PORT.
    #[arg(long, env = "GANTRY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Every replica: ID=HOST:PORT,ID=HOST:PORT,...
    #[arg(long, env = "GANTRY_PEERS")]
    peers: Option<String>,
    /// Directory for this replica's Raft log, vote and snapshots.
    #[arg(long, env = "GANTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Join a running cluster (added with `gantry cluster add-replica`); never bootstrap.
    #[arg(long, env = "GANTRY_JOIN")]
    join: bool,
    #[arg(long, env = "GANTRY_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    #[arg(long, env = "GANTRY_ELECTION_TIMEOUT_MIN_MS")]
    election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "GANTRY_ELECTION_TIMEOUT_MAX_MS")]
    election_timeout_max_ms: Option<u64>,
    /// Snapshot and compact the log every this many entries.
    #[arg(long, env = "GANTRY_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Longest a client request waits for a leader or a commit.
    #[arg(long, env = "GANTRY_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// A node is lost when no replica has held its agent's stream this long.
    #[arg(long, env = "GANTRY_NODE_GRACE_MS")]
    node_grace_ms: Option<u64>,
    /// Submit requests per second per client identity (token bucket).
    #[arg(long, env = "GANTRY_SUBMIT_RATE")]
    submit_rate: Option<u32>,
    /// Submit requests a client may burst before the rate applies.
    #[arg(long, env = "GANTRY_SUBMIT_BURST")]
    submit_burst: Option<u32>,
    /// Placement policy for jobs that name none: strict, balanced or aggressive.
    #[arg(long, env = "GANTRY_PLACEMENT")]
    placement: Option<String>,
    /// Free space (MiB) kept in the data dir: below it, new submissions are
    /// refused with RESOURCE_EXHAUSTED until space is freed [default: 256].
    #[arg(long, env = "GANTRY_DISK_RESERVE_MIB")]
    disk_reserve_mib: Option<u64>,
    /// Pending tasks the cluster takes at most before refusing submissions (0: no limit) [default: 1000000].
    #[arg(long, env = "GANTRY_MAX_PENDING_TASKS")]
    max_pending_tasks: Option<u64>,
    /// Validate the configuration, print it, and exit (0 when valid, 64 when not).
    #[arg(long)]
    check: bool,
    /// Log format: human or json.
    #[arg(long, env = "GANTRY_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    #[command(flatten)]
    security: crate::security::SecurityArgs,
}

/// The TOML file: every field optional, names as in `ServerConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    listen: Option<String>,
    metrics_listen: Option<String>,
    peers: Option<FilePeers>,
    data_dir: Option<PathBuf>,
    join: Option<bool>,
    request_timeout_ms: Option<u64>,
    node_grace_ms: Option<u64>,
    submit_rate: Option<u32>,
    submit_burst: Option<u32>,
    placement: Option<String>,
    insecure: Option<bool>,
    tls: Option<FileTls>,
    raft: Option<FileRaft>,
    admission: Option<FileAdmission>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmission {
    disk_reserve_mib: Option<u64>,
    max_pending_tasks: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// `peers = "1=a:1,2=b:2"` or a `[peers]` table of `"1" = "a:1"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FilePeers {
    List(String),
    Table(BTreeMap<String, String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaft {
    heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_every: Option<u64>,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: EXIT_USAGE,
    }
}

fn missing(field: &str, flag: &str, env: &str) -> Failure {
    usage(format!(
        "invalid configuration: {field}: is required: pass {flag}, set {env}, or put it in --config"
    ))
}

/// `gantry-2` → 3: a StatefulSet's pods are numbered from 0, replicas from 1.
fn id_from_ordinal(name: &str) -> Result<u64, Failure> {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| {
            usage(format!(
                "invalid configuration: id_from_ordinal: {name:?} does not end in -N (e.g. gantry-0)"
            ))
        })
}

/// Merges the file, the environment and the flags into one configuration.
fn resolve(args: &ServerArgs) -> Result<ServerConfig, Failure> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
            toml::from_str(&text)
                .map_err(|e| usage(format!("invalid configuration in {}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };
    let from_ordinal = match &args.id_from_ordinal {
        Some(name) => Some(id_from_ordinal(name)?),
        None => None,
    };
    let id = args
        .id
        .or(from_ordinal)
        .or(file.id)
        .ok_or_else(|| missing("id", "--id", "GANTRY_ID"))?;
    let listen = args
        .listen
        .clone()
        .or(file.listen)
        .ok_or_else(|| missing("listen", "--listen", "GANTRY_LISTEN"))?;
    let listen = listen.parse().map_err(|_| {
        usage(format!(
            "invalid configuration: listen: {listen:?} is not IP:PORT (e.g. 127.0.0.1:7001)"
        ))
    })?;
    let metrics_listen = match args.metrics_listen.clone().or(file.metrics_listen) {
        Some(m) => Some(m.parse().map_err(|_| {
            usage(format!(
                "invalid configuration: metrics_listen: {m:?} is not IP:PORT (e.g. 127.0.0.1:9101)"
            ))
        })?),
        None => None,
    };
    let peers = match (args.peers.clone(), file.peers) {
        (Some(s), _) | (None, Some(FilePeers::List(s))) => {
            parse_peers(&s).map_err(|e| usage(e.to_string()))?
        }
        (None, Some(FilePeers::Table(t))) => {
            let mut peers = BTreeMap::new();
            for (k, v) in t {
                let id = k.parse::<u64>().map_err(|_| {
                    usage(format!(
                        "invalid configuration: peers: key {k:?} is not a replica id"
                    ))
                })?;
                peers.insert(id, v);
            }
            peers
        }
        (None, None) => return Err(missing("peers", "--peers", "GANTRY_PEERS")),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .ok_or_else(|| missing("data_dir", "--data-dir", "GANTRY_DATA_DIR"))?;
    // TLS: flags and GANTRY_* variables, else the file's [tls] or insecure.
    let mut security = args.security.clone();
    if security.ca.is_none()
        && security.cert.is_none()
        && security.key.is_none()
        && !security.insecure
    {
        if let Some(t) = file.tls {
            security.ca = Some(t.ca);
            security.cert = Some(t.cert);
            security.key = Some(t.key);
        }
        security.insecure = file.insecure.unwrap_or(false);
    }
    let tls = security.tls_paths()?;
    let fr = file.raft.unwrap_or_default();
    let d = RaftTimings::default();
    let fa = file.admission.unwrap_or_default();
    let da = AdmissionLimits::default();
    let config = ServerConfig {
        id,
        listen,
        metrics_listen,
        peers,
        data_dir,
        join: args.join || file.join.unwrap_or(false),
        request_timeout_ms: args
            .request_timeout_ms
            .or(file.request_timeout_ms)
            .unwrap_or(10_000),
        node_grace_ms: args.node_grace_ms.or(file.node_grace_ms).unwrap_or(10_000),
        insecure: tls.is_none(),
        tls,
        submit_rate: args.submit_rate.or(file.submit_rate).unwrap_or(2_000),
        submit_burst: args.submit_burst.or(file.submit_burst).unwrap_or(4_000),
        placement: args
            .placement
            .clone()
            .or(file.placement)
            .unwrap_or_else(|| "balanced".to_owned()),
        admission: AdmissionLimits {
            disk_reserve_mib: args
                .disk_reserve_mib
                .or(fa.disk_reserve_mib)
                .unwrap_or(da.disk_reserve_mib),
            max_pending_tasks: args
                .max_pending_tasks
                .or(fa.max_pending_tasks)
                .unwrap_or(da.max_pending_tasks),
        },
        raft: RaftTimings {
            heartbeat_ms: args
                .heartbeat_ms
                .or(fr.heartbeat_ms)
                .unwrap_or(d.heartbeat_ms),
            election_timeout_min_ms: args
                .election_timeout_min_ms
                .or(fr.election_timeout_min_ms)
                .unwrap_or(d.election_timeout_min_ms),
            election_timeout_max_ms: args
                .election_timeout_max_ms
                .or(fr.election_timeout_max_ms)
                .unwrap_or(d.election_timeout_max_ms),
            snapshot_every: args
                .snapshot_every
                .or(fr.snapshot_every)
                .unwrap_or(d.snapshot_every),
        },
    };
    config.validate().map_err(|e| usage(e.to_string()))?;
    Ok(config)
}

pub async fn run(args: ServerArgs) -> Result<(), Failure> {
    let telemetry = gantry_telemetry::init(args.log_format, "gantry-server");
    let result = serve(args).await;
    telemetry.shutdown().await;
    result
}

async fn serve(args: ServerArgs) -> Result<(), Failure> {
    let config = resolve(&args)?;
    if args.check {
        println!("configuration is valid:\n{config:#?}");
        return Ok(());
    }
    let mut handle = gantry_server::start(config).await.map_err(|e| match e {
        gantry_server::StartError::Config(_) => usage(e.to_string()),
        other => Failure {
            message: other.to_string(),
            code: 1,
        },
    })?;
    // systemd (Type=notify): the gRPC port is open. A no-op elsewhere.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let stopped = tokio::select! {
        r = handle.wait() => Some(r),
        () = shutdown_signal() => None,
    };
    match stopped {
        Some(Err(gantry_server::Failed::Raft(why))) => {
            tracing::error!(error = %why, exit_code = EXIT_STORAGE, "the Raft core stopped (storage failure?): exiting so that the supervisor restarts this replica");
            stop_within_bound(handle).await;
            Err(Failure {
                message: format!("replica stopped: the Raft core stopped: {why}"),
                code: EXIT_STORAGE,
            })
        }
        Some(Err(e)) => Err(Failure {
            message: format!("server stopped: {e}"),
            code: 1,
        }),
        Some(Ok(())) => Ok(()),
        None => {
            tracing::info!("shutting down");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            stop_within_bound(handle).await;
            Ok(())
        }
    }
}

/// The longest a replica takes to stop on SIGTERM: hand-off, the grace
/// for open calls, and Raft's own shutdown, even with a dead core.
pub const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(15);

async fn stop_within_bound(handle: gantry_server::ServerHandle) {
    if tokio::time::timeout(SHUTDOWN_BOUND, handle.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            bound_s = SHUTDOWN_BOUND.as_secs(),
            "shutdown did not finish within its bound; exiting anyway"
        );
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn t10_id_from_a_statefulset_ordinal() {
        assert_eq!(id_from_ordinal("gantry-0").ok(), Some(1));
        assert_eq!(id_from_ordinal("my-gantry-12").ok(), Some(13));
        assert!(id_from_ordinal("gantry").is_err());
        assert!(id_from_ordinal("gantry-x").is_err());
        assert!(id_from_ordinal("gantry-18446744073709551615").is_err());
    }

    proptest! {
        // Whatever is in a config file, reading it is an error or a config, never a panic.
        #[test]
        fn t30_config_text_never_panics(text in "\\PC{0,300}") {
            let _ = toml::from_str::<FileConfig>(&text);
            let _ = parse_peers(&text);
        }

        #[test]
        fn t30_config_shaped_text_never_panics(
            id in "[0-9a-z]{0,4}",
            peers in "[0-9=:.,a-z]{0,40}",
            rate in any::<i64>(),
        ) {
            let text = format!("id = {id}\nlisten = \"127.0.0.1:0\"\npeers = \"{peers}\"\nsubmit_rate = {rate}\n");
            let _ = toml::from_str::<FileConfig>(&text);
        }
    }
}
