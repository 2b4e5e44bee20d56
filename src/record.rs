//! See [`RecordMeta`].

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// How a record's timestamp was assigned.
///
/// With [`TimestampType::LogAppendTime`] the broker overwrote the producer's
/// timestamp with the time it appended the record; with
/// [`TimestampType::CreateTime`] it is whatever the producer set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TimestampType {
    /// The record has no timestamp (old message format, or unknown).
    #[default]
    NotAvailable,
    /// Set by the producer when the record was created.
    CreateTime,
    /// Set by the broker when the record was appended to the log.
    LogAppendTime,
}

impl TimestampType {
    /// The name used in provenance headers: `CreateTime`, `LogAppendTime` or
    /// `NotAvailable`, as Kafka's own tools print it.
    pub fn as_str(self) -> &'static str {
        match self {
            TimestampType::NotAvailable => "NotAvailable",
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        }
    }
}

impl fmt::Display for TimestampType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The vocabulary of a Kafka record as seen from a request: [`RecordMeta`],
/// [`TimestampType`], and the byte-exact [`RawHeaders`].
///
/// A consumed record carries everything HTTP cannot express in request
/// extensions. Layers read them with [`http::Request::extensions`]:
///
/// ```
/// use kafka_tower::{RecordMeta, RawHeaders};
///
/// fn describe<B>(req: &http::Request<B>) -> String {
///     let meta = req.extensions().get::<RecordMeta>().expect("set by the runtime");
///     let headers = req.extensions().get::<RawHeaders>().map_or(0, |h| h.len());
///     format!("{}[{}]@{} with {headers} headers", meta.topic(), meta.partition(), meta.offset())
/// }
/// ```
///
/// Where a consumed record came from and how often it has been tried.
///
/// Inserted as a request extension by the consumer runtime (and by
/// [`crate::ConsumedRecord::into_request`]). Cloning is cheap: the topic and
/// group are shared, the key is reference-counted [`Bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<i64>,
    pub(crate) timestamp_type: TimestampType,
    pub(crate) key: Option<Bytes>,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) attempt: u32,
}

impl RecordMeta {
    /// Metadata for a record of `topic` at `partition` / `offset`, first
    /// attempt, no key, no timestamp, no group.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        RecordMeta {
            topic: topic.into(),
            partition,
            offset,
            timestamp: None,
            timestamp_type: TimestampType::NotAvailable,
            key: None,
            group: None,
            attempt: 1,
        }
    }

    /// Sets the timestamp (milliseconds since the Unix epoch) and its type.
    pub fn with_timestamp(mut self, millis: Option<i64>, kind: TimestampType) -> Self {
        self.timestamp = millis;
        self.timestamp_type = kind;
        self
    }

    /// Sets the record key (`None` for a record without key).
    pub fn with_key(mut self, key: Option<Bytes>) -> Self {
        self.key = key;
        self
    }

    /// Sets the consumer group that consumed the record.
    pub fn with_group(mut self, group: Option<Arc<str>>) -> Self {
        self.group = group;
        self
    }

    /// Sets the delivery attempt (1 for the first delivery).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The topic the record was consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic as a shared string, cheap to clone.
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    /// The partition the record was consumed from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The record's offset within its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record timestamp in milliseconds since the Unix epoch, if any.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// How [`RecordMeta::timestamp`] was assigned.
    pub fn timestamp_type(&self) -> TimestampType {
        self.timestamp_type
    }

    /// The record key, or `None` when the record has no key.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The consumer group that consumed the record, when known.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The delivery attempt: 1 the first time the service sees the record,
    /// 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// One Kafka record header exactly as it was on the wire.
///
/// Kafka header keys and values are arbitrary bytes and a value may be null,
/// none of which an [`http::HeaderMap`] can always represent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawHeader {
    /// The header key, byte for byte (not lower-cased).
    pub key: Bytes,
    /// The header value; `None` is a null value, distinct from empty.
    pub value: Option<Bytes>,
}

