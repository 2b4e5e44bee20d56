//! Records, tokens, schemas and layer stacks shared by the benches
//! (`benches/layers.rs`, `benches/alloc.rs`, `benches/e2e.rs`), so that the
//! in-process and end-to-end numbers measure the same records and layers.

#![allow(dead_code)] // each bench uses a part

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use kafka_tower::{ConsumedRecord, RawHeader, TimestampType};
use kafka_tower_jwt::{Algorithm, JwtLayer, VerificationKey};
use kafka_tower_schema::JsonSchemaLayer;
use serde_json::json;

/// The topic every bench record belongs to.
pub(crate) const TOPIC: &str = "orders";
/// The HS256 secret the bench tokens are signed with.
pub(crate) const SECRET: &[u8] = b"bench-shared-secret-0123456789abcdef";
/// Payload size of the bench records.
pub(crate) const PAYLOAD_LEN: usize = 512;

/// The Avro schema of the bench orders (the fields of [`order_payload`]).
pub(crate) const ORDER_AVRO: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"string"},
    {"name":"status","type":{"type":"enum","name":"Status","symbols":["new","paid","shipped"]}},
    {"name":"total","type":"double"},
    {"name":"currency","type":"string"},
    {"name":"customer","type":"string"},
    {"name":"paid","type":"boolean"},
    {"name":"items","type":{"type":"array","items":{"type":"record","name":"Item",
        "fields":[{"name":"sku","type":"string"},{"name":"qty","type":"int"}]}}},
    {"name":"note","type":"string"}]}"#;

/// The schema id the bench registry client holds [`ORDER_AVRO`] under.
pub(crate) const ORDER_AVRO_ID: u32 = 1;

/// The order of [`order_payload`] in the Confluent wire format (magic
/// byte, [`ORDER_AVRO_ID`], Avro body), `len` bytes framed.
pub(crate) fn avro_order_payload(len: usize) -> Bytes {
    let schema = kafka_tower_registry::LocalSchema::avro(ORDER_AVRO).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&order_payload(0)).unwrap();
    let empty = 5 + schema.encode(&v).unwrap().len();
    // The note's length prefix grows by a byte at 64 characters.
    let mut pad = len.saturating_sub(empty + 1);
    loop {
        v["note"] = json!("n".repeat(pad));
        let framed = kafka_tower_registry::wire::frame(ORDER_AVRO_ID, &schema.encode(&v).unwrap());
        if framed.len() >= len || pad == 0 {
            assert_eq!(framed.len(), len.max(empty));
            return framed;
        }
        pad += 1;
    }
}

/// The registry layer decoding [`TOPIC`]'s values, its client holding
/// [`ORDER_AVRO`] under [`ORDER_AVRO_ID`] (a cached id: no registry is
/// asked; the URL is never used).
pub(crate) fn registry_layer() -> kafka_tower_registry::RegistryLayer {
    let client = kafka_tower_registry::RegistryClient::builder("http://127.0.0.1:9")
        .build()
        .unwrap();
    client
        .insert_schema(
            ORDER_AVRO_ID,
            kafka_tower_registry::SchemaType::Avro,
            ORDER_AVRO,
        )
        .unwrap();
    kafka_tower_registry::RegistryLayer::builder(client)
        .value(TOPIC)
        .build()
}

/// A service that answers `200` at once: the floor every layer adds to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Noop;

impl<B> tower::Service<Request<B>> for Noop {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        std::future::ready(Ok(Response::new(String::new())))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of the bench tokens (valid for a day).
pub(crate) fn claims() -> serde_json::Value {
    json!({"sub": "user-1", "iss": "https://idp.test", "exp": now_secs() + 86_400,
        "client_id": "web", "scope": "orders.r orders.w"})
}

/// An HS256 token over [`claims`].
pub(crate) fn hs256_token() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// A JSON order of exactly `len` bytes (padded in `note`) matching
/// [`order_schema`].
pub(crate) fn order_payload(len: usize) -> Bytes {
    let base = json!({"id": "o-123456", "status": "paid", "total": 1234.5, "currency": "EUR",
        "customer": "c-42", "paid": true, "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-22", "qty": 1}],
        "note": ""});
    let empty = serde_json::to_vec(&base).unwrap().len();
    let pad = len.saturating_sub(empty);
    let mut v = base;
    v["note"] = json!("n".repeat(pad));
    let out = serde_json::to_vec(&v).unwrap();
    assert_eq!(out.len(), len.max(empty));
    Bytes::from(out)
}

/// The schema of [`order_payload`] (~10 properties).
pub(crate) fn order_schema() -> serde_json::Value {
    json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "required": ["id", "status", "total"], "additionalProperties": false,
    "properties": {
        "id": {"type": "string", "pattern": "^o-[0-9]+$"},
        "status": {"enum": ["new", "paid", "shipped"]},
        "total": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "minLength": 3, "maxLength": 3},
        "customer": {"type": "string"},
        "paid": {"type": "boolean"},
        "items": {"type": "array", "items": {"type": "object", "required": ["sku", "qty"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}},
        "note": {"type": "string", "maxLength": 4096}
    }})
}

