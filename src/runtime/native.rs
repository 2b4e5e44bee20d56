//! Byte-exact header access on top of librdkafka.
//!
//! rdkafka's safe `Headers` API turns header keys into `&str` and panics on a
//! key that is not UTF-8; Kafka allows any bytes. These helpers read and
//! write headers through librdkafka's C API with explicit lengths instead.

use std::ffi::{c_char, c_void, CStr};
use std::ptr;

use bytes::Bytes;
use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers as _, OwnedHeaders};
use rdkafka::Message as _;

use crate::record::{RawHeader, RawHeaders};

/// One header of a message, borrowed from librdkafka's buffer.
struct BorrowedHeader<'a> {
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

/// The headers of `msg`, in order, borrowed (valid while `msg` lives).
fn borrowed_headers<'a>(
    msg: &'a BorrowedMessage<'_>,
) -> impl Iterator<Item = BorrowedHeader<'a>> + 'a {
    let headers = msg.headers();
    let count = headers.map_or(0, |h| h.count());
    let native = headers.map_or(ptr::null(), |h| {
        h as *const BorrowedHeaders as *const rd::rd_kafka_headers_t
    });
    (0..count).filter_map(move |idx| {
        let mut name: *const c_char = ptr::null();
        let mut value: *const c_void = ptr::null();
        let mut size: usize = 0;
        // SAFETY: `native` points at the headers owned by `msg`, which
        // outlives the iterator ('a); `idx < count`; librdkafka writes a
        // NUL-terminated name and a value pointer valid for `size` bytes (or
        // NULL for a null value) that live as long as the headers.
        let err =
            unsafe { rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: see above; the name is NUL-terminated.
        let key = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            // SAFETY: see above.
            .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) });
        Some(BorrowedHeader { key, value })
    })
}

/// Builds librdkafka headers from `headers`, keys and values byte for byte.
///
/// A key containing a NUL byte cannot be represented by librdkafka (it
/// stores keys NUL-terminated); such a key is cut at the NUL, which is what
/// every librdkafka-based client does.
pub(crate) fn write_headers(headers: &RawHeaders) -> OwnedHeaders {
    let owned = OwnedHeaders::new_with_capacity(headers.len().max(1));
    let native = owned.as_borrowed() as *const BorrowedHeaders as *mut rd::rd_kafka_headers_t;
    for h in headers.iter() {
        let key = match h.key.iter().position(|b| *b == 0) {
            Some(nul) => &h.key[..nul],
            None => &h.key[..],
        };
        let (vptr, vlen) = match &h.value {
            Some(v) => (v.as_ptr() as *const c_void, v.len() as isize),
            None => (ptr::null(), 0),
        };
        // SAFETY: `native` is the writable header list owned by `owned`;
        // librdkafka copies the name (given with its length) and the value.
        let err = unsafe {
            rd::rd_kafka_header_add(
                native,
                key.as_ptr() as *const c_char,
                key.len() as isize,
                vptr,
                vlen,
            )
        };
        debug_assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    }
    owned
}

/// Copies the parts of a consumed message into an owned record: key,
/// payload and every header, byte for byte, into ONE buffer that the
/// record's fields are slices of. One allocation for the bytes (plus the
/// header list) instead of one per field, and cloning the record — once
/// per delivery attempt — only bumps a reference count.
pub(crate) fn to_consumed_record(
    msg: &BorrowedMessage<'_>,
    topic: std::sync::Arc<str>,
) -> crate::ConsumedRecord {
    use rdkafka::message::Timestamp;
    let (timestamp, timestamp_type) = match msg.timestamp() {
        Timestamp::NotAvailable => (None, crate::TimestampType::NotAvailable),
        Timestamp::CreateTime(t) => (Some(t), crate::TimestampType::CreateTime),
        Timestamp::LogAppendTime(t) => (Some(t), crate::TimestampType::LogAppendTime),
    };
    let key = msg.key();
    let payload = msg.payload();
    let mut total = key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len);
    let mut count = 0;
    for h in borrowed_headers(msg) {
        total += h.key.len() + h.value.map_or(0, <[u8]>::len);
        count += 1;
    }
    let mut buf = Vec::with_capacity(total);
    let mut push = |bytes: &[u8]| {
        let start = buf.len();
        buf.extend_from_slice(bytes);
        start..buf.len()
    };
    let key_range = key.map(&mut push);
    let payload_range = payload.map(&mut push);
    for h in borrowed_headers(msg) {
        push(h.key);
        if let Some(v) = h.value {
            push(v);
        }
    }
    let buf = Bytes::from(buf);
    // The headers' ranges follow from their lengths in the order they were
    // copied; the list is built in one allocation that attempts share.
    let mut at = key_range.as_ref().map_or(0, |r| r.end);
    at = payload_range.as_ref().map_or(at, |r| r.end);
    let mut slice = |len: usize| {
        let s = buf.slice(at..at + len);
        at += len;
        s
    };
    let mut headers = std::sync::Arc::<[RawHeader]>::new_uninit_slice(count);
    let slots = std::sync::Arc::get_mut(&mut headers).expect("just made, not shared");
    let mut written = 0;
    for (slot, h) in slots.iter_mut().zip(borrowed_headers(msg)) {
        slot.write(RawHeader {
            key: slice(h.key.len()),
            value: h.value.map(|v| slice(v.len())),
        });
        written += 1;
    }
    assert_eq!(
        written, count,
        "librdkafka's header list changed while read"
    );
    // SAFETY: every one of the `count` slots was written above (the
    // header list is the same on every pass: it belongs to `msg`, which
    // nothing else touches meanwhile).
    let headers = unsafe { headers.assume_init() };
    crate::ConsumedRecord {
        topic,
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp,
        timestamp_type,
        key: key_range.map(|r| buf.slice(r)),
        payload: payload_range.map(|r| buf.slice(r)),
        headers: RawHeaders::from(headers),
    }
}
