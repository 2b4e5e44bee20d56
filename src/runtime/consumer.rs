//! The consumer runtime: [`Consumer`] and its builder.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    base_consumer::PartitionQueue, BaseConsumer, CommitMode, Consumer as _, ConsumerContext,
    Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::access::{AccessWatch, ClusterRefused};
use super::attempt::AttemptPolicy;
use super::client;
use super::config::{
    BatchSettings, ConfigError, ConsumerConfig, DeadLetterPolicy, Ordering, PropertyValue,
    RetryPolicy,
};
use super::dead_letter::DeadLetterWriter;
use super::exactly_once::{finished_records, Leaving, Transactions};
use super::lane::{
    run_lane, Batches, Bell, InFlightLimit, LaneControl, LaneShared, LaneWork, RecordSource,
    Records, TopicPartition,
};
use super::native::{PoppedMessage, QueueRef};
use super::service::{BatchService, RecordService};
use super::stats::RuntimeStats;
use crate::{BoxError, ConsumedRecord};

/// Serves the records of a consumer group's topics to a Tower service.
///
/// Build one with [`Consumer::builder`] or [`Consumer::from_config`], then
/// [`Consumer::serve`] a service until a shutdown future completes.
///
/// # Guarantees
///
/// * **At-least-once.** An offset is committed only once its record and
///   every record before it in the partition are finished: handled (`2xx`),
///   or dead-lettered and acknowledged by the broker, or skipped when
///   dead-lettering is disabled. Commits are asynchronous every
///   `commit_interval`, and synchronous on revocation and on shutdown.
/// * **Ordering.** In [`Ordering::Partition`] mode one record of a partition
///   is served at a time, in offset order; in [`Ordering::Key`] mode records
///   of one key are served in order and different keys run concurrently.
///   Partitions always run concurrently, up to `max_in_flight` records.
/// * **Backpressure.** A record is handed to the service only after
///   `poll_ready` succeeded. Each partition has its own librdkafka queue,
///   drained by its lane only when it can start a record, so a slow lane
///   simply stops draining. The records held in memory are at most, per
///   partition, what librdkafka prefetches — `queued.min.messages` records
///   or `queued.max.messages.kbytes` (the runtime sets 5,000 and 1,024 KiB
///   per partition, `fetch.queue.backoff.ms` to 1 and `fetch.wait.max.ms`
///   to 25, unless configured)
///   plus one fetch — and what the lane
///   took: up to 32 messages taken off the queue in one call and not
///   served yet, the record being served (partition mode) or up to
///   `buffer_per_partition` look-ahead records (key mode). A lane busy
///   without finishing a record for `pause_after` has its partition paused,
///   which drops the partition's prefetched records until it moves again;
///   a lane that keeps up is never paused.
/// * **Supervision.** A record the runtime cannot present to the service
///   (see [`MappingError`](crate::MappingError)) is dead-lettered with
///   `kt-dlq-failed-by: mapping`; a panic of the runtime's own code on a
///   record is caught and the record dead-lettered with `failed-by:
///   runtime`. If even that fails, [`Consumer::serve`] returns an error: a
///   partition never stops silently.
/// * **Retries and dead letters.** `408`, `429`, `5xx`, `Err` and panics
///   are retried with exponential backoff and jitter in the record's own
///   lane (other partitions keep going); other statuses, and retryable
///   failures once `retry.max_attempts` is reached, are written to the
///   dead-letter topic (see [`dead_letter`](super::dead_letter)).
/// * **Rebalance and shutdown.** Records of revoked partitions that are in
///   flight may finish (up to `drain_timeout`), then finished offsets are
///   committed before the partitions go; records not yet started are left
///   for the next owner. Shutdown does the same for every partition.
pub struct Consumer {
    config: ConsumerConfig,
    stats: Arc<RuntimeStats>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .finish()
    }
}

/// Builds a [`Consumer`] in code. Every setting has the meaning of the
/// field of the same name in [`ConsumerConfig`].
#[derive(Debug, Clone)]
pub struct ConsumerBuilder {
    config: ConsumerConfig,
}

