//! The attempt loop: one record from its first service call to its end —
//! success, retries with backoff, or a failure to dispose of (dead letter).
//!
//! Both delivery modes and the benchmarks call it the same way: the
//! at-least-once lanes ([`super::lane`]) and the exactly-once batches
//! ([`super::exactly_once`]) differ only in what they do with the outcome.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Uri};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{ConsumerConfig, RetryPolicy};
use super::consumer::ConsumerError;
use super::dead_letter::DeadLetterWriter;
use super::outcome::{invoke, ErrorClass, Failure};
use super::service::RecordService;
use super::stats::RuntimeStats;
use crate::context::{ContextConfig, PropagatedContext, CORRELATION_ID};
use crate::mapping::HeaderNameCache;
use crate::{ConsumedRecord, MappingError, RecordBody};

/// What the attempt loop needs, whatever the partition and the mode.
pub(crate) struct AttemptPolicy {
    pub(crate) group: Arc<str>,
    pub(crate) retry: RetryPolicy,
    pub(crate) max_error_len: usize,
    pub(crate) stats: Arc<RuntimeStats>,
    /// Context capture, when `context.capture` is on.
    pub(crate) context: Option<ContextConfig>,
}

impl AttemptPolicy {
    /// The policy a consumer configuration asks for.
    pub(crate) fn from_config(
        config: &ConsumerConfig,
        stats: Arc<RuntimeStats>,
    ) -> Result<Self, ConsumerError> {
        let context = if config.context.capture {
            Some(
                config
                    .context
                    .to_context_config()
                    .map_err(ConsumerError::config)?,
            )
        } else {
            None
        };
        Ok(AttemptPolicy {
            group: config.group_id.as_str().into(),
            retry: config.retry.clone(),
            max_error_len: config.dead_letter.max_error_len,
            stats,
            context,
        })
    }
}

/// What a partition's records become requests for: the topic's URI, built
/// once, the group, and the header names its records carried before.
pub(crate) struct RequestTarget {
    uri: Uri,
    // The lane's own copy of the group name, cloned into every request's
    // `RecordMeta`: its reference count is not shared between threads.
    group: Arc<str>,
    // A lock the lane's own records take in turn (uncontended: one lane,
    // one task); a key-mode lane's concurrent records share it too.
    names: Mutex<HeaderNameCache>,
}

impl RequestTarget {
    /// The target of `topic`'s records consumed by `group`.
    pub(crate) fn new(topic: &str, group: &str) -> Self {
        RequestTarget {
            uri: crate::mapping::topic_uri(topic),
            group: Arc::from(group),
            names: Mutex::default(),
        }
    }

    /// The topic's URI.
    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The request of one attempt at `record`.
    pub(crate) fn request(
        &self,
        record: &ConsumedRecord,
        attempt: u32,
    ) -> Result<Request<RecordBody>, MappingError> {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        record.try_request_cached(
            self.uri.clone(),
            Some(self.group.clone()),
            attempt,
            &mut names,
        )
    }
}

/// A record's propagated context, captured once so that every attempt
/// sees the same (possibly generated) correlation id.
pub(crate) struct RecordContext {
    pub(crate) context: PropagatedContext,
    /// The correlation id was generated here (the record had none).
    generated: bool,
}

impl RecordContext {
    /// Puts the context into an attempt's request: the extension, and the
    /// generated correlation id into its headers.
    pub(crate) fn decorate(&self, req: &mut Request<RecordBody>) {
        if self.generated {
            if let Some(v) = self.context.get(&CORRELATION_ID) {
                req.headers_mut().insert(CORRELATION_ID, v.clone());
            }
        }
        req.extensions_mut().insert(self.context.clone());
    }
}

/// The record's context when `context.capture` is on; a record whose
/// propagated headers HTTP cannot carry fails (`400`, permanent).
pub(crate) fn capture_context(
    policy: &AttemptPolicy,
    record: &ConsumedRecord,
) -> Result<Option<RecordContext>, Failure> {
    let Some(config) = &policy.context else {
        return Ok(None);
    };
    match PropagatedContext::from_raw_headers(&record.headers, config) {
        Ok(mut context) => {
            let generated = config.generates_correlation_id() && context.correlation_id().is_none();
            if generated {
                context.ensure_correlation_id();
            }
            Ok(Some(RecordContext { context, generated }))
        }
        Err(bad) => {
            let mut failure = runtime_failure("context", "invalid_header", bad.to_string());
            failure.status = Some(http::StatusCode::BAD_REQUEST);
            Err(failure)
        }
    }
}

