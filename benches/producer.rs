//! Producer throughput: a raw rdkafka `FutureProducer` against the
//! kafka-tower `Producer` service with context injection
//! (`InjectContextLayer`), side by side in one run.
//!
//! ```text
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo bench --bench producer
//! cargo bench --bench producer            # librdkafka's mock cluster
//! ```
//!
//! Knobs: `BENCH_RECORDS` (default 100000), `BENCH_RECORD_SIZE` (512),
//! `BENCH_ROUNDS` (3), `BENCH_IN_FLIGHT` (1000). Rounds alternate raw and
//! service so that drift on a shared machine hits both; the ratio of the
//! medians is reported.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::Request;
use http_body_util::Full;
use kafka_tower::context::{InjectContextLayer, PropagatedContext, CORRELATION_ID, TRACEPARENT};
use kafka_tower::runtime::{Producer, ProducerConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tower::{Layer, ServiceExt};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const CORRELATION: &str = "3f1d2c4e-8a7b-4c1d-9e2f-0a1b2c3d4e5f";
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TOKEN: &str = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2ln";

/// The raw producer; with `headers`, the same three headers the service
/// injects, set by hand (the same bytes on the wire).
async fn raw(
    producer: &FutureProducer,
    topic: &str,
    n: usize,
    payload: &[u8],
    window: usize,
    headers: bool,
) -> Duration {
    use rdkafka::message::{Header, OwnedHeaders};
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        let key = i.to_string();
        pending.push(async move {
            let mut record = FutureRecord::to(topic).key(&key).payload(payload);
            if headers {
                record = record.headers(
                    OwnedHeaders::new_with_capacity(3)
                        .insert(Header {
                            key: "x-correlation-id",
                            value: Some(CORRELATION),
                        })
                        .insert(Header {
                            key: "traceparent",
                            value: Some(TRACE),
                        })
                        .insert(Header {
                            key: "authorization",
                            value: Some(TOKEN),
                        }),
                );
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("raw send")
        });
        if pending.len() >= window {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
    start.elapsed()
}

async fn service(
    producer: &Producer,
    topic: &str,
    n: usize,
    payload: &Bytes,
    window: usize,
) -> Duration {
    let svc = InjectContextLayer::new().layer(producer.clone());
    let mut ctx = PropagatedContext::new();
    ctx.insert(CORRELATION_ID, "3f1d2c4e-8a7b-4c1d-9e2f-0a1b2c3d4e5f")
        .unwrap();
    ctx.insert(
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .unwrap();
    ctx.insert(
        http::header::AUTHORIZATION,
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2ln",
    )
    .unwrap();
    let uri = format!("/{topic}");
    ctx.scope(async {
        let start = Instant::now();
        let mut pending = FuturesUnordered::new();
        for i in 0..n {
            let req = Request::post(uri.as_str())
                .extension(kafka_tower::OutgoingRecord {
                    key: Some(Bytes::from(i.to_string())),
                    ..Default::default()
                })
                .body(Full::new(payload.clone()))
                .unwrap();
            pending.push(PropagatedContext::in_current(svc.clone().oneshot(req)));
            if pending.len() >= window {
                pending.next().await.unwrap().expect("service send");
            }
        }
        while let Some(r) = pending.next().await {
            r.expect("service send");
        }
        start.elapsed()
    })
    .await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args; do
    // nothing unless invoked by `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_usize("BENCH_RECORDS", 100_000);
    let size = env_usize("BENCH_RECORD_SIZE", 512);
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let window = env_usize("BENCH_IN_FLIGHT", 1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mock;
        let topic = format!("bench-produce-{}", std::process::id());
        let (bootstrap, kind) = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            Ok(b) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", &b)
                    .create()
                    .unwrap();
                admin
                    .create_topics(
                        &[NewTopic::new(&topic, 16, TopicReplication::Fixed(1))],
                        &AdminOptions::new(),
                    )
                    .await
                    .unwrap();
                (b, "Apache Kafka broker")
            }
            Err(_) => {
                mock = MockCluster::new(1).unwrap();
                mock.create_topic(&topic, 16, 1).unwrap();
                (mock.bootstrap_servers(), "librdkafka mock cluster")
            }
        };
        let config = ProducerConfig::new(&bootstrap).property("linger.ms", "5");
        let raw_producer: FutureProducer = config_for_raw(&bootstrap).create().unwrap();
        let svc_producer = Producer::new(config).unwrap();
        let payload = Bytes::from(vec![b'x'; size]);
        // Warm up both (connections, metadata, the topic check).
        raw(&raw_producer, &topic, 1000, &payload, window, false).await;
        service(&svc_producer, &topic, 1000, &payload, window).await;

        println!("producer bench: {n} records of {size} B per round, {window} in flight, {kind}");
        println!("(a) raw FutureProducer, no headers; (h) raw FutureProducer with the 3 context headers set by hand; (s) Producer service + InjectContextLayer");
        println!("| round | (a) rec/s | (h) rec/s | (s) rec/s | s/a | s/h |");
        println!("|---|---|---|---|---|---|");
        let (mut a, mut h, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let ra = n as f64 / raw(&raw_producer, &topic, n, &payload, window, false).await.as_secs_f64();
            let rh = n as f64 / raw(&raw_producer, &topic, n, &payload, window, true).await.as_secs_f64();
            let rb = n as f64 / service(&svc_producer, &topic, n, &payload, window).await.as_secs_f64();
            println!("| {round} | {ra:.0} | {rh:.0} | {rb:.0} | {:.3} | {:.3} |", rb / ra, rb / rh);
            a.push(ra);
            h.push(rh);
            b.push(rb);
        }
        let (ma, mh, mb) = (median(a), median(h), median(b));
        println!("| median | {ma:.0} | {mh:.0} | {mb:.0} | {:.3} | {:.3} |", mb / ma, mb / mh);
    });
}

/// The raw producer gets the same settings the service's producer has.
fn config_for_raw(bootstrap: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    cc
}
