//! [`ResponseFuture`] of the [`JsonSchema`](crate::JsonSchema) service.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{request, Request, Response};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::layer::JsonSchemaLayer;
use crate::violation::{SchemaViolation, ViolationKind};
use kafka_tower::refusal::RefusalBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The response future of [`JsonSchema`](crate::JsonSchema): reads the
    /// body, validates it, then calls the inner service — or answers a
    /// refusal.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        Reading {
            #[pin]
            collect: Collect<Limited<B>>,
            pending: Option<(request::Parts, S, JsonSchemaLayer, String)>,
        },
        Calling { #[pin] future: S::Future },
        Refused { response: Option<Response<Bytes>> },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    pub(crate) fn call(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling { future },
        }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Refused {
                response: Some(response),
            },
        }
    }

    pub(crate) fn reading(
        collect: Collect<Limited<B>>,
        parts: request::Parts,
        service: S,
        layer: JsonSchemaLayer,
        topic: String,
    ) -> Self {
        ResponseFuture {
            state: State::Reading {
                collect,
                pending: Some((parts, service, layer, topic)),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<RefusalBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    return future
                        .poll(cx)
                        .map(|r| r.map(|res| res.map(RefusalBody::inner)));
                }
                StateProj::Refused { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(RefusalBody::refusal)));
                }
                StateProj::Reading { collect, pending } => {
                    let collected = ready!(collect.poll(cx));
                    let (parts, mut service, layer, topic) = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let schemas = &layer.inner;
                    let checked = match collected {
                        Ok(c) => {
                            let bytes = c.to_bytes();
                            schemas.validate(&topic, &bytes).map(|()| bytes)
                        }
                        Err(e) if e.is::<LengthLimitError>() => Err(schemas.too_large(&topic)),
                        Err(e) => Err(SchemaViolation::new(
                            ViolationKind::Unreadable,
                            &topic,
                            format!("the body could not be read: {e}"),
                        )),
                    };
                    match checked {
                        Ok(bytes) => State::Calling {
                            future: service.call(Request::from_parts(parts, B::from(bytes))),
                        },
                        Err(v) => State::Refused {
                            response: Some(schemas.refusal(v)),
                        },
                    }
                }
            };
            this.state.set(next);
        }
    }
}
