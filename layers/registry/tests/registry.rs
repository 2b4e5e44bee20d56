//! Against a real broker and a real Schema Registry (`scripts/test` starts
//! both; `cargo test` alone starts them through the test kit), with
//! Confluent's Python serializers as independent witnesses.

use std::convert::Infallible;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::dlq::DeadLetter;
use kafka_tower::RecordBody;
use kafka_tower_registry::{
    wire, CheckError, Decoded, DecodedKey, Encoder, LocalSchema, Part, RegistryClient,
    RegistryError, RegistryLayer,
};
use kafka_tower_testkit as kit;
use kit::Rec;
use serde_json::json;
use tokio::sync::mpsc;
use tower::{service_fn, Layer, Service, ServiceExt};

const ORDER_V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"string"},{"name":"total","type":"double"}]}"#;
const ORDER_V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"string"},{"name":"total","type":"double"},
    {"name":"currency","type":"string","default":"EUR"}]}"#;
const ORDER_NO_DEFAULT: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"string"},{"name":"total","type":"double"},
    {"name":"currency","type":"string"}]}"#;

fn client() -> RegistryClient {
    RegistryClient::builder(kit::registry_url())
        .build()
        .unwrap()
}

/// `order` encoded with ORDER_V1, registered under `topic`'s value subject.
async fn order_v1(topic: &str, order: serde_json::Value) -> Bytes {
    Encoder::builder(client())
        .auto_register(true)
        .build()
        .encode(
            topic,
            Part::Value,
            &LocalSchema::avro(ORDER_V1).unwrap(),
            &order,
        )
        .await
        .unwrap()
}

