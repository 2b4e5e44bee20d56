//! Production-cluster features against the real test broker
//! (`scripts/kafka.sh` starts it with secured listeners): SASL_SSL with
//! SCRAM-SHA-512 and mTLS, refusals that fail fast with their cause, and
//! records in every compression codec, written by Apache Kafka's own
//! console producer and by kafka-tower's producer.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use kafka_tower::runtime::{ProduceError, Producer, ProducerConfig, RefusalKind};
use kafka_tower::{Consumer, OutgoingRecord};
use kafka_tower_testkit::secured::*;
use kafka_tower_testkit::*;

/// How long librdkafka may take to report a refusal: its first connection
/// attempt fails within milliseconds; the bound only separates "fails with
/// the cause" from "retries forever".
const REFUSED_WITHIN: Duration = Duration::from_secs(30);

fn secured_consumer(group: &str, topic: &str, props: &[(String, String)]) -> Consumer {
    let mut b = consumer(group, &[topic]);
    for (k, v) in props {
        b = b.property(k, v);
    }
    b.build().expect("consumer config")
}

fn secured_producer(props: &[(String, String)]) -> Producer {
    let mut c = ProducerConfig::new("");
    for (k, v) in props {
        c = c.property(k, v);
    }
    Producer::new(c).expect("producer config")
}

fn outgoing(topic: &str, key: &str, payload: &str) -> OutgoingRecord {
    OutgoingRecord {
        topic: topic.into(),
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        payload: Some(Bytes::copy_from_slice(payload.as_bytes())),
        ..Default::default()
    }
}

/// Produces with kafka-tower's producer over `props`, consumes with the
/// runtime over the same listener, and dead-letters the record the service
/// refuses (the dead-letter producer inherits the connection properties).
async fn round_trip(props: Vec<(String, String)>) {
    let topic = unique("secured");
    create_topic_with_dlq(&topic, 2).await;
    let producer = secured_producer(&props);
    for i in 0..10 {
        producer
            .send(outgoing(&topic, &format!("k{i}"), &format!("p{i}")))
            .await
            .expect("send over the secured listener");
    }
    let group = unique("g");
    let recorder = Recorder::default();
    let running = spawn(
        secured_consumer(&group, &topic, &props),
        recording_service(recorder.clone(), |s| {
            if s.payload.as_deref() == Some(&b"p7"[..]) {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            }
        }),
    );
    recorder.wait_count(10).await;
    let dead = read_topic(&format!("{topic}.dlq"), 1).await;
    running.stop().await;

    let mut payloads: Vec<String> = recorder
        .all()
        .iter()
        .map(|s| String::from_utf8_lossy(s.payload.as_deref().unwrap()).into_owned())
        .collect();
    payloads.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    want.sort();
    assert_eq!(payloads, want);
    assert_eq!(dead[0].payload.as_deref(), Some(&b"p7"[..]));
    assert_eq!(dead[0].key.as_deref(), Some(&b"k7"[..]));
    assert_eq!(
        header_text(&dead[0].headers, "kt-dlq-status").as_deref(),
        Some("422")
    );
    let committed: i64 = committed(&group, &topic, 2).iter().sum();
    assert_eq!(committed, 10, "every record committed");
}

#[tokio::test]
async fn sasl_ssl_scram_produces_consumes_and_dead_letters() {
    round_trip(sasl_ssl_properties(&scram_password())).await;
}

#[tokio::test]
async fn mtls_produces_consumes_and_dead_letters() {
    round_trip(mtls_properties("ca.pem", "client")).await;
}

/// Serves a consumer that the cluster should refuse and returns its error
/// and how long it took.
async fn refused_consumer(props: Vec<(String, String)>) -> (kafka_tower::ConsumerError, Duration) {
    init_tracing();
    let topic = unique("refused");
    create_topic(&topic, 1).await;
    let consumer = secured_consumer(&unique("g"), &topic, &props);
    let started = Instant::now();
    let served = tokio::time::timeout(
        REFUSED_WITHIN,
        consumer.serve(
            tower::service_fn(|_req: http::Request<kafka_tower::RecordBody>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }),
            std::future::pending::<()>(),
        ),
    )
    .await
    .expect("the consumer stops with an error instead of retrying forever");
    let err = served.expect_err("the cluster refuses this consumer");
    (err, started.elapsed())
}

