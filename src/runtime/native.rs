//! Byte-exact header access on top of librdkafka.
//!
//! rdkafka's safe `Headers` API turns header keys into `&str` and panics on a
//! key that is not UTF-8; Kafka allows any bytes. These helpers read and
//! write headers through librdkafka's C API with explicit lengths instead.

use std::ffi::{c_char, c_void, CStr};
use std::ptr;

use bytes::Bytes;
use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, OwnedHeaders};

use crate::record::{RawHeader, RawHeaders};

/// One header of a message, borrowed from librdkafka's buffer.
struct BorrowedHeader<'a> {
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

/// The headers of the message `msg` points at, in order, borrowed: valid
/// while the message lives (the caller's `'a`).
///
/// # Safety
///
/// `msg` points at a live message that outlives `'a` and that no other
/// thread touches meanwhile.
unsafe fn borrowed_headers<'a>(
    msg: *const rd::rd_kafka_message_t,
) -> impl Iterator<Item = BorrowedHeader<'a>> + 'a {
    let mut native: *mut rd::rd_kafka_headers_t = ptr::null_mut();
    // SAFETY: `msg` is live (the caller's contract); librdkafka parses the
    // message's headers once and keeps them with the message.
    let err = unsafe { rd::rd_kafka_message_headers(msg, &mut native) };
    let count = if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && !native.is_null() {
        // SAFETY: `native` is the message's header list.
        unsafe { rd::rd_kafka_header_cnt(native) }
    } else {
        0
    };
    (0..count).filter_map(move |idx| {
        let mut name: *const c_char = ptr::null();
        let mut value: *const c_void = ptr::null();
        let mut size: usize = 0;
        // SAFETY: `native` points at the headers owned by the message,
        // which outlives the iterator ('a); `idx < count`; librdkafka writes
        // a NUL-terminated name and a value pointer valid for `size` bytes
        // (or NULL for a null value) that live as long as the headers.
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

/// A message taken off a librdkafka queue by [`QueueRef::pop_batch`],
/// destroyed (given back to librdkafka) on drop.
pub(crate) struct PoppedMessage(ptr::NonNull<rd::rd_kafka_message_t>);

// SAFETY: librdkafka lets any thread read or destroy a message it handed
// out; the message is owned by this value alone.
unsafe impl Send for PoppedMessage {}

impl PoppedMessage {
    /// The message's error, if it reports one instead of a record
    /// (librdkafka puts consumer errors of a partition on its queue).
    pub(crate) fn error(&self) -> Option<rdkafka::error::KafkaError> {
        // SAFETY: the message is live while `self` is.
        let err = unsafe { self.0.as_ref() }.err;
        (err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| {
            rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::from(
                err,
            ))
        })
    }

    /// The offset the message carries (for an error message: where
    /// fetching was).
    pub(crate) fn offset(&self) -> i64 {
        // SAFETY: the message is live while `self` is.
        unsafe { self.0.as_ref() }.offset
    }

    /// The record, copied (see [`to_consumed_record`]).
    pub(crate) fn to_record(&self, topic: std::sync::Arc<str>) -> crate::ConsumedRecord {
        // SAFETY: the message is live while `self` is, and only `self`
        // touches it.
        unsafe { record_from_native(self.0.as_ptr(), topic) }
    }
}

impl Drop for PoppedMessage {
    fn drop(&mut self) {
        // SAFETY: the message came from `rd_kafka_consume_batch_queue` and
        // is destroyed once, here.
        unsafe { rd::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

/// A reference of our own to a partition's librdkafka queue, for taking its
/// messages in batches: one call (one lock per message, two clock reads per
/// call) for up to a batch of messages, where rdkafka's
/// `PartitionQueue::poll` wraps each message in an event, a
/// reference-counted allocation and a clock read.
///
/// Must be dropped before the client it came from (it holds a reference
/// librdkafka expects back before the client is destroyed).
pub(crate) struct QueueRef(ptr::NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka queues are thread-safe; the reference is released
// once, on drop.
unsafe impl Send for QueueRef {}
// SAFETY: as above: every queue operation locks the queue.
unsafe impl Sync for QueueRef {}

impl QueueRef {
    /// The queue of `topic`'s `partition` in the client `rk`, or `None` if
    /// the client has no such partition (or the topic name holds a NUL).
    ///
    /// # Safety
    ///
    /// `rk` is a live client, which outlives the returned value.
    pub(crate) unsafe fn partition(
        rk: *mut rd::rd_kafka_t,
        topic: &str,
        partition: i32,
    ) -> Option<Self> {
        let topic = std::ffi::CString::new(topic).ok()?;
        // SAFETY: `rk` is live (the caller's contract); the name is a
        // NUL-terminated string that librdkafka copies.
        let q = unsafe { rd::rd_kafka_queue_get_partition(rk, topic.as_ptr(), partition) };
        ptr::NonNull::new(q).map(QueueRef)
    }

    /// Takes up to `max` messages that are on the queue now (never waits)
    /// and appends them to `out`; returns how many it took.
    pub(crate) fn pop_batch(
        &self,
        out: &mut std::collections::VecDeque<PoppedMessage>,
        max: usize,
    ) -> usize {
        const CHUNK: usize = 64;
        let mut msgs = [ptr::null_mut::<rd::rd_kafka_message_t>(); CHUNK];
        let max = max.min(CHUNK);
        // SAFETY: the queue is live while `self` is; `msgs` has room for
        // `max` pointers; a timeout of 0 never blocks.
        let n =
            unsafe { rd::rd_kafka_consume_batch_queue(self.0.as_ptr(), 0, msgs.as_mut_ptr(), max) };
        let n = usize::try_from(n).unwrap_or(0).min(max);
        out.extend(
            msgs[..n]
                .iter()
                .filter_map(|m| ptr::NonNull::new(*m).map(PoppedMessage)),
        );
        n
    }
}

impl Drop for QueueRef {
    fn drop(&mut self) {
        // SAFETY: the reference came from `rd_kafka_queue_get_partition` and
        // is released once, here (before the client: see the type's docs).
        unsafe { rd::rd_kafka_queue_destroy(self.0.as_ptr()) }
    }
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
    // SAFETY: `msg` is live for the whole call and borrowed, so nothing
    // else touches it meanwhile.
    unsafe { record_from_native(msg.ptr(), topic) }
}

/// [`to_consumed_record`] for the message `msg` points at.
///
/// # Safety
///
/// `msg` points at a live message that no other thread touches during the
/// call.
unsafe fn record_from_native(
    msg: *const rd::rd_kafka_message_t,
    topic: std::sync::Arc<str>,
) -> crate::ConsumedRecord {
    // SAFETY: `msg` is live (the caller's contract).
    let m = unsafe { &*msg };
    let mut tstype = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: as above; librdkafka writes the type into `tstype`.
    let ts = unsafe { rd::rd_kafka_message_timestamp(msg, &mut tstype) };
    let (timestamp, timestamp_type) = match tstype {
        rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
            (Some(ts), crate::TimestampType::CreateTime)
        }
        rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
            (Some(ts), crate::TimestampType::LogAppendTime)
        }
        _ => (None, crate::TimestampType::NotAvailable),
    };
    // SAFETY: librdkafka's key and payload pointers are valid for their
    // lengths while the message lives (NULL when absent).
    let bytes_at = |p: *const c_void, len: usize| {
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
    };
    let key = bytes_at(m.key, m.key_len);
    let payload = bytes_at(m.payload, m.len);
    let headers = || {
        // SAFETY: `msg` is live and untouched by others during this call.
        unsafe { borrowed_headers(msg) }
    };
    let mut total = key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len);
    let mut count = 0;
    for h in headers() {
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
    for h in headers() {
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
    let mut list = std::sync::Arc::<[RawHeader]>::new_uninit_slice(count);
    let slots = std::sync::Arc::get_mut(&mut list).expect("just made, not shared");
    let mut written = 0;
    for (slot, h) in slots.iter_mut().zip(headers()) {
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
    let headers = unsafe { list.assume_init() };
    crate::ConsumedRecord {
        topic,
        partition: m.partition,
        offset: m.offset,
        timestamp,
        timestamp_type,
        key: key_range.map(|r| buf.slice(r)),
        payload: payload_range.map(|r| buf.slice(r)),
        headers: RawHeaders::from(headers),
    }
}
