//! See [`AuditCaller`].

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::Request;
use kafka_tower::Caller;
use tower_layer::Layer;
use tower_service::Service;

/// The request extension through which [`AuditCaller`] reports the caller
/// to the outer audit layer of the same call.
#[derive(Clone, Default)]
pub(crate) struct CallerSlot(pub(crate) Arc<OnceLock<Caller>>);

/// Applies [`AuditCaller`]; made by
/// [`Auditor::caller_layer`](crate::Auditor::caller_layer).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditCallerLayer;

impl<S> Layer<S> for AuditCallerLayer {
    type Service = AuditCaller<S>;
    fn layer(&self, inner: S) -> AuditCaller<S> {
        AuditCaller { inner }
    }
}

/// [`AuditCallerLayer`]: tells an outer [`Audit`](crate::Audit) who the
/// caller turned out to be.
///
/// The audit layer sits *outside* the authentication layer so that it sees
/// refusals — but then the [`Caller`] that layer establishes is inserted
/// into the request after the audit layer let it go. Place an
/// `AuditCallerLayer` *inside* the authentication layer: it hands the
/// `Caller` back to the audit record of the same call.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use kafka_tower::{Caller, RecordBody};
/// use kafka_tower_audit::{Auditor, MemorySink};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sink = MemorySink::new();
/// let auditor = Auditor::builder().sink(sink.clone()).build()?;
/// // A stand-in for an authentication layer: inserts the Caller.
/// let authenticate = tower::util::MapRequestLayer::new(|mut req: Request<RecordBody>| {
///     req.extensions_mut().insert(Caller::new(Some("user-1"), Some("web-shop"), None));
///     req
/// });
/// let service = ServiceBuilder::new()
///     .layer(auditor.layer())        // outside: sees refusals
///     .layer(authenticate)
///     .layer(auditor.caller_layer()) // inside: sees the Caller
///     .service(service_fn(|_req: Request<RecordBody>| async {
///         Ok::<_, Infallible>(Response::new(String::new()))
///     }));
/// service.oneshot(Request::new(RecordBody::from(bytes::Bytes::new()))).await?;
/// auditor.flush().await?;
/// assert_eq!(sink.records()[0].client_id.as_deref(), Some("web-shop"));
/// # Ok(()) }
/// ```
///
/// Reports the request's [`Caller`] to the [`Audit`](crate::Audit) layer
/// outside it, then calls the inner service.
#[derive(Debug, Clone)]
pub struct AuditCaller<S> {
    inner: S,
}

impl<S> AuditCaller<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        AuditCaller { inner }
    }
    kafka_tower::define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for AuditCaller<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        let ext = req.extensions();
        if let (Some(slot), Some(caller)) = (ext.get::<CallerSlot>(), ext.get::<Caller>()) {
            let _ = slot.0.set(caller.clone());
        }
        self.inner.call(req)
    }
}
