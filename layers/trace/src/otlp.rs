//! OTLP export (feature `otlp`): a tracer provider sending spans over
//! OTLP/HTTP (protobuf) with a batch processor.
//!
//! ```no_run
//! use kafka_tower_trace::otlp::OtlpConfig;
//! use tracing_subscriber::layer::SubscriberExt as _;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = OtlpConfig::new("orders-service")
//!     .endpoint("http://otel-collector:4318/v1/traces")
//!     .tracer_provider()?;
//! let subscriber = tracing_subscriber::registry()
//!     .with(kafka_tower_trace::tracing_layer(&provider));
//! tracing::subscriber::set_global_default(subscriber)?;
//! // … serve; on shutdown: provider.shutdown()?;
//! # Ok(()) }
//! ```

use std::fmt;

use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// Where and as whom spans are exported.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    service_name: String,
    endpoint: Option<String>,
}

/// The exporter could not be built (a bad endpoint, say); the message
/// says why.
#[derive(Debug)]
pub struct OtlpError(String);

impl fmt::Display for OtlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot build the OTLP exporter: {}", self.0)
    }
}

impl std::error::Error for OtlpError {}

impl OtlpConfig {
    /// Exports as `service.name = service_name`; the endpoint comes from
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// else `http://localhost:4318/v1/traces`.
    pub fn new(service_name: impl Into<String>) -> Self {
        OtlpConfig {
            service_name: service_name.into(),
            endpoint: None,
        }
    }

    /// The OTLP/HTTP traces endpoint, overriding the environment.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// A tracer provider exporting in batches. Call
    /// `SdkTracerProvider::shutdown` before exiting to flush.
    pub fn tracer_provider(&self) -> Result<SdkTracerProvider, OtlpError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: one is installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = SpanExporter::builder().with_http();
        if let Some(e) = &self.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let exporter = builder.build().map_err(|e| OtlpError(e.to_string()))?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(self.service_name.clone())
                    .build(),
            )
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_provider_for_an_explicit_endpoint() {
        let p = OtlpConfig::new("svc")
            .endpoint("http://127.0.0.1:1/v1/traces")
            .tracer_provider()
            .expect("provider");
        let _ = p.shutdown();
    }
}
