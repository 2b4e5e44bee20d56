//! One lane per assigned partition: pulls the partition's fetched records,
//! serves them in order (per partition, or per key), retries, dead-letters,
//! and reports finished offsets to the poll thread.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use http::{Request, Response, Uri};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::config::{Ordering, RetryPolicy};
use super::dead_letter::DeadLetterWriter;
use super::outcome::{invoke, Failure};
use super::stats::RuntimeStats;
use crate::context::{ContextConfig, PropagatedContext, CORRELATION_ID};
use crate::{BoxError, ConsumedRecord, RecordBody};

/// A partition: shared topic name and partition number.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// What lanes tell the poll thread.
#[derive(Debug)]
pub(crate) enum LaneEvent {
    /// The record at `offset` is finished: its offset may be committed.
    Finished {
        tp: TopicPartition,
        generation: u64,
        offset: i64,
    },
    /// The lane has stopped; nothing of it is running any more.
    Exited { tp: TopicPartition, generation: u64 },
}

/// Everything lanes share, whatever their partition.
pub(crate) struct LaneShared {
    pub(crate) group: Arc<str>,
    pub(crate) retry: RetryPolicy,
    pub(crate) ordering: Ordering,
    pub(crate) lookahead: usize,
    pub(crate) max_error_len: usize,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) events: std::sync::mpsc::Sender<LaneEvent>,
    pub(crate) dead_letter: Option<DeadLetterWriter>,
    pub(crate) stats: Arc<RuntimeStats>,
    pub(crate) context: Option<ContextConfig>,
}

/// The ordering key of a record: all records of a partition share one in
/// [`Ordering::Partition`] mode; in [`Ordering::Key`] mode it is the key.
fn order_key(ordering: Ordering, record: &ConsumedRecord) -> Option<Bytes> {
    match ordering {
        Ordering::Partition => None,
        Ordering::Key => record.key.clone(),
    }
}

/// The index of the first waiting record whose key is neither being served
/// nor preceded by a waiting record of the same key.
fn first_ready(
    waiting: &VecDeque<ConsumedRecord>,
    busy: &HashSet<Option<Bytes>>,
    ordering: Ordering,
) -> Option<usize> {
    match ordering {
        Ordering::Partition => (!waiting.is_empty() && busy.is_empty()).then_some(0),
        Ordering::Key => {
            let mut seen: HashSet<Option<&Bytes>> = HashSet::new();
            for (i, r) in waiting.iter().enumerate() {
                let k = r.key.as_ref();
                if !busy.contains(&r.key) && !seen.contains(&k) {
                    return Some(i);
                }
                seen.insert(k);
            }
            None
        }
    }
}

pub(crate) async fn run_lane<S, ResBody>(
    shared: Arc<LaneShared>,
    service: S,
    tp: TopicPartition,
    generation: u64,
    mut rx: mpsc::Receiver<ConsumedRecord>,
    cancel: CancellationToken,
) where
    S: Service<Request<RecordBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let uri = crate::mapping::topic_uri(&tp.0);
    let mut running = FuturesUnordered::new();
    let mut busy: HashSet<Option<Bytes>> = HashSet::new();
    let mut waiting: VecDeque<ConsumedRecord> = VecDeque::new();
    let mut rx_open = true;
    let mut cancelled = false;

    loop {
        // Start every record that may start, as long as permits last.
        if !cancelled {
            while let Some(idx) = first_ready(&waiting, &busy, shared.ordering) {
                let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
                    break;
                };
                let record = waiting.remove(idx).expect("index from first_ready");
                shared.stats.sub_buffered(1);
                busy.insert(order_key(shared.ordering, &record));
                running.push(serve_record(
                    shared.clone(),
                    service.clone(),
                    record,
                    uri.clone(),
                    cancel.clone(),
                    permit,
                ));
            }
        }
        if running.is_empty() && (cancelled || (!rx_open && waiting.is_empty())) {
            break;
        }
        let blocked_on_permit =
            !cancelled && first_ready(&waiting, &busy, shared.ordering).is_some();
        let can_take = !cancelled && rx_open && waiting.len() < shared.lookahead;
        tokio::select! {
            biased;
            Some((key, offset, finished)) = running.next(), if !running.is_empty() => {
                busy.remove(&key);
                if finished {
                    let _ = shared.events.send(LaneEvent::Finished { tp: tp.clone(), generation, offset });
                } else {
                    shared.stats.abandoned.fetch_add(1, Relaxed);
                }
            }
            _ = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                rx.close();
                let mut dropped = waiting.len();
                waiting.clear();
                while rx.try_recv().is_ok() {
                    dropped += 1;
                }
                shared.stats.sub_buffered(dropped);
            }
            permit = shared.in_flight.clone().acquire_owned(), if blocked_on_permit => {
                let Ok(permit) = permit else { break };
                if let Some(idx) = first_ready(&waiting, &busy, shared.ordering) {
                    let record = waiting.remove(idx).expect("index from first_ready");
                    shared.stats.sub_buffered(1);
                    busy.insert(order_key(shared.ordering, &record));
                    running.push(serve_record(shared.clone(), service.clone(), record, uri.clone(), cancel.clone(), permit));
                }
            }
            received = rx.recv(), if can_take => match received {
                Some(record) => waiting.push_back(record),
                None => rx_open = false,
            }
        }
    }
    let _ = shared.events.send(LaneEvent::Exited { tp, generation });
}

