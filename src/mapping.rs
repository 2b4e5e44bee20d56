//! Record ⇄ request mapping.
//!
//! | Kafka record | `http::Request` |
//! |---|---|
//! | topic | URI path `/<topic>` |
//! | payload | body ([`RecordBody`]), method `POST` |
//! | null payload (tombstone) | empty body, method `DELETE` |
//! | headers | [`http::HeaderMap`] (names lower-cased; see below) **and** [`RawHeaders`] extension (ordered, byte-exact) |
//! | key, partition, offset, timestamp, group, attempt | [`RecordMeta`] extension |
//!
//! A header enters the `HeaderMap` only when HTTP can represent it: its key
//! is a valid header name once lower-cased and its value is non-null and a
//! valid header value (no CR, LF, NUL or other control bytes). Every header,
//! representable or not, is in [`RawHeaders`].
//!
//! The reverse mapping ([`OutgoingRecord::from_parts`]) takes the topic
//! from the path, the key and partition from [`RecordMeta`] or
//! [`OutgoingRecord`] extensions, and the headers from [`RawHeaders`] when
//! present, then appends each `HeaderMap` entry whose name is not already in
//! the raw headers. So record → request → record is lossless, and a layer
//! may still add a header on the way out.
//!
//! ```
//! use bytes::Bytes;
//! use kafka_tower::{ConsumedRecord, OutgoingRecord, RawHeader};
//!
//! let record = ConsumedRecord::builder("orders", 3, 42)
//!     .key(Some(Bytes::from_static(b"order-7")))
//!     .payload(Some(Bytes::from_static(b"{\"total\":10}")))
//!     .header(RawHeader::new(&b"X-Correlation-Id"[..], &b"c-1"[..]))
//!     .build();
//! let request = record.clone().into_request(None, 1);
//! assert_eq!(request.uri().path(), "/orders");
//! assert_eq!(request.method(), http::Method::POST);
//! assert_eq!(request.headers()["x-correlation-id"], "c-1");
//!
//! let out = OutgoingRecord::from_record_request(request).unwrap();
//! assert_eq!(out.topic, "orders");
//! assert_eq!(out.payload, record.payload);
//! assert_eq!(out.headers, record.headers);
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri};

use crate::body::RecordBody;
use crate::record::{RawHeader, RawHeaders, RecordMeta, TimestampType};

/// An owned consumed record: what the runtime copies out of librdkafka's
/// buffer once, and what the dead-letter path writes back byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The offset within the partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch, when the record has a timestamp.
    pub timestamp: Option<i64>,
    /// How the timestamp was assigned.
    pub timestamp_type: TimestampType,
    /// The key; `None` when the record has none.
    pub key: Option<Bytes>,
    /// The payload; `None` for a tombstone.
    pub payload: Option<Bytes>,
    /// The headers in record order, byte-exact.
    pub headers: RawHeaders,
}

impl ConsumedRecord {
    /// Starts a record of `topic` at `partition` / `offset`.
    pub fn builder(
        topic: impl Into<Arc<str>>,
        partition: i32,
        offset: i64,
    ) -> ConsumedRecordBuilder {
        ConsumedRecordBuilder {
            record: ConsumedRecord {
                topic: topic.into(),
                partition,
                offset,
                timestamp: None,
                timestamp_type: TimestampType::NotAvailable,
                key: None,
                payload: None,
                headers: RawHeaders::new(),
            },
        }
    }

    /// The [`RecordMeta`] of this record for the given group and attempt.
    pub fn meta(&self, group: Option<Arc<str>>, attempt: u32) -> RecordMeta {
        RecordMeta {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            timestamp_type: self.timestamp_type,
            key: self.key.clone(),
            group,
            attempt,
        }
    }

    /// Presents the record as an `http::Request` (see the [module
    /// docs](self) for the mapping). `group` and `attempt` go into
    /// [`RecordMeta`].
    pub fn into_request(self, group: Option<Arc<str>>, attempt: u32) -> Request<RecordBody> {
        let uri = topic_uri(&self.topic);
        self.into_request_with_uri(uri, group, attempt)
    }

