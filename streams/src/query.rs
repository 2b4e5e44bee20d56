//! The query API over HTTP: an axum router answering from the local stores
//! (feature `axum`).
//!
//! `GET /stores/{store}/{key}` answers
//!
//! | case | response |
//! |---|---|
//! | this instance owns the key's partition, the key has a value | `200`, the stored value (JSON) |
//! | this instance owns the partition, no value | `404` |
//! | another instance owns it (per `<application>-hosts`) | `307` with `Location: http://<owner>/stores/{store}/{key}` and body `{"partition":P,"owner":"host:port"}` |
//! | nobody is known to own it (rebalance or restore in progress) | `503` with `{"partition":P,"owner":null}` and `Retry-After: 1` |
//! | unknown store | `404` |
//!
//! ```no_run
//! # async fn run(streams: kafka_tower_streams::Streams) -> std::io::Result<()> {
//! let app = kafka_tower_streams::query::router(streams);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::{Lookup, Streams};

/// The router of the query API; see the [module docs](self).
pub fn router(streams: Streams) -> Router {
    Router::new()
        .route("/stores/{store}/{key}", get(lookup))
        .with_state(streams)
}

async fn lookup(
    State(streams): State<Streams>,
    Path((store, key)): Path<(String, String)>,
) -> Response {
    match streams.get(&store, key.as_bytes()) {
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
        Ok(Lookup::Found(v)) => ([(header::CONTENT_TYPE, "application/json")], v).into_response(),
        Ok(Lookup::Absent) => (
            StatusCode::NOT_FOUND,
            format!("no value for {key} in {store}"),
        )
            .into_response(),
        Ok(Lookup::Elsewhere { partition, owner }) => {
            let mine = owner.is_some() && owner.as_deref() == streams.advertised_host();
            let body = serde_json::json!({ "partition": partition, "owner": owner }).to_string();
            match owner {
                Some(host) if !mine => {
                    let location = format!("http://{host}/stores/{store}/{key}");
                    let mut res = (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                        .into_response();
                    if let Ok(v) = HeaderValue::from_str(&location) {
                        res.headers_mut().insert(header::LOCATION, v);
                    }
                    res
                }
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::RETRY_AFTER, "1"),
                    ],
                    body,
                )
                    .into_response(),
            }
        }
    }
}
