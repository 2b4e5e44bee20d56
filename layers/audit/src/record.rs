//! See [`AuditRecord`].

use std::fmt::Write as _;

use http::StatusCode;
use kafka_tower::outcome::ErrorClass;
use serde::{Deserialize, Deserializer, Serialize};

pub use kafka_tower::outcome::Outcome;

/// The error class of a status, in the words of the runtime's dead-letter
/// header `kt-dlq-error-class`: `None` for `2xx`.
pub(crate) fn error_class_of(status: StatusCode) -> Option<&'static str> {
    ErrorClass::of_status(status).map(ErrorClass::as_str)
}

/// How the record key appears in the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyMode {
    /// The key itself in `key`: as text when it is UTF-8, else as
    /// `hex:<lower-case hex digits>` (default).
    #[default]
    Plain,
    /// Only the SHA-256 of the key's bytes, as hex, in `key_sha256`.
    Sha256,
    /// Neither.
    Omit,
}

/// The tamper-evidence link of a record: see [`crate::chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// The chain: `<auditor instance>:<stream>`, where the stream is
    /// `<topic>/<partition>` for a record and the configured HTTP stream
    /// name for an HTTP request.
    pub id: String,
    /// The position in the chain, from 0.
    pub seq: u64,
    /// The hash of the previous record of the chain ([`crate::chain::GENESIS`]
    /// for the first).
    pub prev: String,
    /// SHA-256, hex, of this record serialised with `hash` empty.
    pub hash: String,
}

/// [`AuditRecord`]: what the audit trail keeps of one handled request, and
/// the [`Outcome`] and [`KeyMode`] vocabulary it uses.
///
/// One record is written per call of the audited service, whether the
/// request is a Kafka record (topic, partition, offset, key, attempt from
/// [`kafka_tower::RecordMeta`]) or an HTTP request (method and path). It
/// serialises to one line of JSON; fields that do not apply are left out.
///
/// ```
/// use kafka_tower_audit::{AuditRecord, Outcome};
///
/// let line = r#"{"timestamp":"2024-05-01T12:00:00.000000Z","service_id":"orders","topic":"orders","partition":0,"offset":7,"outcome":"ok","status":200,"latency_us":120}"#;
/// let record: AuditRecord = serde_json::from_str(line).unwrap();
/// assert_eq!(record.outcome, Outcome::Ok);
/// assert_eq!(record.stream(), "orders/0");
/// assert_eq!(record.to_json_line(), line);
/// ```
///
/// One audit record. See above and the crate docs for
/// where each field comes from.
///
/// Optional fields are absent from the JSON when `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// When the call started, RFC 3339 UTC with microseconds.
    pub timestamp: String,
    /// The audited service ([`AuditorBuilder::service_id`](crate::AuditorBuilder::service_id)).
    pub service_id: String,
    /// The client application ([`kafka_tower::Caller::client_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The user or principal ([`kafka_tower::Caller::subject`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The service that called on the subject's behalf
    /// ([`kafka_tower::Caller::service_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calling_service: Option<String>,
    /// `X-Correlation-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// `X-Traceability-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceability_id: Option<String>,
    /// The W3C trace id (32 hex digits) of the `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The HTTP method, for a request that is not a Kafka record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The URI path, for a request that is not a Kafka record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The record's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The record's partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// The record's offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// The record key ([`KeyMode::Plain`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// SHA-256 of the record key, hex ([`KeyMode::Sha256`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// The consumer group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The delivery attempt of the record, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// What became of the call.
    pub outcome: Outcome,
    /// The response status; absent for an `Err`, a panic or a cancellation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// From the start of the call to its response, in microseconds.
    pub latency_us: u64,
    /// `permanent`, `retryable-status`, `service-error`, `panic` or
    /// `cancelled`; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// The service error's message (at most 512 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The layer that refused the request ([`Refusal::layer`](kafka_tower::Refusal::layer)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    /// The refusal's reason code ([`Refusal::reason`](kafka_tower::Refusal::reason)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal_reason: Option<String>,
    /// The refusal's detail ([`Refusal::detail`](kafka_tower::Refusal::detail)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal_detail: Option<String>,
    /// The size of the request payload in bytes, when captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<usize>,
    /// The captured payload, masked (see [`crate::mask`]).
    #[serde(
        default,
        deserialize_with = "present_value",
        skip_serializing_if = "Option::is_none"
    )]
    pub payload: Option<serde_json::Value>,
    /// The tamper-evidence link, when chaining is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainLink>,
}

/// A present `payload` is `Some`, even when it is JSON `null`, so that a
/// record reads back exactly as it was written (and its hash still holds).
fn present_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl AuditRecord {
    /// An empty record of `service_id` at `timestamp`: no request fields,
    /// outcome `ok`, latency 0. For custom sinks' tests and for records
    /// built by hand.
    pub fn new(timestamp: impl Into<String>, service_id: impl Into<String>) -> Self {
        AuditRecord {
            timestamp: timestamp.into(),
            service_id: service_id.into(),
            client_id: None,
            subject: None,
            calling_service: None,
            correlation_id: None,
            traceability_id: None,
            trace_id: None,
            method: None,
            path: None,
            topic: None,
            partition: None,
            offset: None,
            key: None,
            key_sha256: None,
            group: None,
            attempt: None,
            outcome: Outcome::Ok,
            status: None,
            latency_us: 0,
            error_class: None,
            error: None,
            refused_by: None,
            refusal_reason: None,
            refusal_detail: None,
            payload_size: None,
            payload: None,
            chain: None,
        }
    }

    /// The stream the record belongs to: `<topic>/<partition>` for a Kafka
    /// record, else `http`. Chains and the Kafka sink's record keys follow
    /// streams.
    pub fn stream(&self) -> String {
        match (&self.topic, self.partition) {
            (Some(t), Some(p)) => format!("{t}/{p}"),
            _ => "http".to_owned(),
        }
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("an audit record always serialises")
    }
}

/// Formats a time as RFC 3339 UTC with microseconds
/// (`2024-05-01T12:00:00.000123Z`).
pub(crate) fn rfc3339_micros(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let micros = d.subsec_micros();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Sized once: `format!` would grow the string twice on the way to its
    // 27 bytes (three allocations per audit record instead of one).
    let mut out = String::with_capacity(27);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{micros:06}Z"
    );
    out
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc_with_micros() {
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29T23:59:59.123456Z: a leap day.
        let t = UNIX_EPOCH + Duration::from_micros(1_709_251_199_123_456);
        assert_eq!(rfc3339_micros(t), "2024-02-29T23:59:59.123456Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_micros(t), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn outcomes_serialise_as_their_labels_and_statuses_map_to_error_classes() {
        // The classification itself is the vocabulary's (kafka_tower::outcome).
        for o in Outcome::ALL {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
        }
        assert_eq!(error_class_of(StatusCode::OK), None);
        assert_eq!(
            error_class_of(StatusCode::UNPROCESSABLE_ENTITY),
            Some("permanent")
        );
        assert_eq!(
            error_class_of(StatusCode::REQUEST_TIMEOUT),
            Some("retryable-status")
        );
    }

    #[test]
    fn a_null_payload_reads_back_as_present() {
        let mut r = AuditRecord::new("t", "s");
        r.payload = Some(serde_json::Value::Null);
        let back: AuditRecord = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_json_line(), r.to_json_line());
    }

    #[test]
    fn streams_follow_topic_and_partition() {
        let mut r = AuditRecord::new("t", "s");
        assert_eq!(r.stream(), "http");
        r.topic = Some("orders".into());
        r.partition = Some(3);
        assert_eq!(r.stream(), "orders/3");
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
