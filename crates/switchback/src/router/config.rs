//! The router's configuration: accepted upgrade types, their chains, and route overrides.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response, StatusCode};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::body::{Body, BoxError};
use crate::cap::TunnelCap;
use crate::detect::{IgnoreUpgrades, UpgradeType};
use crate::drain::Drain;
use crate::metrics;
use crate::reply::{self, Then};
use crate::tunnel::{TunnelConfig, TunnelObserver};
use crate::ws::WebSocketLimits;

/// A filter chain for one upgrade type: any tower service stack taking `Request<Body>`,
/// usually ending in [`Forward`](crate::Forward). Cloned per request.
#[derive(Clone)]
pub struct Chain {
    inner: BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>,
}

impl Chain {
    /// Wraps a service stack. Its response bodies are kept as [`Body`] when they still are
    /// one, so a router-only chain keeps the joined fast path.
    pub fn new<S, B>(service: S) -> Self
    where
        S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = service
            .map_response(|res: Response<B>| res.map(Body::new))
            .map_err(Into::into);
        Self {
            inner: BoxCloneSyncService::new(inner),
        }
    }
}

impl Service<Request<Body>> for Chain {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future =
        <BoxCloneSyncService<Request<Body>, Response<Body>, BoxError> as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.inner.call(req)
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Chain")
    }
}

/// A listener-level upgrade type: enabled or not, with an optional chain of its own.
#[derive(Clone, Debug)]
pub struct UpgradeConfig {
    pub(crate) ty: UpgradeType,
    pub(crate) enabled: bool,
    pub(crate) chain: Option<Chain>,
    pub(crate) websocket: WebSocketLimits,
}

impl UpgradeConfig {
    /// An enabled type that uses the default chain.
    pub fn new(ty: impl Into<UpgradeType>) -> Self {
        Self {
            ty: ty.into(),
            enabled: true,
            chain: None,
            websocket: WebSocketLimits::default(),
        }
    }

    /// Enables or disables the type at listener level (a route can still enable it).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// WebSocket limits of this type's tunnels (when it is `websocket`); a route's own
    /// ([`Route::websocket`](crate::Route::websocket)) override them field by field. They
    /// keep the joined (splice) path.
    pub fn websocket(mut self, limits: WebSocketLimits) -> Self {
        self.websocket = limits;
        self
    }

    /// Gives the type its own chain, used instead of the default one. A chain that is only
    /// [`Forward`](crate::Forward) ("router only") keeps HTTP-only layers off the payload.
    pub fn chain(mut self, chain: Chain) -> Self {
        self.chain = Some(chain);
        self
    }
}

/// Route-level upgrade overrides, read from the request extensions.
///
/// Envoy's rule: a route entry `enabled: false` rejects the type; `enabled: true` allows it
/// even when the listener lacks or disables it; without a route entry the listener decides.
#[derive(Clone, Debug, Default)]
pub struct RouteUpgrades {
    entries: Arc<[(UpgradeType, bool)]>,
}

impl RouteUpgrades {
    /// Overrides from `(type, enabled)` pairs; fails when two name the same type, as
    /// [`UpgradeRouterBuilder::build`] does.
    pub fn new<I, T>(entries: I) -> Result<Self, DuplicateUpgradeType>
    where
        I: IntoIterator<Item = (T, bool)>,
        T: Into<UpgradeType>,
    {
        let entries: Arc<[(UpgradeType, bool)]> = entries.into_iter().map(|(t, e)| (t.into(), e)).collect();
        no_duplicates(entries.iter().map(|(t, _)| t))?;
        Ok(Self { entries })
    }

    /// The route's word on `ty`, if it has one.
    pub fn get(&self, ty: &UpgradeType) -> Option<bool> {
        self.entries.iter().find(|(t, _)| t == ty).map(|(_, e)| *e)
    }
}

