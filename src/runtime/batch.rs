//! Batch handlers: [`RecordBatch`], [`BatchMeta`], [`BatchOutcome`] and
//! the batch attempt loop.

use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::attempt::{
    capture_context, dispose, mapping_failure, AttemptPolicy, RecordContext, RequestTarget,
    Retries, Subject,
};
use super::dead_letter::DeadLetterWriter;
use super::outcome::{call_caught, failure_from_response, ErrorClass, Failure};
use super::service::BatchService;
use crate::refusal::is_retryable_status;
use crate::{ConsumedRecord, RecordBody};

/// The body of a batch request: a partition's records served to the
/// service together, for bulk writes (one database round trip for hundreds of records).
///
/// [`Consumer::serve_batches`](super::Consumer::serve_batches) calls a
/// [`BatchService`] with an `http::Request<`[`RecordBatch`]`>`: the
/// URI is `/<topic>`, the [`BatchMeta`] extension says which partition,
/// offsets and attempt, and the body holds one `http::Request<RecordBody>`
/// per record, built exactly as [`Consumer::serve`](super::Consumer::serve)
/// builds it (headers, [`RecordMeta`](crate::RecordMeta),
/// [`RawHeaders`](crate::RawHeaders), the record's
/// [`PropagatedContext`](crate::PropagatedContext)).
///
/// ```
/// use std::convert::Infallible;
/// use http::{Response, StatusCode};
/// use kafka_tower::runtime::{BatchOutcome, RecordBatch};
///
/// // Writes a batch of orders in one statement; records whose payload is
/// // not an order are refused one by one, the others are committed.
/// let service = tower::service_fn(|req: http::Request<RecordBatch>| async move {
///     let mut outcome = BatchOutcome::new();
///     let mut rows = Vec::new();
///     for record in req.body() {
///         let meta = record.extensions().get::<kafka_tower::RecordMeta>().unwrap();
///         match record.body().payload() {
///             Some(p) if p.starts_with(b"{") => rows.push(p.clone()),
///             _ => outcome.fail(meta.offset(), StatusCode::UNPROCESSABLE_ENTITY, "not an order"),
///         }
///     }
///     // insert_all(rows).await?;
///     Ok::<_, Infallible>(outcome.into_response::<String>())
/// });
/// # fn assert_batch_service<S: kafka_tower::runtime::BatchService>(_: &S) {}
/// # assert_batch_service(&service);
/// ```
///
/// Per-record layers (JWT, schema validation) check one record's request;
/// put them on the per-record requests inside the handler if a batch
/// needs them. Layers over the batch request (tracing, metrics, timeouts,
/// concurrency limits) apply as they are.
pub struct RecordBatch {
    records: Vec<Request<RecordBody>>,
}

impl RecordBatch {
    /// A batch of requests built elsewhere (tests, or a handler that
    /// re-batches).
    pub fn new(records: Vec<Request<RecordBody>>) -> Self {
        RecordBatch { records }
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records' requests, in offset order.
    pub fn iter(&self) -> std::slice::Iter<'_, Request<RecordBody>> {
        self.records.iter()
    }

    /// The records' requests, to take their bodies apart.
    pub fn into_requests(self) -> Vec<Request<RecordBody>> {
        self.records
    }
}

impl fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offsets: Vec<i64> = self
            .records
            .iter()
            .filter_map(|r| r.extensions().get::<crate::RecordMeta>())
            .map(|m| m.offset())
            .collect();
        f.debug_struct("RecordBatch")
            .field("offsets", &offsets)
            .finish()
    }
}

impl<'a> IntoIterator for &'a RecordBatch {
    type Item = &'a Request<RecordBody>;
    type IntoIter = std::slice::Iter<'a, Request<RecordBody>>;
    fn into_iter(self) -> Self::IntoIter {
        self.records.iter()
    }
}

impl IntoIterator for RecordBatch {
    type Item = Request<RecordBody>;
    type IntoIter = std::vec::IntoIter<Request<RecordBody>>;
    fn into_iter(self) -> Self::IntoIter {
        self.records.into_iter()
    }
}

/// Where a batch comes from: a request extension of every batch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMeta {
    topic: Arc<str>,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
    group: Arc<str>,
    attempt: u32,
}

