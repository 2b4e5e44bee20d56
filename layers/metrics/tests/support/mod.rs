//! Helpers of the tests that need a real Kafka broker (the test kit's:
//! `KAFKA_BOOTSTRAP_SERVERS`, or one `cargo test` starts).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use kafka_tower::ConsumerBuilder;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// How long any wait for the broker may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(90);

pub use kafka_tower_testkit::bootstrap;

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn create_topics(names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create_topics")
    {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// A record to produce: key, payload, headers.
pub type Rec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Produces `(key, payload, headers)` records to partition 0, in order.
pub async fn produce(topic: &str, records: &[Rec<'_>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    for (key, payload, headers) in records {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in *headers {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        producer
            .send(
                FutureRecord::to(topic)
                    .key(*key)
                    .payload(*payload)
                    .partition(0)
                    .headers(h),
                WAIT,
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

/// A consumer builder for the test broker with fast retries and commits.
pub fn consumer(group: &str, topic: &str) -> ConsumerBuilder {
    kafka_tower::Consumer::builder()
        .bootstrap_servers(bootstrap())
        .group_id(group)
        .topics([topic])
        .property("auto.offset.reset", "earliest")
        .commit_interval(Duration::from_millis(200))
        .retry(kafka_tower::RetryPolicy::exponential(
            3,
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
}
