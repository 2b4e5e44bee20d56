//! The layer without a registry: schemas put in the client's cache by id
//! (`insert_schema`), so every path below a cached id is exercised on its
//! own — framing, decoding, resolution, refusals, pass-through — and no
//! input panics.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::{ConsumedRecord, RecordBody, Refusal};
use kafka_tower_registry::{
    wire, Decoded, DecodedKey, LocalSchema, Part, RegistryClient, RegistryLayer, RejectKind,
    Rejection, SchemaType,
};
use proptest::prelude::*;
use serde_json::json;
use tower::{service_fn, Layer, ServiceExt};

const V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"string"},{"name":"qty","type":"int"},
    {"name":"tags","type":{"type":"array","items":"string"}}]}"#;
const V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"string"},{"name":"qty","type":"long"},
    {"name":"tags","type":{"type":"array","items":"string"}},
    {"name":"currency","type":"string","default":"EUR"}]}"#;

/// A loopback port nothing listens on: bound, then let go.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client whose cache holds V1 as id 1, a JSON Schema as id 2, a
/// Protobuf schema as id 3, a recursive Avro schema (a list) as id 5; it
/// points at a port nothing listens on, so an
/// uncached id is "registry unavailable".
fn client() -> RegistryClient {
    let c = RegistryClient::builder(format!("http://127.0.0.1:{}", closed_port()))
        .retries(0, std::time::Duration::ZERO)
        .build()
        .unwrap();
    c.insert_schema(1, SchemaType::Avro, V1).unwrap();
    c.insert_schema(
        2,
        SchemaType::Json,
        r#"{"type":"object","required":["id"],"properties":{"id":{"type":"string"}}}"#,
    )
    .unwrap();
    c.insert_schema(3, SchemaType::Protobuf, "syntax = \"proto3\"; message M {}")
        .unwrap();
    c.insert_schema(5, SchemaType::Avro, LIST).unwrap();
    c
}

fn v1_body(id: &str, qty: i32, tags: &[&str]) -> Vec<u8> {
    LocalSchema::avro(V1)
        .unwrap()
        .encode(&json!({"id": id, "qty": qty, "tags": tags}))
        .unwrap()
}

fn layer() -> RegistryLayer {
    RegistryLayer::builder(client()).value("orders").build()
}

async fn decode(layer: &RegistryLayer, bytes: &[u8]) -> Result<Decoded, Rejection> {
    layer.decode("orders", Part::Value, bytes).await
}

#[tokio::test]
async fn decodes_with_the_writer_schema_and_resolves_into_the_reader() {
    let framed = wire::frame(1, &v1_body("o-1", 3, &["a", "b"]));
    let d = decode(&layer(), &framed).await.unwrap();
    assert_eq!(d.schema_id(), 1);
    assert_eq!(
        d.to_json().unwrap(),
        json!({"id": "o-1", "qty": 3, "tags": ["a", "b"]})
    );
    let as_v2 = RegistryLayer::builder(client())
        .value_reader("orders", LocalSchema::avro(V2).unwrap())
        .build();
    let d = decode(&as_v2, &framed).await.unwrap();
    assert_eq!(
        d.to_json().unwrap(),
        json!({"id": "o-1", "qty": 3, "tags": ["a", "b"], "currency": "EUR"}),
        "int promoted to long, the default filled"
    );
}

