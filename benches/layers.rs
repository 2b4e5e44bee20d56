//! In-process costs, no broker: ns per record of
//!
//! * `record/*` — `ConsumedRecord::into_request` (512 B payload, five
//!   headers) and the runtime's per-record serving path
//!   ([`ServingPath`]: context capture, record → request, `poll_ready` +
//!   `call`, outcome) with a no-op service;
//! * `layer/*` — each layer alone around a no-op service, called with the
//!   request the runtime builds for the record;
//! * `stack/*` — every available kafka-tower layer composed, alone and
//!   behind the serving path;
//! * `reference/*` — `tower` / `tower-http` layers, for scale.
//!
//! ```text
//! cargo bench --bench layers
//! cargo bench --bench layers -- --warm-up-time 1 --measurement-time 2   # quicker
//! ```
//!
//! A layer joins with one line in `layers()`: `bench_layer(g, "name", layer,
//! &template)`. Futures are polled once with a no-op waker (every service
//! here is ready at once), inside an entered tokio runtime for the layers
//! that need its timer.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use fixtures::{
    auditor, fresh, jwt_layer, metrics_layer, ready, record, schema_layer, Noop, PAYLOAD_LEN, TOPIC,
};
use http::{Request, Response};
use kafka_tower::context::CaptureContextLayer;
use kafka_tower::runtime::bench_support::ServingPath;
use kafka_tower::{BoxError, ConsumedRecord, RecordBody};
use kafka_tower_audit::{AuditCallerLayer, AuditLayer, NoPayload};
use kafka_tower_jwt::{Algorithm, JwtLayer, VerificationKey};
use kafka_tower_metrics::ServiceMetricsLayer;
use kafka_tower_schema::JsonSchemaLayer;
use kafka_tower_trace::TraceLayer;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service, ServiceBuilder};
use tracing_subscriber::layer::SubscriberExt as _;

/// The request the runtime hands the first layer for `record` (attempt 1).
fn request_of(record: &ConsumedRecord) -> Request<RecordBody> {
    record.clone().into_request(Some(Arc::from("bench")), 1)
}

/// Benchmarks `layer` around a no-op service: `poll_ready` + `call` + the
/// response future, per request built from `template` (built outside the
/// measurement; the response is dropped outside it too).
fn bench_layer<L, B>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    layer: L,
    template: &ConsumedRecord,
) where
    L: Layer<Noop>,
    L::Service: Service<Request<RecordBody>, Response = Response<B>>,
    <L::Service as Service<Request<RecordBody>>>::Error: Into<BoxError>,
{
    let mut svc = layer.layer(Noop);
    let mut call = |req| {
        ready(std::future::poll_fn(|cx| svc.poll_ready(cx)))
            .map_err(Into::into)
            .expect("ready");
        let res = ready(svc.call(req)).map_err(Into::into).expect("called");
        assert!(res.status().is_success(), "{name}: {}", res.status());
        res
    };
    // Check once (and warm caches) before measuring.
    drop(call(request_of(template)));
    g.bench_function(name, |b| {
        b.iter_batched(|| request_of(template), &mut call, BatchSize::SmallInput)
    });
}

