//! The consumer runtime (feature `runtime`): [`Consumer`], its
//! configuration, and the dead-letter path.

mod access;
mod attempt;
mod batch;
#[doc(hidden)]
pub mod bench_support;
mod client;
mod config;
mod consumer;
pub mod dead_letter;
mod exactly_once;
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub mod fault_injection;
mod lane;
pub(crate) mod native;
mod outcome;
mod producer;
mod service;
mod stats;
mod transactions;

pub use access::{ClusterRefused, RefusalKind, WatchedContext};
pub use batch::{BatchMeta, BatchOutcome, RecordBatch, RecordFailure};
pub use config::{
    is_secret_property, BatchSettings, ConfigError, ConsumerConfig, ContextSettings,
    DeadLetterPolicy, Ordering, Properties, PropertyValue, RetryPolicy, ENV_PREFIX,
    PRODUCER_ENV_PREFIX, TOOLING_ENV_VARS,
};
pub use consumer::{Consumer, ConsumerBuilder, ConsumerError};
pub use exactly_once::{BatchEndCallback, ExactlyOnce, Outbox, PartitionsCallback};
pub use outcome::is_retryable_status;
pub use producer::{Delivery, ProduceError, Producer, ProducerConfig};
pub use service::{BatchService, RecordService};
pub use stats::{PartitionLag, RuntimeStats};
pub use transactions::{
    TransactionCause, TransactionError, TransactionalProducer, TransactionalQueue,
};

/// Copies a message consumed with rdkafka into a [`ConsumedRecord`](crate::ConsumedRecord):
/// key, payload and every header byte for byte (rdkafka's own header API
/// panics on a key that is not UTF-8; this does not).
pub fn record_from_message(msg: &rdkafka::message::BorrowedMessage<'_>) -> crate::ConsumedRecord {
    use rdkafka::Message as _;
    native::to_consumed_record(msg, msg.topic().into())
}

/// Builds rdkafka headers from [`RawHeaders`](crate::RawHeaders), keys and
/// values byte for byte, null values kept; for producing with rdkafka
/// directly.
pub fn rdkafka_headers(headers: &crate::RawHeaders) -> rdkafka::message::OwnedHeaders {
    native::write_headers(headers)
}
