//! What both delivery modes do the same way around their poll loop: the
//! consumer client (the runtime's defaults, the user's properties, then
//! what the runtime requires), the subscription, and the poll thread run
//! until it ends or shutdown is asked for.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};

use super::config::ConsumerConfig;
use super::consumer::ConsumerError;

/// A consumer client for `config`, not subscribed yet: `defaults` first
/// (the mode's own settings, which the user's `properties` may override),
/// then `properties`, then the group and manual offset handling, which the
/// runtime needs whatever is configured, and `enable.partition.eof=false`
/// (the runtime has no use for end-of-partition events, and an event taken
/// in a batch would move librdkafka's application position past the next
/// record; configuration validation refuses any other value). A property librdkafka refuses is named in the error, with
/// secrets redacted.
pub(crate) fn create<C: ConsumerContext>(
    config: &ConsumerConfig,
    defaults: &[(&str, &str)],
    context: C,
) -> Result<BaseConsumer<C>, ConsumerError> {
    let mut cc = ClientConfig::new();
    for (k, v) in defaults {
        cc.set(*k, *v);
    }
    for (k, v) in &config.properties {
        cc.set(k, &v.0);
    }
    cc.set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    cc.create_with_context(context).map_err(|e| {
        ConsumerError::message(format!(
            "cannot create the Kafka consumer (check `properties`): {}",
            config.properties.redact(&e.to_string())
        ))
    })
}

/// Subscribes `consumer` to the configured topics.
pub(crate) fn subscribe<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    config: &ConsumerConfig,
) -> Result<(), ConsumerError> {
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| ConsumerError::new("cannot subscribe", e))
}

/// Runs `poll` on a thread of its own named `name` until it returns, or
/// until `shutdown` completes: then the flag `poll` watches is set and its
/// result (after its drain and final commit) awaited. A panic of the thread
/// is an error, never a silent stop.
pub(crate) async fn run_poll_thread<F, P>(
    name: &str,
    shutdown: F,
    poll: P,
) -> Result<(), ConsumerError>
where
    F: Future<Output = ()> + Send,
    P: FnOnce(Arc<AtomicBool>) -> Result<(), ConsumerError> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let thread_stop = stop.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = done_tx.send(poll(thread_stop));
        })
        .map_err(|e| ConsumerError::new("cannot start the poll thread", e))?;
    let panicked = || ConsumerError::message("the poll thread panicked");
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutdown requested: draining in-flight records");
            stop.store(true, Relaxed);
            (&mut done_rx).await.unwrap_or_else(|_| Err(panicked()))
        }
        result = &mut done_rx => result.unwrap_or_else(|_| Err(panicked())),
    }
}
