//! Writing failed records to the dead-letter topic, byte-exact, with
//! provenance headers.
//!
//! The dead-letter record has the original key, the original payload (a
//! tombstone stays a tombstone) and every original header byte for byte, in
//! order, followed by these provenance headers:
//!
//! | header | value |
//! |---|---|
//! | `kt-dlq-original-topic` | source topic |
//! | `kt-dlq-original-partition` | source partition (decimal) |
//! | `kt-dlq-original-offset` | source offset (decimal) |
//! | `kt-dlq-original-timestamp` | source timestamp, ms since the epoch (absent when the record had none) |
//! | `kt-dlq-original-timestamp-type` | `CreateTime`, `LogAppendTime` or `NotAvailable` |
//! | `kt-dlq-consumer-group` | the consumer group |
//! | `kt-dlq-attempts` | how many times the service was called |
//! | `kt-dlq-error-class` | `permanent`, `retryable-status`, `service-error` or `panic` |
//! | `kt-dlq-status` | the response status, when there was a response |
//! | `kt-dlq-error-message` | the error, at most `dead_letter.max_error_len` bytes |
//! | `kt-dlq-failed-by` | the refusing layer ([`Refusal`](crate::Refusal)) or `service` |
//! | `kt-dlq-reason` | the refusal's reason code, when a layer gave one |
//! | `kt-dlq-service-id` | the consumer's `service_id` |
//! | `kt-dlq-time` | when the record was dead-lettered, ms since the epoch |

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::config::{ConsumerConfig, DeadLetterPolicy};
use super::native::write_headers;
use super::outcome::{truncate_utf8, Failure};
use crate::{ConsumedRecord, RawHeader, RawHeaders};

/// The prefix of every provenance header.
pub const HEADER_PREFIX: &str = "kt-dlq-";

/// Connection properties the dead-letter producer inherits from the
/// consumer's properties.
fn is_connection_property(name: &str) -> bool {
    name == "bootstrap.servers"
        || name == "client.id"
        || name == "security.protocol"
        || name == "broker.address.family"
        || name.starts_with("sasl.")
        || name.starts_with("ssl.")
        || name.starts_with("socket.")
}

pub(crate) struct DeadLetterWriter {
    producer: FutureProducer,
    policy: DeadLetterPolicy,
    service_id: Arc<str>,
    group: Arc<str>,
}

impl DeadLetterWriter {
    pub(crate) fn new(config: &ConsumerConfig) -> Result<Self, KafkaError> {
        let mut cc = ClientConfig::new();
        cc.set("enable.idempotence", "true");
        cc.set("acks", "all");
        for (k, v) in &config.properties {
            if is_connection_property(k) {
                cc.set(k, &v.0);
            }
        }
        for (k, v) in &config.dead_letter.producer_properties {
            cc.set(k, &v.0);
        }
        Ok(DeadLetterWriter {
            producer: cc.create()?,
            policy: config.dead_letter.clone(),
            service_id: config.service_id.as_str().into(),
            group: config.group_id.as_str().into(),
        })
    }

    /// Writes `record` to its dead-letter topic and waits for the broker's
    /// acknowledgement.
    pub(crate) async fn write(
        &self,
        record: &ConsumedRecord,
        failure: &Failure,
        attempts: u32,
    ) -> Result<(String, i32, i64), KafkaError> {
        let topic = self
            .policy
            .topic_for(&record.topic)
            .expect("a writer exists only when dead-lettering is enabled");
        let headers = provenance_headers(
            record,
            failure,
            attempts,
            &self.group,
            &self.service_id,
            self.policy.max_error_len,
        );
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&topic).headers(write_headers(&headers));
        if let Some(k) = &record.key {
            out = out.key(&k[..]);
        }
        if let Some(p) = &record.payload {
            out = out.payload(&p[..]);
        }
        match self.producer.send(out, Duration::from_secs(10)).await {
            Ok(delivery) => Ok((topic, delivery.partition, delivery.offset)),
            Err((err, _)) => Err(err),
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The original headers followed by the provenance headers.
pub(crate) fn provenance_headers(
    record: &ConsumedRecord,
    failure: &Failure,
    attempts: u32,
    group: &str,
    service_id: &str,
    max_error_len: usize,
) -> RawHeaders {
    let mut h = record.headers.clone();
    let mut add = |name: &str, value: String| {
        h.push(RawHeader::new(
            Bytes::from(format!("{HEADER_PREFIX}{name}")),
            Bytes::from(value),
        ))
    };
    add("original-topic", record.topic.to_string());
    add("original-partition", record.partition.to_string());
    add("original-offset", record.offset.to_string());
    if let Some(ts) = record.timestamp {
        add("original-timestamp", ts.to_string());
    }
    add(
        "original-timestamp-type",
        record.timestamp_type.as_str().to_owned(),
    );
    add("consumer-group", group.to_owned());
    add("attempts", attempts.to_string());
    add("error-class", failure.class.as_str().to_owned());
    if let Some(status) = failure.status {
        add("status", status.as_u16().to_string());
    }
    add(
        "error-message",
        truncate_utf8(&failure.message, max_error_len).to_owned(),
    );
    add(
        "failed-by",
        failure
            .failed_by
            .clone()
            .unwrap_or_else(|| "service".to_owned()),
    );
    if let Some(reason) = &failure.reason {
        add("reason", reason.clone());
    }
    add("service-id", service_id.to_owned());
    add("time", now_millis().to_string());
    h
}
