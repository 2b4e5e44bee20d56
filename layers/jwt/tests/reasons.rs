//! Every refusal reason, each asserted by its code, and what a success puts
//! in the request.

mod support;

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use jsonwebtoken::{EncodingKey, Header};
use kafka_tower::RecordBody;
use kafka_tower_jwt::{Algorithm, ClaimNames, TopicPolicy, VerificationKey, VerifiedClaims};
use serde_json::{json, Value};
use support::*;
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test]
async fn a_valid_token_passes_with_typed_claims() {
    let layer = hs_layer().build().unwrap();
    let mut c = claims();
    c["act"] = json!({"sub": "billing-service"});
    let token = hs256(&c);
    let inner = service_fn(|req: Request<RecordBody>| async move {
        let claims = req.extensions().get::<VerifiedClaims>().unwrap().clone();
        Ok::<_, Infallible>(Response::new(claims))
    });
    let res = layer
        .layer(inner)
        .oneshot(record("orders", Some(&token), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let claims = res.into_body().into_inner().expect("the inner body");
    assert_eq!(claims.subject(), Some("user-1"));
    assert_eq!(claims.client_id(), Some("web"));
    assert_eq!(claims.service_id(), Some("billing-service"));
    assert_eq!(claims.issuer(), Some(ISSUER));
    assert_eq!(
        claims.scopes().collect::<Vec<_>>(),
        ["orders.r", "orders.w"]
    );
    assert_eq!(claims.algorithm(), Algorithm::HS256);
    assert_eq!(claims.raw()["act"]["sub"], "billing-service");
    assert_eq!(claims.fingerprint().len(), 8);
}

#[tokio::test]
async fn missing_token_is_refused_or_anonymous_per_topic() {
    let layer = hs_layer()
        .topic("public", TopicPolicy::new().allow_anonymous())
        .build()
        .unwrap();
    let svc = service(&layer);
    let a = send(&svc, record("orders", None, None)).await;
    assert_eq!(a.reason(), "missing");
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    send(&svc, record("public", None, None))
        .await
        .assert_ok("anonymous");
    // A bad token on an anonymous topic is still refused.
    assert_eq!(
        send(&svc, record("public", Some("x.y.z"), None))
            .await
            .reason(),
        "malformed"
    );
}

#[tokio::test]
async fn refusal_body_is_small_json_naming_layer_and_reason() {
    let svc = service(&hs_layer().build().unwrap());
    let a = send(&svc, record("orders", None, None)).await;
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["layer"], "jwt");
    assert_eq!(body["reason"], "missing");
    assert!(body["detail"].as_str().unwrap().contains("Authorization"));
    let r = a.refusal.unwrap();
    assert_eq!((r.layer(), r.reason()), ("jwt", "missing"));
}

#[tokio::test]
async fn malformed_tokens() {
    let svc = service(&hs_layer().build().unwrap());
    for bad in [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        &format!("{}.e30.sig", b64(b"not json")),
    ] {
        assert_eq!(
            send(&svc, record("t", Some(bad), None)).await.reason(),
            "malformed",
            "{bad}"
        );
    }
    // Not a Bearer scheme.
    let mut req = record("t", None, None);
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        "Basic dXNlcjpwYXNz".parse().unwrap(),
    );
    assert_eq!(send(&svc, req).await.reason(), "malformed");
    // Two Authorization headers are ambiguous.
    let token = hs256(&claims());
    let mut req = record("t", Some(&token), None);
    req.headers_mut().append(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    assert_eq!(send(&svc, req).await.reason(), "malformed");
    // Signed correctly but claims are not JSON / exp is a string / exp missing.
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let header = b64(br#"{"alg":"HS256"}"#);
    let payload = b64(b"[1,2]");
    let sig = jsonwebtoken::crypto::sign(
        format!("{header}.{payload}").as_bytes(),
        &key,
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(
        send(
            &svc,
            record("t", Some(&format!("{header}.{payload}.{sig}")), None)
        )
        .await
        .reason(),
        "malformed"
    );
    let mut c = claims();
    c["exp"] = json!("tomorrow");
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "malformed"
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "malformed"
    );
}

#[tokio::test]
async fn bad_signature() {
    let svc = service(&hs_layer().build().unwrap());
    let other = sign(
        Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"another-secret-another-secret").unwrap(),
    );
    assert_eq!(
        send(&svc, record("t", Some(&other), None)).await.reason(),
        "bad_signature"
    );
    // A valid token whose payload was swapped keeps its signature: refused.
    let good = hs256(&claims());
    let mut c = claims();
    c["sub"] = json!("admin");
    let forged_payload = hs256(&c).split('.').nth(1).unwrap().to_owned();
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = &forged_payload;
    assert_eq!(
        send(&svc, record("t", Some(&parts.join(".")), None))
            .await
            .reason(),
        "bad_signature"
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_on_http() {
    let svc = service(&hs_layer().build().unwrap());
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    let a = send(&svc, http_request("/orders", Some(&hs256(&c)))).await;
    assert_eq!(a.reason(), "expired");
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    assert_eq!(
        send(&svc, http_request("/orders", Some(&hs256(&c))))
            .await
            .reason(),
        "not_yet_valid"
    );
    // Within the leeway (60 s by default) both pass.
    let mut c = claims();
    c["exp"] = json!(now() - 10);
    c["nbf"] = json!(now() + 10);
    send(&svc, http_request("/orders", Some(&hs256(&c))))
        .await
        .assert_ok("sub=user-1");
}

#[tokio::test]
async fn wrong_issuer_and_audience() {
    let svc = service(&hs_layer().audience("orders-service").build().unwrap());
    let mut c = claims();
    c["aud"] = json!("orders-service");
    send(&svc, record("t", Some(&hs256(&c)), None))
        .await
        .assert_ok("sub=user-1");
    c["iss"] = json!("https://evil.test");
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "wrong_issuer"
    );
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "wrong_issuer"
    );
    let mut c = claims();
    c["aud"] = json!(["billing-service"]);
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "wrong_audience"
    );
    let c = claims(); // no aud at all, but one is configured
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "wrong_audience"
    );

    // With no audience configured, a token that names one is refused.
    let svc = service(&hs_layer().build().unwrap());
    let mut c = claims();
    c["aud"] = json!("someone-else");
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "wrong_audience"
    );
}

