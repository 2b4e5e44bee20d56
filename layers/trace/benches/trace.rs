//! Steady-state overhead of the trace layers per record, with spans
//! exported to an in-memory exporter through tracing-opentelemetry, and
//! with no subscriber at all.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use kafka_tower::{ConsumedRecord, RawHeader, RecordBody};
use kafka_tower_trace::{tracing_layer, TraceLayer, TraceProducerLayer};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tower::{Layer, Service};
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Clone)]
struct Ok200;

impl<B> Service<Request<B>> for Ok200 {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

fn record() -> Request<RecordBody> {
    ConsumedRecord::builder("orders", 0, 1)
        .key(Some(Bytes::from_static(b"k")))
        .payload(Some(Bytes::from_static(b"{}")))
        .headers(
            vec![RawHeader::new(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )]
            .into(),
        )
        .build()
        .into_request(None, 1)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("trace");
    let mut bare = Ok200;
    g.bench_function("baseline (no layer)", |b| {
        b.iter(|| rt.block_on(bare.call(record())).unwrap())
    });
    let mut layered = TraceLayer::new().layer(Ok200);
    g.bench_function("TraceLayer, no subscriber", |b| {
        b.iter(|| rt.block_on(layered.call(record())).unwrap())
    });

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(tracing_layer(&provider)),
    );
    g.bench_function("TraceLayer, exported span", |b| {
        b.iter(|| {
            rt.block_on(layered.call(record())).unwrap();
            exporter.reset();
        })
    });
    let mut producer = TraceProducerLayer::new().layer(Ok200);
    g.bench_function("TraceProducerLayer, exported span", |b| {
        b.iter(|| {
            rt.block_on(producer.call(Request::post("/orders").body(()).unwrap()))
                .unwrap();
            exporter.reset();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
