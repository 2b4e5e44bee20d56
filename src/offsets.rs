//! See [`OffsetTracker`].

use std::collections::VecDeque;

/// [`OffsetTracker`]: which offset of a partition may be committed.
///
/// Records of a partition are dispatched in offset order but may finish in
/// any order (per-key ordering lets records of different keys overtake each
/// other). Committing offset `n` tells Kafka that every record before `n` is
/// done, so the tracker only ever offers the end of the *contiguous finished
/// prefix*: the lowest offset still in flight, or one past the highest
/// dispatched offset when nothing is in flight.
///
/// ```
/// use kafka_tower::OffsetTracker;
///
/// let mut t = OffsetTracker::new();
/// for o in [10, 11, 12] { t.dispatched(o); }
/// t.finished(12);
/// assert_eq!(t.commit_point(), Some(10)); // 10 and 11 still running
/// t.finished(10);
/// assert_eq!(t.commit_point(), Some(11));
/// t.finished(11);
/// assert_eq!(t.commit_point(), Some(13)); // all done: commit past the last
/// ```
///
/// Tracks dispatched and finished offsets of one partition (see above).
///
/// Offsets need not be contiguous (compaction and transaction markers leave
/// gaps) but must be dispatched in increasing order. Memory is proportional
/// to the number of records between the oldest unfinished one and the
/// newest dispatched one; the steady state allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    // (offset, finished) in dispatch order; the front is never finished.
    window: VecDeque<(i64, bool)>,
    next: Option<i64>,
    committed: Option<i64>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was handed to the service.
    ///
    /// # Panics
    ///
    /// If `offset` is not greater than every offset dispatched before: the
    /// runtime starts a fresh tracker whenever a partition is (re)assigned.
    pub fn dispatched(&mut self, offset: i64) {
        if let Some(next) = self.next {
            assert!(
                offset >= next,
                "offset {offset} dispatched after {}",
                next - 1
            );
        }
        self.window.push_back((offset, false));
        self.next = Some(offset + 1);
    }

    /// Records that `offset` is finished (handled, or disposed of by the
    /// error policy). Returns `false` if `offset` was not in flight.
    pub fn finished(&mut self, offset: i64) -> bool {
        let Ok(idx) = self.window.binary_search_by_key(&offset, |(o, _)| *o) else {
            return false;
        };
        if self.window[idx].1 {
            return false;
        }
        self.window[idx].1 = true;
        while matches!(self.window.front(), Some((_, true))) {
            self.window.pop_front();
        }
        true
    }

    /// The offset to commit: everything before it is finished. `None` until
    /// something was dispatched.
    pub fn commit_point(&self) -> Option<i64> {
        match self.window.front() {
            Some((o, _)) => Some(*o),
            None => self.next,
        }
    }

    /// The commit point if it moved past the last offset taken this way,
    /// remembering it as committed.
    pub fn take_commit(&mut self) -> Option<i64> {
        let point = self.commit_point()?;
        if self.committed.is_some_and(|c| c >= point) {
            return None;
        }
        self.committed = Some(point);
        Some(point)
    }

    /// One past the highest offset dispatched so far, if any: the lowest
    /// offset [`OffsetTracker::dispatched`] accepts next.
    pub fn next_expected(&self) -> Option<i64> {
        self.next
    }

    /// How many records are dispatched and not finished.
    pub fn in_flight(&self) -> usize {
        self.window.iter().filter(|(_, done)| !done).count()
    }

    /// Whether every dispatched record is finished.
    pub fn is_idle(&self) -> bool {
        self.window.is_empty()
    }
}