    /// As [`ConsumedRecord::into_request`], with a URI the caller built
    /// (the runtime caches one per topic).
    ///
    /// Never panics. A record with more headers than an `http::HeaderMap`
    /// can hold (about 24,000 to 32,000, depending on their names) gets a
    /// `HeaderMap` holding the headers that fit, in record order; the
    /// [`RawHeaders`] extension always holds all of them. The runtime uses
    /// [`ConsumedRecord::try_into_request_with_uri`] instead and
    /// dead-letters such a record, so no layer sees a partial view.
    pub fn into_request_with_uri(
        self,
        uri: Uri,
        group: Option<Arc<str>>,
        attempt: u32,
    ) -> Request<RecordBody> {
        self.build_request(uri, group, attempt, None)
            .unwrap_or_else(|(req, _)| req)
    }

    /// As [`ConsumedRecord::into_request_with_uri`], but fails with
    /// [`MappingError::TooManyHeaders`] instead of truncating the
    /// `HeaderMap` view.
    ///
    /// ```
    /// use kafka_tower::{ConsumedRecord, MappingError, RawHeader};
    ///
    /// let mut record = ConsumedRecord::builder("orders", 0, 7).build();
    /// for i in 0..40_000 {
    ///     record.headers.push(RawHeader::new(format!("h{i}"), "v"));
    /// }
    /// let uri = kafka_tower::mapping::topic_uri("orders");
    /// let err = record.try_into_request_with_uri(uri, None, 1).unwrap_err();
    /// assert!(matches!(err, MappingError::TooManyHeaders { count: 40_000, .. }));
    /// ```
    pub fn try_into_request_with_uri(
        self,
        uri: Uri,
        group: Option<Arc<str>>,
        attempt: u32,
    ) -> Result<Request<RecordBody>, MappingError> {
        self.build_request(uri, group, attempt, None)
            .map_err(|(_, e)| e)
    }

    /// As [`ConsumedRecord::try_into_request_with_uri`], for a record the
    /// caller keeps (the runtime builds a request per attempt), taking the
    /// header names from `names` (the runtime keeps one cache per partition
    /// lane, so a name seen before costs no allocation).
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) fn try_request_cached(
        &self,
        uri: Uri,
        group: Option<Arc<str>>,
        attempt: u32,
        names: &mut HeaderNameCache,
    ) -> Result<Request<RecordBody>, MappingError> {
        self.build_request_from(
            self.payload.clone(),
            self.headers.clone(),
            uri,
            group,
            attempt,
            Some(names),
        )
        .map_err(|(_, e)| e)
    }

    /// Builds the request; on a full `HeaderMap`, returns the request with
    /// the headers that fit, and the error.
    #[allow(clippy::result_large_err)]
    fn build_request(
        mut self,
        uri: Uri,
        group: Option<Arc<str>>,
        attempt: u32,
        names: Option<&mut HeaderNameCache>,
    ) -> Result<Request<RecordBody>, (Request<RecordBody>, MappingError)> {
        let payload = self.payload.take();
        let headers = std::mem::take(&mut self.headers);
        self.build_request_from(payload, headers, uri, group, attempt, names)
    }

    /// Builds the request of this record with `payload` and `headers` (the
    /// record's own, moved out or shared); on a full `HeaderMap`, returns
    /// the request with the headers that fit, and the error.
    #[allow(clippy::result_large_err)]
    fn build_request_from(
        &self,
        payload: Option<Bytes>,
        headers: RawHeaders,
        uri: Uri,
        group: Option<Arc<str>>,
        attempt: u32,
        mut names: Option<&mut HeaderNameCache>,
    ) -> Result<Request<RecordBody>, (Request<RecordBody>, MappingError)> {
        let meta = self.meta(group, attempt);
        let method = if payload.is_none() {
            Method::DELETE
        } else {
            Method::POST
        };
        let mut req = Request::new(RecordBody::new(payload));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let map = req.headers_mut();
        // `reserve` and `append` panic past the map's capacity; their
        // `try_` forms report it. A reservation too large for the map only
        // means the map grows as headers are appended (not every header
        // enters it); the append that does not fit is the error.
        let _ = map.try_reserve(headers.len());
        let mut full = false;
        for h in headers.iter() {
            if let Some(value) = &h.value {
                let name = match names.as_deref_mut() {
                    Some(cache) => cache.name(&h.key),
                    None => HeaderName::from_bytes(&h.key).ok(),
                };
                if let (Some(name), Ok(value)) =
                    (name, HeaderValue::from_maybe_shared(value.clone()))
                {
                    if map.try_append(name, value).is_err() {
                        full = true;
                        break;
                    }
                }
            }
        }
        let count = headers.len();
        let ext = req.extensions_mut();
        ext.insert(meta);
        ext.insert(headers);
        if full {
            let error = MappingError::TooManyHeaders {
                count,
                limit: MAX_HEADER_MAP_SIZE,
            };
            return Err((req, error));
        }
        Ok(req)
    }
}

