//! See [`CapturePayload`].

use bytes::Bytes;
use http::Request;
use kafka_tower::RecordBody;

/// Payload capture strategies: which bytes of a request, if any, go into
/// the audit record's `payload` (masked per
/// [`AuditorBuilder::mask`](crate::AuditorBuilder::mask)).
///
/// The strategy is a type parameter of [`AuditLayer`](crate::AuditLayer),
/// so an uncaptured layer costs nothing and works with any body type:
///
/// * [`NoPayload`] (default): nothing is captured.
/// * [`BodyPayload`]: the body's bytes, for bodies that hold them
///   ([`PeekBody`]: kafka-tower's `RecordBody`, `Bytes`, `String`,
///   `Vec<u8>`). A Kafka payload is shared, not copied.
/// * A closure `Fn(&http::Request<B>) -> Option<Bytes>`, for anything else
///   (a header, a body type of your own).
///
/// ```
/// use kafka_tower_audit::{Auditor, BodyPayload, MemorySink};
///
/// let auditor = Auditor::builder().sink(MemorySink::new()).mask("/card/number").build()?;
/// let layer = auditor.layer().capture_payload(BodyPayload);
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Chooses the bytes of a request to capture as its payload.
pub trait CapturePayload<B> {
    /// The payload of `req`, or `None` to capture nothing.
    fn capture(&self, req: &Request<B>) -> Option<Bytes>;
}

/// Captures nothing (default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPayload;

impl<B> CapturePayload<B> for NoPayload {
    #[inline]
    fn capture(&self, _req: &Request<B>) -> Option<Bytes> {
        None
    }
}

/// Captures the request body of bodies that hold their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyPayload;

impl<B: PeekBody> CapturePayload<B> for BodyPayload {
    fn capture(&self, req: &Request<B>) -> Option<Bytes> {
        req.body().peek()
    }
}

impl<B, F> CapturePayload<B> for F
where
    F: Fn(&Request<B>) -> Option<Bytes>,
{
    fn capture(&self, req: &Request<B>) -> Option<Bytes> {
        self(req)
    }
}

/// A body whose bytes can be read without consuming it.
pub trait PeekBody {
    /// The body's bytes (`None` for a tombstone or an unknown body).
    fn peek(&self) -> Option<Bytes>;
}

impl PeekBody for RecordBody {
    fn peek(&self) -> Option<Bytes> {
        self.payload().cloned()
    }
}

impl PeekBody for Bytes {
    fn peek(&self) -> Option<Bytes> {
        Some(self.clone())
    }
}

impl PeekBody for String {
    fn peek(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self.as_bytes()))
    }
}

impl PeekBody for Vec<u8> {
    fn peek(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self))
    }
}
