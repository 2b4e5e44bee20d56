//! A trace begun by an HTTP request continues through produce → consume →
//! produce → consume, without a broker: a loopback "topic" carries the
//! produced record's headers (as `OutgoingRecord::from_parts` maps them)
//! to the next consumer. `tests/kafka.rs` does the same through a real
//! broker.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::context::InjectContextLayer;
use kafka_tower::{ConsumedRecord, OutgoingRecord, RecordBody, Refusal};
use kafka_tower_trace::{tracing_layer, ParentMode, Propagation, TraceLayer, TraceProducerLayer};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt as _;

type Topic = Arc<Mutex<VecDeque<ConsumedRecord>>>;

fn setup() -> (InMemorySpanExporter, tracing::subscriber::DefaultGuard) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(tracing_layer(&provider)),
    );
    (exporter, guard)
}

/// A producer stack: TraceProducer → InjectContext → a loopback that maps
/// the request to a record (as kafka-tower's Producer does) and appends it.
fn producer(
    topic: Topic,
) -> impl Service<Request<String>, Response = Response<()>, Error = Infallible> + Clone {
    ServiceBuilder::new()
        .layer(TraceProducerLayer::new())
        .layer(InjectContextLayer::new())
        .service(service_fn(move |req: Request<String>| {
            let topic = topic.clone();
            async move {
                let (parts, body) = req.into_parts();
                let out = OutgoingRecord::from_parts(parts, Some(Bytes::from(body))).unwrap();
                let mut q = topic.lock().unwrap();
                let offset = q.len() as i64;
                q.push_back(
                    ConsumedRecord::builder(out.topic.as_str(), 0, offset)
                        .key(out.key)
                        .payload(out.payload)
                        .headers(out.headers)
                        .build(),
                );
                let mut res = Response::new(());
                *res.status_mut() = StatusCode::CREATED;
                res.headers_mut().insert("kafka-partition", 0.into());
                res.headers_mut().insert("kafka-offset", offset.into());
                Ok::<_, Infallible>(res)
            }
        }))
}

