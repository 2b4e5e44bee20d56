//! JwtLayer on an axum route — the same layer that guards a kafka-tower
//! consumer. Run with `cargo run -p kafka-tower-jwt --example axum_route`;
//! it serves one request it makes to itself, prints the outcome and exits.

use std::time::Duration;

use axum::routing::post;
use axum::{Extension, Router};
use kafka_tower_jwt::{
    Algorithm, ExpiryMode, JwtLayer, TopicPolicy, VerificationKey, VerifiedClaims,
};

const SECRET: &[u8] = b"example-shared-secret-0123456789abcdef";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jwt = JwtLayer::builder()
        .key(VerificationKey::hmac(SECRET, Algorithm::HS256)?)
        .issuer("https://idp.example.com")
        // Records of `orders` may wait in the topic: accept a token that was
        // valid when the record was produced, for records up to a day old.
        // HTTP requests to /orders are always judged strictly.
        .topic(
            "orders",
            TopicPolicy::new()
                .expiry(ExpiryMode::RecordTimestamp {
                    max_age: Duration::from_secs(86_400),
                })
                .require_scope("orders.w"),
        )
        .build()?;

    let app = Router::new()
        .route(
            "/orders",
            post(|Extension(caller): Extension<VerifiedClaims>| async move {
                format!(
                    "order accepted from {} (client {}, token {})\n",
                    caller.subject().unwrap_or("?"),
                    caller.client_id().unwrap_or("?"),
                    caller.fingerprint(),
                )
            }),
        )
        .layer(jwt);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({
            "sub": "alice", "client_id": "web-shop", "iss": "https://idp.example.com",
            "exp": now + 600, "scope": "orders.w",
        }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET)?,
    )?;

    for auth in [Some(token.as_str()), None] {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let header = auth
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST /orders HTTP/1.1\r\nhost: {addr}\r\n{header}content-length: 0\r\nconnection: close\r\n\r\n"
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response.lines().next().unwrap_or_default();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        println!("{status}\n  {body}");
    }
    Ok(())
}
