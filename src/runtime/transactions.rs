//! See [`TransactionalProducer`].

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _};

use super::access::{AccessWatch, ClusterRefused, WatchedContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tokio::sync::{mpsc, oneshot};

use super::producer::ProducerConfig;
use super::producer::{acknowledged, enqueue, send_with, validate_record, Delivery, ProduceError};
use crate::OutgoingRecord;

/// Why a transactional operation failed, classified by what the caller can
/// do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransactionError {
    /// The configuration is unusable (e.g. no `transactional_id`).
    Config(String),
    /// A record was refused before anything was sent.
    Invalid(ProduceError),
    /// The transaction failed and was aborted: none of its records is
    /// visible to `read_committed` consumers. Retrying the batch is safe.
    Aborted(TransactionCause),
    /// Another producer with the same `transactional.id` took over (or this
    /// one's epoch expired): this instance must stop producing.
    Fenced(TransactionCause),
    /// The producer hit a fatal error; a new producer must be created
    /// ([`TransactionalProducer::recover`]).
    Fatal(TransactionCause),
    /// The call was invalid in the current state (e.g. `commit` without
    /// `begin`).
    State(String),
    /// The broker did not answer within `transaction_call_timeout` (it is
    /// unreachable, usually). After [`commit`](TransactionalProducer::commit)
    /// or [`abort`](TransactionalProducer::abort) the transaction is still
    /// open and its outcome undecided: call the same method again to resume
    /// it (a commit that timed out may yet succeed).
    TimedOut(TransactionCause),
    /// The cluster refused the producer's credentials or TLS handshake.
    Refused(ClusterRefused),
    /// A [`TransactionalQueue`] whose task has ended (its runtime shut
    /// down, or the task was dropped): nothing more is sent.
    Closed,
}

impl fmt::Display for TransactionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransactionError::Config(m) => {
                write!(f, "invalid transactional producer configuration: {m}")
            }
            TransactionError::Invalid(e) => write!(f, "record refused before sending: {e}"),
            TransactionError::Aborted(m) => {
                write!(f, "transaction aborted, nothing committed: {m}")
            }
            TransactionError::Fenced(m) => write!(
                f,
                "producer fenced by a newer instance with the same transactional.id: {m}"
            ),
            TransactionError::Fatal(m) => write!(
                f,
                "fatal producer error, the producer must be re-created: {m}"
            ),
            TransactionError::State(m) => write!(f, "invalid transaction state: {m}"),
            TransactionError::TimedOut(m) => write!(
                f,
                "the broker did not answer in time (call the same method again to resume): {m}"
            ),
            TransactionError::Refused(e) => write!(f, "{e}"),
            TransactionError::Closed => write!(f, "the transactional queue is closed"),
        }
    }
}

impl std::error::Error for TransactionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransactionError::Invalid(e) => Some(e),
            TransactionError::Refused(e) => Some(e),
            TransactionError::Aborted(c)
            | TransactionError::Fenced(c)
            | TransactionError::Fatal(c)
            | TransactionError::TimedOut(c) => c.source(),
            _ => None,
        }
    }
}

/// What a failed transactional call reported: a message, and the client's
/// own error (the librdkafka error, or the task that failed) as the
/// [`source`](std::error::Error::source) of the [`TransactionError`] when
/// there is one.
#[derive(Debug, Clone)]
pub struct TransactionCause {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl TransactionCause {
    /// The message (the client error's text when there is one).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A cause with only a message.
    pub(crate) fn message_only(message: impl Into<String>) -> Self {
        TransactionCause {
            message: message.into(),
            source: None,
        }
    }

