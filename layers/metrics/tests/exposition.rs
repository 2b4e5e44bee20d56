//! The exposition parsed by a real Prometheus parser (Python
//! `prometheus_client`), the client view, and bounded cardinality.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::{Caller, RecordBody, RecordMeta, Refusal};
use kafka_tower_metrics::{LabelLimit, Metrics};
use tower::{service_fn, Layer, Service, ServiceExt};

/// One sample as the Python parser read it.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
    family_type: String,
}

/// Parses `text` with `prometheus_client.parser.text_string_to_metric_families`.
/// Fails (never skips) when python3 or the package is missing.
fn parse_with_prometheus_client(text: &str) -> Vec<Sample> {
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value, "type": fam.type})
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed to validate the exposition format");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client failed to parse the exposition (install it with `pip install -r layers/metrics/requirements-test.txt`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the parser script prints JSON");
    v.as_array()
        .expect("a list of samples")
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_owned(),
            labels: s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            value: s["value"].as_f64().unwrap(),
            family_type: s["type"].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn record(topic: &str, offset: i64, client: Option<&str>) -> Request<RecordBody> {
    let mut req = Request::post(format!("/{topic}"))
        .body(RecordBody::from(Bytes::from_static(b"{}")))
        .unwrap();
    req.extensions_mut()
        .insert(RecordMeta::new(topic, 0, offset));
    if let Some(c) = client {
        req.extensions_mut()
            .insert(Caller::new(Some("user"), Some(c), None));
    }
    req
}

/// Answers by the record's offset: 0 ok, 1 refused (401 + Refusal),
/// 2 failed (422), 3 retryable (503), 4 an Err.
fn by_offset() -> impl Service<
    Request<RecordBody>,
    Response = Response<String>,
    Error = &'static str,
    Future = impl std::future::Future<Output = Result<Response<String>, &'static str>> + Send,
> + Clone {
    service_fn(|req: Request<RecordBody>| async move {
        let offset = req
            .extensions()
            .get::<RecordMeta>()
            .map_or(0, RecordMeta::offset);
        let mut res = Response::new(String::new());
        match offset % 5 {
            0 => {}
            1 => {
                *res.status_mut() = StatusCode::UNAUTHORIZED;
                res.extensions_mut()
                    .insert(Refusal::new("jwt", "expired", ""));
            }
            2 => *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY,
            3 => *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
            _ => return Err("boom"),
        }
        Ok(res)
    })
}

