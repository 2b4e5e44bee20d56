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
//!
//! # Records too large to copy
//!
//! The dead-letter producer accepts records as large as the consumer can
//! fetch (`message.max.bytes` follows the consumer's `fetch.max.bytes`,
//! 50 MiB by default, unless `dead_letter.producer_properties` sets it).
//! When the dead-letter write is still refused as too large (the
//! dead-letter topic's `max.message.bytes` is smaller than the source
//! topic's), a *reference* dead letter is written instead: no key, no
//! payload and none of the original headers, only the provenance headers
//! above plus `kt-dlq-payload: omitted` and `kt-dlq-omitted-because` (the
//! broker's error). The partition moves on, and the original stays
//! findable in the source topic by its coordinates.
//!
//! A dead-letter topic that does not exist or refuses writes for another
//! reason (authorization, quota) is an error logged on every attempt; the
//! write is retried with backoff and the partition waits — nothing is lost
//! and nothing past the record is committed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::access::{AccessWatch, WatchedContext};
use super::config::{ConsumerConfig, DeadLetterPolicy};
use super::native::write_headers;
use super::outcome::{truncate_utf8, Failure};
use crate::{ConsumedRecord, RawHeader, RawHeaders};

/// The prefix of every provenance header.
pub const HEADER_PREFIX: &str = "kt-dlq-";

/// Connection properties the dead-letter producer inherits from the
/// consumer's properties.
pub(crate) fn is_connection_property(name: &str) -> bool {
    name == "bootstrap.servers"
        || name == "client.id"
        || name == "security.protocol"
        || name == "broker.address.family"
        || name.starts_with("sasl.")
        || name.starts_with("ssl.")
        || name.starts_with("enable.ssl.")
        || name.starts_with("socket.")
}

pub(crate) struct DeadLetterWriter {
    producer: FutureProducer<WatchedContext>,
    policy: DeadLetterPolicy,
    service_id: Arc<str>,
    group: Arc<str>,
}

impl DeadLetterWriter {
    /// A writer whose producer reports refusals by the cluster to `access`
    /// (the consumer's, so that the consumer stops on them too).
    pub(crate) fn new(
        config: &ConsumerConfig,
        access: Arc<AccessWatch>,
    ) -> Result<Self, KafkaError> {
        let mut cc = ClientConfig::new();
        cc.set("enable.idempotence", "true");
        cc.set("acks", "all");
        for (k, v) in &config.properties {
            if is_connection_property(k) {
                cc.set(k, &v.0);
            }
        }
        // A record as large as the consumer fetches must fit (librdkafka's
        // producer default is 1 MB; the consumer's fetch limit is 50 MiB).
        let fetch_max = config
            .properties
            .get("fetch.max.bytes")
            .map_or("52428800", |v| v.0.as_str());
        cc.set("message.max.bytes", fetch_max);
        for (k, v) in &config.dead_letter.producer_properties {
            cc.set(k, &v.0);
        }
        Ok(DeadLetterWriter {
            producer: cc.create_with_context(WatchedContext::new(access))?,
            policy: config.dead_letter.clone(),
            service_id: config.service_id.as_str().into(),
            group: config.group_id.as_str().into(),
        })
    }

    /// Writes `record` to its dead-letter topic and waits for the broker's
    /// acknowledgement; a record refused as too large is written as a
    /// reference dead letter (see the [module docs](self)).
    pub(crate) async fn write(
        &self,
        record: &ConsumedRecord,
        failure: &Failure,
        attempts: u32,
    ) -> Result<DeadLettered, KafkaError> {
        let Some(topic) = self.policy.topic_for(&record.topic) else {
            // Dead-lettering is enabled whenever a writer exists.
            return Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        };
        let headers = provenance_headers(
            record,
            failure,
            attempts,
            &self.group,
            &self.service_id,
            self.policy.max_error_len,
        );
        let whole = self
            .send(
                &topic,
                record.key.as_deref(),
                record.payload.as_deref(),
                &headers,
            )
            .await;
        let too_large = match whole {
            Ok((partition, offset)) => {
                return Ok(DeadLettered {
                    topic,
                    partition,
                    offset,
                    omitted: false,
                })
            }
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
            }
            Err(other) => return Err(other),
        };
        let mut reference = provenance_headers(
            &ConsumedRecord {
                headers: RawHeaders::new(),
                ..record.clone()
            },
            failure,
            attempts,
            &self.group,
            &self.service_id,
            self.policy.max_error_len,
        );
        reference.push(RawHeader::new(
            Bytes::from(format!("{HEADER_PREFIX}payload")),
            Bytes::from_static(b"omitted"),
        ));
        reference.push(RawHeader::new(
            Bytes::from(format!("{HEADER_PREFIX}omitted-because")),
            Bytes::from(format!(
                "{too_large} ({} B of key, payload and headers)",
                record_size(record)
            )),
        ));
        tracing::warn!(
            topic = %record.topic, partition = record.partition, offset = record.offset,
            size = record_size(record), error = %too_large,
            "dead letter too large for {topic}: writing a reference without the record's bytes"
        );
        let (partition, offset) = self.send(&topic, None, None, &reference).await?;
        Ok(DeadLettered {
            topic,
            partition,
            offset,
            omitted: true,
        })
    }

    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &RawHeaders,
    ) -> Result<(i32, i64), KafkaError> {
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).headers(write_headers(headers));
        if let Some(k) = key {
            out = out.key(k);
        }
        if let Some(p) = payload {
            out = out.payload(p);
        }
        match self.producer.send(out, Duration::from_secs(10)).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((err, _)) => Err(err),
        }
    }
}

/// Where a dead letter went.
#[derive(Debug)]
pub(crate) struct DeadLettered {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// A reference dead letter: the record's bytes were too large.
    pub(crate) omitted: bool,
}

/// The bytes of a record's key, payload and headers.
fn record_size(record: &ConsumedRecord) -> usize {
    record.key.as_ref().map_or(0, Bytes::len)
        + record.payload.as_ref().map_or(0, Bytes::len)
        + record
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
            .sum::<usize>()
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
