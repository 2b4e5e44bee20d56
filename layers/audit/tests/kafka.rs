//! A mixed consumer run on a real broker (named by `KAFKA_BOOTSTRAP_SERVERS`;
//! `scripts/test`, or `scripts/kafka.sh start`, starts one), audited to an
//! audit topic through the Kafka sink: an accepted record, one retried
//! (503 once, then 200), one dead-lettered (422) and one refused by the JWT
//! layer. Every applicable field is filled and the chains verify.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use jsonwebtoken::{EncodingKey, Header};
use kafka_tower::runtime::{Producer, ProducerConfig};
use kafka_tower::{RecordBody, RecordMeta};
use kafka_tower_audit::chain::{verify, BreakKind};
use kafka_tower_audit::{AuditRecord, Auditor, KafkaSink, Outcome};
use kafka_tower_jwt::{Algorithm, JwtLayer, VerificationKey};
use kafka_tower_testkit::{bootstrap, create_topic, read_topic, unique, WAIT};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use tower::ServiceBuilder;

const SECRET: &[u8] = b"audit-test-shared-secret-0123456789";
const ISSUER: &str = "https://idp.test";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn create_topics(topics: &[(&str, i32)]) {
    for (name, partitions) in topics {
        create_topic(name, *partitions).await;
    }
}

fn token(secret: &[u8]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": "user-1", "iss": ISSUER, "exp": now + 3600,
        "client_id": "web-shop", "service_id": "gateway",
    });
    jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

