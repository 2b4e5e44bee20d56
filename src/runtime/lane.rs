//! One lane per assigned partition. The lane drains its partition's own
//! librdkafka queue itself, serves the records in order (per partition, or
//! per key, or in batches: see [`LaneWork`]), and publishes its finished
//! prefix in atomics the committer reads. No record crosses a thread through a lock or a channel, no task
//! is spawned per record and no event is sent per finished record.
//!
//! The lane takes records from the queue only when it can start one (in
//! key mode: up to `lookahead` records ahead) — up to 32 messages per call
//! into librdkafka, held as librdkafka's until served — so a lane that is
//! not ready simply stops draining and librdkafka's per-partition prefetch
//! limits bound what is buffered. The poll thread pauses a partition only when its
//! lane made no progress for `pause_after` (see [`LaneControl`]).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::attempt::{dispose, panic_failure, serve_to_end, AttemptPolicy, RequestTarget};
use super::batch::serve_batch_to_end;
use super::config::Ordering;
use super::dead_letter::DeadLetterWriter;
use super::service::{BatchService, RecordService};
use crate::offsets::OffsetTracker;
use crate::ConsumedRecord;

/// A partition: shared topic name and partition number.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// Where a lane takes its records from: the partition's librdkafka queue
/// in the runtime, a vector in unit tests.
pub(crate) trait RecordSource: Send + 'static {
    /// The next fetched record, if one is there now (never blocks).
    fn next_ready(&mut self) -> Option<ConsumedRecord>;
}

/// Everything lanes share, whatever their partition.
pub(crate) struct LaneShared {
    pub(crate) policy: AttemptPolicy,
    pub(crate) ordering: Ordering,
    /// Records a key-mode lane takes ahead of the ones it serves.
    pub(crate) lookahead: usize,
    pub(crate) in_flight: InFlightLimit,
    pub(crate) dead_letter: Option<DeadLetterWriter>,
    /// Rung whenever a lane exits.
    pub(crate) exits: Bell,
}

/// One partition's lane, as the poll thread sees it: what it finished, and
/// whether it is stuck. Written by the lane, read by the poll thread.
#[derive(Debug)]
pub(crate) struct LaneControl {
    /// One past the contiguous finished prefix; `-1` before the first.
    commit_point: AtomicI64,
    /// Where the partition's fetching should go on after a pause: one past
    /// the last record the lane took from librdkafka (or the offset an
    /// error message of the partition said fetching was at); `-1` before
    /// either.
    fetch_position: AtomicI64,
    /// The offset of the first message the lane took from librdkafka; `-1`
    /// before it took one. Where an aborted transaction rewinds a
    /// partition that never committed.
    first_taken: AtomicI64,
    /// Records finished so far.
    progress: AtomicU64,
    /// A record is taken and not finished.
    busy: AtomicBool,
    /// Records holding the partition (retries exhausted on a retryable
    /// failure): while any does, a key-mode lane starts no other record.
    held: AtomicUsize,
    exited: AtomicBool,
    /// Set when the lane stopped on an error of the runtime itself.
    failure: Mutex<Option<String>>,
    pub(crate) cancel: CancellationToken,
}

impl LaneControl {
    pub(crate) fn new() -> Self {
        LaneControl {
            commit_point: AtomicI64::new(-1),
            fetch_position: AtomicI64::new(-1),
            first_taken: AtomicI64::new(-1),
            progress: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            exited: AtomicBool::new(false),
            failure: Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }

    /// The offset to commit, if any record is finished.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        let p = self.commit_point.load(Relaxed);
        (p >= 0).then_some(p)
    }

    /// Records finished so far, and whether one is taken and unfinished.
    pub(crate) fn progress(&self) -> (u64, bool) {
        (self.progress.load(Relaxed), self.busy.load(Relaxed))
    }

    /// Where fetching should go on after a pause, if the lane took a
    /// record or saw the partition's position in an error.
    pub(crate) fn fetch_position(&self) -> Option<i64> {
        let p = self.fetch_position.load(Relaxed);
        (p >= 0).then_some(p)
    }

    /// The offset of the first message the lane took, if it took one.
    pub(crate) fn first_taken(&self) -> Option<i64> {
        let p = self.first_taken.load(Relaxed);
        (p >= 0).then_some(p)
    }

    /// The lane took a message at `offset`; only the first is kept. Only
    /// the lane writes it.
    pub(crate) fn took(&self, offset: i64) {
        if self.first_taken.load(Relaxed) < 0 {
            self.first_taken.store(offset, Relaxed);
        }
    }

    /// The lane took records from librdkafka up to (not including)
    /// `next`. Only the lane writes it.
    pub(crate) fn fetched_to(&self, next: i64) {
        if next > self.fetch_position.load(Relaxed) {
            self.fetch_position.store(next, Relaxed);
        }
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.exited.load(Relaxed)
    }

    /// Why the lane stopped, if the runtime itself failed.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records why the lane stops: the runtime itself failed on it.
    pub(crate) fn fail(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn finished(&self, commit_point: i64) {
        self.finished_many(commit_point, 1);
    }

    fn finished_many(&self, commit_point: i64, records: u64) {
        self.commit_point.store(commit_point, Relaxed);
        self.progress.fetch_add(records, Relaxed);
    }
}

/// A bell the poll thread waits on (with a timeout) until lanes exit.
#[derive(Debug, Default)]
pub(crate) struct Bell {
    rings: Mutex<u64>,
    cond: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.rings.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cond.notify_all();
    }

