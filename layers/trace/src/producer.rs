//! [`TraceProducerLayer`]: a PRODUCER span `send <topic>` around a
//! producer service, its context injected into the outgoing record.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use kafka_tower::{RawHeader, RawHeaders};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::layer::{ensure_context, record_outcome};
use crate::propagation::Propagation;

/// Applies [`TraceProducer`] to a producer service (kafka-tower's
/// `Producer`, or anything taking `POST /<topic>`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TraceProducerLayer {
    propagation: Propagation,
}

impl TraceProducerLayer {
    /// Injects W3C trace context and baggage.
    pub fn new() -> Self {
        Self::default()
    }

    /// The propagator writing the context (default W3C).
    pub fn propagation(mut self, p: Propagation) -> Self {
        self.propagation = p;
        self
    }
}

impl<S> Layer<S> for TraceProducerLayer {
    type Service = TraceProducer<S>;
    fn layer(&self, inner: S) -> TraceProducer<S> {
        TraceProducer {
            inner,
            propagation: self.propagation.clone(),
        }
    }
}

/// Starts a span `send <topic>` (kind PRODUCER) as a child of the current
/// span, writes its context into the request headers (and into the
/// [`RawHeaders`] extension, which wins when the request becomes a record),
/// and records where the broker stored the record (`kafka-partition` /
/// `kafka-offset` response headers).
#[derive(Debug, Clone)]
pub struct TraceProducer<S> {
    inner: S,
    propagation: Propagation,
}

impl<S> TraceProducer<S> {
    /// Wraps `inner` with W3C propagation.
    pub fn new(inner: S) -> Self {
        TraceProducerLayer::new().layer(inner)
    }
    kafka_tower::define_inner_service_accessors!();
}

impl<S, B, ResBody> Service<Request<B>> for TraceProducer<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: std::fmt::Display,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ProducerFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let topic = kafka_tower::mapping::topic_of(&req).to_owned();
        let ctx = ensure_context(&mut req);
        let span = tracing::info_span!(
            target: "kafka_tower_trace",
            "send",
            otel.name = %format_args!("send {topic}"),
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = topic.as_str(),
            messaging.destination.partition.id = Empty,
            messaging.kafka.offset = Empty,
            correlation_id = ctx.correlation_id(),
            traceability_id = ctx.traceability_id(),
            error.type = Empty,
        );
        if !span.is_disabled() {
            let mut injected = http::HeaderMap::new();
            self.propagation.inject(&span.context(), &mut injected);
            for (name, value) in injected.iter() {
                req.headers_mut().insert(name.clone(), value.clone());
            }
            if let Some(raw) = req.extensions_mut().get_mut::<RawHeaders>() {
                let fields = self.propagation.fields();
                let mut kept: RawHeaders = raw
                    .iter()
                    .filter(|h| {
                        !fields
                            .iter()
                            .any(|f| h.key.eq_ignore_ascii_case(f.as_str().as_bytes()))
                    })
                    .cloned()
                    .collect();
                for (name, value) in injected.iter() {
                    kept.push(RawHeader::new(
                        Bytes::copy_from_slice(name.as_str().as_bytes()),
                        Bytes::copy_from_slice(value.as_bytes()),
                    ));
                }
                *raw = kept;
            }
        }
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        ProducerFuture {
            inner: fut.instrument(span),
        }
    }
}

pin_project! {
    /// The response future of [`TraceProducer`].
    pub struct ProducerFuture<F> {
        #[pin]
        inner: Instrumented<F>,
    }
}

impl<F, ResBody, E> Future for ProducerFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: std::fmt::Display,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let res = std::task::ready!(inner.as_mut().poll(cx));
        let span = inner.as_ref().get_ref().span();
        if let Ok(r) = &res {
            let h = r.headers();
            if let Some(p) = h.get("kafka-partition").and_then(|v| v.to_str().ok()) {
                span.record("messaging.destination.partition.id", p);
            }
            if let Some(o) = h
                .get("kafka-offset")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
            {
                span.record("messaging.kafka.offset", o);
            }
        }
        record_outcome(span, &res);
        Poll::Ready(res)
    }
}
