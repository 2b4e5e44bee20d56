//! [`RuntimeStats`]: live counters of a running consumer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// How far a consumer is behind the end of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Records between the consumer's position and the partition's end
    /// (high watermark, or last stable offset under `read_committed`).
    pub lag: i64,
}

/// Live counters of a consumer runtime, shared with the caller through
/// [`Consumer::stats`](super::Consumer::stats). Cheap to read at any time.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    pub(crate) buffered: AtomicUsize,
    pub(crate) peak_buffered: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) paused_partitions: AtomicUsize,
    pub(crate) pauses: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dead_letter_write_failures: AtomicU64,
    pub(crate) holds: AtomicU64,
    pub(crate) producer_recreations: AtomicU64,
    pub(crate) held: AtomicUsize,
    pub(crate) skipped: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) lag: Mutex<Vec<PartitionLag>>,
}

impl RuntimeStats {
    /// Records lanes took from their partition's queue ahead of serving
    /// them (the key-ordered look-ahead; a partition-ordered lane takes one
    /// record when it can start it). What librdkafka prefetched into the
    /// queues is not counted: that is bounded by `queued.min.messages` and
    /// `queued.max.messages.kbytes` per partition.
    pub fn buffered(&self) -> usize {
        self.buffered.load(Relaxed)
    }
    /// The highest [`RuntimeStats::buffered`] seen so far.
    pub fn peak_buffered(&self) -> usize {
        self.peak_buffered.load(Relaxed)
    }
    /// Records handed to the service and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }
    /// Partitions paused right now because their lane was busy without
    /// finishing a record for `pause_after`.
    pub fn paused_partitions(&self) -> usize {
        self.paused_partitions.load(Relaxed)
    }
    /// How many times a partition was paused because its lane stalled; 0
    /// for a consumer that keeps up.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Relaxed)
    }
    /// Calls made to the service, retries included.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Relaxed)
    }
    /// Records the service handled with a `2xx`.
    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Relaxed)
    }
    /// Retries scheduled after retryable failures.
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }
    /// Records written to a dead-letter topic (and acknowledged).
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Relaxed)
    }
    /// Dead-letter writes that failed (the topic missing, writes refused by
    /// authorization or quota, the broker unreachable). Each is retried
    /// with backoff while the record's partition waits: nothing is lost,
    /// and a value that keeps growing means a partition is stuck behind
    /// its dead-letter topic.
    pub fn dead_letter_write_failures(&self) -> u64 {
        self.dead_letter_write_failures.load(Relaxed)
    }
    /// Times a record spent its attempts on retryable failures and held
    /// its partition instead of being dead-lettered (see
    /// [`RetryPolicy::hold`](super::RetryPolicy::hold)): a downstream
    /// outage, usually.
    pub fn holds(&self) -> u64 {
        self.holds.load(Relaxed)
    }
    /// Records holding their partition right now (0 when no outage is
    /// under way).
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }
    /// Exactly-once mode: times the transactional producer was re-created
    /// after a fatal error (a long outage, usually); the batch was served
    /// again from the committed offsets.
    pub fn producer_recreations(&self) -> u64 {
        self.producer_recreations.load(Relaxed)
    }
    /// Failed records skipped because dead-lettering is disabled.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Relaxed)
    }
    /// Records left unfinished on revocation or shutdown (they will be
    /// delivered again, to this or another consumer).
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Relaxed)
    }
    /// Offset commits issued.
    pub fn commits(&self) -> u64 {
        self.commits.load(Relaxed)
    }

    /// Consumer lag per assigned partition, from librdkafka's statistics.
    /// Empty unless the consumer property `statistics.interval.ms` is set
    /// (e.g. `5000`); refreshed at that interval.
    pub fn consumer_lag(&self) -> Vec<PartitionLag> {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_lag(&self, lag: Vec<PartitionLag>) {
        *self.lag.lock().unwrap_or_else(|p| p.into_inner()) = lag;
    }

    pub(crate) fn add_buffered(&self, n: usize) {
        let now = self.buffered.fetch_add(n, Relaxed) + n;
        self.peak_buffered.fetch_max(now, Relaxed);
    }
    pub(crate) fn sub_buffered(&self, n: usize) {
        self.buffered.fetch_sub(n, Relaxed);
    }
}
