//! Shared helpers for the kafka-tower-jwt tests.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use jsonwebtoken::{EncodingKey, Header};
use kafka_tower::{RecordBody, RecordMeta, Refusal, TimestampType};
use kafka_tower_jwt::{JwtLayer, RefusalBody, VerifiedClaims};
use serde_json::{json, Value};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};

pub const SECRET: &[u8] = b"test-shared-secret-0123456789abcdef";
pub const RSA_PRIVATE: &str = include_str!("../keys/rsa_private.pem");
pub const RSA_PUBLIC: &str = include_str!("../keys/rsa_public.pem");
pub const EC_PRIVATE: &str = include_str!("../keys/ec_private.pem");
pub const EC_PUBLIC: &str = include_str!("../keys/ec_public.pem");
pub const ED_PRIVATE: &str = include_str!("../keys/ed_private.pem");
pub const ED_PUBLIC: &str = include_str!("../keys/ed_public.pem");
pub const ISSUER: &str = "https://idp.test";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Claims valid for an hour, issued by [`ISSUER`].
pub fn claims() -> Value {
    json!({"sub": "user-1", "iss": ISSUER, "exp": now() + 3600, "client_id": "web", "scope": "orders.r orders.w"})
}

pub fn hs256(claims: &Value) -> String {
    sign(
        Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
}

pub fn sign(header: Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the inner service saw: its response carries the verified subject.
pub type Svc = BoxCloneService<Request<RecordBody>, Response<RefusalBody<String>>, Infallible>;

pub fn service(layer: &JwtLayer) -> Svc {
    let inner = service_fn(|req: Request<RecordBody>| async move {
        let who = match req.extensions().get::<VerifiedClaims>() {
            Some(c) => format!("sub={}", c.subject().unwrap_or("-")),
            None if req
                .extensions()
                .get::<kafka_tower_jwt::Anonymous>()
                .is_some() =>
            {
                "anonymous".into()
            }
            None => "unverified".into(),
        };
        Ok::<_, Infallible>(Response::new(who))
    });
    BoxCloneService::new(layer.layer(inner))
}

/// A request as the kafka-tower runtime builds it for a record of `topic`.
pub fn record(topic: &str, token: Option<&str>, timestamp_ms: Option<i64>) -> Request<RecordBody> {
    let mut req = Request::post(format!("/{topic}"))
        .body(RecordBody::from(Bytes::from_static(b"{}")))
        .unwrap();
    if let Some(t) = token {
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    req.extensions_mut().insert(
        RecordMeta::new(topic, 0, 7).with_timestamp(timestamp_ms, TimestampType::CreateTime),
    );
    req
}

/// An HTTP request (no RecordMeta) to `/topic`.
pub fn http_request(path: &str, token: Option<&str>) -> Request<RecordBody> {
    let mut req = Request::get(path).body(RecordBody::default()).unwrap();
    if let Some(t) = token {
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    req
}

pub struct Answer {
    pub status: StatusCode,
    pub refusal: Option<Refusal>,
    pub body: String,
}

impl Answer {
    /// The reason code, panicking with the body when the request passed.
    pub fn reason(&self) -> &str {
        match &self.refusal {
            Some(r) => r.reason(),
            None => panic!("expected a refusal, got {} {}", self.status, self.body),
        }
    }

    pub fn assert_ok(&self, who: &str) {
        assert_eq!(self.status, StatusCode::OK, "refused: {}", self.body);
        assert_eq!(self.body, who);
    }
}

pub async fn send(svc: &Svc, req: Request<RecordBody>) -> Answer {
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let refusal = res.extensions().get::<Refusal>().cloned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        refusal,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// A layer that accepts HS256 tokens of [`SECRET`] from [`ISSUER`].
pub fn hs_layer() -> kafka_tower_jwt::JwtLayerBuilder {
    JwtLayer::builder()
        .key(
            kafka_tower_jwt::VerificationKey::hmac(SECRET, kafka_tower_jwt::Algorithm::HS256)
                .unwrap(),
        )
        .issuer(ISSUER)
}
