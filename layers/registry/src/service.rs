//! [`Registry`], the service that decodes each request's key and value.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use kafka_tower::mapping::topic_of;
use kafka_tower::refusal::RefusalBody;
use kafka_tower::RecordMeta;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::decoded::{DecodedKey, DecodedValue};
use crate::layer::RegistryLayer;
use crate::subject::Part;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Decodes each request's value (and key) with its writer schema from the
/// registry before the inner service sees it; see the [crate docs](crate).
///
/// Requests of topics the layer does not decode pass through unread, and
/// so do tombstones (`DELETE` with an empty body) and null keys. A decoded
/// value is a [`Decoded`](crate::Decoded) request extension, a decoded key
/// a [`DecodedKey`]; a refused record is answered with the refusal and
/// never reaches the inner service.
#[derive(Clone, Debug)]
pub struct Registry<S> {
    inner: S,
    layer: RegistryLayer,
}

impl<S> Registry<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, layer: RegistryLayer) -> Self {
        Registry { inner, layer }
    }

    kafka_tower::define_inner_service_accessors!();
}

pin_project! {
    /// The response future of [`Registry`].
    pub struct ResponseFuture<F, R> {
        #[pin]
        state: State<F, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R> {
        Passing { #[pin] future: F },
        Decoding { future: BoxFuture<R> },
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F, Result<Response<RefusalBody<ResBody>>, E>>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<RefusalBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passing { future } => future
                .poll(cx)
                .map(|r| r.map(|res| res.map(RefusalBody::inner))),
            StateProj::Decoding { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Registry<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ResBody: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<RefusalBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, Result<Self::Response, S::Error>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let topic = topic_of(&req);
        let tombstone = req.method() == Method::DELETE && req.body().is_end_stream();
        let value = !tombstone && self.layer.decodes(topic, Part::Value);
        let key = self.layer.decodes(topic, Part::Key)
            && req
                .extensions()
                .get::<RecordMeta>()
                .is_some_and(|m| m.key().is_some());
        if !value && !key {
            return ResponseFuture {
                state: State::Passing {
                    future: self.inner.call(req),
                },
            };
        }
        // The record's own topic name (a reference count), else a copy of
        // the route's first path segment.
        let topic: std::sync::Arc<str> = match req.extensions().get::<RecordMeta>() {
            Some(meta) => meta.topic_arc().clone(),
            None => topic.into(),
        };
        // The ready service is used after decoding; leave a clone.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let future = async move {
            let refused = |r| Ok(layer.refusal(r).map(RefusalBody::refusal));
            let (mut parts, body) = req.into_parts();
            if key {
                let bytes = parts
                    .extensions
                    .get::<RecordMeta>()
                    .and_then(|m| m.key().cloned())
                    .unwrap_or_default();
                match layer.decode(&topic, Part::Key, &bytes).await {
                    Ok(decoded) => {
                        parts.extensions.insert(DecodedKey(decoded));
                    }
                    Err(r) => return refused(r),
                }
            }
            let body = if value {
                let max = layer.inner.max_body_bytes;
                if body.size_hint().lower() > max as u64 {
                    return refused(layer.too_large(&topic, Part::Value));
                }
                let bytes = match Limited::new(body, max).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) if e.is::<LengthLimitError>() => {
                        return refused(layer.too_large(&topic, Part::Value))
                    }
                    Err(e) => return refused(layer.unreadable(&topic, &e)),
                };
                let decoded = match layer.decode(&topic, Part::Value, &bytes).await {
                    Ok(d) => d,
                    Err(r) => return refused(r),
                };
                let body = if layer.inner.json_body {
                    let json = match &decoded.value {
                        DecodedValue::Json(_) => bytes.slice(crate::wire::HEADER_LEN..),
                        DecodedValue::Avro(_) => match decoded.to_json() {
                            Ok(v) => Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
                            Err(e) => {
                                return refused(layer.unconvertible(&topic, &decoded, &e));
                            }
                        },
                    };
                    parts
                        .headers
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    json
                } else {
                    bytes
                };
                parts.extensions.insert(decoded);
                ReqBody::from(body)
            } else {
                body
            };
            service
                .call(Request::from_parts(parts, body))
                .await
                .map(|res| res.map(RefusalBody::inner))
        };
        ResponseFuture {
            state: State::Decoding {
                future: Box::pin(future),
            },
        }
    }
}
