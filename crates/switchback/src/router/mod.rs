//! [`UpgradeRouterLayer`](crate::UpgradeRouterLayer): the upgrade router, its layer and its response future.

mod config;
mod future;
pub(crate) mod open;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

pub use config::{Chain, DuplicateUpgradeType, RouteUpgrades, UpgradeConfig, UpgradeRouterBuilder};
use config::{Rejection, decide};
pub use future::ResponseFuture;

use crate::body::{Body, BoxError, PreBodyEnd};
use crate::cap::{Holds, TunnelCap};
use crate::conn::ClientConn;
use crate::detect::{Inspection, UpgradeType, inspect};
use crate::ext::{ClientAddr, IdleTimeout, MatchedRoute, MaxStreamDuration, Upgrading};
use crate::handoff::TunnelRead;
use crate::legacy::{self, LegacyConfig};
use crate::reply::Then;
use crate::trace::TraceContext;
use crate::tunnel::Settings;
use crate::tunnel_info::{TunnelInfo, TunnelMode};
use crate::ws::WebSocketLimits;
use crate::{metrics, reply};
use config::RouterConfig;
use open::Pending;
use tokio::sync::oneshot;

/// Builds [`UpgradeRouter`]s: they send plain requests down the default chain and each
/// allowed upgrade down its type's chain, then open the tunnel when the chain answers `101`.
///
/// ```no_run
/// use switchback::{Chain, Cluster, Endpoint, Forward, UpgradeConfig, UpgradeRouterLayer};
/// use tower::ServiceBuilder;
/// use tower_http::limit::RequestBodyLimitLayer;
///
/// let forward = Forward::new(Cluster::new("app", [Endpoint::new("127.0.0.1:8080")]));
/// let router = UpgradeRouterLayer::builder()
///     // WebSocket payload passes through the default chain, body limit included...
///     .upgrade("websocket")
///     // ...while `foo` tunnels skip it: their chain is the router alone.
///     .upgrade_config(UpgradeConfig::new("foo").chain(Chain::new(forward.clone())))
///     .build()
///     .expect("no duplicate types");
/// let stack = ServiceBuilder::new()
///     .layer(router)
///     .layer(RequestBodyLimitLayer::new(64 * 1024))
///     .service(forward);
/// # let _ = stack;
/// ```
#[derive(Clone, Debug)]
pub struct UpgradeRouterLayer {
    config: Arc<RouterConfig>,
}

impl UpgradeRouterLayer {
    /// Starts a configuration: no upgrade types accepted, `tls/*` ignored, default tunnels.
    pub fn builder() -> UpgradeRouterBuilder {
        UpgradeRouterBuilder::default()
    }

    /// The drain handle this router's tunnels register with: the one given to
    /// [`UpgradeRouterBuilder::drain`], else one of the router's own. Drain it on shutdown,
    /// or live tunnels are cut when the process exits.
    pub fn drain(&self) -> &crate::drain::Drain {
        &self.config.drain
    }
}

