//! HTTP → Kafka → HTTP with one identity and one trace.
//!
//! An axum endpoint accepts a command carrying a JWT, verifies it, and
//! publishes an event; the caller's token, correlation id, traceability id
//! and trace context travel in the record's headers. A consumer handles the
//! event and calls a downstream HTTP service, which receives the same
//! values.
//!
//! ```text
//! cargo run --example http_to_kafka                    # embedded mock cluster
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run --example http_to_kafka
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kafka_tower::context::{CaptureContextLayer, InjectContextLayer};
use kafka_tower::runtime::{Producer, ProducerConfig};
use kafka_tower::{BoxError, Consumer, PropagatedContext, RecordBody};
use kafka_tower_jwt::{Algorithm, JwtLayer, VerificationKey, VerifiedClaims};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use serde_json::json;
use tower::{Layer, ServiceExt};

const SECRET: &[u8] = b"demo-secret-of-at-least-thirty-two-bytes!";

fn show(hop: &str, h: &HeaderMap) {
    let get = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let token = h
        .get("authorization")
        .map_or("-".to_owned(), |v| format!("Bearer …({} bytes)", v.len()));
    println!(
        "{hop:<22} authorization={token} x-correlation-id={} x-traceability-id={} traceparent={}",
        get("x-correlation-id"),
        get("x-traceability-id"),
        get("traceparent")
    );
}

async fn serve(app: Router) -> Result<String, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Kafka: the real broker if named, else an in-process mock.
    let mock;
    let topic = format!("order-events-{}", std::process::id());
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(servers) => {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &servers)
                .create()?;
            let dlq = format!("{topic}.dlq");
            let new = [
                NewTopic::new(&topic, 1, TopicReplication::Fixed(1)),
                NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
            ];
            admin.create_topics(&new, &AdminOptions::new()).await?;
            servers
        }
        Err(_) => {
            mock = MockCluster::new(1)?;
            mock.create_topic(&topic, 1, 1)?;
            mock.create_topic(&format!("{topic}.dlq"), 1, 1)?;
            mock.bootstrap_servers()
        }
    };

    // 3rd hop: a downstream HTTP service.
    let done = Arc::new(tokio::sync::Notify::new());
    let downstream = serve(Router::new().route(
        "/notify",
        post({
            let done = done.clone();
            move |headers: HeaderMap| async move {
                show("3. downstream HTTP", &headers);
                done.notify_one();
                StatusCode::OK
            }
        }),
    ))
    .await?;

    // 1st hop: the command API. JWT verified, context captured, event
    // published with the context injected into the record headers.
    let producer = InjectContextLayer::new().layer(Producer::new(ProducerConfig::new(&bootstrap))?);
    let jwt = JwtLayer::builder()
        .key(VerificationKey::hmac(SECRET, Algorithm::HS256)?)
        .issuer("https://idp.example.com")
        .build()?;
    let api = Router::new()
        .route(
            "/orders",
            post({
                let topic = topic.clone();
                move |headers: HeaderMap,
                      axum::Extension(claims): axum::Extension<VerifiedClaims>,
                      body: Bytes| async move {
                    show("1. command API", &headers);
                    let event = Request::post(format!("/{topic}"))
                        .header("content-type", "application/json")
                        .header("x-caller", claims.subject().unwrap_or("?"))
                        .body(Full::new(body))
                        .unwrap();
                    match producer.oneshot(event).await {
                        Ok(_) => StatusCode::ACCEPTED,
                        Err(e) => {
                            eprintln!("publish failed: {e}");
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                }
            }),
        )
        .layer(CaptureContextLayer::new())
        .layer(jwt);
    let api_url = serve(api).await?;

    // 2nd hop: a consumer of the events that calls the downstream service;
    // the runtime captured the record's context, InjectContext sends it on.
    let client = InjectContextLayer::new()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let handler = tower::service_fn(move |req: Request<RecordBody>| {
        let client = client.clone();
        let url = format!("{downstream}/notify");
        async move {
            show("2. Kafka consumer", req.headers());
            let ctx = PropagatedContext::current()
                .expect("the runtime scopes each call in the record's context");
            assert_eq!(
                ctx.correlation_id(),
                req.headers()
                    .get("x-correlation-id")
                    .and_then(|v| v.to_str().ok())
            );
            let res = client
                .oneshot(Request::post(url).body(Full::new(Bytes::new()))?)
                .await?;
            Ok::<_, BoxError>(
                Response::builder()
                    .status(res.status())
                    .body(String::new())?,
            )
        }
    });
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id("http-to-kafka")
        .topics([topic.as_str()])
        .property("auto.offset.reset", "earliest")
        .build()?;
    let shutdown = {
        let done = done.clone();
        async move { done.notified().await }
    };
    let consumer = tokio::spawn(consumer.serve(handler, shutdown));

    // A client calls the API with a token and a trace.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": "https://idp.example.com", "sub": "user-42", "exp": now + 300}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET)?,
    )?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = http
        .request(
            Request::post(format!("{api_url}/orders"))
                .header("authorization", format!("Bearer {token}"))
                .header("x-traceability-id", "checkout-2026-0001")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .body(Full::new(Bytes::from_static(
                    br#"{"order":"o-1","total":10}"#,
                )))?,
        )
        .await?;
    println!(
        "0. client                got {} (a correlation id was generated at the first hop)",
        res.status()
    );
    tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .map_err(|_| "timed out waiting for the downstream call")???;
    Ok(())
}
