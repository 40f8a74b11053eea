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
use crate::body::{Body, BoxError};
use crate::reply::Then;
use crate::router::DuplicateUpgradeType;
use crate::{hop, host, reply};

/// Envoy's route table as a tower layer.
///
/// A [`RouteLayer`] holds [`Route`](crate::Route)s tried in order; the first whose conditions all hold takes
/// the request (Envoy's "first match wins"), and a request no route takes gets `404` (for an
/// upgrade request also `Connection: close`). A route matches on the path without its query
/// (a prefix, an exact path or a regular expression), on headers, and on a [`Runtime`](crate::Runtime)
/// percentage. It then picks a cluster (one, or one of several by weight), rewrites the path
/// and `Host`, adds and removes headers, and leaves its settings in the request extensions
/// for the layers below:
///
/// - for [`Forward`](crate::Forward): [`Cluster`](crate::Cluster), [`AutoHostRewrite`](crate::AutoHostRewrite),
///   [`ResponseTimeout`](crate::ResponseTimeout);
/// - for the [`UpgradeRouter`](crate::UpgradeRouter): [`RouteUpgrades`](crate::RouteUpgrades), [`IdleTimeout`](crate::IdleTimeout), and
///   [`LegacyConfig`](crate::LegacyConfig) on `use_websocket` routes;
/// - for logs: [`MatchedRoute`](crate::MatchedRoute), also copied into the response.
///
/// Put the `RouteLayer` above the `UpgradeRouterLayer`: header conditions then see the request
/// as the client sent it, before hop-by-hop headers are stripped. A header a route adds and a
/// client could nominate in `Connection` for removal belongs in
/// [`UpgradeRouterBuilder::protect_header`](crate::router::UpgradeRouterBuilder::protect_header).
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use switchback::{Body, Cluster, Endpoint, MatchedRoute, Route, RouteLayer, Runtime};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let chat = Cluster::new("chat", [Endpoint::new("127.0.0.1:9001")]);
/// let canary = Cluster::new("chat-canary", [Endpoint::new("127.0.0.1:9002")]);
/// let runtime = Runtime::from_values([("chat.canary".to_owned(), 0)]);
/// let routes = vec![
///     // 0% of the traffic until the runtime value changes.
///     Route::prefix("/ws").runtime_fraction("chat.canary", 0).cluster(canary),
///     Route::prefix("/ws").prefix_rewrite("/socket").cluster(chat).upgrade("websocket", true),
/// ];
/// // In a real stack the layers below are an `UpgradeRouterLayer` and `Forward::routed()`;
/// // this one shows what they would receive.
/// let stack = ServiceBuilder::new()
///     .layer(RouteLayer::new(routes, runtime.clone()).expect("no route names an upgrade type twice"))
///     .service_fn(|req: Request<Body>| async move {
///         let cluster = req.extensions().get::<Cluster>().map_or("none", |c| c.name()).to_owned();
///         let original = req.headers().get("x-envoy-original-path");
///         let seen = format!("{cluster} {} {original:?}", req.uri());
///         Ok::<_, Infallible>(Response::new(Body::from(seen)))
///     });
///
/// let req = Request::get("/ws/room?id=1").body(Body::empty()).unwrap();
/// let res = stack.clone().oneshot(req).await.unwrap();
/// assert_eq!(res.extensions().get::<MatchedRoute>().unwrap().name.as_ref(), "prefix /ws");
/// # use http_body_util::BodyExt;
/// let seen = res.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(seen, r#"chat /socket/room?id=1 Some("/ws/room?id=1")"#);
///
/// runtime.set("chat.canary", 100); // from the next request on, all of it
/// let res = stack.clone().oneshot(Request::get("/ws").body(Body::empty()).unwrap()).await.unwrap();
/// # let seen = res.into_body().collect().await.unwrap().to_bytes();
/// # assert!(seen.starts_with(b"chat-canary "));
///
/// let res = stack.oneshot(Request::get("/other").body(Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(res.status(), 404);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RouteLayer {
    routes: Arc<[Route]>,
    runtime: Runtime,
}

impl RouteLayer {
    /// Routes tried in order (the first match wins), reading `runtime_fraction` percentages
    /// from `runtime`. Fails when a route names an upgrade type twice.
    pub fn new(mut routes: Vec<Route>, runtime: Runtime) -> Result<Self, DuplicateUpgradeType> {
        for route in &mut routes {
            route.action.seal_upgrades()?;
        }
        Ok(Self {
            routes: routes.into(),
            runtime,
        })
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
        // Routes match on the authority the upstream will get, never on a `Host` that an
        // absolute-form target or `:authority` overrides further down.
        if let Err(why) = host::one_authority(&mut req) {
            tracing::debug!(reason = why, "request refused before routing");
            return ResponseFuture::local_then(StatusCode::BAD_REQUEST, why, Then::Close);
        }
        // Envoy's codec refuses a CONNECT with a body before any route is looked up.
        if crate::connect::is_plain_connect(&req)
            && let Err((status, why)) = crate::connect::check(&req)
        {
            return ResponseFuture::local_then(status, why, Then::Close);
        }
        // Only a route's `prefix_rewrite` says what the original path was (Envoy strips a
        // client's own from external requests): an upstream that trusts it must not be lied to.
        req.headers_mut().remove(super::action::ORIGINAL_PATH);
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
fn closes_after_refusal<B>(req: &Request<B>) -> Then {
    let h1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    let upgrade = req.method() == Method::CONNECT
        || (req.headers().contains_key(header::UPGRADE) && hop::connection_has(req.headers(), "upgrade"));
    if h1 && upgrade {
        Then::Close
    } else {
        Then::KeepAlive
    }
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
        Self::local_then(status, message, closes_after_refusal(req))
    }

    fn local_then(status: StatusCode, message: impl Into<String>, then: Then) -> Self {
        crate::metrics::count_status(status);
        Self {
            kind: Kind::Local {
                res: Some(reply::local(status, message, then)),
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
            KindProj::Local { res } => {
                Poll::Ready(Ok(res.take().expect("ResponseFuture polled after completion")))
            }
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
