//! [`Refusal`]: how a layer tells the runtime, the dead-letter record and
//! the audit trail *who* refused a request and *why*; [`RefusalBody`]: the
//! response body of a layer that either passes the inner body through or
//! answers its own refusal.
//!
//! A layer that refuses a request answers with a 4xx (permanent) or 5xx
//! (retryable) response and puts a `Refusal` in the response extensions.
//! The consumer runtime copies it into the dead-letter provenance headers
//! (`kt-dlq-failed-by`, `kt-dlq-error-message`).
//!
//! ```
//! use kafka_tower::Refusal;
//!
//! let mut res = http::Response::new(());
//! *res.status_mut() = http::StatusCode::UNAUTHORIZED;
//! res.extensions_mut().insert(Refusal::new("jwt", "expired", "token expired 3600 s before the record was produced"));
//! let refusal = res.extensions().get::<Refusal>().unwrap();
//! assert_eq!(refusal.layer(), "jwt");
//! assert_eq!(refusal.reason(), "expired");
//! ```

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The layer (or service) that refused a request, a machine-readable reason
/// code, and a human-readable detail. A response extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    layer: Cow<'static, str>,
    reason: Cow<'static, str>,
    detail: String,
}

impl Refusal {
    /// A refusal by `layer` (e.g. `"jwt"`) for `reason` (e.g. `"expired"`).
    pub fn new(
        layer: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Self {
        Refusal {
            layer: layer.into(),
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    /// The name of the refusing layer or service.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// The machine-readable reason code.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// A human-readable explanation; never contains secrets.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}: {}", self.layer, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.layer, self.reason, self.detail)
        }
    }
}

/// Whether a response status means "try again later" to the consumer
/// runtime: `408 Request Timeout` (what tower-http's timeout answers), `429
/// Too Many Requests` and every `5xx`. Any other non-`2xx` status is a
/// permanent failure (dead-lettered at once). Layers that classify outcomes
/// (metrics, audit) use the same rule.
///
/// ```
/// use http::StatusCode;
/// use kafka_tower::refusal::is_retryable_status;
///
/// assert!(is_retryable_status(StatusCode::SERVICE_UNAVAILABLE));
/// assert!(is_retryable_status(StatusCode::REQUEST_TIMEOUT));
/// assert!(!is_retryable_status(StatusCode::UNPROCESSABLE_ENTITY));
/// ```
pub fn is_retryable_status(status: http::StatusCode) -> bool {
    status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

pin_project! {
    /// Either the inner service's response body, unchanged, or the body of
    /// a layer's refusal (the JWT and schema layers answer a small JSON
    /// document such as `{"layer":"jwt","reason":…,"detail":…}`).
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

    /// The body of a refusal: `bytes`, then the end.
    pub fn refusal(bytes: Bytes) -> Self {
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

    /// Whether this is the body of a refusal.
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