impl RawHeader {
    /// A header with a value.
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        RawHeader {
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// A header whose value is null.
    pub fn null(key: impl Into<Bytes>) -> Self {
        RawHeader {
            key: key.into(),
            value: None,
        }
    }
}

/// The ordered, byte-exact headers of a record, duplicates included.
///
/// The consumer runtime inserts them as a request extension next to the
/// lossy [`http::HeaderMap`] view; forwarding and dead-lettering use them so
/// that a record leaves exactly as it came in.
///
/// The headers of a consumed record are shared: cloning them (the runtime
/// does once per delivery attempt) bumps a reference count; the first
/// change to a shared list copies it.
#[derive(Clone, Default)]
pub struct RawHeaders(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<RawHeader>),
    Shared(Arc<[RawHeader]>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

impl RawHeaders {
    /// No headers.
    pub fn new() -> Self {
        RawHeaders(Repr::Owned(Vec::new()))
    }

    /// No headers, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        RawHeaders(Repr::Owned(Vec::with_capacity(n)))
    }

    fn as_slice(&self) -> &[RawHeader] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Shared(a) => a,
        }
    }

    /// Appends a header, keeping any earlier header of the same key.
    pub fn push(&mut self, header: RawHeader) {
        if let Repr::Shared(a) = &self.0 {
            let mut v = Vec::with_capacity(a.len() + 1);
            v.extend(a.iter().cloned());
            self.0 = Repr::Owned(v);
        }
        if let Repr::Owned(v) = &mut self.0 {
            v.push(header);
        }
    }

    /// The number of headers, duplicates included.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The headers in record order.
    pub fn iter(&self) -> std::slice::Iter<'_, RawHeader> {
        self.as_slice().iter()
    }

    /// The value of the last header whose key equals `key` byte for byte.
    /// The outer `None` means no such header; `Some(None)` a null value.
    pub fn get_last(&self, key: &[u8]) -> Option<Option<&Bytes>> {
        self.iter()
            .rev()
            .find(|h| h.key.as_ref() == key)
            .map(|h| h.value.as_ref())
    }

    /// Whether some header's key equals `name` when compared ASCII
    /// case-insensitively, as HTTP compares header names.
    pub fn contains_name_ignore_case(&self, name: &[u8]) -> bool {
        self.iter().any(|h| h.key.eq_ignore_ascii_case(name))
    }
}

impl fmt::Debug for RawHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawHeaders").field(&self.as_slice()).finish()
    }
}

impl PartialEq for RawHeaders {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for RawHeaders {}

impl std::hash::Hash for RawHeaders {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl FromIterator<RawHeader> for RawHeaders {
    fn from_iter<T: IntoIterator<Item = RawHeader>>(iter: T) -> Self {
        RawHeaders(Repr::Owned(iter.into_iter().collect()))
    }
}

impl IntoIterator for RawHeaders {
    type Item = RawHeader;
    type IntoIter = std::vec::IntoIter<RawHeader>;
    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            Repr::Owned(v) => v.into_iter(),
            // The iterator type is `vec::IntoIter`: a shared list is copied.
            #[allow(clippy::unnecessary_to_owned)]
            Repr::Shared(a) => a.to_vec().into_iter(),
        }
    }
}

impl<'a> IntoIterator for &'a RawHeaders {
    type Item = &'a RawHeader;
    type IntoIter = std::slice::Iter<'a, RawHeader>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Headers that clones share without copying (what the consumer runtime
/// builds for each record it copies out of librdkafka).
impl From<Arc<[RawHeader]>> for RawHeaders {
    fn from(a: Arc<[RawHeader]>) -> Self {
        RawHeaders(Repr::Shared(a))
    }
}

impl From<Vec<RawHeader>> for RawHeaders {
    fn from(v: Vec<RawHeader>) -> Self {
        RawHeaders(Repr::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_headers_are_copied_on_change_and_compare_by_content() {
        let list: Arc<[RawHeader]> = vec![RawHeader::new("a", "1"), RawHeader::null("b")].into();
        let shared = RawHeaders::from(list.clone());
        let owned = RawHeaders::from(list.to_vec());
        assert_eq!(shared, owned);
        use std::hash::BuildHasher as _;
        let state = std::hash::RandomState::new();
        assert_eq!(state.hash_one(&shared), state.hash_one(&owned));
        let mut changed = shared.clone();
        changed.push(RawHeader::new("c", "3"));
        assert_eq!(changed.len(), 3);
        assert_eq!(shared.len(), 2, "the clone it came from is untouched");
        assert_eq!(
            Arc::strong_count(&list),
            2,
            "`shared` still shares the list; the changed copy does not"
        );
        assert_eq!(
            shared.into_iter().collect::<Vec<_>>(),
            owned.into_iter().collect::<Vec<_>>()
        );
    }
}
