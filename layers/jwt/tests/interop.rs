//! Tokens minted by an independent implementation (Python PyJWT) and fixed
//! vectors from RFC 7515 and RFC 8037.
//!
//! Needs `python3` with PyJWT and cryptography
//! (`pip install -r layers/jwt/requirements-test.txt`); without them the
//! test fails, it does not skip.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use kafka_tower_jwt::{Algorithm, ExpiryMode, Jwks, JwtLayer, TopicPolicy, VerificationKey};
use serde_json::{json, Value};
use support::*;

fn pyjwt_mint(claims: &Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/mint.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 is required for the PyJWT interop test and could not be started: {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({ "claims": claims }).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "minting with PyJWT failed — install the test requirements with \
         `pip install -r layers/jwt/requirements-test.txt`:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn tokens_minted_by_pyjwt_verify_with_pem_keys() {
    let mut c = claims();
    c["aud"] = json!("orders-service");
    let minted = pyjwt_mint(&c);
    let pem = |alg: &str| minted[alg]["public_pem"].as_str().unwrap().to_owned();
    // PyJWT names each key's kid in its tokens; a kid must match a
    // configured key (the HS256 token names none).
    let kid = |alg: &str| minted[alg]["kid"].as_str().unwrap().to_owned();
    let layer = JwtLayer::builder()
        .key(
            VerificationKey::rsa_pem(pem("RS256"), Algorithm::RS256)
                .unwrap()
                .also_allow(Algorithm::PS256)
                .unwrap()
                .with_kid(kid("RS256")),
        )
        .key(
            VerificationKey::ec_pem(pem("ES256"), Algorithm::ES256)
                .unwrap()
                .with_kid(kid("ES256")),
        )
        .key(
            VerificationKey::ed_pem(pem("EdDSA"))
                .unwrap()
                .with_kid(kid("EdDSA")),
        )
        .key(
            VerificationKey::hmac(
                minted["HS256"]["secret"].as_str().unwrap(),
                Algorithm::HS256,
            )
            .unwrap(),
        )
        .issuer(ISSUER)
        .audience("orders-service")
        .cache_capacity(0)
        .build()
        .unwrap();
    let svc = service(&layer);
    for alg in ["RS256", "PS256", "ES256", "EdDSA", "HS256"] {
        let token = minted[alg]["token"].as_str().unwrap();
        let a = send(&svc, record("orders", Some(token), None)).await;
        assert_eq!(
            a.status,
            http::StatusCode::OK,
            "PyJWT {alg} token refused: {}",
            a.body
        );
        assert_eq!(a.body, "sub=user-1");
        // And one flipped signature byte breaks it.
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut sig: Vec<u8> = b64_decode(sig);
        sig[5] ^= 0x01;
        let tampered = format!("{head}.{}", b64(&sig));
        assert_eq!(
            send(&svc, record("orders", Some(&tampered), None))
                .await
                .reason(),
            "bad_signature",
            "{alg}"
        );
    }
}

#[tokio::test]
async fn tokens_minted_by_pyjwt_verify_with_its_jwks_document() {
    let minted = pyjwt_mint(&claims());
    let doc = serde_json::to_vec(&minted["jwks"]).unwrap();
    let jwks = Jwks::from_json(&doc).unwrap();
    assert_eq!(jwks.keys().len(), 3, "RSA, EC and OKP keys");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, &doc).unwrap();
    let layer = JwtLayer::builder().jwks_file(&file).build().unwrap();
    let svc = service(&layer);
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = minted[alg]["token"].as_str().unwrap();
        send(&svc, record("orders", Some(token), None))
            .await
            .assert_ok("sub=user-1");
    }
    // The JWKS RSA key declares alg RS256: a PS256 token is refused.
    let ps = minted["PS256"]["token"].as_str().unwrap();
    assert_eq!(
        send(&svc, record("orders", Some(ps), None)).await.reason(),
        "unsupported_algorithm"
    );
    // An HS256 token names no kid, and a JWKS never supplies HMAC keys.
    let hs = minted["HS256"]["token"].as_str().unwrap();
    assert_eq!(
        send(&svc, record("orders", Some(hs), None)).await.reason(),
        "unsupported_algorithm"
    );
}

#[test]
fn a_missing_jwks_file_is_a_startup_error_naming_it() {
    let err = JwtLayer::builder()
        .jwks_file("/nonexistent/keys.json")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/keys.json"), "{err}");
}

/// RFC 7515 Appendix A.1: HS256 with the JWK `k` below.
const RFC7515_A1: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const RFC7515_A1_K: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";

#[tokio::test]
async fn rfc7515_a1_hs256_vector() {
    let key = VerificationKey::hmac(b64_decode(RFC7515_A1_K), Algorithm::HS256).unwrap();
    let layer = JwtLayer::builder()
        .key(key)
        .topic("archive", TopicPolicy::new().expiry(ExpiryMode::Skip))
        .build()
        .unwrap();
    let svc = service(&layer);
    // exp is 2011: the signature verifies, then expiry refuses it ...
    assert_eq!(
        send(&svc, record("live", Some(RFC7515_A1), None))
            .await
            .reason(),
        "expired"
    );
    // ... and a topic that skips expiry accepts it (no `sub`).
    send(&svc, record("archive", Some(RFC7515_A1), None))
        .await
        .assert_ok("sub=-");
    // One changed signature character: refused.
    let tampered = RFC7515_A1.replace("dBjft", "dBjfu");
    assert_eq!(
        send(&svc, record("archive", Some(&tampered), None))
            .await
            .reason(),
        "bad_signature"
    );
}

/// RFC 8037 Appendix A.4: Ed25519 over the payload "Example of Ed25519
/// signing" with the public key `x` below (A.2).
const RFC8037_A4: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

#[tokio::test]
async fn rfc8037_a4_ed25519_vector() {
    let jwks = Jwks::from_json(
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let svc = service(&JwtLayer::builder().jwks(jwks).build().unwrap());
    // The signature verifies; the payload is text, not JWT claims, so the
    // token is refused as malformed — after, not instead of, the signature
    // check, as the tampered copy shows.
    assert_eq!(
        send(&svc, record("t", Some(RFC8037_A4), None))
            .await
            .reason(),
        "malformed"
    );
    let tampered = RFC8037_A4.replace(".hgyY0", ".hgyY1");
    assert_eq!(
        send(&svc, record("t", Some(&tampered), None))
            .await
            .reason(),
        "bad_signature"
    );
    // The raw 32-byte key works the same.
    let raw = VerificationKey::ed_der(b64_decode(RFC8037_X)).unwrap();
    let svc = service(&JwtLayer::builder().key(raw).build().unwrap());
    assert_eq!(
        send(&svc, record("t", Some(RFC8037_A4), None))
            .await
            .reason(),
        "malformed"
    );
}

fn b64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}
