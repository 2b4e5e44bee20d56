//! Event sourcing and CQRS on Kafka alone, in Tower form.
//!
//! Under construction: this crate will hold stateful processors with
//! changelog-backed state stores, projections into materialized views and
//! aggregates with transactional appends, built on the exactly-once mode of
//! the `kafka-tower` runtime.
