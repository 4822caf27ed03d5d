use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Empty;

use crate::BoxError;

/// The HTTP request the client sends through its transport: a GET with an
/// empty body. Named here so that a layer of one's own
/// ([`ClientBuilder::layer`](super::ClientBuilder::layer)) can be written
/// against it without depending on `http`, `bytes` and `http-body-util`
/// (the crate re-exports [`http`](crate::http) for headers and the like).
///
/// ```
/// use zeroeventhub::client::HttpRequest;
/// use zeroeventhub::http::HeaderValue;
///
/// fn tag(mut request: HttpRequest) -> HttpRequest {
///     request.headers_mut().insert("x-consumer", HeaderValue::from_static("billing"));
///     request
/// }
/// let layer = tower::util::MapRequestLayer::new(tag);
/// # let _ = layer;
/// ```
pub type HttpRequest = Request<Empty<Bytes>>;

/// An HTTP client the feed client can send its requests through: any
/// `tower::Service<http::Request<Empty<Bytes>>>` that answers with an
/// `http::Response` of any body, whose errors box.
///
/// hyper-util's client, a tower stack around it (auth, tracing, a proxy),
/// and the crate's own `FeedService` (an in-memory transport for tests) all
/// are. The trait is implemented for every such service and cannot be
/// implemented otherwise: implement `tower::Service` instead.
pub trait HttpService: sealed::Sealed {
    /// The response body.
    type ResponseBody: Body<Error: Into<BoxError>>;
    /// The service's error.
    type Error: Into<BoxError>;
    /// The future of a response.
    type Future: Future<Output = Result<Response<Self::ResponseBody>, Self::Error>>;

    /// Waits until the service can take a request, as
    /// `tower::Service::poll_ready`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;

    /// Sends a request, as `tower::Service::call`.
    fn call(&mut self, request: Request<Empty<Bytes>>) -> Self::Future;
}

impl<S, B> HttpService for S
where
    S: tower_service::Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Error: Into<BoxError>>,
{
    type ResponseBody = B;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(self, cx)
    }

    fn call(&mut self, request: Request<Empty<Bytes>>) -> Self::Future {
        tower_service::Service::call(self, request)
    }
}

mod sealed {
    use super::*;

    pub trait Sealed {}

    impl<S, B> Sealed for S where
        S: tower_service::Service<Request<Empty<Bytes>>, Response = Response<B>>
    {
    }
}
