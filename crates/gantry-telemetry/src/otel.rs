//! OpenTelemetry: OTLP trace export configured by the standard variables,
//! and W3C trace context carried in gRPC metadata.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, over OTLP/gRPC;
//! `OTEL_SERVICE_NAME` names the process (default: `gantry-server`,
//! `gantry-agent` or `gantry-cli`), `OTEL_TRACES_SAMPLER` (and `_ARG`)
//! choose the sampler, as the specification says. Off, nothing is exported
//! and the helpers below still work (they carry no context).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether the OTEL variables ask for export.
pub fn export_requested() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Builds the tracer provider (inside a tokio runtime: the exporter is a
/// tonic client), or says why not.
pub(crate) fn provider(default_service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(default_service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

pub(crate) fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("gantry")
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent" && !self.0.is_empty()).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct Capture(Option<String>);

impl Injector for Capture {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// Puts the current span's context into outgoing gRPC metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut Metadata(metadata));
}

/// The context a caller sent in its request headers.
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The current span's W3C `traceparent`, or "" when there is no sampled
/// trace (export off, or not sampled).
pub fn traceparent() -> String {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut c = Capture(None);
    TraceContextPropagator::new().inject_context(&cx, &mut c);
    c.0.unwrap_or_default()
}

/// The context a stored `traceparent` names (empty: none).
pub fn context_of(traceparent: &str) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&One(traceparent))
}

/// Makes `span` a child of the context in `traceparent` (no-op when empty).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !traceparent.is_empty() {
        let _ = span.set_parent(context_of(traceparent));
    }
}

/// Makes `span` a child of what the caller sent in its headers.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id in a `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

/// A tonic interceptor that carries the current span's context.
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectContext;

impl tonic::service::Interceptor for InjectContext {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_traceparent_round_trips_and_names_its_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_of(tp);
        assert!(cx.span().span_context().is_valid());
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(trace_id_of(tp), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!context_of("").span().span_context().is_valid());
        assert!(!context_of("garbage").span().span_context().is_valid());
        // Outside any exported span there is nothing to carry.
        assert_eq!(traceparent(), "");
    }
}
