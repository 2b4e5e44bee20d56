//! Broker-free tests of the record ⇄ request mapping (`kafka_tower::mapping`)
//! and of `RecordBody` as an `http_body::Body`.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request};
use http_body::Body as _;
use kafka_tower::mapping::{is_valid_topic_name, topic_from_path, topic_uri};
use kafka_tower::{
    ConsumedRecord, MappingError, OutgoingRecord, RawHeader, RawHeaders, RecordBody, RecordMeta,
    TimestampType,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Oracles, written from RFC 9110 rather than from the `http` crate, so that
// the mapping is checked against the definition and not against itself.
// ---------------------------------------------------------------------------

/// `tchar` of RFC 9110 §5.6.2, lower-case letters only (names are compared
/// after lower-casing).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the lower-cased `key` is a valid HTTP header name.
fn is_http_name(key: &[u8]) -> bool {
    !key.is_empty() && key.iter().all(|b| is_tchar(b.to_ascii_lowercase()))
}

/// Whether `value` is a valid `HeaderValue`: visible ASCII, SP, HTAB and
/// obs-text; no other control byte (CR, LF, NUL, DEL, ...).
fn is_http_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The `HeaderMap` view the mapping must produce: the representable raw
/// headers, names lower-cased, in record order.
fn expected_header_view(headers: &RawHeaders) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .filter_map(|h| {
            let value = h.value.as_ref()?;
            (is_http_name(&h.key) && is_http_value(value)).then(|| {
                let name = String::from_utf8(h.key.to_ascii_lowercase()).expect("tchar is ASCII");
                (name, value.clone())
            })
        })
        .collect()
}

fn assert_header_view(req: &Request<RecordBody>, raw: &RawHeaders) {
    let expected = expected_header_view(raw);
    let map = req.headers();
    assert_eq!(
        map.len(),
        expected.len(),
        "HeaderMap size for {raw:?}: {map:?}"
    );
    let names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let actual_names: BTreeSet<&str> = map.keys().map(HeaderName::as_str).collect();
    assert_eq!(actual_names, names, "HeaderMap names for {raw:?}");
    for name in names {
        let want: Vec<&[u8]> = expected
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
            .collect();
        let got: Vec<&[u8]> = map
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(got, want, "values of {name:?} for {raw:?}");
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn topic() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,40}".prop_filter("`.` and `..` are not topics", |t| t != "." && t != "..")
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// A few header names, re-cased at random so that duplicates, duplicates
/// differing only in case, and the same name as a valid and an invalid
/// header all occur often.
fn header_key() -> impl Strategy<Value = Bytes> {
    let pooled = (
        prop::sample::select(vec![
            "x-trace",
            "content-type",
            "a",
            "kt-id",
            "x_under",
            "bad name",
            "é-utf8",
        ]),
        any::<u64>(),
    )
        .prop_map(|(name, mask)| {
            let recased: Vec<u8> = name
                .bytes()
                .enumerate()
                .map(|(i, b)| {
                    if mask >> (i % 64) & 1 == 1 {
                        b.to_ascii_uppercase()
                    } else {
                        b
                    }
                })
                .collect();
            Bytes::from(recased)
        });
    prop_oneof![
        4 => pooled,
        2 => "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}".prop_map(Bytes::from),
        2 => bytes(12),
        1 => Just(Bytes::new()),
    ]
}

fn header_value() -> impl Strategy<Value = Option<Bytes>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Bytes::new())),
        3 => "[ -~\t]{0,24}".prop_map(|s| Some(Bytes::from(s))),
        3 => bytes(24).prop_map(Some),
        1 => "[a-z]{0,4}[\r\n\x00\x7f][a-z]{0,4}".prop_map(|s| Some(Bytes::from(s))),
    ]
}

fn headers() -> impl Strategy<Value = RawHeaders> {
    prop::collection::vec((header_key(), header_value()), 0..=50).prop_map(|v| {
        v.into_iter()
            .map(|(key, value)| RawHeader { key, value })
            .collect()
    })
}