/// A handler that logs and forwards its input to `next` (when given).
fn forwarding(
    next_topic: Option<&'static str>,
    out: Topic,
) -> impl Service<Request<RecordBody>, Response = Response<String>, Error = Infallible> + Clone {
    let producer = producer(out);
    service_fn(move |_req: Request<RecordBody>| {
        let producer = producer.clone();
        async move {
            tracing::info!(hop = next_topic.unwrap_or("end"), "handling");
            if let Some(t) = next_topic {
                let req = Request::post(format!("/{t}"))
                    .body("payload".to_owned())
                    .unwrap();
                producer.oneshot(req).await.unwrap();
            }
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    })
}

fn consume(topic: &Topic) -> Request<RecordBody> {
    let rec = topic
        .lock()
        .unwrap()
        .pop_front()
        .expect("a record was produced");
    rec.into_request(Some("group-1".into()), 1)
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn by_name<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name}: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

#[tokio::test(flavor = "current_thread")]
async fn http_produce_consume_produce_consume_is_one_trace() {
    let (exporter, _guard) = setup();
    let t1: Topic = Default::default();
    let t2: Topic = Default::default();
    let sink: Topic = Default::default();

    // Hop 0: an HTTP route producing to `orders`.
    let http = TraceLayer::new().layer(forwarding(Some("orders"), t1.clone()));
    let req = Request::post("/checkout")
        .header("x-traceability-id", "audit-77")
        .body(RecordBody::from(Bytes::from_static(b"{}")))
        .unwrap();
    http.oneshot(req).await.unwrap();

    // Hop 1: consume `orders`, produce to `payments`.
    let c1 = TraceLayer::new().layer(forwarding(Some("payments"), t2.clone()));
    c1.oneshot(consume(&t1)).await.unwrap();
    // Hop 2: consume `payments`.
    let c2 = TraceLayer::new().layer(forwarding(None, sink));
    c2.oneshot(consume(&t2)).await.unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let server = by_name(&spans, "POST /checkout");
    let send1 = by_name(&spans, "send orders");
    let proc1 = by_name(&spans, "process orders");
    let send2 = by_name(&spans, "send payments");
    let proc2 = by_name(&spans, "process payments");

    let trace_id = server.span_context.trace_id();
    for s in &spans {
        assert_eq!(
            s.span_context.trace_id(),
            trace_id,
            "{} in the trace",
            s.name
        );
    }
    assert_eq!(
        server.parent_span_id,
        SpanId::INVALID,
        "the HTTP span is the root"
    );
    assert_eq!(send1.parent_span_id, server.span_context.span_id());
    assert_eq!(proc1.parent_span_id, send1.span_context.span_id());
    assert_eq!(send2.parent_span_id, proc1.span_context.span_id());
    assert_eq!(proc2.parent_span_id, send2.span_context.span_id());
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(send1.span_kind, SpanKind::Producer);
    assert_eq!(proc1.span_kind, SpanKind::Consumer);

    // Messaging attributes of a consumer span.
    assert_eq!(attr(proc1, "messaging.system"), Some(&Value::from("kafka")));
    assert_eq!(
        attr(proc1, "messaging.operation.type"),
        Some(&Value::from("process"))
    );
    assert_eq!(
        attr(proc1, "messaging.destination.name"),
        Some(&Value::from("orders"))
    );
    assert_eq!(
        attr(proc1, "messaging.destination.partition.id"),
        Some(&Value::from("0"))
    );
    assert_eq!(attr(proc1, "messaging.kafka.offset"), Some(&Value::I64(0)));
    assert_eq!(
        attr(proc1, "messaging.consumer.group.name"),
        Some(&Value::from("group-1"))
    );
    assert_eq!(
        attr(proc1, "messaging.message.body.size"),
        Some(&Value::I64(7))
    );
    assert!(attr(proc1, "error.type").is_none());
    // The producer span knows where the record went.
    assert_eq!(
        attr(send1, "messaging.operation.type"),
        Some(&Value::from("send"))
    );
    assert_eq!(attr(send1, "messaging.kafka.offset"), Some(&Value::I64(0)));

    // One correlation id (generated at the HTTP hop) and the traceability
    // id on every span.
    let cid = attr(server, "correlation_id")
        .expect("correlation id")
        .clone();
    assert_eq!(cid.as_str().len(), 36, "a UUID: {cid:?}");
    for s in &spans {
        assert_eq!(attr(s, "correlation_id"), Some(&cid), "{}", s.name);
        assert_eq!(
            attr(s, "traceability_id"),
            Some(&Value::from("audit-77")),
            "{}",
            s.name
        );
    }

    // The handler's log is an event of its span.
    let logged: Vec<_> = proc2
        .events
        .events
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    assert!(logged.iter().any(|n| n == "handling"), "{logged:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn link_mode_starts_a_new_trace_linked_to_the_producer() {
    let (exporter, _guard) = setup();
    let svc = TraceLayer::new()
        .parent_mode(ParentMode::Link)
        .layer(service_fn(|_req: Request<RecordBody>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let rec = ConsumedRecord::builder("orders", 1, 5)
        .key(Some(Bytes::from_static(b"order-7")))
        .payload(Some(Bytes::from_static(b"{}")))
        .headers(
            vec![kafka_tower::RawHeader::new(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )]
            .into(),
        )
        .build();
    svc.oneshot(rec.into_request(None, 1)).await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let s = by_name(&spans, "process orders");
    assert_ne!(
        s.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(s.parent_span_id, SpanId::INVALID);
    assert_eq!(s.links.links.len(), 1);
    assert_eq!(
        s.links.links[0].span_context.span_id().to_string(),
        "00f067aa0ba902b7"
    );
    assert_eq!(
        attr(s, "messaging.kafka.message.key"),
        Some(&Value::from("order-7"))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn failures_set_error_type_and_status() {
    let (exporter, _guard) = setup();
    let svc = TraceLayer::new().layer(service_fn(|req: Request<RecordBody>| async move {
        let offset = req
            .extensions()
            .get::<kafka_tower::RecordMeta>()
            .unwrap()
            .offset();
        let mut res = Response::new(String::new());
        match offset {
            0 => {
                *res.status_mut() = StatusCode::UNAUTHORIZED;
                res.extensions_mut()
                    .insert(Refusal::new("jwt", "expired", ""));
            }
            1 => *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
            _ => return Err("database down"),
        }
        Ok(res)
    }));
    for offset in 0..3 {
        let rec = ConsumedRecord::builder("t", 0, offset).build();
        let _ = svc.clone().oneshot(rec.into_request(None, 1)).await;
    }
    let spans = exporter.get_finished_spans().unwrap();
    let by_offset = |o: i64| {
        spans
            .iter()
            .find(|s| attr(s, "messaging.kafka.offset") == Some(&Value::I64(o)))
            .unwrap()
    };
    assert_eq!(
        attr(by_offset(0), "error.type"),
        Some(&Value::from("jwt.expired"))
    );
    assert_eq!(attr(by_offset(1), "error.type"), Some(&Value::from("503")));
    assert_eq!(
        attr(by_offset(2), "error.type"),
        Some(&Value::from("service_error"))
    );
    for o in 0..3 {
        assert!(
            matches!(by_offset(o).status, Status::Error { .. }),
            "offset {o}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn jaeger_and_b3_contexts_are_continued_when_selected() {
    let (exporter, _guard) = setup();
    for (propagation, header, value) in [
        (
            Propagation::jaeger(),
            "uber-trace-id",
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1",
        ),
        (
            Propagation::b3(),
            "b3",
            "5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ),
    ] {
        let svc = TraceLayer::new().propagation(propagation).layer(service_fn(
            |_req: Request<RecordBody>| async { Ok::<_, Infallible>(Response::new(String::new())) },
        ));
        let rec = ConsumedRecord::builder("t", 0, 0)
            .headers(vec![kafka_tower::RawHeader::new(header, value)].into())
            .build();
        svc.oneshot(rec.into_request(None, 1)).await.unwrap();
    }
    let traces: Vec<String> = exporter
        .get_finished_spans()
        .unwrap()
        .iter()
        .map(|s| s.span_context.trace_id().to_string())
        .collect();
    assert_eq!(
        traces,
        [
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "5bf92f3577b34da6a3ce929d0e0e4736"
        ]
    );
}
