//! [`Jwt`], the service that verifies each request's bearer token.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::claims::Anonymous;
use crate::future::ResponseFuture;
use crate::layer::JwtLayer;
use crate::verify::Outcome;
use kafka_tower::mapping::topic_of;
use kafka_tower::refusal::RefusalBody;

/// Verifies the `Authorization: Bearer` token of each request before the
/// inner service sees it; see the [crate docs](crate).
///
/// On success the request reaches the inner service with a
/// [`VerifiedClaims`](crate::VerifiedClaims) (or [`Anonymous`]) extension; on
/// failure the inner service is not called and the response is a refusal.
#[derive(Clone, Debug)]
pub struct Jwt<S> {
    inner: S,
    layer: JwtLayer,
}

impl<S> Jwt<S> {
    /// Wraps `inner` with the verification configured in `layer`.
    pub fn new(inner: S, layer: JwtLayer) -> Self {
        Jwt { inner, layer }
    }

    /// The layer that wraps services in `Jwt`: `layer` itself.
    #[deprecated(note = "the identity: use the `JwtLayer` directly")]
    pub fn layer(layer: JwtLayer) -> JwtLayer {
        layer
    }

    kafka_tower::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Jwt<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<RefusalBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        match self.layer.verifier.check(&req) {
            Ok(Outcome::Verified(claims)) => {
                req.extensions_mut().insert(claims.caller().clone());
                req.extensions_mut().insert(claims);
                ResponseFuture::inner(self.inner.call(req))
            }
            Ok(Outcome::Anonymous) => {
                req.extensions_mut().insert(Anonymous);
                ResponseFuture::inner(self.inner.call(req))
            }
            Err(rejection) => {
                let topic = topic_of(&req);
                ResponseFuture::refused(crate::layer::refusal_response(&rejection, topic))
            }
        }
    }
}