#[tokio::test]
async fn refusals_name_the_reason() {
    let layer = layer();
    let body = v1_body("o-1", 3, &["a"]);
    let cases: Vec<(Vec<u8>, RejectKind)> = vec![
        (b"".to_vec(), RejectKind::NotFramed),
        (b"\x00\x00\x00".to_vec(), RejectKind::NotFramed),
        (b"{\"id\":1}".to_vec(), RejectKind::NotFramed),
        (
            wire::frame(1, &body[..body.len() - 2]).to_vec(),
            RejectKind::DecodeFailed,
        ),
        (
            wire::frame(1, &[&body[..], b"\x02"].concat()).to_vec(),
            RejectKind::DecodeFailed,
        ),
        (wire::frame(2, b"{\"id\":7}").to_vec(), RejectKind::Invalid),
        (
            wire::frame(2, b"{\"id\":").to_vec(),
            RejectKind::DecodeFailed,
        ),
        (
            wire::frame(3, b"\x00\x0a\x01x").to_vec(),
            RejectKind::UnsupportedSchema,
        ),
        (
            wire::frame(4, &body).to_vec(),
            RejectKind::RegistryUnavailable,
        ),
    ];
    for (bytes, kind) in cases {
        let r = decode(&layer, &bytes).await.unwrap_err();
        assert_eq!(r.kind(), kind, "{r}");
        assert_eq!(r.part(), Part::Value);
    }
    // An Avro reader schema for a JSON writer is a decoding failure.
    let avro_reader = RegistryLayer::builder(client())
        .value_reader("orders", LocalSchema::avro(V2).unwrap())
        .build();
    let r = decode(&avro_reader, &wire::frame(2, b"{\"id\":\"x\"}")).await;
    assert_eq!(r.unwrap_err().kind(), RejectKind::DecodeFailed);
    // A writer the reader cannot resolve (qty long -> int is not allowed).
    let narrow = RegistryLayer::builder(client())
        .value_reader(
            "orders",
            LocalSchema::avro(r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"int"}]}"#)
                .unwrap(),
        )
        .build();
    let r = decode(&narrow, &wire::frame(1, &body)).await.unwrap_err();
    assert_eq!(r.kind(), RejectKind::DecodeFailed);
}

/// The service, answering 200 with what it saw.
fn service(
    layer: RegistryLayer,
) -> impl tower::Service<
    Request<RecordBody>,
    Response = Response<kafka_tower::refusal::RefusalBody<String>>,
    Error = Infallible,
> + Clone {
    layer.layer(service_fn(|req: Request<RecordBody>| async move {
        let value = req.extensions().get::<Decoded>().map(|d| d.schema_id());
        let key = req
            .extensions()
            .get::<DecodedKey>()
            .map(|d| d.0.schema_id());
        let ct = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = req.into_body().into_payload().unwrap_or_default();
        Ok::<_, Infallible>(Response::new(
            json!({"value": value, "key": key, "ct": ct, "body": String::from_utf8_lossy(&body)})
                .to_string(),
        ))
    }))
}

/// A record of `topic` as the runtime maps it.
fn record(topic: &str, key: Option<Bytes>, payload: Option<Bytes>) -> Request<RecordBody> {
    ConsumedRecord::builder(topic, 0, 0)
        .key(key)
        .payload(payload)
        .build()
        .into_request(None, 1)
}

async fn answer(
    layer: RegistryLayer,
    req: Request<RecordBody>,
) -> (StatusCode, serde_json::Value, Option<Refusal>) {
    use http_body_util::BodyExt;
    let res = service(layer).oneshot(req).await.unwrap();
    let status = res.status();
    let refusal = res.extensions().get::<Refusal>().cloned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap(), refusal)
}

