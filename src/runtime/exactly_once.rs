//! See [`ExactlyOnce`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::access::AccessWatch;
use super::attempt::{serve_attempts, AttemptPolicy, Attempted, RequestTarget};
use super::client;
use super::config::ConsumerConfig;
use super::consumer::{Consumer, ConsumerError};
use super::dead_letter::provenance_headers;
use super::native::to_consumed_record;
use super::producer::ProducerConfig;
use super::service::RecordService;
use super::transactions::{TransactionError, TransactionalProducer};
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
/// The consumer reads a batch (at most `max_batch` records or `max_delay`),
/// opens a Kafka transaction, serves every record (partitions in parallel,
/// each partition in order), and then, in that one transaction, produces
/// the records each handler put into its [`Outbox`], the dead letters of
/// the batch, and the batch's consumed offsets (`send_offsets_to_transaction`).
/// Committing the transaction makes all of it visible at once to
/// `read_committed` consumers. If anything fails the transaction is
/// aborted, the partitions are rewound to the start of the batch and the
/// batch is served again; a process killed mid-batch leaves an open
/// transaction that the broker aborts when the restarted instance (same
/// `transactional_id`) initialises. So each input's outputs appear exactly
/// once downstream.
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
    /// Records per transaction, at most.
    pub max_batch: usize,
    /// How long a batch may wait to fill.
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

    /// Calls `f` on the poll thread once per served batch, after its
    /// transaction ended: `f(true)` when it committed, `f(false)` when it
    /// was aborted (the batch is then served again) or processing stopped
    /// before a commit — the place to make per-partition state follow the
    /// transaction (keep or roll back what the batch's handlers wrote).
    pub fn on_batch_end(mut self, f: impl Fn(bool) + Send + Sync + 'static) -> Self {
        self.on_batch_end = Some(Arc::new(f));
        self
    }

    /// Calls `f` with the newly assigned partitions, on the poll thread,
    /// before any of their records is served and while no transaction is
    /// open — the place to restore per-partition state (it may block).
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

#[derive(Default)]
struct EosContext {
    access: AccessWatch,
    revoked: Mutex<Vec<(String, i32)>>,
    on_assigned: Option<PartitionsCallback>,
    on_revoked: Option<PartitionsCallback>,
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for EosContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.access.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.access.error(&error, reason);
    }
}

impl ConsumerContext for EosContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Rebalances happen only inside `poll`, between transactions: there
        // is nothing in flight to drain, only the batch being gathered.
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions_of(tpl);
            if let Some(f) = &self.on_revoked {
                f(&revoked);
            }
            self.revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(revoked);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if let Some(f) = &self.on_assigned {
                f(&partitions_of(tpl));
            }
        }
    }
}

enum BatchError {
    /// The transaction was aborted; serve the batch again.
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
    /// configured otherwise. Ordering is per partition; `max_in_flight`
    /// bounds the partitions served at once.
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
        let config = self.config().clone();
        let stats = self.stats();
        let producer = TransactionalProducer::new(settings.producer.clone())
            .await
            .map_err(|e| ConsumerError::new("cannot start the transactional producer", e))?;
        let mut policy = AttemptPolicy::from_config(&config, stats.clone())?;
        // A held record would keep its transaction open past
        // `transaction.timeout.ms`: this mode dead-letters after the attempts.
        policy.retry.hold = Duration::ZERO;
        let shared = Arc::new(EosShared {
            policy,
            partitions_at_once: Semaphore::new(config.max_in_flight),
        });

        let consumer = client::create(
            &config,
            &[("isolation.level", "read_committed")],
            EosContext {
                access: AccessWatch::new([&config.properties]),
                revoked: Mutex::default(),
                on_assigned: settings.on_assigned.clone(),
                on_revoked: settings.on_revoked.clone(),
            },
        )?;
        client::subscribe(&consumer, &config)?;
        let handle = tokio::runtime::Handle::current();
        client::run_poll_thread("kafka-tower-eos", shutdown, move |stop| {
            let mut run = EosRun {
                consumer: &consumer,
                producer,
                service,
                shared,
                handle,
                config,
                settings,
            };
            run.run(stop)
        })
        .await
    }
}