fn payload() -> impl Strategy<Value = Option<Bytes>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Bytes::new())),
        4 => bytes(512).prop_map(Some),
    ]
}

fn timestamp_type() -> impl Strategy<Value = TimestampType> {
    prop::sample::select(vec![
        TimestampType::NotAvailable,
        TimestampType::CreateTime,
        TimestampType::LogAppendTime,
    ])
}

prop_compose! {
    fn record()(
        topic in topic(),
        partition in any::<i32>(),
        offset in 0..i64::MAX,
        timestamp in prop::option::of(any::<i64>()),
        timestamp_type in timestamp_type(),
        key in prop::option::of(bytes(32)),
        payload in payload(),
        headers in headers(),
    ) -> ConsumedRecord {
        ConsumedRecord::builder(topic, partition, offset)
            .timestamp(timestamp, timestamp_type)
            .key(key)
            .payload(payload)
            .headers(headers)
            .build()
    }
}

fn group() -> impl Strategy<Value = Option<Arc<str>>> {
    prop::option::of("[a-z0-9-]{1,20}".prop_map(Arc::<str>::from))
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// record → request → record gives back topic, key, payload (tombstone
    /// vs empty), timestamp and every header byte for byte, in order.
    #[test]
    fn record_request_record_is_lossless(record in record(), group in group(), attempt in 1..10u32) {
        let req = record.clone().into_request(group, attempt);
        let out = OutgoingRecord::from_record_request(req).expect("a valid topic maps back");
        prop_assert_eq!(&out.topic, &*record.topic);
        prop_assert_eq!(&out.key, &record.key);
        prop_assert_eq!(&out.payload, &record.payload);
        prop_assert_eq!(out.timestamp, record.timestamp);
        prop_assert_eq!(&out.headers, &record.headers);
        prop_assert_eq!(out.partition, None, "a forwarded record lets the partitioner choose");
    }

    /// The request view: method, path, body, `HeaderMap`, `RawHeaders` and
    /// `RecordMeta`.
    #[test]
    fn request_view_of_a_record(record in record(), group in group(), attempt in 1..10u32) {
        let req = record.clone().into_request(group.clone(), attempt);

        let tombstone = record.payload.is_none();
        prop_assert_eq!(req.method() == Method::DELETE, tombstone);
        prop_assert_eq!(req.method() == Method::POST, !tombstone);
        prop_assert_eq!(req.uri().path(), format!("/{}", record.topic));
        prop_assert_eq!(req.uri().query(), None);
        prop_assert_eq!(req.body().is_tombstone(), tombstone);
        prop_assert_eq!(req.body().payload(), record.payload.as_ref());

        assert_header_view(&req, &record.headers);
        prop_assert_eq!(req.extensions().get::<RawHeaders>(), Some(&record.headers));

        let meta = req.extensions().get::<RecordMeta>().expect("RecordMeta extension");
        prop_assert_eq!(meta.topic(), &*record.topic);
        prop_assert_eq!(meta.partition(), record.partition);
        prop_assert_eq!(meta.offset(), record.offset);
        prop_assert_eq!(meta.timestamp(), record.timestamp);
        prop_assert_eq!(meta.timestamp_type(), record.timestamp_type);
        prop_assert_eq!(meta.key(), record.key.as_ref());
        prop_assert_eq!(meta.group(), group.as_deref());
        prop_assert_eq!(meta.attempt(), attempt);
        prop_assert_eq!(meta, &record.meta(group, attempt));
    }

    /// `RecordBody` streams exactly the payload, once, as announced by
    /// `size_hint`.
    #[test]
    fn record_body_yields_payload_once(payload in payload()) {
        let mut body = RecordBody::new(payload.clone());
        let len = payload.as_ref().map_or(0, |p| p.len() as u64);
        prop_assert_eq!(body.size_hint().exact(), Some(len));
        prop_assert_eq!(body.is_end_stream(), len == 0);
        prop_assert_eq!(body.is_tombstone(), payload.is_none());
        let frames = poll_all(&mut body);
        let expected: Vec<Bytes> = payload.into_iter().filter(|p| !p.is_empty()).collect();
        prop_assert_eq!(frames, expected);
        prop_assert!(body.is_end_stream());
        prop_assert_eq!(body.size_hint().exact(), Some(0));
    }
}