impl ConsumerBuilder {
    /// Sets `bootstrap.servers`.
    pub fn bootstrap_servers(self, servers: impl Into<String>) -> Self {
        self.property("bootstrap.servers", servers)
    }
    /// Sets the consumer group.
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.config.group_id = group.into();
        self
    }
    /// Sets the topics to subscribe to.
    pub fn topics(mut self, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.topics = topics.into_iter().map(Into::into).collect();
        self
    }
    /// Sets a librdkafka consumer property.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config
            .properties
            .insert(key.into(), PropertyValue(value.into()));
        self
    }
    /// Sets the service id written into dead-letter provenance headers.
    pub fn service_id(mut self, id: impl Into<String>) -> Self {
        self.config.service_id = id.into();
        self
    }
    /// Sets how many records may be served at once over all partitions.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n;
        self
    }
    /// Sets how many records a key-ordered lane takes ahead of those it
    /// serves.
    pub fn buffer_per_partition(mut self, n: usize) -> Self {
        self.config.buffer_per_partition = n;
        self
    }
    /// Sets how long a partition's lane may be busy without finishing a
    /// record before the partition is paused.
    pub fn pause_after(mut self, after: Duration) -> Self {
        self.config.pause_after = after;
        self
    }
    /// Sets the most records a batch holds
    /// ([`Consumer::serve_batches`]).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.config.batch.max_batch = n;
        self
    }
    /// Sets how long a batch waits for more records once it has one
    /// ([`Consumer::serve_batches`]).
    pub fn max_batch_delay(mut self, delay: Duration) -> Self {
        self.config.batch.max_delay = delay;
        self
    }
    /// Sets the ordering mode.
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.config.ordering = ordering;
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }
    /// Sets the dead-letter policy.
    pub fn dead_letter(mut self, policy: DeadLetterPolicy) -> Self {
        self.config.dead_letter = policy;
        self
    }
    /// Sets the interval of asynchronous offset commits.
    pub fn commit_interval(mut self, every: Duration) -> Self {
        self.config.commit_interval = every;
        self
    }
    /// Sets how long in-flight records may take to finish on revocation and
    /// shutdown.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }
    /// Validates the configuration and builds the consumer.
    pub fn build(self) -> Result<Consumer, ConfigError> {
        Consumer::from_config(self.config)
    }
}

/// Why a consumer could not start or had to stop.
#[derive(Debug)]
pub struct ConsumerError {
    message: String,
    source: Option<BoxError>,
}

impl ConsumerError {
    pub(crate) fn new(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ConsumerError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn message(message: impl Into<String>) -> Self {
        ConsumerError {
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn config(message: String) -> Self {
        ConsumerError::message(format!(
            "invalid configuration: `context.extra_headers`: {message}"
        ))
    }
}

impl ConsumerError {
    /// The cluster's refusal (credentials, TLS) that stopped the consumer,
    /// if that is why it stopped.
    pub fn refused(&self) -> Option<&ClusterRefused> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as _);
        while let Some(e) = cause {
            if let Some(r) = e.downcast_ref::<ClusterRefused>() {
                return Some(r);
            }
            cause = e.source();
        }
        None
    }
}

impl fmt::Display for ConsumerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{}: {s}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConsumerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<ConfigError> for ConsumerError {
    /// The configuration error stays the source (origin, key and message
    /// reachable through `source()`), not a copy of its text.
    fn from(e: ConfigError) -> Self {
        ConsumerError::new("cannot start the consumer", e)
    }
}

impl Consumer {
    /// Starts building a consumer in code.
    pub fn builder() -> ConsumerBuilder {
        ConsumerBuilder {
            config: ConsumerConfig::new(String::new(), Vec::<String>::new()),
        }
    }

