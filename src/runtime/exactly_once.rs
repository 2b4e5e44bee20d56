//! See [`ExactlyOnce`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{watch, RwLock};

use super::attempt::{panic_failure, serve_attempts, AttemptPolicy, Attempted};
use super::config::DeadLetterPolicy;
use super::consumer::{Consumer, ConsumerError, PollState, RuntimeContext};
use super::dead_letter::provenance_headers;
use super::lane::{dead_letter_failed, Lane, LaneControl, LaneWork, RecordSource, TopicPartition};
use super::outcome::Failure;
use super::producer::ProducerConfig;
use super::service::RecordService;
use super::transactions::{TransactionCause, TransactionError, TransactionalProducer};
use crate::context::{InjectMode, PropagatedContext};
use crate::{ConsumedRecord, OutgoingRecord};

/// Records a handler produces in exactly-once mode. A request extension:
/// what is sent to it is produced in the batch's transaction if, and only
/// if, the attempt that sent it succeeds (a `2xx`); records of failed
/// attempts are discarded, so retries never duplicate outputs.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    records: Arc<Mutex<Vec<OutgoingRecord>>>,
}

impl Outbox {
    /// Stages `record`, with the current [`PropagatedContext`] injected into
    /// its headers (headers already set win).
    pub fn send(&self, mut record: OutgoingRecord) {
        if let Some(ctx) = PropagatedContext::current() {
            ctx.inject_raw(&mut record.headers, InjectMode::KeepExisting);
        }
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }

    /// Stages `record` exactly as given: no context is injected (for
    /// records that outlive the request, such as a state store's
    /// changelog, which must not carry its caller's `Authorization`).
    pub fn send_as_is(&self, record: OutgoingRecord) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }

    /// How many records are staged.
    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self) -> Vec<OutgoingRecord> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A callback told which partitions were assigned or revoked.
pub type PartitionsCallback = Arc<dyn Fn(&[(String, i32)]) + Send + Sync>;

/// A callback told how a batch's transaction ended: `true` committed,
/// `false` aborted (or never committed because processing stopped).
pub type BatchEndCallback = Arc<dyn Fn(bool) + Send + Sync>;

/// Exactly-once consume-transform-produce: [`Consumer::serve_exactly_once`].
///
/// Each partition's lane serves its records in offset order (partitions
/// in parallel, up to `max_in_flight` records at once) inside an open Kafka
/// transaction: the records each handler put into its [`Outbox`], and the
/// dead letters of failed records, are produced in it as each record
/// finishes. Every `max_batch` finished records (or `max_delay` after the
/// first), the transaction ends: once no record is half-served, the
/// consumed offsets the lanes reached are added to it
/// (`send_offsets_to_transaction`) and it is committed, which makes all of
/// it visible at once to `read_committed` consumers; the next one begins.
/// If anything fails the transaction is aborted and every partition starts
/// over from its last committed offset; a process killed mid-transaction
/// leaves an open transaction that the broker aborts when the restarted
/// instance (same `transactional_id`) initialises. So each input's outputs
/// appear exactly once downstream.
///
/// What is *not* exactly-once: side effects of the handler other than the
/// outbox (an HTTP call, a database write) happen once per attempt; make
/// them idempotent.
///
/// ```no_run
/// use kafka_tower::runtime::{ExactlyOnce, Outbox, ProducerConfig};
/// use kafka_tower::{Consumer, OutgoingRecord, RecordBody};
/// use tower::service_fn;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let service = service_fn(|req: http::Request<RecordBody>| async move {
///     let outbox = req.extensions().get::<Outbox>().expect("set in exactly-once mode").clone();
///     let payload = req.into_body().into_payload();
///     outbox.send(OutgoingRecord { topic: "orders-enriched".into(), payload, ..Default::default() });
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// let mut producer = ProducerConfig::new("127.0.0.1:9092");
/// producer.transactional_id = Some("enricher-0".into());
/// Consumer::builder()
///     .bootstrap_servers("127.0.0.1:9092")
///     .group_id("enricher")
///     .topics(["orders"])
///     .build()?
///     .serve_exactly_once(service, ExactlyOnce::new(producer), std::future::pending())
///     .await?;
/// # Ok(()) }
/// ```
///
/// Settings of [`Consumer::serve_exactly_once`].
#[derive(Clone)]
pub struct ExactlyOnce {
    /// The transactional producer; `transactional_id` is required and must
    /// be stable per instance.
    pub producer: ProducerConfig,
    /// Records per transaction, at most: a lane that finds the open
    /// transaction full waits for it to end.
    pub max_batch: usize,
    /// How long a transaction stays open once a record finished in it.
    pub max_delay: Duration,
    on_assigned: Option<PartitionsCallback>,
    on_revoked: Option<PartitionsCallback>,
    on_batch_end: Option<BatchEndCallback>,
}