/// The failure of a record HTTP cannot represent.
pub(crate) fn mapping_failure(e: &MappingError) -> Failure {
    runtime_failure("mapping", e.reason(), e.to_string())
}

/// How the attempts at one record ended.
#[derive(Debug)]
pub(crate) enum Attempted {
    /// A `2xx`.
    Succeeded,
    /// A permanent failure, or retries exhausted (`attempts` service calls;
    /// 0 when the record failed before reaching the service).
    Failed { failure: Failure, attempts: u32 },
    /// Revocation or shutdown interrupted the retries.
    Cancelled,
}

/// A failure found by the runtime itself, before the service was called.
fn runtime_failure(failed_by: &str, reason: &str, message: String) -> Failure {
    Failure {
        class: ErrorClass::Permanent,
        status: None,
        message,
        failed_by: Some(failed_by.to_owned()),
        reason: Some(reason.to_owned()),
    }
}

/// Calls the service for `record` until it succeeds, fails permanently or
/// runs out of attempts; `prepare` may decorate each attempt's request.
///
/// A record HTTP cannot represent (see
/// [`MappingError`](crate::MappingError)) or whose propagated context is
/// invalid fails permanently without a call.
///
/// A record whose attempts are spent on retryable failures holds its
/// partition up to `retry.hold` (see [`RetryPolicy::hold`]) before it
/// fails; `lane_held` counts the lane's held records meanwhile.
pub(crate) async fn serve_attempts<S: RecordService>(
    policy: &AttemptPolicy,
    service: &mut S,
    record: &ConsumedRecord,
    target: &RequestTarget,
    cancel: &CancellationToken,
    lane_held: Option<&AtomicUsize>,
    mut prepare: impl FnMut(&mut Request<RecordBody>),
) -> Attempted {
    let context = match capture_context(policy, record) {
        Ok(context) => context,
        Err(failure) => {
            return Attempted::Failed {
                failure,
                attempts: 0,
            }
        }
    };
    let subject = Subject::record(record);
    let mut retries = Retries::new(policy, lane_held);
    let mut attempt = 1u32;
    loop {
        let mut req = match target.request(record, attempt) {
            Ok(req) => req,
            Err(e) => {
                return Attempted::Failed {
                    failure: mapping_failure(&e),
                    attempts: attempt - 1,
                }
            }
        };
        policy.stats.attempts.add(1);
        prepare(&mut req);
        let outcome = match &context {
            None => invoke(service, req, policy.max_error_len).await,
            Some(ctx) => {
                ctx.decorate(&mut req);
                ctx.context
                    .clone()
                    .scope(invoke(service, req, policy.max_error_len))
                    .await
            }
        };
        if outcome.is_err() {
            // The instance whose call failed is not called again: the next
            // attempt (or record) gets a fresh clone, so whatever the
            // failed call left in it (a reserved slot, a panic midway)
            // stays behind.
            *service = service.clone();
        }
        match outcome {
            Ok(()) => {
                policy.stats.succeeded.add(1);
                retries.succeeded(&subject, attempt);
                return Attempted::Succeeded;
            }
            Err(f) if f.class.is_retryable() => {
                let Some(delay) = retries.next_delay(&subject, attempt, &f) else {
                    return Attempted::Failed {
                        failure: retries.give_up(attempt, f),
                        attempts: attempt,
                    };
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Attempted::Cancelled,
                }
                attempt = attempt.saturating_add(1);
            }
            Err(failure) => {
                return Attempted::Failed {
                    failure,
                    attempts: attempt,
                }
            }
        }
    }
}

/// What the attempts are at, for the logs: one record, or a batch of a
/// partition's records from `offset`.
pub(crate) struct Subject<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) records: usize,
}

impl<'a> Subject<'a> {
    pub(crate) fn record(record: &'a ConsumedRecord) -> Self {
        Subject {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            records: 1,
        }
    }
}

