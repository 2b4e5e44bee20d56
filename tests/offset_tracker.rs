//! Unit tests and properties of `OffsetTracker`: the commit point is the
//! smallest unfinished offset, or one past the last dispatched one when
//! everything is finished, and never moves backwards.

use std::collections::BTreeSet;

use kafka_tower::OffsetTracker;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------

#[test]
fn empty_tracker_has_no_commit_point() {
    let mut t = OffsetTracker::new();
    assert_eq!(t.commit_point(), None);
    assert_eq!(t.take_commit(), None);
    assert_eq!(t.in_flight(), 0);
    assert!(t.is_idle());
    assert!(!t.finished(0), "nothing was dispatched");
}

#[test]
fn out_of_order_completion_waits_for_the_oldest() {
    let mut t = OffsetTracker::new();
    for o in [10, 11, 12] {
        t.dispatched(o);
    }
    assert_eq!(t.commit_point(), Some(10));
    assert_eq!(t.in_flight(), 3);

    assert!(t.finished(12));
    assert_eq!(t.commit_point(), Some(10), "10 and 11 still running");
    assert_eq!(t.in_flight(), 2);
    assert!(!t.is_idle());

    assert!(t.finished(10));
    assert_eq!(t.commit_point(), Some(11));

    assert!(t.finished(11));
    assert_eq!(t.commit_point(), Some(13), "all done: one past the last");
    assert_eq!(t.in_flight(), 0);
    assert!(t.is_idle());
}

/// Compaction and transaction markers leave gaps: the commit point jumps
/// over them.
#[test]
fn gaps_are_skipped() {
    let mut t = OffsetTracker::new();
    for o in [3, 7, 20] {
        t.dispatched(o);
    }
    assert!(t.finished(3));
    assert_eq!(t.commit_point(), Some(7));
    assert!(t.finished(20));
    assert_eq!(t.commit_point(), Some(7));
    assert!(t.finished(7));
    assert_eq!(t.commit_point(), Some(21));

    // A later dispatch after a gap: the commit point is that offset.
    t.dispatched(30);
    assert_eq!(t.commit_point(), Some(30));
    assert!(t.finished(30));
    assert_eq!(t.commit_point(), Some(31));
}

#[test]
fn take_commit_returns_each_new_point_once() {
    let mut t = OffsetTracker::new();
    t.dispatched(0);
    t.dispatched(1);
    assert_eq!(t.take_commit(), Some(0));
    assert_eq!(t.take_commit(), None, "not moved");

    assert!(t.finished(1));
    assert_eq!(t.take_commit(), None, "0 still running");

    assert!(t.finished(0));
    assert_eq!(t.take_commit(), Some(2));
    assert_eq!(t.take_commit(), None);
    assert_eq!(
        t.commit_point(),
        Some(2),
        "take_commit does not move the point"
    );

    t.dispatched(2);
    assert_eq!(t.take_commit(), None, "2 is where it already was");
    t.dispatched(5);
    assert!(t.finished(2));
    assert_eq!(t.take_commit(), Some(5));
    assert!(t.finished(5));
    assert_eq!(t.take_commit(), Some(6));
    assert_eq!(t.take_commit(), None);
}

#[test]
fn finishing_an_unknown_offset_returns_false() {
    let mut t = OffsetTracker::new();
    for o in [5, 8, 9] {
        t.dispatched(o);
    }
    for unknown in [i64::MIN, -1, 0, 4, 6, 7, 10, 1_000, i64::MAX] {
        assert!(!t.finished(unknown), "{unknown} was never dispatched");
    }
    assert_eq!(t.commit_point(), Some(5));
    assert_eq!(t.in_flight(), 3);
}

#[test]
fn finishing_twice_returns_false() {
    let mut t = OffsetTracker::new();
    for o in [1, 2, 3] {
        t.dispatched(o);
    }
    // Finished but still in the window (1 is running).
    assert!(t.finished(2));
    assert!(!t.finished(2));
    assert_eq!(t.in_flight(), 2);
    assert_eq!(t.commit_point(), Some(1));
    // Finished and already behind the commit point.
    assert!(t.finished(1));
    assert!(!t.finished(1));
    assert!(!t.finished(2));
    assert_eq!(t.commit_point(), Some(3));
    assert!(t.finished(3));
    assert!(!t.finished(3));
    assert_eq!(t.commit_point(), Some(4));
    assert_eq!(t.in_flight(), 0);
}

#[test]
#[should_panic(expected = "dispatched after")]
fn dispatching_the_same_offset_twice_panics() {
    let mut t = OffsetTracker::new();
    t.dispatched(4);
    t.dispatched(4);
}

#[test]
#[should_panic(expected = "dispatched after")]
fn dispatching_a_lower_offset_panics() {
    let mut t = OffsetTracker::new();
    t.dispatched(4);
    t.dispatched(9);
    t.dispatched(5);
}