    /// A consumer for a configuration (validated here).
    pub fn from_config(config: ConsumerConfig) -> Result<Consumer, ConfigError> {
        config.validate()?;
        Ok(Consumer {
            config,
            stats: Arc::new(RuntimeStats::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Live counters, readable while [`Consumer::serve`] runs.
    pub fn stats(&self) -> Arc<RuntimeStats> {
        self.stats.clone()
    }

    /// Serves every record of the subscribed topics to `service` until
    /// `shutdown` completes, then drains, commits and closes.
    ///
    /// `service` may be any [`RecordService`]: a `Clone` service over
    /// `http::Request<RecordBody>` answering `http::Response<B>`, an
    /// `axum::Router` included. Each partition gets a clone; `poll_ready` is
    /// awaited before every call.
    ///
    /// Returns an error if the client cannot be created (the message names
    /// the bad librdkafka property), when the cluster refuses the
    /// consumer's or its dead-letter producer's credentials or TLS
    /// handshake ([`ConsumerError::refused`], within about a second of
    /// librdkafka's first attempt: see [`ClusterRefused`](super::ClusterRefused)), on a
    /// fatal client error, or when the runtime itself fails on a partition
    /// (a panic below the service that even dead-lettering the record could
    /// not get past).
    pub async fn serve<S, F>(self, service: S, shutdown: F) -> Result<(), ConsumerError>
    where
        S: RecordService,
        F: Future<Output = ()> + Send,
    {
        self.run(move || Records(service.clone()), shutdown, None)
            .await
    }

    /// Serves the subscribed topics' records to `service` in batches of
    /// one partition's records until `shutdown` completes, then drains,
    /// commits and closes — for handlers that write in bulk.
    ///
    /// Each call gets an `http::Request<`[`RecordBatch`](super::RecordBatch)`>` of up to
    /// [`BatchSettings::max_batch`] records of one partition, in offset
    /// order: those fetched already, and those that arrive within
    /// [`BatchSettings::max_delay`] of the first. Each record in it is the
    /// request [`Consumer::serve`] would build. A partition's batches are
    /// served one after the other (partitions in parallel, up to
    /// `max_in_flight` batches), so `ordering` must be `partition`.
    ///
    /// What the answer means, record by record, and how failed records
    /// are retried and dead-lettered: see [`BatchOutcome`](super::BatchOutcome). The offsets of
    /// a batch are committed once all its records are finished.
    ///
    /// ```no_run
    /// use std::convert::Infallible;
    /// use http::{Response, StatusCode};
    /// use kafka_tower::runtime::{BatchOutcome, Consumer, RecordBatch};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let consumer = Consumer::builder()
    ///     .bootstrap_servers("localhost:9092")
    ///     .group_id("order-writer")
    ///     .topics(["orders"])
    ///     .max_batch(500)
    ///     .build()?;
    /// let writer = tower::service_fn(|req: http::Request<RecordBatch>| async move {
    ///     let mut outcome = BatchOutcome::new();
    ///     for record in req.body() {
    ///         let offset = record.extensions().get::<kafka_tower::RecordMeta>().unwrap().offset();
    ///         if record.body().payload().is_none() {
    ///             outcome.fail(offset, StatusCode::UNPROCESSABLE_ENTITY, "a tombstone is not an order");
    ///         }
    ///     }
    ///     // One INSERT for the others here.
    ///     Ok::<_, Infallible>(outcome.into_response::<String>())
    /// });
    /// consumer.serve_batches(writer, async { let _ = tokio::signal::ctrl_c().await; }).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Fails at once, before connecting, when `ordering` is `key`; otherwise
    /// as [`Consumer::serve`].
    pub async fn serve_batches<S, F>(self, service: S, shutdown: F) -> Result<(), ConsumerError>
    where
        S: BatchService,
        F: Future<Output = ()> + Send,
    {
        if self.config.ordering == Ordering::Key {
            return Err(ConsumerError::message(
                "invalid configuration: `ordering`: batches are served in partition order; \
                 `ordering: key` cannot be used with serve_batches",
            ));
        }
        let BatchSettings {
            max_batch,
            max_delay,
        } = self.config.batch;
        self.run(
            move || Batches {
                service: service.clone(),
                max_batch,
                max_delay,
            },
            shutdown,
            None,
        )
        .await
    }

    /// Runs the consumer: each assigned partition gets a lane doing the
    /// work `work` makes. Offsets are committed by the poll thread, or,
    /// with `transactions`, in transactions (exactly-once mode).
    pub(super) async fn run<W, F>(
        self,
        work: impl Fn() -> W + Send + 'static,
        shutdown: F,
        transactions: Option<Transactions>,
    ) -> Result<(), ConsumerError>
    where
        W: LaneWork,
        F: Future<Output = ()> + Send,
    {
        let config = self.config;
        let stats = self.stats;
        let handle = tokio::runtime::Handle::current();

        let access = Arc::new(AccessWatch::new([
            &config.properties,
            &config.dead_letter.producer_properties,
        ]));
        // In exactly-once mode dead letters go into the transaction.
        let dead_letter = if config.dead_letter.enabled && transactions.is_none() {
            Some(
                DeadLetterWriter::new(&config, access.clone())
                    .map_err(|e| {
                        let mut all = config.properties.clone();
                        all.extend(config.dead_letter.producer_properties.clone());
                        ConsumerError::message(format!(
                            "cannot create the dead-letter producer (check `dead_letter.producer_properties` and the connection `properties`): {}",
                            all.redact(&e.to_string())
                        ))
                    })?,
            )
        } else {
            None
        };
        let mut policy = AttemptPolicy::from_config(&config, stats.clone())?;
        if transactions.is_some() {
            // A held record would keep its transaction open past
            // `transaction.timeout.ms`: this mode dead-letters after the
            // attempts.
            policy.retry.hold = Duration::ZERO;
        }
        let shared = Arc::new(LaneShared {
            policy,
            ordering: config.ordering,
            lookahead: match config.ordering {
                Ordering::Partition => 1,
                Ordering::Key => config.buffer_per_partition,
            },
            in_flight: InFlightLimit::new(config.max_in_flight),
            dead_letter,
            exits: Bell::default(),
        });
        let lane_shared = shared.clone();
        let spawn_lane: SpawnLane = Box::new(move |tp, queue, native, ctl| {
            let wake = Arc::new(Notify::new());
            let mut queue = queue;
            let notify = wake.clone();
            queue.set_nonempty_callback(move || notify.notify_one());
            let source = PartitionFeed {
                popped: VecDeque::new(),
                native,
                _queue: queue,
                ctl: ctl.clone(),
                // The lane's own copy: each record holds it, and a
                // reference count that only this lane's thread touches
                // stays in its cache.
                topic: Arc::from(&*tp.0),
            };
            handle.spawn(run_lane(lane_shared.clone(), work(), tp, source, wake, ctl))
        });

        let state = Mutex::new(PollState {
            partitions: HashMap::new(),
            topics: HashMap::new(),
            spawn_lane,
            shared,
            drain_timeout: config.drain_timeout,
            pause_after: config.pause_after,
            stats: stats.clone(),
            fatal: None,
            transactions,
        });
        let context = RuntimeContext {
            state,
            consumer: OnceLock::new(),
            stats: stats.clone(),
            commit_failed: AtomicBool::new(false),
            access,
        };

        // Each partition has its own queue: librdkafka's prefetch limits
        // apply per partition, so the defaults (100,000 records, 64 MiB)
        // would allow that much for every partition (about 1 GiB of RSS
        // for 16 partitions in the end-to-end bench). 1 MiB per partition
        // (2 MiB before) halved the bench's peak RSS (143 -> 66 MiB, medians
        // of four alternating runs) at the same rate. With these, a
        // partition that reached its limit is fetched again after 1 ms
        // (a local check, no request), not librdkafka's default 1 s, which
        // starved the lanes (112k records/s against 167k with 10 ms, same
        // limits otherwise).
        // And a fetch waits at most 25 ms for data instead of librdkafka's
        // 500 ms. A fetch in flight for partitions that are caught up
        // waits that long on the broker, and a partition whose queue
        // drained meanwhile is not fetched before it returns: 500 ms capped
        // the end-to-end bench at ~145k records/s with the consumer process
        // half idle; 100 ms gave ~540k and 25 ms (with the 1 ms backoff)
        // ~620k in the same runs (the raw loop, on one queue, is not
        // affected). A caught-up consumer sends a fetch every 25 ms per
        // broker instead of every 500 ms.
        let mut defaults = vec![
            ("queued.min.messages", "5000"),
            ("queued.max.messages.kbytes", "1024"),
            ("fetch.queue.backoff.ms", "1"),
            ("fetch.wait.max.ms", "25"),
        ];
        if context.state().transactions.is_some() {
            defaults.push(("isolation.level", "read_committed"));
        }
        let consumer = Arc::new(client::create(&config, &defaults, context)?);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        client::subscribe(&consumer, &config)?;
        let commit_interval = config.commit_interval;
        client::run_poll_thread("kafka-tower-poll", shutdown, move |stop| {
            poll_loop(&consumer, &stop, commit_interval)
        })
        .await
    }
}

type SpawnLane = Box<
    dyn FnMut(
            TopicPartition,
            PartitionQueue<RuntimeContext>,
            QueueRef,
            Arc<LaneControl>,
        ) -> tokio::task::JoinHandle<()>
        + Send,
>;

/// A partition's own librdkafka queue, drained by its lane in batches of
/// up to [`PartitionFeed::BATCH`] messages: one call into librdkafka per
/// batch. Messages taken and not served yet stay librdkafka's (they are
/// not copied until served); a lane that stops drops them, and their
/// offsets, never committed, are delivered again.
struct PartitionFeed {
    // Field order is drop order: the messages and the queue reference go
    // back to librdkafka before `_queue`, which holds the consumer (the
    // last reference may be this one).
    popped: VecDeque<PoppedMessage>,
    native: QueueRef,
    /// rdkafka's handle of the split queue: keeps the non-empty callback
    /// registered and the consumer alive.
    _queue: PartitionQueue<RuntimeContext>,
    topic: Arc<str>,
    /// Where the lane tells the poll thread how far it fetched.
    ctl: Arc<LaneControl>,
}

impl PartitionFeed {
    /// Messages taken from librdkafka at once. Small enough that a lane
    /// holds little beyond librdkafka's own per-partition limits, large
    /// enough that the call's cost (a lock, two clock reads) is spread.
    const BATCH: usize = 32;
}

impl RecordSource for PartitionFeed {
    fn next_ready(&mut self) -> Option<ConsumedRecord> {
        loop {
            if self.popped.is_empty() {
                if self.native.pop_batch(&mut self.popped, Self::BATCH) == 0 {
                    return None;
                }
                // Taken from librdkafka now (served later, in order): a
                // resume goes on after the last of them.
                if let Some(first) = self.popped.front() {
                    self.ctl.took(first.offset());
                }
                for msg in &self.popped {
                    self.ctl.fetched_to(match msg.error() {
                        None => msg.offset() + 1,
                        // Taken in a batch, an error message moves
                        // librdkafka's application position one past the
                        // offset it carries, the next record's (a single
                        // poll does not): a pause would then resume past
                        // that record. Resuming seeks to the position kept
                        // here instead.
                        Some(_) => msg.offset(),
                    });
                }
            }
            let msg = self.popped.pop_front()?;
            match msg.error() {
                None => return Some(msg.to_record(self.topic.clone())),
                Some(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "partition queue error");
                }
            }
        }
    }
}

pub(super) struct PartitionState {
    pub(super) ctl: Arc<LaneControl>,
    lane: tokio::task::JoinHandle<()>,
    /// The commit point last sent to the broker (in exactly-once mode: last
    /// committed in a transaction).
    pub(super) committed: Option<i64>,
    paused: bool,
    /// The lane's progress when last looked at, and since when it has been
    /// busy without progress.
    seen_progress: u64,
    stalled_since: Option<Instant>,
}

pub(super) struct PollState {
    pub(super) partitions: HashMap<TopicPartition, PartitionState>,
    topics: HashMap<String, Arc<str>>,
    spawn_lane: SpawnLane,
    shared: Arc<LaneShared>,
    drain_timeout: Duration,
    pause_after: Duration,
    pub(super) stats: Arc<RuntimeStats>,
    /// Set by a rebalance callback that cannot go on.
    fatal: Option<ConsumerError>,
    /// The committer of exactly-once mode; `None` commits offsets.
    transactions: Option<Transactions>,
}

pub(super) struct RuntimeContext {
    // Only the poll thread (and the callbacks it runs) touches the state.
    state: Mutex<PollState>,
    /// The consumer itself, for splitting partition queues in the
    /// rebalance callback.
    consumer: OnceLock<Weak<BaseConsumer<RuntimeContext>>>,
    stats: Arc<RuntimeStats>,
    commit_failed: AtomicBool,
    /// Refusals by the cluster, seen by the consumer or its dead-letter
    /// producer.
    access: Arc<AccessWatch>,
}

impl RuntimeContext {
    fn state(&self) -> MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for RuntimeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.access.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.access.error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = Vec::new();
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // -1 is librdkafka's "internal" partition; a lag of -1 means
                // not known yet.
                if *id >= 0 && p.consumer_lag >= 0 {
                    lag.push(super::stats::PartitionLag {
                        topic: name.clone(),
                        partition: *id,
                        lag: p.consumer_lag,
                    });
                }
            }
        }
        lag.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        self.stats.set_lag(lag);
    }
}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut st = self.state();
                let mut revoked: Vec<TopicPartition> = Vec::new();
                for e in tpl.elements() {
                    let tp = (st.intern(e.topic()), e.partition());
                    if st.partitions.contains_key(&tp) {
                        revoked.push(tp);
                    }
                }
                if revoked.is_empty() {
                    return;
                }
                tracing::info!(
                    partitions = revoked.len(),
                    "partitions revoked: finishing in-flight records"
                );
                if st.transactions.is_some() {
                    if let Err(e) = st.revoke_transactional(consumer, &revoked) {
                        st.fatal = Some(e);
                    }
                    return;
                }
                st.drain(&revoked);
                if consumer.assignment_lost() {
                    tracing::warn!(
                        "assignment lost: finished offsets of revoked partitions cannot be committed"
                    );
                } else {
                    st.commit(consumer, CommitMode::Sync, Some(&revoked), true);
                }
                for tp in &revoked {
                    st.partitions.remove(tp);
                }
            }
            Rebalance::Assign(tpl) => {
                // Split each new partition's queue before librdkafka starts
                // fetching it, so that none of its records reaches the
                // consumer queue: its lane drains it.
                let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
                    return;
                };
                let mut st = self.state();
                let mut new: Vec<TopicPartition> = Vec::new();
                for e in tpl.elements() {
                    let tp = (st.intern(e.topic()), e.partition());
                    if !st.partitions.contains_key(&tp) {
                        new.push(tp);
                    }
                }
                if let Some(mut tx) = st.transactions.take() {
                    // Between transactions, with no record served: a restore
                    // may take longer than a transaction may stay open.
                    let names: Vec<(String, i32)> =
                        new.iter().map(|(t, p)| (t.to_string(), *p)).collect();
                    let ended =
                        tx.round(&mut st, &consumer, &mut [], true, |tx| tx.assigned(&names));
                    st.transactions = Some(tx);
                    if let Err(e) = ended {
                        st.fatal = Some(e);
                    }
                }
                let count = new.len();
                for tp in new {
                    if let Err(e) = st.open_partition(&consumer, tp) {
                        st.fatal = Some(e);
                    }
                }
                tracing::info!(partitions = count, "partitions assigned");
            }
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // A partition paused before an earlier revocation must not
                // come back paused.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::debug!(error = %e, "resume of newly assigned partitions");
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.commit_failed.store(true, Relaxed);
                tracing::warn!(error = %e, partitions = offsets.count(), "offset commit failed; will commit again");
            }
        }
    }
}