/// The rule after a retryable failure, the same for a record and a batch:
/// back off (exponentially, with jitter) and try again up to
/// `retry.max_attempts`; once they are spent, hold the partition — keep
/// retrying at the capped backoff rather than dead-letter — up to
/// `retry.hold`, then give up. A panic is a bug met by this record, not an
/// outage: it does not start a hold (but a panic during a hold keeps it,
/// as the outage may surface as one).
pub(crate) struct Retries<'a> {
    policy: &'a AttemptPolicy,
    lane_held: Option<&'a AtomicUsize>,
    held: Option<Held<'a>>,
}

impl<'a> Retries<'a> {
    /// `lane_held` counts the lane's holding subjects while they hold.
    pub(crate) fn new(policy: &'a AttemptPolicy, lane_held: Option<&'a AtomicUsize>) -> Self {
        Retries {
            policy,
            lane_held,
            held: None,
        }
    }

    /// Attempt `attempt` failed retryably with `f`: how long to wait before
    /// the next one, or `None` to give up (see [`Retries::give_up`]).
    pub(crate) fn next_delay(
        &mut self,
        subject: &Subject<'_>,
        attempt: u32,
        f: &Failure,
    ) -> Option<Duration> {
        let retry = &self.policy.retry;
        if attempt >= retry.max_attempts {
            let hold = retry.hold;
            let since = match &self.held {
                Some(h) => h.since,
                None if hold.is_zero() || f.class == ErrorClass::Panic => return None,
                None => {
                    tracing::warn!(
                        topic = %subject.topic, partition = subject.partition, offset = subject.offset,
                        records = subject.records, attempts = attempt,
                        error_class = f.class.as_str(), error = %f.message,
                        "retries exhausted on a retryable failure: holding the partition \
                         (retrying every ≤ {:?} for up to {hold:?}) instead of dead-lettering",
                        retry.max_backoff
                    );
                    self.held
                        .insert(Held::new(&self.policy.stats, self.lane_held))
                        .since
                }
            };
            if since.elapsed() >= hold {
                return None;
            }
        }
        self.policy.stats.retries.fetch_add(1, Relaxed);
        let mut delay = retry.delay(attempt);
        match &self.held {
            None => tracing::warn!(
                topic = %subject.topic, partition = subject.partition, offset = subject.offset,
                records = subject.records, attempt,
                error_class = f.class.as_str(), error = %f.message,
                "retrying in {delay:?}"
            ),
            Some(h) => {
                // The last try of a hold comes when it runs out.
                delay = delay.min(retry.hold.saturating_sub(h.since.elapsed()));
                tracing::debug!(
                    topic = %subject.topic, partition = subject.partition, offset = subject.offset,
                    records = subject.records, attempt,
                    error_class = f.class.as_str(), error = %f.message,
                    "held: retrying in {delay:?}"
                );
            }
        }
        Some(delay)
    }

    /// The failure to dispose of when [`Retries::next_delay`] gave up after
    /// `attempt` attempts: `f`, saying how long the partition was held, if
    /// it was.
    pub(crate) fn give_up(&self, attempt: u32, mut f: Failure) -> Failure {
        if let Some(h) = &self.held {
            f.message = format!(
                "still failing after holding the partition for {:?} ({attempt} attempts): {}",
                Duration::from_secs(h.since.elapsed().as_secs()),
                f.message
            );
        }
        f
    }

    /// Attempt `attempt` succeeded: ends a hold, saying so.
    pub(crate) fn succeeded(&mut self, subject: &Subject<'_>, attempt: u32) {
        if let Some(h) = self.held.take() {
            tracing::info!(
                topic = %subject.topic, partition = subject.partition, offset = subject.offset,
                records = subject.records, attempt, held_for = ?h.since.elapsed(),
                "the record succeeds again: its partition resumes"
            );
        }
    }
}

/// A record holding its partition: counted in the stats (and the lane's
/// own gauge) while it lives.
struct Held<'a> {
    since: Instant,
    stats: &'a RuntimeStats,
    lane: Option<&'a AtomicUsize>,
}

