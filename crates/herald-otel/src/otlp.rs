//! Export spans over OTLP/HTTP (protobuf) to a collector (feature `otlp`).
//!
//! Owns [`Otlp`]: an OpenTelemetry tracer provider with a batching OTLP
//! exporter, and the `tracing` layer that feeds it. Does not own the
//! `tracing` subscriber: add [`Otlp::layer`] to yours, call
//! [`install`](crate::install), and [`Otlp::shutdown`] before exit so what
//! is batched is sent.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! # fn main() -> herald::Result<()> {
//! let otlp = herald_otel::otlp::Otlp::http("http://127.0.0.1:4318/v1/traces", "billing")?;
//! let subscriber = tracing_subscriber::registry().with(otlp.layer());
//! tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
//! herald_otel::install();
//! // … run the service …
//! otlp.shutdown()?;
//! # Ok(()) }
//! ```

use herald::{Error, ErrorCode};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetryLayer;

/// A tracer provider exporting to one OTLP/HTTP endpoint.
#[derive(Debug)]
pub struct Otlp {
    provider: SdkTracerProvider,
}

impl Otlp {
    /// Export to `endpoint` (the full traces URL, e.g.
    /// `http://collector:4318/v1/traces`) as service `service_name`.
    /// `VALIDATION` for an exporter that cannot be built.
    pub fn http(endpoint: &str, service_name: &str) -> herald::Result<Otlp> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| Error::validation(format!("OTLP exporter for {endpoint:?}: {e}")))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        Ok(Otlp { provider })
    }

    /// The `tracing` layer whose spans this exports.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("herald"))
    }

    /// Send what is batched now.
    pub fn flush(&self) -> herald::Result<()> {
        self.provider.force_flush().map_err(unavailable)
    }

    /// Send what is batched and stop.
    pub fn shutdown(self) -> herald::Result<()> {
        self.provider.shutdown().map_err(unavailable)
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("OTLP export: {e}"))
}
