//! Steady-state overhead of the metrics layers per record.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use kafka_tower::{Caller, RecordBody, RecordMeta};
use kafka_tower_metrics::{LabelLimit, Metrics};
use tower::{Layer, Service};

#[derive(Clone)]
struct Ok200;

impl Service<Request<RecordBody>> for Ok200 {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<RecordBody>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

fn request(meta: &RecordMeta, caller: &Caller) -> Request<RecordBody> {
    let mut req = Request::post("/orders")
        .body(RecordBody::from(Bytes::from_static(b"{}")))
        .unwrap();
    req.extensions_mut().insert(meta.clone());
    req.extensions_mut().insert(caller.clone());
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let metrics = Metrics::builder()
        .service_id("bench")
        .client_labels(LabelLimit::cap(100))
        .build()
        .unwrap();
    let meta = RecordMeta::new("orders", 0, 1);
    let caller = Caller::new(Some("u"), Some("web-shop"), None);

    let mut g = c.benchmark_group("metrics");
    let mut bare = Ok200;
    g.bench_function("baseline (no layer)", |b| {
        b.iter(|| rt.block_on(bare.call(request(&meta, &caller))).unwrap())
    });
    let mut layered = metrics.layer().layer(Ok200);
    g.bench_function("ServiceMetricsLayer per record", |b| {
        b.iter(|| rt.block_on(layered.call(request(&meta, &caller))).unwrap())
    });
    let mut producer = metrics.producer_layer().layer(Ok200);
    g.bench_function("ProducerMetricsLayer per send", |b| {
        b.iter(|| rt.block_on(producer.call(request(&meta, &caller))).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
