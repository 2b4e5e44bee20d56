//! [`ServiceMetricsLayer`], its service [`ServiceMetrics`] and [`ResponseFuture`]:
//! the service view and the client view.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use kafka_tower::mapping::topic_of;
use kafka_tower::{Caller, RecordMeta};
use pin_project_lite::pin_project;
use prometheus::{Histogram, IntCounter, IntGauge};
use tower_layer::Layer;
use tower_service::Service;

use crate::outcome::Outcome;
use crate::registry::Metrics;

/// The label value of requests without a [`Caller`] client id.
pub const ANONYMOUS: &str = "anonymous";

pub(crate) struct TopicHandles {
    pub(crate) outcomes: [IntCounter; 4],
    pub(crate) duration: Histogram,
    pub(crate) in_flight: IntGauge,
}

pub(crate) struct ClientHandles {
    pub(crate) outcomes: [IntCounter; 4],
}

/// Applies [`ServiceMetrics`]; made by [`Metrics::layer`]. Cloning is an
/// `Arc` clone.
#[derive(Debug, Clone)]
pub struct ServiceMetricsLayer {
    pub(crate) metrics: Metrics,
}

impl ServiceMetricsLayer {
    /// The layer counting into `metrics` (also [`Metrics::layer`]).
    pub fn new(metrics: impl Into<Metrics>) -> Self {
        ServiceMetricsLayer {
            metrics: metrics.into(),
        }
    }
}

impl<S> Layer<S> for ServiceMetricsLayer {
    type Service = ServiceMetrics<S>;
    fn layer(&self, inner: S) -> ServiceMetrics<S> {
        ServiceMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Counts each call by topic and outcome (service view) and by client id
/// and outcome (client view), times it, and tracks calls in flight.
///
/// The topic is [`RecordMeta::topic`] for a record, else the first segment
/// of the URI path; the client id is [`Caller::client_id`] (inserted by an
/// authentication layer placed *outside* this one), else `anonymous`.
#[derive(Debug, Clone)]
pub struct ServiceMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> ServiceMetrics<S> {
    /// Wraps `inner`, counting into `metrics` (a `Metrics` or a
    /// `&Metrics`).
    pub fn new(inner: S, metrics: impl Into<Metrics>) -> Self {
        ServiceMetrics {
            inner,
            metrics: metrics.into(),
        }
    }
    kafka_tower::define_inner_service_accessors!();
}

impl<S, B, ResBody> Service<Request<B>> for ServiceMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let m = &self.metrics.inner;
        let topic = match req.extensions().get::<RecordMeta>() {
            Some(meta) => m.topics.get_shared(meta.topic_arc()),
            None => m.topics.get(topic_of(&req)),
        };
        let client = match req.extensions().get::<Caller>().and_then(Caller::client_id) {
            Some(id) => m.clients.get_shared(id),
            None => m.clients.get(ANONYMOUS),
        };
        topic.in_flight.inc();
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(InFlight {
                topic,
                client,
                start: Instant::now(),
            }),
        }
    }
}

/// Counts a call when it finishes; a dropped (cancelled) call leaves the
/// in-flight gauge and nothing else.
struct InFlight {
    topic: Arc<TopicHandles>,
    client: Arc<ClientHandles>,
    start: Instant,
}

impl InFlight {
    fn finish(self, outcome: Outcome) {
        self.topic
            .duration
            .observe(self.start.elapsed().as_secs_f64());
        self.topic.outcomes[crate::outcome::index(outcome)].inc();
        self.client.outcomes[crate::outcome::index(outcome)].inc();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.topic.in_flight.dec();
    }
}

pin_project! {
    /// The response future of [`ServiceMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        if let Some(guard) = this.guard.take() {
            guard.finish(Outcome::of_result(&res));
        }
        Poll::Ready(res)
    }
}
