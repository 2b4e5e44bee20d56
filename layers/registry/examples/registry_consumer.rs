//! Serves Avro orders from the Confluent wire format, every version read
//! as version 2 (a `currency` field with a default), after checking at
//! start that version 2 can read what the registry holds. The pair of
//! `registry_producer`; see there for the commands.
//!
//! Records the registry layer refuses (not framed, unknown schema id,
//! undecodable) go to `<topic>.dlq` with the reason.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, Response};
use kafka_tower::{BoxError, Consumer, RecordBody};
use kafka_tower_registry::{Decoded, DecodedKey, LocalSchema, RegistryClient, RegistryLayer};
use tower::Layer;

/// Version 2: what this service reads every record as.
const ORDER_V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"string"},
    {"name":"total","type":"double"},
    {"name":"currency","type":"string","default":"EUR"}]}"#;

#[derive(serde::Deserialize, Debug)]
#[allow(dead_code)] // printed with Debug
struct Order {
    id: String,
    total: f64,
    currency: String,
}

fn env(name: &str, how: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("set {name} ({how})").into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [topic, count] = &args[..] else {
        return Err("usage: registry_consumer <topic> <records to serve before stopping>".into());
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

    let layer = RegistryLayer::builder(RegistryClient::builder(registry).build()?)
        .value_reader(topic, LocalSchema::avro(ORDER_V2)?)
        .key(topic)
        .enforce_subject(true)
        .build();
    // Stop now, naming the field, rather than dead-letter every record.
    layer.check_compatibility().await?;

    let served = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let service = {
        let served = served.clone();
        tower::service_fn(move |req: Request<RecordBody>| {
            let served = served.clone();
            let done_tx = done_tx.clone();
            async move {
                let decoded = req.extensions().get::<Decoded>().ok_or("not decoded")?;
                let order: Order = decoded.deserialize()?;
                let customer = req
                    .extensions()
                    .get::<DecodedKey>()
                    .map(|k| k.0.to_json())
                    .transpose()?;
                println!(
                    "{order:?} customer {customer:?} (schema id {}, version {:?})",
                    decoded.schema_id(),
                    decoded.version()
                );
                if served.fetch_add(1, Ordering::SeqCst) + 1 >= count {
                    done_tx.send_replace(true);
                }
                Ok::<_, BoxError>(Response::new(String::new()))
            }
        })
    };
    let consumer = Consumer::builder()
        .bootstrap_servers(servers)
        .group_id(format!("{topic}-registry-example"))
        .topics([topic.as_str()])
        .property("auto.offset.reset", "earliest")
        .build()?;
    let mut done = done_rx;
    consumer
        .serve(layer.layer(service), async move {
            let _ = done.wait_for(|d| *d).await;
        })
        .await?;
    println!("{} orders served", served.load(Ordering::SeqCst));
    Ok(())
}
