//! See [`Auditor`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::caller::AuditCallerLayer;
use crate::capture::NoPayload;
use crate::chain::Chainer;
use crate::layer::{AuditLayer, Draft};
use crate::mask::PayloadPolicy;
use crate::record::{AuditRecord, KeyMode};
use crate::sink::AuditSink;

/// What a full audit queue does with the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueFullPolicy {
    /// The response waits until the record fits (default): no record is
    /// lost, and a slow sink slows the service down.
    #[default]
    Block,
    /// The record is dropped and counted in [`Auditor::dropped`]; the
    /// response goes on (or, with `must_audit`, is a `503`).
    DropAndCount,
}

/// The outcome of writing one record, sent back to a call that waits
/// (`must_audit`).
pub(crate) type Ack = Result<(), String>;

// Not boxed: a box would be one more allocation per call, freed on the
// writer thread (cross-thread frees contend on the allocator's locks).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Entry {
    Record(Draft, Option<oneshot::Sender<Ack>>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) dropped: AtomicU64,
    pub(crate) sink_errors: AtomicU64,
    pub(crate) written: AtomicU64,
}

pub(crate) struct Config {
    pub(crate) service_id: String,
    pub(crate) key_mode: KeyMode,
    pub(crate) must_audit: bool,
    pub(crate) policy: QueueFullPolicy,
    pub(crate) payload: PayloadPolicy,
}

pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) tx: mpsc::Sender<Entry>,
    pub(crate) counters: Arc<Counters>,
}

/// The future that waits for room in a full queue ([`QueueFullPolicy::Block`]);
/// boxed, but only made when the queue is full.
pub(crate) type Reserve = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Entry>, mpsc::error::SendError<()>>> + Send>,
>;

/// What became of handing a record to the queue.
pub(crate) enum Submitted {
    /// Queued; nothing to wait for.
    Queued,
    /// Queued; the receiver tells whether the sinks wrote it.
    Awaiting(oneshot::Receiver<Ack>),
    /// The queue is full and the policy is to wait.
    Full(Reserve, Box<Entry>, Option<oneshot::Receiver<Ack>>),
    /// Dropped: the queue was full (and counted), or the writer is gone.
    Dropped(&'static str),
}

impl Shared {
    /// Hands `record` to the queue without waiting.
    pub(crate) fn submit(&self, record: Draft, in_drop: bool) -> Submitted {
        let (ack_tx, ack_rx) = if self.config.must_audit && !in_drop {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        match self.tx.try_send(Entry::Record(record, ack_tx)) {
            Ok(()) => match ack_rx {
                Some(rx) => Submitted::Awaiting(rx),
                None => Submitted::Queued,
            },
            Err(mpsc::error::TrySendError::Full(entry)) => {
                if self.config.policy == QueueFullPolicy::Block && !in_drop {
                    let reserve: Reserve = Box::pin(self.tx.clone().reserve_owned());
                    Submitted::Full(reserve, Box::new(entry), ack_rx)
                } else {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    Submitted::Dropped("queue_full")
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Submitted::Dropped("closed")
            }
        }
    }
}

/// Why an [`Auditor`] could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuditError {
    /// No sink was configured.
    NoSink,
    /// The queue capacity or batch size is 0.
    ZeroCapacity,
    /// The writer thread or its runtime could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::NoSink => f.write_str("an auditor needs at least one sink"),
            AuditError::ZeroCapacity => {
                f.write_str("the audit queue capacity and batch size must be at least 1")
            }
            AuditError::Spawn(e) => write!(f, "cannot start the audit writer thread: {e}"),
        }
    }
}

impl std::error::Error for AuditError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuditError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// The writer thread is gone (it panicked); nothing more will be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditClosed;

impl fmt::Display for AuditClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the audit writer has stopped")
    }
}

impl std::error::Error for AuditClosed {}

/// Builds an [`Auditor`]; see the crate docs' configuration table.
pub struct AuditorBuilder {
    service_id: String,
    key_mode: KeyMode,
    must_audit: bool,
    policy: QueueFullPolicy,
    capacity: usize,
    batch: usize,
    linger: Duration,
    chain: bool,
    masks: Vec<String>,
    max_payload_bytes: usize,
    sinks: Vec<Arc<dyn AuditSink>>,
}