/// The five headers of a bench record: a bearer token, a correlation id, a
/// W3C traceparent, a content type and a tenant.
pub(crate) fn headers(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", format!("Bearer {token}")),
        (
            "X-Correlation-Id",
            "3f1d2c4e-8a7b-4c1d-9e2f-0a1b2c3d4e5f".into(),
        ),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ),
        ("content-type", "application/json".into()),
        ("x-tenant-id", "tenant-7".into()),
    ]
}

/// A record of [`TOPIC`] as the runtime hands it over: 512 B JSON payload,
/// a key, a timestamp and the five [`headers`].
pub(crate) fn record(token: &str) -> ConsumedRecord {
    let mut b = ConsumedRecord::builder(TOPIC, 3, 42)
        .key(Some(Bytes::from_static(b"order-123456")))
        .payload(Some(order_payload(PAYLOAD_LEN)))
        .timestamp(Some(now_secs() as i64 * 1000), TimestampType::CreateTime);
    for (k, v) in headers(token) {
        b = b.header(RawHeader::new(
            Bytes::from_static(k.as_bytes()),
            Bytes::from(v.into_bytes()),
        ));
    }
    b.build()
}

/// JWT verification with the HS256 key; `cache` entries (0: off).
pub(crate) fn jwt_layer(cache: usize) -> JwtLayer {
    JwtLayer::builder()
        .key(VerificationKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .issuer("https://idp.test")
        .cache_capacity(cache)
        .build()
        .unwrap()
}

/// Prometheus metrics (service and client views) into a fresh registry.
pub(crate) fn metrics_layer() -> kafka_tower_metrics::ServiceMetricsLayer {
    kafka_tower_metrics::Metrics::builder()
        .service_id("bench")
        .build()
        .unwrap()
        .layer()
}

/// An auditor writing to a null sink; `block`: the default queue policy
/// (a call waits when the writer thread falls behind), else drop and
/// count (the request path never waits).
pub(crate) fn auditor(block: bool) -> kafka_tower_audit::Auditor {
    let b = kafka_tower_audit::Auditor::builder()
        .service_id("bench")
        .sink(kafka_tower_audit::NullSink);
    let b = if block {
        b
    } else {
        b.queue_capacity(4096)
            .when_full(kafka_tower_audit::QueueFullPolicy::DropAndCount)
    };
    b.build().unwrap()
}

/// JSON Schema validation of [`TOPIC`] with [`order_schema`].
pub(crate) fn schema_layer() -> JsonSchemaLayer {
    schema_layer_for(TOPIC)
}

/// JSON Schema validation of `topic` with [`order_schema`].
pub(crate) fn schema_layer_for(topic: &str) -> JsonSchemaLayer {
    JsonSchemaLayer::builder()
        .schema(topic, order_schema())
        .build()
        .unwrap()
}

/// Drives a future to completion on this thread: one poll with a no-op
/// waker (every service here but the audit layer is ready at once, so no
/// executor is measured), else parking until woken — the audit layer may
/// wait for its writer thread.
pub(crate) fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    if let Poll::Ready(out) = f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return out;
    }
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a bench future did not complete in 10 s"
        );
        std::thread::park_timeout(std::time::Duration::from_millis(10));
    }
}

/// A copy of `template` as the poll thread makes it from a librdkafka
/// message: key, payload and every header key and value copied into one
/// buffer that the fields slice (the topic name is interned) — the "owned
/// record" of each record, fresh, so that nothing the serving path does to
/// it was done before.
pub(crate) fn fresh(template: &ConsumedRecord) -> ConsumedRecord {
    let mut buf = Vec::new();
    let mut push = |b: &Bytes| {
        let start = buf.len();
        buf.extend_from_slice(b);
        start..buf.len()
    };
    let key = template.key.as_ref().map(&mut push);
    let payload = template.payload.as_ref().map(&mut push);
    let mut ranges = Vec::with_capacity(template.headers.len());
    for h in template.headers.iter() {
        ranges.push((push(&h.key), h.value.as_ref().map(&mut push)));
    }
    let buf = Bytes::from(buf);
    // Shared, as the runtime's copy is: attempts clone it for free.
    let headers: std::sync::Arc<[RawHeader]> = ranges
        .into_iter()
        .map(|(k, v)| RawHeader {
            key: buf.slice(k),
            value: v.map(|v| buf.slice(v)),
        })
        .collect();
    let headers = kafka_tower::RawHeaders::from(headers);
    ConsumedRecord {
        topic: template.topic.clone(),
        partition: template.partition,
        offset: template.offset,
        timestamp: template.timestamp,
        timestamp_type: template.timestamp_type,
        key: key.map(|r| buf.slice(r)),
        payload: payload.map(|r| buf.slice(r)),
        headers,
    }
}
