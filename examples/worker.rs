//! A consumer run from a configuration file, with graceful shutdown on
//! SIGINT / SIGTERM: the shape of a real deployment.
//!
//! ```text
//! cargo run --example worker -- consumer.yml
//! KAFKA_TOWER_PROPERTIES__BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run --example worker -- consumer.yml
//! ```
//!
//! The service prints one line per record, `served <topic> <partition>
//! <offset> <payload>`, and takes `WORKER_DELAY_MS` milliseconds (default 0)
//! per record, which makes it a convenient process to kill mid-stream.

use std::convert::Infallible;
use std::io::Write as _;
use std::time::Duration;

use http::{Request, Response};
use kafka_tower::runtime::ConsumerConfig;
use kafka_tower::{BoxError, Consumer, RecordBody, RecordMeta};
use tokio::signal::unix::{signal, SignalKind};
use tower::service_fn;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: worker <consumer.yml|consumer.toml>")?;
    let config = ConsumerConfig::from_file(&path)?;
    let delay = Duration::from_millis(
        std::env::var("WORKER_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );

    let service = service_fn(move |req: Request<RecordBody>| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let meta = req
            .extensions()
            .get::<RecordMeta>()
            .expect("set by the runtime");
        let payload = req
            .body()
            .payload()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "served {} {} {} {payload}",
            meta.topic(),
            meta.partition(),
            meta.offset()
        )
        .expect("stdout");
        out.flush().expect("stdout");
        Ok::<_, Infallible>(Response::new(String::new()))
    });

    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("worker: shutting down");
    };
    Consumer::from_config(config)?
        .serve(service, shutdown)
        .await?;
    eprintln!("worker: stopped cleanly");
    Ok(())
}
