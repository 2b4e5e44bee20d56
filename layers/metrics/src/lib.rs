//! Prometheus metrics as a [Tower](https://docs.rs/tower) layer, for Kafka
//! records served by kafka-tower and for HTTP routes alike.
//!
//! # A short tour
//!
//! * **Service view.** [`ServiceMetricsLayer`] counts every call by topic and
//!   [`Outcome`] (`ok`, `refused`, `failed`, `retryable`), observes the
//!   handling latency in seconds, and tracks calls in flight. The topic is
//!   the record's ([`kafka_tower::RecordMeta`]), or the first URI path
//!   segment of an HTTP request.
//! * **Client view.** The same counters by client id, read from the
//!   [`kafka_tower::Caller`] request extension an authentication layer
//!   (such as `kafka-tower-jwt`) inserts — place that layer outside this
//!   one. The label is bounded by a [`LabelLimit`] (a cap or an
//!   allow-list; the rest is counted as `other`), and so is the topic
//!   label, since URI paths are caller-controlled.
//! * **Cheap on the hot path.** Label values are resolved once into metric
//!   handles; a record's interned topic and a cached caller's client id are
//!   then found by address, without hashing the strings.
//! * **Producer view.** [`ProducerMetricsLayer`] around kafka-tower's
//!   `Producer` counts sends, acknowledgements and errors, and times them.
//! * **Runtime view** (feature `runtime`): dead letters, retries,
//!   attempts, commits, pauses, in-flight and buffered records, and
//!   consumer lag per partition, read from the consumer's `RuntimeStats`
//!   at scrape time ([`Metrics::register_runtime`]).
//! * **`/metrics`.** [`MetricsEndpoint`] is a `tower::Service` answering
//!   with the text exposition format; mount it in axum with
//!   `route_service("/metrics", metrics.endpoint())`.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use kafka_tower::{Caller, RecordBody, RecordMeta};
//! use kafka_tower_metrics::{LabelLimit, Metrics};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = Metrics::builder()
//!     .service_id("orders-service")
//!     .client_labels(LabelLimit::cap(50))
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .layer(metrics.layer())
//!     .service(service_fn(|_req: Request<RecordBody>| async {
//!         Ok::<_, Infallible>(Response::new(String::new()))
//!     }));
//!
//! let mut req = Request::post("/orders").body(RecordBody::from(bytes::Bytes::from_static(b"{}")))?;
//! req.extensions_mut().insert(RecordMeta::new("orders", 0, 7));
//! req.extensions_mut().insert(Caller::new(Some("u1"), Some("web-shop"), None));
//! assert_eq!(service.oneshot(req).await?.status(), StatusCode::OK);
//!
//! let text = metrics.render();
//! assert!(text.contains(r#"kafka_tower_records_total{outcome="ok",service="orders-service",topic="orders"} 1"#));
//! assert!(text.contains(r#"kafka_tower_client_records_total{client="web-shop",outcome="ok",service="orders-service"} 1"#));
//! # Ok(()) }
//! ```
//!
//! # Metrics
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `<prefix>_records_total` | counter | `service`, `topic`, `outcome` |
//! | `<prefix>_handling_duration_seconds` | histogram | `service`, `topic` |
//! | `<prefix>_records_in_flight` | gauge | `service`, `topic` |
//! | `<prefix>_client_records_total` | counter | `service`, `client`, `outcome` |
//! | `<prefix>_producer_sends_total` / `_acks_total` / `_errors_total` | counter | `service`, `topic` |
//! | `<prefix>_producer_send_duration_seconds` | histogram | `service`, `topic` |
//! | `<prefix>_consumer_*` (feature `runtime`) | see [`RuntimeCollector`](runtime::RuntimeCollector) | `service` (+ `topic`, `partition` for lag) |
//!
//! Outcomes map onto what the consumer runtime does next: `ok` is
//! committed, `retryable` (`408`, `429`, `5xx`, `Err`) is retried and, once
//! the attempts are used up, dead-lettered — the runtime view's
//! `consumer_dead_letters_total` counts those — and `failed` and `refused`
//! are dead-lettered at once.
//!
//! # Configuration
//!
//! | builder method | default | meaning |
//! |---|---|---|
//! | [`prefix`](MetricsBuilder::prefix) | `kafka_tower` | common prefix of every metric name |
//! | [`service_id`](MetricsBuilder::service_id) | `unknown` | the `service` label (service view) |
//! | [`client_labels`](MetricsBuilder::client_labels) | cap 100 | bound of the `client` label; the rest is `other`, no caller is `anonymous` |
//! | [`topic_labels`](MetricsBuilder::topic_labels) | cap 1000 | bound of the `topic` label |
//! | [`buckets`](MetricsBuilder::buckets) | 100 µs … 10 s | latency histogram buckets, seconds |
//! | [`registry`](MetricsBuilder::registry) | a new one | the `prometheus::Registry` to register into |
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `runtime` | no | [`Metrics::register_runtime`] and the runtime collector; enables `kafka-tower/runtime` (librdkafka) |
//!
//! # Performance
//!
//! `cargo bench -p kafka-tower-metrics` (`benches/metrics.rs`), one whole
//! call (request built, served by a ready service, future driven) per
//! iteration, on a shared 2-core VM:
//!
//! | path | time | overhead |
//! |---|---|---|
//! | no layer (baseline) | ≈ 0.59 µs | — |
//! | [`ServiceMetricsLayer`] (record, cached topic and client) | ≈ 1.05 µs | ≈ 0.46 µs |
//! | [`ProducerMetricsLayer`] (topic from the path) | ≈ 1.16 µs | ≈ 0.57 µs |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod endpoint;
mod labels;
mod outcome;
mod producer;
mod registry;
#[cfg(feature = "runtime")]
pub mod runtime;
mod service;

pub use endpoint::{render, MetricsEndpoint, TEXT_CONTENT_TYPE};
pub use labels::{LabelLimit, OTHER};
pub use outcome::Outcome;
pub use producer::{ProducerFuture, ProducerMetrics, ProducerMetricsLayer};
pub use registry::{Metrics, MetricsBuilder, MetricsError, DEFAULT_BUCKETS, DEFAULT_PREFIX};
pub use service::{ResponseFuture, ServiceMetrics, ServiceMetricsLayer, ANONYMOUS};

/// The former name of [`ServiceMetricsLayer`].
#[deprecated(
    note = "renamed `ServiceMetricsLayer` (its service is `ServiceMetrics<S>`, \
                     as `ProducerMetricsLayer`'s is `ProducerMetrics<S>`)"
)]
pub type MetricsLayer = ServiceMetricsLayer;
/// The former name of [`ServiceMetrics`].
#[deprecated(note = "renamed `ServiceMetrics`, after its layer `ServiceMetricsLayer`")]
pub type MetricsService<S> = ServiceMetrics<S>;
/// The former name of [`ProducerMetrics`].
#[deprecated(note = "renamed `ProducerMetrics`, after its layer `ProducerMetricsLayer`")]
pub type ProducerMetricsService<S> = ProducerMetrics<S>;