/// Polls `body` to its end with a no-op waker (`RecordBody` is always ready)
/// and returns its data frames.
fn poll_all(body: &mut RecordBody) -> Vec<Bytes> {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = Vec::new();
    loop {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frames.push(frame.into_data().expect("data frame")),
            Poll::Ready(Some(Err(e))) => match e {},
            Poll::Ready(None) => break,
            Poll::Pending => panic!("RecordBody is never pending"),
        }
        assert!(frames.len() <= 1, "the payload is yielded once");
    }
    // Polling past the end keeps answering "no more frames".
    assert!(matches!(
        Pin::new(&mut *body).poll_frame(&mut cx),
        Poll::Ready(None)
    ));
    frames
}

// ---------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------

fn record_with_headers() -> ConsumedRecord {
    ConsumedRecord::builder("orders", 2, 17)
        .key(Some(Bytes::from_static(b"order-7")))
        .payload(Some(Bytes::from_static(b"{\"total\":10}")))
        .timestamp(Some(1_700_000_000_000), TimestampType::CreateTime)
        .header(RawHeader::new(&b"X-Trace"[..], &b"t-1"[..]))
        .header(RawHeader::null(&b"kt-null"[..]))
        .header(RawHeader::new(&b"\xff\xfe"[..], &b"\x00binary"[..]))
        .build()
}

/// A layer that adds headers after the mapping: new names are appended after
/// the raw headers, in order; names the raw headers already have (compared
/// case-insensitively, null values included) are not duplicated.
#[tokio::test]
async fn layer_added_headers_are_appended_after_raw_headers() {
    use tower::{ServiceBuilder, ServiceExt as _};
    use tower_http::set_header::SetRequestHeaderLayer;

    let record = record_with_headers();
    let service = ServiceBuilder::new()
        .layer(SetRequestHeaderLayer::appending(
            HeaderName::from_static("x-added"),
            HeaderValue::from_static("one"),
        ))
        .layer(SetRequestHeaderLayer::appending(
            HeaderName::from_static("x-added"),
            HeaderValue::from_static("two"),
        ))
        // Already a raw header (as `X-Trace`): must not be duplicated.
        .layer(SetRequestHeaderLayer::appending(
            HeaderName::from_static("x-trace"),
            HeaderValue::from_static("from-layer"),
        ))
        // A raw header with a null value: still present, not duplicated.
        .layer(SetRequestHeaderLayer::overriding(
            HeaderName::from_static("kt-null"),
            HeaderValue::from_static("now-set"),
        ))
        // The innermost service maps the request back, as a forwarding or
        // dead-lettering service would, and hands the record out in the
        // response extensions.
        .service_fn(|req: Request<RecordBody>| async move {
            let mut res = http::Response::new(());
            res.extensions_mut()
                .insert(OutgoingRecord::from_record_request(req));
            Ok::<_, Infallible>(res)
        });

    let res = service
        .oneshot(record.clone().into_request(Some("g".into()), 1))
        .await
        .unwrap();
    let out = res
        .extensions()
        .get::<Result<OutgoingRecord, MappingError>>()
        .cloned()
        .expect("set by the service")
        .expect("a valid topic");

    let mut expected: Vec<RawHeader> = record.headers.iter().cloned().collect();
    expected.push(RawHeader::new(&b"x-added"[..], &b"one"[..]));
    expected.push(RawHeader::new(&b"x-added"[..], &b"two"[..]));
    assert_eq!(out.headers, RawHeaders::from(expected));
    assert_eq!(out.topic, "orders");
    assert_eq!(out.key, record.key);
    assert_eq!(out.payload, record.payload);
    assert_eq!(out.timestamp, record.timestamp);
}