impl std::fmt::Debug for ExactlyOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactlyOnce")
            .field("producer", &self.producer)
            .field("max_batch", &self.max_batch)
            .field("max_delay", &self.max_delay)
            .finish_non_exhaustive()
    }
}

impl ExactlyOnce {
    /// Batches of up to 500 records or 100 ms.
    pub fn new(producer: ProducerConfig) -> Self {
        ExactlyOnce {
            producer,
            max_batch: 500,
            max_delay: Duration::from_millis(100),
            on_assigned: None,
            on_revoked: None,
            on_batch_end: None,
        }
    }

    /// Calls `f` on the poll thread once per transaction that served
    /// records, after it ended and before the next record is served:
    /// `f(true)` when it committed, `f(false)` when it was aborted (its
    /// records are then served again) or processing stopped
    /// before a commit — the place to make per-partition state follow the
    /// transaction (keep or roll back what its records' handlers wrote).
    pub fn on_batch_end(mut self, f: impl Fn(bool) + Send + Sync + 'static) -> Self {
        self.on_batch_end = Some(Arc::new(f));
        self
    }

    /// Calls `f` with the newly assigned partitions, on the poll thread,
    /// before any of their records is served and between two transactions
    /// (no record is served meanwhile, so a long restore cannot outlast
    /// `transaction.timeout.ms`) — the place to restore per-partition
    /// state (it may block).
    pub fn on_partitions_assigned(
        mut self,
        f: impl Fn(&[(String, i32)]) + Send + Sync + 'static,
    ) -> Self {
        self.on_assigned = Some(Arc::new(f));
        self
    }

    /// Calls `f` with the partitions being revoked, on the poll thread,
    /// after their last transaction committed or aborted — the place to drop
    /// per-partition state.
    pub fn on_partitions_revoked(
        mut self,
        f: impl Fn(&[(String, i32)]) + Send + Sync + 'static,
    ) -> Self {
        self.on_revoked = Some(Arc::new(f));
        self
    }
}

enum BatchError {
    /// The transaction was aborted; serve its records again.
    Retry(String),
    /// The transactional producer cannot go on (a fatal error, e.g. after
    /// a long outage): re-create it and serve from the committed offsets.
    Recreate(String),
    /// The producer or consumer cannot go on.
    Fatal(ConsumerError),
    /// Shutdown was asked for while the broker did not answer: the open
    /// transaction is left to the broker (it aborts it, or the next
    /// instance's initialisation does).
    Stopped,
}

impl From<TransactionError> for BatchError {
    fn from(e: TransactionError) -> Self {
        match e {
            TransactionError::Fatal(m) => BatchError::Recreate(m.to_string()),
            // The producer's state is not what this loop expects: a new
            // producer starts from a clean one.
            TransactionError::State(m) => BatchError::Recreate(m),
            e @ (TransactionError::Fenced(_)
            | TransactionError::Refused(_)
            | TransactionError::Config(_)) => {
                BatchError::Fatal(ConsumerError::new("exactly-once processing stopped", e))
            }
            other => BatchError::Retry(other.to_string()),
        }
    }
}

