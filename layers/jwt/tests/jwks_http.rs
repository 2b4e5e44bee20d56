//! JWKS over HTTP (feature `jwks-http`): only configured URLs are fetched,
//! an unknown `kid` triggers a rate-limited refresh, and rotated keys are
//! picked up without a restart.
#![cfg(feature = "jwks-http")]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use kafka_tower_jwt::JwtLayer;
use serde_json::json;
use support::*;

/// A one-route HTTP server on 127.0.0.1 serving `doc`; each request's path
/// is reported on the channel.
fn jwks_server(doc: Arc<Mutex<String>>) -> (String, Fetches) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/.well-known/jwks.json", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let line = String::from_utf8_lossy(&buf)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let body = doc.lock().unwrap().clone();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (url, Fetches(rx))
}

/// The request lines the JWKS server answered, in order.
struct Fetches(tokio::sync::mpsc::UnboundedReceiver<String>);

impl Fetches {
    async fn next(&mut self) -> String {
        let line = tokio::time::timeout(Duration::from_secs(20), self.0.recv())
            .await
            .expect("the JWKS URL was fetched within 20 s")
            .expect("server running");
        assert!(line.starts_with("GET /.well-known/jwks.json"), "{line}");
        line
    }
}

/// Sends `token` until the answer is not "503, keys being refreshed",
/// letting the refresh task run in between.
async fn settled(svc: &Svc, token: &str) -> Answer {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let a = send(svc, record("t", Some(token), None)).await;
            if a.status != http::StatusCode::SERVICE_UNAVAILABLE {
                return a;
            }
            assert_eq!(a.reason(), "unknown_key");
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the refreshed keys were in use within 20 s")
}

fn ed_jwk(kid: &str) -> serde_json::Value {
    // The public half of tests/keys/ed_private.pem, as a JWK.
    let der = pem_body(ED_PUBLIC);
    let x = b64(&der[der.len() - 32..]);
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x, "use": "sig"})
}

fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b).unwrap()
}

fn ed_token(kid: &str, jku: Option<&str>) -> String {
    let mut h = Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(kid.into());
    h.jku = jku.map(Into::into);
    h.x5u = jku.map(Into::into);
    sign(
        h,
        &claims(),
        &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
    )
}

#[tokio::test]
async fn keys_rotate_via_the_configured_url_only() {
    let doc = Arc::new(Mutex::new(json!({"keys": [ed_jwk("old")]}).to_string()));
    let (url, mut fetched) = jwks_server(doc.clone());
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}/evil.json", trap.local_addr().unwrap());

    let layer = JwtLayer::builder()
        .jwks_url(&url)
        .jwks_min_refresh_interval(Duration::ZERO)
        .build()
        .unwrap();
    let svc = service(&layer);
    fetched.next().await; // the initial fetch
                          // The first token naming the fetched keys may race the swap: while a
                          // refresh is pending the answer is 503 (retryable), as for a record.
    let token = ed_token("old", None);
    settled(&svc, &token).await.assert_ok("sub=user-1");

    // The identity provider rotates to a new kid; a token naming it, and
    // carrying jku/x5u pointing elsewhere, triggers a refresh of the
    // configured URL — and is answered 503 so the record is retried.
    *doc.lock().unwrap() = json!({"keys": [ed_jwk("new")]}).to_string();
    let rotated = ed_token("new", Some(&trap_url));
    let a = send(&svc, record("t", Some(&rotated), None)).await;
    assert_eq!(a.reason(), "unknown_key");
    assert_eq!(a.status, http::StatusCode::SERVICE_UNAVAILABLE);
    fetched.next().await;
    settled(&svc, &rotated).await.assert_ok("sub=user-1");
    // The old kid went with the rotation, and the cache forgot its token.
    assert_eq!(
        send(&svc, record("t", Some(&token), None)).await.reason(),
        "unknown_key"
    );

    match trap.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the jku/x5u URL was contacted: {other:?}"),
    }
}

#[tokio::test]
async fn unknown_kid_refreshes_are_rate_limited() {
    let doc = Arc::new(Mutex::new(json!({"keys": [ed_jwk("a")]}).to_string()));
    let (url, mut fetched) = jwks_server(doc);
    let layer = JwtLayer::builder()
        .jwks_url(&url)
        .jwks_min_refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let svc = service(&layer);
    fetched.next().await;
    settled(&svc, &ed_token("a", None))
        .await
        .assert_ok("sub=user-1");
    // Many forged kids within the interval: permanent 401s, no new fetch.
    for i in 0..20 {
        let a = send(
            &svc,
            record("t", Some(&ed_token(&format!("forged-{i}"), None)), None),
        )
        .await;
        assert_eq!(a.reason(), "unknown_key");
        assert_eq!(a.status, http::StatusCode::UNAUTHORIZED);
    }
    assert!(
        fetched.0.try_recv().is_err(),
        "no refresh within the minimum interval"
    );
}

#[test]
fn jwks_urls_need_a_tokio_runtime_and_http_schemes() {
    let err = JwtLayer::builder()
        .jwks_url("http://127.0.0.1:9/k")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
    let err = JwtLayer::builder()
        .jwks_url("file:///etc/passwd")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("not http or https"), "{err}");
}