impl fmt::Debug for AuditorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditorBuilder")
            .field("service_id", &self.service_id)
            .field("key_mode", &self.key_mode)
            .field("must_audit", &self.must_audit)
            .field("policy", &self.policy)
            .field("capacity", &self.capacity)
            .field("batch", &self.batch)
            .field("linger", &self.linger)
            .field("chain", &self.chain)
            .field("masks", &self.masks)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field(
                "sinks",
                &self
                    .sinks
                    .iter()
                    .map(|s| s.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for AuditorBuilder {
    fn default() -> Self {
        AuditorBuilder {
            service_id: "unknown".to_owned(),
            key_mode: KeyMode::Plain,
            must_audit: false,
            policy: QueueFullPolicy::Block,
            capacity: 1024,
            batch: 64,
            linger: Duration::from_millis(1),
            chain: false,
            masks: Vec::new(),
            max_payload_bytes: 64 * 1024,
            sinks: Vec::new(),
        }
    }
}

impl AuditorBuilder {
    /// The `service_id` of every record (default `unknown`).
    pub fn service_id(mut self, id: impl Into<String>) -> Self {
        self.service_id = id.into();
        self
    }

    /// How record keys are recorded (default [`KeyMode::Plain`]).
    pub fn key_mode(mut self, mode: KeyMode) -> Self {
        self.key_mode = mode;
        self
    }

    /// Whether a call waits until its record is written, and answers `503`
    /// with a `Refusal` (`audit`) when it cannot be (default `false`: audit
    /// never fails a call).
    pub fn must_audit(mut self, yes: bool) -> Self {
        self.must_audit = yes;
        self
    }

    /// What a full queue does (default [`QueueFullPolicy::Block`]).
    pub fn when_full(mut self, policy: QueueFullPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How many records the queue holds (default 1024).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// The most records handed to a sink at once (default 64).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// How long the writer waits for more records after a batch smaller
    /// than [`batch_size`](Self::batch_size) (default 1 ms). Waking the
    /// writer thread for every record would cost each call a system call;
    /// lingering lets records accumulate, at the price of that much more
    /// delay before a record is written (and before a `must_audit` call
    /// answers). `Duration::ZERO` writes every record at once.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Whether records are hash-chained per stream (default `false`); see
    /// [`crate::chain`].
    pub fn chain(mut self, yes: bool) -> Self {
        self.chain = yes;
        self
    }

    /// Masks the payload field `pointer` names (a JSON pointer; `*`
    /// matches every element). Only matters when the layer captures
    /// payloads ([`AuditLayer::capture_payload`]).
    pub fn mask(mut self, pointer: impl Into<String>) -> Self {
        self.masks.push(pointer.into());
        self
    }

    /// Captured payloads larger than this are not kept (default 64 KiB).
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload_bytes = n;
        self
    }

    /// Adds a sink; records go to every sink, in the order added.
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// Adds a shared sink.
    pub fn sink_arc(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Starts the writer thread.
    pub fn build(self) -> Result<Auditor, AuditError> {
        if self.sinks.is_empty() {
            return Err(AuditError::NoSink);
        }
        if self.capacity == 0 || self.batch == 0 {
            return Err(AuditError::ZeroCapacity);
        }
        let (tx, rx) = mpsc::channel(self.capacity);
        let counters = Arc::new(Counters::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AuditError::Spawn)?;
        let config = Arc::new(Config {
            service_id: self.service_id,
            key_mode: self.key_mode,
            must_audit: self.must_audit,
            policy: self.policy,
            payload: PayloadPolicy {
                masks: self.masks,
                max_bytes: self.max_payload_bytes,
            },
        });
        let writer = Writer {
            config: config.clone(),
            sinks: self.sinks,
            chainer: self
                .chain
                .then(|| Chainer::new(uuid::Uuid::new_v4().simple().to_string())),
            counters: counters.clone(),
            batch: self.batch,
            linger: self.linger,
        };
        std::thread::Builder::new()
            .name("kafka-tower-audit".to_owned())
            .spawn(move || runtime.block_on(writer.run(rx)))
            .map_err(AuditError::Spawn)?;
        Ok(Auditor {
            shared: Arc::new(Shared {
                config,
                tx,
                counters,
            }),
        })
    }
}

/// [`Auditor`]: the configuration, the bounded queue and the writer thread
/// behind every [`AuditLayer`] it makes.
///
/// The request path only builds the record and puts it on a bounded queue;
/// a dedicated writer thread takes records off in batches, links them into
/// chains (when on) and hands each batch to every sink in turn. When the
/// queue is full the [`QueueFullPolicy`] decides: wait for room (the
/// response waits, so backpressure reaches the consumer), or drop the
/// record and count it ([`Auditor::dropped`]).
///
/// With [`must_audit`](AuditorBuilder::must_audit) a response also waits
/// until every sink wrote its record; a sink failure (or a record dropped
/// from a full queue) answers `503 Service Unavailable` with a
/// [`Refusal`](kafka_tower::Refusal) `audit` / `sink_failed` (or
/// `queue_full`) instead, which the consumer runtime retries.
///
/// Call [`Auditor::flush`] before shutting down: the writer thread ends
/// once every handle is dropped and the queue is drained, but a process
/// that exits first loses what is still queued.
///
/// The audit trail of one service: makes [`AuditLayer`]s, owns the queue
/// and the writer thread. Cloning is an `Arc` clone.
#[derive(Clone)]
pub struct Auditor {
    pub(crate) shared: Arc<Shared>,
}

/// A handle from a borrowed one (an `Arc` clone), so that constructors take
/// `Auditor` or `&Auditor` alike.
impl From<&Auditor> for Auditor {
    fn from(a: &Auditor) -> Self {
        a.clone()
    }
}

impl fmt::Debug for Auditor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auditor")
            .field("service_id", &self.shared.config.service_id)
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .field("sink_errors", &self.sink_errors())
            .finish()
    }
}

impl Auditor {
    /// A builder with the defaults of the crate docs' configuration table.
    pub fn builder() -> AuditorBuilder {
        AuditorBuilder::default()
    }

    /// A layer auditing every call of the service it wraps.
    pub fn layer(&self) -> AuditLayer<NoPayload> {
        AuditLayer::new(self.clone())
    }

    /// A layer to place *inside* an authentication layer that sits inside
    /// this auditor's [`AuditLayer`]: it reports the [`Caller`](kafka_tower::Caller)
    /// to the audit record. See [`AuditCaller`](crate::AuditCaller).
    pub fn caller_layer(&self) -> AuditCallerLayer {
        AuditCallerLayer
    }

    /// Records dropped because the queue was full
    /// ([`QueueFullPolicy::DropAndCount`]) or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.shared.counters.dropped.load(Ordering::Relaxed)
    }

    /// Batches a sink failed to write (one per sink and batch).
    pub fn sink_errors(&self) -> u64 {
        self.shared.counters.sink_errors.load(Ordering::Relaxed)
    }

    /// Records every sink wrote.
    pub fn written(&self) -> u64 {
        self.shared.counters.written.load(Ordering::Relaxed)
    }

    /// Waits until every record queued before this call went through the
    /// sinks (successfully or not).
    pub async fn flush(&self) -> Result<(), AuditClosed> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Entry::Flush(tx))
            .await
            .map_err(|_| AuditClosed)?;
        rx.await.map_err(|_| AuditClosed)
    }
}