impl Consumer {
    /// Serves records exactly-once: see [`ExactlyOnce`].
    ///
    /// The consumer reads with `isolation.level=read_committed` unless
    /// configured otherwise. Records are served in partition order (the
    /// `ordering` setting does not apply); `max_in_flight` bounds the
    /// records served at once over all partitions, as in
    /// [`Consumer::serve`].
    pub async fn serve_exactly_once<S, F>(
        self,
        service: S,
        settings: ExactlyOnce,
        shutdown: F,
    ) -> Result<(), ConsumerError>
    where
        S: RecordService,
        F: std::future::Future<Output = ()> + Send,
    {
        let producer = TransactionalProducer::new(settings.producer.clone())
            .await
            .map_err(|e| ConsumerError::new("cannot start the transactional producer", e))?;
        producer
            .begin()
            .map_err(|e| ConsumerError::new("cannot begin the first transaction", e))?;
        let config = self.config();
        let shared = Arc::new(TxShared {
            gate: Arc::new(RwLock::new(())),
            producer: std::sync::RwLock::new(Arc::new(producer)),
            pending: Mutex::default(),
            failed: Mutex::default(),
            dead_letter: config.dead_letter.clone(),
            service_id: config.service_id.clone(),
            admitted: AtomicUsize::new(0),
            doomed: AtomicBool::new(false),
            max_batch: settings.max_batch.max(1),
            rounds: watch::Sender::new(0),
            wake: Mutex::new(false),
            woken: Condvar::new(),
        });
        let committer = Transactions {
            shared: shared.clone(),
            settings,
            handle: tokio::runtime::Handle::current(),
            stop: Arc::new(AtomicBool::new(false)),
            first_seen: None,
            seen: 0,
            stopped: false,
        };
        self.run(
            move || Transactional {
                service: service.clone(),
                tx: shared.clone(),
            },
            shutdown,
            Some(committer),
        )
        .await
    }
}

/// A delivery the committer awaits before committing.
type PendingDelivery = Pin<Box<dyn Future<Output = Result<(), TransactionError>> + Send>>;

/// What the lanes of an exactly-once consumer share with its committer.
///
/// The gate: a lane serves each record (its attempts, and queueing its
/// outputs or its dead letter in the open transaction) holding the read
/// side; the committer takes the write side to end a transaction. So no
/// record is half-served when a transaction ends: its handler's side
/// effects that follow the transaction (a state store's writes, kept or
/// rolled back by `on_batch_end`) and its outputs are all in it, or all
/// in the next one.
pub(super) struct TxShared {
    gate: Arc<RwLock<()>>,
    /// Replaced (with the gate closed) when a fatal error forces a new one.
    producer: std::sync::RwLock<Arc<TransactionalProducer>>,
    /// Deliveries of the open transaction's records.
    pending: Mutex<Vec<PendingDelivery>>,
    /// Set by a lane that could not queue a record in the open
    /// transaction: the committer aborts it.
    failed: Mutex<Option<TransactionError>>,
    dead_letter: DeadLetterPolicy,
    service_id: String,
    /// Records let into the open transaction (`max_batch` at most); reset
    /// by the committer with the gate closed.
    admitted: AtomicUsize,
    max_batch: usize,
    /// Set with `failed`: no record is let into the open transaction.
    doomed: AtomicBool,
    /// Counts the transactions ended; lanes that found the open one full
    /// wait for it to change.
    rounds: watch::Sender<u64>,
    /// Rung by a lane that found the open transaction full or failed: the
    /// committer, waiting on it between polls, ends the transaction at
    /// once.
    wake: Mutex<bool>,
    woken: Condvar,
}

/// How serving one record under the gate ended.
enum Served {
    /// Its outputs (or dead letter) are in the open transaction.
    Finished,
    /// Revocation or shutdown interrupted it.
    Cancelled,
    /// Its outputs could not be queued: the transaction must be aborted.
    Failed,
}