impl PollState {
    fn intern(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.topics.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = topic.into();
        self.topics.insert(topic.to_owned(), t.clone());
        t
    }

    /// Splits the queue of `tp` off the consumer's and gives the
    /// partition a lane that drains it.
    fn open_partition(
        &mut self,
        consumer: &Arc<BaseConsumer<RuntimeContext>>,
        tp: TopicPartition,
    ) -> Result<(), ConsumerError> {
        let queue = consumer.split_partition_queue(&tp.0, tp.1);
        // SAFETY: the client is live (`consumer` holds it), and the
        // reference is kept with `queue`, which holds the client until
        // after the reference is dropped (see `PartitionFeed`).
        let native = unsafe { QueueRef::partition(consumer.client().native_ptr(), &tp.0, tp.1) };
        match queue.zip(native) {
            Some((queue, native)) => {
                self.add_partition(tp, queue, native);
                Ok(())
            }
            None => Err(ConsumerError::message(format!(
                "cannot open the queue of {}[{}]",
                tp.0, tp.1
            ))),
        }
    }

    /// Gives `tp`, whose lane exited, a new lane (exactly-once mode, after
    /// an abort rewound the partition); what was committed and whether the
    /// partition is paused carry over.
    pub(super) fn reopen_partition(
        &mut self,
        consumer: &BaseConsumer<RuntimeContext>,
        tp: TopicPartition,
    ) -> Result<(), ConsumerError> {
        let consumer = consumer
            .context()
            .consumer
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ConsumerError::message("the consumer is gone"))?;
        let old = self.partitions.remove(&tp);
        self.open_partition(&consumer, tp.clone())?;
        if let (Some(old), Some(new)) = (old, self.partitions.get_mut(&tp)) {
            new.committed = old.committed;
            new.paused = old.paused;
        }
        Ok(())
    }

    /// Removes `tps`, whose lanes exited, keeping what their last
    /// transaction still needs of them.
    fn leave(&mut self, tps: &[TopicPartition]) -> Vec<Leaving> {
        tps.iter()
            .filter_map(|tp| {
                self.partitions.remove(tp).map(|ps| Leaving {
                    tp: tp.clone(),
                    ctl: ps.ctl,
                    committed: ps.committed,
                })
            })
            .collect()
    }

    /// Exactly-once mode: stops the lanes of `revoked` (their in-flight
    /// records may finish), ends the open transaction with their offsets,
    /// and tells `on_partitions_revoked`.
    fn revoke_transactional(
        &mut self,
        consumer: &BaseConsumer<RuntimeContext>,
        revoked: &[TopicPartition],
    ) -> Result<(), ConsumerError> {
        self.drain(revoked);
        let mut leaving = self.leave(revoked);
        let Some(mut tx) = self.transactions.take() else {
            return Ok(());
        };
        let names: Vec<(String, i32)> = revoked.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let ended = tx.round(self, consumer, &mut leaving, true, |tx| tx.revoked(&names));
        self.transactions = Some(tx);
        ended.map(drop)
    }

    fn add_partition(
        &mut self,
        tp: TopicPartition,
        queue: PartitionQueue<RuntimeContext>,
        native: QueueRef,
    ) {
        let ctl = Arc::new(LaneControl::new());
        let lane = (self.spawn_lane)(tp.clone(), queue, native, ctl.clone());
        self.partitions.insert(
            tp,
            PartitionState {
                ctl,
                lane,
                committed: None,
                paused: false,
                seen_progress: 0,
                stalled_since: None,
            },
        );
    }

    /// Pauses a partition whose lane has been busy without finishing a
    /// record for `pause_after` (librdkafka then drops what it prefetched
    /// for it), and resumes it once the lane moves again. A lane that keeps
    /// up is never paused. Returns an error if a lane stopped on its own.
    fn watch_lanes(
        &mut self,
        consumer: &BaseConsumer<RuntimeContext>,
    ) -> Result<(), ConsumerError> {
        let now = Instant::now();
        for (tp, ps) in self.partitions.iter_mut() {
            if ps.ctl.has_exited() && !ps.ctl.cancel.is_cancelled() {
                let why = ps
                    .ctl
                    .failure()
                    .unwrap_or_else(|| "the lane ended unexpectedly".to_owned());
                return Err(ConsumerError::message(format!(
                    "the runtime failed on {}[{}]: {why}",
                    tp.0, tp.1
                )));
            }
            let (progress, busy) = ps.ctl.progress();
            let stalled = busy && progress == ps.seen_progress;
            ps.seen_progress = progress;
            if !stalled {
                ps.stalled_since = None;
                if ps.paused && resume_at(consumer, tp, ps.ctl.fetch_position(), &self.stats) {
                    ps.paused = false;
                }
                continue;
            }
            let since = *ps.stalled_since.get_or_insert(now);
            if !ps.paused && now.duration_since(since) >= self.pause_after {
                set_paused(consumer, tp, true, &self.stats);
                ps.paused = true;
            }
        }
        Ok(())
    }

    /// Stops the lanes of `tps` from starting records, waits up to the drain
    /// timeout for their in-flight records, and aborts what is left.
    fn drain(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            if let Some(ps) = self.partitions.get_mut(tp) {
                if ps.paused {
                    ps.paused = false;
                    self.stats.paused_partitions.fetch_sub(1, Relaxed);
                }
            }
        }
        self.stop_lanes(tps);
    }

    /// Cancels the lanes of `tps` and waits up to the drain timeout for
    /// them to exit (their in-flight records may finish), then aborts what
    /// is left.
    pub(super) fn stop_lanes(&mut self, tps: &[TopicPartition]) {
        let mut lanes = Vec::with_capacity(tps.len());
        for tp in tps {
            if let Some(ps) = self.partitions.get(tp) {
                ps.ctl.cancel.cancel();
                lanes.push(ps.ctl.clone());
            }
        }
        let all_exited = || lanes.iter().all(|c| c.has_exited());
        if self.shared.exits.wait_until(self.drain_timeout, all_exited) {
            return;
        }
        let pending = lanes.iter().filter(|c| !c.has_exited()).count();
        tracing::warn!(
            lanes = pending,
            "drain timeout: abandoning in-flight records (they will be redelivered)"
        );
        for tp in tps {
            if let Some(ps) = self.partitions.get(tp) {
                if !ps.ctl.has_exited() {
                    ps.lane.abort();
                }
            }
        }
        if let Some(tx) = &self.transactions {
            // An aborted lane may have queued part of its record's outputs
            // in the transaction without finishing the record.
            tx.abandoned();
        }
        // An aborted lane exits when the runtime drops it; wait for that so
        // that no lane outlives its partition's assignment.
        self.shared
            .exits
            .wait_until(Duration::from_secs(5), all_exited);
    }

    /// Commits the finished prefix of `only` (or of every partition); with
    /// `force`, also what was committed before.
    fn commit(
        &mut self,
        consumer: &BaseConsumer<RuntimeContext>,
        mode: CommitMode,
        only: Option<&[TopicPartition]>,
        force: bool,
    ) {
        let mut tpl = TopicPartitionList::new();
        for (tp, ps) in self.partitions.iter_mut() {
            if only.is_some_and(|o| !o.contains(tp)) {
                continue;
            }
            let Some(point) = ps.ctl.commit_point() else {
                continue;
            };
            if !force && ps.committed == Some(point) {
                continue;
            }
            ps.committed = Some(point);
            if let Err(e) = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(point)) {
                tracing::warn!(error = %e, "cannot add offset to commit");
            }
        }
        if tpl.count() == 0 {
            return;
        }
        self.stats.commits.fetch_add(1, Relaxed);
        if let Err(e) = consumer.commit(&tpl, mode) {
            tracing::warn!(error = %e, "offset commit failed");
            if matches!(mode, CommitMode::Async) {
                consumer.context().commit_failed.store(true, Relaxed);
            }
        }
    }
}

