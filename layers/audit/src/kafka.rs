//! [`KafkaSink`] (feature `kafka`): audit records produced to a Kafka topic.

use std::fmt;

use bytes::Bytes;
use kafka_tower::runtime::Producer;
use kafka_tower::{OutgoingRecord, RawHeader, RawHeaders};

use crate::record::AuditRecord;
use crate::sink::{AuditSink, SinkError, SinkFuture};

/// Produces each record, as JSON, to an audit topic through kafka-tower's
/// [`Producer`] (idempotent by default, so a chain's records keep their
/// order). The record key is the chain id when the record is chained, else
/// its stream (`<topic>/<partition>` or `http`): one chain lands on one
/// partition of the audit topic, in order. Headers: `content-type:
/// application/json` and the record's `x-correlation-id`.
///
/// A batch is sent at once and counts as written when the broker
/// acknowledged every record of it.
///
/// ```no_run
/// use kafka_tower::runtime::{Producer, ProducerConfig};
/// use kafka_tower_audit::{Auditor, KafkaSink};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let producer = Producer::new(ProducerConfig::new("127.0.0.1:9092"))?;
/// let auditor = Auditor::builder()
///     .service_id("orders-service")
///     .sink(KafkaSink::new(producer, "audit"))
///     .chain(true)
///     .build()?;
/// # let _ = auditor; Ok(()) }
/// ```
pub struct KafkaSink {
    producer: Producer,
    topic: String,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Produces to `topic` with `producer`.
    pub fn new(producer: Producer, topic: impl Into<String>) -> Self {
        KafkaSink {
            producer,
            topic: topic.into(),
        }
    }

    /// The audit topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn outgoing(&self, r: &AuditRecord) -> OutgoingRecord {
        let key = match &r.chain {
            Some(link) => link.id.clone(),
            None => r.stream(),
        };
        let mut headers = RawHeaders::with_capacity(2);
        headers.push(RawHeader::new(
            Bytes::from_static(b"content-type"),
            Bytes::from_static(b"application/json"),
        ));
        if let Some(id) = &r.correlation_id {
            headers.push(RawHeader::new(
                Bytes::from_static(b"x-correlation-id"),
                Bytes::copy_from_slice(id.as_bytes()),
            ));
        }
        OutgoingRecord {
            topic: self.topic.clone(),
            key: Some(Bytes::from(key)),
            payload: Some(Bytes::from(r.to_json_line())),
            headers,
            ..Default::default()
        }
    }
}

impl AuditSink for KafkaSink {
    fn write<'a>(&'a self, batch: &'a [AuditRecord]) -> SinkFuture<'a> {
        Box::pin(async move {
            let sends = batch.iter().map(|r| self.producer.send(self.outgoing(r)));
            for (i, res) in futures_util::future::join_all(sends)
                .await
                .into_iter()
                .enumerate()
            {
                res.map_err(|e| {
                    SinkError::with_source(
                        format!(
                            "audit record {i} of {} not produced to {}",
                            batch.len(),
                            self.topic
                        ),
                        e,
                    )
                })?;
            }
            Ok(())
        })
    }

    fn name(&self) -> &str {
        "kafka"
    }
}