/// Runs `command` to its end, killing it if it runs longer than the
/// test kit's wait.
fn with_deadline(command: &mut Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(kit::WAIT).is_err() {
            // SAFETY: kill(2) of the child this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let out = std::io::read_to_string(stdout).unwrap_or_default();
    let status = child.wait().unwrap();
    let _ = tx.send(());
    watchdog.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(
        status.code().is_some(),
        "{command:?} ran longer than {:?} and was killed; its stderr:\n{err}",
        kit::WAIT
    );
    std::process::Output {
        status,
        stdout: out.into_bytes(),
        stderr: err.into_bytes(),
    }
}

/// Runs the witness; its stdout.
fn witness(args: &[&str]) -> String {
    let out = with_deadline(
        Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/witness.py"))
            .args(args),
    );
    assert!(
        out.status.success(),
        "the Python witness failed (pip install -r layers/registry/requirements-test.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A service that sends what the layer decoded to a channel.
type Seen = (Option<Decoded>, Option<DecodedKey>, Bytes);

fn capturing(
    tx: mpsc::UnboundedSender<Seen>,
) -> impl Service<
    Request<RecordBody>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<String>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |req: Request<RecordBody>| {
        let tx = tx.clone();
        async move {
            let decoded = req.extensions().get::<Decoded>().cloned();
            let key = req.extensions().get::<DecodedKey>().cloned();
            let body = req.into_body().into_payload().unwrap_or_default();
            let _ = tx.send((decoded, key, body));
            Ok(Response::new(String::new()))
        }
    })
}

/// A consumer of `topic` serving `layer` over [`capturing`] in the
/// background; what it sees arrives on the receiver.
fn serve(topic: &str, layer: RegistryLayer) -> (kit::Running, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let running = kit::spawn(
        kit::consumer(&kit::unique("g"), &[topic]).build().unwrap(),
        layer.layer(capturing(tx)),
    );
    (running, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(kit::WAIT, rx.recv())
        .await
        .expect("a record served in time")
        .expect("the service is alive")
}

/// The dead letters of `topic`, in order.
async fn dead_letters(topic: &str, n: usize) -> Vec<DeadLetter> {
    kit::read_topic(&format!("{topic}.dlq"), n)
        .await
        .iter()
        .map(|r| DeadLetter::from_record(r).expect("a dead letter"))
        .collect()
}

#[tokio::test]
async fn confluent_avro_records_are_decoded_and_read_as_the_new_version() {
    let topic = kit::unique("reg-avro");
    kit::create_topic_with_dlq(&topic, 1).await;
    // Confluent's AvroSerializer registers v1 and writes three records.
    let values = json!([
        {"id": "o-1", "total": 10.5},
        {"id": "o-2", "total": 0.0},
        {"id": "o-3", "total": -1.25},
    ]);
    let printed = witness(&[
        "produce-avro",
        &kit::bootstrap(),
        &kit::registry_url(),
        &topic,
        ORDER_V1,
        &values.to_string(),
    ]);
    let v1_id: u32 = printed.trim().parse().unwrap();

    // v2 adds a field with a default: accepted under BACKWARD.
    let client = client();
    let v2 = LocalSchema::avro(ORDER_V2).unwrap();
    let v2_id = client
        .register(&format!("{topic}-value"), &v2)
        .await
        .expect("a compatible change is accepted");
    assert_ne!(v1_id, v2_id);
    // Our encoder writes one v2 record with a key under <topic>-key.
    let encoder = Encoder::builder(client.clone()).auto_register(true).build();
    let key_schema = LocalSchema::avro(r#""string""#).unwrap();
    let payload = encoder
        .encode(
            &topic,
            Part::Value,
            &v2,
            &json!({"id": "o-4", "total": 4.0, "currency": "CHF"}),
        )
        .await
        .unwrap();
    let key = encoder
        .encode(&topic, Part::Key, &key_schema, &"customer-9")
        .await
        .unwrap();
    kit::produce(&topic, [Rec::payload(payload).key(key)]).await;

    let layer = RegistryLayer::builder(client.clone())
        .value_reader(&topic, v2.clone())
        .key(&topic)
        .enforce_subject(true)
        .build();
    layer
        .check_compatibility()
        .await
        .expect("v2 reads every registered version");
    let (running, mut rx) = serve(&topic, layer);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next(&mut rx).await);
    }
    running.stop().await;

    for (i, (decoded, key, _)) in seen[..3].iter().enumerate() {
        let d = decoded.as_ref().expect("decoded");
        assert_eq!(d.schema_id(), v1_id);
        assert_eq!(d.subject(), Some(format!("{topic}-value").as_str()));
        assert_eq!(d.version(), Some(1));
        let v = d.to_json().unwrap();
        assert_eq!(v["id"], values[i]["id"]);
        assert_eq!(v["total"], values[i]["total"]);
        assert_eq!(
            v["currency"], "EUR",
            "the reader's default fills the new field"
        );
        assert!(key.is_none(), "a null key is not decoded");
    }
    let (decoded, key, _) = &seen[3];
    let d = decoded.as_ref().unwrap();
    assert_eq!((d.schema_id(), d.version()), (v2_id, Some(2)));
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: String,
        total: f64,
        currency: String,
    }
    assert_eq!(
        d.deserialize::<Order>().unwrap(),
        Order {
            id: "o-4".into(),
            total: 4.0,
            currency: "CHF".into()
        }
    );
    let key = key.as_ref().expect("the key is decoded");
    assert_eq!(key.0.to_json().unwrap(), json!("customer-9"));
    assert_eq!(key.0.subject(), Some(format!("{topic}-key").as_str()));
    assert!(kit::end_offsets(&format!("{topic}.dlq"), 1) == vec![0]);
}

