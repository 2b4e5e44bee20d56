//! Quickstart: produce a few records with headers, serve them through a
//! small `ServiceBuilder` stack, print what was served, exit.
//!
//! ```text
//! cargo run --example quickstart                      # embedded mock cluster
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run --example quickstart
//! ```
//!
//! Without `KAFKA_BOOTSTRAP_SERVERS` it runs on librdkafka's in-process mock
//! cluster, so it needs no broker at all.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kafka_tower::runtime::rdkafka_headers;
use kafka_tower::{BoxError, Consumer, RawHeader, RawHeaders, RecordBody, RecordMeta};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tower::{service_fn, ServiceBuilder};

const RECORDS: usize = 5;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // 1. A Kafka cluster: the real one if named, else an in-process mock.
    let mock;
    let topic;
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(servers) => {
            topic = format!("quickstart-{}", std::process::id());
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &servers)
                .create()?;
            admin
                .create_topics(
                    &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                )
                .await?;
            println!("using the broker at {servers}, topic {topic}");
            servers
        }
        Err(_) => {
            topic = "orders".to_owned();
            mock = MockCluster::new(1)?;
            mock.create_topic(&topic, 3, 1)?;
            println!(
                "KAFKA_BOOTSTRAP_SERVERS is unset: using librdkafka's in-process mock cluster"
            );
            mock.bootstrap_servers()
        }
    };

    // 2. Produce a few records with headers.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    for i in 0..RECORDS {
        let headers: RawHeaders = [
            RawHeader::new(&b"X-Correlation-Id"[..], format!("corr-{i}")),
            RawHeader::new(&b"content-type"[..], &b"application/json"[..]),
        ]
        .into_iter()
        .collect();
        let key = format!("order-{i}");
        let payload = format!("{{\"order\":{i},\"total\":{}}}", 10 * (i + 1));
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(rdkafka_headers(&headers)),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    println!("produced {RECORDS} records to {topic}");

    // 3. The service: any tower::Service<http::Request<RecordBody>>.
    let served = Arc::new(AtomicUsize::new(0));
    let all_served = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let served = served.clone();
        let all_served = all_served.clone();
        service_fn(move |req: Request<RecordBody>| {
            let served = served.clone();
            let all_served = all_served.clone();
            async move {
                let meta = req
                    .extensions()
                    .get::<RecordMeta>()
                    .expect("set by the runtime");
                let key = meta
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                let correlation = req
                    .headers()
                    .get("x-correlation-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                let body = req
                    .body()
                    .payload()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                println!(
                    "served {} {} partition={} offset={} key={key} x-correlation-id={correlation} body={body}",
                    req.method(),
                    req.uri().path(),
                    meta.partition(),
                    meta.offset(),
                );
                if served.fetch_add(1, Ordering::SeqCst) + 1 == RECORDS {
                    all_served.notify_one();
                }
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(String::new())
                        .unwrap(),
                )
            }
        })
    };
    // 4. Cross-cutting concerns are ordinary tower / tower-http layers.
    let service = ServiceBuilder::new()
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(5)))
        .map_err(BoxError::from)
        .service(handler);

    // 5. Serve until every record was served, then shut down gracefully.
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id("quickstart")
        .topics([topic.as_str()])
        .property("auto.offset.reset", "earliest")
        .build()?;
    let shutdown = async move { all_served.notified().await };
    tokio::time::timeout(Duration::from_secs(60), consumer.serve(service, shutdown))
        .await
        .map_err(|_| "timed out waiting for the records to be served")??;
    println!(
        "served {} records; offsets committed; bye",
        served.load(Ordering::SeqCst)
    );
    Ok(())
}