/// Resumes a paused partition from `position` — one past the last record
/// its lane took from librdkafka — rather than from where librdkafka thinks
/// the application got to (see `PartitionFeed::next_ready`). Records the
/// lane took before the pause are still its own; the ones librdkafka had
/// prefetched were dropped by the pause and are fetched again from there.
/// `false` (the partition stays paused, to be resumed on a later round)
/// when the seek fails: resuming from librdkafka's position could skip a
/// record.
fn resume_at(
    consumer: &BaseConsumer<RuntimeContext>,
    tp: &TopicPartition,
    position: Option<i64>,
    stats: &RuntimeStats,
) -> bool {
    if let Some(at) = position {
        // Seeking a paused partition sets where it fetches from once
        // resumed (and forgets librdkafka's application position).
        if let Err(e) = consumer.seek(&tp.0, tp.1, Offset::Offset(at), Duration::from_secs(5)) {
            tracing::warn!(
                error = %e,
                "cannot seek {}[{}] to {at} before resuming it: it stays paused for now",
                tp.0, tp.1
            );
            return false;
        }
    }
    set_paused(consumer, tp, false, stats);
    true
}

fn set_paused(
    consumer: &BaseConsumer<RuntimeContext>,
    tp: &TopicPartition,
    pause: bool,
    stats: &RuntimeStats,
) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    let done = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match done {
        Ok(()) if pause => {
            tracing::debug!(topic = %tp.0, partition = tp.1, "lane stalled: partition paused");
            stats.paused_partitions.fetch_add(1, Relaxed);
            stats.pauses.fetch_add(1, Relaxed);
        }
        Ok(()) => {
            stats.paused_partitions.fetch_sub(1, Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, pause, "cannot pause or resume {}[{}]", tp.0, tp.1),
    }
}

