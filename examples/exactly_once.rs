//! An exactly-once processor: every record of the input topic becomes one
//! record `out-<payload>` on the output topic, committed together with the
//! consumed offsets in one Kafka transaction.
//!
//! ```text
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 INPUT=orders OUTPUT=orders-out \
//!   GROUP=enricher TRANSACTIONAL_ID=enricher-0 cargo run --example exactly_once
//! ```
//!
//! Kill it at any moment (even with SIGKILL) and start it again: a
//! `read_committed` reader of the output sees each output exactly once.
//! It prints `served <partition> <offset> <payload>` per attempt.
//!
//! With `STALL_AFTER=<n>` the handler stops answering at its `n`-th call
//! (after printing it), so the batch holding that record never commits: a
//! way to show a crash that lands inside an open transaction.

use std::convert::Infallible;
use std::io::Write as _;

use bytes::Bytes;
use http::{Request, Response};
use kafka_tower::runtime::{ExactlyOnce, Outbox, ProducerConfig};
use kafka_tower::{BoxError, Consumer, OutgoingRecord, RecordBody, RecordMeta};
use tokio::signal::unix::{signal, SignalKind};
use tower::service_fn;

fn var(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("set {name}").into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let bootstrap = var("KAFKA_BOOTSTRAP_SERVERS")?;
    let output = var("OUTPUT")?;
    let stall_after: Option<u64> = match var("STALL_AFTER") {
        Ok(n) => Some(n.parse()?),
        Err(_) => None,
    };
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));

    let service = service_fn(move |req: Request<RecordBody>| {
        let output = output.clone();
        let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        async move {
            let meta = req
                .extensions()
                .get::<RecordMeta>()
                .expect("RecordMeta")
                .clone();
            let outbox = req
                .extensions()
                .get::<Outbox>()
                .expect("Outbox in exactly-once mode")
                .clone();
            let payload = req.into_body().into_payload().unwrap_or_default();
            let text = String::from_utf8_lossy(&payload).into_owned();
            outbox.send(OutgoingRecord {
                topic: output,
                key: meta.key().cloned(),
                payload: Some(Bytes::from(format!("out-{text}"))),
                ..Default::default()
            });
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "served {} {} {text}", meta.partition(), meta.offset())
                    .expect("stdout");
                out.flush().expect("stdout");
            }
            if stall_after.is_some_and(|n| call >= n) {
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    });

    let mut producer = ProducerConfig::new(&bootstrap);
    producer.transactional_id = Some(var("TRANSACTIONAL_ID")?);
    let mut settings = ExactlyOnce::new(producer);
    if let Ok(n) = var("MAX_BATCH") {
        settings.max_batch = n.parse()?;
    }
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(var("GROUP")?)
        .topics([var("INPUT")?])
        .property("auto.offset.reset", "earliest")
        // A killed instance leaves the group only when its session expires.
        .property(
            "session.timeout.ms",
            std::env::var("SESSION_TIMEOUT_MS").unwrap_or_else(|_| "10000".into()),
        )
        .property("heartbeat.interval.ms", "1000")
        .build()?;

    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    consumer
        .serve_exactly_once(service, settings, shutdown)
        .await?;
    eprintln!("exactly_once: stopped cleanly");
    Ok(())
}