impl TxShared {
    fn producer(&self) -> Arc<TransactionalProducer> {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_producer(&self, producer: TransactionalProducer) {
        *self.producer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(producer);
    }

    fn fail(&self, e: TransactionError) {
        self.doomed.store(true, Relaxed);
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }

    /// Lets one more record into the open transaction, unless it already
    /// holds `max_batch`. Called with the gate's read side held.
    fn admit(&self) -> bool {
        // A transaction that will be aborted takes no more work.
        if self.doomed.load(Relaxed) {
            return false;
        }
        if self.admitted.fetch_add(1, Relaxed) < self.max_batch {
            return true;
        }
        self.admitted.fetch_sub(1, Relaxed);
        false
    }

    /// Asks the committer to end the open transaction now.
    fn ring(&self) {
        *self.wake.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.woken.notify_one();
    }

    /// Waits until a lane rings, or `timeout`.
    pub(super) fn wait_for_ring(&self, timeout: Duration) {
        let mut rung = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        if !*rung {
            rung = self
                .woken
                .wait_timeout(rung, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *rung = false;
    }

    fn has_failed(&self) -> bool {
        self.doomed.load(Relaxed)
    }

    /// Serves `record` and queues its outputs in the open transaction (or
    /// its dead letter, when it failed).
    async fn serve_record<S: RecordService>(
        &self,
        lane: &Lane<'_>,
        service: &mut S,
        record: &ConsumedRecord,
        queued: &mut bool,
    ) -> Served {
        let policy = &lane.shared.policy;
        let mut outbox = Outbox::default();
        let attempted = serve_attempts(
            policy,
            service,
            record,
            &lane.target,
            &lane.ctl.cancel,
            None,
            |req| {
                outbox = Outbox::default();
                req.extensions_mut().insert(outbox.clone());
            },
        )
        .await;
        let outputs = match attempted {
            Attempted::Succeeded => outbox.take(),
            Attempted::Cancelled => return Served::Cancelled,
            Attempted::Failed { failure, attempts } => {
                self.dead_letter_of(policy, record, &failure, attempts)
            }
        };
        self.enqueue(outputs, queued).await
    }

    /// The dead letter of a failed record (none when dead-lettering is
    /// disabled: the record is skipped).
    fn dead_letter_of(
        &self,
        policy: &AttemptPolicy,
        record: &ConsumedRecord,
        failure: &Failure,
        attempts: u32,
    ) -> Vec<OutgoingRecord> {
        match self.dead_letter.topic_for(&record.topic) {
            Some(topic) => {
                policy.stats.dead_lettered.fetch_add(1, Relaxed);
                vec![OutgoingRecord {
                    topic,
                    partition: None,
                    key: record.key.clone(),
                    payload: record.payload.clone(),
                    headers: provenance_headers(
                        record,
                        failure,
                        attempts,
                        &policy.group,
                        &self.service_id,
                        self.dead_letter.max_error_len,
                    ),
                    timestamp: None,
                }]
            }
            None => {
                policy.stats.skipped.fetch_add(1, Relaxed);
                tracing::error!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    error = %failure.message, "record failed and dead-lettering is disabled: skipped"
                );
                Vec::new()
            }
        }
    }

    /// Queues `outputs` in the open transaction; their deliveries are
    /// awaited by the committer.
    async fn enqueue(&self, outputs: Vec<OutgoingRecord>, queued: &mut bool) -> Served {
        if outputs.is_empty() {
            return Served::Finished;
        }
        let producer = self.producer();
        for output in outputs {
            match producer.enqueue(output).await {
                Ok(delivery) => {
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Box::pin(delivery));
                    *queued = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot queue a record in the transaction: aborting it");
                    self.fail(e);
                    self.ring();
                    return Served::Failed;
                }
            }
        }
        Served::Finished
    }
}

/// A lane's work in exactly-once mode: the partition's records one at a
/// time, in offset order, each under the read side of the gate.
pub(super) struct Transactional<S> {
    service: S,
    tx: Arc<TxShared>,
}

impl<S: RecordService> LaneWork for Transactional<S> {
    async fn serve<'a, Src: RecordSource>(self, lane: &'a Lane<'a>, source: &'a mut Src) {
        let Transactional { mut service, tx } = self;
        let mut rounds = tx.rounds.subscribe();
        let mut next: Option<i64> = None;
        let mut permit = None;
        loop {
            let Some(record) = lane.next_started(source, &mut next, &mut permit).await else {
                return;
            };
            // Into the open transaction, once it has room.
            let open = loop {
                let open = tokio::select! {
                    biased;
                    () = lane.ctl.cancel.cancelled() => None,
                    open = tx.gate.read() => Some(open),
                };
                let Some(open) = open.filter(|_| !lane.ctl.cancel.is_cancelled()) else {
                    lane.end(Some(false), record.offset, 1);
                    return;
                };
                if tx.admit() {
                    break open;
                }
                // Full: this transaction's round cannot end while the read
                // side is held, so the one waited for is still to come.
                let _ = rounds.borrow_and_update();
                drop(open);
                tx.ring();
                tokio::select! {
                    biased;
                    () = lane.ctl.cancel.cancelled() => {
                        lane.end(Some(false), record.offset, 1);
                        return;
                    }
                    _ = rounds.changed() => {}
                }
            };
            let mut queued = false;
            let served =
                AssertUnwindSafe(tx.serve_record(lane, &mut service, &record, &mut queued))
                    .catch_unwind()
                    .await;
            let served = match served {
                Ok(served) => served,
                // Part of its outputs are in the transaction: it must not
                // commit.
                Err(panic) if queued => {
                    let failure = panic_failure(&*panic);
                    tracing::error!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        error = %failure.message, "runtime failure while queueing a record's outputs: aborting the transaction"
                    );
                    tx.fail(TransactionError::Aborted(TransactionCause::message_only(
                        failure.message,
                    )));
                    tx.ring();
                    Served::Failed
                }
                // A panic of the runtime's own code (mapping, context
                // capture; the service's panics are caught per call): the
                // record is dead-lettered in the transaction.
                Err(panic) => {
                    let failure = panic_failure(&*panic);
                    tracing::error!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        error = %failure.message, "runtime failure below the service: dead-lettering the record"
                    );
                    let dead = AssertUnwindSafe(async {
                        let letter = tx.dead_letter_of(&lane.shared.policy, &record, &failure, 0);
                        tx.enqueue(letter, &mut queued).await
                    })
                    .catch_unwind()
                    .await;
                    match dead {
                        Ok(served) => served,
                        Err(again) => {
                            if queued {
                                tx.fail(TransactionError::Aborted(TransactionCause::message_only(
                                    "a dead letter failed",
                                )));
                            }
                            lane.ctl
                                .fail(dead_letter_failed(&record, &failure, &*again));
                            lane.end(None, record.offset, 1);
                            return;
                        }
                    }
                }
            };
            match served {
                Served::Finished => {
                    let going_on = lane.end(Some(true), record.offset + 1, 1);
                    drop(open);
                    if !going_on {
                        return;
                    }
                }
                Served::Cancelled => {
                    lane.end(Some(false), record.offset, 1);
                    return;
                }
                Served::Failed => {
                    // The committer aborts the transaction and starts the
                    // partition over with a new lane.
                    lane.end(Some(false), record.offset, 1);
                    drop(open);
                    lane.ctl.cancel.cancelled().await;
                    return;
                }
            }
        }
    }
}