#[test]
#[should_panic(expected = "dispatched after")]
fn dispatching_below_a_finished_offset_panics() {
    let mut t = OffsetTracker::new();
    t.dispatched(4);
    assert!(t.finished(4));
    t.dispatched(3);
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Increasing offsets with gaps (0 to 4 missing offsets between two).
fn offsets() -> impl Strategy<Value = Vec<i64>> {
    (
        0..1_000_000_000_000i64,
        prop::collection::vec(1..=5i64, 1..=64),
    )
        .prop_map(|(start, steps)| {
            steps
                .iter()
                .scan(start, |o, step| {
                    let cur = *o;
                    *o += step;
                    Some(cur)
                })
                .collect()
        })
}

/// What the commit point must be, from the model.
fn expected_point(unfinished: &BTreeSet<i64>, last_dispatched: Option<i64>) -> Option<i64> {
    unfinished
        .first()
        .copied()
        .or(last_dispatched.map(|o| o + 1))
}

/// An operation on the tracker: dispatch the next offset, finish one of the
/// in-flight offsets (chosen by index), finish something that is not in
/// flight, or take the commit.
#[derive(Debug, Clone)]
enum Op {
    Dispatch,
    Finish(prop::sample::Index),
    FinishStale(prop::sample::Index),
    Take,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(Op::Dispatch),
            3 => any::<prop::sample::Index>().prop_map(Op::Finish),
            1 => any::<prop::sample::Index>().prop_map(Op::FinishStale),
            1 => Just(Op::Take),
        ],
        0..=200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Dispatch everything, then finish in an arbitrary order: after each
    /// `finished` the commit point is the smallest unfinished offset (or one
    /// past the last when all are finished) and never moves backwards.
    #[test]
    fn commit_point_is_smallest_unfinished(
        (offsets, order) in offsets().prop_flat_map(|o| {
            let order = Just(o.clone()).prop_shuffle();
            (Just(o), order)
        })
    ) {
        let mut t = OffsetTracker::new();
        for &o in &offsets {
            t.dispatched(o);
        }
        let last = *offsets.last().unwrap();
        let mut unfinished: BTreeSet<i64> = offsets.iter().copied().collect();
        prop_assert_eq!(t.commit_point(), Some(offsets[0]));
        let mut previous = t.commit_point();
        for o in order {
            prop_assert!(t.finished(o), "{} is in flight", o);
            unfinished.remove(&o);
            let point = t.commit_point();
            prop_assert_eq!(point, expected_point(&unfinished, Some(last)));
            prop_assert!(point >= previous, "moved back from {:?} to {:?}", previous, point);
            prop_assert_eq!(t.in_flight(), unfinished.len());
            previous = point;
        }
        prop_assert_eq!(t.commit_point(), Some(last + 1));
        prop_assert!(t.is_idle());
    }

    /// Dispatches, completions, stale completions and `take_commit`
    /// interleaved at random, checked against a model after every step.
    #[test]
    fn interleaved_operations_match_the_model(offsets in offsets(), ops in ops()) {
        let mut t = OffsetTracker::new();
        let mut next = 0usize; // index into `offsets` of the next dispatch
        let mut unfinished = BTreeSet::new();
        let mut done = Vec::new(); // finished offsets
        let mut last_dispatched = None;
        let mut last_taken: Option<i64> = None;
        let mut previous = None;

        for op in ops {
            match op {
                Op::Dispatch => {
                    let Some(&o) = offsets.get(next) else { continue };
                    t.dispatched(o);
                    next += 1;
                    unfinished.insert(o);
                    last_dispatched = Some(o);
                }
                Op::Finish(i) => {
                    if unfinished.is_empty() {
                        continue;
                    }
                    let o = *unfinished.iter().nth(i.index(unfinished.len())).unwrap();
                    prop_assert!(t.finished(o), "{} is in flight", o);
                    unfinished.remove(&o);
                    done.push(o);
                }
                Op::FinishStale(i) => {
                    // An offset already finished, or one never dispatched
                    // (in a gap, or not dispatched yet).
                    let mut stale: Vec<i64> = done.clone();
                    stale.extend(offsets[next..].iter().copied());
                    stale.push(offsets[0] - 1);
                    stale.extend(offsets.windows(2).filter(|w| w[1] > w[0] + 1).map(|w| w[0] + 1));
                    let o = stale[i.index(stale.len())];
                    prop_assert!(!t.finished(o), "{} is not in flight", o);
                }
                Op::Take => {
                    let expected = expected_point(&unfinished, last_dispatched)
                        .filter(|p| last_taken.is_none_or(|l| *p > l));
                    prop_assert_eq!(t.take_commit(), expected);
                    if expected.is_some() {
                        last_taken = expected;
                    }
                    prop_assert_eq!(t.take_commit(), None, "a point is taken once");
                }
            }
            let point = t.commit_point();
            prop_assert_eq!(point, expected_point(&unfinished, last_dispatched));
            prop_assert!(point >= previous, "moved back from {:?} to {:?}", previous, point);
            previous = point;
            prop_assert_eq!(t.in_flight(), unfinished.len());
            prop_assert_eq!(t.is_idle(), unfinished.is_empty());
        }
    }
}

#[test]
fn next_expected_is_one_past_the_highest_dispatched() {
    let mut t = OffsetTracker::new();
    assert_eq!(t.next_expected(), None);
    t.dispatched(5);
    t.dispatched(9);
    t.finished(9);
    assert_eq!(t.next_expected(), Some(10), "finishing does not move it");
    t.finished(5);
    assert_eq!(t.next_expected(), Some(10));
}
