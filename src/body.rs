//! See [`RecordBody`].

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// [`RecordBody`], the request body of a consumed record.
///
/// It holds the payload as [`Bytes`] (no copy beyond the owned record) and
/// implements [`http_body::Body`], so every tower-http layer and every axum
/// extractor accepts it:
///
/// ```
/// use http_body::Body as _;
/// use kafka_tower::RecordBody;
///
/// let body = RecordBody::new(Some(bytes::Bytes::from_static(b"{\"id\":1}")));
/// assert_eq!(body.size_hint().exact(), Some(8));
/// assert!(!body.is_tombstone());
/// assert!(RecordBody::tombstone().is_tombstone());
/// ```
///
/// The payload of a record as an [`http_body::Body`].
///
/// A tombstone (a record with a null payload) is an empty body whose
/// [`RecordBody::is_tombstone`] is true; the consumer runtime also gives it
/// the `DELETE` method. An empty, non-null payload is an empty body with the
/// `POST` method.
#[derive(Debug, Clone, Default)]
pub struct RecordBody {
    payload: Option<Bytes>,
    tombstone: bool,
}

impl RecordBody {
    /// A body for `payload`; `None` is a tombstone.
    pub fn new(payload: Option<Bytes>) -> Self {
        RecordBody {
            tombstone: payload.is_none(),
            payload,
        }
    }

    /// The body of a record with a null payload.
    pub fn tombstone() -> Self {
        RecordBody::new(None)
    }

    /// Whether the record's payload was null.
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }

    /// The payload, without consuming the body. `None` for a tombstone or
    /// once the body has been read as a stream.
    pub fn payload(&self) -> Option<&Bytes> {
        self.payload.as_ref()
    }

    /// The payload, consuming the body; `None` for a tombstone.
    pub fn into_payload(self) -> Option<Bytes> {
        self.payload
    }
}

impl From<Bytes> for RecordBody {
    fn from(b: Bytes) -> Self {
        RecordBody::new(Some(b))
    }
}

impl http_body::Body for RecordBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.payload.take() {
            Some(b) if !b.is_empty() => Poll::Ready(Some(Ok(Frame::data(b)))),
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.payload.as_ref().is_none_or(|b| b.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.payload.as_ref().map_or(0, |b| b.len() as u64))
    }
}