#[tokio::test]
async fn a_wrong_password_fails_fast_naming_the_cause() {
    let wrong = "not-the-password-b7c1";
    let (err, took) = refused_consumer(sasl_ssl_properties(wrong)).await;
    let refused = err.refused().expect("a refusal, not another error");
    assert_eq!(refused.kind(), RefusalKind::Authentication, "{err}");
    let text = err.to_string();
    assert!(text.contains("invalid credentials"), "{text}");
    assert!(text.contains("sasl.password"), "{text}");
    assert!(
        !text.contains(wrong),
        "the password is never printed: {text}"
    );
    assert!(!format!("{err:?}").contains(wrong), "nor in Debug: {err:?}");
    eprintln!("refused after {took:?}: {text}");

    // The producer fails too, instead of holding the record for
    // message.timeout.ms.
    let topic = unique("refused-p");
    create_topic(&topic, 1).await;
    let producer = secured_producer(&sasl_ssl_properties(wrong));
    let sent = tokio::time::timeout(REFUSED_WITHIN, producer.send(outgoing(&topic, "k", "v")))
        .await
        .expect("send fails instead of waiting for message.timeout.ms");
    match sent {
        Err(ProduceError::Refused(r)) => {
            assert_eq!(r.kind(), RefusalKind::Authentication);
            assert!(!r.to_string().contains(wrong));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(read_all(&topic, "read_uncommitted").await.is_empty());
}

#[tokio::test]
async fn an_unknown_ca_fails_fast_naming_the_cause() {
    let (err, took) = refused_consumer(mtls_properties("other-ca.pem", "client")).await;
    let refused = err.refused().expect("a refusal, not another error");
    assert_eq!(refused.kind(), RefusalKind::Tls, "{err}");
    let text = err.to_string();
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(text.contains("ssl.ca.location"), "{text}");
    eprintln!("refused after {took:?}: {text}");
}

#[tokio::test]
async fn an_expired_client_certificate_fails_fast_naming_the_cause() {
    let (err, took) = refused_consumer(mtls_properties("ca.pem", "expired-client")).await;
    let refused = err.refused().expect("a refusal, not another error");
    assert_eq!(refused.kind(), RefusalKind::Tls, "{err}");
    let text = err.to_string();
    // The broker answers an expired client certificate with the TLS alert
    // "certificate unknown" (its own log names the expiry).
    assert!(text.contains("alert certificate unknown"), "{text}");
    assert!(text.contains("ssl.certificate.location"), "{text}");
    eprintln!("refused after {took:?}: {text}");
}

const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];

/// Writes `lines` (`key|payload`) with Apache Kafka's console producer,
/// compressed with `codec`.
fn console_produce(topic: &str, codec: &str, lines: &[String]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
    let mut child = Command::new(script)
        .args([
            "tool",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            &bootstrap(),
            "--topic",
            topic,
            "--compression-codec",
            codec,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("console producer");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let status = child.wait().expect("console producer exit");
    assert!(status.success(), "console producer failed: {status}");
}

fn expected_lines(codec: &str) -> Vec<(String, String)> {
    (0..50)
        .map(|i| {
            (
                format!("{codec}-key-{i}"),
                format!("{codec} payload {i} {}", "x".repeat(i * 7)),
            )
        })
        .collect()
}

/// Every codec Kafka producers use, written by an independent producer,
/// is served byte-exact (zstd used to stall its partition: "Decompression
/// (codec 0x4) … failed: Local: Not implemented").
#[tokio::test]
async fn records_of_every_codec_from_the_console_producer_are_served() {
    let mut topics = Vec::new();
    for codec in CODECS {
        let topic = unique(&format!("codec-{codec}"));
        create_topic(&topic, 1).await;
        let want = expected_lines(codec);
        let lines: Vec<String> = want.iter().map(|(k, p)| format!("{k}|{p}")).collect();
        let t = topic.clone();
        tokio::task::spawn_blocking(move || console_produce(&t, codec, &lines))
            .await
            .unwrap();
        topics.push((codec, topic, want));
    }
    let names: Vec<&str> = topics.iter().map(|(_, t, _)| t.as_str()).collect();
    let recorder = Recorder::default();
    let running = spawn(
        consumer(&unique("g"), &names).build().unwrap(),
        recording_service(recorder.clone(), |_| StatusCode::OK),
    );
    recorder.wait_count(50 * CODECS.len()).await;
    running.stop().await;
    let seen = recorder.all();
    for (codec, topic, want) in &topics {
        let got: Vec<(String, String)> = seen
            .iter()
            .filter(|s| &s.topic == topic)
            .map(|s| {
                (
                    String::from_utf8(s.key.as_deref().unwrap().to_vec()).unwrap(),
                    String::from_utf8(s.payload.as_deref().unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(&got, want, "{codec}: every record, in order, byte-exact");
        let codecs = batch_codecs(topic);
        assert!(
            !codecs.is_empty() && codecs.iter().all(|c| c == codec),
            "{codec}: the console producer's batches were stored as {codecs:?}"
        );
    }
}

/// kafka-tower's producer with each codec: what it writes reads back
/// byte-exact (librdkafka decompresses on read).
#[tokio::test]
async fn the_producer_writes_every_codec() {
    for codec in CODECS {
        let topic = unique(&format!("produce-{codec}"));
        create_topic(&topic, 1).await;
        let mut config = ProducerConfig::new(bootstrap());
        config.compression = Some(codec.into());
        let producer = Producer::new(config).expect("producer");
        let want = expected_lines(codec);
        // Sent at once, so that they share batches: librdkafka sends a
        // batch uncompressed when compressing does not make it smaller.
        let sends = want
            .iter()
            .map(|(k, p)| producer.send(outgoing(&topic, k, p)));
        for sent in futures_util::future::join_all(sends).await {
            sent.expect("send");
        }
        let got: Vec<(String, String)> = read_all(&topic, "read_uncommitted")
            .await
            .iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.as_deref().unwrap().to_vec()).unwrap(),
                    String::from_utf8(r.payload.as_deref().unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "{codec}");
        let codecs = batch_codecs(&topic);
        assert!(
            !codecs.is_empty() && codecs.iter().all(|c| c == codec),
            "{codec}: the broker stored batches compressed with {codecs:?}"
        );
    }
}

/// The compression codec of every batch the broker stored for partition 0
/// of `topic`, read from its log segment with Apache Kafka's
/// DumpLogSegments tool.
fn batch_codecs(topic: &str) -> Vec<String> {
    let segment = format!("{}/{topic}-0/00000000000000000000.log", broker_log_dir());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
    let out = Command::new(script)
        .args(["tool", "kafka.tools.DumpLogSegments", "--files", &segment])
        .stderr(Stdio::inherit())
        .output()
        .expect("DumpLogSegments");
    assert!(out.status.success(), "DumpLogSegments failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("compresscodec: ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

/// One token request librdkafka made to the test token endpoint.
#[cfg(feature = "oidc")]
#[derive(Debug, Clone)]
struct TokenRequest {
    request_line: String,
    authorization: Option<String>,
    body: String,
}

/// An OIDC token endpoint on loopback answering every request with an
/// unsigned JWT for `sub` (the broker's OAUTHBEARER listener uses Kafka's
/// unsecured validator, which accepts unsigned tokens).
#[cfg(feature = "oidc")]
async fn token_endpoint(
    sub: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<TokenRequest>>>) {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                let (head, body) = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < end + 4 + len {
                            let n = socket.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let body = String::from_utf8_lossy(&buf[end + 4..]).into_owned();
                        break (head, body);
                    }
                };
                log.lock().unwrap().push(TokenRequest {
                    request_line: head.lines().next().unwrap_or("").to_owned(),
                    authorization: head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_owned())
                    }),
                    body,
                });
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let jwt = format!(
                    "{}.{}.",
                    b64.encode(r#"{"alg":"none"}"#),
                    b64.encode(format!(
                        r#"{{"sub":"{sub}","iat":{now},"exp":{},"scope":"kafka"}}"#,
                        now + 3600
                    ))
                );
                let json = format!(
                    r#"{{"access_token":"{jwt}","token_type":"bearer","expires_in":3600}}"#
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// OAUTHBEARER with librdkafka's own OIDC client-credentials flow,
/// configured from YAML: librdkafka fetches a token from the endpoint with
/// the client's id and secret, presents it to the broker, and the consumer
/// serves the topic.
#[cfg(feature = "oidc")]
#[tokio::test]
async fn oauthbearer_oidc_client_credentials_from_yaml() {
    use base64::Engine as _;

    let (url, requests) = token_endpoint("svc-orders").await;
    let topic = unique("oidc");
    create_topic_with_dlq(&topic, 1).await;
    produce(&topic, (0..5).map(|i| Rec::payload(format!("oidc-{i}")))).await;

    let secret = "oidc-client-secret-5d2a";
    let yaml = format!(
        r#"
group_id: {group}
topics: [{topic}]
commit_interval: 200ms
properties:
  bootstrap.servers: {bootstrap}
  security.protocol: SASL_SSL
  ssl.ca.location: {ca}
  sasl.mechanism: OAUTHBEARER
  sasl.oauthbearer.method: oidc
  sasl.oauthbearer.client.id: svc-orders
  sasl.oauthbearer.client.secret: {secret}
  sasl.oauthbearer.token.endpoint.url: {url}
  sasl.oauthbearer.scope: kafka
  auto.offset.reset: earliest
"#,
        group = unique("g"),
        bootstrap = sasl_ssl_bootstrap(),
        ca = tls_file("ca.pem"),
    );
    let config = kafka_tower::runtime::ConsumerConfig::from_yaml_str(
        &yaml,
        "oidc.yaml",
        std::iter::empty::<(String, String)>(),
    )
    .expect("config");
    assert!(!format!("{config:?}").contains(secret));
    let recorder = Recorder::default();
    let running = spawn(
        Consumer::from_config(config).unwrap(),
        recording_service(recorder.clone(), |_| StatusCode::OK),
    );
    recorder.wait_count(5).await;
    running.stop().await;
    assert_eq!(
        recorder.texts(),
        (0..5).map(|i| format!("oidc-{i}")).collect::<Vec<_>>()
    );

    let requests = requests.lock().unwrap().clone();
    let first = requests
        .first()
        .expect("librdkafka asked the token endpoint");
    assert!(
        first.request_line.starts_with("POST /oauth2/token"),
        "{first:?}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("svc-orders:{secret}"));
    assert_eq!(
        first.authorization.as_deref(),
        Some(format!("Basic {basic}").as_str())
    );
    assert!(
        first.body.contains("grant_type=client_credentials") && first.body.contains("scope=kafka"),
        "{first:?}"
    );
}

/// The transactional producer (and so `serve_exactly_once`) fails with the
/// refusal instead of waiting out `init_transactions`.
#[tokio::test]
async fn a_transactional_producer_with_a_wrong_password_fails_fast() {
    let wrong = "not-the-password-txn";
    let mut config = txn_producer(&unique("txn"));
    for (k, v) in sasl_ssl_properties(wrong) {
        config = config.property(k, v);
    }
    let created = tokio::time::timeout(
        REFUSED_WITHIN,
        kafka_tower::runtime::TransactionalProducer::new(config),
    )
    .await
    .expect("refused before init_transactions times out");
    match created {
        Err(kafka_tower::runtime::TransactionError::Refused(r)) => {
            assert_eq!(r.kind(), RefusalKind::Authentication);
            assert!(!r.to_string().contains(wrong));
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the producer started"),
    }
}
