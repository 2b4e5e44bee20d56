//! OpenTelemetry tracing as a [Tower](https://docs.rs/tower) layer, for
//! Kafka records served by kafka-tower and for HTTP routes alike.
//!
//! # A short tour
//!
//! * **Consumer spans.** [`TraceLayer`] starts one span per record, named
//!   `process <topic>`, kind CONSUMER, with the attributes of the
//!   OpenTelemetry messaging semantic conventions: `messaging.system`
//!   (`kafka`), `messaging.operation.type` / `.name` (`process`),
//!   `messaging.destination.name`, `messaging.destination.partition.id`,
//!   `messaging.kafka.offset`, `messaging.kafka.message.key` (when UTF-8,
//!   configurable), `messaging.consumer.group.name`,
//!   `messaging.message.body.size`, and `error.type` when the service
//!   fails (the status code, `<layer>.<reason>` of a
//!   [`kafka_tower::Refusal`], or `service_error`). An HTTP request gets a
//!   SERVER span `<METHOD> /<segment>`.
//! * **Producer context continues.** The context the producer put in the
//!   record headers is extracted through OpenTelemetry's propagator API —
//!   W3C `traceparent` / `tracestate` and `baggage` by default, Jaeger or
//!   B3 selectable ([`Propagation`]) — and becomes the span's parent, or a
//!   link ([`ParentMode`]).
//! * **Producer spans.** [`TraceProducerLayer`] around kafka-tower's
//!   `Producer` starts `send <topic>` (kind PRODUCER) as a child of the
//!   current span and injects its context into the outgoing record.
//! * **`tracing` first.** Spans are `tracing` spans; with
//!   [`tracing_layer`] (tracing-opentelemetry) in the subscriber they
//!   become OpenTelemetry spans and every log the handler writes carries
//!   the trace. `correlation_id` and `traceability_id` are span fields, read
//!   from the [`kafka_tower::PropagatedContext`] extension; a correlation id
//!   is generated when missing and kept in that context.
//! * **Downstream hops see this span.** The handler runs with a
//!   `PropagatedContext` (extension and task-local) whose `traceparent` is
//!   the consumer span's, so kafka-tower's `InjectContextLayer` alone
//!   already continues the trace on the next hop.
//! * **Export.** Any OpenTelemetry SDK exporter; OTLP/HTTP with feature
//!   `otlp` ([`otlp::OtlpConfig`]).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use kafka_tower::{RecordBody, RecordMeta};
//! use kafka_tower_trace::{tracing_layer, TraceLayer};
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tracing_subscriber::layer::SubscriberExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
//! let _guard = tracing::subscriber::set_default(
//!     tracing_subscriber::registry().with(tracing_layer(&provider)),
//! );
//!
//! let service = TraceLayer::new().layer(service_fn(|_req: Request<RecordBody>| async {
//!     tracing::info!("handled"); // carries the trace
//!     Ok::<_, Infallible>(Response::new(String::new()))
//! }));
//! let mut req = Request::post("/orders")
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(RecordBody::from(bytes::Bytes::from_static(b"{}")))?;
//! req.extensions_mut().insert(RecordMeta::new("orders", 3, 42));
//! service.oneshot(req).await?;
//!
//! let spans = exporter.get_finished_spans()?;
//! assert_eq!(spans[0].name, "process orders");
//! assert_eq!(spans[0].span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(spans[0].parent_span_id.to_string(), "00f067aa0ba902b7");
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! | method | default | meaning |
//! |---|---|---|
//! | [`TraceLayer::propagation`] | [`Propagation::w3c`] | how the producer's context is read ([`Propagation::jaeger`], [`Propagation::b3`], [`Propagation::custom`]) |
//! | [`TraceLayer::parent_mode`] | [`ParentMode::Parent`] | parent, or link to, the producer's span |
//! | [`TraceLayer::record_key`] | `true` | record a UTF-8 key as `messaging.kafka.message.key` |
//! | [`TraceProducerLayer::propagation`] | [`Propagation::w3c`] | how the context is written into records |
//! | `otlp::OtlpConfig::endpoint` (feature `otlp`) | `OTEL_EXPORTER_OTLP_*`, else `localhost:4318` | OTLP/HTTP traces endpoint |
//!
//! Layer order on a consumer: put `TraceLayer` outside the layers whose
//! refusals it should see (JWT, schema), inside the runtime.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `otlp` | no | [`otlp::OtlpConfig`]: OTLP/HTTP (protobuf) export with a batch processor |
//!
//! # Performance
//!
//! `cargo bench -p kafka-tower-trace` (`benches/trace.rs`), one whole call
//! per iteration (a record with a `traceparent` and no correlation id), on a
//! shared 2-core VM:
//!
//! | path | time | overhead |
//! |---|---|---|
//! | no layer (baseline) | ≈ 0.41 µs | — |
//! | [`TraceLayer`], no subscriber | ≈ 0.96 µs | ≈ 0.55 µs |
//! | [`TraceLayer`], span exported (simple processor, in-memory) | ≈ 3.95 µs | ≈ 3.5 µs |
//! | [`TraceProducerLayer`], span exported | ≈ 2.9 µs | ≈ 2.5 µs |
//!
//! Without a subscriber the layer is within the 1.5 µs target (it builds
//! the propagated context and generates a correlation id from a
//! thread-local RNG for a record that has none). With spans exported it is
//! not: the cost is the SDK's span creation and the synchronous simple
//! processor used by the bench; use a batch processor in production.
//!
//! # Versions
//!
//! `opentelemetry`, `opentelemetry_sdk` and `opentelemetry-otlp` 0.33 with
//! `tracing-opentelemetry` 0.34, the matching set. The Jaeger and B3
//! propagators are implemented in [`Propagation`].

#![cfg_attr(docsrs, feature(doc_cfg))]

mod layer;
#[cfg(feature = "otlp")]
pub mod otlp;
mod producer;
mod propagation;

pub use layer::{ParentMode, ResponseFuture, Trace, TraceLayer};
pub use producer::{ProducerFuture, TraceProducer, TraceProducerLayer};
pub use propagation::{B3Propagator, JaegerPropagator, Propagation};

/// A `tracing-subscriber` layer turning `tracing` spans into OpenTelemetry
/// spans of `provider` (tracer `kafka-tower`), so handler logs carry the
/// trace.
pub fn tracing_layer<S>(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    tracing_opentelemetry::layer().with_tracer(provider.tracer("kafka-tower"))
}
