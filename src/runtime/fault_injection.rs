//! Hooks for the project's own fault tests (feature `fault-injection`):
//! they make the runtime fail in ways a broker rarely does on demand.
//! Never enable the feature in a service.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

static FATAL_NEXT_TRANSACTION: AtomicBool = AtomicBool::new(false);

/// The next transaction the exactly-once mode begins (in this process)
/// gets a fatal producer error from librdkafka (`rd_kafka_test_fatal_error`)
/// right after it began, as a producer whose epoch the broker refused would.
pub fn make_next_transaction_fatal() {
    FATAL_NEXT_TRANSACTION.store(true, SeqCst);
}

/// Whether the next transaction must fail fatally (asked once).
pub(crate) fn take_fatal_next_transaction() -> bool {
    FATAL_NEXT_TRANSACTION.swap(false, SeqCst)
}
