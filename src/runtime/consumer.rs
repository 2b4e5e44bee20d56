//! The consumer runtime: [`Consumer`] and its builder.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::config::{
    ConfigError, ConsumerConfig, DeadLetterPolicy, Ordering, PropertyValue, RetryPolicy,
};
use super::dead_letter::DeadLetterWriter;
use super::lane::{run_lane, LaneEvent, LaneShared, TopicPartition};
use super::native::to_consumed_record;
use super::stats::RuntimeStats;
use crate::offsets::OffsetTracker;
use crate::{BoxError, ConsumedRecord, RecordBody};

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
///   `poll_ready` succeeded. A partition whose buffer is full is paused
///   until it drains, so the records held in memory are at most
///   `partitions × (buffer_per_partition + lookahead + 1)` (lookahead is 1
///   in partition mode and `buffer_per_partition` in key mode) plus the
///   `max_in_flight` being served, plus what librdkafka prefetches
///   (`queued.max.messages.kbytes`).
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
    /// Sets how many fetched records a partition may buffer before it is
    /// paused.
    pub fn buffer_per_partition(mut self, n: usize) -> Self {
        self.config.buffer_per_partition = n;
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
    fn from(e: ConfigError) -> Self {
        ConsumerError {
            message: e.to_string(),
            source: None,
        }
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
    /// `service` may be any `Clone` service over `http::Request<RecordBody>`
    /// answering `http::Response<B>`, an `axum::Router` included. Each
    /// partition gets a clone; `poll_ready` is awaited before every call.
    ///
    /// Returns an error if the client cannot be created (the message names
    /// the bad librdkafka property) or on a fatal client error.
    pub async fn serve<S, ResBody, F>(self, service: S, shutdown: F) -> Result<(), ConsumerError>
    where
        S: Service<Request<RecordBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ResBody: http_body::Body + Send + 'static,
        ResBody::Data: Send,
        ResBody::Error: Into<BoxError>,
        F: Future<Output = ()> + Send,
    {
        let config = self.config;
        let stats = self.stats;
        let handle = tokio::runtime::Handle::current();

        let dead_letter = if config.dead_letter.enabled {
            Some(
                DeadLetterWriter::new(&config)
                    .map_err(|e| ConsumerError::new("cannot create the dead-letter producer", e))?,
            )
        } else {
            None
        };
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(LaneShared {
            group: config.group_id.as_str().into(),
            retry: config.retry.clone(),
            ordering: config.ordering,
            lookahead: match config.ordering {
                Ordering::Partition => 1,
                Ordering::Key => config.buffer_per_partition,
            },
            max_error_len: config.dead_letter.max_error_len,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            events: events_tx,
            dead_letter,
            stats: stats.clone(),
            context: if config.context.capture {
                Some(
                    config
                        .context
                        .to_context_config()
                        .map_err(|m| ConsumerError {
                            message: format!("invalid configuration: `context.extra_headers`: {m}"),
                            source: None,
                        })?,
                )
            } else {
                None
            },
        });
        let spawn_lane: SpawnLane = Box::new(move |tp, generation, rx, cancel| {
            handle.spawn(run_lane(
                shared.clone(),
                service.clone(),
                tp,
                generation,
                rx,
                cancel,
            ))
        });

        let state = Arc::new(Mutex::new(PollState {
            partitions: HashMap::new(),
            topics: HashMap::new(),
            events: events_rx,
            spawn_lane,
            buffer: config.buffer_per_partition,
            drain_timeout: config.drain_timeout,
            generation: 0,
            needs_flush: false,
            stats: stats.clone(),
        }));
        let context = RuntimeContext {
            state: state.clone(),
            stats: stats.clone(),
            commit_failed: Arc::new(AtomicBool::new(false)),
            commits: Arc::new(AtomicU64::new(0)),
        };

        let mut cc = ClientConfig::new();
        for (k, v) in &config.properties {
            cc.set(k, &v.0);
        }
        cc.set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer<RuntimeContext> =
            cc.create_with_context(context).map_err(|e| {
                ConsumerError::new("cannot create the Kafka consumer (check `properties`)", e)
            })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ConsumerError::new("cannot subscribe", e))?;

        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let thread_stop = stop.clone();
        let commit_interval = config.commit_interval;
        std::thread::Builder::new()
            .name("kafka-tower-poll".into())
            .spawn(move || {
                let result = poll_loop(&consumer, &state, &thread_stop, commit_interval);
                drop(consumer);
                let _ = done_tx.send(result);
            })
            .map_err(|e| ConsumerError::new("cannot start the poll thread", e))?;

        let mut done_rx = done_rx;
        tokio::select! {
            () = shutdown => {
                tracing::info!("shutdown requested: draining in-flight records");
                stop.store(true, Relaxed);
                done_rx.await.unwrap_or_else(|_| Err(ConsumerError { message: "the poll thread panicked".into(), source: None }))
            }
            result = &mut done_rx => {
                result.unwrap_or_else(|_| Err(ConsumerError { message: "the poll thread panicked".into(), source: None }))
            }
        }
    }
}