/// Header names parsed before, so that a name seen again costs a
/// comparison instead of an allocation (`HeaderName::from_bytes` copies
/// every name that is not a standard HTTP header).
///
/// Bounded: the first [`HeaderNameCache::CAPACITY`] distinct valid names
/// are kept; others are parsed each time. A lookup compares the key byte
/// for byte, so `X-Id` and `x-id` are two entries with one `HeaderName`.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
pub(crate) struct HeaderNameCache {
    names: Vec<(Bytes, HeaderName)>,
}

#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
impl HeaderNameCache {
    /// How many names are kept.
    pub(crate) const CAPACITY: usize = 32;

    /// The header name for `key`, or `None` when `key` is not a valid
    /// header name.
    pub(crate) fn name(&mut self, key: &[u8]) -> Option<HeaderName> {
        if let Some((_, name)) = self.names.iter().find(|(k, _)| k.as_ref() == key) {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(key).ok()?;
        if self.names.len() < Self::CAPACITY {
            // Copied: a slice of the record would keep its whole buffer.
            self.names.push((Bytes::copy_from_slice(key), name.clone()));
        }
        Some(name)
    }
}

/// The most entries an `http::HeaderMap` holds (its documented maximum);
/// it may refuse a reservation of fewer, since it keeps spare room.
const MAX_HEADER_MAP_SIZE: usize = 1 << 15;

/// Builds a [`ConsumedRecord`], mostly for tests and examples.
#[derive(Debug, Clone)]
pub struct ConsumedRecordBuilder {
    record: ConsumedRecord,
}

impl ConsumedRecordBuilder {
    /// Sets the key.
    pub fn key(mut self, key: Option<Bytes>) -> Self {
        self.record.key = key;
        self
    }
    /// Sets the payload; `None` makes a tombstone.
    pub fn payload(mut self, payload: Option<Bytes>) -> Self {
        self.record.payload = payload;
        self
    }
    /// Appends a header.
    pub fn header(mut self, header: RawHeader) -> Self {
        self.record.headers.push(header);
        self
    }
    /// Replaces all headers.
    pub fn headers(mut self, headers: RawHeaders) -> Self {
        self.record.headers = headers;
        self
    }
    /// Sets the timestamp and its type.
    pub fn timestamp(mut self, millis: Option<i64>, kind: TimestampType) -> Self {
        self.record.timestamp = millis;
        self.record.timestamp_type = kind;
        self
    }
    /// Finishes the record.
    pub fn build(self) -> ConsumedRecord {
        self.record
    }
}

/// The URI `/<topic>` under which a topic's records are served.
///
/// Kafka topic names use only `[a-zA-Z0-9._-]`, all valid path characters,
/// so the mapping needs no escaping. A name outside that set (which Kafka
/// would refuse anyway) yields the path `/` rather than a panic.
pub fn topic_uri(topic: &str) -> Uri {
    // Checked first: `/a/b`, `/t?x` or `/t#x` would parse, as another path
    // (`t?x` would even come back as topic `t`).
    if !is_valid_topic_name(topic) {
        return Uri::from_static("/");
    }
    let mut s = String::with_capacity(topic.len() + 1);
    s.push('/');
    s.push_str(topic);
    Uri::try_from(s).unwrap_or_else(|_| Uri::from_static("/"))
}

/// The topic a request is about: [`RecordMeta::topic`] for a consumed
/// record, else the first segment of the URI path (`/orders/42` →
/// `orders`), as a producer request or an HTTP route names it. Not
/// validated: an HTTP path may name anything.
///
/// Every layer that keys something by topic (JWT policies, schemas,
/// metrics labels, span names) asks this.
///
/// ```
/// use kafka_tower::mapping::topic_of;
/// use kafka_tower::ConsumedRecord;
///
/// let consumed = ConsumedRecord::builder("orders", 0, 7).build().into_request(None, 1);
/// assert_eq!(topic_of(&consumed), "orders");
/// let route = http::Request::post("/payments/42").body(()).unwrap();
/// assert_eq!(topic_of(&route), "payments");
/// ```
pub fn topic_of<B>(req: &Request<B>) -> &str {
    match req.extensions().get::<RecordMeta>() {
        Some(meta) => meta.topic(),
        None => {
            let path = req.uri().path();
            let path = path.strip_prefix('/').unwrap_or(path);
            path.split('/').next().unwrap_or("")
        }
    }
}

/// The topic named by a request path `/<topic>`, if the path has that form.
pub fn topic_from_path(path: &str) -> Option<&str> {
    let topic = path.strip_prefix('/')?;
    if is_valid_topic_name(topic) {
        Some(topic)
    } else {
        None
    }
}

/// Whether `name` is a legal Kafka topic name: 1 to 249 characters of
/// `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A record to produce: what the producer and the dead-letter path send.
///
/// Also usable as a request extension to set the key, partition or
/// timestamp of a request the producer service sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingRecord {
    /// The destination topic.
    pub topic: String,
    /// An explicit partition, or `None` for the partitioner's choice.
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<Bytes>,
    /// The payload; `None` produces a tombstone.
    pub payload: Option<Bytes>,
    /// The headers, in order.
    pub headers: RawHeaders,
    /// An explicit timestamp in milliseconds, or `None` for "now".
    pub timestamp: Option<i64>,
}