#[tokio::test]
async fn exposition_parses_and_counts_service_and_client_views() {
    let metrics = Metrics::builder()
        .service_id("orders-service")
        .build()
        .unwrap();
    let mut svc = metrics.layer().layer(by_offset());
    for offset in 0..10 {
        let client = if offset < 5 {
            Some("web-shop")
        } else {
            Some("batch")
        };
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(record("orders", offset, client))
            .await;
    }
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call(record("payments", 0, None))
        .await;
    // An HTTP route: no RecordMeta, the topic label is the path segment.
    let mut http_req = Request::post("/invoices/7")
        .body(RecordBody::from(Bytes::new()))
        .unwrap();
    http_req
        .extensions_mut()
        .insert(Caller::new(None, Some("web-shop"), None));
    let _ = svc.ready().await.unwrap().call(http_req).await;

    let text = metrics.render();
    let samples = parse_with_prometheus_client(&text);

    let svc_view = |topic: &str, outcome: &str| {
        value(
            &samples,
            "kafka_tower_records_total",
            &[
                ("service", "orders-service"),
                ("topic", topic),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(svc_view("orders", "ok"), Some(2.0));
    assert_eq!(svc_view("orders", "refused"), Some(2.0));
    assert_eq!(svc_view("orders", "failed"), Some(2.0));
    assert_eq!(svc_view("orders", "retryable"), Some(4.0)); // 503s and Errs
    assert_eq!(svc_view("payments", "ok"), Some(1.0));
    assert_eq!(svc_view("invoices", "ok"), Some(1.0));

    let client_view = |client: &str, outcome: &str| {
        value(
            &samples,
            "kafka_tower_client_records_total",
            &[("client", client), ("outcome", outcome)],
        )
    };
    assert_eq!(client_view("web-shop", "ok"), Some(2.0)); // offset 0 + the HTTP request
    assert_eq!(client_view("web-shop", "refused"), Some(1.0));
    assert_eq!(client_view("web-shop", "retryable"), Some(2.0));
    assert_eq!(client_view("batch", "ok"), Some(1.0));
    assert_eq!(client_view("batch", "failed"), Some(1.0));
    assert_eq!(client_view("anonymous", "ok"), Some(1.0));

    // The histogram: 10 observations for `orders`, typed as a histogram.
    assert_eq!(
        value(
            &samples,
            "kafka_tower_handling_duration_seconds_count",
            &[("topic", "orders")]
        ),
        Some(10.0)
    );
    let hist = samples
        .iter()
        .find(|s| s.name == "kafka_tower_handling_duration_seconds_bucket")
        .expect("histogram buckets");
    assert_eq!(hist.family_type, "histogram");
    assert_eq!(
        value(
            &samples,
            "kafka_tower_handling_duration_seconds_bucket",
            &[("topic", "orders"), ("le", "+Inf")]
        ),
        Some(10.0)
    );
    // Nothing in flight once every call finished.
    assert_eq!(
        value(
            &samples,
            "kafka_tower_records_in_flight",
            &[("topic", "orders")]
        ),
        Some(0.0)
    );
    // Counters are typed as counters (the parser strips `_total`).
    let c = samples
        .iter()
        .find(|s| s.name == "kafka_tower_records_total")
        .unwrap();
    assert_eq!(c.family_type, "counter");
}

#[tokio::test]
async fn client_label_stays_capped_under_10000_distinct_client_ids() {
    let metrics = Metrics::builder()
        .service_id("svc")
        .client_labels(LabelLimit::cap(25))
        .build()
        .unwrap();
    let mut svc = metrics
        .layer()
        .layer(service_fn(|_req: Request<RecordBody>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    for i in 0..10_000 {
        let req = record("orders", i, Some(&format!("client-{i}")));
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let samples = parse_with_prometheus_client(&metrics.render());
    let clients: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "kafka_tower_client_records_total")
        .map(|s| s.labels["client"].as_str())
        .collect();
    assert_eq!(clients.len(), 26, "25 client ids plus `other`: {clients:?}");
    assert!(clients.contains("other"));
    assert!(clients.contains("client-0") && clients.contains("client-24"));
    assert!(!clients.contains("client-25"));
    assert_eq!(
        value(
            &samples,
            "kafka_tower_client_records_total",
            &[("client", "other"), ("outcome", "ok")]
        ),
        Some(9_975.0)
    );
    let total: f64 = samples
        .iter()
        .filter(|s| s.name == "kafka_tower_client_records_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 10_000.0, "no record lost when folding into `other`");
}

#[tokio::test]
async fn allow_list_and_route_topics_are_bounded() {
    let metrics = Metrics::builder()
        .client_labels(LabelLimit::allow(["web-shop"]))
        .topic_labels(LabelLimit::cap(3))
        .build()
        .unwrap();
    let mut svc = metrics.layer().layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    for i in 0..50 {
        let mut req = Request::get(format!("/path-{i}/x")).body(()).unwrap();
        let client = if i % 2 == 0 { "web-shop" } else { "intruder" };
        req.extensions_mut()
            .insert(Caller::new(None, Some(client), None));
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let samples = parse_with_prometheus_client(&metrics.render());
    let topics: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "kafka_tower_records_total")
        .map(|s| s.labels["topic"].as_str())
        .collect();
    assert_eq!(
        topics,
        BTreeSet::from(["other", "path-0", "path-1", "path-2"])
    );
    assert_eq!(
        value(
            &samples,
            "kafka_tower_client_records_total",
            &[("client", "web-shop"), ("outcome", "ok")]
        ),
        Some(25.0)
    );
    assert_eq!(
        value(
            &samples,
            "kafka_tower_client_records_total",
            &[("client", "other"), ("outcome", "ok")]
        ),
        Some(25.0)
    );
}

#[tokio::test]
async fn metrics_endpoint_serves_the_text_format_through_axum() {
    let metrics = Metrics::builder().service_id("api").build().unwrap();
    let route = metrics
        .layer()
        .layer(service_fn(|_req: Request<axum::body::Body>| async {
            Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
        }));
    let app = axum::Router::new()
        .route_service("/orders", route)
        .route_service("/metrics", metrics.endpoint());
    let res = app
        .clone()
        .oneshot(
            Request::post("/orders")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .oneshot(
            Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-type"],
        kafka_tower_metrics::TEXT_CONTENT_TYPE
    );
    use http_body_util::BodyExt as _;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let samples = parse_with_prometheus_client(std::str::from_utf8(&body).unwrap());
    assert_eq!(
        value(
            &samples,
            "kafka_tower_records_total",
            &[("service", "api"), ("topic", "orders"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn producer_layer_counts_sends_acks_and_errors() {
    let metrics = Metrics::builder().service_id("p").build().unwrap();
    let mut producer = metrics
        .producer_layer()
        .layer(service_fn(|req: Request<()>| async move {
            if req.uri().path() == "/missing" {
                Err::<Response<()>, _>("unknown topic")
            } else {
                let mut res = Response::new(());
                *res.status_mut() = StatusCode::CREATED;
                Ok(res)
            }
        }));
    for path in ["/orders", "/orders", "/missing"] {
        let _ = producer
            .ready()
            .await
            .unwrap()
            .call(Request::post(path).body(()).unwrap())
            .await;
    }
    let samples = parse_with_prometheus_client(&metrics.render());
    let v = |name: &str, topic: &str| value(&samples, name, &[("topic", topic)]);
    assert_eq!(v("kafka_tower_producer_sends_total", "orders"), Some(2.0));
    assert_eq!(v("kafka_tower_producer_acks_total", "orders"), Some(2.0));
    assert_eq!(v("kafka_tower_producer_errors_total", "orders"), Some(0.0));
    assert_eq!(v("kafka_tower_producer_sends_total", "missing"), Some(1.0));
    assert_eq!(v("kafka_tower_producer_errors_total", "missing"), Some(1.0));
    assert_eq!(
        v("kafka_tower_producer_send_duration_seconds_count", "orders"),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_cancelled_call_leaves_nothing_in_flight() {
    let metrics = Metrics::builder().build().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let mut svc = metrics
        .layer()
        .layer(service_fn(move |_req: Request<RecordBody>| {
            let rx = rx.clone();
            async move {
                let rx = rx.lock().await.take().unwrap();
                let _ = rx.await;
                Ok::<_, Infallible>(Response::new(()))
            }
        }));
    let fut = svc.ready().await.unwrap().call(record("orders", 0, None));
    let in_flight = |m: &Metrics| {
        let s = parse_with_prometheus_client(&m.render());
        value(&s, "kafka_tower_records_in_flight", &[("topic", "orders")])
    };
    assert_eq!(in_flight(&metrics), Some(1.0));
    drop(fut);
    drop(tx);
    assert_eq!(in_flight(&metrics), Some(0.0));
}