    /// Waits until `done()` holds or `timeout` passes; returns `done()`.
    pub(crate) fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut guard = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if done() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .cond
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// `max_in_flight`: records being served at once over all lanes. Two
/// atomic operations per record when permits are free; a lane waits on a
/// `Notify` only when they are not.
#[derive(Debug)]
pub(crate) struct InFlightLimit {
    used: AtomicUsize,
    max: usize,
    waiters: AtomicUsize,
    freed: Notify,
}

impl InFlightLimit {
    pub(crate) fn new(max: usize) -> Self {
        InFlightLimit {
            used: AtomicUsize::new(0),
            max,
            waiters: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Whether a lane waits for a slot.
    fn has_waiters(&self) -> bool {
        self.waiters.load(Relaxed) > 0
    }

    fn try_acquire(&self) -> Option<Permit<'_>> {
        self.used
            .fetch_update(Relaxed, Relaxed, |u| (u < self.max).then_some(u + 1))
            .ok()
            .map(|_| Permit(self))
    }

    /// A permit, or `None` if `cancel` fires first.
    async fn acquire(&self, cancel: &CancellationToken) -> Option<Permit<'_>> {
        loop {
            if let Some(p) = self.try_acquire() {
                return Some(p);
            }
            self.waiters.fetch_add(1, Relaxed);
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            let got = self.try_acquire();
            if got.is_none() {
                tokio::select! {
                    _ = &mut freed => {}
                    _ = cancel.cancelled() => {
                        self.waiters.fetch_sub(1, Relaxed);
                        return None;
                    }
                }
            }
            self.waiters.fetch_sub(1, Relaxed);
            if got.is_some() {
                return got;
            }
        }
    }
}

/// A slot of [`InFlightLimit`], given back on drop.
pub(super) struct Permit<'a>(&'a InFlightLimit);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Relaxed);
        if self.0.waiters.load(Relaxed) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// What a lane serves its partition's records to: one by one
/// ([`Records`]) or in batches ([`Batches`]).
pub(crate) trait LaneWork: Send + 'static {
    /// Serves the lane's records until it is cancelled or fails.
    fn serve<'a, Src: RecordSource>(
        self,
        lane: &'a Lane<'a>,
        source: &'a mut Src,
    ) -> impl Future<Output = ()> + Send + 'a;
}

/// Records one at a time (partition order) or by key, to a service.
pub(crate) struct Records<S>(pub(crate) S);

impl<S: RecordService> LaneWork for Records<S> {
    async fn serve<'a, Src: RecordSource>(self, lane: &'a Lane<'a>, source: &'a mut Src) {
        match lane.shared.ordering {
            Ordering::Partition => lane.serve_in_order(source, self.0).await,
            Ordering::Key => lane.serve_by_key(source, self.0).await,
        }
    }
}

/// Batches of up to `max_batch` records, in partition order, to a batch
/// service; a batch waits up to `max_delay` for more records once it has
/// one.
pub(crate) struct Batches<B> {
    pub(crate) service: B,
    pub(crate) max_batch: usize,
    pub(crate) max_delay: Duration,
}

impl<B: BatchService> LaneWork for Batches<B> {
    fn serve<'a, Src: RecordSource>(
        self,
        lane: &'a Lane<'a>,
        source: &'a mut Src,
    ) -> impl Future<Output = ()> + Send + 'a {
        lane.serve_batches(source, self)
    }
}

/// Runs a lane until it is cancelled (revocation, shutdown) or fails.
/// `wake` is notified when the source turns non-empty.
pub(crate) async fn run_lane(
    shared: Arc<LaneShared>,
    work: impl LaneWork,
    tp: TopicPartition,
    source: impl RecordSource,
    wake: Arc<Notify>,
    ctl: Arc<LaneControl>,
) {
    // Declared before the source so that it drops after it: once the lane
    // says it exited, it holds nothing of its partition. It also runs when
    // the task is aborted.
    let _exit = ExitGuard {
        ctl: ctl.clone(),
        shared: shared.clone(),
    };
    let mut source = source;
    let lane = Lane {
        shared: &shared,
        target: RequestTarget::new(&tp.0, &shared.policy.group),
        ctl: &ctl,
        wake: &wake,
    };
    let ran = AssertUnwindSafe(work.serve(&lane, &mut source))
        .catch_unwind()
        .await;
    if let Err(panic) = ran {
        let message = panic_failure(&*panic).message;
        tracing::error!(topic = %tp.0, partition = tp.1, error = %message, "lane stopped");
        *ctl.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }
}

/// Marks the lane exited and rings the bell, however the lane ends.
struct ExitGuard {
    ctl: Arc<LaneControl>,
    shared: Arc<LaneShared>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.ctl.busy.store(false, Relaxed);
        self.ctl.exited.store(true, Relaxed);
        self.shared.exits.ring();
    }
}

/// A running lane: what its work is served with.
pub(crate) struct Lane<'a> {
    pub(super) shared: &'a LaneShared,
    pub(super) target: RequestTarget,
    pub(super) ctl: &'a LaneControl,
    wake: &'a Notify,
}

