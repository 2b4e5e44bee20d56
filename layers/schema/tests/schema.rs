//! JsonSchemaLayer: schemas from files with `$ref`s across local files,
//! drafts by `$schema`, each refusal reason, startup errors naming the file,
//! the producer-side check, and an axum route.

use std::convert::Infallible;
use std::path::PathBuf;

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kafka_tower::{RecordBody, RecordMeta, Refusal};
use kafka_tower_schema::{JsonSchemaLayer, RefusalBody, SchemaViolation, ViolationKind};
use serde_json::{json, Value};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemas"))
}

fn layer() -> JsonSchemaLayer {
    JsonSchemaLayer::builder()
        .schema_file("orders", dir().join("orders.json"))
        .schema_file("legacy", dir().join("legacy-v4.json"))
        .schema_file("pings", dir().join("draft7.json"))
        .build()
        .unwrap()
}

type Svc = BoxCloneService<Request<RecordBody>, Response<RefusalBody<String>>, Infallible>;

/// The inner service echoes the body it received.
fn service(layer: &JsonSchemaLayer) -> Svc {
    BoxCloneService::new(
        layer.layer(service_fn(|req: Request<RecordBody>| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(Response::new(format!(
                "got {}",
                String::from_utf8_lossy(&body)
            )))
        })),
    )
}

fn record(topic: &str, payload: Option<&[u8]>) -> Request<RecordBody> {
    let method = if payload.is_some() {
        Method::POST
    } else {
        Method::DELETE
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("/{topic}"))
        .body(RecordBody::new(payload.map(Bytes::copy_from_slice)))
        .unwrap();
    req.extensions_mut().insert(RecordMeta::new(topic, 0, 1));
    req
}

struct Answer {
    status: StatusCode,
    refusal: Option<Refusal>,
    violation: Option<SchemaViolation>,
    body: String,
}

async fn send(svc: &Svc, req: Request<RecordBody>) -> Answer {
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let refusal = res.extensions().get::<Refusal>().cloned();
    let violation = res.extensions().get::<SchemaViolation>().cloned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        refusal,
        violation,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn good_order() -> Value {
    json!({"id": "o-17", "customer": "alice", "total": 12.5,
           "shipTo": {"street": "1 Main St", "city": "Springfield", "country": "US"},
           "items": [{"sku": "A-1", "qty": 2}]})
}

#[tokio::test]
async fn a_valid_payload_reaches_the_service_unchanged() {
    let svc = service(&layer());
    let payload = good_order().to_string();
    let a = send(&svc, record("orders", Some(payload.as_bytes()))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, format!("got {payload}"));
    assert!(a.refusal.is_none());
}

#[tokio::test]
async fn invalid_lists_instance_path_schema_path_and_message() {
    let svc = service(&layer());
    let mut order = good_order();
    order["items"][0]["qty"] = json!(0);
    order["shipTo"]["country"] = json!("usa"); // via address.json → country.json
    order["total"] = json!(-1); // via money.json#/$defs/amount
    let a = send(&svc, record("orders", Some(order.to_string().as_bytes()))).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = a.refusal.unwrap();
    assert_eq!((r.layer(), r.reason()), ("schema", "invalid"));
    let v = a.violation.unwrap();
    assert_eq!(v.kind(), ViolationKind::Invalid);
    assert_eq!(v.total_errors(), 3);
    let mut paths: Vec<_> = v
        .errors()
        .iter()
        .map(|e| e.instance_path.as_str())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/items/0/qty", "/shipTo/country", "/total"]);
    let qty = v
        .errors()
        .iter()
        .find(|e| e.instance_path == "/items/0/qty")
        .unwrap();
    assert!(qty.schema_path.ends_with("/minimum"), "{}", qty.schema_path);
    assert!(qty.message.contains("minimum of 1"), "{}", qty.message);
    // Across files, the schema path shows the `$ref`s it went through.
    let country = v
        .errors()
        .iter()
        .find(|e| e.instance_path == "/shipTo/country")
        .unwrap();
    assert_eq!(
        country.schema_path,
        "/properties/shipTo/$ref/properties/country/$ref/pattern"
    );
    // The JSON body lists them too, and the detail summarises them.
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["layer"], "schema");
    assert_eq!(body["reason"], "invalid");
    assert_eq!(body["errors"].as_array().unwrap().len(), 3);
    assert!(r.detail().starts_with("3 schema errors"), "{}", r.detail());
    assert!(r.detail().contains("/items/0/qty"), "{}", r.detail());
}

#[tokio::test]
async fn not_json_and_not_utf8_have_their_own_reasons() {
    let svc = service(&layer());
    let a = send(&svc, record("orders", Some(b"{\"id\": "))).await;
    assert_eq!(
        (a.status, a.refusal.unwrap().reason()),
        (StatusCode::BAD_REQUEST, "not_json")
    );
    let a = send(&svc, record("orders", Some(b"{\"id\": \"o-1\xff\"}"))).await;
    assert_eq!(
        (a.status, a.refusal.unwrap().reason()),
        (StatusCode::BAD_REQUEST, "not_utf8")
    );
    let a = send(&svc, record("orders", Some(b""))).await;
    assert_eq!(a.refusal.unwrap().reason(), "not_json");
}

