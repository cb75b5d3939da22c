//! `gantry server`: flags and `GANTRY_*` variables over an optional TOML
//! file, validated into a `ServerConfig`; bad configuration exits 64.

use std::path::PathBuf;

use gantry_server::{ServerConfig, ServerSettings};
use gantry_telemetry::LogFormat;

use crate::{EXIT_STORAGE, EXIT_USAGE, Failure};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// TOML file with the same settings (flags and GANTRY_* variables win).
    #[arg(long, env = "GANTRY_CONFIG")]
    config: Option<PathBuf>,
    /// Take the id from a name ending in an ordinal: `gantry-0` is replica 1
    /// (for a Kubernetes StatefulSet: --id-from-ordinal $(POD_NAME)).
    #[arg(long, env = "GANTRY_ID_FROM_ORDINAL", conflicts_with = "id")]
    id_from_ordinal: Option<String>,
    /// Every setting of the replica (declared once, in gantry-server).
    #[command(flatten)]
    settings: ServerSettings,
    /// Validate the configuration, print it, and exit (0 when valid, 64 when not).
    #[arg(long)]
    check: bool,
    /// Log format: human or json.
    #[arg(long, env = "GANTRY_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    #[command(flatten)]
    security: crate::security::SecurityArgs,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: EXIT_USAGE,
    }
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

/// Layers the flags and variables over the file, then the defaults.
fn resolve(args: &ServerArgs) -> Result<ServerConfig, Failure> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
            ServerSettings::from_toml(&text).map_err(|e| {
                usage(format!(
                    "invalid configuration in {}: {}",
                    path.display(),
                    e.problem
                ))
            })?
        }
        None => ServerSettings::default(),
    };
    let mut given = args.settings.clone();
    if let Some(name) = &args.id_from_ordinal {
        given.id = Some(id_from_ordinal(name)?);
    }
    // TLS: flags and GANTRY_* variables, else the file's [tls] or insecure.
    let security = &args.security;
    if security.ca.is_some()
        || security.cert.is_some()
        || security.key.is_some()
        || security.insecure
    {
        let tls = security.tls_paths()?;
        given.insecure = Some(tls.is_none());
        given.tls = tls;
    }
    let settings = given.over(file);
    settings.require().map_err(|e| usage(e.to_string()))?;
    let config = settings.resolve();
    if config.tls.is_some() && config.insecure {
        return Err(usage(
            "invalid configuration: insecure: given together with TLS files: choose one",
        ));
    }
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
            let _ = ServerSettings::from_toml(&text).map(ServerSettings::resolve);
            let _ = gantry_server::parse_peers(&text);
        }

        #[test]
        fn t30_config_shaped_text_never_panics(
            id in "[0-9a-z]{0,4}",
            peers in "[0-9=:.,a-z]{0,40}",
            rate in any::<i64>(),
        ) {
            let text = format!("id = {id}\nlisten = \"127.0.0.1:0\"\npeers = \"{peers}\"\nsubmit_rate = {rate}\n");
            let _ = ServerSettings::from_toml(&text).map(|s| s.resolve().validate());
        }
    }
}
