//! [`RefusalBody`]: the response body of a [`JsonSchema`](crate::JsonSchema) service —
//! the inner service's body, or the layer's small JSON refusal.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's response body, unchanged, or the JSON
    /// body of a refusal (`{"layer":"schema","reason":…,"detail":…,"errors":[…]}`).
    ///
    /// It keeps the inner body's data and error types, so it fits wherever
    /// the inner body did: the kafka-tower consumer (any body whose data is
    /// a `Buf` and whose error converts into a `BoxError`) and axum routes
    /// (`Response<RefusalBody<axum::body::Body>>` is `IntoResponse`).
    #[derive(Debug)]
    pub struct RefusalBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Refusal { bytes: Option<Bytes> },
    }
}

impl<B> RefusalBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        RefusalBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn refusal(bytes: Bytes) -> Self {
        RefusalBody {
            kind: Kind::Refusal { bytes: Some(bytes) },
        }
    }

    /// The inner service's body; `None` for a refusal.
    pub fn into_inner(self) -> Option<B> {
        match self.kind {
            Kind::Inner { body } => Some(body),
            Kind::Refusal { .. } => None,
        }
    }

    /// Whether this is the body of a refusal by the layer.
    pub fn is_refusal(&self) -> bool {
        matches!(self.kind, Kind::Refusal { .. })
    }
}

impl<B> Body for RefusalBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Refusal { bytes } => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Refusal { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Refusal { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
