//! Unmodified axum routers and tower-http layers as consumer services,
//! against a real Apache Kafka broker.

use std::time::Duration;

use axum::extract::{Extension, Path};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use kafka_tower::{BoxError, RecordBody, RecordMeta};
use kafka_tower_testkit::*;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_axum_router_routes_records_by_topic() {
    let orders = unique("orders");
    let payments = unique("payments");
    let unrouted = unique("unrouted");
    for t in [&orders, &payments, &unrouted] {
        create_topic_with_dlq(t, 1).await;
    }
    let rec = Recorder::default();
    let (r1, r2, r3) = (rec.clone(), rec.clone(), rec.clone());
    let app = Router::new()
        .route(
            &format!("/{orders}"),
            post(
                move |Extension(meta): Extension<RecordMeta>, body: Bytes| async move {
                    r1.record(&rebuilt(&meta, body, "orders"));
                    StatusCode::CREATED
                },
            )
            .delete(move |Extension(meta): Extension<RecordMeta>| async move {
                r2.record(&rebuilt(&meta, Bytes::new(), "orders-delete"));
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/{topic}",
            post(
                move |Path(topic): Path<String>,
                      headers: HeaderMap,
                      Extension(meta): Extension<RecordMeta>,
                      body: Bytes| async move {
                    assert_eq!(topic, meta.topic());
                    let tag = headers
                        .get("x-tag")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    r3.record(&rebuilt(&meta, body, &format!("generic:{tag}")));
                    if topic.starts_with("unrouted") {
                        StatusCode::NOT_FOUND
                    } else {
                        StatusCode::OK
                    }
                },
            ),
        );

    produce(
        &orders,
        [
            Rec::payload("o-1"),
            Rec {
                key: Some(Bytes::from_static(b"o-1")),
                ..Default::default()
            },
        ],
    )
    .await;
    let mut tagged = kafka_tower::RawHeaders::new();
    tagged.push(kafka_tower::RawHeader::new(&b"X-Tag"[..], &b"blue"[..]));
    produce(&payments, [Rec::payload("p-1").headers(tagged)]).await;
    produce(&unrouted, [Rec::payload("u-1")]).await;

    let running = spawn(
        consumer(&unique("g"), &[&orders, &payments, &unrouted])
            .build()
            .unwrap(),
        app,
    );
    let dlq = read_topic(&format!("{unrouted}.dlq"), 1).await;
    rec.wait_count(4).await;
    running.stop().await;

    let mut got: Vec<(String, String)> = rec
        .all()
        .into_iter()
        .map(|s| (s.topic.clone(), s.text()))
        .collect();
    got.sort();
    let mut want = vec![
        (orders.clone(), "orders:o-1".to_owned()),
        (orders.clone(), "orders-delete:".to_owned()),
        (payments.clone(), "generic:blue:p-1".to_owned()),
        (unrouted.clone(), "generic::u-1".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        header_text(&dlq[0].headers, "kt-dlq-status").as_deref(),
        Some("404")
    );
    assert_eq!(dlq[0].payload.as_deref(), Some(&b"u-1"[..]));
}

/// A request carrying `meta` whose payload says which route saw it.
fn rebuilt(meta: &RecordMeta, body: Bytes, route: &str) -> http::Request<RecordBody> {
    let text = format!("{route}:{}", String::from_utf8_lossy(&body));
    let mut req = http::Request::new(RecordBody::new(Some(Bytes::from(text))));
    req.extensions_mut().insert(meta.clone());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_http_layers_compose_unchanged() {
    let topic = unique("tower-http");
    create_topic_with_dlq(&topic, 1).await;
    produce(
        &topic,
        [
            Rec::payload("slow"),
            Rec::payload("panic"),
            Rec::payload("fine"),
        ],
    )
    .await;

    let rec = Recorder::default();
    let handler = tower::service_fn({
        let rec = rec.clone();
        move |req: http::Request<RecordBody>| {
            let seen = rec.record(&req);
            let request_id = req.headers().get("x-request-id").cloned();
            async move {
                assert!(request_id.is_some(), "SetRequestId ran before the handler");
                match (seen.text().as_str(), seen.attempt) {
                    // Too slow on the first attempt: TimeoutLayer answers 408, which is retried.
                    ("slow", 1) => tokio::time::sleep(Duration::from_secs(5)).await,
                    ("panic", _) => panic!("handler bug"),
                    _ => {}
                }
                Ok::<_, BoxError>(http::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"ok"),
                )))
            }
        }
    });
    let service = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(300),
        ))
        .layer(CatchPanicLayer::new())
        .service(handler);

    // CatchPanic turns the panic into a 500, a retryable status: with
    // holding off, it is dead-lettered once its attempts are spent.
    let no_hold = kafka_tower::RetryPolicy {
        hold: Duration::ZERO,
        ..kafka_tower::RetryPolicy::exponential(
            3,
            Duration::from_millis(10),
            Duration::from_millis(100),
        )
    };
    let running = spawn(
        consumer(&unique("g"), &[&topic])
            .retry(no_hold)
            .build()
            .unwrap(),
        service,
    );
    let dlq = read_topic(&format!("{topic}.dlq"), 1).await;
    rec.wait_until("`fine` served", |s| s.iter().any(|x| x.text() == "fine"))
        .await;
    let stats = running.stats.clone();
    running.stop().await;

    let slow: Vec<u32> = rec
        .all()
        .iter()
        .filter(|s| s.text() == "slow")
        .map(|s| s.attempt)
        .collect();
    assert_eq!(
        slow,
        vec![1, 2],
        "a 408 from TimeoutLayer is retried and the retry succeeds"
    );
    let panics = rec.all().iter().filter(|s| s.text() == "panic").count();
    assert_eq!(panics, 3, "CatchPanic's 500 is retried up to max_attempts");
    let h = &dlq[0].headers;
    assert_eq!(dlq[0].payload.as_deref(), Some(&b"panic"[..]));
    assert_eq!(header_text(h, "kt-dlq-status").as_deref(), Some("500"));
    assert_eq!(
        header_text(h, "kt-dlq-error-class").as_deref(),
        Some("retryable-status")
    );
    assert_eq!(stats.dead_lettered(), 1);
}
