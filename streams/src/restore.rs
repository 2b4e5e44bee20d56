//! Restoring a store partition from its changelog.

use kafka_tower::runtime::Properties;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use crate::store::{PartitionData, StoreStats};

/// How long a restoration may wait for the changelog before giving up.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads `changelog[partition]` with `read_committed` from `from` (or the
/// beginning) to the high watermark read at the start, applying every
/// record to `data`; returns the offset restored up to (the next offset to
/// read), a valid checkpoint.
pub(crate) fn restore_partition(
    bootstrap: &str,
    properties: &Properties,
    changelog: &str,
    partition: i32,
    from: Option<i64>,
    data: &mut PartitionData,
    stats: &StoreStats,
) -> Result<i64, String> {
    let mut cc = ClientConfig::new();
    for (k, v) in properties {
        cc.set(k, &v.0);
    }
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", "kafka-tower-streams-restore")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.min.messages", "200000");
    let consumer: BaseConsumer = cc
        .create()
        .map_err(|e| format!("restore consumer: {}", properties.redact(&e.to_string())))?;
    let (low, high) = consumer
        .fetch_watermarks(changelog, partition, Duration::from_secs(30))
        .map_err(|e| format!("watermarks of {changelog}[{partition}]: {e}"))?;
    let start = from.unwrap_or(low).max(low);
    if start >= high {
        return Ok(high.max(start));
    }
    let total = (high - start) as u64;
    stats.restore_target.fetch_add(total, Relaxed);
    stats.restoring.fetch_add(1, Relaxed);
    let began = Instant::now();
    tracing::info!(%changelog, partition, from = start, to = high, total, "restoring store partition");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog, partition, Offset::Offset(start))
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    let mut restored: u64 = 0;
    let mut last_log = Instant::now();
    let result = loop {
        let position = match consumer.position() {
            Ok(p) => p
                .find_partition(changelog, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                }),
            Err(e) => break Err(format!("position: {e}")),
        };
        if position.is_some_and(|o| o >= high) {
            break Ok(high);
        }
        if began.elapsed() > RESTORE_TIMEOUT {
            break Err(format!(
                "restoring {changelog}[{partition}] took longer than {RESTORE_TIMEOUT:?} ({restored} of {total} records)"
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    data.apply(
                        Bytes::copy_from_slice(k),
                        m.payload().map(Bytes::copy_from_slice),
                        false,
                    );
                }
                restored += 1;
                stats.restored_records.fetch_add(1, Relaxed);
                if last_log.elapsed() >= Duration::from_secs(1) {
                    last_log = Instant::now();
                    tracing::info!(%changelog, partition, restored, total, "restoring: {restored} / {total} records");
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, %changelog, partition, "restore read error"),
            None => {}
        }
    };
    stats.restoring.fetch_sub(1, Relaxed);
    let micros = began.elapsed().as_micros() as u64;
    stats.restore_micros.fetch_add(micros, Relaxed);
    if result.is_ok() {
        stats.restores.fetch_add(1, Relaxed);
        tracing::info!(%changelog, partition, restored, total, millis = micros / 1000, "restored: {restored} / {total} records");
    }
    result
}
