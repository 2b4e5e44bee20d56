//! Byte-exact header access on top of librdkafka.
//!
//! rdkafka's safe `Headers` API turns header keys into `&str` and panics on a
//! key that is not UTF-8; Kafka allows any bytes. These two helpers read and
//! write headers through librdkafka's C API with explicit lengths instead.

use std::ffi::{c_char, c_void, CStr};
use std::ptr;

use bytes::Bytes;
use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers as _, OwnedHeaders};
use rdkafka::Message as _;

use crate::record::{RawHeader, RawHeaders};

/// Copies every header of `msg`, in order, byte for byte.
pub(crate) fn read_headers(msg: &BorrowedMessage<'_>) -> RawHeaders {
    let Some(headers) = msg.headers() else {
        return RawHeaders::new();
    };
    let count = headers.count();
    let native = headers as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
    let mut out = RawHeaders::with_capacity(count);
    for idx in 0..count {
        let mut name: *const c_char = ptr::null();
        let mut value: *const c_void = ptr::null();
        let mut size: usize = 0;
        // SAFETY: `native` points at the headers owned by `msg`, which
        // outlives this loop; `idx < count`; librdkafka writes a
        // NUL-terminated name and a value pointer valid for `size` bytes (or
        // NULL for a null value) that live as long as the headers.
        let err =
            unsafe { rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: see above; the name is NUL-terminated.
        let key = Bytes::copy_from_slice(unsafe { CStr::from_ptr(name) }.to_bytes());
        let value = if value.is_null() {
            None
        } else {
            // SAFETY: see above.
            Some(Bytes::copy_from_slice(unsafe {
                std::slice::from_raw_parts(value as *const u8, size)
            }))
        };
        out.push(RawHeader { key, value });
    }
    out
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

/// Copies the parts of a consumed message into an owned record: one copy of
/// key, payload and headers, nothing else.
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
    crate::ConsumedRecord {
        topic,
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp,
        timestamp_type,
        key: msg.key().map(Bytes::copy_from_slice),
        payload: msg.payload().map(Bytes::copy_from_slice),
        headers: read_headers(msg),
    }
}