fn record_path(c: &mut Criterion) {
    let token = fixtures::hs256_token();
    let rec = record(&token);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    let group: Arc<str> = Arc::from("bench");
    // Fresh records (as the poll thread copies them out of librdkafka): a
    // `Bytes` made from a `Vec` allocates on its first clone, so a reused
    // record would hide that per-record cost.
    g.bench_function("into_request_512B_5_headers", |b| {
        b.iter_batched(
            || fresh(&rec),
            |r| r.into_request(Some(group.clone()), 1),
            BatchSize::SmallInput,
        )
    });
    for (name, capture) in [
        ("serving_path_noop", true),
        ("serving_path_noop_no_context", false),
    ] {
        let path = ServingPath::with_context_capture(capture);
        assert!(ready(path.serve(&mut Noop, &rec)));
        g.bench_function(name, |b| {
            b.iter_batched(
                || fresh(&rec),
                |r| {
                    assert!(ready(path.serve(&mut Noop, &r)));
                    r // dropped outside the measurement, as the record's own cost
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The ~1 KB, ~20-property object and schema of
/// `layers/schema/benches/validate.rs`.
fn schema_1k() -> (serde_json::Value, Bytes) {
    let mut props = serde_json::Map::new();
    let mut v = serde_json::Map::new();
    for i in 0..8 {
        props.insert(format!("s{i}"), json!({"type": "string", "maxLength": 64}));
        v.insert(
            format!("s{i}"),
            json!(format!(
                "value number {i} of the order, with some more descriptive text"
            )),
        );
    }
    for i in 0..6 {
        props.insert(
            format!("n{i}"),
            json!({"type": "number", "minimum": 0, "maximum": 1e9}),
        );
        v.insert(format!("n{i}"), json!(1234.5 * f64::from(i)));
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
    v.insert("id".into(), json!("o-123456"));
    v.insert("status".into(), json!("paid"));
    v.insert("paid".into(), json!(true));
    v.insert(
        "tags".into(),
        json!(["priority", "gift", "eu", "express", "fragile"]),
    );
    v.insert(
        "address".into(),
        json!({"street": "1742 Evergreen Terrace, Building C, Floor 3",
        "city": "Springfield", "zip": "12345-6789"}),
    );
    v.insert(
        "items".into(),
        json!([{"sku": "A-1", "qty": 2}, {"sku": "B-22", "qty": 1},
        {"sku": "C-333", "qty": 5}, {"sku": "D-4444", "qty": 3}, {"sku": "E-55555", "qty": 9}]),
    );
    let schema = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "required": ["id", "status"], "properties": props, "additionalProperties": false});
    (schema, Bytes::from(serde_json::to_vec(&v).unwrap()))
}

/// JWT keys per algorithm, from the JWT crate's test keys.
fn jwt_cases() -> Vec<(&'static str, VerificationKey, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/layers/jwt/tests/keys/");
    let read = |f: &str| std::fs::read(format!("{dir}{f}")).unwrap();
    let sign = |alg, key: jsonwebtoken::EncodingKey| {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &fixtures::claims(), &key).unwrap()
    };
    use jsonwebtoken::{Algorithm as A, EncodingKey as E};
    vec![
        (
            "HS256",
            VerificationKey::hmac(fixtures::SECRET, Algorithm::HS256).unwrap(),
            sign(A::HS256, E::from_secret(fixtures::SECRET).unwrap()),
        ),
        (
            "RS256",
            VerificationKey::rsa_pem(read("rsa_public.pem"), Algorithm::RS256).unwrap(),
            sign(A::RS256, E::from_rsa_pem(&read("rsa_private.pem")).unwrap()),
        ),
        (
            "PS256",
            VerificationKey::rsa_pem(read("rsa_public.pem"), Algorithm::PS256).unwrap(),
            sign(A::PS256, E::from_rsa_pem(&read("rsa_private.pem")).unwrap()),
        ),
        (
            "ES256",
            VerificationKey::ec_pem(read("ec_public.pem"), Algorithm::ES256).unwrap(),
            sign(A::ES256, E::from_ec_pem(&read("ec_private.pem")).unwrap()),
        ),
        (
            "EdDSA",
            VerificationKey::ed_pem(read("ed_public.pem")).unwrap(),
            sign(A::EdDSA, E::from_ed_pem(&read("ed_private.pem")).unwrap()),
        ),
    ]
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let token = fixtures::hs256_token();
    let rec = record(&token);

    let mut g = c.benchmark_group("layer");
    g.throughput(Throughput::Elements(1));
    // The floor: the no-op service alone (dropping the request included);
    // a layer's overhead is its row minus this one.
    bench_layer(&mut g, "none_noop_service_alone", Identity::new(), &rec);
    bench_layer(&mut g, "jwt_cache_hit", jwt_layer(1000), &rec);
    for (alg, key, token) in jwt_cases() {
        let layer = JwtLayer::builder()
            .key(key)
            .cache_capacity(0)
            .build()
            .unwrap();
        bench_layer(&mut g, &format!("jwt_cold_{alg}"), layer, &record(&token));
    }
    let (schema, payload_1k) = schema_1k();
    let schema_1k_layer = JsonSchemaLayer::builder()
        .schema(TOPIC, schema)
        .build()
        .unwrap();
    let mut rec_1k = rec.clone();
    rec_1k.payload = Some(payload_1k);
    bench_layer(&mut g, "schema_1KB_20_props", schema_1k_layer, &rec_1k);
    bench_layer(&mut g, "schema_512B_order", schema_layer(), &rec);
    bench_layer(&mut g, "capture_context", CaptureContextLayer::new(), &rec);
    bench_layer(&mut g, "metrics", metrics_layer(), &rec);
    bench_layer(&mut g, "trace_no_subscriber", TraceLayer::new(), &rec);
    {
        // With a subscriber: spans go through tracing-opentelemetry to an
        // in-memory exporter (emptied outside the measurement).
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(kafka_tower_trace::tracing_layer(&provider)),
        );
        let mut svc = TraceLayer::new().layer(Noop);
        g.bench_function("trace_exported_span", |b| {
            b.iter_batched(
                || {
                    exporter.reset();
                    request_of(&rec)
                },
                |req| ready(svc.call(req)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    bench_layer(&mut g, "audit_null_sink_drop", auditor(false).layer(), &rec);
    bench_layer(&mut g, "audit_null_sink_block", auditor(true).layer(), &rec);
    {
        let mut avro = rec.clone();
        avro.payload = Some(fixtures::avro_order_payload(PAYLOAD_LEN));
        bench_layer(
            &mut g,
            "registry_avro_512B_cached_id",
            fixtures::registry_layer(),
            &avro,
        );
    }
    // Layers still being written join here, one line each:
    // bench_layer(&mut g, "name", layer, &rec);
    g.finish();

    let mut g = c.benchmark_group("stack");
    g.throughput(Throughput::Elements(1));
    bench_layer(&mut g, "full_stack", full_stack(), &rec);
    {
        // The same stack validating Avro records through the registry
        // layer (cached id) instead of JSON through the schema layer.
        let mut avro = rec.clone();
        avro.payload = Some(fixtures::avro_order_payload(PAYLOAD_LEN));
        bench_layer(
            &mut g,
            "full_stack_registry_avro",
            full_stack_with(fixtures::registry_layer()),
            &avro,
        );
    }
    let path = ServingPath::new();
    let mut svc = full_stack().service(Noop);
    assert!(ready(path.serve(&mut svc, &rec)));
    g.bench_function("serving_path_full_stack", |b| {
        b.iter_batched(
            || fresh(&rec),
            |r| {
                assert!(ready(path.serve(&mut svc, &r)));
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("reference");
    g.throughput(Throughput::Elements(1));
    bench_layer(
        &mut g,
        "tower_timeout",
        tower::timeout::TimeoutLayer::new(Duration::from_secs(5)),
        &rec,
    );
    bench_layer(
        &mut g,
        "tower_http_trace_no_subscriber",
        tower_http::trace::TraceLayer::new_for_http(),
        &rec,
    );
    bench_layer(
        &mut g,
        "tower_http_set_request_id_uuid",
        tower_http::request_id::SetRequestIdLayer::x_request_id(
            tower_http::request_id::MakeRequestUuid,
        ),
        &rec,
    );
    bench_layer(
        &mut g,
        "tower_http_catch_panic",
        tower_http::catch_panic::CatchPanicLayer::new(),
        &rec,
    );
    g.finish();
}

/// Every kafka-tower layer available: tracing (no subscriber installed),
/// audit (null sink, default blocking queue; its caller layer inside
/// authentication), authentication, metrics (inside authentication, for
/// its client view), validation, context capture. (`CaptureContextLayer` needs a `Default` response
/// body, which the JWT and schema layers' refusal bodies are not, so it
/// sits inside them.)
type FullStack = FullStackWith<JsonSchemaLayer>;

/// [`FullStack`] with validation layer `V`.
type FullStackWith<V> = ServiceBuilder<
    Stack<
        CaptureContextLayer,
        Stack<
            V,
            Stack<
                ServiceMetricsLayer,
                Stack<
                    AuditCallerLayer,
                    Stack<JwtLayer, Stack<AuditLayer<NoPayload>, Stack<TraceLayer, Identity>>>,
                >,
            >,
        >,
    >,
>;

fn full_stack() -> FullStack {
    full_stack_with(schema_layer())
}

fn full_stack_with<V>(validation: V) -> FullStackWith<V> {
    let audit = auditor(true);
    ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(audit.layer())
        .layer(jwt_layer(1000))
        .layer(audit.caller_layer())
        .layer(metrics_layer())
        .layer(validation)
        .layer(CaptureContextLayer::new())
}

criterion_group!(benches, record_path, layers);
criterion_main!(benches);
