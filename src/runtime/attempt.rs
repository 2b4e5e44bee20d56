//! The attempt loop: one record from its first service call to its end —
//! success, retries with backoff, or a failure to dispose of (dead letter).
//!
//! Both delivery modes and the benchmarks call it the same way: the
//! at-least-once lanes ([`super::lane`]) and the exactly-once batches
//! ([`super::exactly_once`]) differ only in what they do with the outcome.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
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
use crate::{ConsumedRecord, RecordBody};

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
    service: S,
    record: &ConsumedRecord,
    uri: &Uri,
    cancel: &CancellationToken,
    lane_held: Option<&AtomicUsize>,
    mut prepare: impl FnMut(&mut Request<RecordBody>),
) -> Attempted {
    // The record's context, captured once so that every attempt sees the
    // same (possibly generated) correlation id.
    let context = match &policy.context {
        None => None,
        Some(config) => match PropagatedContext::from_raw_headers(&record.headers, config) {
            Ok(mut ctx) => {
                let generated = config.generates_correlation_id() && ctx.correlation_id().is_none();
                if generated {
                    ctx.ensure_correlation_id();
                }
                Some((ctx, generated))
            }
            Err(bad) => {
                let mut failure = runtime_failure("context", "invalid_header", bad.to_string());
                failure.status = Some(http::StatusCode::BAD_REQUEST);
                return Attempted::Failed {
                    failure,
                    attempts: 0,
                };
            }
        },
    };
    let mut attempt = 1u32;
    let mut held: Option<Held<'_>> = None;
    loop {
        let mut req = match record.clone().try_into_request_with_uri(
            uri.clone(),
            Some(policy.group.clone()),
            attempt,
        ) {
            Ok(req) => req,
            Err(e) => {
                return Attempted::Failed {
                    failure: runtime_failure("mapping", e.reason(), e.to_string()),
                    attempts: attempt - 1,
                }
            }
        };
        policy.stats.attempts.fetch_add(1, Relaxed);
        prepare(&mut req);
        let outcome = match &context {
            None => invoke(service.clone(), req, policy.max_error_len).await,
            Some((ctx, generated)) => {
                if *generated {
                    if let Some(v) = ctx.get(&CORRELATION_ID) {
                        req.headers_mut().insert(CORRELATION_ID, v.clone());
                    }
                }
                req.extensions_mut().insert(ctx.clone());
                ctx.clone()
                    .scope(invoke(service.clone(), req, policy.max_error_len))
                    .await
            }
        };
        match outcome {
            Ok(()) => {
                policy.stats.succeeded.fetch_add(1, Relaxed);
                if let Some(h) = &held {
                    tracing::info!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        attempt, held_for = ?h.since.elapsed(),
                        "the record succeeds again: its partition resumes"
                    );
                }
                return Attempted::Succeeded;
            }
            Err(f) if f.class.is_retryable() => {
                if attempt >= policy.retry.max_attempts {
                    // Exhausted on a retryable failure: hold the partition
                    // (keep retrying at the capped backoff) rather than
                    // dead-letter, up to `retry.hold`. A panic during a
                    // hold keeps it (the outage may surface as one).
                    // A panic is a bug met by this record, not an outage.
                    let hold = policy.retry.hold;
                    let since = match &held {
                        Some(h) => h.since,
                        None if hold.is_zero() || f.class == ErrorClass::Panic => {
                            return Attempted::Failed {
                                failure: f,
                                attempts: attempt,
                            }
                        }
                        None => {
                            tracing::warn!(
                                topic = %record.topic, partition = record.partition, offset = record.offset,
                                attempts = attempt, error_class = f.class.as_str(), error = %f.message,
                                "retries exhausted on a retryable failure: holding the partition \
                                 (retrying every ≤ {:?} for up to {hold:?}) instead of dead-lettering",
                                policy.retry.max_backoff
                            );
                            held.insert(Held::new(&policy.stats, lane_held)).since
                        }
                    };
                    let elapsed = since.elapsed();
                    if elapsed >= hold {
                        let mut failure = f;
                        failure.message = format!(
                            "still failing after holding the partition for {:?} ({attempt} attempts): {}",
                            Duration::from_secs(elapsed.as_secs()),
                            failure.message
                        );
                        return Attempted::Failed {
                            failure,
                            attempts: attempt,
                        };
                    }
                }
                policy.stats.retries.fetch_add(1, Relaxed);
                let mut delay = policy.retry.delay(attempt);
                if let Some(h) = &held {
                    // The last try of a hold comes when it runs out.
                    delay = delay.min(policy.retry.hold.saturating_sub(h.since.elapsed()));
                }
                if held.is_none() {
                    tracing::warn!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        attempt, error_class = f.class.as_str(), error = %f.message,
                        "retrying in {delay:?}"
                    );
                } else {
                    tracing::debug!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        attempt, error_class = f.class.as_str(), error = %f.message,
                        "held: retrying in {delay:?}"
                    );
                }
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
    service: S,
    record: &ConsumedRecord,
    uri: &Uri,
    cancel: &CancellationToken,
    lane_held: Option<&AtomicUsize>,
) -> bool {
    match serve_attempts(policy, service, record, uri, cancel, lane_held, |_| {}).await {
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
        service: impl RecordService,
        record: &ConsumedRecord,
    ) -> Attempted {
        let uri = crate::mapping::topic_uri(&record.topic);
        run(serve_attempts(
            policy,
            service,
            record,
            &uri,
            &CancellationToken::new(),
            None,
            |_| {},
        ))
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
        service: impl RecordService,
        held: &AtomicUsize,
    ) -> Attempted {
        let r = record();
        let uri = crate::mapping::topic_uri(&r.topic);
        let cancel = CancellationToken::new();
        serve_attempts(policy, service, &r, &uri, &cancel, Some(held), |_| {}).await
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
        let service = tower::service_fn(move |_req: Request<RecordBody>| {
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
        let uri = crate::mapping::topic_uri(&r.topic);
        let cancel = CancellationToken::new();
        let serving = serve_attempts(&p, service, &r, &uri, &cancel, Some(&lane), |_| {});
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
        let service = answering(&[503], calls.clone());
        let r = record();
        let uri = crate::mapping::topic_uri("t");
        let out = run(async {
            let canceller = cancel.clone();
            tokio::spawn(async move { canceller.cancel() });
            serve_attempts(&p, service, &r, &uri, &cancel, None, |_| {}).await
        });
        assert!(matches!(out, Attempted::Cancelled), "{out:?}");
        assert_eq!(calls.load(Relaxed), 1);
    }
}