impl<S> Layer<S> for UpgradeRouterLayer {
    type Service = UpgradeRouter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UpgradeRouter {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The router service; `S` is the default chain.
#[derive(Clone, Debug)]
pub struct UpgradeRouter<S> {
    inner: S,
    config: Arc<RouterConfig>,
}

// === impl UpgradeRouter ===

impl<S, ReqB, ResB> Service<Request<ReqB>> for UpgradeRouter<S>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S>;

    /// Always ready: readiness is awaited per request on the chain that serves it, so a busy
    /// custom chain never holds up plain requests.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let cfg = &self.config;
        let has_body = declares_body(req.headers());
        let ty = match inspect(&mut req, &cfg.ignore, &cfg.protected) {
            Inspection::Plain => {
                let chain = self.inner.clone();
                return ResponseFuture::default_chain(chain.oneshot(req.map(Body::new)), None);
            }
            Inspection::Malformed(why) => {
                return ResponseFuture::ready(reply::local(StatusCode::BAD_REQUEST, why, Then::Close));
            }
            Inspection::NominatesProtected(name) => {
                let msg = format!("the Connection header may not nominate {name:?}");
                return ResponseFuture::ready(reply::local(StatusCode::BAD_REQUEST, msg, Then::Close));
            }
            Inspection::Upgrade(ty) => ty,
        };
        if ty.is_connect()
            && let Err((status, why)) = crate::connect::check(&req)
        {
            return ResponseFuture::ready(reply::local(status, why, Then::Close));
        }
        let legacy = ty.is_websocket() && req.extensions().get::<LegacyConfig>().is_some();
        let entry = cfg.entry(&ty);
        let holds = match self.admit(&req, &ty, entry, legacy) {
            Ok(holds) => holds,
            Err(refusal) => return ResponseFuture::ready(*refusal),
        };
        if legacy {
            return self.legacy(req, ty, has_body, holds);
        }

        let idle = req
            .extensions()
            .get::<IdleTimeout>()
            .map_or(cfg.tunnel.idle_timeout, |t| t.0);
        let longest = req.extensions().get::<MaxStreamDuration>().map(|m| m.0);
        let limits = entry.map(|e| e.websocket).unwrap_or_default();
        let limits = limits.overridden_by(req.extensions().get::<WebSocketLimits>());
        let settings = cfg
            .tunnel
            .settings(idle, longest, ty.is_websocket())
            .with_limits(limits);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = self
            .pending(&mut req, ty.clone(), TunnelMode::Joined, settings, tx, holds)
            .seated(!has_body);
        let pre_body_end = PreBodyEnd::default();
        let mut req = req.map(|b| Body::downstream(has_body.then(|| Body::new(b)), pre_body_end.clone(), rx));
        req.extensions_mut().insert(Upgrading {
            ty,
            has_body,
            pre_body_end,
        });
        match entry.and_then(|e| e.chain.clone()) {
            Some(chain) => ResponseFuture::custom_chain(chain.oneshot(req), pending),
            None => ResponseFuture::default_chain(self.inner.clone().oneshot(req), Some(pending)),
        }
    }
}

impl<S> UpgradeRouter<S> {
    /// What every upgrade goes through before anything is sent upstream, in order: Envoy's
    /// decision table (which a legacy `use_websocket` route skips), the drain, whether the
    /// type and version are proxied at all, and places under the caps. `Err` is the answer.
    fn admit<B>(
        &self,
        req: &Request<B>,
        ty: &UpgradeType,
        entry: Option<&UpgradeConfig>,
        legacy: bool,
    ) -> Result<Holds, Box<Response<Body>>> {
        let cfg = &self.config;
        let refused = |res: Response<Body>| Err(Box::new(res));
        if !legacy {
            let route = req.extensions().get::<RouteUpgrades>().and_then(|r| r.get(ty));
            if let Err(why) = decide(entry.map(|e| e.enabled), route) {
                return refused(why.reply(ty));
            }
        }
        if cfg.drain.is_draining() {
            return refused(Rejection::Draining.reply(ty));
        }
        if legacy && req.version() != http::Version::HTTP_11 {
            let msg = "legacy WebSocket routes serve HTTP/1.1 clients only";
            return refused(reply::local(StatusCode::NOT_IMPLEMENTED, msg, Then::KeepAlive));
        }
        if let Err(msg) = proxied(ty, req.version()) {
            return refused(reply::local(StatusCode::NOT_IMPLEMENTED, msg, Then::Close));
        }
        let Some(holds) = self.places(req) else {
            return refused(Rejection::TooManyTunnels.reply(ty));
        };
        ::metrics::counter!(metrics::UPGRADES_STARTED, "type" => ty.label()).increment(1);
        Ok(holds)
    }

