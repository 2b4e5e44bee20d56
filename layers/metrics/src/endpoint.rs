//! [`MetricsEndpoint`]: the text exposition format as a `tower::Service`,
//! to mount at `/metrics` in axum, hyper or any tower-based server.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use prometheus::{Encoder, Registry, TextEncoder};
use tower_service::Service;

/// The content type of the text exposition format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers every request with the registry in the Prometheus text
/// exposition format (`200`, [`TEXT_CONTENT_TYPE`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = kafka_tower_metrics::Metrics::builder().service_id("orders").build()?;
/// let app: axum::Router = axum::Router::new().route_service("/metrics", metrics.endpoint());
/// # let _ = app; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    registry: Registry,
}

impl MetricsEndpoint {
    /// An endpoint exposing `registry`.
    pub fn new(registry: Registry) -> Self {
        MetricsEndpoint { registry }
    }
}

/// Encodes `registry` in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::with_capacity(4096);
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("encoding into a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

impl<B> Service<Request<B>> for MetricsEndpoint {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut res = Response::new(render(&self.registry));
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
        ready(Ok(res))
    }
}
