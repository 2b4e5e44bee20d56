//! The same layer on an axum route: `Router::layer` accepts it, handlers
//! extract the claims, refusals come back as JSON with the Refusal.

mod support;

use axum::body::Body;
use axum::routing::post;
use axum::{Extension, Router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kafka_tower::Refusal;
use kafka_tower_jwt::{TopicPolicy, VerifiedClaims};
use support::*;
use tower::ServiceExt;

fn app() -> Router {
    let jwt = hs_layer()
        .topic("orders", TopicPolicy::new().require_scope("orders.w"))
        .build()
        .unwrap();
    Router::new()
        .route(
            "/orders",
            post(|Extension(c): Extension<VerifiedClaims>| async move {
                format!("created by {}", c.subject().unwrap_or("?"))
            }),
        )
        .layer(jwt)
}

#[tokio::test]
async fn axum_route_behind_the_layer() {
    let token = hs256(&claims());
    let req = Request::post("/orders")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let res = app().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"created by user-1");

    let res = app()
        .oneshot(Request::post("/orders").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        res.extensions().get::<Refusal>().unwrap().reason(),
        "missing"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (json["layer"].as_str(), json["reason"].as_str()),
        (Some("jwt"), Some("missing"))
    );

    let mut c = claims();
    c["scope"] = serde_json::json!("orders.r");
    let req = Request::post("/orders")
        .header("authorization", format!("Bearer {}", hs256(&c)))
        .body(Body::empty())
        .unwrap();
    let res = app().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.extensions().get::<Refusal>().unwrap().reason(),
        "insufficient_scope"
    );
}
