//! Calling the service once and classifying what happened.

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;

use super::service::RecordService;
use crate::{BoxError, RecordBody, Refusal};

pub(crate) use crate::outcome::ErrorClass;
pub use crate::refusal::is_retryable_status;

/// Why a record failed: what the dead-letter headers say.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) class: ErrorClass,
    pub(crate) status: Option<StatusCode>,
    pub(crate) message: String,
    pub(crate) failed_by: Option<String>,
    pub(crate) reason: Option<String>,
}

/// Awaits `poll_ready`, calls the service once, and classifies the
/// outcome; a panic in either is caught. The caller's instance is used
/// (no clone per call): a lane calls its own instance in turn.
pub(crate) async fn invoke<S: RecordService>(
    svc: &mut S,
    req: Request<RecordBody>,
    max_len: usize,
) -> Result<(), Failure> {
    let res = call_caught(async move {
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(req).await
    })
    .await?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(failure_from_response(res, max_len).await)
    }
}

/// Runs one readiness-then-call of a service, catching a panic: an `Err`
/// or a panic becomes a retryable [`Failure`].
pub(crate) async fn call_caught<B, E: Into<BoxError>>(
    call: impl std::future::Future<Output = Result<Response<B>, E>>,
) -> Result<Response<B>, Failure> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(res)) => Ok(res),
        Ok(Err(err)) => {
            let err: BoxError = err.into();
            Err(Failure {
                class: ErrorClass::ServiceError,
                status: None,
                message: error_chain(&*err),
                failed_by: None,
                reason: None,
            })
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-string payload".to_owned());
            Err(Failure {
                class: ErrorClass::Panic,
                status: None,
                message: format!("service panicked: {msg}"),
                failed_by: None,
                reason: None,
            })
        }
    }
}

/// The failure a non-`2xx` response stands for: its class from the status,
/// its cause from a [`Refusal`] or else the start of the body.
pub(crate) async fn failure_from_response<B>(res: Response<B>, max_len: usize) -> Failure
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let status = res.status();
    let class = if is_retryable_status(status) {
        ErrorClass::RetryableStatus
    } else {
        ErrorClass::Permanent
    };
    if let Some(refusal) = res.extensions().get::<Refusal>() {
        return Failure {
            class,
            status: Some(status),
            message: format!("HTTP {status}: {refusal}"),
            failed_by: Some(refusal.layer().to_owned()),
            reason: Some(refusal.reason().to_owned()),
        };
    }
    let body = read_prefix(res.into_body(), max_len).await;
    let message = if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    };
    Failure {
        class,
        status: Some(status),
        message,
        failed_by: None,
        reason: None,
    }
}

/// Reads at most `max` bytes of a body (for an error message), giving up
/// after one second: an error body must never stall a partition.
async fn read_prefix<B>(body: B, max: usize) -> String
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let read = async {
        let mut buf = Vec::new();
        let mut body = std::pin::pin!(body);
        while buf.len() < max {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        use bytes::Buf as _;
                        while data.has_remaining() && buf.len() < max {
                            let chunk = data.chunk();
                            let n = chunk.len().min(max - buf.len());
                            buf.extend_from_slice(&chunk[..n]);
                            data.advance(n);
                        }
                    }
                }
                _ => break,
            }
        }
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&buf).into_owned()
}

pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let _ = write!(s, ": {e}");
        source = e.source();
    }
    s
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
