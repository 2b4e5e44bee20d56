//! The security items of the issue, each asserted by its reason code.

mod support;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{EncodingKey, Header};
use kafka_tower_jwt::{Algorithm, ExpiryMode, JwtLayer, TopicPolicy, VerificationKey};
use serde_json::json;
use support::*;

fn rsa_layer() -> JwtLayer {
    JwtLayer::builder()
        .key(VerificationKey::rsa_pem(RSA_PUBLIC, Algorithm::RS256).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn alg_none_is_refused() {
    let svc = service(&rsa_layer());
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        for sig in ["", "AAAA"] {
            let token = format!("{header}.{payload}.{sig}");
            assert_eq!(
                send(&svc, record("t", Some(&token), None)).await.reason(),
                "unsupported_algorithm",
                "alg {alg} sig {sig:?}"
            );
        }
    }
}

#[tokio::test]
async fn algorithm_confusion_hs256_with_the_rsa_public_key_is_refused() {
    let svc = service(&rsa_layer());
    // The classic attack: HMAC-sign with the RSA public key PEM as secret.
    let forged = sign(
        Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
    );
    assert_eq!(
        send(&svc, record("t", Some(&forged), None)).await.reason(),
        "unsupported_algorithm"
    );
    // The genuine RS256 token passes, so the layer does verify RSA.
    let genuine = sign(
        Header::new(jsonwebtoken::Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    );
    send(&svc, record("t", Some(&genuine), None))
        .await
        .assert_ok("sub=user-1");
    // PS256 with the same key is not configured either.
    let ps = sign(
        Header::new(jsonwebtoken::Algorithm::PS256),
        &claims(),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    );
    assert_eq!(
        send(&svc, record("t", Some(&ps), None)).await.reason(),
        "unsupported_algorithm"
    );
}

#[tokio::test]
async fn an_embedded_jwk_header_is_not_trusted() {
    let svc = service(&rsa_layer());
    // The attacker signs with their own key and embeds its public half.
    let attacker = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let mut h = Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.jwk = Some(
        serde_json::from_value(
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        )
        .unwrap(),
    );
    let token = sign(h, &claims(), &attacker);
    assert_eq!(
        send(&svc, record("t", Some(&token), None)).await.reason(),
        "unsupported_algorithm"
    );
}

/// A port nobody but this test listens on; any connection is recorded.
fn trap() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
    (l, url)
}

fn assert_never_contacted(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("the layer connected to an unconfigured URL (from {peer})"),
        Err(e) => panic!("accept failed: {e}"),
    }
}

#[tokio::test]
async fn jku_x5u_and_kid_never_fetch_unconfigured_urls() {
    let (l, url) = trap();
    let layer = JwtLayer::builder()
        .key(
            VerificationKey::hmac(SECRET, Algorithm::HS256)
                .unwrap()
                .with_kid("k1"),
        )
        .build()
        .unwrap();
    let svc = service(&layer);
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(url.clone());
    h.jku = Some(url.clone());
    h.x5u = Some(url.clone());
    let token = sign(h, &claims(), &EncodingKey::from_secret(SECRET).unwrap());
    assert_eq!(
        send(&svc, record("t", Some(&token), None)).await.reason(),
        "unknown_key"
    );
    assert_never_contacted(&l);
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_parsing() {
    let layer = JwtLayer::builder()
        .key(VerificationKey::hmac(SECRET, Algorithm::HS256).unwrap())
        .max_token_len(1024)
        .build()
        .unwrap();
    let svc = service(&layer);
    // Garbage that would be `malformed` if it were parsed.
    let garbage = "!".repeat(2000);
    assert_eq!(
        send(&svc, record("t", Some(&garbage), None)).await.reason(),
        "oversized"
    );
    assert_eq!(
        send(&svc, record("t", Some(&garbage[..500]), None))
            .await
            .reason(),
        "malformed"
    );
    // A real, valid token over the limit is refused too.
    let mut c = claims();
    c["padding"] = json!("x".repeat(1500));
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "oversized"
    );
    // The default limit is 8 KiB.
    let svc = service(&hs_layer().build().unwrap());
    let mut c = claims();
    c["padding"] = json!("x".repeat(5000)); // ~6.8 KiB once base64url-encoded
    send(&svc, record("t", Some(&hs256(&c)), None))
        .await
        .assert_ok("sub=user-1");
    c["padding"] = json!("x".repeat(9000));
    assert_eq!(
        send(&svc, record("t", Some(&hs256(&c)), None))
            .await
            .reason(),
        "oversized"
    );
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tokens_never_appear_in_logs_only_fingerprints() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let good = hs256(&claims());
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    let expired = hs256(&c);
    let forged = sign(
        Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"wrong-secret-wrong-secret").unwrap(),
    );
    let tokens = [
        good.clone(),
        expired.clone(),
        forged.clone(),
        "garbage.not.jwt".to_owned(),
    ];

    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = hs_layer()
                .topic(
                    "audit",
                    TopicPolicy::new()
                        .expiry(ExpiryMode::Skip)
                        .require_scope("audit.r"),
                )
                .build()
                .unwrap();
            let svc = service(&layer);
            send(&svc, record("t", Some(&good), None))
                .await
                .assert_ok("sub=user-1");
            assert_eq!(
                send(&svc, record("t", Some(&expired), None)).await.reason(),
                "expired"
            );
            assert_eq!(
                send(&svc, record("t", Some(&forged), None)).await.reason(),
                "bad_signature"
            );
            assert_eq!(
                send(&svc, record("t", Some("garbage.not.jwt"), None))
                    .await
                    .reason(),
                "malformed"
            );
            assert_eq!(
                send(&svc, record("audit", Some(&good), None))
                    .await
                    .reason(),
                "insufficient_scope"
            );
        });
    });

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("request refused"),
        "refusals are logged: {logs}"
    );
    assert!(
        logs.contains("ExpiryMode::Skip"),
        "skip is logged at build: {logs}"
    );
    for t in &tokens {
        assert!(!logs.contains(t.as_str()), "a token leaked into the logs");
        // Nor its signature or payload alone.
        for part in t.split('.').filter(|p| p.len() > 12) {
            assert!(!logs.contains(part), "part of a token leaked into the logs");
        }
    }
    // The expired token is identified by its fingerprint.
    use sha2::Digest;
    let fp: String = sha2::Sha256::digest(expired.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(logs.contains(&fp), "fingerprint {fp} missing from: {logs}");
}