/// Without `RawHeaders` (a plain HTTP request) the `HeaderMap` is the
/// header source, and key and timestamp come from an `OutgoingRecord`
/// extension.
#[test]
fn request_without_raw_headers_uses_header_map_and_explicit_extension() {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/payments?ignored=1")
        .header("x-a", "1")
        .header("x-b", "2")
        .header("x-a", "3")
        .body(RecordBody::from(Bytes::from_static(b"p")))
        .unwrap();
    req.extensions_mut().insert(OutgoingRecord {
        partition: Some(4),
        key: Some(Bytes::from_static(b"k")),
        timestamp: Some(99),
        ..Default::default()
    });
    let out = OutgoingRecord::from_record_request(req).unwrap();
    assert_eq!(out.topic, "payments");
    assert_eq!(out.partition, Some(4));
    assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(out.timestamp, Some(99));
    assert_eq!(out.payload.as_deref(), Some(&b"p"[..]));
    let headers: Vec<(&[u8], Option<&[u8]>)> = out
        .headers
        .iter()
        .map(|h| (h.key.as_ref(), h.value.as_deref()))
        .collect();
    assert_eq!(
        headers,
        [
            (&b"x-a"[..], Some(&b"1"[..])),
            (&b"x-a"[..], Some(&b"3"[..])),
            (&b"x-b"[..], Some(&b"2"[..])),
        ]
    );
}

#[test]
fn invalid_topic_path_is_a_mapping_error() {
    let long = format!("/{}", "a".repeat(250));
    for path in [
        "/",
        "/a/b",
        "/..",
        "/.",
        "/with%20space",
        "/caf%C3%A9",
        long.as_str(),
    ] {
        let req = Request::builder()
            .uri(path)
            .body(RecordBody::tombstone())
            .unwrap();
        let err = OutgoingRecord::from_record_request(req).unwrap_err();
        assert_eq!(
            err,
            MappingError::InvalidTopic(path.to_owned()),
            "path {path}"
        );
        assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
    }
    // 249 characters is still a topic.
    let max = "a".repeat(249);
    let req = Request::builder()
        .uri(format!("/{max}"))
        .body(RecordBody::tombstone())
        .unwrap();
    assert_eq!(OutgoingRecord::from_record_request(req).unwrap().topic, max);
}

/// A record whose topic Kafka would refuse maps to `/`, not to a panic, and
/// back to an error rather than to some other topic.
#[test]
fn record_with_illegal_topic_does_not_map_back() {
    for topic in ["bad topic", "a/b", "", "..", "t?x", "t#x", "t%20x"] {
        assert!(!is_valid_topic_name(topic));
        assert_eq!(topic_uri(topic), "/", "{topic:?}");
        let req = ConsumedRecord::builder(topic, 0, 0)
            .build()
            .into_request(None, 1);
        let err = OutgoingRecord::from_record_request(req).unwrap_err();
        assert!(
            matches!(err, MappingError::InvalidTopic(_)),
            "{topic:?}: {err:?}"
        );
    }
}

#[test]
fn topic_from_path_accepts_only_slash_topic() {
    assert_eq!(topic_from_path("/orders.v2_x-1"), Some("orders.v2_x-1"));
    assert_eq!(topic_from_path("orders"), None);
    assert_eq!(topic_from_path("/orders/"), None);
    assert_eq!(topic_from_path(""), None);
}

#[test]
fn tombstone_and_empty_payload_are_distinct() {
    let tomb = ConsumedRecord::builder("t", 0, 1).payload(None).build();
    let empty = ConsumedRecord::builder("t", 0, 2)
        .payload(Some(Bytes::new()))
        .build();

    let req = tomb.into_request(None, 1);
    assert_eq!(req.method(), Method::DELETE);
    assert!(req.body().is_tombstone());
    assert!(req.body().is_end_stream());
    assert_eq!(
        OutgoingRecord::from_record_request(req).unwrap().payload,
        None
    );

    let req = empty.into_request(None, 1);
    assert_eq!(req.method(), Method::POST);
    assert!(!req.body().is_tombstone());
    assert!(req.body().is_end_stream());
    assert_eq!(req.body().size_hint().exact(), Some(0));
    assert_eq!(
        OutgoingRecord::from_record_request(req).unwrap().payload,
        Some(Bytes::new())
    );
}