#[tokio::test]
async fn our_encoding_is_read_by_confluent_and_is_what_fastavro_writes() {
    let topic = kit::unique("reg-enc");
    kit::create_topic(&topic, 1).await;
    let encoder = Encoder::builder(client()).auto_register(true).build();
    let schema = LocalSchema::avro(
        r#"{"type":"record","name":"Payment","namespace":"shop","fields":[
            {"name":"id","type":"string"},
            {"name":"amount","type":"long"},
            {"name":"note","type":["null","string"],"default":null},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"ok","type":"boolean"}]}"#,
    )
    .unwrap();
    let values = [
        json!({"id": "p-1", "amount": 1234567890123_i64, "note": null, "tags": [], "ok": true}),
        json!({"id": "p-2 é ü", "amount": -5, "note": "split", "tags": ["a", "b"], "ok": false}),
    ];
    #[derive(serde::Serialize)]
    struct Payment<'a> {
        id: &'a str,
        amount: i64,
        note: Option<&'a str>,
        tags: Vec<&'a str>,
        ok: bool,
    }
    let typed = [
        Payment {
            id: "p-1",
            amount: 1234567890123,
            note: None,
            tags: vec![],
            ok: true,
        },
        Payment {
            id: "p-2 é ü",
            amount: -5,
            note: Some("split"),
            tags: vec!["a", "b"],
            ok: false,
        },
    ];
    let mut records = Vec::new();
    for p in &typed {
        records.push(Rec::payload(
            encoder
                .encode(&topic, Part::Value, &schema, p)
                .await
                .unwrap(),
        ));
    }
    kit::produce(&topic, records).await;
    let printed = witness(&[
        "consume-avro",
        &kit::bootstrap(),
        &kit::registry_url(),
        &topic,
        "2",
    ]);
    let lines: Vec<serde_json::Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let id = encoder
        .schema_id(&topic, Part::Value, &schema)
        .await
        .unwrap();
    for (line, expected) in lines.iter().zip(&values) {
        assert_eq!(
            &line["value"], expected,
            "AvroDeserializer reads what we wrote"
        );
        assert_eq!(line["schema_id"], json!(id));
        assert_eq!(
            line["fastavro_identical"],
            json!(true),
            "the body is byte-identical to fastavro's encoding"
        );
    }
}

#[tokio::test]
async fn an_incompatible_change_is_refused_and_the_startup_check_names_the_field() {
    let topic = kit::unique("reg-compat");
    let subject = format!("{topic}-value");
    let client = client();
    let v1 = LocalSchema::avro(ORDER_V1).unwrap();
    client.register(&subject, &v1).await.unwrap();

    let bad = LocalSchema::avro(ORDER_NO_DEFAULT).unwrap();
    let err = client.register(&subject, &bad).await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::Incompatible { subject: s, .. } if *s == subject),
        "{err}"
    );
    assert!(
        !client
            .test_compatibility(&subject, &bad)
            .await
            .unwrap()
            .compatible
    );

    // A consumer whose reader schema cannot read v1 stops at start, naming
    // the subject, the version and the field.
    let layer = RegistryLayer::builder(client.clone())
        .value_reader(&topic, bad)
        .build();
    match layer.check_compatibility().await {
        Err(CheckError::Incompatible(i)) => {
            assert_eq!(i.subject, subject);
            assert_eq!(i.version, 1);
            assert_eq!(i.field, "currency");
            let message = i.to_string();
            assert!(
                message.contains(&subject)
                    && message.contains("version 1")
                    && message.contains("`currency`"),
                "{message}"
            );
        }
        other => panic!("expected an incompatibility, got {other:?}"),
    }
    // The compatible change passes the check and is accepted.
    let v2 = LocalSchema::avro(ORDER_V2).unwrap();
    let layer = RegistryLayer::builder(client.clone())
        .value_reader(&topic, v2.clone())
        .build();
    layer.check_compatibility().await.unwrap();
    client.register(&subject, &v2).await.unwrap();
    // A subject that does not exist is a registry error naming it.
    let missing = RegistryLayer::builder(client.clone())
        .value_reader(kit::unique("reg-none"), v2)
        .build();
    assert!(matches!(
        missing.check_compatibility().await,
        Err(CheckError::Registry { error, .. }) if error.is_not_found(40401)
    ));
}

