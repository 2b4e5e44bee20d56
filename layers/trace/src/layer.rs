//! [`TraceLayer`], its service [`Trace`] and [`ResponseFuture`]: one span
//! per consumed record (or HTTP request).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use http_body::Body;
use kafka_tower::context::{ContextConfig, PropagatedContext, CORRELATION_ID};
use kafka_tower::{RecordMeta, Refusal};
use opentelemetry::trace::TraceContextExt as _;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::propagation::Propagation;

/// How a consumer span relates to the producer's context found in the
/// record headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParentMode {
    /// The producer's span is the parent: one trace end to end.
    #[default]
    Parent,
    /// The consumer span starts a new trace (or continues the current
    /// span) and *links* to the producer's span, as the messaging
    /// conventions suggest for batch or long-delayed processing.
    Link,
}

/// Applies [`Trace`] to a service. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TraceLayer {
    propagation: Propagation,
    parent: ParentMode,
    record_key: bool,
}

impl TraceLayer {
    /// W3C trace context and baggage, parent mode, keys recorded.
    pub fn new() -> Self {
        TraceLayer {
            record_key: true,
            ..Default::default()
        }
    }

    /// The propagator reading the producer's context (default W3C).
    pub fn propagation(mut self, p: Propagation) -> Self {
        self.propagation = p;
        self
    }

    /// Parent or link to the producer's context (default parent).
    pub fn parent_mode(mut self, mode: ParentMode) -> Self {
        self.parent = mode;
        self
    }

    /// Whether a UTF-8 record key is recorded as
    /// `messaging.kafka.message.key` (default yes; turn off for keys that
    /// are personal data).
    pub fn record_key(mut self, yes: bool) -> Self {
        self.record_key = yes;
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            layer: self.clone(),
        }
    }
}

/// Starts a span per request — `process <topic>` (kind CONSUMER) for a
/// record, `<METHOD> /<segment>` (kind SERVER) for an HTTP request —
/// parented or linked to the context in the headers, with the correlation
/// and traceability ids as fields; the inner service runs inside it, with a
/// [`PropagatedContext`] whose trace context is this span's.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    layer: TraceLayer,
}

impl<S> Trace<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        TraceLayer::new().layer(inner)
    }
    kafka_tower::define_inner_service_accessors!();
}

/// The request's [`PropagatedContext`]: its extension, else the task-local
/// one (a request made inside a handler), else read from its headers; a
/// correlation id is generated when missing and set on the request.
pub(crate) fn ensure_context<B>(req: &mut Request<B>) -> PropagatedContext {
    let mut ctx = req
        .extensions()
        .get::<PropagatedContext>()
        .cloned()
        .or_else(PropagatedContext::current)
        .unwrap_or_else(|| PropagatedContext::from_headers(req.headers(), &ContextConfig::new()));
    let id = ctx.ensure_correlation_id();
    if !req.headers().contains_key(CORRELATION_ID) {
        if let Ok(v) = HeaderValue::from_str(id) {
            req.headers_mut().insert(CORRELATION_ID, v);
        }
    }
    ctx
}

impl<S, B, ResBody> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: std::fmt::Display,
    B: Body,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut ctx = ensure_context(&mut req);
        let correlation_id = ctx.correlation_id().unwrap_or_default();
        let body_size = req.body().size_hint().exact();
        let span = match req.extensions().get::<RecordMeta>() {
            Some(meta) => {
                let span = tracing::info_span!(
                    target: "kafka_tower_trace",
                    "process",
                    otel.name = %format_args!("process {}", meta.topic()),
                    otel.kind = "consumer",
                    otel.status_code = Empty,
                    messaging.system = "kafka",
                    messaging.operation.type = "process",
                    messaging.operation.name = "process",
                    messaging.destination.name = meta.topic(),
                    messaging.destination.partition.id = %meta.partition(),
                    messaging.kafka.offset = meta.offset(),
                    messaging.kafka.message.key = Empty,
                    messaging.consumer.group.name = meta.group(),
                    messaging.message.body.size = Empty,
                    correlation_id = correlation_id,
                    traceability_id = ctx.traceability_id(),
                    error.type = Empty,
                );
                if let Some(size) = body_size {
                    span.record("messaging.message.body.size", size as i64);
                }
                if self.layer.record_key {
                    if let Some(key) = meta.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        span.record("messaging.kafka.message.key", key);
                    }
                }
                span
            }
            None => tracing::info_span!(
                target: "kafka_tower_trace",
                "request",
                otel.name = %format_args!("{} /{}", req.method(), kafka_tower::mapping::topic_of(&req)),
                otel.kind = "server",
                otel.status_code = Empty,
                http.request.method = req.method().as_str(),
                url.path = req.uri().path(),
                http.response.status_code = Empty,
                correlation_id = correlation_id,
                traceability_id = ctx.traceability_id(),
                error.type = Empty,
            ),
        };
        if !span.is_disabled() {
            let remote = self.layer.propagation.extract(req.headers());
            let remote_span = remote.span().span_context().clone();
            if remote_span.is_valid() {
                match self.layer.parent {
                    ParentMode::Parent => {
                        let _ = span.set_parent(remote);
                    }
                    ParentMode::Link => span.add_link(remote_span),
                }
            }
            // Downstream hops (InjectContextLayer, TraceProducerLayer) see
            // this span as the parent.
            let mut headers = http::HeaderMap::new();
            self.layer.propagation.inject(&span.context(), &mut headers);
            for (name, value) in headers.iter() {
                if let Ok(v) = value.to_str() {
                    let _ = ctx.insert(name.clone(), v);
                }
            }
        }
        req.extensions_mut().insert(ctx.clone());
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner: ctx.scope(fut).instrument(span),
        }
    }
}

pin_project! {
    /// The response future of [`Trace`]: the inner future, instrumented
    /// with the span and scoped with the propagated context.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<TaskLocalFuture<PropagatedContext, F>>,
    }
}

/// Records the outcome on `span`: `error.type` and an error status for
/// anything but `2xx`.
pub(crate) fn record_outcome<B, E: std::fmt::Display>(span: &Span, res: &Result<Response<B>, E>) {
    match res {
        Ok(r) => {
            span.record("http.response.status_code", r.status().as_u16());
            if !r.status().is_success() {
                span.record("otel.status_code", "ERROR");
                match r.extensions().get::<Refusal>() {
                    Some(f) => span.record(
                        "error.type",
                        tracing::field::display(format_args!("{}.{}", f.layer(), f.reason())),
                    ),
                    None => span.record("error.type", r.status().as_str()),
                };
            }
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", "service_error");
            tracing::debug!(parent: span, error = %e, "service failed");
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: std::fmt::Display,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let res = std::task::ready!(inner.as_mut().poll(cx));
        record_outcome(inner.as_ref().get_ref().span(), &res);
        Poll::Ready(res)
    }
}
