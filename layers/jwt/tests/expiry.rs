//! Queue-aware expiry, per topic, and the cache honouring it.

mod support;

use std::time::Duration;

use kafka_tower_jwt::{ExpiryMode, TopicPolicy};
use serde_json::json;
use support::*;

fn expired_ago(secs: u64) -> String {
    let mut c = claims();
    c["exp"] = json!(now() - secs);
    hs256(&c)
}

fn layer() -> Svc {
    let l = hs_layer()
        .topic(
            "grace",
            TopicPolicy::new().expiry(ExpiryMode::Grace(Duration::from_secs(600))),
        )
        .topic(
            "events",
            TopicPolicy::new().expiry(ExpiryMode::RecordTimestamp {
                max_age: Duration::from_secs(86_400),
            }),
        )
        .topic("skip", TopicPolicy::new().expiry(ExpiryMode::Skip))
        .build()
        .unwrap();
    service(&l)
}

#[tokio::test]
async fn strict_is_the_default() {
    let svc = layer();
    assert_eq!(
        send(&svc, record("orders", Some(&expired_ago(120)), None))
            .await
            .reason(),
        "expired"
    );
}

#[tokio::test]
async fn grace_accepts_recently_expired_only() {
    let svc = layer();
    send(&svc, record("grace", Some(&expired_ago(300)), None))
        .await
        .assert_ok("sub=user-1");
    let a = send(&svc, record("grace", Some(&expired_ago(3600)), None)).await;
    assert_eq!(a.reason(), "expired");
    assert!(a.body.contains("grace"), "{}", a.body);
}

#[tokio::test]
async fn record_timestamp_judges_exp_when_produced() {
    let svc = layer();
    // Token expired 2 h ago; the record was produced 3 h ago, while valid.
    let token = expired_ago(7200);
    send(
        &svc,
        record("events", Some(&token), Some(now_ms() - 3 * 3600 * 1000)),
    )
    .await
    .assert_ok("sub=user-1");
    // Produced 1 h ago, after the token expired: refused.
    let a = send(
        &svc,
        record("events", Some(&token), Some(now_ms() - 3600 * 1000)),
    )
    .await;
    assert_eq!(a.reason(), "expired");
    assert!(
        a.body.contains("before the record was produced"),
        "{}",
        a.body
    );
    // Produced while valid but older than max_age (1 day): refused.
    let old = expired_ago(3 * 86_400);
    let a = send(
        &svc,
        record("events", Some(&old), Some(now_ms() - 4 * 86_400 * 1000)),
    )
    .await;
    assert_eq!(a.reason(), "expired");
    assert!(a.body.contains("maximum age"), "{}", a.body);
    // No timestamp: judged strictly.
    assert_eq!(
        send(&svc, record("events", Some(&token), None))
            .await
            .reason(),
        "expired"
    );
}

#[tokio::test]
async fn record_timestamp_applies_nbf_at_the_timestamp() {
    let svc = layer();
    let mut c = claims();
    c["nbf"] = json!(now() - 600);
    let token = hs256(&c);
    // Produced an hour before the token became valid.
    let a = send(
        &svc,
        record("events", Some(&token), Some(now_ms() - 3600 * 1000)),
    )
    .await;
    assert_eq!(a.reason(), "not_yet_valid");
    // A record timestamp in the future is capped at now.
    send(
        &svc,
        record("events", Some(&token), Some(now_ms() + 10 * 86_400 * 1000)),
    )
    .await
    .assert_ok("sub=user-1");
}

#[tokio::test]
async fn skip_accepts_long_expired_tokens_but_still_checks_the_signature() {
    let svc = layer();
    send(&svc, record("skip", Some(&expired_ago(30 * 86_400)), None))
        .await
        .assert_ok("sub=user-1");
    let mut c = claims();
    c["exp"] = json!(now() - 30 * 86_400);
    let other_key = jsonwebtoken::EncodingKey::from_secret(b"not-the-configured-secret!").unwrap();
    let forged = sign(
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &c,
        &other_key,
    );
    assert_eq!(
        send(&svc, record("skip", Some(&forged), None))
            .await
            .reason(),
        "bad_signature"
    );
}

#[tokio::test]
async fn http_requests_are_strict_whatever_the_topic_policy() {
    let svc = layer();
    // `/grace` and `/skip` routes have no RecordMeta: strict.
    assert_eq!(
        send(&svc, http_request("/grace", Some(&expired_ago(300))))
            .await
            .reason(),
        "expired"
    );
    assert_eq!(
        send(&svc, http_request("/skip", Some(&expired_ago(300))))
            .await
            .reason(),
        "expired"
    );
}

#[tokio::test]
async fn a_cached_token_is_judged_by_each_topic_again() {
    let svc = layer();
    let token = expired_ago(300);
    // Verified and cached on the grace topic ...
    send(&svc, record("grace", Some(&token), None))
        .await
        .assert_ok("sub=user-1");
    // ... the same token on a strict topic is still expired.
    assert_eq!(
        send(&svc, record("orders", Some(&token), None))
            .await
            .reason(),
        "expired"
    );
    send(&svc, record("grace", Some(&token), None))
        .await
        .assert_ok("sub=user-1");
}