#[tokio::test]
async fn unknown_key() {
    let layer = kafka_tower_jwt::JwtLayer::builder()
        .key(
            VerificationKey::hmac(SECRET, Algorithm::HS256)
                .unwrap()
                .with_kid("k1"),
        )
        .build()
        .unwrap();
    let svc = service(&layer);
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let ok = sign(
        h.clone(),
        &claims(),
        &EncodingKey::from_secret(SECRET).unwrap(),
    );
    send(&svc, record("t", Some(&ok), None))
        .await
        .assert_ok("sub=user-1");
    h.kid = Some("k2".into());
    let unknown = sign(h, &claims(), &EncodingKey::from_secret(SECRET).unwrap());
    let a = send(&svc, record("t", Some(&unknown), None)).await;
    assert_eq!(a.reason(), "unknown_key");
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

/// Keys `k1` (with a kid) and one HMAC key without a kid; a token with the
/// unknown kid `k2`, signed with the kid-less key's secret.
fn kid_less_and_k1(tries_kidless: bool) -> kafka_tower_jwt::JwtLayer {
    kafka_tower_jwt::JwtLayer::builder()
        .key(
            VerificationKey::hmac(b"k1-secret-k1-secret-k1-secret-32", Algorithm::HS256)
                .unwrap()
                .with_kid("k1"),
        )
        .key(VerificationKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .unknown_kid_tries_kidless_keys(tries_kidless)
        .build()
        .unwrap()
}

fn token_with_kid(kid: Option<&str>) -> String {
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = kid.map(str::to_owned);
    sign(h, &claims(), &EncodingKey::from_secret(SECRET).unwrap())
}

#[tokio::test]
async fn a_kid_no_key_has_is_refused_even_if_a_kid_less_key_would_verify_it() {
    let layer = kid_less_and_k1(false);
    let svc = service(&layer);
    let a = send(&svc, record("t", Some(&token_with_kid(Some("k2"))), None)).await;
    assert_eq!(a.reason(), "unknown_key");
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Without a kid, the token is tried against every key and verifies.
    send(&svc, record("t", Some(&token_with_kid(None)), None))
        .await
        .assert_ok("sub=user-1");
}

#[tokio::test]
async fn opting_in_lets_an_unknown_kid_try_the_kid_less_keys() {
    let layer = kid_less_and_k1(true);
    let svc = service(&layer);
    send(&svc, record("t", Some(&token_with_kid(Some("k2"))), None))
        .await
        .assert_ok("sub=user-1");
    // The signature is still checked: a token signed with another secret
    // is refused.
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k2".into());
    let forged = sign(
        h,
        &claims(),
        &EncodingKey::from_secret(b"another-secret-another-secret-32").unwrap(),
    );
    assert_eq!(
        send(&svc, record("t", Some(&forged), None)).await.reason(),
        "bad_signature"
    );
}

#[tokio::test]
async fn insufficient_scope_is_403() {
    let layer = hs_layer()
        .topic("orders", TopicPolicy::new().require_scope("orders.w"))
        .topic("admin", TopicPolicy::new().require_scope("admin"))
        .build()
        .unwrap();
    let svc = service(&layer);
    let token = hs256(&claims());
    send(&svc, record("orders", Some(&token), None))
        .await
        .assert_ok("sub=user-1");
    let a = send(&svc, record("admin", Some(&token), None)).await;
    assert_eq!(a.reason(), "insufficient_scope");
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // The same rule holds on an HTTP route named like the topic.
    assert_eq!(
        send(&svc, http_request("/admin/users", Some(&token)))
            .await
            .reason(),
        "insufficient_scope"
    );
}

#[tokio::test]
async fn required_claims_and_claim_names() {
    let layer = hs_layer()
        .require_claim("tenant")
        .claim_names(ClaimNames::new().client_id(["appid"]).service_id(["svc"]))
        .build()
        .unwrap();
    let svc = service(&layer);
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&claims())), None))
            .await
            .reason(),
        "malformed"
    );
    let mut c = claims();
    c["tenant"] = json!("acme");
    c["appid"] = json!("mobile");
    c["svc"] = json!("checkout");
    let inner = service_fn(|req: Request<RecordBody>| async move {
        let c = req.extensions().get::<VerifiedClaims>().unwrap();
        Ok::<_, Infallible>(Response::new(format!(
            "{:?}/{:?}",
            c.client_id(),
            c.service_id()
        )))
    });
    let res = layer
        .layer(inner)
        .oneshot(record("t", Some(&hs256(&c)), None))
        .await
        .unwrap();
    assert_eq!(
        res.into_body().into_inner().unwrap(),
        "Some(\"mobile\")/Some(\"checkout\")"
    );
}
