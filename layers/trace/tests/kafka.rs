//! Against a real broker (`KAFKA_BOOTSTRAP_SERVERS`): a record produced by
//! an independent client — Python confluent-kafka with the OpenTelemetry
//! SDK writing a W3C traceparent — continues that trace in the consumer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kafka_tower::RecordBody;
use kafka_tower_trace::{tracing_layer, TraceLayer};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use tokio::sync::Notify;
use tower::{service_fn, Layer};
use tracing_subscriber::layer::SubscriberExt as _;

use kafka_tower_testkit::bootstrap;

#[tokio::test(flavor = "current_thread")]
async fn a_python_producers_traceparent_is_continued() {
    let topic = format!("trace-py-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[
                NewTopic::new(&topic, 1, TopicReplication::Fixed(1)),
                NewTopic::new(&format!("{topic}.dlq"), 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }

    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/produce_traced.py"
        ))
        .arg(bootstrap())
        .arg(&topic)
        .output()
        .expect("python3 must be installed (with layers/trace/requirements-test.txt)");
    assert!(
        out.status.success(),
        "the Python producer failed (pip install -r layers/trace/requirements-test.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut ids = printed.split_whitespace();
    let (py_trace, py_span) = (
        ids.next().unwrap().to_owned(),
        ids.next().unwrap().to_owned(),
    );

    // The consumer runs on this thread (current_thread runtime), so the
    // thread-local subscriber sees its spans.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(tracing_layer(&provider)),
    );
    let handled = Arc::new(Notify::new());
    let service = {
        let handled = handled.clone();
        TraceLayer::new().layer(service_fn(move |_req: Request<RecordBody>| {
            let handled = handled.clone();
            async move {
                handled.notify_one();
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        }))
    };
    let consumer = kafka_tower::Consumer::builder()
        .bootstrap_servers(bootstrap())
        .group_id(format!("g-{topic}"))
        .topics([topic.as_str()])
        .property("auto.offset.reset", "earliest")
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = consumer.serve(service, async move {
        let _ = stopped.await;
    });
    let wait = async {
        tokio::time::timeout(Duration::from_secs(90), handled.notified())
            .await
            .expect("the record was consumed in time");
        let _ = stop.send(());
    };
    let (served, ()) = tokio::join!(serve, wait);
    served.unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let span = spans
        .iter()
        .find(|s| s.name == format!("process {topic}"))
        .expect("a process span");
    assert_eq!(span.span_context.trace_id().to_string(), py_trace);
    assert_eq!(span.parent_span_id.to_string(), py_span);
    assert!(span.parent_span_is_remote);
}
