//! JWT and JSON Schema layers in front of the consumer runtime, against a
//! real Apache Kafka broker: refused records are dead-lettered and the
//! dead-letter headers name the refusing layer and the reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use kafka_tower::{RawHeader, RawHeaders};
use kafka_tower_jwt::{ExpiryMode, JwtLayer, TopicPolicy};
use kafka_tower_schema::JsonSchemaLayer;
use kafka_tower_testkit::*;
use serde_json::json;
use tower::ServiceBuilder;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/secure_consumer");
const ISSUER: &str = "https://idp.example.com";

fn mint(scope: &str, exp_offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(
        &std::fs::read(format!("{DIR}/demo-signing-key.pem")).unwrap(),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("demo-1".into());
    let claims = json!({"iss": ISSUER, "sub": "user-42", "client_id": "web-shop", "scope": scope,
                        "iat": now - 7200, "exp": now + exp_offset});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn with_token(token: Option<&str>) -> RawHeaders {
    let mut h = RawHeaders::new();
    if let Some(t) = token {
        h.push(RawHeader::new(&b"Authorization"[..], format!("Bearer {t}")));
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_dead_lettered_naming_layer_and_reason() {
    let topic = unique("secure");
    create_topic_with_dlq(&topic, 1).await;
    let jwt = JwtLayer::builder()
        .jwks_file(format!("{DIR}/jwks.json"))
        .issuer(ISSUER)
        .leeway(Duration::from_secs(5))
        .topic(
            &topic,
            TopicPolicy::new()
                .expiry(ExpiryMode::Strict)
                .require_scope("orders.w"),
        )
        .build()
        .unwrap();
    let schemas = JsonSchemaLayer::builder()
        .schema_file(&topic, format!("{DIR}/schemas/orders.json"))
        .build()
        .unwrap();

    let valid = r#"{"id":"o-1","customer":{"id":"c-1"},"total":10}"#;
    let good = mint("orders.w", 600);
    // (what, token, payload, expected refusal: (layer, reason, status))
    type Refused = Option<(&'static str, &'static str, &'static str)>;
    let cases: Vec<(&str, Option<String>, &str, Refused)> = vec![
        ("ok", Some(good.clone()), valid, None),
        ("no token", None, valid, Some(("jwt", "missing", "401"))),
        (
            "expired",
            Some(mint("orders.w", -3600)),
            valid,
            Some(("jwt", "expired", "401")),
        ),
        (
            "no scope",
            Some(mint("orders.r", 600)),
            valid,
            Some(("jwt", "insufficient_scope", "403")),
        ),
        (
            "garbage token",
            Some("not.a.jwt".into()),
            valid,
            Some(("jwt", "malformed", "401")),
        ),
        (
            "bad payload",
            Some(good.clone()),
            r#"{"id":"o-4","customer":{},"total":-1}"#,
            Some(("schema", "invalid", "422")),
        ),
        (
            "not json",
            Some(good.clone()),
            "{{{",
            Some(("schema", "not_json", "400")),
        ),
    ];
    produce(
        &topic,
        cases.iter().map(|(_, token, body, _)| {
            Rec::payload(body.to_string()).headers(with_token(token.as_deref()))
        }),
    )
    .await;

    let rec = Recorder::default();
    let service = ServiceBuilder::new()
        .layer(jwt)
        .layer(schemas)
        .service(recording_service(rec.clone(), |_| StatusCode::OK));
    let running = spawn(consumer(&unique("g"), &[&topic]).build().unwrap(), service);
    let refused: Vec<_> = cases.iter().filter(|c| c.3.is_some()).collect();
    let dlq = read_topic(&format!("{topic}.dlq"), refused.len()).await;
    rec.wait_count(1).await;
    running.stop().await;

    assert_eq!(
        rec.texts(),
        vec![valid.to_owned()],
        "only the valid record reached the service"
    );
    for (i, (what, _, body, expected)) in refused.iter().enumerate() {
        let (layer, reason, status) = expected.unwrap();
        let d = dlq
            .iter()
            .find(|d| {
                d.payload.as_deref() == Some(body.as_bytes())
                    && header_text(&d.headers, "kt-dlq-reason").as_deref() == Some(reason)
            })
            .unwrap_or_else(|| panic!("case {i} ({what}): no dead letter with reason {reason}"));
        assert_eq!(
            header_text(&d.headers, "kt-dlq-failed-by").as_deref(),
            Some(layer),
            "{what}"
        );
        assert_eq!(
            header_text(&d.headers, "kt-dlq-status").as_deref(),
            Some(status),
            "{what}"
        );
        assert_eq!(
            header_text(&d.headers, "kt-dlq-error-class").as_deref(),
            Some("permanent"),
            "{what}"
        );
        assert_eq!(
            header_text(&d.headers, "kt-dlq-attempts").as_deref(),
            Some("1"),
            "{what}: refusals are not retried"
        );
        let message = header_text(&d.headers, "kt-dlq-error-message").unwrap();
        assert!(
            !message.contains("eyJ"),
            "{what}: a token never appears in a dead-letter header: {message}"
        );
    }
}
