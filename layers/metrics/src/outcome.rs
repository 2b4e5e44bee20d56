//! [`Outcome`]: what became of one call, the `outcome` label. The rule is
//! the vocabulary's ([`kafka_tower::outcome`]), shared with the runtime,
//! the audit trail and the trace layer.

pub use kafka_tower::outcome::Outcome;

/// The position of `outcome` in [`Outcome::ALL`] (label order), for the
/// per-outcome counters (on every request: a match, not a search).
pub(crate) fn index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Ok => 0,
        Outcome::Refused => 1,
        Outcome::Failed => 2,
        Outcome::Retryable => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_counter() {
        let indexes: Vec<usize> = Outcome::ALL.iter().map(|o| index(*o)).collect();
        assert_eq!(indexes, [0, 1, 2, 3]);
    }
}