impl Lane<'_> {
    /// Partition order: one record at a time, in a loop, calling the
    /// lane's own service instance. The lane keeps its `max_in_flight`
    /// slot from one record to the next while no other lane waits for
    /// one, and gives it back before it waits for records.
    async fn serve_in_order<S: RecordService>(
        &self,
        source: &mut impl RecordSource,
        mut service: S,
    ) {
        let mut next: Option<i64> = None;
        let mut permit: Option<Permit<'_>> = None;
        loop {
            let Some(record) = self.next_started(source, &mut next, &mut permit).await else {
                return;
            };
            let finished = self.serve_supervised(&record, &mut service).await;
            if !self.end(finished, record.offset + 1, 1) {
                return;
            }
        }
    }

    /// The partition's next record, started (see [`Lane::start`]): the
    /// lane keeps its `max_in_flight` slot from one record to the next
    /// while no other lane waits for one. `None` when cancelled.
    pub(super) async fn next_started<'s>(
        &'s self,
        source: &mut impl RecordSource,
        next: &mut Option<i64>,
        permit: &mut Option<Permit<'s>>,
    ) -> Option<ConsumedRecord> {
        if self.shared.in_flight.has_waiters() {
            *permit = None;
        }
        let record = self.next_record(source, next, permit).await?;
        self.start(record.offset, 1, permit).await.then_some(record)
    }

    /// Starts serving `n` records from offset `first`, in partition order:
    /// everything before them is finished, so `first` is the commit point
    /// until they are; takes a `max_in_flight` slot unless the lane kept
    /// one. `false` when cancelled first.
    pub(super) async fn start<'s>(
        &'s self,
        first: i64,
        n: u64,
        permit: &mut Option<Permit<'s>>,
    ) -> bool {
        self.ctl.commit_point.store(first, Relaxed);
        self.ctl.busy.store(true, Relaxed);
        if permit.is_none() {
            *permit = self.permit().await;
            if permit.is_none() {
                self.shared.policy.stats.abandoned.fetch_add(n, Relaxed);
                return false;
            }
        }
        self.shared.policy.stats.in_flight.add(n);
        true
    }

    /// Ends serving `n` records started with [`Lane::start`]: when they
    /// all finished, `next` is the commit point. `false` when the lane
    /// must stop (cancelled, or failed).
    pub(super) fn end(&self, finished: Option<bool>, next: i64, n: u64) -> bool {
        let stats = &self.shared.policy.stats;
        stats.in_flight.sub(n);
        match finished {
            Some(true) => {
                self.ctl.finished_many(next, n);
                self.ctl.busy.store(false, Relaxed);
                true
            }
            Some(false) => {
                stats.abandoned.fetch_add(n, Relaxed);
                false
            }
            None => false,
        }
    }

    /// Batches: up to `max_batch` records of the partition at a time, in
    /// order, to the lane's own instance of the batch service. Like
    /// [`Lane::serve_in_order`] for one record, with the batch in place of
    /// the record: the commit point stays at the batch's first offset until
    /// every record of it is finished.
    async fn serve_batches<B: BatchService>(
        &self,
        source: &mut impl RecordSource,
        work: Batches<B>,
    ) {
        let Batches {
            mut service,
            max_batch,
            max_delay,
        } = work;
        let mut next: Option<i64> = None;
        let mut permit: Option<Permit<'_>> = None;
        loop {
            if self.shared.in_flight.has_waiters() {
                permit = None;
            }
            let Some(first) = self.next_record(source, &mut next, &mut permit).await else {
                return;
            };
            let mut records = vec![first];
            if !self
                .fill_batch(
                    source,
                    &mut next,
                    &mut permit,
                    &mut records,
                    max_batch,
                    max_delay,
                )
                .await
            {
                return;
            }
            let n = records.len() as u64;
            if !self.start(records[0].offset, n, &mut permit).await {
                return;
            }
            let finished = self.serve_batch_supervised(&records, &mut service).await;
            let last = records[records.len() - 1].offset;
            if !self.end(finished, last + 1, n) {
                return;
            }
        }
    }

    /// Adds the partition's next records to `records`, up to `max`: those
    /// fetched already, then those arriving within `max_delay`. `false`
    /// once the lane is cancelled.
    async fn fill_batch<'s>(
        &'s self,
        source: &mut impl RecordSource,
        next: &mut Option<i64>,
        permit: &mut Option<Permit<'s>>,
        records: &mut Vec<ConsumedRecord>,
        max: usize,
        max_delay: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + max_delay;
        while records.len() < max {
            if let Some(record) = source.next_ready() {
                if next.is_some_and(|n| record.offset < n) {
                    continue;
                }
                *next = Some(record.offset + 1);
                records.push(record);
                continue;
            }
            if max_delay.is_zero() || tokio::time::Instant::now() >= deadline {
                break;
            }
            // Waiting: another lane may have the slot meanwhile.
            *permit = None;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.ctl.cancel.cancelled() => return false,
            }
        }
        !self.ctl.cancel.is_cancelled()
    }

    /// [`serve_batch_to_end`], with a panic of the runtime's own code
    /// caught as in [`Lane::serve_supervised`]: the batch's unfinished
    /// records are dead-lettered as `failed-by: runtime`.
    async fn serve_batch_supervised<B: BatchService>(
        &self,
        records: &[ConsumedRecord],
        service: &mut B,
    ) -> Option<bool> {
        let mut done = vec![false; records.len()];
        let served = AssertUnwindSafe(serve_batch_to_end(
            &self.shared.policy,
            self.shared.dead_letter.as_ref(),
            service,
            records,
            &self.target,
            &self.ctl.cancel,
            Some(&self.ctl.held),
            &mut done,
        ))
        .catch_unwind()
        .await;
        match served {
            Ok(finished) => Some(finished),
            Err(panic) => {
                let failure = panic_failure(&*panic);
                let left = records.iter().zip(&done).filter(|(_, d)| !**d);
                self.dead_letter_after_panic(left.map(|(r, _)| r), failure)
                    .await
            }
        }
    }

    /// Key order: records of one key in order, different keys at once, up
    /// to `lookahead` records taken ahead.
    async fn serve_by_key<S: RecordService>(&self, source: &mut impl RecordSource, service: S) {
        let stats = &self.shared.policy.stats;
        let cancel = &self.ctl.cancel;
        let mut tracker = OffsetTracker::new();
        let mut running = FuturesUnordered::new();
        let mut busy_keys: HashSet<Option<Bytes>> = HashSet::new();
        let mut waiting: VecDeque<ConsumedRecord> = VecDeque::new();
        let mut cancelled = false;
        let mut failed = false;
        loop {
            if !cancelled {
                while waiting.len() < self.shared.lookahead {
                    let Some(record) = source.next_ready() else {
                        break;
                    };
                    if tracker.next_expected().is_some_and(|n| record.offset < n) {
                        continue;
                    }
                    tracker.dispatched(record.offset);
                    stats.add_buffered(1);
                    waiting.push_back(record);
                }
                // A held record means the service is failing: start
                // nothing else until it succeeds or gives up.
                while let Some(idx) = first_ready_by_key(&waiting, &busy_keys)
                    .filter(|_| self.ctl.held.load(Relaxed) == 0)
                {
                    let Some(permit) = self.shared.in_flight.try_acquire() else {
                        break;
                    };
                    let record = waiting.remove(idx).expect("index from first_ready_by_key");
                    stats.sub_buffered(1);
                    busy_keys.insert(record.key.clone());
                    running.push(self.serve_owned(record, permit, &service));
                }
            }
            self.ctl
                .busy
                .store(!running.is_empty() || !waiting.is_empty(), Relaxed);
            if running.is_empty() && (cancelled || failed) {
                break;
            }
            let blocked_on_permit = !cancelled
                && self.ctl.held.load(Relaxed) == 0
                && first_ready_by_key(&waiting, &busy_keys).is_some();
            let may_take = !cancelled && waiting.len() < self.shared.lookahead;
            tokio::select! {
                biased;
                Some((record, finished)) = running.next(), if !running.is_empty() => {
                    busy_keys.remove(&record.key);
                    match finished {
                        Some(true) => {
                            tracker.finished(record.offset);
                            let point = tracker.commit_point().expect("dispatched");
                            self.ctl.finished(point);
                        }
                        Some(false) => { stats.abandoned.fetch_add(1, Relaxed); }
                        None => { failed = true; cancel.cancel(); }
                    }
                }
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    stats.sub_buffered(waiting.len());
                    waiting.clear();
                }
                permit = self.shared.in_flight.acquire(cancel), if blocked_on_permit => {
                    // A record may have begun holding while this waited.
                    let ready = first_ready_by_key(&waiting, &busy_keys)
                        .filter(|_| self.ctl.held.load(Relaxed) == 0);
                    if let (Some(permit), Some(idx)) = (permit, ready) {
                        let record = waiting.remove(idx).expect("index from first_ready_by_key");
                        stats.sub_buffered(1);
                        busy_keys.insert(record.key.clone());
                        running.push(self.serve_owned(record, permit, &service));
                    }
                }
                _ = self.wake.notified(), if may_take => {}
            }
        }
    }

    /// Serves a key-mode record with a clone of the lane's service (its
    /// records run at once).
    fn serve_owned<'s, S: RecordService>(
        &'s self,
        record: ConsumedRecord,
        permit: Permit<'s>,
        service: &S,
    ) -> impl Future<Output = (ConsumedRecord, Option<bool>)> + 's {
        let mut service = service.clone();
        async move {
            let stats = &self.shared.policy.stats;
            stats.in_flight.add(1);
            let finished = self.serve_supervised(&record, &mut service).await;
            stats.in_flight.sub(1);
            drop(permit);
            (record, finished)
        }
    }

    /// The next record of the partition (skipping any delivered again),
    /// waiting for one; `None` once the lane is cancelled.
    /// A `permit` the lane holds is given back before it waits.
    async fn next_record<'s>(
        &'s self,
        source: &mut impl RecordSource,
        next: &mut Option<i64>,
        permit: &mut Option<Permit<'s>>,
    ) -> Option<ConsumedRecord> {
        loop {
            if self.ctl.cancel.is_cancelled() {
                return None;
            }
            match source.next_ready() {
                Some(record) => {
                    if next.is_some_and(|n| record.offset < n) {
                        continue;
                    }
                    *next = Some(record.offset + 1);
                    return Some(record);
                }
                None => {
                    *permit = None;
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = self.ctl.cancel.cancelled() => return None,
                    }
                }
            }
        }
    }

    async fn permit(&self) -> Option<Permit<'_>> {
        match self.shared.in_flight.try_acquire() {
            Some(p) => Some(p),
            None => self.shared.in_flight.acquire(&self.ctl.cancel).await,
        }
    }

    /// Serves a record to its end, catching a panic of the runtime's own
    /// code (mapping, context capture, dead-letter writer: the service's
    /// panics are caught per call and retried). Such a record is
    /// dead-lettered as `failed-by: runtime`; if that panics too, the lane
    /// records the failure and stops (`None`), and the consumer stops with
    /// an error.
    async fn serve_supervised<S: RecordService>(
        &self,
        record: &ConsumedRecord,
        service: &mut S,
    ) -> Option<bool> {
        let policy = &self.shared.policy;
        let writer = self.shared.dead_letter.as_ref();
        let cancel = &self.ctl.cancel;
        let served = AssertUnwindSafe(serve_to_end(
            policy,
            writer,
            service,
            record,
            &self.target,
            cancel,
            Some(&self.ctl.held),
        ))
        .catch_unwind()
        .await;
        match served {
            Ok(finished) => Some(finished),
            Err(panic) => {
                let failure = panic_failure(&*panic);
                self.dead_letter_after_panic(std::iter::once(record), failure)
                    .await
            }
        }
    }

    /// Dead-letters `records` with `failure` (`failed-by: runtime`) after a
    /// panic of the runtime's own code on them. If a dead letter panics too, the lane
    /// records the failure and stops (`None`), and the consumer stops with
    /// an error; `Some(false)` when cancelled before the writes succeeded.
    async fn dead_letter_after_panic<'r>(
        &self,
        records: impl Iterator<Item = &'r ConsumedRecord>,
        failure: super::outcome::Failure,
    ) -> Option<bool> {
        let policy = &self.shared.policy;
        let writer = self.shared.dead_letter.as_ref();
        let cancel = &self.ctl.cancel;
        for record in records {
            tracing::error!(
                topic = %record.topic, partition = record.partition, offset = record.offset,
                error = %failure.message, "runtime failure below the service: dead-lettering the record"
            );
            match AssertUnwindSafe(dispose(policy, writer, record, &failure, 0, cancel))
                .catch_unwind()
                .await
            {
                Ok(true) => {}
                Ok(false) => return Some(false),
                Err(again) => {
                    self.ctl.fail(dead_letter_failed(record, &failure, &*again));
                    return None;
                }
            }
        }
        Some(true)
    }
}