impl<'a> Held<'a> {
    fn new(stats: &'a RuntimeStats, lane: Option<&'a AtomicUsize>) -> Self {
        stats.holds.fetch_add(1, Relaxed);
        stats.held.fetch_add(1, Relaxed);
        if let Some(l) = lane {
            l.fetch_add(1, Relaxed);
        }
        Held {
            since: Instant::now(),
            stats,
            lane,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.stats.held.fetch_sub(1, Relaxed);
        if let Some(l) = self.lane {
            l.fetch_sub(1, Relaxed);
        }
    }
}

/// A failure for a panic that escaped the runtime's own code (not the
/// service's: those are caught per call).
pub(crate) fn panic_failure(panic: &(dyn std::any::Any + Send)) -> Failure {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned());
    runtime_failure("runtime", "panic", format!("the runtime panicked: {msg}"))
}

/// Dead-letters a failed record (retrying the write until the broker
/// acknowledges it), or skips it with an error log when dead-lettering is
/// disabled. Returns `false` only when cancelled before the write succeeded.
pub(crate) async fn dispose(
    policy: &AttemptPolicy,
    writer: Option<&DeadLetterWriter>,
    record: &ConsumedRecord,
    failure: &Failure,
    attempts: u32,
    cancel: &CancellationToken,
) -> bool {
    let Some(writer) = writer else {
        policy.stats.skipped.fetch_add(1, Relaxed);
        tracing::error!(
            topic = %record.topic, partition = record.partition, offset = record.offset,
            attempts, error_class = failure.class.as_str(), error = %failure.message,
            "record failed and dead-lettering is disabled: skipped"
        );
        return true;
    };
    let mut write_attempt = 1u32;
    loop {
        match writer.write(record, failure, attempts).await {
            Ok(d) => {
                policy.stats.dead_lettered.fetch_add(1, Relaxed);
                tracing::warn!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    attempts, error_class = failure.class.as_str(), error = %failure.message,
                    payload_omitted = d.omitted,
                    "dead-lettered to {}[{}]@{}", d.topic, d.partition, d.offset
                );
                return true;
            }
            Err(err) => {
                policy
                    .stats
                    .dead_letter_write_failures
                    .fetch_add(1, Relaxed);
                let delay = policy.retry.delay(write_attempt.min(8));
                tracing::error!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    error = %err, "dead-letter write failed; the offset stays uncommitted; retrying in {delay:?}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return false,
                }
                write_attempt += 1;
            }
        }
    }
}