#[test]
fn record_body_size_hint_and_end_of_stream() {
    let body = RecordBody::new(Some(Bytes::from_static(b"hello")));
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    assert!(!body.is_tombstone());

    let tomb = RecordBody::tombstone();
    assert!(tomb.is_tombstone());
    assert!(tomb.is_end_stream());
    assert_eq!(tomb.size_hint().exact(), Some(0));
    assert_eq!(tomb.payload(), None);
}

#[cfg(feature = "runtime")] // http-body-util comes with the runtime feature
#[tokio::test]
async fn record_body_collects_with_body_ext() {
    use http_body_util::BodyExt as _;

    let payload = Bytes::from_static(b"\x00\xffnot utf-8 \xc3");
    let collected = RecordBody::new(Some(payload.clone()))
        .collect()
        .await
        .unwrap();
    assert_eq!(collected.to_bytes(), payload);

    let mut body = RecordBody::new(Some(payload.clone()));
    let frame = body.frame().await.expect("one frame").unwrap();
    assert_eq!(frame.into_data().unwrap(), payload);
    assert!(body.frame().await.is_none(), "the payload is yielded once");

    for empty in [RecordBody::tombstone(), RecordBody::new(Some(Bytes::new()))] {
        assert!(empty.collect().await.unwrap().to_bytes().is_empty());
    }
}

/// The `HeaderMap` view on a hand-picked record: valid names lower-cased,
/// duplicates kept in order, null, control-byte and non-token headers left
/// out (but still in `RawHeaders`).
#[test]
fn header_map_view_examples() {
    let record = ConsumedRecord::builder("t", 0, 0)
        .payload(Some(Bytes::from_static(b"x")))
        .header(RawHeader::new(&b"X-Dup"[..], &b"1"[..]))
        .header(RawHeader::new(&b"x-dup"[..], &b"2"[..]))
        .header(RawHeader::null(&b"x-null"[..]))
        .header(RawHeader::new(&b"x-crlf"[..], &b"a\r\nb"[..]))
        .header(RawHeader::new(&b"bad name"[..], &b"v"[..]))
        .header(RawHeader::new(&b""[..], &b"v"[..]))
        .header(RawHeader::new(&b"x-obs"[..], &b"caf\xc3\xa9"[..]))
        .header(RawHeader::new(&b"X-DUP"[..], &b""[..]))
        .build();
    let req = record.clone().into_request(None, 1);
    let dup: Vec<&[u8]> = req
        .headers()
        .get_all("x-dup")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(dup, [&b"1"[..], b"2", b""]);
    assert_eq!(req.headers()["x-obs"].as_bytes(), b"caf\xc3\xa9");
    assert!(!req.headers().contains_key("x-null"));
    assert!(!req.headers().contains_key("x-crlf"));
    assert_eq!(req.headers().len(), 4);
    assert_eq!(req.extensions().get::<RawHeaders>().unwrap().len(), 8);
    assert_header_view(&req, &record.headers);
}

// ---------------------------------------------------------------------------
// Inputs at the edge of what HTTP can hold: the mapping and the context
// capture must answer, never panic, whatever a record's bytes are.
// ---------------------------------------------------------------------------

/// A record with `count` headers: `distinct` different names, cycled.
fn record_with_many_headers(count: usize, distinct: usize, name_len: usize) -> ConsumedRecord {
    let mut headers = RawHeaders::with_capacity(count);
    for i in 0..count {
        let name = format!("h{:0>width$}", i % distinct, width = name_len);
        headers.push(RawHeader::new(name, "v"));
    }
    ConsumedRecord::builder("edge", 0, 1)
        .payload(Some(Bytes::from_static(b"p")))
        .headers(headers)
        .build()
}