#[tokio::test]
async fn bad_records_are_dead_lettered_with_the_reason_and_the_partition_moves_on() {
    let topic = kit::unique("reg-bad");
    kit::create_topic_with_dlq(&topic, 1).await;
    let client = client();
    let v1 = LocalSchema::avro(ORDER_V1).unwrap();
    let id = client
        .register(&format!("{topic}-value"), &v1)
        .await
        .unwrap();
    // A different schema under another topic's subject.
    let other = LocalSchema::avro(
        r#"{"type":"record","name":"Refund","namespace":"shop","fields":[{"name":"id","type":"string"}]}"#,
    )
    .unwrap();
    let other_id = client
        .register(&format!("{}-value", kit::unique("reg-other")), &other)
        .await
        .unwrap();
    let encoder = Encoder::builder(client.clone()).build();
    let good = encoder
        .encode(
            &topic,
            Part::Value,
            &v1,
            &json!({"id": "o-1", "total": 1.0}),
        )
        .await
        .unwrap();
    let truncated = good.slice(..good.len() - 3);
    let trailing = Bytes::from([&good[..], b"\x00"].concat());
    let unknown = wire::frame(2_000_000_000, &good[5..]);
    let elsewhere = wire::frame(other_id, b"\x06r-1");
    let bad: Vec<(Bytes, &str)> = vec![
        (
            Bytes::from_static(br#"{"id":"o-1","total":1.0}"#),
            "not_framed",
        ),
        (unknown, "unknown_schema_id"),
        (truncated, "decode_failed"),
        (trailing, "decode_failed"),
        (elsewhere, "subject_mismatch"),
    ];
    let mut records: Vec<Rec> = bad.iter().map(|(b, _)| Rec::payload(b.clone())).collect();
    records.push(Rec::payload(good.clone()));
    kit::produce(&topic, records).await;

    let layer = RegistryLayer::builder(client.clone())
        .value(&topic)
        .enforce_subject(true)
        .build();
    let (running, mut rx) = serve(&topic, layer);
    let (decoded, _, body) = next(&mut rx).await;
    assert_eq!(decoded.unwrap().schema_id(), id);
    assert_eq!(body, good, "the body is passed on as received");
    let letters = dead_letters(&topic, bad.len()).await;
    running.stop().await;
    for (letter, (payload, reason)) in letters.iter().zip(&bad) {
        assert_eq!(letter.failed_by.as_deref(), Some("registry"));
        assert_eq!(letter.reason.as_deref(), Some(*reason), "{letter:?}");
        assert_eq!(letter.payload.as_ref(), Some(payload), "byte-exact");
        assert!(letter.status.is_some_and(|s| (400..500).contains(&s)));
    }
    assert!(letters[1]
        .error_message
        .as_deref()
        .unwrap()
        .contains("2000000000"));
}

/// A TCP proxy in front of the registry that can refuse every connection:
/// the registry as the service sees it during an outage.
struct Proxy {
    url: String,
    up: Arc<AtomicBool>,
    refused_tx: tokio::sync::watch::Sender<u64>,
}

async fn proxy() -> Proxy {
    let target: http::Uri = kit::registry_url()
        .parse()
        .expect("SCHEMA_REGISTRY_URL is a URL");
    assert_eq!(
        target.scheme_str(),
        Some("http"),
        "the proxy forwards plain HTTP"
    );
    let authority = target.authority().expect("a host").to_string();
    let path = target.path().trim_start_matches('/').to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/{path}", listener.local_addr().unwrap());
    let up = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let (refused_tx, _) = tokio::sync::watch::channel(0);
    let p = Proxy {
        url,
        up: up.clone(),
        refused_tx: refused_tx.clone(),
    };
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            if !up.load(Ordering::SeqCst) {
                drop(inbound);
                let n = refused.fetch_add(1, Ordering::SeqCst) + 1;
                refused_tx.send_replace(n);
                continue;
            }
            let authority = authority.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(authority).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    p
}

#[tokio::test]
async fn a_registry_outage_is_retried_and_nothing_is_dead_lettered() {
    let topic = kit::unique("reg-outage");
    kit::create_topic_with_dlq(&topic, 1).await;
    let payload = order_v1(&topic, json!({"id": "o-1", "total": 2.5})).await;
    kit::produce(&topic, [Rec::payload(payload)]).await;

    // The service's client knows nothing and reaches the registry only
    // through the proxy, which is down.
    let proxy = proxy().await;
    let behind_proxy = RegistryClient::builder(&proxy.url)
        .retries(0, Duration::ZERO)
        .build()
        .unwrap();
    let layer = RegistryLayer::builder(behind_proxy.clone())
        .value(&topic)
        .build();
    let (running, mut rx) = serve(&topic, layer);
    let stats = running.stats.clone();
    // Several attempts meet the outage (more than the policy's 3 attempts:
    // the record holds its partition instead of being dead-lettered) …
    let mut refused = proxy.refused_tx.subscribe();
    tokio::time::timeout(kit::WAIT, refused.wait_for(|n| *n >= 5))
        .await
        .expect("the record is retried during the outage")
        .unwrap();
    assert!(rx.try_recv().is_err(), "nothing reached the service");
    // … and the registry comes back.
    proxy.up.store(true, Ordering::SeqCst);
    let (decoded, _, _) = next(&mut rx).await;
    running.stop().await;
    assert_eq!(decoded.unwrap().to_json().unwrap()["id"], "o-1");
    assert_eq!(stats.dead_lettered(), 0);
    assert_eq!(kit::end_offsets(&format!("{topic}.dlq"), 1), vec![0]);
    // Every attempt asked the registry again: an outage is not cached.
    assert!(behind_proxy.schema_fetches() >= 6);
}

#[tokio::test]
async fn json_schema_subjects_through_the_registry() {
    let topic = kit::unique("reg-json");
    kit::create_topic_with_dlq(&topic, 1).await;
    let schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Order",
        "type": "object",
        "properties": {"id": {"type": "string"}, "total": {"type": "number", "minimum": 0}},
        "required": ["id", "total"]
    });
    let printed = witness(&[
        "produce-json",
        &kit::bootstrap(),
        &kit::registry_url(),
        &topic,
        &schema.to_string(),
        &json!([{"id": "o-1", "total": 3}]).to_string(),
    ]);
    let id: u32 = printed.trim().parse().unwrap();
    // Valid JSON that the registered schema refuses.
    let invalid = wire::frame(id, br#"{"id":"o-2","total":-1}"#);
    kit::produce(&topic, [Rec::payload(invalid.clone())]).await;

    let layer = RegistryLayer::builder(client())
        .value(&topic)
        .enforce_subject(true)
        .json_body(true)
        .build();
    let (running, mut rx) = serve(&topic, layer);
    let (decoded, _, body) = next(&mut rx).await;
    let letters = dead_letters(&topic, 1).await;
    running.stop().await;
    let decoded = decoded.unwrap();
    assert_eq!(decoded.schema_id(), id);
    assert_eq!(decoded.to_json().unwrap(), json!({"id": "o-1", "total": 3}));
    let as_json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        as_json,
        json!({"id": "o-1", "total": 3}),
        "json_body unframes"
    );
    assert_eq!(letters[0].reason.as_deref(), Some("invalid"));
    assert_eq!(letters[0].payload.as_ref(), Some(&invalid));
    assert!(
        letters[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("1 schema error"),
        "{:?}",
        letters[0].error_message
    );
}