/// Serves one record to its end: attempts, then the dead letter of a
/// failure. Returns whether the record is finished (its offset may be
/// committed); `false` when revocation or shutdown interrupted it.
/// `lane_held` counts the lane's records holding the partition.
pub(crate) async fn serve_to_end<S: RecordService>(
    policy: &AttemptPolicy,
    writer: Option<&DeadLetterWriter>,
    service: &mut S,
    record: &ConsumedRecord,
    target: &RequestTarget,
    cancel: &CancellationToken,
    lane_held: Option<&AtomicUsize>,
) -> bool {
    match serve_attempts(policy, service, record, target, cancel, lane_held, |_| {}).await {
        Attempted::Succeeded => true,
        Attempted::Cancelled => false,
        Attempted::Failed { failure, attempts } => {
            dispose(policy, writer, record, &failure, attempts, cancel).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Response, StatusCode};

    use super::*;
    use crate::RawHeader;

    fn policy(max_attempts: u32, capture: bool) -> AttemptPolicy {
        AttemptPolicy {
            group: Arc::from("g"),
            retry: RetryPolicy {
                max_attempts,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                hold: Duration::ZERO,
                ..RetryPolicy::default()
            },
            max_error_len: 64,
            stats: Arc::new(RuntimeStats::default()),
            context: capture.then(ContextConfig::default),
        }
    }

    fn record() -> ConsumedRecord {
        ConsumedRecord::builder("t", 0, 5)
            .payload(Some(Bytes::from_static(b"x")))
            .build()
    }

    /// A service answering `statuses` in turn (the last one forever) and
    /// counting its calls.
    fn answering(statuses: &'static [u16], calls: Arc<AtomicU32>) -> impl RecordService {
        tower::service_fn(move |req: Request<RecordBody>| {
            let n = calls.fetch_add(1, Relaxed) as usize;
            let attempt = req
                .extensions()
                .get::<crate::RecordMeta>()
                .expect("meta")
                .attempt();
            assert_eq!(attempt as usize, n + 1, "attempt numbers count calls");
            let status = statuses[n.min(statuses.len() - 1)];
            async move {
                let mut res = Response::new(String::new());
                *res.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(res)
            }
        })
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn attempt(
        policy: &AttemptPolicy,
        mut service: impl RecordService,
        record: &ConsumedRecord,
    ) -> Attempted {
        let target = RequestTarget::new(&record.topic, &policy.group);
        run(serve_attempts(
            policy,
            &mut service,
            record,
            &target,
            &CancellationToken::new(),
            None,
            |_| {},
        ))
    }

    /// A service whose instances are numbered: clones get new numbers;
    /// each call logs the number of the instance it was made on.
    struct Numbered {
        id: u32,
        next: Arc<AtomicU32>,
        statuses: &'static [u16],
        calls: Arc<StdMutex<Vec<u32>>>,
    }

    impl Clone for Numbered {
        fn clone(&self) -> Self {
            Numbered {
                id: self.next.fetch_add(1, Relaxed),
                next: self.next.clone(),
                statuses: self.statuses,
                calls: self.calls.clone(),
            }
        }
    }

    impl tower::Service<Request<RecordBody>> for Numbered {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<String>, Infallible>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: Request<RecordBody>) -> Self::Future {
            let mut calls = self.calls.lock().unwrap();
            let status = self.statuses[calls.len().min(self.statuses.len() - 1)];
            calls.push(self.id);
            let mut res = Response::new(String::new());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            std::future::ready(Ok(res))
        }
    }

    #[test]
    fn records_are_served_by_the_callers_instance_and_a_failed_one_is_replaced() {
        let p = policy(3, false);
        let calls = Arc::new(StdMutex::new(Vec::new()));
        let mut service = Numbered {
            id: 0,
            next: Arc::new(AtomicU32::new(1)),
            statuses: &[200, 200, 503, 200, 200],
            calls: calls.clone(),
        };
        let r = record();
        let target = RequestTarget::new(&r.topic, &p.group);
        let cancel = CancellationToken::new();
        for _ in 0..4 {
            let out = run(serve_attempts(
                &p,
                &mut service,
                &r,
                &target,
                &cancel,
                None,
                |_| {},
            ));
            assert!(matches!(out, Attempted::Succeeded), "{out:?}");
        }
        assert_eq!(
            *calls.lock().unwrap(),
            vec![0, 0, 0, 1, 1],
            "no clone per record or per call; the instance whose call failed \
             (503) is replaced by a clone for the retry and what follows"
        );
    }

    #[test]
    fn retryable_statuses_are_retried_until_a_success() {
        let calls = Arc::new(AtomicU32::new(0));
        let p = policy(5, false);
        let out = attempt(&p, answering(&[503, 429, 200], calls.clone()), &record());
        assert!(matches!(out, Attempted::Succeeded), "{out:?}");
        assert_eq!(calls.load(Relaxed), 3);
        assert_eq!(p.stats.retries(), 2);
        assert_eq!(p.stats.attempts(), 3);
    }

    #[test]
    fn a_permanent_status_fails_at_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let out = attempt(
            &policy(5, false),
            answering(&[422], calls.clone()),
            &record(),
        );
        match out {
            Attempted::Failed { failure, attempts } => {
                assert_eq!(attempts, 1);
                assert_eq!(failure.class, ErrorClass::Permanent);
                assert_eq!(failure.status, Some(StatusCode::UNPROCESSABLE_ENTITY));
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(calls.load(Relaxed), 1);
    }

    #[test]
    fn retries_stop_at_max_attempts() {
        let calls = Arc::new(AtomicU32::new(0));
        let out = attempt(
            &policy(3, false),
            answering(&[500], calls.clone()),
            &record(),
        );
        match out {
            Attempted::Failed { failure, attempts } => {
                assert_eq!(attempts, 3);
                assert_eq!(failure.class, ErrorClass::RetryableStatus);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(calls.load(Relaxed), 3);
    }

    /// A policy that holds for `hold` after 2 attempts, retrying every
    /// second; run on paused time so the test takes no real time.
    fn holding(hold: Duration) -> AttemptPolicy {
        let mut p = policy(2, false);
        p.retry.initial_backoff = Duration::from_secs(1);
        p.retry.max_backoff = Duration::from_secs(1);
        p.retry.hold = hold;
        p
    }

    async fn attempt_paused(
        policy: &AttemptPolicy,
        mut service: impl RecordService,
        held: &AtomicUsize,
    ) -> Attempted {
        let r = record();
        let target = RequestTarget::new(&r.topic, &policy.group);
        let cancel = CancellationToken::new();
        serve_attempts(
            policy,
            &mut service,
            &r,
            &target,
            &cancel,
            Some(held),
            |_| {},
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retryable_failures_hold_until_a_call_succeeds() {
        let calls = Arc::new(AtomicU32::new(0));
        let p = holding(Duration::from_secs(3600));
        let lane = AtomicUsize::new(0);
        let statuses = &[503, 503, 503, 503, 503, 503, 503, 200];
        let service = answering(statuses, calls.clone());
        let started = Instant::now();
        let out = attempt_paused(&p, service, &lane).await;
        assert!(matches!(out, Attempted::Succeeded), "{out:?}");
        assert_eq!(calls.load(Relaxed), 8, "held past max_attempts (2)");
        assert_eq!(p.stats.holds(), 1);
        assert_eq!(p.stats.held(), 0, "released once it succeeded");
        assert_eq!(lane.load(Relaxed), 0);
        assert_eq!(p.stats.retries(), 7);
        // Seven waits of at most the capped backoff (1 s), jittered down
        // to no less than half of it.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(3500) && waited <= Duration::from_secs(7),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_is_counted_while_it_lasts() {
        let p = holding(Duration::from_secs(3600));
        let lane = AtomicUsize::new(0);
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut service = tower::service_fn(move |_req: Request<RecordBody>| {
            let n = seen_tx.send(()).map(|_| ());
            async move {
                n.expect("the test listens");
                let mut res = Response::new(String::new());
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, Infallible>(res)
            }
        });
        let stats = p.stats.clone();
        let r = record();
        let target = RequestTarget::new(&r.topic, &p.group);
        let cancel = CancellationToken::new();
        let serving = serve_attempts(&p, &mut service, &r, &target, &cancel, Some(&lane), |_| {});
        let watching = async {
            for _ in 0..3 {
                seen.recv().await.expect("a call");
            }
            assert_eq!(stats.held(), 1, "held after the second attempt failed");
            assert_eq!(stats.holds(), 1);
            assert_eq!(lane.load(Relaxed), 1);
            cancel.cancel();
        };
        let (out, ()) = tokio::join!(serving, watching);
        assert!(matches!(out, Attempted::Cancelled), "{out:?}");
        assert_eq!(stats.held(), 0, "a cancelled hold is released too");
        assert_eq!(lane.load(Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_gives_up_after_retry_hold_and_says_so() {
        let calls = Arc::new(AtomicU32::new(0));
        let p = holding(Duration::from_secs(60));
        let lane = AtomicUsize::new(0);
        let started = Instant::now();
        let out = attempt_paused(&p, answering(&[503], calls.clone()), &lane).await;
        let waited = started.elapsed();
        match out {
            Attempted::Failed { failure, attempts } => {
                assert_eq!(failure.class, ErrorClass::RetryableStatus);
                assert_eq!(failure.status, Some(StatusCode::SERVICE_UNAVAILABLE));
                assert!(
                    failure.message.contains("holding the partition for"),
                    "{}",
                    failure.message
                );
                assert_eq!(attempts, calls.load(Relaxed));
                assert!(attempts > 60, "retried every ≤ 1 s for 60 s: {attempts}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(waited >= Duration::from_secs(60), "{waited:?}");
        assert!(waited < Duration::from_secs(65), "{waited:?}");
        assert_eq!(p.stats.holds(), 1);
        assert_eq!(p.stats.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_ends_a_hold_at_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let p = holding(Duration::from_secs(3600));
        let lane = AtomicUsize::new(0);
        let out = attempt_paused(&p, answering(&[503, 503, 503, 422], calls.clone()), &lane).await;
        match out {
            Attempted::Failed { failure, attempts } => {
                assert_eq!(failure.status, Some(StatusCode::UNPROCESSABLE_ENTITY));
                assert_eq!(attempts, 4);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(p.stats.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_that_panics_every_time_does_not_hold() {
        let calls = Arc::new(AtomicU32::new(0));
        let p = holding(Duration::from_secs(3600));
        let lane = AtomicUsize::new(0);
        let service = {
            let calls = calls.clone();
            tower::service_fn(move |_req: Request<RecordBody>| {
                calls.fetch_add(1, Relaxed);
                async move {
                    if true {
                        panic!("a bug");
                    }
                    Ok::<_, Infallible>(Response::new(String::new()))
                }
            })
        };
        let out = attempt_paused(&p, service, &lane).await;
        match out {
            Attempted::Failed { failure, attempts } => {
                assert_eq!(failure.class, ErrorClass::Panic);
                assert_eq!(attempts, 2);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(calls.load(Relaxed), 2);
        assert_eq!(p.stats.holds(), 0);
    }

    #[test]
    fn a_zero_hold_fails_when_the_attempts_are_spent() {
        let calls = Arc::new(AtomicU32::new(0));
        let p = policy(3, false);
        assert!(p.retry.hold.is_zero());
        let out = attempt(&p, answering(&[503], calls.clone()), &record());
        assert!(
            matches!(out, Attempted::Failed { attempts: 3, .. }),
            "{out:?}"
        );
        assert_eq!(p.stats.holds(), 0);
    }

    #[test]
    fn an_unmappable_record_fails_without_a_call() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut r = record();
        for i in 0..40_000 {
            r.headers.push(RawHeader::new(format!("h{i}"), "v"));
        }
        match attempt(&policy(3, false), answering(&[200], calls.clone()), &r) {
            Attempted::Failed { failure, attempts } => {
                assert_eq!(attempts, 0);
                assert_eq!(failure.failed_by.as_deref(), Some("mapping"));
                assert_eq!(failure.reason.as_deref(), Some("too_many_headers"));
                assert!(failure.message.contains("40000"), "{}", failure.message);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(calls.load(Relaxed), 0);
    }

    #[test]
    fn an_invalid_context_header_fails_without_a_call() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut r = record();
        r.headers
            .push(RawHeader::new("x-correlation-id", &b"bad\r\nvalue"[..]));
        match attempt(&policy(3, true), answering(&[200], calls.clone()), &r) {
            Attempted::Failed { failure, attempts } => {
                assert_eq!(attempts, 0);
                assert_eq!(failure.failed_by.as_deref(), Some("context"));
                assert_eq!(failure.reason.as_deref(), Some("invalid_header"));
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(calls.load(Relaxed), 0);
    }

    #[test]
    fn every_attempt_sees_the_same_generated_correlation_id() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicU32::new(0));
        let service = {
            let seen = seen.clone();
            let calls = calls.clone();
            tower::service_fn(move |req: Request<RecordBody>| {
                seen.lock()
                    .unwrap()
                    .push(req.headers()[CORRELATION_ID].clone());
                let n = calls.fetch_add(1, Relaxed);
                async move {
                    let mut res = Response::new(String::new());
                    if n == 0 {
                        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    Ok::<_, Infallible>(res)
                }
            })
        };
        let out = attempt(&policy(3, true), service, &record());
        assert!(matches!(out, Attempted::Succeeded), "{out:?}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], seen[1]);
    }

    #[test]
    fn cancellation_interrupts_the_backoff() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut p = policy(10, false);
        p.retry.initial_backoff = Duration::from_secs(3600);
        p.retry.max_backoff = Duration::from_secs(3600);
        let cancel = CancellationToken::new();
        let mut service = answering(&[503], calls.clone());
        let r = record();
        let target = RequestTarget::new("t", &p.group);
        let out = run(async {
            let canceller = cancel.clone();
            tokio::spawn(async move { canceller.cancel() });
            serve_attempts(&p, &mut service, &r, &target, &cancel, None, |_| {}).await
        });
        assert!(matches!(out, Attempted::Cancelled), "{out:?}");
        assert_eq!(calls.load(Relaxed), 1);
    }
}
