//! Schema Registry records as a [Tower](https://docs.rs/tower) layer:
//! decode and validate Kafka records framed in the Confluent wire format
//! (magic byte `0`, 4-byte big-endian schema id, body) with their writer
//! schema from a Confluent-compatible registry, and encode values the same
//! way on the producing side.
//!
//! # A short tour
//!
//! * **[`RegistryClient`]**: the registry's REST API (Confluent Schema
//!   Registry, Apicurio Registry's `/apis/ccompat/v7`, Redpanda, Karapace):
//!   schemas by id cached for the life of the client (ids are immutable;
//!   concurrent misses make one fetch), latest versions with a TTL,
//!   registration, lookups, compatibility checks and rules; basic or bearer
//!   auth, `https` with extra CA certificates, timeouts and retries with
//!   typed [`RegistryError`]s.
//! * **[`RegistryLayer`]** (consuming side): per topic, the value (and/or
//!   the key) is unframed, its writer schema fetched (never waiting on a
//!   cached id), decoded and validated, optionally resolved into a local
//!   reader schema so the service sees one shape across versions. The
//!   result is a [`Decoded`] request extension ([`DecodedKey`] for keys);
//!   with [`json_body`](RegistryLayerBuilder::json_body) the body becomes
//!   the value as JSON.
//! * **Refusals, not errors**: `not_framed` (400), `unknown_schema_id`,
//!   `subject_mismatch`, `decode_failed`, `invalid`, `unsupported_schema`
//!   (422), `too_large` (413) — dead-lettered byte-exact by the kafka-tower
//!   runtime with a [`kafka_tower::Refusal`] naming layer `registry` and
//!   the reason. A registry that is down (or refuses the service's
//!   credentials) makes a record with an uncached id answer
//!   `registry_unavailable` (503): the runtime retries it; nothing is
//!   dead-lettered for an outage.
//! * **[`Encoder`]** (producing side): a value encoded with a local schema
//!   registered under its subject ([`SubjectNameStrategy`]: topic name,
//!   record name, topic + record name), framed; for `OutgoingRecord`s too.
//!   Auto-registration is off unless asked for.
//! * **Startup check**: [`RegistryLayer::check_compatibility`] verifies that
//!   each local reader schema reads the subject's registered versions under
//!   the subject's rule, and fails naming the subject, the version and the
//!   first incompatible field.
//!
//! Formats: **Avro** (the `apache-avro` crate; only a full `can_read`
//! counts as compatible) and **JSON Schema** (validated by
//! `kafka-tower-schema`'s compiled validators). **Protobuf** subjects are
//! recognised but not decoded yet: their records are refused as
//! `unsupported_schema`. Schemas with references are refused the same way.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use kafka_tower::RecordBody;
//! use kafka_tower_registry::{Decoded, LocalSchema, RegistryClient, RegistryLayer};
//! use tower::{service_fn, ServiceBuilder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = RegistryClient::builder("http://localhost:8081").build()?;
//! let orders_v2 = LocalSchema::avro(r#"{"type":"record","name":"Order","fields":[
//!     {"name":"id","type":"string"},
//!     {"name":"currency","type":"string","default":"EUR"}]}"#)?;
//! let registry = RegistryLayer::builder(client)
//!     .value_reader("orders", orders_v2) // every version read as v2
//!     .enforce_subject(true)             // ids must be under orders-value
//!     .build();
//! let service = ServiceBuilder::new().layer(registry).service(service_fn(
//!     |req: Request<RecordBody>| async move {
//!         let order = req.extensions().get::<Decoded>().expect("decoded");
//!         println!("order written with schema {}", order.schema_id());
//!         Ok::<_, Infallible>(Response::new(String::new()))
//!     },
//! ));
//! # drop(service); Ok(()) }
//! ```
//!
//! # Limits
//!
//! * One Avro allocation (a string, bytes, an array or a map) may claim at
//!   most [`avro_allocation_limit`](RegistryLayerBuilder::avro_allocation_limit)
//!   (16 MiB by default); more is `decode_failed`, not allocated.
//! * The data of a recursive Avro schema (a list, a tree) may nest at most
//!   [`max_depth`](RegistryLayerBuilder::max_depth) levels; it is measured
//!   without recursion before it is decoded.
//!
//! # Cost
//!
//! With the schema id cached, a record costs the unframing, the Avro
//! decode (and resolution) and one boxed future: ≈ 1.6 µs for a 512-byte
//! order on a 2-core VM (`layer/registry_avro_512B_cached_id` in the
//! kafka-tower repository's `benches/layers.rs`).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod avro;
mod client;
mod compat;
mod decoded;
mod encode;
mod error;
mod layer;
mod schema;
mod service;
mod subject;
pub mod wire;

pub use client::{
    CompatibilityLevel, CompatibilityReport, RegistryClient, RegistryClientBuilder, SubjectVersion,
};
pub use compat::{check_schema, CheckError, Incompatibility};
pub use decoded::{ConvertError, Decoded, DecodedKey, DecodedValue};
pub use encode::{EncodeError, Encoder, EncoderBuilder};
pub use error::RegistryError;
pub use kafka_tower::refusal::RefusalBody;
pub use layer::{
    RegistryLayer, RegistryLayerBuilder, RejectKind, Rejection, DEFAULT_AVRO_ALLOCATION_LIMIT,
    DEFAULT_MAX_DEPTH, LAYER_NAME,
};
pub use schema::{LocalSchema, RegisteredSchema, SchemaError, SchemaType};
pub use service::{Registry, ResponseFuture};
pub use subject::{Part, SubjectNameStrategy};

/// Locks `m`, also after a panic elsewhere left it poisoned: every map
/// behind these locks is a cache that a half-done update cannot break.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
