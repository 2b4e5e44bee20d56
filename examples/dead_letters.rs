//! Dead letters end to end: a service with a validation bug dead-letters
//! good orders; with the fix deployed, the operator inspects the dead
//! letters and redrives only the ones the bug refused.
//!
//! ```text
//! export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
//! cargo run --example dead_letters -- buggy orders     # 50 orders, 13 dead letters
//! cargo run --features cli --bin kafka-tower -- dlq stats orders.dlq
//! cargo run --features cli --bin kafka-tower -- dlq redrive orders.dlq --reason invalid --dry-run
//! cargo run --features cli --bin kafka-tower -- dlq redrive orders.dlq --reason invalid --note "fix #12"
//! cargo run --example dead_letters -- fixed orders 10  # serves the 10 copies
//! ```
//!
//! The bug: the `buggy` service refuses every order not in EUR as
//! `invalid` (as a schema layer would); three orders also carry an expired
//! token and are refused by "jwt" as `expired` — those stay dead letters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kafka_tower::runtime::rdkafka_headers;
use kafka_tower::{BoxError, Consumer, RawHeader, RawHeaders, RecordBody, Refusal};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const ORDERS: usize = 50;
const EXPIRED: [usize; 3] = [7, 23, 41];

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let servers = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .map_err(|_| "set KAFKA_BOOTSTRAP_SERVERS (e.g. 127.0.0.1:9092)")?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["buggy", topic] => buggy(&servers, topic).await,
        ["fixed", topic, expected] => fixed(&servers, topic, expected.parse()?).await,
        _ => Err("usage: dead_letters buggy <topic> | fixed <topic> <records>".into()),
    }
}

/// Produces the orders and serves them with the buggy service until every
/// refused one is dead-lettered.
async fn buggy(servers: &str, topic: &str) -> Result<(), BoxError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()?;
    let dlq = format!("{topic}.dlq");
    for r in admin
        .create_topics(
            &[
                NewTopic::new(topic, 2, TopicReplication::Fixed(1)),
                NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| format!("cannot create {t}: {e}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()?;
    for i in 0..ORDERS {
        let currency = if i % 5 == 0 { "CHF" } else { "EUR" };
        let payload = format!(
            r#"{{"order":{i},"amount":{},"currency":"{currency}"}}"#,
            10 + i
        );
        let mut headers = RawHeaders::new();
        headers.push(RawHeader::new("x-correlation-id", format!("order-{i}")));
        if EXPIRED.contains(&i) {
            headers.push(RawHeader::new("x-token", "expired"));
        }
        let key = format!("order-{i}");
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(rdkafka_headers(&headers)),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let refused = (0..ORDERS)
        .filter(|i| i % 5 == 0 || EXPIRED.contains(i))
        .count();
    serve(servers, topic, Until::Refused(refused), |order| {
        order.contains(r#""currency":"EUR""#)
    })
    .await?;
    println!("{ORDERS} orders served; {refused} dead-lettered to {dlq}");
    Ok(())
}

/// Serves with the fixed service until `expected` records were handled.
async fn fixed(servers: &str, topic: &str, expected: usize) -> Result<(), BoxError> {
    let served = serve(servers, topic, Until::Handled(expected), |_| true).await?;
    println!("fixed service: {served} records served");
    Ok(())
}

/// When a run stops.
#[derive(Clone, Copy)]
enum Until {
    /// This many records were refused (and so dead-lettered).
    Refused(usize),
    /// This many records were handled.
    Handled(usize),
}

/// Serves `topic` in the service's group with `accepts` deciding validity
/// (expired tokens are always refused) until `until`; returns the records
/// handled.
async fn serve(
    servers: &str,
    topic: &str,
    until: Until,
    accepts: fn(&str) -> bool,
) -> Result<usize, BoxError> {
    let refused = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let service = {
        let (refused, handled, done) = (refused.clone(), handled.clone(), done.clone());
        tower::service_fn(move |req: Request<RecordBody>| {
            let raw = req
                .extensions()
                .get::<RawHeaders>()
                .cloned()
                .unwrap_or_default();
            let header = |name: &str| {
                raw.iter()
                    .find(|h| &h.key[..] == name.as_bytes())
                    .and_then(|h| h.value.clone())
            };
            let expired = header("x-token").is_some();
            let note = header("kt-redrive-note");
            let order =
                String::from_utf8_lossy(req.body().payload().map_or(&[][..], |p| p)).into_owned();
            let mut res = Response::new(String::new());
            let refusal = if expired {
                Some((
                    StatusCode::UNAUTHORIZED,
                    "jwt",
                    "expired",
                    "the token has expired",
                ))
            } else if !accepts(&order) {
                Some((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "schema",
                    "invalid",
                    "/currency: \"EUR\" was expected",
                ))
            } else {
                None
            };
            if let Some((status, layer, reason, detail)) = refusal {
                *res.status_mut() = status;
                res.extensions_mut()
                    .insert(Refusal::new(layer, reason, detail));
                refused.fetch_add(1, Ordering::SeqCst);
            } else if let Some(note) = note {
                println!(
                    "served a redriven order ({}): {order}",
                    String::from_utf8_lossy(&note)
                );
            }
            let n = handled.fetch_add(1, Ordering::SeqCst) + 1;
            let reached = match until {
                Until::Refused(r) => refused.load(Ordering::SeqCst) >= r,
                Until::Handled(h) => n >= h,
            };
            if reached {
                done.notify_one();
            }
            async move { Ok::<_, BoxError>(res) }
        })
    };
    Consumer::builder()
        .bootstrap_servers(servers)
        .group_id(format!("{topic}-service"))
        .topics([topic])
        .property("auto.offset.reset", "earliest")
        .service_id("orders")
        .build()?
        .serve(service, async move { done.notified().await })
        .await?;
    Ok(handled.load(Ordering::SeqCst))
}