#[tokio::test]
async fn the_service_passes_what_it_does_not_decode_and_refuses_the_rest() {
    let framed = wire::frame(1, &v1_body("o-1", 1, &[]));
    // Another topic, and a tombstone: unread.
    let (s, v, _) = answer(
        layer(),
        record("payments", None, Some(Bytes::from_static(b"x"))),
    )
    .await;
    assert_eq!((s, &v["value"]), (StatusCode::OK, &json!(null)));
    let (s, v, _) = answer(layer(), record("orders", None, None)).await;
    assert_eq!((s, &v["value"]), (StatusCode::OK, &json!(null)));
    // A value decoded, its body as received.
    let (s, v, _) = answer(layer(), record("orders", None, Some(framed.clone()))).await;
    assert_eq!((s, &v["value"]), (StatusCode::OK, &json!(1)));
    assert_eq!(v["body"], json!(String::from_utf8_lossy(&framed)));
    // json_body: the body is the value as JSON.
    let json_layer = RegistryLayer::builder(client())
        .value("orders")
        .json_body(true)
        .build();
    let (_, v, _) = answer(json_layer, record("orders", None, Some(framed.clone()))).await;
    assert_eq!(v["ct"], "application/json");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(v["body"].as_str().unwrap()).unwrap(),
        json!({"id": "o-1", "qty": 1, "tags": []})
    );
    // A refused value: the refusal, the inner service not called.
    let (s, v, refusal) = answer(
        layer(),
        record("orders", None, Some(Bytes::from_static(b"plain"))),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["reason"], "not_framed");
    let refusal = refusal.unwrap();
    assert_eq!(
        (refusal.layer(), refusal.reason()),
        ("registry", "not_framed")
    );
    // Too large.
    let small = RegistryLayer::builder(client())
        .value("orders")
        .max_body_bytes(8)
        .build();
    let (s, v, _) = answer(small, record("orders", None, Some(framed.clone()))).await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    // Keys: a framed key decoded, a null key passed, a bad key refused.
    let keys = RegistryLayer::builder(client()).key("orders").build();
    let (_, v, _) = answer(
        keys.clone(),
        record(
            "orders",
            Some(framed.clone()),
            Some(Bytes::from_static(b"x")),
        ),
    )
    .await;
    assert_eq!((&v["key"], &v["value"]), (&json!(1), &json!(null)));
    let (s, _, _) = answer(
        keys.clone(),
        record("orders", None, Some(Bytes::from_static(b"x"))),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v, _) = answer(keys, record("orders", Some(Bytes::from_static(b"k")), None)).await;
    assert_eq!(
        (s, v["reason"].as_str(), v["part"].as_str()),
        (StatusCode::BAD_REQUEST, Some("not_framed"), Some("key"))
    );
    // The registry unreachable for an unknown id: retryable.
    let (s, v, _) = answer(layer(), record("orders", None, Some(wire::frame(99, b"")))).await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("registry_unavailable")
        )
    );
}

/// One runtime and two layers (V1 as written, read as V2) for the
/// property tests: building an HTTP client per case would dominate them.
static SHARED: std::sync::LazyLock<(tokio::runtime::Runtime, RegistryLayer, RegistryLayer)> =
    std::sync::LazyLock::new(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let as_v2 = RegistryLayer::builder(client())
            .value_reader("orders", LocalSchema::avro(V2).unwrap())
            .build();
        (rt, layer(), as_v2)
    });

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// No bytes make the layer panic: anything after a known id decodes or
    /// is refused.
    #[test]
    fn no_input_panics(id in prop::sample::select(vec![1u32, 2, 3, 5]), body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let (rt, layer, as_v2) = &*SHARED;
        rt.block_on(async {
            for l in [layer, as_v2] {
                match decode(l, &wire::frame(id, &body)).await {
                    Ok(d) => prop_assert_eq!(d.schema_id(), id),
                    Err(r) => prop_assert!(r.kind() != RejectKind::RegistryUnavailable, "{}", r),
                }
            }
            Ok(())
        })?;
    }

    /// What the encoder writes, the layer reads back.
    #[test]
    fn round_trip(id in "[a-z0-9-]{0,20}", qty in any::<i32>(), tags in proptest::collection::vec("\\PC{0,8}", 0..5)) {
        let (rt, layer, _) = &*SHARED;
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let framed = wire::frame(1, &v1_body(&id, qty, &tags));
        let d = rt.block_on(decode(layer, &framed)).unwrap();
        prop_assert_eq!(d.to_json().unwrap(), json!({"id": id, "qty": qty, "tags": tags}));
    }
}