/// The one rule for duplicate upgrade types, wherever a list of them is built.
pub(crate) fn no_duplicates<'a>(
    types: impl Iterator<Item = &'a UpgradeType>,
) -> Result<(), DuplicateUpgradeType> {
    let mut seen: Vec<&UpgradeType> = Vec::new();
    for ty in types {
        if seen.contains(&ty) {
            return Err(DuplicateUpgradeType(ty.clone()));
        }
        seen.push(ty);
    }
    Ok(())
}

/// Two entries of one list (the router's, or a route's) name the same upgrade type (types
/// compare case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateUpgradeType(pub UpgradeType);

impl fmt::Display for DuplicateUpgradeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upgrade type {:?} is configured twice (types are case-insensitive); keep one entry",
            self.0.as_str()
        )
    }
}

impl std::error::Error for DuplicateUpgradeType {}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The listener does not know the type and no route enables it.
    NotConfigured,
    /// The listener disables the type and no route enables it.
    DisabledOnListener,
    /// The matched route disables the type.
    DisabledOnRoute,
    /// A drain has begun: no new tunnels.
    Draining,
    /// The router's or the route's `max_tunnels` are open already.
    TooManyTunnels,
}

impl Rejection {
    /// A short snake_case name, the `reason` of the rejection metric.
    fn as_str(self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::DisabledOnListener => "disabled",
            Self::DisabledOnRoute => "disabled_on_route",
            Self::Draining => "draining",
            Self::TooManyTunnels => "max_tunnels",
        }
    }

    /// Counts the rejection of an upgrade of type `ty`, and answers it (the connection
    /// closes after the answer).
    ///
    /// A type that no configuration names is the client's own token: it is counted as
    /// `other`, so that no client can make the metrics grow (every series is kept forever).
    pub(crate) fn reply(self, ty: &UpgradeType) -> Response<Body> {
        let label = match self {
            Self::NotConfigured => ::metrics::SharedString::const_str(metrics::OTHER_TYPE),
            _ => ty.label(),
        };
        ::metrics::counter!(metrics::UPGRADES_REJECTED, "type" => label, "reason" => self.as_str())
            .increment(1);
        let (status, msg) = match self {
            Self::NotConfigured => (
                StatusCode::FORBIDDEN,
                format!("upgrade type {:?} is not accepted here", ty.as_str()),
            ),
            Self::DisabledOnListener => (
                StatusCode::FORBIDDEN,
                format!("upgrade type {:?} is disabled", ty.as_str()),
            ),
            Self::DisabledOnRoute => (
                StatusCode::FORBIDDEN,
                format!("upgrade type {:?} is disabled on this route", ty.as_str()),
            ),
            Self::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned()),
            Self::TooManyTunnels => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many tunnels are open; try again later".to_owned(),
            ),
        };
        reply::local(status, msg, Then::Close)
    }
}

/// Envoy's decision table for one upgrade.
pub(crate) fn decide(listener: Option<bool>, route: Option<bool>) -> Result<(), Rejection> {
    match (route, listener) {
        (Some(false), _) => Err(Rejection::DisabledOnRoute),
        (Some(true), _) | (None, Some(true)) => Ok(()),
        (None, Some(false)) => Err(Rejection::DisabledOnListener),
        (None, None) => Err(Rejection::NotConfigured),
    }
}

#[derive(Debug)]
pub(crate) struct RouterConfig {
    pub(crate) types: Vec<UpgradeConfig>,
    pub(crate) ignore: IgnoreUpgrades,
    pub(crate) protected: Vec<HeaderName>,
    pub(crate) tunnel: TunnelConfig,
    pub(crate) drain: Drain,
    pub(crate) observer: Option<TunnelObserver>,
    pub(crate) max_tunnels: TunnelCap,
}

impl RouterConfig {
    pub(crate) fn entry(&self, ty: &UpgradeType) -> Option<&UpgradeConfig> {
        self.types.iter().find(|c| &c.ty == ty)
    }
}