/// The writer thread's state.
struct Writer {
    config: Arc<Config>,
    sinks: Vec<Arc<dyn AuditSink>>,
    chainer: Option<Chainer>,
    counters: Arc<Counters>,
    batch: usize,
    linger: Duration,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        let mut entries = Vec::with_capacity(self.batch);
        let mut records = Vec::with_capacity(self.batch);
        let mut acks = Vec::with_capacity(self.batch);
        loop {
            let received = rx.recv_many(&mut entries, self.batch).await;
            if received == 0 {
                return; // every handle dropped and the queue drained
            }
            for entry in entries.drain(..) {
                match entry {
                    Entry::Record(draft, ack) => {
                        let mut record = draft.into_record(&self.config);
                        if let Some(chainer) = self.chainer.as_mut() {
                            chainer.link(&mut record);
                        }
                        records.push(record);
                        acks.push(ack);
                    }
                    Entry::Flush(done) => {
                        self.write(&mut records, &mut acks).await;
                        let _ = done.send(());
                    }
                }
            }
            self.write(&mut records, &mut acks).await;
            if received < self.batch && !self.linger.is_zero() {
                // Not waiting on the queue meanwhile: senders do not wake
                // this thread record by record.
                tokio::time::sleep(self.linger).await;
            }
        }
    }

    /// Hands `records` to every sink, then answers the calls that wait.
    async fn write(
        &self,
        records: &mut Vec<AuditRecord>,
        acks: &mut Vec<Option<oneshot::Sender<Ack>>>,
    ) {
        if records.is_empty() {
            return;
        }
        let batch = Arc::new(std::mem::take(records));
        let mut failure: Option<String> = None;
        for sink in &self.sinks {
            // A task of its own, so that a panicking sink is a failed write
            // and not a dead writer thread.
            let (sink, shared_batch) = (sink.clone(), batch.clone());
            let name = sink.name().to_owned();
            let result = tokio::spawn(async move { sink.write(&shared_batch).await })
                .await
                .unwrap_or_else(|e| Err(crate::SinkError::new(format!("the sink panicked: {e}"))));
            if let Err(e) = result {
                self.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %name, records = batch.len(), error = %e, "audit sink failed");
                failure.get_or_insert_with(|| format!("{name}: {e}"));
            }
        }
        if failure.is_none() {
            self.counters
                .written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        for ack in acks.drain(..).flatten() {
            let _ = ack.send(match &failure {
                None => Ok(()),
                Some(e) => Err(e.clone()),
            });
        }
        *records = Arc::try_unwrap(batch).unwrap_or_default();
        records.clear();
    }
}
