//! An audit trail as a [Tower](https://docs.rs/tower) layer: one structured
//! record per handled Kafka record or HTTP request, written to the log, a
//! file, a Kafka topic or a sink of your own, optionally hash-chained.
//!
//! # A short tour
//!
//! * **One record per call.** [`AuditLayer`] (made by [`Auditor::layer`])
//!   writes an [`AuditRecord`] for every call of the service it wraps:
//!   when, which service, who ([`kafka_tower::Caller`]: client id, subject,
//!   calling service), which ids (correlation and traceability id from the
//!   [`kafka_tower::PropagatedContext`] or the headers, the trace id of the
//!   W3C `traceparent`), what (topic, partition, offset, key or its hash,
//!   group, attempt — or method and path for HTTP), and how it went
//!   ([`Outcome`], status, latency, error class, and the layer, reason and
//!   detail of a [`kafka_tower::Refusal`]).
//! * **Off the request path.** A call only builds its record and puts it
//!   on a bounded queue; a writer thread hands batches to the sinks. A
//!   full queue waits or drops and counts ([`QueueFullPolicy`]). Audit
//!   never fails a call — unless [`must_audit`](AuditorBuilder::must_audit)
//!   is set: then a call waits for its record to be written and answers
//!   `503` with a `Refusal` (`audit`) when it cannot be, which the consumer
//!   runtime retries.
//! * **Sinks.** [`TracingSink`] (JSON lines through `tracing`),
//!   [`FileSink`] (append, one JSON per line), `KafkaSink` (feature
//!   `kafka`: an audit topic through kafka-tower's `Producer`),
//!   [`MemorySink`], [`NullSink`], and the [`AuditSink`] trait for your own.
//! * **Payloads, masked.** [`AuditLayer::capture_payload`] keeps the
//!   request payload, with fields named by JSON pointers masked
//!   ([`mask`]).
//! * **Tamper evidence.** With [`chain`](AuditorBuilder::chain), each record
//!   carries a SHA-256 hash chaining it to the previous record of its
//!   partition (or of the HTTP stream); [`chain::verify`] reports the first
//!   record that breaks a chain.
//!
//! Place the layer *outside* the layers whose refusals it should record —
//! an authentication or schema layer refuses before the service runs, and
//! the audit layer sees its refusal in the response — and
//! [`Auditor::caller_layer`] *inside* the authentication layer, to report
//! the [`kafka_tower::Caller`] it establishes back to the record
//! ([`AuditCaller`]).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use kafka_tower::{Caller, RecordBody, RecordMeta};
//! use kafka_tower_audit::{chain, Auditor, BodyPayload, MemorySink, Outcome};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sink = MemorySink::new();
//! let auditor = Auditor::builder()
//!     .service_id("payments")
//!     .sink(sink.clone())
//!     .mask("/card/number")
//!     .chain(true)
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .layer(auditor.layer().capture_payload(BodyPayload))
//!     .service(service_fn(|_req: Request<RecordBody>| async {
//!         Ok::<_, Infallible>(Response::new(String::new()))
//!     }));
//!
//! let payload = br#"{"card":{"number":"4111111111111111"},"amount":12}"#;
//! let mut req = Request::post("/payments").body(RecordBody::from(bytes::Bytes::from_static(payload)))?;
//! req.extensions_mut().insert(RecordMeta::new("payments", 0, 7));
//! req.extensions_mut().insert(Caller::new(Some("user-1"), Some("web-shop"), None));
//! assert_eq!(service.oneshot(req).await?.status(), StatusCode::OK);
//!
//! auditor.flush().await?;
//! let records = sink.records();
//! assert_eq!(records[0].outcome, Outcome::Ok);
//! assert_eq!(records[0].client_id.as_deref(), Some("web-shop"));
//! assert_eq!(records[0].payload.as_ref().unwrap()["card"]["number"], "***");
//! assert!(chain::verify(&records).is_ok());
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! | [`AuditorBuilder`] method | default | meaning |
//! |---|---|---|
//! | [`service_id`](AuditorBuilder::service_id) | `unknown` | the `service_id` of every record |
//! | [`sink`](AuditorBuilder::sink) / [`sink_arc`](AuditorBuilder::sink_arc) | — (at least one) | where records go; each record goes to every sink |
//! | [`key_mode`](AuditorBuilder::key_mode) | [`KeyMode::Plain`] | the record key as text (`hex:` if not UTF-8), its SHA-256, or nothing |
//! | [`queue_capacity`](AuditorBuilder::queue_capacity) | 1024 | records waiting for the writer |
//! | [`when_full`](AuditorBuilder::when_full) | [`QueueFullPolicy::Block`] | a full queue makes the call wait, or drops the record and counts it ([`Auditor::dropped`]) |
//! | [`batch_size`](AuditorBuilder::batch_size) | 64 | most records per sink write |
//! | [`linger`](AuditorBuilder::linger) | 1 ms | the writer's wait for more records after a short batch (fewer thread wake-ups; that much more delay) |
//! | [`must_audit`](AuditorBuilder::must_audit) | `false` | a call waits for its record to be written; failure answers `503` + `Refusal` `audit` / `sink_failed`, `queue_full` or `closed` |
//! | [`chain`](AuditorBuilder::chain) | `false` | SHA-256 hash chain per partition / HTTP stream ([`chain`]) |
//! | [`mask`](AuditorBuilder::mask) | none | JSON pointers of captured payload fields to mask (`*` matches every element) |
//! | [`max_payload_bytes`](AuditorBuilder::max_payload_bytes) | 64 KiB | larger captured payloads are not kept |
//! | [`AuditLayer::capture_payload`] | [`NoPayload`] | [`BodyPayload`], or a closure choosing the bytes |
//!
//! # Record fields
//!
//! | field | from |
//! |---|---|
//! | `timestamp`, `latency_us` | the call's start (RFC 3339 UTC, µs) and duration |
//! | `service_id` | the configuration |
//! | `client_id`, `subject`, `calling_service` | the [`kafka_tower::Caller`] request extension, as it reaches the audit layer or an inner [`AuditCallerLayer`] |
//! | `correlation_id`, `traceability_id`, `trace_id` | the [`kafka_tower::PropagatedContext`] extension, else the `x-correlation-id`, `x-traceability-id`, `traceparent` headers |
//! | `topic`, `partition`, `offset`, `key` / `key_sha256`, `group`, `attempt` | the [`kafka_tower::RecordMeta`] extension |
//! | `method`, `path` | the request, when it is not a Kafka record |
//! | `outcome`, `status`, `error_class`, `error` | the response (or the service's `Err`, a panic, a cancellation) |
//! | `refused_by`, `refusal_reason`, `refusal_detail` | the [`kafka_tower::Refusal`] response extension |
//! | `payload_size`, `payload` | the captured payload, masked |
//! | `chain` | the hash chain link |
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `kafka` | no | `KafkaSink`: records produced to an audit topic; enables `kafka-tower/runtime` (librdkafka) |
//!
//! # Performance
//!
//! `cargo bench -p kafka-tower-audit` (`benches/audit.rs`): one whole call
//! (request built, served by a ready service, future driven) per
//! iteration, [`NullSink`], record with meta, caller and context; on a
//! shared 2-core VM (load average ≈ 5.7 during the run, so ± 20 %):
//!
//! | path | time | overhead |
//! |---|---|---|
//! | no layer (baseline) | ≈ 0.49 µs | — |
//! | [`AuditLayer`], drop policy (request path only) | ≈ 1.40 µs | ≈ 0.9 µs |
//! | [`AuditLayer`], block policy, chained (paced by the writer thread) | ≈ 2.27 µs | ≈ 1.8 µs |
//!
//! The request path clones reference-counted parts of the request into a
//! draft and queues it; the writer thread formats, masks, hashes and
//! chains. At the bench's rate (≈ 700 000 calls/s) the writer, sharing two
//! busy cores, falls behind: the drop-policy run dropped ≈ 18 % of its
//! records, and the block-policy run is paced by the writer.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod auditor;
mod caller;
mod capture;
pub mod chain;
pub mod future;
#[cfg(feature = "kafka")]
mod kafka;
mod layer;
pub mod mask;
mod record;
mod sink;

pub use auditor::{AuditClosed, AuditError, Auditor, AuditorBuilder, QueueFullPolicy};
pub use caller::{AuditCaller, AuditCallerLayer};
pub use capture::{BodyPayload, CapturePayload, NoPayload, PeekBody};

#[cfg(feature = "kafka")]
pub use kafka::KafkaSink;
pub use layer::{Audit, AuditLayer};
pub use record::{AuditRecord, ChainLink, KeyMode, Outcome};
pub use sink::{
    AuditSink, FileSink, MemorySink, NullSink, SinkError, SinkFuture, TracingSink, AUDIT_TARGET,
};
