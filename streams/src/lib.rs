#![doc = include_str!("../docs/crate.md")]

pub mod aggregate;
mod hosts;
pub mod partitioner;
pub mod projection;
#[cfg(feature = "axum")]
pub mod query;
mod restore;
mod store;
mod streams;

pub use store::{StateStore, StoreKind, StoreStats, StoreStatsSnapshot};
pub use streams::{
    Lookup, NotRestored, Stateful, StatefulFuture, StatefulLayer, Streams, StreamsBuilder,
    StreamsError,
};