/// Serves one record to the end: success, retries, dead letter. Returns its
/// ordering key, offset, and whether it is finished (`false`: abandoned
/// because the partition was revoked or the consumer is shutting down).
async fn serve_record<S, ResBody>(
    shared: Arc<LaneShared>,
    service: S,
    record: ConsumedRecord,
    uri: Uri,
    cancel: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> (Option<Bytes>, i64, bool)
where
    S: Service<Request<RecordBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let stats = &shared.stats;
    stats.in_flight.fetch_add(1, Relaxed);
    let key = order_key(shared.ordering, &record);
    let offset = record.offset;
    let finished = serve_with_policy(&shared, service, &record, uri, &cancel).await;
    stats.in_flight.fetch_sub(1, Relaxed);
    drop(permit);
    (key, offset, finished)
}

async fn serve_with_policy<S, ResBody>(
    shared: &LaneShared,
    service: S,
    record: &ConsumedRecord,
    uri: Uri,
    cancel: &CancellationToken,
) -> bool
where
    S: Service<Request<RecordBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    match serve_attempts(shared, service, record, uri, cancel, |_| {}).await {
        Attempted::Succeeded => true,
        Attempted::Cancelled => false,
        Attempted::Failed { failure, attempts } => {
            dispose(shared, record, &failure, attempts, cancel).await
        }
    }
}

/// How the attempts at one record ended.
pub(crate) enum Attempted {
    /// A `2xx`.
    Succeeded,
    /// A permanent failure, or retries exhausted (`attempts` service calls).
    Failed { failure: Failure, attempts: u32 },
    /// Revocation or shutdown interrupted the retries.
    Cancelled,
}

/// Calls the service for `record` until it succeeds, fails permanently or
/// runs out of attempts; `prepare` may decorate each attempt's request.
pub(crate) async fn serve_attempts<S, ResBody>(
    shared: &LaneShared,
    service: S,
    record: &ConsumedRecord,
    uri: Uri,
    cancel: &CancellationToken,
    mut prepare: impl FnMut(&mut Request<RecordBody>),
) -> Attempted
where
    S: Service<Request<RecordBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    // The record's context, captured once so that every attempt sees the
    // same (possibly generated) correlation id.
    let context = match &shared.context {
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
                let failure = Failure {
                    class: super::outcome::ErrorClass::Permanent,
                    status: Some(http::StatusCode::BAD_REQUEST),
                    message: bad.to_string(),
                    failed_by: Some("context".to_owned()),
                    reason: Some("invalid_header".to_owned()),
                };
                return Attempted::Failed {
                    failure,
                    attempts: 0,
                };
            }
        },
    };
    let mut attempt = 1u32;
    loop {
        shared.stats.attempts.fetch_add(1, Relaxed);
        let mut req =
            record
                .clone()
                .into_request_with_uri(uri.clone(), Some(shared.group.clone()), attempt);
        prepare(&mut req);
        let outcome = match &context {
            None => invoke(service.clone(), req, shared.max_error_len).await,
            Some((ctx, generated)) => {
                if *generated {
                    if let Some(v) = ctx.get(&CORRELATION_ID) {
                        req.headers_mut().insert(CORRELATION_ID, v.clone());
                    }
                }
                req.extensions_mut().insert(ctx.clone());
                ctx.clone()
                    .scope(invoke(service.clone(), req, shared.max_error_len))
                    .await
            }
        };
        match outcome {
            Ok(()) => {
                shared.stats.succeeded.fetch_add(1, Relaxed);
                return Attempted::Succeeded;
            }
            Err(f) if f.class.is_retryable() && attempt < shared.retry.max_attempts => {
                shared.stats.retries.fetch_add(1, Relaxed);
                let delay = shared.retry.delay(attempt);
                tracing::warn!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    attempt, error_class = f.class.as_str(), error = %f.message,
                    "retrying in {delay:?}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Attempted::Cancelled,
                }
                attempt += 1;
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

/// Dead-letters a failed record (retrying the write until the broker
/// acknowledges it), or skips it with an error log when dead-lettering is
/// disabled. Returns `false` only when cancelled before the write succeeded.
async fn dispose(
    shared: &LaneShared,
    record: &ConsumedRecord,
    failure: &Failure,
    attempts: u32,
    cancel: &CancellationToken,
) -> bool {
    let Some(writer) = &shared.dead_letter else {
        shared.stats.skipped.fetch_add(1, Relaxed);
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
            Ok((dlq, partition, offset)) => {
                shared.stats.dead_lettered.fetch_add(1, Relaxed);
                tracing::warn!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    attempts, error_class = failure.class.as_str(), error = %failure.message,
                    "dead-lettered to {dlq}[{partition}]@{offset}"
                );
                return true;
            }
            Err(err) => {
                let delay = shared.retry.delay(write_attempt.min(8));
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