/// Why a lane stops: its record's dead letter, after a panic of the
/// runtime's own code, panicked too.
pub(super) fn dead_letter_failed(
    record: &ConsumedRecord,
    failure: &super::outcome::Failure,
    again: &(dyn std::any::Any + Send),
) -> String {
    format!(
        "{}[{}]@{}: {}; its dead letter failed too: {}",
        record.topic,
        record.partition,
        record.offset,
        failure.message,
        panic_failure(again).message
    )
}

/// The index of the first waiting record whose key is neither being served
/// nor preceded by a waiting record of the same key.
fn first_ready_by_key(
    waiting: &VecDeque<ConsumedRecord>,
    busy: &HashSet<Option<Bytes>>,
) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex as StdMutex;

    use http::{Request, Response, StatusCode};

    use super::*;
    use crate::runtime::config::RetryPolicy;
    use crate::runtime::stats::RuntimeStats;
    use crate::RecordBody;

    struct VecSource(VecDeque<ConsumedRecord>);

    impl RecordSource for VecSource {
        fn next_ready(&mut self) -> Option<ConsumedRecord> {
            self.0.pop_front()
        }
    }

    fn shared(ordering: Ordering, lookahead: usize, max_in_flight: usize) -> Arc<LaneShared> {
        Arc::new(LaneShared {
            policy: AttemptPolicy {
                group: Arc::from("g"),
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                max_error_len: 64,
                stats: Arc::new(RuntimeStats::default()),
                context: None,
            },
            ordering,
            lookahead,
            in_flight: InFlightLimit::new(max_in_flight),
            dead_letter: None,
            exits: Bell::default(),
        })
    }

    fn rec(offset: i64, key: &'static str) -> ConsumedRecord {
        ConsumedRecord::builder("t", 0, offset)
            .key(Some(Bytes::from_static(key.as_bytes())))
            .payload(Some(Bytes::from_static(b"p")))
            .build()
    }

    /// Serves `records` through a lane whose service holds each call until
    /// the test releases it; returns the order of calls as (key, offset).
    #[derive(Clone, Default)]
    struct Log(Arc<StdMutex<Vec<(String, i64)>>>);

    fn logging(log: Log, gate: Arc<tokio::sync::Semaphore>) -> impl RecordService {
        tower::service_fn(move |req: Request<RecordBody>| {
            let log = log.clone();
            let gate = gate.clone();
            async move {
                let meta = req.extensions().get::<crate::RecordMeta>().unwrap().clone();
                let key = String::from_utf8(meta.key().unwrap().to_vec()).unwrap();
                log.0.lock().unwrap().push((key, meta.offset()));
                gate.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
    }

    /// Yields to the lane until `cond` holds; fails instead of hanging if
    /// it never does (the lane runs on the same single-threaded runtime, so
    /// a bounded number of turns is enough: this is not a timeout).
    async fn until(mut cond: impl FnMut() -> bool) {
        for _ in 0..100_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the lane never reached the expected state");
    }

    #[tokio::test]
    async fn key_mode_runs_different_keys_at_once_and_one_key_in_order() {
        let shared = shared(Ordering::Key, 16, 16);
        let log = Log::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let records = [
            rec(0, "a"),
            rec(1, "a"),
            rec(2, "b"),
            rec(3, "c"),
            rec(4, "b"),
        ];
        let ctl = Arc::new(LaneControl::new());
        let lane = tokio::spawn(run_lane(
            shared.clone(),
            Records(logging(log.clone(), gate.clone())),
            (Arc::from("t"), 0),
            VecSource(records.into_iter().collect()),
            Arc::new(Notify::new()),
            ctl.clone(),
        ));
        // a@0, b@2 and c@3 start at once; a@1 and b@4 wait for their key.
        until(|| log.0.lock().unwrap().len() == 3).await;
        assert_eq!(
            *log.0.lock().unwrap(),
            vec![("a".into(), 0), ("b".into(), 2), ("c".into(), 3)]
        );
        assert_eq!(ctl.commit_point(), None, "nothing finished yet");
        gate.add_permits(5);
        until(|| ctl.progress().0 == 5).await;
        let calls = log.0.lock().unwrap().clone();
        let pos = |k: &str, o: i64| calls.iter().position(|c| c.0 == k && c.1 == o).unwrap();
        assert!(pos("a", 0) < pos("a", 1));
        assert!(pos("b", 2) < pos("b", 4));
        assert_eq!(ctl.commit_point(), Some(5), "every record finished");
        ctl.cancel.cancel();
        lane.await.unwrap();
        assert!(ctl.has_exited());
        assert!(ctl.failure().is_none());
    }

    #[tokio::test]
    async fn key_mode_commits_only_the_contiguous_prefix() {
        let shared = shared(Ordering::Key, 16, 16);
        let finish_first = Arc::new(tokio::sync::Semaphore::new(0));
        let service = {
            let finish_first = finish_first.clone();
            tower::service_fn(move |req: Request<RecordBody>| {
                let finish_first = finish_first.clone();
                async move {
                    if req
                        .extensions()
                        .get::<crate::RecordMeta>()
                        .unwrap()
                        .offset()
                        == 0
                    {
                        finish_first.acquire().await.unwrap().forget();
                    }
                    Ok::<_, Infallible>(Response::new(String::new()))
                }
            })
        };
        let ctl = Arc::new(LaneControl::new());
        let lane = tokio::spawn(run_lane(
            shared,
            Records(service),
            (Arc::from("t"), 0),
            VecSource(
                [rec(0, "a"), rec(1, "b"), rec(2, "c")]
                    .into_iter()
                    .collect(),
            ),
            Arc::new(Notify::new()),
            ctl.clone(),
        ));
        until(|| ctl.progress().0 == 2).await;
        assert_eq!(
            ctl.commit_point(),
            Some(0),
            "offsets 1 and 2 are done, 0 is not: nothing past 0 may be committed"
        );
        finish_first.add_permits(1);
        until(|| ctl.progress().0 == 3).await;
        assert_eq!(ctl.commit_point(), Some(3));
        ctl.cancel.cancel();
        lane.await.unwrap();
    }

    #[tokio::test]
    async fn partition_mode_serves_one_at_a_time_in_offset_order() {
        let shared = shared(Ordering::Partition, 1, 16);
        let log = Log::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let ctl = Arc::new(LaneControl::new());
        let lane = tokio::spawn(run_lane(
            shared,
            Records(logging(log.clone(), gate.clone())),
            (Arc::from("t"), 0),
            VecSource(
                [rec(3, "a"), rec(4, "b"), rec(4, "b"), rec(7, "c")]
                    .into_iter()
                    .collect(),
            ),
            Arc::new(Notify::new()),
            ctl.clone(),
        ));
        until(|| log.0.lock().unwrap().len() == 1).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(log.0.lock().unwrap().len(), 1, "one record at a time");
        assert_eq!(ctl.progress(), (0, true), "busy with the first record");
        gate.add_permits(3);
        until(|| ctl.progress().0 == 3).await;
        let offsets: Vec<i64> = log.0.lock().unwrap().iter().map(|c| c.1).collect();
        assert_eq!(
            offsets,
            vec![3, 4, 7],
            "in order; a record delivered twice served once"
        );
        assert_eq!(ctl.commit_point(), Some(8));
        assert_eq!(ctl.progress(), (3, false));
        ctl.cancel.cancel();
        lane.await.unwrap();
    }

    #[tokio::test]
    async fn max_in_flight_bounds_records_over_all_lanes() {
        let shared = shared(Ordering::Key, 16, 2);
        let log = Log::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let ctl = Arc::new(LaneControl::new());
        let lane = tokio::spawn(run_lane(
            shared.clone(),
            Records(logging(log.clone(), gate.clone())),
            (Arc::from("t"), 0),
            VecSource(
                [rec(0, "a"), rec(1, "b"), rec(2, "c"), rec(3, "d")]
                    .into_iter()
                    .collect(),
            ),
            Arc::new(Notify::new()),
            ctl.clone(),
        ));
        until(|| log.0.lock().unwrap().len() == 2).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(log.0.lock().unwrap().len(), 2, "two permits, two calls");
        assert_eq!(shared.policy.stats.in_flight(), 2);
        gate.add_permits(4);
        until(|| ctl.progress().0 == 4).await;
        assert_eq!(
            shared.in_flight.used.load(Relaxed),
            0,
            "every permit returned"
        );
        ctl.cancel.cancel();
        lane.await.unwrap();
    }

    #[tokio::test]
    async fn partition_lanes_share_max_in_flight_and_give_it_back_when_idle() {
        let shared = shared(Ordering::Partition, 1, 1);
        let log = Log::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let lanes: Vec<_> = [("a", 0), ("b", 1)]
            .into_iter()
            .map(|(key, partition)| {
                let ctl = Arc::new(LaneControl::new());
                let lane = tokio::spawn(run_lane(
                    shared.clone(),
                    Records(logging(log.clone(), gate.clone())),
                    (Arc::from("t"), partition),
                    VecSource((0..3).map(|o| rec(o, key)).collect()),
                    Arc::new(Notify::new()),
                    ctl.clone(),
                ));
                (ctl, lane)
            })
            .collect();
        until(|| log.0.lock().unwrap().len() == 1).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(log.0.lock().unwrap().len(), 1, "one slot, one call");
        gate.add_permits(6);
        until(|| lanes.iter().all(|(ctl, _)| ctl.progress().0 == 3)).await;
        let served = log.0.lock().unwrap().clone();
        for key in ["a", "b"] {
            let offsets: Vec<i64> = served
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, o)| *o)
                .collect();
            assert_eq!(offsets, vec![0, 1, 2], "lane {key}: every record, in order");
        }
        // Both lanes are idle now: neither keeps the slot while it waits.
        until(|| shared.in_flight.used.load(Relaxed) == 0).await;
        assert_eq!(shared.policy.stats.in_flight(), 0);
        for (ctl, lane) in lanes {
            ctl.cancel.cancel();
            lane.await.unwrap();
        }
    }

    /// A batch service that logs each call's offsets and answers per
    /// record with `answer(offset, attempt)` (`None`: succeeded).
    fn batching(
        calls: Arc<StdMutex<Vec<Vec<i64>>>>,
        answer: fn(i64, u32) -> Option<StatusCode>,
    ) -> impl BatchService {
        tower::service_fn(move |req: Request<crate::runtime::RecordBatch>| {
            let meta = req
                .extensions()
                .get::<crate::runtime::BatchMeta>()
                .unwrap()
                .clone();
            let offsets: Vec<i64> = req
                .body()
                .iter()
                .map(|r| {
                    let m = r.extensions().get::<crate::RecordMeta>().unwrap();
                    assert_eq!(
                        m.attempt(),
                        meta.attempt(),
                        "records carry the batch's attempt"
                    );
                    m.offset()
                })
                .collect();
            assert_eq!(meta.first_offset(), offsets[0]);
            assert_eq!(meta.last_offset(), *offsets.last().unwrap());
            let mut outcome = crate::runtime::BatchOutcome::new();
            for &o in &offsets {
                if let Some(status) = answer(o, meta.attempt()) {
                    outcome.fail(o, status, format!("offset {o}"));
                }
            }
            calls.lock().unwrap().push(offsets);
            async move { Ok::<_, Infallible>(outcome.into_response::<String>()) }
        })
    }

    fn batch_lane(
        shared: &Arc<LaneShared>,
        service: impl BatchService,
        records: impl IntoIterator<Item = ConsumedRecord>,
        max_batch: usize,
    ) -> (Arc<LaneControl>, tokio::task::JoinHandle<()>) {
        let ctl = Arc::new(LaneControl::new());
        let lane = tokio::spawn(run_lane(
            shared.clone(),
            Batches {
                service,
                max_batch,
                max_delay: Duration::ZERO,
            },
            (Arc::from("t"), 0),
            VecSource(records.into_iter().collect()),
            Arc::new(Notify::new()),
            ctl.clone(),
        ));
        (ctl, lane)
    }

    #[tokio::test]
    async fn batches_take_up_to_max_batch_records_in_order() {
        let shared = shared(Ordering::Partition, 1, 4);
        let calls = Arc::new(StdMutex::new(Vec::new()));
        let (ctl, lane) = batch_lane(
            &shared,
            batching(calls.clone(), |_, _| None),
            (0..7).map(|o| rec(o, "k")),
            3,
        );
        until(|| ctl.progress().0 == 7).await;
        assert_eq!(
            *calls.lock().unwrap(),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]
        );
        assert_eq!(ctl.commit_point(), Some(7));
        assert_eq!(shared.policy.stats.succeeded(), 7);
        ctl.cancel.cancel();
        lane.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_retries_only_its_failed_records_and_disposes_of_the_permanent_ones() {
        let mut shared = shared(Ordering::Partition, 1, 4);
        Arc::get_mut(&mut shared).unwrap().policy.retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            hold: Duration::ZERO,
            ..RetryPolicy::default()
        };
        let calls = Arc::new(StdMutex::new(Vec::new()));
        // 1: 503 once, then fine. 2: 422 (permanent). 4: 503 always.
        let answer = |offset, attempt| match (offset, attempt) {
            (1, 1) => Some(StatusCode::SERVICE_UNAVAILABLE),
            (2, _) => Some(StatusCode::UNPROCESSABLE_ENTITY),
            (4, _) => Some(StatusCode::SERVICE_UNAVAILABLE),
            _ => None,
        };
        let (ctl, lane) = batch_lane(
            &shared,
            batching(calls.clone(), answer),
            (0..6).map(|o| rec(o, "k")),
            5,
        );
        until(|| ctl.progress().0 == 6).await;
        assert_eq!(
            *calls.lock().unwrap(),
            vec![vec![0, 1, 2, 3, 4], vec![1, 4], vec![4], vec![5]],
            "the retries hold only the records that failed retryably, in order; \
             the next batch starts after them"
        );
        let stats = &shared.policy.stats;
        assert_eq!(stats.succeeded(), 4, "0, 1, 3 and 5");
        assert_eq!(stats.skipped(), 2, "2 (permanent) and 4 (out of attempts)");
        assert_eq!(stats.attempts(), 5 + 2 + 1 + 1);
        assert_eq!(ctl.commit_point(), Some(6));
        ctl.cancel.cancel();
        lane.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_answered_without_an_outcome_succeeds_or_fails_whole() {
        let shared = shared(Ordering::Partition, 1, 4);
        let calls = Arc::new(StdMutex::new(0));
        let counted = calls.clone();
        let service = tower::service_fn(move |req: Request<crate::runtime::RecordBatch>| {
            *counted.lock().unwrap() += 1;
            let bad = req.body().iter().any(|r| r.body().payload().is_none());
            async move {
                let mut res = Response::new(String::new());
                if bad {
                    *res.status_mut() = StatusCode::BAD_REQUEST;
                }
                Ok::<_, Infallible>(res)
            }
        });
        let tombstone = ConsumedRecord::builder("t", 0, 2).build();
        let (ctl, lane) = batch_lane(
            &shared,
            service,
            [rec(0, "a"), rec(1, "b"), tombstone, rec(3, "c")],
            2,
        );
        until(|| ctl.progress().0 == 4).await;
        assert_eq!(*calls.lock().unwrap(), 2, "no retry of a 400");
        assert_eq!(shared.policy.stats.succeeded(), 2);
        assert_eq!(shared.policy.stats.skipped(), 2, "the whole second batch");
        ctl.cancel.cancel();
        lane.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_record_without_dead_letters_is_skipped_and_committed() {
        let shared = shared(Ordering::Partition, 1, 4);
        let service = tower::service_fn(|_req: Request<RecordBody>| async {
            let mut res = Response::new(String::new());
            *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok::<_, Infallible>(res)
        });
        let ctl = Arc::new(LaneControl::new());
        let lane = tokio::spawn(run_lane(
            shared.clone(),
            Records(service),
            (Arc::from("t"), 0),
            VecSource([rec(0, "a")].into_iter().collect()),
            Arc::new(Notify::new()),
            ctl.clone(),
        ));
        until(|| ctl.progress().0 == 1).await;
        assert_eq!(shared.policy.stats.skipped(), 1);
        assert_eq!(ctl.commit_point(), Some(1));
        ctl.cancel.cancel();
        lane.await.unwrap();
    }

    /// A source the test adds records to while the lane runs.
    #[derive(Clone, Default)]
    struct SharedSource(Arc<StdMutex<VecDeque<ConsumedRecord>>>);

    impl RecordSource for SharedSource {
        fn next_ready(&mut self) -> Option<ConsumedRecord> {
            self.0.lock().unwrap().pop_front()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn key_mode_starts_no_other_key_while_a_record_holds_the_partition() {
        let mut shared = shared(Ordering::Key, 16, 16);
        {
            let retry = &mut Arc::get_mut(&mut shared).unwrap().policy.retry;
            retry.initial_backoff = Duration::from_secs(1);
            retry.max_backoff = Duration::from_secs(1);
            retry.hold = Duration::from_secs(3600);
        }
        let outage = Arc::new(AtomicBool::new(true));
        let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel::<(String, i64)>();
        let service = {
            let outage = outage.clone();
            tower::service_fn(move |req: Request<RecordBody>| {
                let meta = req.extensions().get::<crate::RecordMeta>().unwrap().clone();
                let key = String::from_utf8(meta.key().unwrap().to_vec()).unwrap();
                let down = outage.load(Relaxed);
                calls_tx.send((key, meta.offset())).unwrap();
                async move {
                    let mut res = Response::new(String::new());
                    if down {
                        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    Ok::<_, Infallible>(res)
                }
            })
        };
        let mut next_call = async || {
            tokio::time::timeout(Duration::from_secs(3600), calls.recv())
                .await
                .expect("the lane calls the service again")
                .expect("the service lives")
        };
        let source = SharedSource::default();
        source.0.lock().unwrap().push_back(rec(0, "a"));
        let wake = Arc::new(Notify::new());
        let ctl = Arc::new(LaneControl::new());
        let lane = tokio::spawn(run_lane(
            shared.clone(),
            Records(service),
            (Arc::from("t"), 0),
            source.clone(),
            wake.clone(),
            ctl.clone(),
        ));
        // max_attempts is 1: the first failure holds.
        assert_eq!(next_call().await, ("a".into(), 0));
        assert_eq!(next_call().await, ("a".into(), 0));
        assert_eq!(shared.policy.stats.held(), 1);
        // Another key arrives during the outage: it is taken, not started.
        source.0.lock().unwrap().push_back(rec(1, "b"));
        wake.notify_one();
        for _ in 0..3 {
            assert_eq!(
                next_call().await,
                ("a".into(), 0),
                "only the held record is retried"
            );
        }
        outage.store(false, Relaxed);
        assert_eq!(next_call().await, ("a".into(), 0));
        assert_eq!(
            next_call().await,
            ("b".into(), 1),
            "served once the hold ended"
        );
        until(|| ctl.progress().0 == 2).await;
        assert_eq!(ctl.commit_point(), Some(2));
        let stats = &shared.policy.stats;
        assert_eq!((stats.holds(), stats.held(), stats.skipped()), (1, 0, 0));
        ctl.cancel.cancel();
        lane.await.unwrap();
    }
}
