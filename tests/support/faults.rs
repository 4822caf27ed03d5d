//! Faults on demand: a plan that decides, at random but reproducibly, when
//! to inject one, and a feed transport whose answers break off mid-page.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Response;
use http_body::{Body, Frame};
use tower::Service;
use zeroeventhub::BoxError;

/// The kinds of fault a test injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The connection breaks in the middle of a page.
    CutMidPage,
    /// The handler fails after writing its effects.
    Handler,
    /// The runtime is dropped wherever it is, and a new one starts.
    Restart,
    /// The store's commit fails.
    Commit,
}

/// Decides when to inject faults, up to a total, and counts them by kind.
#[derive(Debug, Clone)]
pub(crate) struct FaultPlan {
    inner: Arc<Mutex<PlanState>>,
}

#[derive(Debug)]
struct PlanState {
    rng: u64,
    target: usize,
    injected: Vec<Fault>,
}

impl FaultPlan {
    /// A plan of `target` faults, drawn from `seed`.
    pub(crate) fn new(target: usize, seed: u64) -> Self {
        FaultPlan {
            inner: Arc::new(Mutex::new(PlanState {
                rng: seed | 1,
                target,
                injected: Vec::new(),
            })),
        }
    }

    /// Whether to inject `fault` now, with probability `percent`/100,
    /// until the target is reached.
    pub(crate) fn inject(&self, fault: Fault, percent: u64) -> bool {
        let mut state = self.inner.lock().unwrap();
        let draw = state.next() % 100;
        if state.injected.len() < state.target && draw < percent {
            state.injected.push(fault);
            true
        } else {
            false
        }
    }

    /// Records a fault injected by the test itself (a restart).
    pub(crate) fn record(&self, fault: Fault) {
        self.inner.lock().unwrap().injected.push(fault);
    }

    /// A number below `bound`.
    pub(crate) fn below(&self, bound: u64) -> u64 {
        self.inner.lock().unwrap().next() % bound.max(1)
    }

    /// Faults injected so far.
    pub(crate) fn injected(&self) -> usize {
        self.inner.lock().unwrap().injected.len()
    }

    /// Whether the target is reached.
    pub(crate) fn done(&self) -> bool {
        let state = self.inner.lock().unwrap();
        state.injected.len() >= state.target
    }

    /// Faults injected of `kind`.
    pub(crate) fn count(&self, kind: Fault) -> usize {
        let state = self.inner.lock().unwrap();
        state
            .injected
            .iter()
            .filter(|fault| **fault == kind)
            .count()
    }
}

impl PlanState {
    /// xorshift64: reproducible and dependency-free.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

/// A feed service whose answers break off after a few bytes when the plan
/// injects [`Fault::CutMidPage`]: in-process, the client reads an error
/// from the body; mounted in a server, the connection is aborted.
#[derive(Clone)]
pub(crate) struct Cutting<S> {
    inner: S,
    plan: FaultPlan,
    percent: u64,
}

impl<S> Cutting<S> {
    /// `inner`, its answers cut with probability `percent`/100.
    pub(crate) fn new(inner: S, plan: FaultPlan, percent: u64) -> Self {
        Cutting {
            inner,
            plan,
            percent,
        }
    }
}

impl<S, R, B> Service<R> for Cutting<S>
where
    S: Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<CutBody<B>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<CutBody<B>>, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // Armed here, counted when the cut happens: a short page may end
        // before its cut.
        let cut_after = (!self.plan.done() && self.plan.below(100) < self.percent)
            .then(|| 1 + self.plan.below(3000) as usize);
        let plan = self.plan.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| CutBody {
                inner: body,
                cut_after,
                plan,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A body that fails after `cut_after` bytes, if set.
    pub(crate) struct CutBody<B> {
        #[pin]
        inner: B,
        cut_after: Option<usize>,
        plan: FaultPlan,
    }
}

impl<B> Body for CutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(left) = this.cut_after else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        if *left == 0 {
            this.plan.record(Fault::CutMidPage);
            *this.cut_after = None;
            let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected cut");
            return Poll::Ready(Some(Err(cut.into())));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let take = data.remaining().min(*left);
                    *left -= take;
                    Poll::Ready(Some(Ok(Frame::data(data.split_to(take)))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other.map_err(Into::into),
        }
    }
}
