//! [`ResponseFuture`] of [`Audit`](crate::Audit), and [`AuditBody`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use kafka_tower::Refusal;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use crate::auditor::{Ack, Entry, Reserve, Shared, Submitted};
use crate::layer::Pending;
use kafka_tower::outcome::ErrorClass;

/// What a finished call still waits for.
enum Wait {
    /// Nothing: answer.
    Done,
    /// Room in the full queue ([`QueueFullPolicy::Block`](crate::QueueFullPolicy::Block)).
    Room(Reserve, Option<Box<Entry>>, Option<oneshot::Receiver<Ack>>),
    /// The sinks' verdict (`must_audit`).
    Written(oneshot::Receiver<Ack>),
    /// The record could not be written: reason code and detail.
    Failed(&'static str, String),
}

pin_project! {
    /// The response future of [`Audit`](crate::Audit): drives the inner
    /// future, then queues the call's record (waiting for room or for the
    /// sinks only when so configured).
    ///
    /// A call whose inner future panics, or that is dropped before it
    /// answered, is still audited (outcome `retryable`, error class
    /// `panic` or `cancelled`), without waiting.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
        shared: Arc<Shared>,
        result: Option<Result<Response<B>, E>>,
        wait: Wait,
        in_poll: bool,
    }

    impl<F, B, E> PinnedDrop for ResponseFuture<F, B, E> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(pending) = this.pending.take() {
                // Still set: the inner future's poll unwound.
                let class = if *this.in_poll {
                    ErrorClass::Panic
                } else {
                    ErrorClass::Cancelled
                };
                let class = class.as_str();
                let _ = this.shared.submit(pending.abandon(class), true);
            } else if let Wait::Room(_, Some(_), _) = this.wait {
                this.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn new(inner: F, pending: Pending, shared: Arc<Shared>) -> Self {
        ResponseFuture {
            inner,
            pending: Some(pending),
            shared,
            result: None,
            wait: Wait::Done,
            in_poll: false,
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("answered", &self.result.is_some())
            .finish_non_exhaustive()
    }
}

fn pass<B, E>(res: Result<Response<B>, E>) -> Result<Response<AuditBody<B>>, E> {
    res.map(|r| r.map(AuditBody::new))
}

/// The `503` of a `must_audit` call whose record could not be written.
fn unavailable<B, E>(reason: &'static str, detail: String) -> Result<Response<AuditBody<B>>, E> {
    let mut res = Response::new(AuditBody::empty());
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res.extensions_mut()
        .insert(Refusal::new("audit", reason, detail));
    Ok(res)
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display,
{
    type Output = Result<Response<AuditBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let must_audit = this.shared.config.must_audit;
        if this.result.is_none() {
            *this.in_poll = true;
            let polled = this.inner.poll(cx);
            *this.in_poll = false;
            let res = ready!(polled);
            let pending = this.pending.take().expect("polled after completion");
            let record = pending.finish(&res);
            *this.wait = match this.shared.submit(record, false) {
                Submitted::Queued => return Poll::Ready(pass(res)),
                Submitted::Dropped(reason) if must_audit => {
                    return Poll::Ready(unavailable(
                        reason,
                        format!("the audit record could not be queued ({reason})"),
                    ))
                }
                Submitted::Dropped(_) => return Poll::Ready(pass(res)),
                Submitted::Awaiting(rx) => Wait::Written(rx),
                Submitted::Full(reserve, entry, rx) => Wait::Room(reserve, Some(entry), rx),
            };
            *this.result = Some(res);
        }
        loop {
            let next = match this.wait {
                Wait::Done => {
                    let res = this.result.take().expect("polled after completion");
                    return Poll::Ready(pass(res));
                }
                Wait::Failed(reason, detail) => {
                    let _ = this.result.take().expect("polled after completion");
                    return Poll::Ready(unavailable(reason, std::mem::take(detail)));
                }
                Wait::Room(reserve, entry, rx) => match ready!(reserve.as_mut().poll(cx)) {
                    Ok(permit) => {
                        permit.send(*entry.take().expect("sent once"));
                        match rx.take() {
                            Some(rx) => Wait::Written(rx),
                            None => Wait::Done,
                        }
                    }
                    Err(_) => {
                        entry.take();
                        this.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        if must_audit {
                            Wait::Failed("closed", "the audit writer has stopped".into())
                        } else {
                            Wait::Done
                        }
                    }
                },
                Wait::Written(rx) => match ready!(Pin::new(rx).poll(cx)) {
                    Ok(Ok(())) => Wait::Done,
                    Ok(Err(e)) => Wait::Failed("sink_failed", e),
                    Err(_) => Wait::Failed("closed", "the audit writer has stopped".into()),
                },
            };
            *this.wait = next;
        }
    }
}

pin_project! {
    /// The response body of [`Audit`](crate::Audit): the inner service's
    /// body, or empty for a `503` answered by the audit layer itself.
    #[derive(Debug)]
    pub struct AuditBody<B> {
        #[pin]
        inner: Option<B>,
    }
}

impl<B> AuditBody<B> {
    /// Wraps the inner service's body.
    pub fn new(body: B) -> Self {
        AuditBody { inner: Some(body) }
    }

    /// An empty body.
    pub fn empty() -> Self {
        AuditBody { inner: None }
    }

    /// The inner service's body; `None` for the audit layer's own `503`.
    pub fn into_inner(self) -> Option<B> {
        self.inner
    }
}

impl<B> Default for AuditBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for AuditBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().inner.as_pin_mut() {
            Some(body) => body.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
