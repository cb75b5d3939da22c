//! Logging set-up shared by every Gantry process: `tracing` to stderr,
//! filtered by `RUST_LOG` (default `info`), human-readable or JSON lines;
//! and OpenTelemetry trace export (see [`otel`]).

pub mod otel;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" | "text" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?}: use \"human\" or \"json\""
            )),
        }
    }
}

/// Flushes exported spans when the process ends: keep it until then, and
/// call [`Telemetry::shutdown`] (dropping it flushes too, blocking).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is buffered and stops the exporter.
    pub async fn shutdown(mut self) {
        if let Some(p) = self.provider.take() {
            // The SDK's shutdown blocks on the export; keep it off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = std::thread::spawn(move || p.shutdown()).join();
        }
    }
}

/// What is logged when `RUST_LOG` is not set. openraft warns once per failed
/// replication try; the replica logs a peer's reachability itself, once per
/// change and as a periodic summary, so those two sources are kept to errors.
pub const DEFAULT_FILTER: &str = "info,openraft=warn,openraft::replication=error,\
    openraft::engine::handler::replication_handler=error,openraft::core::heartbeat=error,\
    sled=warn,h2=warn,tower=warn";

/// Installs the global subscriber: logs, and trace export to OTLP when the
/// `OTEL_*` variables ask for it (`service` is the default service name).
/// Calling it twice is harmless (the second call keeps the first
/// subscriber). Call it inside the tokio runtime.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (provider, otel_error) = if otel::export_requested() {
        match otel::provider(service) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(otel::tracer(p)));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let _ = match format {
        LogFormat::Human => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OpenTelemetry export is off");
    }
    Telemetry { provider }
}

/// For the CLI: no log output of its own, only trace export when the
/// `OTEL_*` variables ask for it, so `gantry job submit` is the root of the
/// job's trace.
pub fn init_export_only(service: &str) -> Telemetry {
    if !otel::export_requested() {
        return Telemetry::default();
    }
    match otel::provider(service) {
        Ok(p) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(otel::tracer(&p))
                .with_filter(EnvFilter::new("info"));
            let _ = tracing_subscriber::registry().with(layer).try_init();
            Telemetry { provider: Some(p) }
        }
        Err(e) => {
            eprintln!("warning: OpenTelemetry export is off: {e}");
            Telemetry::default()
        }
    }
}

/// For tests: logs only when `RUST_LOG` is set, so parallel test output stays quiet.
pub fn init_for_tests() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
