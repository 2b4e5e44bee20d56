//! The service view and the runtime view of a consumer on a real broker.
#![cfg(feature = "runtime")]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kafka_tower::{RecordBody, RecordMeta};
use kafka_tower_metrics::Metrics;
use support::*;
use tower::ServiceBuilder;

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split(['{', ' ']).next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_outcomes_dead_letters_retries_and_lag_are_exported() {
    let topic = unique("metrics");
    create_topics(&[&topic, &format!("{topic}.dlq")]).await;
    // key "ok": 200; "flaky": 503 on the first attempt, then 200; "bad": 422.
    produce(
        &topic,
        &[
            ("ok", "1", &[]),
            ("flaky", "2", &[]),
            ("bad", "3", &[]),
            ("ok", "4", &[]),
        ],
    )
    .await;

    let metrics = Metrics::builder().service_id("orders").build().unwrap();
    let attempts: Arc<Mutex<HashMap<i64, u32>>> = Default::default();
    let handler = {
        let attempts = attempts.clone();
        tower::service_fn(move |req: Request<RecordBody>| {
            let meta = req.extensions().get::<RecordMeta>().unwrap().clone();
            attempts
                .lock()
                .unwrap()
                .insert(meta.offset(), meta.attempt());
            let key = meta.key().map(|k| k.to_vec()).unwrap_or_default();
            let status = match (&key[..], meta.attempt()) {
                (b"flaky", 1) => StatusCode::SERVICE_UNAVAILABLE,
                (b"bad", _) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::OK,
            };
            async move {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .body(String::new())
                        .unwrap(),
                )
            }
        })
    };
    let service = ServiceBuilder::new()
        .layer(metrics.layer())
        .service(handler);
    let consumer = consumer(&unique("g"), &topic)
        .property("statistics.interval.ms", "200")
        .build()
        .unwrap();
    let stats = consumer.stats();
    metrics.register_runtime(stats.clone()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(consumer.serve(service, async move {
        let _ = stop_rx.await;
    }));

    // The runtime reports through counters and librdkafka statistics, not
    // events: poll the exposition until every record is finished (three
    // handled, one dead-lettered) and lag is reported, or fail after WAIT.
    tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            tick.tick().await;
            let finished = stats.succeeded() + stats.dead_lettered();
            if finished >= 4
                && metrics
                    .render()
                    .contains("kafka_tower_consumer_lag_records{")
            {
                return;
            }
        }
    })
    .await
    .expect("records finished and lag reported in time");
    let _ = stop_tx.send(());
    join.await.unwrap().unwrap();

    let text = metrics.render();
    let svc = |outcome: &str| {
        sample(
            &text,
            "kafka_tower_records_total",
            &[
                ("service", "orders"),
                ("topic", &topic),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(svc("ok"), Some(3.0), "{text}");
    assert_eq!(svc("retryable"), Some(1.0));
    assert_eq!(svc("failed"), Some(1.0));
    let runtime = |name: &str| sample(&text, name, &[("service", "orders")]);
    assert_eq!(
        runtime("kafka_tower_consumer_dead_letters_total"),
        Some(1.0)
    );
    assert_eq!(runtime("kafka_tower_consumer_retries_total"), Some(1.0));
    assert_eq!(runtime("kafka_tower_consumer_attempts_total"), Some(5.0));
    assert!(runtime("kafka_tower_consumer_commits_total").unwrap() >= 1.0);
    assert_eq!(runtime("kafka_tower_consumer_records_in_flight"), Some(0.0));
    let lag = sample(
        &text,
        "kafka_tower_consumer_lag_records",
        &[("topic", &topic), ("partition", "0")],
    )
    .expect("lag of partition 0 exported");
    assert!((0.0..=4.0).contains(&lag), "lag {lag}");
    assert_eq!(
        attempts.lock().unwrap()[&1],
        2,
        "the flaky record was retried once"
    );
}
