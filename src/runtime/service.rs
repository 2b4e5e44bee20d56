//! [`RecordService`]: the one name for "a service the runtime can serve
//! records to", and [`BatchService`] for batches of them.

use std::future::Future;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::batch::RecordBatch;
use crate::{BoxError, RecordBody};

mod sealed {
    pub trait Sealed<Req> {}
}

/// Declares a sealed alias for "a `Clone` service over `http::Request<$req>`
/// answering `http::Response<B>` whose future, error and body can cross
/// threads", implemented for every such service.
macro_rules! service_alias {
    ($(#[$doc:meta])* $name:ident, $req:ty) => {
        $(#[$doc])*
        pub trait $name: sealed::Sealed<$req> + Clone + Send + 'static {
            /// The body of the service's responses.
            type ResponseBody: http_body::Body<Data = Self::Data, Error = Self::BodyError>
                + Send
                + 'static;
            /// The body's data chunks.
            type Data: bytes::Buf + Send;
            /// The body's error.
            type BodyError: Into<BoxError>;
            /// The service's error.
            type Error: Into<BoxError>;
            /// The service's response future.
            type Future: Future<Output = Result<Response<Self::ResponseBody>, Self::Error>>
                + Send
                + 'static;

            /// [`Service::poll_ready`].
            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;

            /// [`Service::call`].
            fn call(&mut self, req: Request<$req>) -> Self::Future;
        }

        impl<S, B> sealed::Sealed<$req> for S
        where
            S: Service<Request<$req>, Response = Response<B>> + Clone + Send + 'static,
            S::Future: Send + 'static,
            S::Error: Into<BoxError>,
            B: http_body::Body + Send + 'static,
            B::Data: Send,
            B::Error: Into<BoxError>,
        {
        }

        impl<S, B> $name for S
        where
            S: Service<Request<$req>, Response = Response<B>> + Clone + Send + 'static,
            S::Future: Send + 'static,
            S::Error: Into<BoxError>,
            B: http_body::Body + Send + 'static,
            B::Data: Send,
            B::Error: Into<BoxError>,
        {
            type ResponseBody = B;
            type Data = B::Data;
            type BodyError = B::Error;
            type Error = S::Error;
            type Future = S::Future;

            #[inline]
            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
                Service::poll_ready(self, cx)
            }

            #[inline]
            fn call(&mut self, req: Request<$req>) -> S::Future {
                Service::call(self, req)
            }
        }
    };
}

service_alias!(
/// A Tower service the consumer runtime can serve records to: any `Clone`
/// service over `http::Request<RecordBody>` answering `http::Response<B>`,
/// whose future, error and body can cross threads — a `service_fn`, a
/// `ServiceBuilder` stack, an `axum::Router`.
///
/// An alias in the manner of tower's `MakeService`: it is implemented for
/// every such service and cannot be implemented by hand, so the bound is
/// written once here instead of on every function that serves records.
///
/// ```
/// use kafka_tower::runtime::RecordService;
/// use kafka_tower::RecordBody;
///
/// fn assert_servable<S: RecordService>(_: &S) {}
///
/// let service = tower::service_fn(|_req: http::Request<RecordBody>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// assert_servable(&service);
/// assert_servable(&axum::Router::new());
/// ```
    RecordService,
    RecordBody
);

service_alias!(
/// A Tower service the consumer runtime can serve batches of records to
/// ([`Consumer::serve_batches`](super::Consumer::serve_batches)): any
/// `Clone` service over `http::Request<`[`RecordBatch`]`>` answering
/// `http::Response<B>`, whose future, error and body can cross threads.
/// Sealed, as [`RecordService`].
///
/// ```
/// use kafka_tower::runtime::{BatchService, RecordBatch};
///
/// fn assert_batch_servable<S: BatchService>(_: &S) {}
///
/// let service = tower::service_fn(|req: http::Request<RecordBatch>| async move {
///     let _bulk: Vec<_> = req.into_body().into_iter().map(|r| r.into_body()).collect();
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// assert_batch_servable(&service);
/// ```
    BatchService,
    RecordBatch
);