#[tokio::test]
async fn protobuf_records_are_refused_as_unsupported_not_misread() {
    let topic = kit::unique("reg-proto");
    kit::create_topic_with_dlq(&topic, 1).await;
    let printed = witness(&[
        "produce-protobuf",
        &kit::bootstrap(),
        &kit::registry_url(),
        &topic,
    ]);
    let id: u32 = printed.trim().parse().unwrap();
    let layer = RegistryLayer::builder(client()).value(&topic).build();
    let (running, _rx) = serve(&topic, layer);
    let letters = dead_letters(&topic, 1).await;
    running.stop().await;
    assert_eq!(letters[0].reason.as_deref(), Some("unsupported_schema"));
    assert!(letters[0]
        .error_message
        .as_deref()
        .unwrap()
        .contains(&format!("schema id {id}")));
}

#[tokio::test]
async fn ten_thousand_records_with_one_id_make_one_fetch() {
    let topic = kit::unique("reg-cache");
    let payload = order_v1(&topic, json!({"id": "o-1", "total": 1.0})).await;
    // A fresh client (an empty cache) that sends each request once: one
    // slow answer must not become a second request.
    let fresh = RegistryClient::builder(kit::registry_url())
        .retries(0, Duration::ZERO)
        .timeout(kit::WAIT)
        .build()
        .unwrap();
    let layer = RegistryLayer::builder(fresh.clone()).value(&topic).build();
    let service = layer.layer(service_fn(|req: Request<RecordBody>| async move {
        let ok = req.extensions().get::<Decoded>().is_some();
        Ok::<_, Infallible>(
            Response::builder()
                .status(if ok {
                    StatusCode::OK
                } else {
                    StatusCode::IM_A_TEAPOT
                })
                .body(String::new())
                .unwrap(),
        )
    }));
    // 100 concurrent waves of 100: the first wave's misses share one fetch.
    for wave in 0..100 {
        let calls = (0..100).map(|i| {
            let req = kafka_tower::ConsumedRecord::builder(topic.as_str(), 0, wave * 100 + i)
                .payload(Some(payload.clone()))
                .build()
                .into_request(None, 1);
            service.clone().oneshot(req)
        });
        for res in futures_join_all(calls).await {
            assert_eq!(res.unwrap().status(), StatusCode::OK);
        }
    }
    assert_eq!(fresh.schema_fetches(), 1);
    assert_eq!(fresh.requests(), 1);
}