/// Why a record could not be turned into a request, or a request into a
/// record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MappingError {
    /// The URI path is not `/<topic>` with a legal topic name.
    InvalidTopic(String),
    /// The record has more headers than an `http::HeaderMap` can hold.
    TooManyHeaders {
        /// How many headers the record has.
        count: usize,
        /// The most a `HeaderMap` holds.
        limit: usize,
    },
}

impl MappingError {
    /// A short machine-readable code: the `kt-dlq-reason` of a record the
    /// runtime dead-letters for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            MappingError::InvalidTopic(_) => "invalid_topic",
            MappingError::TooManyHeaders { .. } => "too_many_headers",
        }
    }
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MappingError::InvalidTopic(path) => write!(
                f,
                "request path {path:?} does not name a topic: expected /<topic> with 1-249 characters of [a-zA-Z0-9._-]"
            ),
            MappingError::TooManyHeaders { count, limit } => write!(
                f,
                "the record has {count} headers; an http::HeaderMap holds at most {limit}"
            ),
        }
    }
}

impl std::error::Error for MappingError {}

impl OutgoingRecord {
    /// Maps a request whose body is already in memory to a record.
    ///
    /// The topic is the URI path; key, partition and timestamp come from an
    /// [`OutgoingRecord`] extension if present, else from [`RecordMeta`]
    /// (key and timestamp only: a forwarded record keeps its key but lets the
    /// partitioner choose). Headers come from [`RawHeaders`] when present,
    /// followed by the `HeaderMap` entries whose names the raw headers lack.
    /// A `DELETE` with an empty body is a tombstone.
    pub fn from_parts(
        parts: http::request::Parts,
        payload: Option<Bytes>,
    ) -> Result<Self, MappingError> {
        let topic = topic_from_path(parts.uri.path())
            .ok_or_else(|| MappingError::InvalidTopic(parts.uri.path().to_owned()))?
            .to_owned();
        let mut out = OutgoingRecord {
            topic,
            payload,
            ..Default::default()
        };
        if let Some(meta) = parts.extensions.get::<RecordMeta>() {
            out.key = meta.key.clone();
            out.timestamp = meta.timestamp;
        }
        if let Some(explicit) = parts.extensions.get::<OutgoingRecord>() {
            out.partition = explicit.partition;
            if explicit.key.is_some() {
                out.key = explicit.key.clone();
            }
            if explicit.timestamp.is_some() {
                out.timestamp = explicit.timestamp;
            }
        }
        let raw = parts.extensions.get::<RawHeaders>();
        let mut headers = raw.cloned().unwrap_or_default();
        for (name, value) in parts.headers.iter() {
            let present =
                raw.is_some_and(|r| r.contains_name_ignore_case(name.as_str().as_bytes()));
            if !present {
                headers.push(RawHeader::new(
                    Bytes::copy_from_slice(name.as_str().as_bytes()),
                    Bytes::copy_from_slice(value.as_bytes()),
                ));
            }
        }
        out.headers = headers;
        Ok(out)
    }

