//! One connection served by hyper, and closed when it waits too long for a
//! request head or, kept alive, for the next request.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tower_service::Service;

use super::Server;
use super::activity::{Activity, InFlight};
use super::io::GuardedIo;
use crate::BoxError;

/// hyper's per-connection buffer bound: a response waiting on a slow reader
/// holds at most this much in hyper, beside the one frame the body builds.
const MAX_BUFFER: usize = 64 * 1024;

/// Serves `io` with `service` under `server`'s limits until the peer or the
/// server is done with it.
pub(super) async fn serve<I, S, B>(server: &Server, io: I, service: S)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Activity::new();
    let io = TokioIo::new(GuardedIo::new(
        io,
        Arc::clone(&activity),
        server.stall_timeout,
    ));
    let service = Tracked {
        service,
        activity: Arc::clone(&activity),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_BUFFER);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let timeouts = server.timeouts();
    loop {
        let changed = activity.changed();
        let deadline = activity.deadline(timeouts);
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = changed => {}
            () = expired => {
                if activity.deadline(timeouts).is_some_and(|now| now <= tokio::time::Instant::now()) {
                    tracing::debug!("closing a connection that waited too long for a request");
                    return;
                }
            }
        }
    }
}

/// The service, counting the requests being answered on its connection.
struct Tracked<S> {
    service: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let mut service = self.service.clone();
        Box::pin(async move {
            poll_fn(|cx| service.poll_ready(cx)).await?;
            let response = service.call(request).await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's activity when dropped.
    struct TrackedBody<B> {
        #[pin]
        body: B,
        _in_flight: InFlight,
    }
}

impl<B: Body> Body for TrackedBody<B>
where
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