/// The committer of an exactly-once consumer, run by the poll thread: it
/// ends the open transaction every `max_batch` records or `max_delay`
/// after the first, on revocation and on shutdown.
pub(super) struct Transactions {
    shared: Arc<TxShared>,
    settings: ExactlyOnce,
    handle: tokio::runtime::Handle,
    /// The poll thread's stop flag (set once it runs).
    stop: Arc<AtomicBool>,
    /// When the poll thread first saw a finished record of the open
    /// transaction.
    first_seen: Option<Instant>,
    /// Records finished over all lanes at the end of the last round.
    seen: u64,
    /// Set when shutdown was asked for while the broker did not answer an
    /// end of transaction: nothing more is served or ended.
    stopped: bool,
}

/// What a partition leaving the consumer (revoked, or shutdown) still
/// contributes to the last transaction: its lane's commit point.
pub(super) struct Leaving {
    pub(super) tp: TopicPartition,
    pub(super) ctl: Arc<LaneControl>,
    pub(super) committed: Option<i64>,
}

impl Transactions {
    /// The poll thread's stop flag, watched while the broker does not
    /// answer.
    pub(super) fn set_stop(&mut self, stop: Arc<AtomicBool>) {
        self.stop = stop;
    }

    /// How long the poll thread may wait for events before looking again.
    pub(super) fn poll_timeout(&self) -> Duration {
        self.settings
            .max_delay
            .clamp(Duration::from_millis(1), Duration::from_millis(5))
    }