#[tokio::test]
async fn too_large_bounded_errors_and_detail() {
    let layer = JsonSchemaLayer::builder()
        .schema(
            "bulk",
            json!({"type": "array", "items": {"type": "integer"}}),
        )
        .max_body_bytes(4096)
        .max_errors(2)
        .max_detail_len(80)
        .build()
        .unwrap();
    let svc = service(&layer);
    let big = format!("[{}1]", "1,".repeat(3000));
    let a = send(&svc, record("bulk", Some(big.as_bytes()))).await;
    assert_eq!(
        (a.status, a.refusal.unwrap().reason()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    let bad = json!(["a", "b", "c", "d", "e"]).to_string();
    let a = send(&svc, record("bulk", Some(bad.as_bytes()))).await;
    let v = a.violation.unwrap();
    assert_eq!((v.total_errors(), v.errors().len()), (5, 2));
    let detail = a.refusal.unwrap().detail().to_owned();
    assert!(detail.len() <= 80, "{detail}");
}

#[tokio::test]
async fn tombstones_and_topics_without_schema_pass_unread() {
    let svc = service(&layer());
    let a = send(&svc, record("orders", None)).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "got "));
    let a = send(&svc, record("audit", Some(b"not json at all"))).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, "got not json at all")
    );
}

#[tokio::test]
async fn drafts_follow_dollar_schema() {
    let svc = service(&layer());
    // Draft 4: boolean exclusiveMinimum.
    let a = send(&svc, record("legacy", Some(br#"{"ratio": 0}"#))).await;
    assert_eq!(a.refusal.unwrap().reason(), "invalid");
    assert_eq!(
        send(&svc, record("legacy", Some(br#"{"ratio": 0.5}"#)))
            .await
            .status,
        StatusCode::OK
    );
    // Draft 7: if/then.
    let a = send(&svc, record("pings", Some(br#"{"kind": "ping"}"#))).await;
    assert_eq!(
        a.violation.unwrap().errors()[0].schema_path,
        "/then/required"
    );
    assert_eq!(
        send(&svc, record("pings", Some(br#"{"kind": "ping", "at": 1}"#)))
            .await
            .status,
        StatusCode::OK
    );
}

#[test]
fn startup_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("missing.json", None),
        ("broken.json", Some("{ not json")),
        ("bad-schema.json", Some(r#"{"type": "no-such-type"}"#)),
        ("dangling-ref.json", Some(r#"{"$ref": "nowhere.json"}"#)),
        (
            "remote-ref.json",
            Some(r#"{"$ref": "https://example.com/schema.json"}"#),
        ),
        (
            "escape-ref.json",
            Some(r#"{"$ref": "../../../../../../etc/hostname"}"#),
        ),
    ];
    for (name, content) in cases {
        let path = tmp.path().join(name);
        if let Some(c) = content {
            std::fs::write(&path, c).unwrap();
        }
        let err = JsonSchemaLayer::builder()
            .schema_file("t", &path)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}

#[test]
fn producer_side_is_a_typed_error() {
    let layer = layer();
    assert!(layer
        .validate("orders", good_order().to_string().as_bytes())
        .is_ok());
    let err = layer.validate("orders", br#"{"id": 1}"#).unwrap_err();
    assert_eq!(err.kind(), ViolationKind::Invalid);
    assert_eq!(err.topic(), "orders");
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
    assert!(boxed.to_string().starts_with("invalid: "), "{boxed}");
    assert_eq!(
        layer.validate("orders", b"\xff").unwrap_err().kind(),
        ViolationKind::NotUtf8
    );
    assert!(layer.validate("no-schema", b"whatever").is_ok());
}

#[tokio::test]
async fn producer_service_behind_the_layer_is_not_called() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let producer = service_fn(move |_req: Request<RecordBody>| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    });
    let svc = layer().layer(producer);
    let res = svc
        .clone()
        .oneshot(record("orders", Some(b"{}")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing sent"
    );
    svc.oneshot(record("orders", Some(good_order().to_string().as_bytes())))
        .await
        .unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn axum_route_behind_the_layer() {
    let app = Router::new()
        .route(
            "/orders",
            post(|axum::Json(v): axum::Json<Value>| async move { format!("stored {}", v["id"]) }),
        )
        .layer(layer());
    let req = |body: String| {
        Request::post("/orders")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let res = app
        .clone()
        .oneshot(req(good_order().to_string()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"stored \"o-17\""
    );
    let res = app.oneshot(req("{\"id\": 5}".into())).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        res.extensions().get::<Refusal>().unwrap().reason(),
        "invalid"
    );
}