    fn from_error(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        TransactionCause {
            message: e.to_string(),
            source: Some(Arc::new(e)),
        }
    }

    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl fmt::Display for TransactionCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for TransactionCause {
    fn from(message: String) -> Self {
        TransactionCause {
            message,
            source: None,
        }
    }
}

impl From<&str> for TransactionCause {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// Classifies a librdkafka error of a transactional call.
/// A send's failure as a transaction error.
fn send_error(e: ProduceError) -> TransactionError {
    match e {
        ProduceError::Kafka(k) => classify(k),
        other => TransactionError::Aborted(TransactionCause::from_error(other)),
    }
}

fn classify(e: KafkaError) -> TransactionError {
    enum Class {
        Fenced,
        Fatal,
        Aborted,
        State,
        TimedOut,
    }
    let class = match &e {
        KafkaError::Transaction(err) if is_fencing(err.code()) => Class::Fenced,
        KafkaError::Transaction(err) if err.is_fatal() => Class::Fatal,
        KafkaError::Transaction(err) if err.txn_requires_abort() => Class::Aborted,
        KafkaError::Transaction(err) if err.code() == RDKafkaErrorCode::State => Class::State,
        KafkaError::Transaction(err) if err.is_retriable() => Class::TimedOut,
        _ if e.rdkafka_error_code().is_some_and(is_fencing) => Class::Fenced,
        _ => Class::Aborted,
    };
    match class {
        Class::State => TransactionError::State(e.to_string()),
        Class::Fenced => TransactionError::Fenced(TransactionCause::from_error(e)),
        Class::Fatal => TransactionError::Fatal(TransactionCause::from_error(e)),
        Class::Aborted => TransactionError::Aborted(TransactionCause::from_error(e)),
        Class::TimedOut => TransactionError::TimedOut(TransactionCause::from_error(e)),
    }
}

/// Producing in Kafka transactions: [`TransactionalProducer`] (explicit
/// `begin` / `send` / `commit` / `abort`, and atomic batches) and
/// [`TransactionalQueue`] (records queued by many tasks, committed together
/// every N records or T milliseconds).
///
/// Transactions are what make a topic an event store: either every record
/// of a batch becomes visible to `read_committed` consumers, or none does.
///
/// ```no_run
/// use kafka_tower::runtime::{ProducerConfig, TransactionalProducer};
/// use kafka_tower::OutgoingRecord;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let mut config = ProducerConfig::new("127.0.0.1:9092");
/// config.transactional_id = Some("billing-0".into());
/// let producer = TransactionalProducer::new(config).await?;
/// let events = vec![
///     OutgoingRecord { topic: "accounts".into(), key: Some("acc-1".into()), payload: Some("debited 10".into()), ..Default::default() },
///     OutgoingRecord { topic: "accounts".into(), key: Some("acc-2".into()), payload: Some("credited 10".into()), ..Default::default() },
/// ];
/// producer.send_batch(events).await?; // both or neither
/// # Ok(()) }
/// ```
///
/// A producer whose sends belong to Kafka transactions (see above).
///
/// One transaction at a time; the methods take `&self` so that records of
/// the open transaction can be sent concurrently.
pub struct TransactionalProducer {
    producer: FutureProducer<WatchedContext>,
    config: ProducerConfig,
    max_message_bytes: usize,
    timeout: Duration,
    open: AtomicBool,
    /// A commit or abort the broker did not answer in time: the next call
    /// must resume it.
    pending: Mutex<Option<Pending>>,
}

/// The transactional call librdkafka has in progress after a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Commit,
    Abort,
}

impl fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("transactional_id", &self.config.transactional_id)
            .field("open", &self.open.load(SeqCst))
            .finish()
    }
}

impl TransactionalProducer {
    /// Creates the producer and initialises transactions (which fences any
    /// earlier instance with the same `transactional_id` and aborts its open
    /// transaction).
    pub async fn new(config: ProducerConfig) -> Result<Self, TransactionError> {
        config
            .validate()
            .map_err(|e| TransactionError::Config(e.to_string()))?;
        if config.transactional_id.is_none() {
            return Err(TransactionError::Config(
                "`transactional_id` is required (stable per instance, e.g. \"<service>-<n>\")"
                    .into(),
            ));
        }
        if !config.idempotence {
            return Err(TransactionError::Config(
                "transactions need `idempotence: true`".into(),
            ));
        }
        let access = Arc::new(AccessWatch::new([&config.properties]));
        let producer: FutureProducer<WatchedContext> = config
            .client_config()
            .create_with_context(WatchedContext::new(access.clone()))
            .map_err(|e| TransactionError::Config(config.properties.redact(&e.to_string())))?;
        let timeout = config.transaction_call_timeout;
        let p = producer.clone();
        let init = tokio::task::spawn_blocking(move || p.init_transactions(timeout));
        tokio::select! {
            biased;
            done = init => done
                .map_err(|e| TransactionError::Fatal(TransactionCause::from_error(e)))?
                .map_err(classify)?,
            // init_transactions would wait out its timeout.
            refused = access.wait_refused() => return Err(TransactionError::Refused(refused)),
        }
        Ok(TransactionalProducer {
            max_message_bytes: config.max_message_bytes(),
            producer,
            config,
            timeout,
            open: AtomicBool::new(false),
            pending: Mutex::new(None),
        })
    }