impl BatchMeta {
    /// The topic the records were consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// Their partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }
    /// The offset of the batch's first record.
    pub fn first_offset(&self) -> i64 {
        self.first_offset
    }
    /// The offset of the batch's last record (a retried batch may skip
    /// offsets between the two: only the records that failed are in it).
    pub fn last_offset(&self) -> i64 {
        self.last_offset
    }
    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }
    /// The attempt: 1 the first time, 2 for the first retry of the records
    /// that failed, and so on (each record's `RecordMeta` says the same).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// A batch handler's per-record answer: the records that failed, each with
/// its status and why. Put it in the response's extensions (or answer
/// [`BatchOutcome::into_response`]); records it does not name succeeded.
///
/// # What a batch's answer means
///
/// * A response carrying a [`BatchOutcome`] extension decides record by
///   record: each record it lists failed with the status given there (a
///   `4xx` is permanent, `408`, `429` and `5xx` are retryable, as for one
///   record), every record it does not list succeeded. Its own status is
///   then only informative ([`BatchOutcome::into_response`] answers `207
///   Multi-Status` when something failed, `200` otherwise).
/// * Without a `BatchOutcome`, the status decides for the whole batch:
///   `2xx` every record succeeded, otherwise every record failed with that
///   status. An `Err` or a panic fails every record, retryably.
///
/// Failed records are retried together — a batch of only the records that
/// failed retryably, with the next attempt number, after the retry policy's
/// backoff — until they succeed or `retry.max_attempts` is spent (then the
/// partition holds for up to `retry.hold`, as with single records). Records
/// that failed permanently, or that were out of attempts, are dead-lettered
/// one by one, in offset order, each with its own status and message. The
/// lane takes the next batch only when every record of this one is
/// finished, so a partition's batches never overlap and its offsets are
/// committed past a batch only once all of it is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    failed: Vec<RecordFailure>,
}

/// One failed record of a [`BatchOutcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    offset: i64,
    status: StatusCode,
    message: String,
}

impl RecordFailure {
    /// The record's offset.
    pub fn offset(&self) -> i64 {
        self.offset
    }
    /// The status it failed with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// Why, in words (goes into the dead letter's error message).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl BatchOutcome {
    /// Every record succeeded (so far).
    pub fn new() -> Self {
        BatchOutcome::default()
    }

    /// The record at `offset` failed with `status` (a `2xx` status is
    /// ignored: the record succeeded); `message` says why. Naming an offset
    /// twice keeps the last answer.
    pub fn fail(&mut self, offset: i64, status: StatusCode, message: impl Into<String>) {
        if status.is_success() {
            return;
        }
        let failure = RecordFailure {
            offset,
            status,
            message: message.into(),
        };
        match self.failed.iter_mut().find(|f| f.offset == offset) {
            Some(f) => *f = failure,
            None => self.failed.push(failure),
        }
    }

    /// As [`BatchOutcome::fail`], by value.
    pub fn with_failure(
        mut self,
        offset: i64,
        status: StatusCode,
        message: impl Into<String>,
    ) -> Self {
        self.fail(offset, status, message);
        self
    }

    /// The failed records, in the order they were named.
    pub fn failures(&self) -> &[RecordFailure] {
        &self.failed
    }

    /// Whether every record succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.failed.is_empty()
    }

    /// A response carrying this outcome: `200 OK` when every record
    /// succeeded, `207 Multi-Status` otherwise.
    pub fn into_response<B: Default>(self) -> Response<B> {
        let mut res = Response::new(B::default());
        if !self.failed.is_empty() {
            *res.status_mut() = StatusCode::MULTI_STATUS;
        }
        res.extensions_mut().insert(self);
        res
    }

    fn failure_of(&self, offset: i64) -> Option<&RecordFailure> {
        self.failed.iter().find(|f| f.offset == offset)
    }
}

/// A record's failure as the runtime disposes of it.
fn record_failure(f: &RecordFailure) -> Failure {
    let class = if is_retryable_status(f.status) {
        ErrorClass::RetryableStatus
    } else {
        ErrorClass::Permanent
    };
    let message = if f.message.is_empty() {
        format!("HTTP {} (in a batch)", f.status)
    } else {
        format!("HTTP {} (in a batch): {}", f.status, f.message)
    };
    Failure {
        class,
        status: Some(f.status),
        message,
        failed_by: None,
        reason: None,
    }
}

