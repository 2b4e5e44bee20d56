//! JWT verification and JSON Schema validation in front of a consumer —
//! and the very same layers on an axum route.
//!
//! ```text
//! cargo run --example secure_consumer                  # embedded mock cluster
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run --example secure_consumer
//! ```
//!
//! Four records are produced to `orders`: one valid, one without a token,
//! one whose token lacks the `orders.w` scope, one whose payload breaks the
//! schema. The first is served; the others are dead-lettered, and their
//! dead-letter headers say which layer refused them and why. The keys (a
//! JWKS file) and the schemas (with a `$ref` across files) live in
//! `examples/secure_consumer/`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use kafka_tower::runtime::{rdkafka_headers, record_from_message};
use kafka_tower::{BoxError, Consumer, RawHeader, RawHeaders, RecordBody};
use kafka_tower_jwt::{ExpiryMode, JwtLayer, TopicPolicy, VerifiedClaims};
use kafka_tower_schema::JsonSchemaLayer;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/secure_consumer");
const ISSUER: &str = "https://idp.example.com";

/// Mints a token with the demo key (an identity provider's job, not a
/// consumer's: it is here only so that the example is self-contained).
fn mint(scope: &str) -> Result<String, BoxError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(format!(
        "{DIR}/demo-signing-key.pem"
    ))?)?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("demo-1".into());
    let claims = json!({"iss": ISSUER, "sub": "user-42", "client_id": "web-shop", "scope": scope, "iat": now, "exp": now + 600});
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (jwt, schemas) = layers_for("orders")?;

    // The same layers on an HTTP route.
    let route = Router::new()
        .route(
            "/orders",
            post(
                |axum::Extension(claims): axum::Extension<VerifiedClaims>, body: Bytes| async move {
                    format!(
                        "accepted {} bytes from {}",
                        body.len(),
                        claims.subject().unwrap_or("?")
                    )
                },
            ),
        )
        .layer(schemas.clone())
        .layer(jwt.clone());
    let good = mint("orders.w")?;
    for (what, token, body) in [
        (
            "valid",
            Some(good.as_str()),
            r#"{"id":"o-1","customer":{"id":"c-1"},"total":10}"#,
        ),
        (
            "no token",
            None,
            r#"{"id":"o-2","customer":{"id":"c-1"},"total":10}"#,
        ),
        (
            "bad payload",
            Some(good.as_str()),
            r#"{"id":"o-3","customer":{},"total":-1}"#,
        ),
    ] {
        let mut req = Request::post("/orders").header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = route
            .clone()
            .oneshot(req.body(axum::body::Body::from(body))?)
            .await?;
        println!("HTTP  {what:<12} -> {}", res.status());
    }

    // A Kafka cluster: the real one if named, else an in-process mock.
    let mock;
    let (bootstrap, topic) = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(servers) => {
            let topic = format!("orders-{}", std::process::id());
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &servers)
                .create()?;
            let dlq = format!("{topic}.dlq");
            let new = [
                NewTopic::new(&topic, 1, TopicReplication::Fixed(1)),
                NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
            ];
            admin.create_topics(&new, &AdminOptions::new()).await?;
            (servers, topic)
        }
        Err(_) => {
            mock = MockCluster::new(1)?;
            mock.create_topic("orders", 1, 1)?;
            mock.create_topic("orders.dlq", 1, 1)?;
            (mock.bootstrap_servers(), "orders".to_owned())
        }
    };
    // On a real broker the topic has a unique name: configure the layers
    // for it.
    let (jwt, schemas) = if topic == "orders" {
        (jwt, schemas)
    } else {
        layers_for(&topic)?
    };

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let records = [
        (
            "valid",
            Some(good.clone()),
            r#"{"id":"o-1","customer":{"id":"c-1"},"total":10}"#,
        ),
        (
            "no token",
            None,
            r#"{"id":"o-2","customer":{"id":"c-1"},"total":10}"#,
        ),
        (
            "no scope",
            Some(mint("orders.r")?),
            r#"{"id":"o-3","customer":{"id":"c-1"},"total":10}"#,
        ),
        (
            "bad payload",
            Some(good),
            r#"{"id":"o-4","customer":{},"total":-1}"#,
        ),
    ];
    for (_, token, body) in &records {
        let mut headers = RawHeaders::new();
        if let Some(t) = token {
            headers.push(RawHeader::new(&b"Authorization"[..], format!("Bearer {t}")));
        }
        producer
            .send(
                FutureRecord::<(), _>::to(&topic)
                    .payload(*body)
                    .headers(rdkafka_headers(&headers)),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }

    let served = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let served = served.clone();
        service_fn(move |req: Request<RecordBody>| {
            let served = served.clone();
            async move {
                let who = req
                    .extensions()
                    .get::<VerifiedClaims>()
                    .and_then(|c| c.subject().map(str::to_owned));
                println!(
                    "Kafka served {:?} from {who:?}",
                    req.body()
                        .payload()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                );
                served.notify_one();
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
    };
    let service = ServiceBuilder::new()
        .layer(jwt)
        .layer(schemas)
        .service(handler);
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id("secure-consumer")
        .topics([topic.as_str()])
        .property("auto.offset.reset", "earliest")
        .build()?;
    let dlq_topic = format!("{topic}.dlq");
    let dlq_bootstrap = bootstrap.clone();
    let dead_letters = tokio::task::spawn_blocking(move || read(&dlq_bootstrap, &dlq_topic, 3));
    let all_read = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let all_read = all_read.clone();
        async move {
            served.notified().await;
            all_read.notified().await;
        }
    };
    let run = tokio::spawn(consumer.serve(service, shutdown));
    let dead_letters = dead_letters.await??;
    all_read.notify_one();
    for r in dead_letters {
        let h = |n: &str| {
            r.headers
                .get_last(n.as_bytes())
                .flatten()
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        println!(
            "Kafka dead-lettered offset {}: {} refused it, reason {} (status {})",
            h("kt-dlq-original-offset").unwrap_or_default(),
            h("kt-dlq-failed-by").unwrap_or_default(),
            h("kt-dlq-reason").unwrap_or_default(),
            h("kt-dlq-status").unwrap_or_default(),
        );
    }
    run.await??;
    Ok(())
}

/// The JWT layer (keys from the JWKS file; topic `topic` needs scope
/// `orders.w` and judges expiry against the record's timestamp) and the
/// schema layer (`schemas/orders.json` for `topic`).
fn layers_for(topic: &str) -> Result<(JwtLayer, JsonSchemaLayer), BoxError> {
    let jwt = JwtLayer::builder()
        .jwks_file(format!("{DIR}/jwks.json"))
        .issuer(ISSUER)
        .topic(
            topic,
            TopicPolicy::new()
                .expiry(ExpiryMode::RecordTimestamp {
                    max_age: Duration::from_secs(86_400),
                })
                .require_scope("orders.w"),
        )
        .build()?;
    let schemas = JsonSchemaLayer::builder()
        .schema_file(topic, format!("{DIR}/schemas/orders.json"))
        .build()?;
    Ok((jwt, schemas))
}

/// Reads `n` records of `topic` from the beginning.
fn read(
    bootstrap: &str,
    topic: &str,
    n: usize,
) -> Result<Vec<kafka_tower::ConsumedRecord>, BoxError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "secure-consumer-dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        if std::time::Instant::now() > deadline {
            return Err(format!("only {} of {n} dead letters arrived", out.len()).into());
        }
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(record_from_message(&m?));
        }
    }
    Ok(out)
}