    /// Replaces a producer that hit a fatal error with a fresh one (same
    /// `transactional_id`).
    pub async fn recover(self) -> Result<Self, TransactionError> {
        let config = self.config.clone();
        drop(self);
        TransactionalProducer::new(config).await
    }

    /// Raises a fatal error in librdkafka's producer, as a broker can (an
    /// out-of-order sequence number; feature `fault-injection`, for the
    /// fault tests).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject_fatal_error(&self) {
        let reason = c"injected by the fault tests";
        // SAFETY: the client pointer is valid while `self.producer` lives;
        // librdkafka copies `reason`.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                self.producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// The fatal error librdkafka raised on this producer, if any: once
    /// there is one, every call fails and the producer must be re-created.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{reason} ({code:?})"))
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.open.load(SeqCst)
    }

    /// Begins a transaction.
    pub fn begin(&self) -> Result<(), TransactionError> {
        if self.open.swap(true, SeqCst) {
            return Err(TransactionError::State(
                "a transaction is already open".into(),
            ));
        }
        self.producer.begin_transaction().map_err(|e| {
            self.open.store(false, SeqCst);
            classify(e)
        })
    }

    /// Sends a record in the open transaction; resolves when the broker has
    /// it (it becomes visible only at [`TransactionalProducer::commit`]).
    pub async fn send(&self, record: &OutgoingRecord) -> Result<Delivery, TransactionError> {
        if !self.open.load(SeqCst) {
            return Err(TransactionError::State(
                "send outside a transaction: call begin first".into(),
            ));
        }
        validate_record(record, self.max_message_bytes).map_err(TransactionError::Invalid)?;
        send_with(&self.producer, record, self.config.send_timeout)
            .await
            .map_err(send_error)
    }

    /// Puts `record` in the open transaction without waiting for the
    /// broker: returns once librdkafka queued it (waiting only while its
    /// queue is full), with a future that resolves to the broker's answer.
    /// The exactly-once runtime queues each record's outputs as the record
    /// finishes and awaits the answers before committing.
    pub(crate) async fn enqueue(
        &self,
        record: OutgoingRecord,
    ) -> Result<impl Future<Output = Result<(), TransactionError>> + Send + 'static, TransactionError>
    {
        if !self.open.load(SeqCst) {
            return Err(TransactionError::State(
                "send outside a transaction: call begin first".into(),
            ));
        }
        validate_record(&record, self.max_message_bytes).map_err(TransactionError::Invalid)?;
        let delivery = enqueue(&self.producer, &record, self.config.send_timeout)
            .await
            .map_err(send_error)?;
        // Freed here, on the caller's thread, not where the answer is
        // awaited: only what an error names is kept.
        let size = record.payload.as_ref().map_or(0, |p| p.len());
        let topic = record.topic;
        Ok(async move { acknowledged(delivery.await, &topic, size).map_err(send_error) })
    }

    /// Adds consumed offsets to the open transaction (consume-transform-produce).
    pub(crate) async fn send_offsets(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<(), TransactionError> {
        let p = self.producer.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            p.send_offsets_to_transaction(&offsets, &group, timeout)
        })
        .await
        .map_err(|e| TransactionError::Fatal(TransactionCause::from_error(e)))?
        .map_err(classify)
    }

    /// Commits the open transaction. On an abortable error the transaction is
    /// aborted and [`TransactionError::Aborted`] returned. When the broker
    /// does not answer in time, [`TransactionError::TimedOut`] is returned
    /// with the transaction still open: call `commit` again to resume (it
    /// resumes the abort instead if the broker had asked for one).
    pub async fn commit(&self) -> Result<(), TransactionError> {
        if !self.open.load(SeqCst) {
            return Err(TransactionError::State(
                "commit without an open transaction".into(),
            ));
        }
        if self.pending() == Some(Pending::Abort) {
            self.abort().await?;
            return Err(TransactionError::Aborted(
                "the broker asked for an abort, which is now complete".into(),
            ));
        }
        let p = self.producer.clone();
        let timeout = self.timeout;
        let r = tokio::task::spawn_blocking(move || p.commit_transaction(timeout))
            .await
            .map_err(|e| TransactionError::Fatal(TransactionCause::from_error(e)))?;
        match r.map_err(classify) {
            Ok(()) => {
                self.close();
                Ok(())
            }
            Err(TransactionError::Aborted(m)) => {
                self.abort().await?;
                Err(TransactionError::Aborted(m))
            }
            // Still open, the commit in progress: calling again resumes it.
            Err(e @ TransactionError::TimedOut(_)) => {
                self.set_pending(Some(Pending::Commit));
                Err(e)
            }
            Err(e @ TransactionError::State(_)) => Err(e),
            Err(e) => {
                self.close();
                Err(e)
            }
        }
    }

    fn pending(&self) -> Option<Pending> {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_pending(&self, pending: Option<Pending>) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = pending;
    }

    /// The transaction is over, whatever its outcome.
    fn close(&self) {
        self.set_pending(None);
        self.open.store(false, SeqCst);
    }

    /// [`commit`](Self::commit), resumed while the broker does not answer.
    pub(crate) async fn commit_resuming(&self) -> Result<(), TransactionError> {
        loop {
            match self.commit().await {
                Err(TransactionError::TimedOut(m)) => {
                    tracing::warn!(error = %m, "transaction commit not answered yet: resuming it");
                }
                r => return r,
            }
        }
    }

    /// [`abort`](Self::abort), resumed while the broker does not answer.
    pub(crate) async fn abort_resuming(&self) -> Result<(), TransactionError> {
        loop {
            match self.abort().await {
                Err(TransactionError::TimedOut(m)) => {
                    tracing::warn!(error = %m, "transaction abort not answered yet: resuming it");
                }
                r => return r,
            }
        }
    }

    /// Aborts the open transaction: none of its records becomes visible.
    /// When the broker does not answer in time, [`TransactionError::TimedOut`]
    /// is returned with the transaction still open: call `abort` again to
    /// resume. A commit that timed out cannot be aborted: resume it.
    pub async fn abort(&self) -> Result<(), TransactionError> {
        if !self.open.load(SeqCst) {
            return Err(TransactionError::State(
                "abort without an open transaction".into(),
            ));
        }
        if self.pending() == Some(Pending::Commit) {
            return Err(TransactionError::State(
                "a commit that timed out is in progress: call commit to resume it".into(),
            ));
        }
        let p = self.producer.clone();
        let timeout = self.timeout;
        let r = tokio::task::spawn_blocking(move || p.abort_transaction(timeout))
            .await
            .map_err(|e| TransactionError::Fatal(TransactionCause::from_error(e)))?;
        match r.map_err(classify) {
            // Still open, the abort in progress: calling again resumes it.
            Err(e @ TransactionError::TimedOut(_)) => {
                self.set_pending(Some(Pending::Abort));
                Err(e)
            }
            r => {
                self.close();
                r
            }
        }
    }

    /// Sends `records` atomically: begin, send all, commit. Every record is
    /// validated first, so an invalid one sends nothing. On failure the
    /// transaction is aborted and nothing is visible. While the broker does
    /// not answer, the commit (or abort) is resumed until it does, so the
    /// outcome is never left undecided.
    pub async fn send_batch(
        &self,
        records: Vec<OutgoingRecord>,
    ) -> Result<Vec<Delivery>, TransactionError> {
        for r in &records {
            validate_record(r, self.max_message_bytes).map_err(TransactionError::Invalid)?;
        }
        self.begin()?;
        let results = join_all(records.iter().map(|r| self.send(r))).await;
        let mut deliveries = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(d) => deliveries.push(d),
                Err(e @ (TransactionError::Fenced(_) | TransactionError::Fatal(_))) => {
                    return Err(e)
                }
                Err(e) => {
                    self.abort_resuming().await?;
                    return Err(TransactionError::Aborted(TransactionCause::from_error(e)));
                }
            }
        }
        self.commit_resuming().await?;
        Ok(deliveries)
    }
}