    /// A lane was stopped in the middle of a record: the open transaction
    /// must not commit.
    pub(super) fn abandoned(&self) {
        self.shared
            .fail(TransactionError::Aborted(TransactionCause::message_only(
                "a lane was stopped in the middle of a record",
            )));
    }

    pub(super) fn assigned(&self, partitions: &[(String, i32)]) {
        if let Some(f) = &self.settings.on_assigned {
            f(partitions);
        }
    }

    pub(super) fn revoked(&self, partitions: &[(String, i32)]) {
        if let Some(f) = &self.settings.on_revoked {
            f(partitions);
        }
    }

    /// Whether the open transaction should end now: it holds `max_batch`
    /// records, or `max_delay` passed since its first finished, or a lane
    /// could not queue its outputs.
    pub(super) fn due(&mut self, finished: u64) -> bool {
        if self.stopped {
            return false;
        }
        if finished > self.seen && self.first_seen.is_none() {
            self.first_seen = Some(Instant::now());
        }
        self.shared.admitted.load(Relaxed) >= self.shared.max_batch
            || self
                .first_seen
                .is_some_and(|t| t.elapsed() >= self.settings.max_delay)
            || self.shared.has_failed()
    }

    /// What lanes share with the committer (the poll thread waits on it).
    pub(super) fn shared(&self) -> Arc<TxShared> {
        self.shared.clone()
    }