    /// Maps a request built by [`ConsumedRecord::into_request`] (or any
    /// request with a [`RecordBody`]) back to a record, losslessly.
    pub fn from_record_request(req: Request<RecordBody>) -> Result<Self, MappingError> {
        let (parts, body) = req.into_parts();
        let payload = if body.is_tombstone() {
            None
        } else {
            Some(body.into_payload().unwrap_or_default())
        };
        OutgoingRecord::from_parts(parts, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_cache_parses_a_name_once_and_stays_bounded() {
        let mut cache = HeaderNameCache::default();
        let first = cache.name(b"X-Tenant").unwrap();
        assert_eq!(first.as_str(), "x-tenant");
        let again = cache.name(b"X-Tenant").unwrap();
        assert_eq!(again, first);
        assert_eq!(cache.names.len(), 1, "a name seen again is not added");
        // Byte-exact keys: another spelling is another entry, same name.
        assert_eq!(cache.name(b"x-tenant").unwrap(), first);
        assert_eq!(cache.names.len(), 2);
        assert_eq!(cache.name(b"bad name"), None, "invalid names are refused");
        assert_eq!(cache.names.len(), 2, "and not cached");
        for i in 0..100 {
            let key = format!("h-{i}");
            assert_eq!(cache.name(key.as_bytes()).unwrap().as_str(), key);
        }
        assert_eq!(cache.names.len(), HeaderNameCache::CAPACITY);
    }

    #[test]
    fn a_cached_request_equals_an_uncached_one() {
        let record = ConsumedRecord::builder("orders", 1, 9)
            .payload(Some(Bytes::from_static(b"{}")))
            .header(RawHeader::new(&b"X-A"[..], &b"1"[..]))
            .header(RawHeader::new(&b"x-a"[..], &b"2"[..]))
            .header(RawHeader::new(&b"content-type"[..], &b"json"[..]))
            .header(RawHeader::null(&b"x-null"[..]))
            .header(RawHeader::new(&b"bad key"[..], &b"3"[..]))
            .build();
        let mut cache = HeaderNameCache::default();
        for _ in 0..2 {
            let cached = record
                .try_request_cached(topic_uri("orders"), None, 1, &mut cache)
                .unwrap();
            let plain = record
                .clone()
                .try_into_request_with_uri(topic_uri("orders"), None, 1)
                .unwrap();
            assert_eq!(cached.headers(), plain.headers());
            assert_eq!(
                cached.headers().get_all("x-a").iter().collect::<Vec<_>>(),
                ["1", "2"]
            );
        }
    }
}