#[test]
fn a_record_with_more_headers_than_a_header_map_holds_is_a_typed_error() {
    // 25,000 headers made `HeaderMap::reserve` panic in 0.1.
    for count in [25_000, 40_000] {
        let record = record_with_many_headers(count, count, 6);
        let err = record
            .clone()
            .try_into_request_with_uri(topic_uri("edge"), None, 1)
            .expect_err("too many headers for a HeaderMap");
        assert_eq!(
            err,
            MappingError::TooManyHeaders {
                count,
                limit: 1 << 15
            }
        );
        assert_eq!(err.reason(), "too_many_headers");
        assert!(err.to_string().contains(&count.to_string()), "{err}");

        // The infallible form truncates the HeaderMap view and keeps every
        // raw header.
        let req = record.clone().into_request(None, 1);
        assert!(req.headers().len() < count);
        assert!(!req.headers().is_empty());
        let raw = req.extensions().get::<RawHeaders>().expect("raw headers");
        assert_eq!(raw, &record.headers, "raw headers complete and in order");
    }
}

#[test]
fn headers_http_cannot_hold_do_not_count_against_the_header_map() {
    // 40,000 headers with null values: none enters the HeaderMap, so the
    // record maps.
    let mut headers = RawHeaders::new();
    for i in 0..40_000 {
        headers.push(RawHeader::null(format!("n{i}")));
    }
    let record = ConsumedRecord::builder("edge", 0, 1)
        .headers(headers)
        .build();
    let req = record
        .try_into_request_with_uri(topic_uri("edge"), None, 1)
        .expect("null-valued headers never enter the HeaderMap");
    assert!(req.headers().is_empty());
    assert_eq!(req.extensions().get::<RawHeaders>().unwrap().len(), 40_000);
}