/// What the partitions of a batch share while they are served.
struct EosShared {
    policy: AttemptPolicy,
    /// `max_in_flight`: partitions of a batch served at once.
    partitions_at_once: Semaphore,
}

struct EosRun<'c, S> {
    consumer: &'c BaseConsumer<EosContext>,
    producer: TransactionalProducer,
    service: S,
    shared: Arc<EosShared>,
    handle: tokio::runtime::Handle,
    config: ConsumerConfig,
    settings: ExactlyOnce,
}

type Partition = (Arc<str>, i32);

impl<S: RecordService> EosRun<'_, S> {
    fn run(&mut self, stop: &AtomicBool) -> Result<(), ConsumerError> {
        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        while !stop.load(Relaxed) {
            let batch = self.gather(stop, &mut topics)?;
            if batch.is_empty() {
                continue;
            }
            let result = self.handle.block_on(self.process(&batch, stop));
            if let Some(f) = &self.settings.on_batch_end {
                f(result.is_ok());
            }
            match result {
                Ok(()) => {}
                Err(BatchError::Fatal(e)) => return Err(e),
                Err(BatchError::Stopped) => break,
                Err(BatchError::Recreate(m)) => {
                    tracing::warn!(
                        error = %m, records = batch.len(),
                        "fatal transactional producer error: re-creating the producer (same \
                         transactional.id) and serving again from the committed offsets"
                    );
                    if !self.recreate_producer(stop)? {
                        break;
                    }
                    if !self.rewind_to_committed(&batch, stop)? {
                        break;
                    }
                }
                Err(BatchError::Retry(m)) => {
                    // Seek back: the next gather reads the batch again.
                    tracing::warn!(error = %m, records = batch.len(), "transaction aborted: rewinding the batch");
                    self.rewind(&batch);
                }
            }
        }
        tracing::info!("exactly-once consumer stopped");
        Ok(())
    }

    /// Reads up to `max_batch` records, waiting at most `max_delay` once the
    /// first arrived.
    fn gather(
        &self,
        stop: &AtomicBool,
        topics: &mut HashMap<String, Arc<str>>,
    ) -> Result<Vec<ConsumedRecord>, ConsumerError> {
        let mut batch = Vec::new();
        let mut first_at: Option<Instant> = None;
        while batch.len() < self.settings.max_batch && !stop.load(Relaxed) {
            if let Some(refused) = self.consumer.context().access.refused() {
                return Err(ConsumerError::new("cannot consume", refused));
            }
            let timeout = match first_at {
                None => Duration::from_millis(100),
                Some(t) => {
                    let left = self.settings.max_delay.saturating_sub(t.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    left
                }
            };
            match self.consumer.poll(timeout) {
                Some(Ok(msg)) => {
                    let topic = match topics.get(msg.topic()) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = msg.topic().into();
                            topics.insert(msg.topic().to_owned(), t.clone());
                            t
                        }
                    };
                    batch.push(to_consumed_record(&msg, topic));
                    first_at.get_or_insert_with(Instant::now);
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    return Err(ConsumerError::new(
                        "fatal consumer error",
                        KafkaError::MessageConsumptionFatal(code),
                    ));
                }
                // Reported (and watched for refusals) by the error callback.
                Some(Err(e)) => tracing::debug!(error = %e, "consumer error event"),
                None if first_at.is_some() => break,
                None => {}
            }
            let revoked = std::mem::take(
                &mut *self
                    .consumer
                    .context()
                    .revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if !revoked.is_empty() {
                batch.retain(|r: &ConsumedRecord| {
                    !revoked
                        .iter()
                        .any(|(t, p)| **t == *r.topic && *p == r.partition)
                });
            }
        }
        Ok(batch)
    }

    /// One transaction: serve, produce outputs and dead letters, add offsets,
    /// commit.
    async fn process(&self, batch: &[ConsumedRecord], stop: &AtomicBool) -> Result<(), BatchError> {
        tracing::debug!(records = batch.len(), "beginning a transaction");
        self.producer.begin()?;
        #[cfg(feature = "fault-injection")]
        if super::fault_injection::take_fatal_next_transaction() {
            self.producer.inject_fatal_error();
        }
        let result = self.serve_and_send(batch).await;
        match result {
            Ok(()) => self.end_transaction(true, stop).await,
            Err(e) => {
                // A producer with a fatal error fails every call, the
                // abort included: re-create it.
                if let Some(fatal) = self.producer.fatal_error() {
                    return Err(BatchError::Recreate(fatal));
                }
                if self.producer.in_transaction() {
                    self.end_transaction(false, stop).await?;
                }
                Err(e)
            }
        }
    }

    /// Commits (or aborts) the open transaction, resuming the call while
    /// the broker does not answer — an outage longer than the call's
    /// timeout leaves the transaction undecided, and only the same call
    /// made again decides it — unless shutdown is asked for meanwhile.
    async fn end_transaction(&self, commit: bool, stop: &AtomicBool) -> Result<(), BatchError> {
        loop {
            let ended = if commit {
                self.producer.commit().await
            } else {
                self.producer.abort().await
            };
            match ended {
                Err(TransactionError::TimedOut(m)) => {
                    if stop.load(Relaxed) {
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

    async fn serve_and_send(&self, batch: &[ConsumedRecord]) -> Result<(), BatchError> {
        // Group by partition, keeping offset order.
        let mut order: Vec<Partition> = Vec::new();
        let mut by_partition: HashMap<Partition, Vec<ConsumedRecord>> = HashMap::new();
        for r in batch {
            let tp = (r.topic.clone(), r.partition);
            by_partition
                .entry(tp.clone())
                .or_insert_with(|| {
                    order.push(tp);
                    Vec::new()
                })
                .push(r.clone());
        }
        let cancel = CancellationToken::new();
        let tasks: Vec<_> = order
            .iter()
            .map(|tp| {
                let records = by_partition.remove(tp).unwrap_or_default();
                let shared = self.shared.clone();
                let service = self.service.clone();
                let cancel = cancel.clone();
                let dlq = self.config.dead_letter.clone();
                let service_id = self.config.service_id.clone();
                self.handle.spawn(async move {
                    let _permit = shared.partitions_at_once.acquire().await;
                    serve_partition(&shared, service, records, &cancel, &dlq, &service_id).await
                })
            })
            .collect();
        let mut outputs = Vec::new();
        for t in join_all(tasks).await {
            match t {
                Ok(Ok(out)) => outputs.extend(out),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(BatchError::Retry(format!("a partition task failed: {e}"))),
            }
        }
        for r in join_all(outputs.iter().map(|o| self.producer.send(o))).await {
            r?;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &order {
            let last = batch
                .iter()
                .filter(|r| r.topic == *topic && r.partition == *partition)
                .map(|r| r.offset)
                .max()
                .expect("partition has records");
            tpl.add_partition_offset(topic, *partition, Offset::Offset(last + 1))
                .map_err(|e| BatchError::Fatal(ConsumerError::new("invalid offsets", e)))?;
        }
        let group = self.consumer.group_metadata().ok_or_else(|| {
            BatchError::Fatal(ConsumerError::message("no consumer group metadata"))
        })?;
        self.producer.send_offsets(tpl, group).await?;
        Ok(())
    }

    /// Replaces the producer after a fatal error, trying again (the broker
    /// may still be unreachable) until it works or `stop`; `false` when
    /// stopped first. Initialising the new producer (same
    /// `transactional.id`) completes or aborts the old one's transaction
    /// on the broker. Fencing by another instance, a refusal or a bad
    /// configuration stop processing with that error.
    fn recreate_producer(&mut self, stop: &AtomicBool) -> Result<bool, ConsumerError> {
        let mut delay = Duration::from_millis(500);
        loop {
            if stop.load(Relaxed) {
                return Ok(false);
            }
            let created = self
                .handle
                .block_on(TransactionalProducer::new(self.settings.producer.clone()));
            match created {
                Ok(p) => {
                    self.producer = p;
                    self.shared
                        .policy
                        .stats
                        .producer_recreations
                        .fetch_add(1, Relaxed);
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

    /// Seeks the partitions of `batch` to their committed offsets (where
    /// the last committed transaction left them), asking until the broker
    /// answers; `false` when stopped first.
    fn rewind_to_committed(
        &self,
        batch: &[ConsumedRecord],
        stop: &AtomicBool,
    ) -> Result<bool, ConsumerError> {
        let mut tpl = TopicPartitionList::new();
        for r in batch {
            if tpl.find_partition(&r.topic, r.partition).is_none() {
                tpl.add_partition(&r.topic, r.partition);
            }
        }
        let committed = loop {
            match self
                .consumer
                .committed_offsets(tpl.clone(), Duration::from_secs(10))
            {
                Ok(c) => break c,
                Err(_) if stop.load(Relaxed) => return Ok(false),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the committed offsets yet; asking again");
                }
            }
        };
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                // Nothing committed yet: no transaction covered the
                // partition, so the batch's first record is where it starts.
                _ => Offset::Offset(
                    batch
                        .iter()
                        .filter(|r| *r.topic == *e.topic() && r.partition == e.partition())
                        .map(|r| r.offset)
                        .min()
                        .expect("the partition comes from the batch"),
                ),
            };
            if let Err(err) =
                self.consumer
                    .seek(e.topic(), e.partition(), offset, Duration::from_secs(10))
            {
                return Err(ConsumerError::new(
                    format!(
                        "cannot rewind {}[{}] to {offset:?}",
                        e.topic(),
                        e.partition()
                    ),
                    err,
                ));
            }
        }
        Ok(true)
    }

    /// Seeks every partition of `batch` back to its first record.
    fn rewind(&self, batch: &[ConsumedRecord]) {
        let mut first: HashMap<(Arc<str>, i32), i64> = HashMap::new();
        for r in batch {
            let e = first
                .entry((r.topic.clone(), r.partition))
                .or_insert(r.offset);
            *e = (*e).min(r.offset);
        }
        for ((topic, partition), offset) in first {
            if let Err(e) = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                tracing::warn!(error = %e, "cannot rewind {topic}[{partition}] to {offset}: it will be re-read from the committed offset");
            }
        }
    }
}

/// Serves one partition's records in order; returns the outputs of every
/// successful record and the dead letters of failed ones.
async fn serve_partition<S: RecordService>(
    shared: &EosShared,
    mut service: S,
    records: Vec<ConsumedRecord>,
    cancel: &CancellationToken,
    dlq: &super::config::DeadLetterPolicy,
    service_id: &str,
) -> Result<Vec<OutgoingRecord>, BatchError> {
    let mut outputs = Vec::new();
    let Some(first) = records.first() else {
        return Ok(outputs);
    };
    let target = RequestTarget::new(&first.topic, &shared.policy.group);
    for record in &records {
        let mut outbox = Outbox::default();
        let attempted = serve_attempts(
            &shared.policy,
            &mut service,
            record,
            &target,
            cancel,
            None,
            |req| {
                outbox = Outbox::default();
                req.extensions_mut().insert(outbox.clone());
            },
        )
        .await;
        match attempted {
            Attempted::Succeeded => outputs.extend(outbox.take()),
            Attempted::Cancelled => return Err(BatchError::Retry("cancelled".into())),
            Attempted::Failed { failure, attempts } => match dlq.topic_for(&record.topic) {
                Some(topic) => {
                    shared.policy.stats.dead_lettered.fetch_add(1, Relaxed);
                    outputs.push(OutgoingRecord {
                        topic,
                        partition: None,
                        key: record.key.clone(),
                        payload: record.payload.clone(),
                        headers: provenance_headers(
                            record,
                            &failure,
                            attempts,
                            &shared.policy.group,
                            service_id,
                            dlq.max_error_len,
                        ),
                        timestamp: None,
                    });
                }
                None => {
                    shared.policy.stats.skipped.fetch_add(1, Relaxed);
                    tracing::error!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        error = %failure.message, "record failed and dead-lettering is disabled: skipped"
                    );
                }
            },
        }
    }
    Ok(outputs)
}
