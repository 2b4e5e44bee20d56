//! Cold verification per algorithm (cache disabled) and the cache-hit path
//! a token takes on every record after the first.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use jsonwebtoken::{EncodingKey, Header};
use kafka_tower::{RecordBody, RecordMeta, TimestampType};
use kafka_tower_jwt::{Algorithm, JwtLayer, VerificationKey};
use tower::{service_fn, Layer, Service};

const SECRET: &[u8] = b"bench-shared-secret-0123456789abcdef";

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({"sub": "user-1", "iss": "https://idp.test", "exp": now + 3600,
        "client_id": "web", "scope": "orders.r orders.w"})
}

fn request(token: &str) -> Request<RecordBody> {
    let mut req = Request::post("/orders")
        .body(RecordBody::default())
        .unwrap();
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    req.extensions_mut()
        .insert(RecordMeta::new("orders", 0, 1).with_timestamp(Some(1), TimestampType::CreateTime));
    req
}

fn bench(c: &mut Criterion) {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");
    let read = |f: &str| std::fs::read(format!("{keys}{f}")).unwrap();
    let cases: Vec<(&str, VerificationKey, jsonwebtoken::Algorithm, EncodingKey)> = vec![
        (
            "HS256",
            VerificationKey::hmac(SECRET, Algorithm::HS256).unwrap(),
            jsonwebtoken::Algorithm::HS256,
            EncodingKey::from_secret(SECRET).unwrap(),
        ),
        (
            "RS256",
            VerificationKey::rsa_pem(read("rsa_public.pem"), Algorithm::RS256).unwrap(),
            jsonwebtoken::Algorithm::RS256,
            EncodingKey::from_rsa_pem(&read("rsa_private.pem")).unwrap(),
        ),
        (
            "PS256",
            VerificationKey::rsa_pem(read("rsa_public.pem"), Algorithm::PS256).unwrap(),
            jsonwebtoken::Algorithm::PS256,
            EncodingKey::from_rsa_pem(&read("rsa_private.pem")).unwrap(),
        ),
        (
            "ES256",
            VerificationKey::ec_pem(read("ec_public.pem"), Algorithm::ES256).unwrap(),
            jsonwebtoken::Algorithm::ES256,
            EncodingKey::from_ec_pem(&read("ec_private.pem")).unwrap(),
        ),
        (
            "EdDSA",
            VerificationKey::ed_pem(read("ed_public.pem")).unwrap(),
            jsonwebtoken::Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&read("ed_private.pem")).unwrap(),
        ),
    ];
    let inner = service_fn(|_req: Request<RecordBody>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let mut group = c.benchmark_group("jwt");
    for (name, vk, alg, ek) in cases {
        let token = jsonwebtoken::encode(&Header::new(alg), &claims(), &ek).unwrap();
        for (label, capacity) in [("cold_verify", 0), ("cache_hit", 1000)] {
            if label == "cache_hit" && name != "RS256" {
                continue; // the hit path does not depend on the algorithm
            }
            let layer = JwtLayer::builder()
                .key(vk.clone())
                .cache_capacity(capacity)
                .build()
                .unwrap();
            let mut svc = layer.layer(inner);
            let template = request(&token);
            // Warm the cache (and check the token passes).
            let res = futures_lite(svc.call(clone_req(&template)));
            assert_eq!(res.status(), 200);
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter_batched(
                    || clone_req(&template),
                    |req| futures_lite(svc.call(req)),
                    criterion::BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn clone_req(r: &Request<RecordBody>) -> Request<RecordBody> {
    let mut req = Request::post(r.uri().clone())
        .body(RecordBody::default())
        .unwrap();
    *req.headers_mut() = r.headers().clone();
    *req.extensions_mut() = r.extensions().clone();
    req
}

/// The inner service's future is ready at once; poll it without a runtime.
fn futures_lite<F: std::future::Future<Output = Result<T, Infallible>>, T>(f: F) -> T {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(Ok(t)) => t,
        _ => unreachable!("ready futures only"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