#[test]
fn a_context_header_repeated_40_000_times_is_captured_whole() {
    // Repeated values of one name are not entries of their own in a
    // HeaderMap: no capacity is reached, nothing panics, nothing is lost.
    let mut headers = RawHeaders::new();
    for _ in 0..40_000 {
        headers.push(RawHeader::new("x-correlation-id", "c-1"));
    }
    let config = kafka_tower::context::ContextConfig::new();
    let ctx =
        kafka_tower::PropagatedContext::from_raw_headers(&headers, &config).expect("valid values");
    assert_eq!(
        ctx.headers().get_all("x-correlation-id").iter().count(),
        40_000
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Large header blocks (up to 40,000 headers, few or many distinct
    /// names): the fallible mapping answers Ok exactly when every
    /// representable header fits, the infallible one never panics, and the
    /// raw headers always survive whole.
    #[test]
    fn large_header_blocks_map_or_fail_without_panicking(
        count in 0usize..40_000,
        distinct in 1usize..40_000,
        name_len in 1usize..40,
    ) {
        let record = record_with_many_headers(count, distinct.min(count.max(1)), name_len);
        match record.clone().try_into_request_with_uri(topic_uri("edge"), None, 1) {
            Ok(req) => prop_assert_eq!(req.headers().len(), count),
            Err(e) => {
                prop_assert_eq!(e, MappingError::TooManyHeaders { count, limit: 1 << 15 });
                prop_assert!(count > 20_000, "a HeaderMap holds 20,000 headers ({} refused)", count);
            }
        }
        let req = record.clone().into_request(None, 1);
        prop_assert_eq!(req.extensions().get::<RawHeaders>(), Some(&record.headers));
        let config = kafka_tower::context::ContextConfig::new();
        let _ = kafka_tower::PropagatedContext::from_raw_headers(&record.headers, &config);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A context captured from a record reads the record's bytes until a
    /// map is asked for: its text accessors answer what the map answers
    /// (first value, visible ASCII only), and equal contexts compare equal
    /// before and after the map is built.
    #[test]
    fn captured_context_reads_like_its_map(
        headers in prop::collection::vec((context_key(), prop::option::of(context_value())), 0..80),
    ) {
        let secret = RawHeader::new(&b"Authorization"[..], &b"Bearer s3cr3t"[..]);
        let raw: RawHeaders = std::iter::once(secret)
            .chain(headers.iter().map(|(k, v)| RawHeader { key: k.clone(), value: v.clone() }))
            .collect();
        let config = kafka_tower::context::ContextConfig::new();
        let Ok(ctx) = kafka_tower::PropagatedContext::from_raw_headers(&raw, &config) else {
            return Ok(());
        };
        let untouched = ctx.clone();
        let lazy = (
            ctx.correlation_id().map(str::to_owned),
            ctx.traceability_id().map(str::to_owned),
            ctx.traceparent().map(str::to_owned),
            ctx.is_empty(),
        );
        let map = ctx.headers();
        let text = |n: &str| map.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let eager = (
            text("x-correlation-id"),
            text("x-traceability-id"),
            text("traceparent"),
            map.is_empty(),
        );
        prop_assert_eq!(lazy, eager);
        prop_assert_eq!(&untouched, &ctx);
        let shown = format!("{untouched:?}");
        prop_assert!(!shown.contains("s3cr3t"), "{}", shown);
    }
}

/// A header value HTTP can carry (mostly visible ASCII, sometimes tabs or
/// obs-text bytes), or now and then any bytes.
fn context_value() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => "[ -~]{0,40}".prop_map(Bytes::from),
        2 => prop::collection::vec(prop_oneof![Just(b'\t'), 32u8..=126, 128u8..=255], 0..40)
            .prop_map(Bytes::from),
        1 => bytes(40),
    ]
}

/// A propagated header's name in any letter case, or another name.
fn context_key() -> impl Strategy<Value = Bytes> {
    let propagated = prop::sample::select(vec![
        "authorization",
        "x-correlation-id",
        "x-traceability-id",
        "traceparent",
        "tracestate",
        "baggage",
    ]);
    prop_oneof![
        4 => (propagated, any::<u64>()).prop_map(|(name, case)| {
            let cased: Vec<u8> = name
                .bytes()
                .enumerate()
                .map(|(i, b)| if case >> (i % 64) & 1 == 1 { b.to_ascii_uppercase() } else { b })
                .collect();
            Bytes::from(cased)
        }),
        1 => bytes(40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Context capture over arbitrary bytes (control bytes, invalid UTF-8,
    /// thousands of repeats): it never panics, fails exactly when a
    /// propagated value is one HTTP cannot carry, and otherwise keeps every
    /// value of every propagated header, in order.
    #[test]
    fn context_capture_takes_any_bytes_without_panicking(
        headers in prop::collection::vec((context_key(), prop::option::of(bytes(300))), 0..3_000),
    ) {
        let raw: RawHeaders = headers
            .iter()
            .map(|(k, v)| RawHeader { key: k.clone(), value: v.clone() })
            .collect();
        let config = kafka_tower::context::ContextConfig::new();
        let propagated: Vec<(String, &Bytes)> = headers
            .iter()
            .filter_map(|(k, v)| {
                let name = String::from_utf8(k.to_vec()).ok()?.to_ascii_lowercase();
                config.names().iter().any(|n| n.as_str() == name).then_some(())?;
                Some((name, v.as_ref()?))
            })
            .collect();
        let all_valid = propagated.iter().all(|(_, v)| is_http_value(v));
        match kafka_tower::PropagatedContext::from_raw_headers(&raw, &config) {
            Ok(ctx) => {
                prop_assert!(all_valid, "accepted a value HTTP cannot carry");
                for name in config.names() {
                    let want: Vec<&[u8]> = propagated
                        .iter()
                        .filter(|(n, _)| n == name.as_str())
                        .map(|(_, v)| &v[..])
                        .collect();
                    let got: Vec<&[u8]> =
                        ctx.headers().get_all(name).iter().map(|v| v.as_bytes()).collect();
                    prop_assert_eq!(got, want, "values of {}", name);
                }
            }
            Err(e) => {
                prop_assert!(!all_valid, "refused valid values: {}", e);
                prop_assert!(
                    propagated.iter().any(|(n, v)| n == e.name() && !is_http_value(v)),
                    "the error names a header with an invalid value: {}", e.name()
                );
            }
        }
    }
}
