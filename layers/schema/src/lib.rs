//! JSON Schema validation of request bodies as a
//! [Tower](https://docs.rs/tower) layer, per Kafka topic or HTTP route.
//!
//! # A short tour
//!
//! * **A schema per topic**, from a file or inline, compiled once by
//!   [`build`](JsonSchemaLayerBuilder::build) with the `jsonschema` crate.
//!   The draft follows each schema's `$schema` (2020-12, 2019-09, 7, 6, 4).
//!   Relative `$ref`s resolve to local files next to the schema or in a
//!   [`schema_dir`](JsonSchemaLayerBuilder::schema_dir); nothing is ever
//!   fetched over the network. A missing file, invalid JSON, an invalid
//!   schema or an unresolvable `$ref` is a startup error naming the file.
//! * **Refusals, not errors.** A payload the schema rejects is answered
//!   `422` with reason `invalid` and the errors (instance path, schema path,
//!   message); one that is not UTF-8 or not JSON `400` with `not_utf8` or
//!   `not_json`; one over the size limit `413` with `too_large`. The
//!   response carries a [`kafka_tower::Refusal`] (layer `schema`, a bounded
//!   detail that goes into the dead-letter record's header) and the typed
//!   [`SchemaViolation`]; the body is
//!   `{"layer":"schema","reason":"invalid","detail":"…","errors":[…]}`.
//! * **Producer side.** [`JsonSchemaLayer::validate`] is the same check as
//!   a typed `Result`: validate before sending and nothing invalid reaches
//!   Kafka. As a layer in front of a producer service it refuses the same
//!   way, without calling the producer.
//! * The topic of a request is [`kafka_tower::RecordMeta::topic`] when it is
//!   a record, else the first segment of its URI path. Topics without a
//!   schema, and tombstones (`DELETE` with an empty body), pass unread.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use kafka_tower::{RecordBody, RecordMeta, Refusal};
//! use kafka_tower_schema::{JsonSchemaLayer, SchemaViolation};
//! use serde_json::json;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schemas = JsonSchemaLayer::builder()
//!     .schema("orders", json!({
//!         "$schema": "https://json-schema.org/draft/2020-12/schema",
//!         "type": "object",
//!         "required": ["id", "total"],
//!         "properties": { "id": {"type": "string"}, "total": {"type": "number", "minimum": 0} }
//!     }))
//!     .build()?;
//!
//! // Producer side: a typed error, nothing sent.
//! let err = schemas.validate("orders", br#"{"id":"o-1","total":-5}"#).unwrap_err();
//! assert_eq!(err.errors()[0].instance_path, "/total");
//!
//! // Consumer side: a layer in front of the service.
//! let service = ServiceBuilder::new().layer(schemas).service(service_fn(
//!     |_req: Request<RecordBody>| async { Ok::<_, Infallible>(Response::new(String::from("stored"))) },
//! ));
//! let mut req = Request::post("/orders").body(RecordBody::from(bytes::Bytes::from_static(b"{\"id\":7}")))?;
//! req.extensions_mut().insert(RecordMeta::new("orders", 0, 42));
//! let res = service.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
//! assert_eq!(res.extensions().get::<Refusal>().unwrap().reason(), "invalid");
//! assert_eq!(res.extensions().get::<SchemaViolation>().unwrap().total_errors(), 2);
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! | builder method | default | meaning |
//! |---|---|---|
//! | [`schema_file`](JsonSchemaLayerBuilder::schema_file) | — | topic → schema file; its folder may be `$ref`'d |
//! | [`schema`](JsonSchemaLayerBuilder::schema) | — | topic → inline schema document |
//! | [`schema_dir`](JsonSchemaLayerBuilder::schema_dir) | — | a further folder `$ref`s may load from (the base of inline schemas) |
//! | [`max_body_bytes`](JsonSchemaLayerBuilder::max_body_bytes) | 1 MiB | larger payloads are `too_large` (413), not read further |
//! | [`max_errors`](JsonSchemaLayerBuilder::max_errors) | 10 | schema errors listed in a refusal |
//! | [`max_detail_len`](JsonSchemaLayerBuilder::max_detail_len) | 1024 | bytes of the refusal detail (the DLQ header) |
//!
//! # Response body
//!
//! The service's response body is [`RefusalBody<ResBody>`]: the inner body
//! unchanged, or the refusal's JSON. It keeps the inner body's data and
//! error types, so it fits the kafka-tower consumer and axum routes alike.
//!
//! # Performance
//!
//! `cargo bench -p kafka-tower-schema` (`benches/validate.rs`), a ~1 KB
//! object against a ~20-property schema, on a 2-core CI-class VM:
//!
//! | path | time |
//! |---|---|
//! | [`JsonSchemaLayer::validate`] (UTF-8 check, JSON parse, schema check) | ≈ 2.8 µs |
//! | a whole `JsonSchema::call` on a record (read body, validate, call) | ≈ 3.6 µs |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod future;
mod layer;
mod service;
mod violation;

mod retriever;

pub use kafka_tower::refusal::RefusalBody;
pub use layer::{JsonSchemaLayer, JsonSchemaLayerBuilder, SchemaConfigError, LAYER_NAME};
pub use service::JsonSchema;
pub use violation::{SchemaViolation, ViolationDetail, ViolationKind};

/// The former name of [`ViolationDetail`] (a detail of a violation, not an
/// error).
#[deprecated(
    note = "renamed `ViolationDetail`: it is one detail of a `SchemaViolation`, not an error"
)]
pub type SchemaError = ViolationDetail;