/// Builds an [`UpgradeRouterLayer`](super::UpgradeRouterLayer).
#[derive(Debug, Default)]
pub struct UpgradeRouterBuilder {
    types: Vec<UpgradeConfig>,
    ignore: Option<IgnoreUpgrades>,
    protected: Vec<HeaderName>,
    tunnel: TunnelConfig,
    drain: Drain,
    observer: Option<TunnelObserver>,
    max_tunnels: Option<TunnelCap>,
}

impl UpgradeRouterBuilder {
    /// Accepts upgrades of type `ty` through the default chain.
    pub fn upgrade(self, ty: impl Into<UpgradeType>) -> Self {
        self.upgrade_config(UpgradeConfig::new(ty))
    }

    /// Adds a listener-level upgrade type.
    pub fn upgrade_config(mut self, config: UpgradeConfig) -> Self {
        self.types.push(config);
        self
    }

    /// Tokens stripped so the request goes on as plain HTTP (default `tls/*`; `h2c` always).
    pub fn ignore_upgrades(mut self, ignore: IgnoreUpgrades) -> Self {
        self.ignore = Some(ignore);
        self
    }

    /// A header the application adds that a client's `Connection` may not nominate for removal.
    pub fn protect_header(mut self, name: HeaderName) -> Self {
        self.protected.push(name);
        self
    }

    /// How tunnels behave (idle timeout, half-close bound, buffers).
    pub fn tunnel(mut self, config: TunnelConfig) -> Self {
        self.tunnel = config;
        self
    }

    /// The drain handle tunnels register with. Keep a clone to drain them later.
    pub fn drain(mut self, drain: Drain) -> Self {
        self.drain = drain;
        self
    }

    /// The most tunnels this router keeps open at once (handshakes in flight included). Past
    /// it an upgrade is answered `503` before any upstream is contacted. Default: as many as
    /// the process's descriptor limit allows, two descriptors a tunnel after a reserve (the
    /// default `max_connections`), so that tunnels from several listeners or HTTP/2 streams
    /// can't take every descriptor between them.
    pub fn max_tunnels(mut self, max: usize) -> Self {
        self.max_tunnels = Some(TunnelCap::new(max));
        self
    }

    /// Tells `observer` of every tunnel opening and closing.
    pub fn observer(mut self, observer: TunnelObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The layer; fails when two entries name the same type.
    pub fn build(self) -> Result<super::UpgradeRouterLayer, DuplicateUpgradeType> {
        no_duplicates(self.types.iter().map(|c| &c.ty))?;
        Ok(super::UpgradeRouterLayer {
            config: Arc::new(RouterConfig {
                types: self.types,
                ignore: self.ignore.unwrap_or_default(),
                protected: self.protected,
                tunnel: self.tunnel,
                drain: self.drain,
                observer: self.observer,
                max_tunnels: self.max_tunnels.unwrap_or_else(|| {
                    let fds = crate::conn::descriptor_limit();
                    TunnelCap::new(crate::conn::default_max_connections(fds))
                }),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_decision_table() {
        use Rejection::*;
        let cases = [
            // (listener, route, expected)
            (None, None, Err(NotConfigured)),
            (Some(true), None, Ok(())),
            (Some(false), None, Err(DisabledOnListener)),
            (None, Some(true), Ok(())),
            (Some(false), Some(true), Ok(())),
            (Some(true), Some(true), Ok(())),
            (None, Some(false), Err(DisabledOnRoute)),
            (Some(true), Some(false), Err(DisabledOnRoute)),
            (Some(false), Some(false), Err(DisabledOnRoute)),
        ];
        for (listener, route, expected) in cases {
            assert_eq!(
                decide(listener, route),
                expected,
                "listener {listener:?} route {route:?}"
            );
        }
    }

    #[test]
    fn duplicate_types_are_refused_case_insensitively() {
        let err = UpgradeRouterBuilder::default()
            .upgrade("websocket")
            .upgrade("WebSocket")
            .build()
            .unwrap_err();
        assert_eq!(err, DuplicateUpgradeType("websocket".into()));
        assert!(err.to_string().contains("configured twice"));
    }
}