/// A one-answer HTTP server: answers every request with `status` and
/// `body`, and keeps each request's head.
struct FakeRegistry {
    url: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn fake_registry(status: u16, body: &'static str) -> FakeRegistry {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = heads.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..read]).into_owned());
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    FakeRegistry { url, heads }
}

fn behind(fake: &FakeRegistry) -> RegistryClient {
    RegistryClient::builder(&fake.url)
        .retries(0, std::time::Duration::ZERO)
        .basic_auth("svc", "pa:ss")
        .build()
        .unwrap()
}

#[tokio::test]
async fn only_the_registrys_own_not_found_makes_an_id_unknown() {
    let body = wire::frame(7, b"");
    // The registry's "schema not found": the record's fault, remembered.
    let fake = fake_registry(
        404,
        r#"{"error_code":40403,"message":"Schema 7 not found"}"#,
    )
    .await;
    let layer = RegistryLayer::builder(behind(&fake))
        .value("orders")
        .build();
    for _ in 0..3 {
        let r = decode(&layer, &body).await.unwrap_err();
        assert_eq!(r.kind(), RejectKind::UnknownSchemaId, "{r}");
    }
    assert_eq!(
        layer.client().schema_fetches(),
        1,
        "a missing id is remembered"
    );
    let head = fake.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /schemas/ids/7 "), "{head}");
    // Basic auth sent as configured: base64("svc:pa:ss").
    assert!(head.contains("authorization: Basic c3ZjOnBhOnNz"), "{head}");

    // A bare 404 (a wrong base path, a proxy's page) or a refused
    // credential is not the record's fault: retryable, and not remembered.
    for (status, answer) in [(404, "<html>no</html>"), (401, r#"{"message":"no"}"#)] {
        let fake = fake_registry(status, answer).await;
        let layer = RegistryLayer::builder(behind(&fake))
            .value("orders")
            .build();
        for _ in 0..2 {
            let r = decode(&layer, &body).await.unwrap_err();
            assert_eq!(r.kind(), RejectKind::RegistryUnavailable, "{status}: {r}");
        }
        assert_eq!(layer.client().schema_fetches(), 2, "{status}: asked again");
    }
}

#[tokio::test]
async fn credentials_never_show() {
    let builder = RegistryClient::builder("https://user:secret-pw@registry.test/apis")
        .bearer_token("tok-123");
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains("secret-pw") && !shown.contains("tok-123"),
        "{shown}"
    );
    let client = builder.build().unwrap();
    let shown = format!("{client:?} {}", client.url());
    assert!(
        !shown.contains("secret-pw") && !shown.contains("tok-123"),
        "{shown}"
    );
    let only_password = RegistryClient::builder("http://:pw-only@registry.test")
        .build()
        .unwrap();
    assert!(!format!("{only_password:?} {}", only_password.url()).contains("pw-only"));
}

/// A linked list: a record whose `next` is null or another node.
const LIST: &str = r#"{"type":"record","name":"Node","fields":[
    {"name":"next","type":["null","Node"]}]}"#;

/// A list `depth` nodes long: one byte (union branch 1) per node, then the
/// null branch.
fn list_body(depth: usize) -> Vec<u8> {
    let mut body = vec![2u8; depth - 1];
    body.push(0);
    body
}

#[tokio::test]
async fn deep_recursive_data_is_refused_without_exhausting_the_stack() {
    let c = client();
    c.insert_schema(10, SchemaType::Avro, LIST).unwrap();
    let layer = RegistryLayer::builder(c).value("orders").build();
    // A record and a union per node, and the final null: 15 nodes nest 31
    // levels, within the default 32.
    let shallow = decode(&layer, &wire::frame(10, &list_body(15)))
        .await
        .unwrap();
    assert_eq!(shallow.schema_id(), 10);
    for depth in [16, 1_000_000] {
        // A million levels would overflow any thread's stack if decoded.
        let r = decode(&layer, &wire::frame(10, &list_body(depth)))
            .await
            .unwrap_err();
        assert_eq!(r.kind(), RejectKind::DecodeFailed);
        assert!(r.detail().contains("levels deep"), "{r}");
    }
    // Truncated, and a branch that does not exist: refused, not misread.
    let r = decode(&layer, &wire::frame(10, &[2, 2])).await.unwrap_err();
    assert!(r.detail().contains("ends inside"), "{r}");
    let r = decode(&layer, &wire::frame(10, &[4])).await.unwrap_err();
    assert!(r.detail().contains("branch 2"), "{r}");
    // An array of a billion nulls declared in a few bytes: refused.
    let c = client();
    c.insert_schema(
        11,
        SchemaType::Avro,
        r#"{"type":"record","name":"T","fields":[{"name":"t","type":["null","T"]},
            {"name":"n","type":{"type":"array","items":"null"}}]}"#,
    )
    .unwrap();
    let layer = RegistryLayer::builder(c).value("orders").build();
    let r = decode(
        &layer,
        &wire::frame(11, &[0, 0x80, 0xa8, 0xd6, 0xb9, 0x07, 0]),
    )
    .await
    .unwrap_err();
    assert_eq!(r.kind(), RejectKind::DecodeFailed, "{r}");
}