/// Serves `records` (one partition's, in offset order) as batches until
/// each one succeeded or was disposed of (dead-lettered, or skipped when
/// dead-lettering is off). `done[i]` is set as record `i` finishes, so a
/// caller that catches a panic knows which records are left. Returns
/// `false` when revocation or shutdown interrupted it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_batch_to_end<S: BatchService>(
    policy: &AttemptPolicy,
    writer: Option<&DeadLetterWriter>,
    service: &mut S,
    records: &[ConsumedRecord],
    target: &RequestTarget,
    cancel: &CancellationToken,
    lane_held: Option<&AtomicUsize>,
    done: &mut [bool],
) -> bool {
    let Some(first) = records.first() else {
        return true;
    };
    // Records that failed for good: (index, failure, attempts).
    let mut failed: Vec<(usize, Failure, u32)> = Vec::new();
    // Each record's context, captured once for every attempt. Records that
    // cannot be presented fail at once, without a call.
    let mut contexts: Vec<Option<RecordContext>> = Vec::with_capacity(records.len());
    let mut pending: Vec<usize> = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        match capture_context(policy, record) {
            Ok(ctx) => {
                contexts.push(ctx);
                pending.push(i);
            }
            Err(f) => {
                contexts.push(None);
                failed.push((i, f, 0));
            }
        }
    }
    // The last retryable failure of each record being retried.
    let mut retrying: Vec<Option<Failure>> = vec![None; records.len()];
    let mut retries = Retries::new(policy, lane_held);
    let mut attempt = 1u32;
    while !pending.is_empty() {
        let mut requests = Vec::with_capacity(pending.len());
        let mut called = Vec::with_capacity(pending.len());
        for &i in &pending {
            match target.request(&records[i], attempt) {
                Ok(mut req) => {
                    if let Some(ctx) = &contexts[i] {
                        ctx.decorate(&mut req);
                    }
                    requests.push(req);
                    called.push(i);
                }
                Err(e) => failed.push((i, mapping_failure(&e), attempt - 1)),
            }
        }
        pending.clear();
        let (Some(&first_called), Some(&last_called)) = (called.first(), called.last()) else {
            break;
        };
        let mut req = Request::new(RecordBatch::new(requests));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = target.uri().clone();
        req.extensions_mut().insert(BatchMeta {
            topic: first.topic.clone(),
            partition: first.partition,
            first_offset: records[first_called].offset,
            last_offset: records[last_called].offset,
            group: policy.group.clone(),
            attempt,
        });
        policy.stats.attempts.add(called.len() as u64);
        let answer = call_caught(async {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(req).await
        })
        .await;
        // Per record: `None` succeeded, `Some` failed with this.
        let outcomes: Vec<Option<Failure>> = match answer {
            Err(f) => vec![Some(f); called.len()],
            Ok(res) => match res.extensions().get::<BatchOutcome>() {
                Some(outcome) => called
                    .iter()
                    .map(|&i| outcome.failure_of(records[i].offset).map(record_failure))
                    .collect(),
                None if res.status().is_success() => vec![None; called.len()],
                None => {
                    vec![Some(failure_from_response(res, policy.max_error_len).await); called.len()]
                }
            },
        };
        if outcomes.iter().any(Option::is_some) {
            // The instance whose call failed is not called again.
            *service = service.clone();
        }
        let mut succeeded = 0u64;
        for (&i, outcome) in called.iter().zip(outcomes) {
            match outcome {
                None => {
                    succeeded += 1;
                    retrying[i] = None;
                    done[i] = true;
                }
                Some(f) if f.class.is_retryable() => {
                    retrying[i] = Some(f);
                    pending.push(i);
                }
                Some(f) => {
                    retrying[i] = None;
                    failed.push((i, f, attempt));
                }
            }
        }
        policy.stats.succeeded.add(succeeded);
        let subject = Subject {
            topic: &first.topic,
            partition: first.partition,
            offset: records[pending.first().copied().unwrap_or(first_called)].offset,
            records: pending.len(),
        };
        let Some(f) = pending.first().and_then(|&i| retrying[i].as_ref()) else {
            retries.succeeded(&subject, attempt);
            break;
        };
        match retries.next_delay(&subject, attempt, f) {
            Some(delay) => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return false,
                }
                attempt = attempt.saturating_add(1);
            }
            None => {
                // Out of attempts (and hold): disposed of like permanent
                // failures, each with its own.
                for i in pending.drain(..) {
                    if let Some(f) = retrying[i].take() {
                        failed.push((i, retries.give_up(attempt, f), attempt));
                    }
                }
            }
        }
    }
    // What failed for good, in offset order, one dead letter each.
    failed.sort_by_key(|(i, _, _)| *i);
    for (i, failure, attempts) in &failed {
        if !dispose(policy, writer, &records[*i], failure, *attempts, cancel).await {
            return false;
        }
        done[*i] = true;
    }
    true
}
