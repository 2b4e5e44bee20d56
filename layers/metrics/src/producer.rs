//! [`ProducerMetricsLayer`]: sends, acknowledgements and errors of a
//! producer service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus::{Histogram, IntCounter};
use tower_layer::Layer;
use tower_service::Service;

use crate::registry::Metrics;
use kafka_tower::mapping::topic_of;

pub(crate) struct ProducerHandles {
    pub(crate) sends: IntCounter,
    pub(crate) acks: IntCounter,
    pub(crate) errors: IntCounter,
    pub(crate) duration: Histogram,
}

/// Applies [`ProducerMetrics`]; made by [`Metrics::producer_layer`].
///
/// Place it around kafka-tower's `Producer` (or any service taking
/// `POST /<topic>` and answering `2xx` once the record is stored).
#[derive(Debug, Clone)]
pub struct ProducerMetricsLayer {
    pub(crate) metrics: Metrics,
}

impl ProducerMetricsLayer {
    /// The layer counting a producer's sends into `metrics` (also
    /// [`Metrics::producer_layer`]).
    pub fn new(metrics: impl Into<Metrics>) -> Self {
        ProducerMetricsLayer {
            metrics: metrics.into(),
        }
    }
}

impl<S> Layer<S> for ProducerMetricsLayer {
    type Service = ProducerMetrics<S>;
    fn layer(&self, inner: S) -> ProducerMetrics<S> {
        ProducerMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Counts each send by topic (the request path), then an acknowledgement
/// (a `2xx`) or an error (any other status, or an `Err`), and times it.
#[derive(Debug, Clone)]
pub struct ProducerMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> ProducerMetrics<S> {
    /// Wraps `inner`, counting into `metrics` (a `Metrics` or a
    /// `&Metrics`).
    pub fn new(inner: S, metrics: impl Into<Metrics>) -> Self {
        ProducerMetrics {
            inner,
            metrics: metrics.into(),
        }
    }
    kafka_tower::define_inner_service_accessors!();
}

impl<S, B, ResBody> Service<Request<B>> for ProducerMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ProducerFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let handles = self.metrics.inner.producer_topics.get(topic_of(&req));
        handles.sends.inc();
        ProducerFuture {
            inner: self.inner.call(req),
            handles: Some((handles, Instant::now())),
        }
    }
}

pin_project! {
    /// The response future of [`ProducerMetrics`].
    pub struct ProducerFuture<F> {
        #[pin]
        inner: F,
        handles: Option<(Arc<ProducerHandles>, Instant)>,
    }
}

impl<F, ResBody, E> Future for ProducerFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        if let Some((h, start)) = this.handles.take() {
            h.duration.observe(start.elapsed().as_secs_f64());
            match &res {
                Ok(r) if r.status().is_success() => h.acks.inc(),
                _ => h.errors.inc(),
            }
        }
        Poll::Ready(res)
    }
}
