//! Steady-state overhead of the audit layer per record, with a null sink.
//!
//! One iteration is one whole call: request built, served by a ready
//! service, future driven. The baseline is the same call without the
//! layer; the difference is the layer's cost on the request path (the
//! writer thread's work runs beside it, on its own thread).
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use kafka_tower::context::ContextConfig;
use kafka_tower::{Caller, PropagatedContext, RawHeader, RawHeaders, RecordBody, RecordMeta};
use kafka_tower_audit::{Auditor, NullSink, QueueFullPolicy};
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

struct Fixture {
    meta: RecordMeta,
    caller: Caller,
    ctx: PropagatedContext,
}

fn request(f: &Fixture) -> Request<RecordBody> {
    let mut req = Request::post("/orders")
        .body(RecordBody::from(Bytes::from_static(br#"{"amount":10}"#)))
        .unwrap();
    req.extensions_mut().insert(f.meta.clone());
    req.extensions_mut().insert(f.caller.clone());
    req.extensions_mut().insert(f.ctx.clone());
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut raw = RawHeaders::new();
    raw.push(RawHeader::new(
        "x-correlation-id",
        "3f0c1c9e-1b7a-4a57-9a43-1f0b2c3d4e5f",
    ));
    raw.push(RawHeader::new("x-traceability-id", "trace-42"));
    raw.push(RawHeader::new(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ));
    let f = Fixture {
        meta: RecordMeta::new("orders", 3, 1_000_042)
            .with_key(Some(Bytes::from_static(b"order-7")))
            .with_group(Some("billing".into())),
        caller: Caller::new(Some("user-1"), Some("web-shop"), Some("gateway")),
        ctx: PropagatedContext::from_raw_headers(&raw, &ContextConfig::new()).unwrap(),
    };

    let mut g = c.benchmark_group("audit");
    let mut bare = Ok200;
    g.bench_function("baseline (no layer)", |b| {
        b.iter(|| rt.block_on(bare.call(request(&f))).unwrap())
    });

    // DropAndCount: the request path never waits for the writer thread, so
    // this is the cost the layer adds to a call; the dropped count shows
    // whether the writer kept up.
    let auditor = Auditor::builder()
        .service_id("bench")
        .sink(NullSink)
        .queue_capacity(4096)
        .when_full(QueueFullPolicy::DropAndCount)
        .build()
        .unwrap();
    let mut audited = auditor.layer().layer(Ok200);
    g.bench_function("AuditLayer per record (null sink)", |b| {
        b.iter(|| rt.block_on(audited.call(request(&f))).unwrap())
    });
    rt.block_on(auditor.flush()).unwrap();
    eprintln!(
        "null sink, drop policy: {} written, {} dropped",
        auditor.written(),
        auditor.dropped()
    );

    // Block (the default): the call waits when the writer falls behind,
    // so this includes the writer's pace (and the chain's hashing).
    let chained = Auditor::builder()
        .service_id("bench")
        .sink(NullSink)
        .chain(true)
        .build()
        .unwrap();
    let mut blocking = chained.layer().layer(Ok200);
    g.bench_function("AuditLayer per record (null sink, chained, block)", |b| {
        b.iter(|| rt.block_on(blocking.call(request(&f))).unwrap())
    });
    rt.block_on(chained.flush()).unwrap();
    eprintln!(
        "null sink, chained, block: {} written, {} dropped",
        chained.written(),
        chained.dropped()
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