type Waiter = oneshot::Sender<Result<Delivery, TransactionError>>;

/// Why a queue's task stopped taking records.
#[derive(Clone, Debug)]
enum ClosedBy {
    /// Another producer took over its `transactional.id`.
    Fenced(TransactionCause),
    /// Its producer hit a fatal error and could not be re-created.
    Failed(TransactionCause),
}

/// A queue that many tasks send records to; a background task commits them
/// in one transaction per `max_batch` records or `max_delay`, whichever
/// comes first, and tells each sender when its record is committed (or why
/// not). See [`TransactionalProducer`].
#[derive(Clone, Debug)]
pub struct TransactionalQueue {
    tx: mpsc::Sender<(OutgoingRecord, Waiter)>,
    closed: Arc<Mutex<Option<ClosedBy>>>,
}

impl TransactionalQueue {
    /// Starts the background task on the current tokio runtime. The queue
    /// holds at most `capacity` waiting records (senders wait beyond that).
    pub fn spawn(
        producer: TransactionalProducer,
        max_batch: usize,
        max_delay: Duration,
        capacity: usize,
    ) -> (TransactionalQueue, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let closed = Arc::new(Mutex::new(None));
        let task = tokio::spawn(drain_queue(
            producer,
            rx,
            max_batch.max(1),
            max_delay,
            closed.clone(),
        ));
        (TransactionalQueue { tx, closed }, task)
    }

