//! [`RouteLayer`] and its service: match once, apply the route, call the next layer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{MatchedRoute, Route, Runtime};
use crate::{Body, BoxError, hop, reply};

/// Matches each request against a route table and applies the first matching route. See the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct RouteLayer {
    routes: Arc<[Route]>,
    runtime: Runtime,
}

impl RouteLayer {
    /// Routes tried in order (the first match wins), reading `runtime_fraction` percentages
    /// from `runtime`.
    pub fn new(routes: Vec<Route>, runtime: Runtime) -> Self {
        Self {
            routes: routes.into(),
            runtime,
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            routes: self.routes.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

/// The service [`RouteLayer`] builds: answers `404` when no route matches, otherwise applies
/// the route and calls `S`.
#[derive(Clone, Debug)]
pub struct RouteService<S> {
    inner: S,
    routes: Arc<[Route]>,
    runtime: Runtime,
}

// === impl RouteService ===

impl<S, B, RB> Service<Request<B>> for RouteService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let found = self
            .routes
            .iter()
            .find_map(|r| r.matcher.matches(&req, &self.runtime).map(|matched| (r, matched)));
        let Some((route, matched)) = found else {
            tracing::debug!(path = req.uri().path(), "no route matched");
            return ResponseFuture::local(StatusCode::NOT_FOUND, "no route matched", &req);
        };
        let prefix = route.matcher.path.is_prefix();
        if let Err(why) = route.action.apply(&mut req, matched, prefix, &route.name) {
            tracing::warn!(route = %route.name, reason = %why, "route cannot serve the request");
            return ResponseFuture::local(why.status(), why.to_string(), &req);
        }
        tracing::trace!(route = %route.name, "route matched");
        ResponseFuture {
            kind: Kind::Inner {
                fut: self.inner.call(req),
                matched: Some(MatchedRoute {
                    name: route.name.clone(),
                }),
            },
        }
    }
}

/// An upgrade request whose connection must close after a local answer: its client may
/// already be sending tunnel bytes that must not be read as HTTP. HTTP/2 has no such thing
/// (nor a `Connection` header).
fn closes_after_refusal<B>(req: &Request<B>) -> bool {
    let h1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    let upgrade = req.method() == Method::CONNECT
        || (req.headers().contains_key(header::UPGRADE) && hop::connection_has(req.headers(), "upgrade"));
    h1 && upgrade
}

pin_project! {
    /// Response future of [`RouteService`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Local { res: Option<Response<Body>> },
        Inner { #[pin] fut: F, matched: Option<MatchedRoute> },
    }
}

impl<F> ResponseFuture<F> {
    fn local<B>(status: StatusCode, message: impl Into<String>, req: &Request<B>) -> Self {
        crate::metrics_status(status);
        Self {
            kind: Kind::Local {
                res: Some(reply::local(status, message, closes_after_refusal(req))),
            },
        }
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Local { res } => Poll::Ready(Ok(res.take().unwrap_or_default())),
            KindProj::Inner { fut, matched } => {
                let mut res = ready!(fut.poll(cx))?.map(Body::new);
                if let Some(m) = matched.take() {
                    res.extensions_mut().insert(m);
                }
                Poll::Ready(Ok(res))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
