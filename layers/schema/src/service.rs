//! [`JsonSchema`], the service that validates each request's JSON body.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::JsonSchemaLayer;
use kafka_tower::refusal::RefusalBody;

/// Validates the body of each request against its topic's schema before
/// the inner service sees it; see the [crate docs](crate).
///
/// The body is read (up to the configured limit), validated, and handed on
/// as a fresh `ReqBody` built `From<Bytes>` — both `kafka_tower::RecordBody`
/// and `axum::body::Body` are. Requests of topics without a schema and
/// tombstones (`DELETE` with an empty body) pass through unread.
#[derive(Clone, Debug)]
pub struct JsonSchema<S> {
    inner: S,
    layer: JsonSchemaLayer,
}

impl<S> JsonSchema<S> {
    /// Wraps `inner` with the schemas of `layer`.
    pub fn new(inner: S, layer: JsonSchemaLayer) -> Self {
        JsonSchema { inner, layer }
    }

    /// The layer that wraps services in `JsonSchema`: `layer` itself.
    #[deprecated(note = "the identity: use the `JsonSchemaLayer` directly")]
    pub fn layer(layer: JsonSchemaLayer) -> JsonSchemaLayer {
        layer
    }

    kafka_tower::define_inner_service_accessors!();
}

use kafka_tower::mapping::topic_of;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for JsonSchema<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: Body + From<Bytes>,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<RefusalBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let schemas = &self.layer.inner;
        let topic = topic_of(&req);
        let tombstone = req.method() == Method::DELETE && req.body().is_end_stream();
        if !schemas.has(topic) || tombstone {
            return ResponseFuture::call(self.inner.call(req));
        }
        let topic = topic.to_owned();
        if req
            .body()
            .size_hint()
            .lower()
            .try_into()
            .map_or(true, |n: usize| n > schemas.max_body_bytes)
        {
            return ResponseFuture::refused(schemas.refusal(schemas.too_large(&topic)));
        }
        // The ready service is used after the body is read; leave a clone.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let collect = Limited::new(body, schemas.max_body_bytes).collect();
        ResponseFuture::reading(collect, parts, service, self.layer.clone(), topic)
    }
}
