//! Event sourcing and CQRS on Kafka alone, in Tower form.

mod hosts;
pub mod partitioner;
mod restore;
pub mod store;
mod streams;

pub use store::{StateStore, StoreKind, StoreStats, StoreStatsSnapshot};
pub use streams::{
    Lookup, NotRestored, Stateful, StatefulFuture, StatefulLayer, Streams, StreamsBuilder,
    StreamsError,
};
