//! Batch handlers (`Consumer::serve_batches`) against a real Apache Kafka
//! broker.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use kafka_tower::runtime::{BatchMeta, BatchOutcome, Consumer, RecordBatch};
use kafka_tower::{Ordering, RawHeader, RawHeaders, RecordMeta};
use kafka_tower_testkit::*;

/// One call of the batch service: its meta, and each record's offset and
/// payload.
#[derive(Clone, Debug)]
struct Call {
    meta: BatchMeta,
    records: Vec<(i64, String)>,
}

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn record(&self, req: &Request<RecordBatch>) -> Call {
        let call = Call {
            meta: req.extensions().get::<BatchMeta>().unwrap().clone(),
            records: req
                .body()
                .iter()
                .map(|r| {
                    let meta = r.extensions().get::<RecordMeta>().unwrap();
                    let payload = r.body().payload().map(|p| p.to_vec()).unwrap_or_default();
                    (meta.offset(), String::from_utf8(payload).unwrap())
                })
                .collect(),
        };
        self.0.lock().unwrap().push(call.clone());
        call
    }

    fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    fn served(&self) -> usize {
        self.0.lock().unwrap().iter().map(|c| c.records.len()).sum()
    }
}

/// Serves `consumer` with `service` in the background until `stop` fires.
fn spawn_batches<S: kafka_tower::runtime::BatchService>(
    consumer: Consumer,
    service: S,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), kafka_tower::ConsumerError>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(consumer.serve_batches(service, async move {
        let _ = rx.await;
    }));
    (tx, join)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hold_up_to_max_batch_records_of_one_partition_in_order() {
    let topic = unique("batches");
    let group = unique("g");
    create_topic_with_dlq(&topic, 2).await;
    let per_partition = 200;
    produce(
        &topic,
        (0..per_partition * 2).map(|i| Rec::payload(format!("r{i}")).partition(i % 2)),
    )
    .await;

    let calls = Calls::default();
    let service = tower::service_fn({
        let calls = calls.clone();
        move |req: Request<RecordBatch>| {
            calls.record(&req);
            async { Ok::<_, Infallible>(http::Response::new(String::new())) }
        }
    });
    // Every record is in the topic already: each batch fills to max_batch
    // long before max_delay, which only bounds a broker that stalls.
    let consumer = consumer(&group, &[&topic])
        .max_batch(50)
        .max_batch_delay(Duration::from_secs(5))
        .build()
        .unwrap();
    let stats = consumer.stats();
    let (stop, join) = spawn_batches(consumer, service);
    eventually("every record served", || {
        calls.served() >= (per_partition * 2) as usize
    })
    .await;
    eventually("everything committed", || {
        committed(&group, &topic, 2) == vec![i64::from(per_partition); 2]
    })
    .await;
    stop.send(()).unwrap();
    join.await.unwrap().unwrap();

    let all = calls.all();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for call in &all {
        assert_eq!(call.meta.topic(), topic);
        assert_eq!(call.meta.attempt(), 1);
        assert_eq!(
            call.records.len(),
            50,
            "every batch full: {:?}",
            call.records
        );
        assert_eq!(call.meta.first_offset(), call.records[0].0);
        assert_eq!(call.meta.last_offset(), call.records[49].0);
        by_partition
            .entry(call.meta.partition())
            .or_default()
            .extend(call.records.iter().map(|(o, _)| *o));
    }
    for (partition, offsets) in &by_partition {
        assert_eq!(
            offsets,
            &(0..i64::from(per_partition)).collect::<Vec<_>>(),
            "partition {partition}: every record once, in offset order"
        );
    }
    assert_eq!(by_partition.len(), 2);
    assert_eq!(stats.succeeded(), u64::from(per_partition as u32 * 2));
    assert_eq!(stats.dead_lettered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answer_fails_records_one_by_one_retrying_and_dead_lettering_only_those() {
    let topic = unique("batch-outcome");
    let group = unique("g");
    create_topic_with_dlq(&topic, 1).await;
    // Every fifth record is not an order (permanent); "flaky" records fail
    // once with 503 (retryable). A non-UTF-8 header rides along on the
    // refused record to check its dead letter is byte-exact.
    let payload = |i: i32| match i % 5 {
        2 => format!("bad-{i}"),
        4 => format!("flaky-{i}"),
        _ => format!("ok-{i}"),
    };
    let mut odd = RawHeaders::new();
    odd.push(RawHeader::new(&b"k\xff"[..], &b"\x00v"[..]));
    produce(
        &topic,
        (0..20).map(|i| Rec::payload(payload(i)).headers(odd.clone())),
    )
    .await;

    let calls = Calls::default();
    let service = tower::service_fn({
        let calls = calls.clone();
        move |req: Request<RecordBatch>| {
            let call = calls.record(&req);
            let mut outcome = BatchOutcome::new();
            for (offset, text) in &call.records {
                if text.starts_with("bad") {
                    outcome.fail(*offset, StatusCode::UNPROCESSABLE_ENTITY, "not an order");
                } else if text.starts_with("flaky") && call.meta.attempt() == 1 {
                    outcome.fail(*offset, StatusCode::SERVICE_UNAVAILABLE, "database busy");
                }
            }
            async move { Ok::<_, Infallible>(outcome.into_response::<String>()) }
        }
    });
    let consumer = consumer(&group, &[&topic])
        .max_batch(20)
        .max_batch_delay(Duration::from_secs(5))
        .service_id("order-writer")
        .build()
        .unwrap();
    let stats = consumer.stats();
    let (stop, join) = spawn_batches(consumer, service);
    eventually("everything committed", || {
        committed(&group, &topic, 1) == vec![20]
    })
    .await;
    let dead = read_topic(&format!("{topic}.dlq"), 4).await;
    stop.send(()).unwrap();
    join.await.unwrap().unwrap();

    let all = calls.all();
    let offsets = |c: &Call| c.records.iter().map(|(o, _)| *o).collect::<Vec<_>>();
    assert_eq!(all.len(), 2, "one batch, then one retry: {all:?}");
    assert_eq!(offsets(&all[0]), (0..20).collect::<Vec<_>>());
    assert_eq!(
        offsets(&all[1]),
        vec![4, 9, 14, 19],
        "the retry holds only the records that failed retryably, in order"
    );
    assert_eq!(all[1].meta.attempt(), 2);
    assert_eq!(stats.succeeded(), 16);
    assert_eq!(stats.dead_lettered(), 4);

    let mut dead_offsets = Vec::new();
    for d in &dead {
        let text = |name: &str| header_text(&d.headers, name);
        let offset: i64 = text("kt-dlq-original-offset").unwrap().parse().unwrap();
        dead_offsets.push(offset);
        assert_eq!(
            d.payload.as_deref(),
            Some(payload(offset as i32).as_bytes()),
            "original payload"
        );
        assert_eq!(
            header_pairs(&d.headers)[0],
            (b"k\xff".to_vec(), Some(b"\x00v".to_vec())),
            "original headers first, byte for byte"
        );
        assert_eq!(text("kt-dlq-status").as_deref(), Some("422"));
        assert_eq!(text("kt-dlq-attempts").as_deref(), Some("1"));
        assert_eq!(text("kt-dlq-error-class").as_deref(), Some("permanent"));
        assert_eq!(text("kt-dlq-service-id").as_deref(), Some("order-writer"));
        assert!(
            text("kt-dlq-error-message")
                .unwrap()
                .contains("not an order"),
            "the record's own message"
        );
    }
    assert_eq!(
        dead_offsets,
        vec![2, 7, 12, 17],
        "dead letters in offset order"
    );
}

#[tokio::test]
async fn key_ordering_cannot_serve_batches() {
    let consumer = Consumer::builder()
        .bootstrap_servers("127.0.0.1:1")
        .group_id("g")
        .topics(["t"])
        .ordering(Ordering::Key)
        .build()
        .unwrap();
    let service = tower::service_fn(|_req: Request<RecordBatch>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    let err = consumer
        .serve_batches(service, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("`ordering`"),
        "names the setting: {err}"
    );
}