    /// Ends the open transaction: with the gate closed (no record
    /// half-served), awaits the deliveries of its records, adds the lanes'
    /// commit points (and those of `leaving` partitions) as its offsets and
    /// commits; calls `on_batch_end`, then `between` (still with no record
    /// served and no transaction begun: partitions come and go there), and
    /// begins the next transaction. If the commit fails the transaction is
    /// aborted, or the producer re-created after a fatal error, and every
    /// partition's lane is replaced by a new one that starts from the
    /// partition's last committed offset — unless `restart` is false
    /// (shutdown: nothing is begun either). `Ok(false)` when processing
    /// must end quietly (shutdown asked for while the broker does not
    /// answer).
    pub(super) fn round(
        &mut self,
        st: &mut PollState,
        consumer: &BaseConsumer<RuntimeContext>,
        leaving: &mut [Leaving],
        restart: bool,
        between: impl FnOnce(&Self),
    ) -> Result<bool, ConsumerError> {
        if self.stopped {
            between(self);
            return Ok(false);
        }
        let gate = self.shared.gate.clone();
        let _closed = self.handle.block_on(gate.write_owned());
        // The next transaction has room again; lanes that waited for it
        // take the read side once this round is over.
        self.shared.admitted.store(0, Relaxed);
        self.shared.rounds.send_modify(|n| *n += 1);
        self.first_seen = None;
        let failed = self
            .shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.shared.doomed.store(false, Relaxed);
        let pending = std::mem::take(
            &mut *self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut offsets = TopicPartitionList::new();
        let mut points: Vec<(TopicPartition, i64)> = Vec::new();
        let current = st
            .partitions
            .iter()
            .map(|(tp, ps)| (tp, &ps.ctl, ps.committed));
        let gone = leaving.iter().map(|l| (&l.tp, &l.ctl, l.committed));
        for (tp, ctl, committed) in current.chain(gone) {
            if let Some(point) = ctl.commit_point().filter(|p| committed != Some(*p)) {
                offsets
                    .add_partition_offset(&tp.0, tp.1, Offset::Offset(point))
                    .map_err(|e| ConsumerError::new("invalid offsets", e))?;
                points.push((tp.clone(), point));
            }
        }
        self.seen = finished_records(st);
        if failed.is_none() && pending.is_empty() && points.is_empty() {
            between(self);
            return Ok(true);
        }
        let producer = self.shared.producer();
        let result = match failed {
            Some(e) => {
                // What was queued before the failure goes to the broker
                // first (and is then aborted with the rest): the outcome
                // does not depend on whether librdkafka had sent it yet.
                self.handle
                    .block_on(futures_util::future::join_all(pending));
                Err(BatchError::from(e))
            }
            None => self.handle.block_on(async {
                for delivery in pending {
                    delivery.await?;
                }
                if offsets.count() > 0 {
                    let group = consumer.group_metadata().ok_or_else(|| {
                        BatchError::Fatal(ConsumerError::message("no consumer group metadata"))
                    })?;
                    producer.send_offsets(offsets, group).await?;
                }
                Ok(())
            }),
        };
        let result = match result {
            Ok(()) => self.end_transaction(&producer, true),
            Err(e) => {
                // A producer with a fatal error fails every call, the
                // abort included: re-create it.
                if let Some(fatal) = producer.fatal_error() {
                    Err(BatchError::Recreate(fatal))
                } else if producer.in_transaction() {
                    self.end_transaction(&producer, false).and(Err(e))
                } else {
                    Err(e)
                }
            }
        };
        let committed = match result {
            Ok(()) => true,
            Err(BatchError::Fatal(e)) => {
                self.batch_end(false);
                return Err(e);
            }
            Err(BatchError::Stopped) => {
                // The end of the transaction is undecided: serve nothing
                // more into it, and do not end it again.
                self.stopped = true;
                self.shared.doomed.store(true, Relaxed);
                self.batch_end(false);
                between(self);
                return Ok(false);
            }
            Err(BatchError::Recreate(m)) => {
                tracing::warn!(
                    error = %m, partitions = points.len(),
                    "fatal transactional producer error: re-creating the producer (same \
                     transactional.id) and serving again from the committed offsets"
                );
                if !self.recreate_producer(st)? {
                    self.batch_end(false);
                    between(self);
                    return Ok(false);
                }
                // Initialising the new producer completed or aborted the
                // old one's transaction: the group's offsets say which.
                let Some(broker) = self.committed_offsets(consumer, st, leaving)? else {
                    self.batch_end(false);
                    between(self);
                    return Ok(false);
                };
                let went_through = !points.is_empty()
                    && points
                        .iter()
                        .all(|(tp, p)| broker.iter().any(|(t, o)| t == tp && *o == Some(*p)));
                if !went_through {
                    for (tp, at) in &broker {
                        if let Some(ps) = st.partitions.get_mut(tp) {
                            ps.committed = *at;
                        }
                    }
                }
                went_through
            }
            Err(BatchError::Retry(m)) => {
                tracing::warn!(error = %m, "transaction aborted: serving its records again");
                false
            }
        };
        self.batch_end(committed);
        if committed {
            st.stats.commits.fetch_add(1, Relaxed);
            for (tp, point) in points {
                if let Some(ps) = st.partitions.get_mut(&tp) {
                    ps.committed = Some(point);
                } else if let Some(l) = leaving.iter_mut().find(|l| l.tp == tp) {
                    l.committed = Some(point);
                }
            }
        } else if restart {
            self.restart_lanes(st, consumer)?;
        }
        between(self);
        if restart {
            self.begin()?;
        }
        Ok(true)
    }

    fn batch_end(&self, committed: bool) {
        if let Some(f) = &self.settings.on_batch_end {
            f(committed);
        }
    }

    /// The group's committed offsets of every partition, current and
    /// `leaving`, asking until the broker answers; `None` when shutdown is
    /// asked for first.
    #[allow(clippy::type_complexity)]
    fn committed_offsets(
        &self,
        consumer: &BaseConsumer<RuntimeContext>,
        st: &PollState,
        leaving: &[Leaving],
    ) -> Result<Option<Vec<(TopicPartition, Option<i64>)>>, ConsumerError> {
        let tps: Vec<TopicPartition> = st
            .partitions
            .keys()
            .cloned()
            .chain(leaving.iter().map(|l| l.tp.clone()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for tp in &tps {
            tpl.add_partition(&tp.0, tp.1);
        }
        let committed = loop {
            match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
                Ok(c) => break c,
                Err(_) if self.stop.load(Relaxed) => return Ok(None),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the committed offsets yet; asking again");
                }
            }
        };
        Ok(Some(
            tps.into_iter()
                .map(|tp| {
                    let at = committed
                        .find_partition(&tp.0, tp.1)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                    (tp, at)
                })
                .collect(),
        ))
    }

    fn begin(&self) -> Result<(), ConsumerError> {
        let producer = self.shared.producer();
        producer
            .begin()
            .map_err(|e| ConsumerError::new("cannot begin a transaction", e))?;
        #[cfg(feature = "fault-injection")]
        if super::fault_injection::take_fatal_next_transaction() {
            producer.inject_fatal_error();
        }
        Ok(())
    }

    /// Commits (or aborts) the open transaction, resuming the call while
    /// the broker does not answer — an outage longer than the call's
    /// timeout leaves the transaction undecided, and only the same call
    /// made again decides it — unless shutdown is asked for meanwhile.
    fn end_transaction(
        &self,
        producer: &TransactionalProducer,
        commit: bool,
    ) -> Result<(), BatchError> {
        loop {
            let ended = self.handle.block_on(async {
                if commit {
                    producer.commit().await
                } else {
                    producer.abort().await
                }
            });
            match ended {
                Err(TransactionError::TimedOut(m)) => {
                    if self.stop.load(Relaxed) {
                        tracing::warn!(error = %m, "stopping while the broker does not answer: the open transaction is left to the broker");
                        return Err(BatchError::Stopped);
                    }
                    let what = if commit { "commit" } else { "abort" };
                    tracing::warn!(error = %m, "the broker did not answer the {what}: resuming it");
                }
                r => return r.map_err(Into::into),
            }
        }
    }

    /// Replaces the producer after a fatal error, trying again (the broker
    /// may still be unreachable) until it works or shutdown is asked for;
    /// `false` when stopped first. Initialising the new producer (same
    /// `transactional.id`) completes or aborts the old one's transaction
    /// on the broker. Fencing by another instance, a refusal or a bad
    /// configuration stop processing with that error.
    fn recreate_producer(&self, st: &PollState) -> Result<bool, ConsumerError> {
        let mut delay = Duration::from_millis(500);
        loop {
            if self.stop.load(Relaxed) {
                return Ok(false);
            }
            let created = self
                .handle
                .block_on(TransactionalProducer::new(self.settings.producer.clone()));
            match created {
                Ok(p) => {
                    self.shared.set_producer(p);
                    st.stats.producer_recreations.fetch_add(1, Relaxed);
                    tracing::info!("transactional producer re-created");
                    return Ok(true);
                }
                Err(
                    e @ (TransactionError::Fenced(_)
                    | TransactionError::Refused(_)
                    | TransactionError::Config(_)),
                ) => return Err(ConsumerError::new(
                    "exactly-once processing stopped: cannot re-create the transactional producer",
                    e,
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-create the transactional producer yet; trying again in {delay:?}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// After an abort: stops every lane (none is serving: the gate is
    /// closed), seeks each partition back to its last committed offset (or
    /// the first record its lane took, when nothing was committed yet) and
    /// gives it a new lane. A partition that cannot be rewound stops the
    /// consumer: going on from where its lane was would skip the aborted
    /// records.
    fn restart_lanes(
        &mut self,
        st: &mut PollState,
        consumer: &BaseConsumer<RuntimeContext>,
    ) -> Result<(), ConsumerError> {
        let tps: Vec<TopicPartition> = st.partitions.keys().cloned().collect();
        st.stop_lanes(&tps);
        for tp in &tps {
            let Some(ps) = st.partitions.get(tp) else {
                continue;
            };
            if let Some(at) = ps.committed.or_else(|| ps.ctl.first_taken()) {
                consumer
                    .seek(&tp.0, tp.1, Offset::Offset(at), Duration::from_secs(10))
                    .map_err(|e| {
                        ConsumerError::new(format!("cannot rewind {}[{}] to {at}", tp.0, tp.1), e)
                    })?;
            }
            st.reopen_partition(consumer, tp.clone())?;
        }
        self.seen = finished_records(st);
        Ok(())
    }
}

/// Records finished so far by the current lanes.
pub(super) fn finished_records(st: &PollState) -> u64 {
    st.partitions.values().map(|ps| ps.ctl.progress().0).sum()
}