fn poll_loop(
    consumer: &BaseConsumer<RuntimeContext>,
    stop: &Arc<AtomicBool>,
    commit_interval: Duration,
) -> Result<(), ConsumerError> {
    let context = consumer.context();
    let (poll_timeout, transactions) = match context.state().transactions.as_mut() {
        Some(tx) => {
            tx.set_stop(stop.clone());
            (tx.poll_timeout(), Some(tx.shared()))
        }
        None => (Duration::from_millis(50), None),
    };
    let mut last_commit = Instant::now();
    let mut result = Ok(());
    while !stop.load(Relaxed) {
        {
            let mut st = context.state();
            if let Some(e) = st.fatal.take() {
                result = Err(e);
                break;
            }
            if let Some(refused) = context.access.refused() {
                result = Err(ConsumerError::new("cannot consume", refused.clone()));
                break;
            }
            if let Err(e) = st.watch_lanes(consumer) {
                tracing::error!(error = %e, "stopping");
                result = Err(e);
                break;
            }
            if let Some(mut tx) = st.transactions.take() {
                let finished = finished_records(&st);
                let ended = if tx.due(finished) {
                    tx.round(&mut st, consumer, &mut [], true, |_| {})
                } else {
                    Ok(true)
                };
                st.transactions = Some(tx);
                match ended {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "stopping");
                        result = Err(e);
                        break;
                    }
                }
            } else if last_commit.elapsed() >= commit_interval {
                let force = context.commit_failed.swap(false, Relaxed);
                st.commit(consumer, CommitMode::Async, None, force);
                last_commit = Instant::now();
            }
        }
        // Records go to the partitions' own queues; this serves rebalances,
        // commit results and errors.
        // In exactly-once mode the thread waits for a lane asking for the
        // transaction to end rather than in librdkafka (events are served
        // at least every `poll_timeout`).
        let event = match &transactions {
            Some(tx) => consumer.poll(Duration::ZERO).or_else(|| {
                tx.wait_for_ring(poll_timeout);
                None
            }),
            None => consumer.poll(poll_timeout),
        };
        match event {
            None => {}
            Some(Ok(msg)) => {
                // Every assigned partition's queue is split off before it is
                // fetched; a record here would bypass its lane.
                let e = ConsumerError::message(format!(
                    "a record of {}[{}]@{} reached the consumer queue instead of its partition's lane",
                    msg.topic(),
                    msg.partition(),
                    msg.offset()
                ));
                tracing::error!(error = %e, "stopping");
                result = Err(e);
                break;
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                tracing::error!(error = %code, "fatal consumer error: stopping");
                result = Err(ConsumerError::new(
                    "fatal consumer error",
                    KafkaError::MessageConsumptionFatal(code),
                ));
                break;
            }
            // Reported (and watched for refusals) by the error callback.
            Some(Err(e)) => tracing::debug!(error = %e, "consumer error event"),
        }
    }
    // Shutdown: stop the lanes, let in-flight records finish, commit.
    let mut st = context.state();
    let all: Vec<TopicPartition> = st.partitions.keys().cloned().collect();
    st.drain(&all);
    if let Some(mut tx) = st.transactions.take() {
        let mut leaving = st.leave(&all);
        // The partitions leave with the consumer.
        let names: Vec<(String, i32)> = all.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        if let Err(e) = tx.round(&mut st, consumer, &mut leaving, false, |tx| {
            tx.revoked(&names)
        }) {
            tracing::error!(error = %e, "the last transaction failed");
            if result.is_ok() {
                result = Err(e);
            }
        }
    } else {
        st.commit(consumer, CommitMode::Sync, None, true);
    }
    st.partitions.clear();
    tracing::info!("consumer stopped; finished offsets committed");
    result
}
