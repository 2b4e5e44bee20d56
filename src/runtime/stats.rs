//! [`RuntimeStats`]: live counters of a running consumer.

use std::fmt;
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
    pub(crate) in_flight: Striped,
    pub(crate) paused_partitions: AtomicUsize,
    pub(crate) pauses: AtomicU64,
    pub(crate) attempts: Striped,
    pub(crate) succeeded: Striped,
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
        self.in_flight.sum() as usize
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
        self.attempts.sum()
    }
    /// Records the service handled with a `2xx`.
    pub fn succeeded(&self) -> u64 {
        self.succeeded.sum()
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

/// A counter updated on every record by every lane: one slot per thread
/// (each on its own cache line), summed when read, so that lanes on
/// different threads never write the same cache line. Also a gauge: a
/// slot may wrap below zero when a task moves threads between `add` and
/// `sub`; the wrapping sum is still exact.
#[derive(Default)]
pub(crate) struct Striped([Slot; STRIPES]);

const STRIPES: usize = 8;

#[derive(Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

thread_local! {
    /// This thread's slot: threads take slots in turn as they first count.
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % STRIPES
    };
}

impl Striped {
    #[inline]
    fn slot(&self) -> &AtomicU64 {
        let i = STRIPE.try_with(|i| *i).unwrap_or(0);
        &self.0[i].0
    }

    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.slot().fetch_add(n, Relaxed);
    }

    /// Subtracts `n` (a gauge going down).
    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.slot().fetch_sub(n, Relaxed);
    }

    /// The count: the sum of every slot.
    pub(crate) fn sum(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |acc, s| acc.wrapping_add(s.0.load(Relaxed)))
    }
}

impl fmt::Debug for Striped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.sum(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_striped_gauge_sums_exactly_whichever_threads_count() {
        let g = std::sync::Arc::new(Striped::default());
        // Up on some threads, down on others: slots go below zero, the
        // sum does not.
        let ups: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| g.add(1)))
            })
            .collect();
        ups.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(g.sum(), 4000);
        let downs: Vec<_> = (0..3)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| g.sub(1)))
            })
            .collect();
        downs.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(g.sum(), 1000);
        assert_eq!(format!("{g:?}"), "1000");
    }
}
