//! Serve every Kafka record as an [`http::Request`] through composable
//! [Tower](https://docs.rs/tower) middleware.
//!
//! kafka-tower hands each consumed record to any
//! `tower::Service<http::Request<RecordBody>>` — a closure service, a
//! hand-written one, or an unmodified `axum::Router` routing by topic — so the
//! cross-cutting concerns that live in HTTP middleware (authentication,
//! validation, tracing, metrics, audit) and the existing `tower` /
//! `tower-http` layers compose with `ServiceBuilder` unchanged.
//!
//! # A short tour
//!
//! * [`ConsumedRecord`] → [`http::Request`]: the topic becomes the path
//!   `/<topic>`, the payload the body ([`RecordBody`]), headers go into the
//!   `HeaderMap` *and*, byte-exact, into the [`RawHeaders`] extension; key,
//!   partition, offset, timestamp, group and attempt are in [`RecordMeta`].
//!   See [`mapping`].
//! * The service answers with an `http::Response`: `2xx` means handled;
//!   `408`, `429` and `5xx` (or an `Err`, or a panic) are retried with
//!   backoff; any other status is a permanent failure that goes straight to
//!   the dead-letter topic. A layer that refuses a record says who and why
//!   with a [`Refusal`] extension.
//! * The runtime (`Consumer`, feature `runtime`) owns offsets, ordering,
//!   backpressure, retries and dead-lettering. For bulk writes,
//!   `Consumer::serve_batches` serves a partition's records together as an
//!   `http::Request<RecordBatch>`, and a `BatchOutcome` in the answer says
//!   which of them failed.
//! * Producing is a `Service` over `http::Request` too (`runtime::Producer`),
//!   so tower layers apply to it; [`context::InjectContextLayer`] puts the
//!   caller's token, correlation id and trace context — the
//!   [`PropagatedContext`] captured by [`context::CaptureContextLayer`] or by
//!   the runtime — into the record headers or an outgoing HTTP request.
//! * Transactions (`runtime::TransactionalProducer`,
//!   `runtime::TransactionalQueue`) and exactly-once consume-transform-produce
//!   (`Consumer::serve_exactly_once`) make a topic an event store.
//!
//! Companion crates, each a plain `tower::Layer` that depends on this
//! crate's vocabulary only: `kafka-tower-jwt` (JWT verification with
//! queue-aware expiry), `kafka-tower-schema` (JSON Schema), `kafka-tower-trace`
//! (OpenTelemetry), `kafka-tower-metrics` (Prometheus), `kafka-tower-audit`
//! (audit trail); and `kafka-tower-streams` (state stores, aggregates and
//! projections on the exactly-once mode).
//!
//! ```no_run
//! # #[cfg(feature = "runtime")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::convert::Infallible;
//! use kafka_tower::{Consumer, RecordBody, RecordMeta};
//! use tower::{service_fn, ServiceBuilder};
//!
//! let handler = service_fn(|req: http::Request<RecordBody>| async move {
//!     let meta = req.extensions().get::<RecordMeta>().unwrap();
//!     println!("{} {}@{}", req.uri().path(), meta.partition(), meta.offset());
//!     Ok::<_, Infallible>(http::Response::new(String::new()))
//! });
//! let service = ServiceBuilder::new()
//!     .layer(tower::timeout::TimeoutLayer::new(std::time::Duration::from_secs(5)))
//!     .service(handler);
//!
//! Consumer::builder()
//!     .bootstrap_servers("127.0.0.1:9092")
//!     .group_id("orders-service")
//!     .topics(["orders"])
//!     .build()?
//!     .serve(service, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `runtime` | yes | The rdkafka-based consumer runtime, configuration loading and the dead-letter producer. Without it the crate is only the vocabulary (mapping, [`RecordMeta`], [`RawHeaders`], [`Refusal`]) and does not build librdkafka. |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod caller;
pub mod context;
#[cfg(feature = "runtime")]
pub mod dlq;
pub mod mapping;
mod offsets;
pub mod outcome;
mod record;
pub mod refusal;
#[cfg(feature = "runtime")]
pub mod runtime;

pub use body::RecordBody;
pub use caller::Caller;
pub use context::PropagatedContext;
pub use mapping::{ConsumedRecord, MappingError, OutgoingRecord};
pub use offsets::OffsetTracker;
pub use record::{RawHeader, RawHeaders, RecordMeta, TimestampType};
pub use refusal::Refusal;
#[cfg(feature = "runtime")]
pub use runtime::{
    Consumer, ConsumerBuilder, ConsumerConfig, ConsumerError, DeadLetterPolicy, Ordering,
    RetryPolicy,
};

/// The boxed error type used where a service's own error is erased.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Defines `get_ref`, `get_mut` and `into_inner` on a middleware service
/// `Foo<S, ..>` whose inner service `S` is the field `inner` (or the field
/// named): the accessors every kafka-tower middleware has, as tower-http's
/// do. Used inside `impl<S> Foo<S> { .. }`.
#[doc(hidden)]
#[macro_export]
macro_rules! define_inner_service_accessors {
    () => {
        $crate::define_inner_service_accessors!(inner);
    };
    ($inner:ident) => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.$inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.$inner
        }

        /// Consumes `self`, returning the inner service.
        pub fn into_inner(self) -> S {
            self.$inner
        }
    };
}
