//! Produces orders in the Confluent wire format: Avro, with the schema
//! registered under `<topic>-value` (and a string key under `<topic>-key`).
//! Its pair, `registry_consumer`, serves them.
//!
//! ```text
//! # a broker and a registry (or run inside `scripts/test`'s):
//! eval "$(scripts/kafka.sh start | grep -E '^KAFKA_BOOTSTRAP_SERVERS=' | sed 's/^/export /')"
//! eval "$(scripts/registry.sh start | sed 's/^/export /')"
//! cargo run -p kafka-tower-registry --example registry_producer -- orders 5
//! cargo run -p kafka-tower-registry --example registry_consumer -- orders 5
//! ```
//!
//! Production registries are usually managed by CI: this example
//! registers its schema itself (`auto_register(true)`) only because the
//! test registry starts empty.

use kafka_tower::mapping::OutgoingRecord;
use kafka_tower::runtime::{Producer, ProducerConfig};
use kafka_tower::{BoxError, RawHeaders};
use kafka_tower_registry::{Encoder, LocalSchema, RegistryClient};

/// Version 1 of the order schema.
const ORDER_V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"string"},
    {"name":"total","type":"double"}]}"#;

#[derive(serde::Serialize)]
struct Order {
    id: String,
    total: f64,
}

/// Creates `topics` (one partition each) unless they exist.
async fn create_topics(servers: &str, topics: &[&str]) -> Result<(), BoxError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()?;
    let new: Vec<_> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("cannot create topic {t}: {e}").into()),
        }
    }
    Ok(())
}

fn env(name: &str, how: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("set {name} ({how})").into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [topic, count] = &args[..] else {
        return Err("usage: registry_producer <topic> <records>".into());
    };
    let count: usize = count.parse()?;
    let servers = env(
        "KAFKA_BOOTSTRAP_SERVERS",
        "a Kafka broker, e.g. from `scripts/kafka.sh start`",
    )?;
    let registry = env(
        "SCHEMA_REGISTRY_URL",
        "a Confluent-compatible schema registry, e.g. from `scripts/registry.sh start`",
    )?;

    let encoder = Encoder::builder(RegistryClient::builder(registry).build()?)
        .auto_register(true)
        .build();
    let schema = LocalSchema::avro(ORDER_V1)?;
    let key_schema = LocalSchema::avro(r#""string""#)?;
    create_topics(&servers, &[topic.as_str(), &format!("{topic}.dlq")]).await?;
    let producer = Producer::new(ProducerConfig::new(servers))?;
    for i in 0..count {
        let mut record = OutgoingRecord {
            topic: topic.clone(),
            partition: None,
            key: None,
            payload: None,
            headers: RawHeaders::new(),
            timestamp: None,
        };
        let order = Order {
            id: format!("o-{i}"),
            total: 10.0 * i as f64,
        };
        encoder.encode_payload(&mut record, &schema, &order).await?;
        encoder
            .encode_key(&mut record, &key_schema, &format!("customer-{}", i % 3))
            .await?;
        producer.send(record).await?;
    }
    let id = encoder
        .schema_id(topic, kafka_tower_registry::Part::Value, &schema)
        .await?;
    println!("{count} orders produced to {topic} with schema id {id}");
    Ok(())
}