    /// A WebSocket upgrade on a `use_websocket` route, admitted: no chain.
    fn legacy<B>(
        &self,
        mut req: Request<B>,
        ty: UpgradeType,
        has_body: bool,
        holds: Holds,
    ) -> ResponseFuture<S>
    where
        S: Service<Request<Body>>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let cfg = &self.config;
        let route_idle = req.extensions().get::<IdleTimeout>().copied();
        let idle = req
            .extensions()
            .get::<LegacyConfig>()
            .cloned()
            .unwrap_or_default()
            .tunnel_idle_timeout(route_idle, cfg.tunnel.idle_timeout);
        let longest = req.extensions().get::<MaxStreamDuration>().map(|m| m.0);
        let limits = WebSocketLimits::default().overridden_by(req.extensions().get::<WebSocketLimits>());
        let settings = cfg.tunnel.settings(idle, longest, true).with_limits(limits);
        // Nothing reads a legacy client as a body: the connections are always joined.
        let no_reader = tokio::sync::oneshot::channel().0;
        let pending = self
            .pending(&mut req, ty, TunnelMode::Legacy, settings, no_reader, holds)
            .seated(!has_body);
        ResponseFuture::legacy(legacy::proxy(req, has_body, idle), pending)
    }

    /// What opening the tunnel will take once the answer is in.
    fn pending<B>(
        &self,
        req: &mut Request<B>,
        ty: UpgradeType,
        mode: TunnelMode,
        settings: Settings,
        client_reader: oneshot::Sender<TunnelRead>,
        holds: Holds,
    ) -> Pending {
        let cfg = &self.config;
        let seat = match req.version() {
            http::Version::HTTP_2 | http::Version::HTTP_3 => None,
            _ => req.extensions().get::<ClientConn>().map(|c| c.0.clone()),
        };
        Pending {
            info: TunnelInfo {
                id: 0,
                upgrade: ty,
                mode,
                client: req.extensions().get::<ClientAddr>().map(|a| a.0),
                // A CONNECT has no path: its target is the authority.
                path: match req.uri().path() {
                    "" => req.uri().authority().map_or_else(String::new, |a| a.to_string()),
                    path => path.to_owned(),
                },
                route: req.extensions().get::<MatchedRoute>().map(|r| r.name.clone()),
                version: req.version(),
                upstream: None,
                upstream_protocol: None,
                trace: req.extensions().get::<TraceContext>().cloned(),
            },
            observer: cfg.observer.clone(),
            on_upgrade: hyper::upgrade::on(req),
            client_reader,
            settings,
            drain: cfg.drain.clone(),
            holds,
            seat,
        }
    }

    /// Places for one more tunnel under the router's and the route's `max_tunnels` and in
    /// the client connection's listener (which an HTTP/2 tunnel takes a place of its own in),
    /// or `None` when any is full.
    fn places<B>(&self, req: &Request<B>) -> Option<Holds> {
        let take = |cap: Option<&TunnelCap>| match cap {
            Some(cap) => cap.take().map(Some).ok_or(cap.max()),
            None => Ok(None),
        };
        let router = take(Some(&self.config.max_tunnels));
        let route = take(req.extensions().get::<TunnelCap>());
        let (router, route) = match (router, route) {
            (Ok(router), Ok(route)) => (router, route),
            (Err(max), _) | (_, Err(max)) => {
                tracing::warn!(
                    max,
                    path = req.uri().path(),
                    "upgrade refused: max_tunnels reached"
                );
                return None;
            }
        };
        let conn = match req.extensions().get::<ClientConn>() {
            Some(ClientConn(slot)) => match slot.hold(req.version()) {
                Some(hold) => Some(hold),
                None => {
                    tracing::warn!(
                        path = req.uri().path(),
                        "upgrade refused: the listener's max_connections are taken"
                    );
                    return None;
                }
            },
            None => None,
        };
        Some(Holds {
            router,
            route,
            conn,
            upstream: None,
        })
    }
}

/// Whether an allowed upgrade of type `ty` is proxied; the error is the `501`'s message.
///
/// HTTP/1.1 upgrades and HTTP/2 extended CONNECT (RFC 8441, proxied as an HTTP/1.1 upgrade)
/// are; a CONNECT of any HTTP version up to 2 is too.
pub(crate) fn proxied(ty: &UpgradeType, version: http::Version) -> Result<(), &'static str> {
    use http::Version;
    let ok = match version {
        Version::HTTP_11 | Version::HTTP_2 => true,
        Version::HTTP_10 => ty.is_connect(),
        _ => false,
    };
    match ok {
        true => Ok(()),
        false => Err("upgrades are proxied for HTTP/1.1 and HTTP/2 clients only"),
    }
}

/// Whether a request declares an HTTP body of its own (before any upgrade takes over).
pub(crate) fn declares_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Turns a chain's error into a response: the router itself never fails.
fn error_response(e: BoxError, upgrade: bool) -> Response<Body> {
    let (status, msg) = if e.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::GATEWAY_TIMEOUT, "request timeout")
    } else {
        tracing::warn!(error = %e, "filter chain failed");
        (StatusCode::INTERNAL_SERVER_ERROR, "filter chain error")
    };
    reply::local(status, msg, if upgrade { Then::Close } else { Then::KeepAlive })
}