type SpawnLane = Box<
    dyn FnMut(
            TopicPartition,
            u64,
            mpsc::Receiver<ConsumedRecord>,
            CancellationToken,
        ) -> tokio::task::JoinHandle<()>
        + Send,
>;

struct PartitionState {
    tracker: OffsetTracker,
    tx: Option<mpsc::Sender<ConsumedRecord>>,
    stash: VecDeque<ConsumedRecord>,
    paused: bool,
    generation: u64,
    cancel: CancellationToken,
    lane: tokio::task::JoinHandle<()>,
    exited: bool,
}

struct PollState {
    partitions: HashMap<TopicPartition, PartitionState>,
    topics: HashMap<String, Arc<str>>,
    events: std::sync::mpsc::Receiver<LaneEvent>,
    spawn_lane: SpawnLane,
    buffer: usize,
    drain_timeout: Duration,
    generation: u64,
    stats: Arc<RuntimeStats>,
    // Some partition has stashed records or is paused: flush_stashes has
    // work. Saves walking every partition for every fetched record.
    needs_flush: bool,
}

struct RuntimeContext {
    state: Arc<Mutex<PollState>>,
    stats: Arc<RuntimeStats>,
    commit_failed: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
}

fn lock(state: &Mutex<PollState>) -> MutexGuard<'_, PollState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientContext for RuntimeContext {
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
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut st = lock(&self.state);
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
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut st = lock(&self.state);
                let mut count = 0;
                for e in tpl.elements() {
                    let tp = (st.intern(e.topic()), e.partition());
                    if !st.partitions.contains_key(&tp) {
                        st.add_partition(tp);
                        count += 1;
                    }
                }
                // A partition paused before an earlier revocation must not
                // come back paused.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::debug!(error = %e, "resume of newly assigned partitions");
                }
                tracing::info!(partitions = count, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                self.commits.fetch_add(1, Relaxed);
            }
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

    fn add_partition(&mut self, tp: TopicPartition) {
        self.generation += 1;
        let (tx, rx) = mpsc::channel(self.buffer);
        let cancel = CancellationToken::new();
        let lane = (self.spawn_lane)(tp.clone(), self.generation, rx, cancel.clone());
        self.partitions.insert(
            tp,
            PartitionState {
                tracker: OffsetTracker::new(),
                tx: Some(tx),
                stash: VecDeque::new(),
                paused: false,
                generation: self.generation,
                cancel,
                lane,
                exited: false,
            },
        );
    }

    fn handle_event(&mut self, event: LaneEvent) {
        match event {
            LaneEvent::Finished {
                tp,
                generation,
                offset,
            } => {
                if let Some(ps) = self.partitions.get_mut(&tp) {
                    if ps.generation == generation {
                        ps.tracker.finished(offset);
                    }
                }
            }
            LaneEvent::Exited { tp, generation } => {
                if let Some(ps) = self.partitions.get_mut(&tp) {
                    if ps.generation == generation {
                        ps.exited = true;
                    }
                }
            }
        }
    }

    fn drain_events(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.handle_event(ev);
        }
    }

    /// Takes in a fetched record: to the lane, or to the stash (pausing the
    /// partition) when the lane's buffer is full.
    fn accept(
        &mut self,
        consumer: &BaseConsumer<RuntimeContext>,
        record: ConsumedRecord,
        tp: TopicPartition,
    ) {
        let stats = self.stats.clone();
        let Some(ps) = self.partitions.get_mut(&tp) else {
            tracing::debug!(topic = %tp.0, partition = tp.1, "record of a partition not assigned here: left for its owner");
            return;
        };
        if ps.tx.is_none() {
            return;
        }
        if ps
            .tracker
            .next_expected()
            .is_some_and(|next| record.offset < next)
        {
            // Delivered again (librdkafka re-fetched after a pause, or was
            // rewound): this lane already has the record, in flight or done.
            tracing::debug!(topic = %tp.0, partition = tp.1, offset = record.offset, "record delivered again: already dispatched, skipped");
            return;
        }
        ps.tracker.dispatched(record.offset);
        stats.add_buffered(1);
        if !ps.stash.is_empty() {
            ps.stash.push_back(record);
            self.needs_flush = true;
            return;
        }
        let tx = ps.tx.as_ref().expect("checked above");
        match tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record)) => {
                ps.stash.push_back(record);
                self.needs_flush = true;
                if !ps.paused {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&tp.0, tp.1);
                    match consumer.pause(&tpl) {
                        Ok(()) => {
                            ps.paused = true;
                            stats.paused_partitions.fetch_add(1, Relaxed);
                            stats.pauses.fetch_add(1, Relaxed);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot pause {}[{}]", tp.0, tp.1),
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(record)) => {
                // The lane is gone (revocation in progress): not started, not
                // committed; the next owner gets it.
                stats.sub_buffered(1);
                drop(record);
            }
        }
    }

    /// Moves stashed records into lanes with room; resumes partitions whose
    /// lane has drained to half its buffer. Returns whether a partition is
    /// still paused (the caller then polls more often to resume it soon).
    fn flush_stashes(&mut self, consumer: &BaseConsumer<RuntimeContext>) -> bool {
        let mut any_left = false;
        for (tp, ps) in self.partitions.iter_mut() {
            let Some(tx) = &ps.tx else { continue };
            while let Some(record) = ps.stash.pop_front() {
                match tx.try_send(record) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(r))
                    | Err(mpsc::error::TrySendError::Closed(r)) => {
                        ps.stash.push_front(r);
                        break;
                    }
                }
            }
            // Resume at a low-water mark (half the buffer free), not at the
            // first free slot: resuming at once makes a partition whose
            // service is slower than the fetch pause and resume on every
            // record.
            if ps.stash.is_empty() && ps.paused && tx.capacity() * 2 >= self.buffer {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&tp.0, tp.1);
                match consumer.resume(&tpl) {
                    Ok(()) => {
                        ps.paused = false;
                        self.stats.paused_partitions.fetch_sub(1, Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot resume {}[{}]", tp.0, tp.1),
                }
            }
            any_left |= !ps.stash.is_empty() || ps.paused;
        }
        any_left
    }

    /// Stops the lanes of `tps` from starting records, waits up to the drain
    /// timeout for their in-flight records, and aborts what is left.
    fn drain(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            if let Some(ps) = self.partitions.get_mut(tp) {
                ps.cancel.cancel();
                ps.tx = None;
                let dropped = ps.stash.len();
                ps.stash.clear();
                self.stats.sub_buffered(dropped);
                if ps.paused {
                    ps.paused = false;
                    self.stats.paused_partitions.fetch_sub(1, Relaxed);
                }
            }
        }
        let deadline = Instant::now() + self.drain_timeout;
        loop {
            self.drain_events();
            let pending = tps
                .iter()
                .filter(|tp| self.partitions.get(*tp).is_some_and(|ps| !ps.exited))
                .count();
            if pending == 0 {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    lanes = pending,
                    "drain timeout: abandoning in-flight records (they will be redelivered)"
                );
                for tp in tps {
                    if let Some(ps) = self.partitions.get_mut(tp) {
                        if !ps.exited {
                            ps.lane.abort();
                        }
                    }
                }
                return;
            }
            if let Ok(ev) = self.events.recv_timeout(deadline - now) {
                self.handle_event(ev);
            }
        }
    }

    /// Commits the finished prefix of `only` (or of every partition).
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
            let point = if force {
                ps.tracker.commit_point()
            } else {
                ps.tracker.take_commit()
            };
            if let Some(point) = point {
                if force {
                    ps.tracker.take_commit();
                }
                if let Err(e) = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(point)) {
                    tracing::warn!(error = %e, "cannot add offset to commit");
                }
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

