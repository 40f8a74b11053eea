//! The router's response future.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;
use tower::util::Oneshot;

use super::Chain;
use super::open::Pending;
use crate::body::{Body, BoxError};
use crate::legacy::LegacyFuture;

pin_project! {
    /// Response future of [`UpgradeRouter`](super::UpgradeRouter).
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        kind: Kind<S>,
        upgrade: Option<Box<Pending>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S>
    where
        S: Service<Request<Body>>,
    {
        Ready { res: Option<Response<Body>> },
        Default { #[pin] fut: Oneshot<S, Request<Body>> },
        Custom { #[pin] fut: Oneshot<Chain, Request<Body>> },
        Legacy { fut: LegacyFuture },
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    pub(super) fn ready(res: Response<Body>) -> Self {
        Self {
            kind: Kind::Ready { res: Some(res) },
            upgrade: None,
        }
    }

    pub(super) fn default_chain(fut: Oneshot<S, Request<Body>>, upgrade: Option<Pending>) -> Self {
        Self {
            kind: Kind::Default { fut },
            upgrade: upgrade.map(Box::new),
        }
    }

    pub(super) fn legacy(fut: LegacyFuture, upgrade: Pending) -> Self {
        Self {
            kind: Kind::Legacy { fut },
            upgrade: Some(Box::new(upgrade)),
        }
    }

    pub(super) fn custom_chain(fut: Oneshot<Chain, Request<Body>>, upgrade: Pending) -> Self {
        Self {
            kind: Kind::Custom { fut },
            upgrade: Some(Box::new(upgrade)),
        }
    }
}

impl<S, B> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.kind.project() {
            KindProj::Ready { res } => Ok(res.take().expect("ResponseFuture polled after completion")),
            KindProj::Default { fut } => ready!(fut.poll(cx)).map(|r| r.map(Body::new)).map_err(Into::into),
            KindProj::Custom { fut } => ready!(fut.poll(cx)),
            KindProj::Legacy { fut } => Ok(ready!(fut.as_mut().poll(cx))),
        };
        let upgrade = this.upgrade.take();
        let res = match (result, upgrade) {
            (Ok(res), Some(pending)) => pending.open(res),
            (Ok(res), None) => res,
            (Err(e), upgrade) => super::error_response(e, upgrade.is_some()),
        };
        // Every response the router hands back is counted here, its own refusals included.
        crate::metrics::count_status(res.status());
        Poll::Ready(Ok(res))
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
