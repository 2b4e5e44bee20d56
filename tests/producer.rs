//! The producer side against a real Apache Kafka broker: the Producer
//! service under tower layers, context propagation across HTTP → Kafka →
//! Kafka → HTTP, transactions, and typed refusals of bad input.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kafka_tower::context::{
    CaptureContextLayer, InjectContextLayer, PropagatedContext, CORRELATION_ID,
};
use kafka_tower::runtime::{
    ProduceError, Producer, ProducerConfig, TransactionError, TransactionalProducer,
    TransactionalQueue,
};
use kafka_tower::{BoxError, OutgoingRecord, RawHeader, RawHeaders, RecordBody};
use kafka_tower_testkit::*;
use tower::{Layer, ServiceBuilder, ServiceExt};

fn producer() -> Producer {
    Producer::new(ProducerConfig::new(bootstrap())).expect("producer")
}

async fn serve_http(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_layers_apply_to_producing() {
    let topic = unique("produce-layers");
    create_topic(&topic, 2).await;
    let service = ServiceBuilder::new()
        .layer(tower_http::set_header::SetRequestHeaderLayer::overriding(
            HeaderName::from_static("x-source"),
            HeaderValue::from_static("orders-api"),
        ))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(10)))
        .rate_limit(1000, Duration::from_secs(1))
        .layer(InjectContextLayer::new())
        .service(producer());
    let mut ctx = PropagatedContext::new();
    ctx.insert(CORRELATION_ID, "corr-xyz").unwrap();
    let req = Request::post(format!("/{topic}"))
        .header("content-type", "application/json")
        .extension(OutgoingRecord {
            key: Some(Bytes::from_static(b"k1")),
            partition: Some(1),
            ..Default::default()
        })
        .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
        .unwrap();
    let res = ctx.scope(service.oneshot(req)).await.expect("produced");
    assert_eq!(res.status(), StatusCode::CREATED);
    let delivery = res
        .extensions()
        .get::<kafka_tower::runtime::Delivery>()
        .cloned()
        .expect("Delivery extension");
    assert_eq!(
        res.headers()["kafka-offset"],
        delivery.offset.to_string().as_str()
    );
    assert_eq!(
        delivery.partition, 1,
        "the partition set in the OutgoingRecord extension"
    );

    let got = read_topic(&topic, 1).await;
    let r = &got[0];
    assert_eq!(
        (r.partition, r.offset),
        (delivery.partition, delivery.offset),
        "the response is the broker's ack"
    );
    assert_eq!(r.key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(r.payload.as_deref(), Some(&b"{\"n\":1}"[..]));
    assert_eq!(
        header_text(&r.headers, "x-source").as_deref(),
        Some("orders-api"),
        "SetRequestHeader applied"
    );
    assert_eq!(
        header_text(&r.headers, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        header_text(&r.headers, "x-correlation-id").as_deref(),
        Some("corr-xyz"),
        "context injected"
    );

    // A DELETE with an empty body is a tombstone.
    let del = Request::delete(format!("/{topic}"))
        .extension(OutgoingRecord {
            key: Some(Bytes::from_static(b"k1")),
            partition: Some(0),
            ..Default::default()
        })
        .body(Full::new(Bytes::new()))
        .unwrap();
    producer().oneshot(del).await.expect("tombstone");
    let all = read_all(&topic, "read_committed").await;
    let tomb = all
        .iter()
        .find(|r| r.partition == 0)
        .expect("tombstone record");
    assert_eq!(tomb.payload, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_typed_error_and_nothing_is_sent() {
    let topic = unique("refused");
    create_topic(&topic, 1).await;
    let p = Producer::new(ProducerConfig::new(bootstrap()).property("message.max.bytes", "1000"))
        .unwrap();

    let mut headers = RawHeaders::new();
    headers.push(RawHeader::new(
        &b"X-Correlation-Id"[..],
        &b"abc\r\nSet-Cookie: evil"[..],
    ));
    let err = p
        .send(OutgoingRecord {
            topic: topic.clone(),
            payload: Some("x".into()),
            headers,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProduceError::InvalidHeader { name } if name == "X-Correlation-Id"),
        "{err}"
    );
    let mut ctx = PropagatedContext::new();
    let refused = ctx.insert(CORRELATION_ID, "abc\r\nevil").unwrap_err();
    assert_eq!(refused.name(), "x-correlation-id");
    assert!(ctx.is_empty(), "the bad value was not stored altered");

    let err = p
        .send(OutgoingRecord {
            topic: "not a topic!".into(),
            payload: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::InvalidTopic(_)), "{err}");
    let err = p
        .clone()
        .oneshot(
            Request::post("/a/b")
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::InvalidTopic(_)), "{err}");

    let err = p
        .send(OutgoingRecord {
            topic: topic.clone(),
            payload: Some(Bytes::from(vec![0u8; 2000])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProduceError::MessageTooLarge {
                size: 2000,
                limit: 1000
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("message.max.bytes of 1000 bytes"),
        "{err}"
    );
    let err = p
        .clone()
        .oneshot(
            Request::post(format!("/{topic}"))
                .body(Full::new(Bytes::from(vec![1u8; 5000])))
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProduceError::MessageTooLarge { limit: 1000, .. }),
        "{err}"
    );

    let missing = unique("missing");
    let err = p
        .send(OutgoingRecord {
            topic: missing.clone(),
            payload: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProduceError::UnknownTopic(t) if *t == missing),
        "{err}"
    );

    assert!(
        read_all(&topic, "read_uncommitted").await.is_empty(),
        "nothing reached the topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_survives_http_kafka_kafka_http() {
    let topic_a = unique("hop-a");
    let topic_b = unique("hop-b");
    create_topic_with_dlq(&topic_a, 1).await;
    create_topic_with_dlq(&topic_b, 1).await;

    // The last hop: a downstream HTTP service that records what it got.
    let sink: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let sink_rec = Recorder::default();
    let sink_url = serve_http(Router::new().route(
        "/sink",
        post({
            let sink = sink.clone();
            let sink_rec = sink_rec.clone();
            move |headers: HeaderMap| async move {
                sink.lock().unwrap().push(headers);
                let mut r = Request::new(RecordBody::new(Some(Bytes::new())));
                r.extensions_mut()
                    .insert(kafka_tower::RecordMeta::new("sink", 0, 0));
                sink_rec.record(&r);
                StatusCode::OK
            }
        }),
    ))
    .await;

    // Hop 1: an HTTP endpoint that publishes an event.
    let to_a = InjectContextLayer::new().layer(producer());
    let ingress = Router::new()
        .route(
            "/commands",
            post({
                let topic_a = topic_a.clone();
                move |body: Bytes| async move {
                    let req = Request::post(format!("/{topic_a}"))
                        .body(Full::new(body))
                        .unwrap();
                    to_a.oneshot(req)
                        .await
                        .map(|_| StatusCode::ACCEPTED)
                        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
                }
            }),
        )
        .layer(CaptureContextLayer::new());
    let ingress_url = serve_http(ingress).await;

    // Hop 2: consume A, publish to B.
    let to_b = InjectContextLayer::new().layer(producer());
    let hop2 = tower::service_fn({
        let topic_b = topic_b.clone();
        move |req: Request<RecordBody>| {
            let to_b = to_b.clone();
            let topic_b = topic_b.clone();
            async move {
                let body = req.into_body().into_payload().unwrap_or_default();
                let out = Request::post(format!("/{topic_b}"))
                    .body(Full::new(body))
                    .unwrap();
                to_b.oneshot(out).await?;
                Ok::<_, BoxError>(Response::new(String::new()))
            }
        }
    });
    // Hop 3: consume B, call the downstream HTTP service.
    let client = InjectContextLayer::new()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let hop3 = tower::service_fn({
        let sink_url = sink_url.clone();
        move |_req: Request<RecordBody>| {
            let client = client.clone();
            let uri = format!("{sink_url}/sink");
            async move {
                let res = client
                    .oneshot(Request::post(uri).body(Full::new(Bytes::new())).unwrap())
                    .await?;
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(res.status())
                        .body(String::new())
                        .unwrap(),
                )
            }
        }
    });
    let c2 = spawn(consumer(&unique("g"), &[&topic_a]).build().unwrap(), hop2);
    let c3 = spawn(consumer(&unique("g"), &[&topic_b]).build().unwrap(), hop3);

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let full = Request::post(format!("{ingress_url}/commands"))
        .header("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")
        .header("x-correlation-id", "corr-123")
        .header("x-traceability-id", "trace-456")
        .header("traceparent", traceparent)
        .body(Full::new(Bytes::from_static(b"first")))
        .unwrap();
    assert_eq!(
        http.request(full).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    sink_rec.wait_count(1).await;
    let bare = Request::post(format!("{ingress_url}/commands"))
        .body(Full::new(Bytes::from_static(b"second")))
        .unwrap();
    assert_eq!(
        http.request(bare).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    sink_rec.wait_count(2).await;
    c2.stop().await;
    c3.stop().await;

    let seen = sink.lock().unwrap().clone();
    let first = &seen[0];
    assert_eq!(
        first["authorization"],
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"
    );
    assert_eq!(first["x-correlation-id"], "corr-123");
    assert_eq!(first["x-traceability-id"], "trace-456");
    assert_eq!(first["traceparent"], traceparent);

    let second = &seen[1];
    let generated = second["x-correlation-id"].to_str().unwrap().to_owned();
    assert!(
        uuid::Uuid::parse_str(&generated).is_ok(),
        "a UUID was generated at the first hop: {generated}"
    );
    assert!(
        !second.contains_key("x-traceability-id"),
        "a traceability id is never invented"
    );
    assert!(!second.contains_key("authorization"));
    // The same generated id on every record in between.
    for topic in [&topic_a, &topic_b] {
        let records = read_topic(topic, 2).await;
        assert_eq!(
            header_text(&records[0].headers, "x-correlation-id").as_deref(),
            Some("corr-123")
        );
        assert_eq!(
            header_text(&records[0].headers, "x-traceability-id").as_deref(),
            Some("trace-456")
        );
        assert_eq!(
            header_text(&records[1].headers, "x-correlation-id").as_deref(),
            Some(generated.as_str()),
            "{topic}"
        );
    }
}

fn numbered(topic: &str, from: usize, n: usize) -> Vec<OutgoingRecord> {
    (from..from + n)
        .map(|i| OutgoingRecord {
            topic: topic.to_owned(),
            payload: Some(Bytes::from(i.to_string())),
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_transactions_with_one_aborted_show_9000_to_read_committed() {
    let topic = unique("txn");
    create_topic(&topic, 3).await;
    let mut config = ProducerConfig::new(bootstrap());
    config.transactional_id = Some(unique("tx"));
    let p = TransactionalProducer::new(config)
        .await
        .expect("init transactions");
    for batch in 0..10 {
        let records = numbered(&topic, batch * 1000, 1000);
        if batch == 4 {
            p.begin().unwrap();
            for r in &records {
                p.send(r).await.expect("send in transaction");
            }
            p.abort().await.expect("abort");
        } else {
            let deliveries = p.send_batch(records).await.expect("batch committed");
            assert_eq!(deliveries.len(), 1000);
        }
    }
    assert!(
        matches!(p.commit().await, Err(TransactionError::State(_))),
        "commit without begin is a state error"
    );

    let committed = read_all(&topic, "read_committed").await;
    assert_eq!(
        committed.len(),
        9000,
        "read_committed sees the 9 committed transactions"
    );
    assert!(
        committed.iter().all(|r| {
            let n: usize = std::str::from_utf8(r.payload.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            !(4000..5000).contains(&n)
        }),
        "no record of the aborted transaction is visible"
    );
    let uncommitted = read_all(&topic, "read_uncommitted").await;
    assert_eq!(
        uncommitted.len(),
        10000,
        "read_uncommitted also sees the aborted records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_queue_commits_records_of_many_tasks_together() {
    let topic = unique("txn-queue");
    create_topic(&topic, 2).await;
    let mut config = ProducerConfig::new(bootstrap());
    config.transactional_id = Some(unique("txq"));
    let p = TransactionalProducer::new(config).await.unwrap();
    let (queue, task) = TransactionalQueue::spawn(p, 50, Duration::from_millis(20), 1000);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let q = queue.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                q.send(OutgoingRecord {
                    topic,
                    payload: Some(Bytes::from(i.to_string())),
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    let mut offsets = std::collections::HashSet::new();
    for t in tasks {
        let d = t.await.unwrap().expect("committed");
        assert!(
            offsets.insert((d.partition, d.offset)),
            "each record has its own offset"
        );
    }
    let bad = queue
        .send(OutgoingRecord {
            topic: "bad topic".into(),
            payload: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            bad,
            TransactionError::Invalid(ProduceError::InvalidTopic(_))
        ),
        "{bad}"
    );
    assert_eq!(read_all(&topic, "read_committed").await.len(), 200);

    // A queue whose task ended is closed, not fenced.
    task.abort();
    let _ = task.await;
    let closed = queue
        .send(OutgoingRecord {
            topic: topic.clone(),
            payload: Some(Bytes::from_static(b"late")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(closed, TransactionError::Closed), "{closed}");
}

#[allow(dead_code)]
fn _assert_infallible(_: Infallible) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_the_same_transactional_id_fences_the_first() {
    let topic = unique("fenced");
    create_topic(&topic, 1).await;
    let id = unique("tx-fence");
    let mut config = ProducerConfig::new(bootstrap());
    config.transactional_id = Some(id.clone());
    let old = TransactionalProducer::new(config.clone())
        .await
        .expect("first instance");
    // The first instance has an open transaction when its successor starts.
    old.begin().unwrap();
    old.send(&numbered(&topic, 0, 1)[0])
        .await
        .expect("send before fencing");
    let new = TransactionalProducer::new(config)
        .await
        .expect("the successor initialises");
    let err = old.commit().await.unwrap_err();
    assert!(
        matches!(err, TransactionError::Fenced(_)),
        "a typed fencing error: {err}"
    );
    // The client's own error stays reachable, not only its text.
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<rdkafka::error::KafkaError>())
        .expect("the librdkafka error as the source");
    assert!(err.to_string().contains(&source.to_string()), "{err}");
    new.send_batch(numbered(&topic, 1, 1))
        .await
        .expect("the successor produces");
    let committed = read_all(&topic, "read_committed").await;
    let texts: Vec<_> = committed
        .iter()
        .map(|r| r.payload.clone().unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![Bytes::from("1")],
        "only the successor's record is visible"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_sends_to_a_new_topic_keep_their_order() {
    // The first send to a topic checks that it exists; sends started
    // together must still reach the partition in the order they were made.
    let topic = unique("order-first-sends");
    create_topic(&topic, 1).await;
    let p = producer();
    let sends = (0..200).map(|i| {
        p.send(OutgoingRecord {
            topic: topic.clone(),
            partition: Some(0),
            payload: Some(Bytes::from(i.to_string())),
            ..Default::default()
        })
    });
    let deliveries: Vec<_> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|d| d.expect("sent"))
        .collect();
    let offsets: Vec<i64> = deliveries.iter().map(|d| d.offset).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets follow the order of the sends: {offsets:?}"
    );
    let texts: Vec<String> = read_all(&topic, "read_committed")
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(r.payload.as_deref().unwrap()).into_owned())
        .collect();
    assert_eq!(texts, (0..200).map(|i| i.to_string()).collect::<Vec<_>>());
}