/// Runs the futures on the runtime's threads at once; their outputs in
/// order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_example_pair_runs_against_the_test_services() {
    let topic = kit::unique("reg-example");
    let features = kit::enabled_features!();
    let producer = kit::build_example(
        "kafka-tower-registry",
        "registry_producer",
        features.clone(),
    );
    let consumer = kit::build_example("kafka-tower-registry", "registry_consumer", features);
    let run = |bin: &std::path::Path| {
        let out = with_deadline(
            Command::new(bin)
                .args([topic.as_str(), "4"])
                .env("KAFKA_BOOTSTRAP_SERVERS", kit::bootstrap())
                .env("SCHEMA_REGISTRY_URL", kit::registry_url()),
        );
        assert!(
            out.status.success(),
            "{}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let produced = run(&producer);
    assert!(produced.starts_with("4 orders produced"), "{produced}");
    let served = run(&consumer);
    let lines: Vec<&str> = served.lines().collect();
    assert_eq!(lines.len(), 5, "{served}");
    assert!(lines[0].starts_with(r#"Order { id: "o-0", total: 0.0, currency: "EUR" } customer Some(String("customer-0"))"#), "{served}");
    assert_eq!(lines[4], "4 orders served");
    // Without a registry the example says what it needs.
    let out = with_deadline(
        Command::new(&consumer)
            .args([topic.as_str(), "1"])
            .env("KAFKA_BOOTSTRAP_SERVERS", kit::bootstrap())
            .env_remove("SCHEMA_REGISTRY_URL"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set SCHEMA_REGISTRY_URL"));
}