fn poll_loop(
    consumer: &BaseConsumer<RuntimeContext>,
    state: &Mutex<PollState>,
    stop: &AtomicBool,
    commit_interval: Duration,
) -> Result<(), ConsumerError> {
    let mut last_commit = Instant::now();
    let mut result = Ok(());
    while !stop.load(Relaxed) {
        let timeout = {
            let mut st = lock(state);
            st.drain_events();
            let stashed = st.needs_flush && st.flush_stashes(consumer);
            st.needs_flush = stashed;
            if last_commit.elapsed() >= commit_interval {
                let force = consumer.context().commit_failed.swap(false, Relaxed);
                st.commit(consumer, CommitMode::Async, None, force);
                last_commit = Instant::now();
            }
            if stashed {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(50)
            }
        };
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(msg)) => {
                let mut st = lock(state);
                let topic = st.intern(msg.topic());
                let tp = (topic.clone(), msg.partition());
                if st.partitions.get(&tp).is_some_and(|ps| ps.tx.is_some()) {
                    let record = to_consumed_record(&msg, topic);
                    drop(msg);
                    st.accept(consumer, record, tp);
                }
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                tracing::error!(error = %code, "fatal consumer error: stopping");
                result = Err(ConsumerError::new(
                    "fatal consumer error",
                    KafkaError::MessageConsumptionFatal(code),
                ));
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
            }
        }
    }
    // Shutdown: stop fetching, let in-flight records finish, commit.
    let mut st = lock(state);
    let all: Vec<TopicPartition> = st.partitions.keys().cloned().collect();
    st.drain(&all);
    st.commit(consumer, CommitMode::Sync, None, true);
    st.partitions.clear();
    tracing::info!("consumer stopped; finished offsets committed");
    result
}
