//! JsonSchemaLayer on an axum route — the same layer that guards a
//! kafka-tower consumer — with a schema file whose `$ref`s load sibling
//! files. Run with `cargo run -p kafka-tower-schema --example axum_route`.

use axum::routing::post;
use axum::Router;
use http::Request;
use http_body_util::BodyExt;
use kafka_tower_schema::JsonSchemaLayer;
use tower::ServiceExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schemas = JsonSchemaLayer::builder()
        .schema_file(
            "orders",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemas/orders.json"),
        )
        .build()?;
    let app = Router::new()
        .route(
            "/orders",
            post(|body: String| async move { format!("stored {} bytes", body.len()) }),
        )
        .layer(schemas);

    for body in [
        r#"{"id":"o-1","customer":"alice","total":3,"shipTo":{"street":"1 Main St","city":"Springfield","country":"US"}}"#,
        r#"{"id":"o-2","customer":"","total":-3,"shipTo":{"city":"Springfield","country":"usa"}}"#,
        "not json",
    ] {
        let req = Request::post("/orders").body(axum::body::Body::from(body))?;
        let res = app.clone().oneshot(req).await?;
        let status = res.status();
        let text = res.into_body().collect().await?.to_bytes();
        println!("{status}\n  {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}