    /// Queues `record` and waits until its transaction committed.
    pub async fn send(&self, record: OutgoingRecord) -> Result<Delivery, TransactionError> {
        let (done, wait) = oneshot::channel();
        // What closed it: fencing, a producer that could not be
        // re-created, or its task ended.
        let closed = || match self
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            Some(ClosedBy::Fenced(c)) => TransactionError::Fenced(c),
            Some(ClosedBy::Failed(c)) => TransactionError::Fatal(c),
            None => TransactionError::Closed,
        };
        self.tx.send((record, done)).await.map_err(|_| closed())?;
        wait.await.map_err(|_| closed())?
    }
}

async fn drain_queue(
    mut producer: TransactionalProducer,
    mut rx: mpsc::Receiver<(OutgoingRecord, Waiter)>,
    max_batch: usize,
    max_delay: Duration,
    closed: Arc<Mutex<Option<ClosedBy>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_delay;
        while batch.len() < max_batch {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(item) => batch.push(item),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Refuse invalid records individually; the rest go together.
        let mut valid = Vec::with_capacity(batch.len());
        for (record, waiter) in batch {
            match validate_record(&record, producer.max_message_bytes) {
                Ok(()) => valid.push((record, waiter)),
                Err(e) => {
                    let _ = waiter.send(Err(TransactionError::Invalid(e)));
                }
            }
        }
        if valid.is_empty() {
            continue;
        }
        let (records, waiters): (Vec<_>, Vec<_>) = valid.into_iter().unzip();
        match producer.send_batch(records).await {
            Ok(deliveries) => {
                for (w, d) in waiters.into_iter().zip(deliveries) {
                    let _ = w.send(Ok(d));
                }
            }
            Err(TransactionError::Fenced(m)) => {
                tracing::error!(error = %m, "transactional queue fenced: closing");
                *closed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(ClosedBy::Fenced(m.clone()));
                for w in waiters {
                    let _ = w.send(Err(TransactionError::Fenced(m.clone())));
                }
                return;
            }
            Err(TransactionError::Fatal(m)) => {
                for w in waiters {
                    let _ = w.send(Err(TransactionError::Fatal(m.clone())));
                }
                tracing::warn!(error = %m, "fatal transactional producer error: re-initialising");
                match producer.recover().await {
                    Ok(p) => producer = p,
                    Err(e) => {
                        *closed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(ClosedBy::Failed(TransactionCause::from_error(e)));
                        return;
                    }
                }
            }
            Err(e) => {
                let cause = TransactionCause::from_error(e);
                for w in waiters {
                    let _ = w.send(Err(TransactionError::Aborted(cause.clone())));
                }
            }
        }
    }
}