/// Produces `(partition, key, bearer token)` records with the context headers.
async fn produce(topic: &str, records: &[(i32, &str, String)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    for (partition, key, token) in records {
        let auth = format!("Bearer {token}");
        let correlation = format!("corr-{key}");
        let headers = OwnedHeaders::new()
            .insert(KafkaHeader {
                key: "authorization",
                value: Some(auth.as_bytes()),
            })
            .insert(KafkaHeader {
                key: "x-correlation-id",
                value: Some(correlation.as_bytes()),
            })
            .insert(KafkaHeader {
                key: "x-traceability-id",
                value: Some(b"audit-run".as_slice()),
            })
            .insert(KafkaHeader {
                key: "traceparent",
                value: Some(TRACEPARENT.as_bytes()),
            });
        producer
            .send(
                FutureRecord::to(topic)
                    .key(*key)
                    .payload(r#"{"amount":10}"#)
                    .partition(*partition)
                    .headers(headers),
                WAIT,
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_run_lands_on_the_audit_topic_fully_filled_and_chained() {
    let topic = unique("audited");
    let dlq = format!("{topic}.dlq");
    let audit_topic = unique("audit");
    create_topics(&[(&topic, 2), (&dlq, 1), (&audit_topic, 1)]).await;
    let valid = token(SECRET);
    produce(
        &topic,
        &[
            (0, "ok", valid.clone()),
            (0, "flaky", valid.clone()),
            (1, "bad", valid.clone()),
            (1, "forged", token(b"not-the-secret-of-the-audited-service")),
        ],
    )
    .await;

    let producer = Producer::new(ProducerConfig::new(bootstrap())).unwrap();
    let auditor = Auditor::builder()
        .service_id("orders-service")
        .sink(KafkaSink::new(producer, audit_topic.clone()))
        .chain(true)
        .build()
        .unwrap();
    let jwt = JwtLayer::builder()
        .key(VerificationKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .issuer(ISSUER)
        .build()
        .unwrap();
    let handler = tower::service_fn(|req: Request<RecordBody>| async move {
        let meta = req.extensions().get::<RecordMeta>().unwrap();
        let status = match (meta.key().map(|k| &k[..]), meta.attempt()) {
            (Some(b"flaky"), 1) => StatusCode::SERVICE_UNAVAILABLE,
            (Some(b"bad"), _) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::OK,
        };
        Ok::<_, Infallible>(
            Response::builder()
                .status(status)
                .body(String::new())
                .unwrap(),
        )
    });
    // The audit layer is outside the JWT layer: it sees the refusal; the
    // caller layer inside reports the caller the JWT layer established.
    let service = ServiceBuilder::new()
        .layer(auditor.layer())
        .layer(jwt)
        .layer(auditor.caller_layer())
        .service(handler);
    let group = unique("g");
    let consumer = kafka_tower::Consumer::builder()
        .bootstrap_servers(bootstrap())
        .group_id(&group)
        .topics([topic.as_str()])
        .property("auto.offset.reset", "earliest")
        .commit_interval(Duration::from_millis(200))
        .retry(kafka_tower::RetryPolicy::exponential(
            3,
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(consumer.serve(service, async move {
        let _ = stop_rx.await;
    }));

    // Five calls: ok, flaky (503), flaky (200), bad (422), forged (401).
    let audited = read_topic(&audit_topic, 5).await;
    let dead = read_topic(&dlq, 2).await;
    let _ = stop_tx.send(());
    join.await.unwrap().unwrap();
    auditor.flush().await.unwrap();

    let records: Vec<AuditRecord> = audited
        .iter()
        .map(|r| serde_json::from_slice(r.payload.as_ref().expect("a payload")).unwrap())
        .collect();
    assert_eq!(records.len(), 5);
    // Every chain is whole, and the Kafka key is the chain id.
    let summary = verify(&records).unwrap_or_else(|b| panic!("{b}"));
    assert_eq!((summary.records, summary.chains), (5, 2));
    for (m, r) in audited.iter().zip(&records) {
        assert_eq!(
            m.key.as_deref(),
            Some(r.chain.as_ref().unwrap().id.as_bytes())
        );
    }

    // Fields every record has.
    for r in &records {
        assert!(
            r.timestamp.ends_with('Z') && r.timestamp.len() == 27,
            "{r:?}"
        );
        assert_eq!(r.service_id, "orders-service");
        assert_eq!(r.topic.as_deref(), Some(topic.as_str()));
        assert!(
            r.partition.is_some() && r.offset.is_some() && r.key.is_some(),
            "{r:?}"
        );
        assert_eq!(r.group.as_deref(), Some(group.as_str()));
        assert!(r.attempt.is_some() && r.status.is_some());
        let key = r.key.as_deref().unwrap();
        assert_eq!(
            r.correlation_id.as_deref(),
            Some(format!("corr-{key}").as_str())
        );
        assert_eq!(r.traceability_id.as_deref(), Some("audit-run"));
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(r.latency_us < 60_000_000, "{r:?}");
        if key != "forged" {
            assert_eq!(r.client_id.as_deref(), Some("web-shop"));
            assert_eq!(r.subject.as_deref(), Some("user-1"));
            assert_eq!(r.calling_service.as_deref(), Some("gateway"));
        }
    }
    let by: HashMap<(&str, u32), &AuditRecord> = records
        .iter()
        .map(|r| ((r.key.as_deref().unwrap(), r.attempt.unwrap()), r))
        .collect();
    let summary = |k: &str, a: u32| {
        let r = by
            .get(&(k, a))
            .unwrap_or_else(|| panic!("no record for {k} attempt {a}"));
        (r.outcome, r.status, r.error_class.as_deref())
    };
    assert_eq!(summary("ok", 1), (Outcome::Ok, Some(200), None));
    assert_eq!(
        summary("flaky", 1),
        (Outcome::Retryable, Some(503), Some("retryable-status"))
    );
    assert_eq!(summary("flaky", 2), (Outcome::Ok, Some(200), None));
    assert_eq!(
        summary("bad", 1),
        (Outcome::Failed, Some(422), Some("permanent"))
    );
    assert_eq!(
        summary("forged", 1),
        (Outcome::Refused, Some(401), Some("permanent"))
    );
    let forged = by[&("forged", 1)];
    assert_eq!(forged.refused_by.as_deref(), Some("jwt"));
    assert_eq!(forged.refusal_reason.as_deref(), Some("bad_signature"));
    assert!(forged.refusal_detail.is_some());
    assert_eq!(forged.client_id, None, "a refused caller is not identified");
    assert!(records
        .iter()
        .filter(|r| r.key.as_deref() != Some("forged"))
        .all(|r| r.refused_by.is_none()));
    // Records of one partition keep their order in the chain.
    let flaky = by[&("flaky", 2)].chain.as_ref().unwrap();
    assert_eq!(flaky.seq, 2, "ok, flaky, flaky on partition 0");

    // The two dead letters are the 422 and the refused record.
    let mut dead_keys: Vec<&[u8]> = dead.iter().map(|r| r.key.as_deref().unwrap()).collect();
    dead_keys.sort();
    assert_eq!(dead_keys, vec![b"bad".as_slice(), b"forged".as_slice()]);

    // Altering a record on its way is detected, at its index.
    let mut tampered = records.clone();
    let i = tampered
        .iter()
        .position(|r| r.outcome == Outcome::Refused)
        .unwrap();
    tampered[i].outcome = Outcome::Ok;
    let broken = verify(&tampered).unwrap_err();
    assert_eq!(broken.index, i);
    assert!(matches!(broken.kind, BreakKind::HashMismatch { .. }));
    assert_eq!((auditor.dropped(), auditor.sink_errors()), (0, 0));
}
