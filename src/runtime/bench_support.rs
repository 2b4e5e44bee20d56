//! Hooks for the crate's own benchmarks (`benches/layers.rs`,
//! `benches/alloc.rs`). Not a public API: hidden from the docs, exempt from
//! semver, and may change with the runtime.
//!
//! [`ServingPath`] runs the runtime's per-record serving path — the same
//! code a partition lane runs for each record: context capture, record →
//! request, `poll_ready` + `call`, outcome classification, retries — with a
//! runtime configured as [`ConsumerConfig`](super::ConsumerConfig)'s
//! defaults, but without a broker, a poll thread or lane scheduling.
//!
//! ```
//! use std::convert::Infallible;
//! use kafka_tower::runtime::bench_support::ServingPath;
//! use kafka_tower::{ConsumedRecord, RecordBody};
//!
//! let path = ServingPath::new();
//! let mut noop = tower::service_fn(|_req: http::Request<RecordBody>| async {
//!     Ok::<_, Infallible>(http::Response::new(String::new()))
//! });
//! let record = ConsumedRecord::builder("orders", 0, 1).build();
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! assert!(rt.block_on(path.serve(&mut noop, &record)));
//! ```

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use super::attempt::{serve_attempts, AttemptPolicy, Attempted, RequestTarget};
use super::config::RetryPolicy;
use super::service::RecordService;
use super::stats::RuntimeStats;
use crate::context::ContextConfig;
use crate::ConsumedRecord;

/// The runtime's per-record serving path, set up once and run per record.
pub struct ServingPath {
    policy: AttemptPolicy,
    cancel: CancellationToken,
    target: OnceLock<(Arc<str>, RequestTarget)>,
}

impl std::fmt::Debug for ServingPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingPath").finish_non_exhaustive()
    }
}

impl Default for ServingPath {
    fn default() -> Self {
        Self::new()
    }
}

impl ServingPath {
    /// A serving path with the default consumer configuration: partition
    /// ordering, default retry policy, context capture on (correlation id
    /// generated when missing), no dead-letter writer.
    pub fn new() -> Self {
        Self::with_context_capture(true)
    }

    /// As [`ServingPath::new`], with the runtime's context capture on or
    /// off (`context.capture` in the configuration).
    pub fn with_context_capture(capture: bool) -> Self {
        ServingPath {
            policy: AttemptPolicy {
                group: Arc::from("bench"),
                retry: RetryPolicy::default(),
                max_error_len: 1024,
                stats: Arc::new(RuntimeStats::default()),
                context: capture.then(ContextConfig::default),
            },
            cancel: CancellationToken::new(),
            target: OnceLock::new(),
        }
    }

    /// Serves `record` to `service` as a lane does, calling the caller's
    /// instance (a lane calls its own in turn; a failed call's instance is
    /// replaced by a clone). Returns whether the record succeeded (`2xx`
    /// within the retry policy).
    ///
    /// Like a lane, the path builds the request target (the topic's URI,
    /// the cache of header names) once, for the first record's topic, and
    /// reuses it for every record of that topic; a record of another topic
    /// gets a target of its own for that call.
    pub async fn serve<S: RecordService>(&self, service: &mut S, record: &ConsumedRecord) -> bool {
        let cached = self.target.get_or_init(|| {
            (
                record.topic.clone(),
                RequestTarget::new(&record.topic, &self.policy.group),
            )
        });
        let other;
        let target = if cached.0 == record.topic {
            &cached.1
        } else {
            other = RequestTarget::new(&record.topic, &self.policy.group);
            &other
        };
        matches!(
            serve_attempts(
                &self.policy,
                service,
                record,
                target,
                &self.cancel,
                None,
                |_| {}
            )
            .await,
            Attempted::Succeeded
        )
    }

    /// Service calls made so far (retries included).
    pub fn attempts(&self) -> u64 {
        self.policy.stats.attempts()
    }
}
