//! Validating a ~1 KB object against a ~20-property schema: the
//! `validate` call alone (UTF-8 check, JSON parse, schema check) and the
//! whole `JsonSchema::call` on a record.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use kafka_tower::{RecordBody, RecordMeta};
use kafka_tower_schema::JsonSchemaLayer;
use serde_json::json;
use tower::{service_fn, Layer, Service};

fn schema() -> serde_json::Value {
    let mut props = serde_json::Map::new();
    for i in 0..8 {
        props.insert(format!("s{i}"), json!({"type": "string", "maxLength": 64}));
    }
    for i in 0..6 {
        props.insert(
            format!("n{i}"),
            json!({"type": "number", "minimum": 0, "maximum": 1e9}),
        );
    }
    props.insert(
        "id".into(),
        json!({"type": "string", "pattern": "^o-[0-9]+$"}),
    );
    props.insert("status".into(), json!({"enum": ["new", "paid", "shipped"]}));
    props.insert("paid".into(), json!({"type": "boolean"}));
    props.insert(
        "tags".into(),
        json!({"type": "array", "items": {"type": "string"}, "maxItems": 10}),
    );
    props.insert("address".into(), json!({"type": "object", "required": ["city"],
        "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"}}}));
    props.insert(
        "items".into(),
        json!({"type": "array", "items": {"type": "object", "required": ["sku", "qty"],
        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}}),
    );
    json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "required": ["id", "status"], "properties": props, "additionalProperties": false})
}

fn payload() -> Vec<u8> {
    let mut v = serde_json::Map::new();
    for i in 0..8 {
        v.insert(
            format!("s{i}"),
            json!(format!(
                "value number {i} of the order, with some more descriptive text"
            )),
        );
    }
    for i in 0..6 {
        v.insert(format!("n{i}"), json!(1234.5 * f64::from(i)));
    }
    v.insert("id".into(), json!("o-123456"));
    v.insert("status".into(), json!("paid"));
    v.insert("paid".into(), json!(true));
    v.insert(
        "tags".into(),
        json!(["priority", "gift", "eu", "express", "fragile"]),
    );
    v.insert(
        "address".into(),
        json!({"street": "1742 Evergreen Terrace, Building C, Floor 3", "city": "Springfield", "zip": "12345-6789"}),
    );
    v.insert(
        "items".into(),
        json!([{"sku": "A-1", "qty": 2}, {"sku": "B-22", "qty": 1}, {"sku": "C-333", "qty": 5}, {"sku": "D-4444", "qty": 3}, {"sku": "E-55555", "qty": 9}]),
    );
    serde_json::to_vec(&v).unwrap()
}

fn bench(c: &mut Criterion) {
    let layer = JsonSchemaLayer::builder()
        .schema("orders", schema())
        .build()
        .unwrap();
    let payload = payload();
    assert!(
        (900..1300).contains(&payload.len()),
        "payload is {} bytes",
        payload.len()
    );
    layer.validate("orders", &payload).unwrap();
    let mut group = c.benchmark_group("schema");
    group.bench_function("validate_1k_20_props", |b| {
        b.iter(|| layer.validate("orders", &payload).unwrap())
    });
    let inner = service_fn(|_req: Request<RecordBody>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let mut svc = layer.layer(inner);
    let bytes = Bytes::from(payload);
    group.bench_function("service_call_1k_20_props", |b| {
        b.iter_batched(
            || {
                let mut req = Request::post("/orders")
                    .body(RecordBody::from(bytes.clone()))
                    .unwrap();
                req.extensions_mut().insert(RecordMeta::new("orders", 0, 1));
                req
            },
            |req| {
                let mut f = std::pin::pin!(svc.call(req));
                let waker = std::task::Waker::noop();
                match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
                    std::task::Poll::Ready(Ok(res)) => assert_eq!(res.status(), 200),
                    _ => unreachable!("ready at once"),
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
