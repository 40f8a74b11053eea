//! Legacy WebSocket mode: see [`LegacyConfig`](crate::LegacyConfig).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use crate::body::{Body, BoxError};
use crate::cluster::Cluster;
use crate::detect::UpgradeType;
use crate::ext::IdleTimeout;
use crate::forward::{attempt::Attempts, upstream};
use crate::metrics::HandshakeFailure;
use crate::retry::{RetryOn, RetryPolicy};

/// Settings of a route's legacy WebSocket mode: Envoy's old `use_websocket` routes (with
/// their `websocket_config`).
///
/// On a route with [`Route::use_websocket`](crate::Route::use_websocket), a WebSocket upgrade
/// skips the upgrade decision table and every filter chain. Switchback opens a fresh TCP
/// connection to an endpoint of the route's cluster (trying further endpoints up to
/// [`LegacyConfig::max_connect_attempts`]), writes the request head with the route's rewrites
/// applied, and relays the upstream's answer. After a `101` it copies bytes both ways without
/// interpreting them, so any WebSocket framing passes. Requests on the route that are not
/// WebSocket upgrades are ordinary HTTP through the default chain.
///
/// **Where this differs from Envoy.** Envoy's old mode never looked at the upstream's answer:
/// it joined the two connections as soon as the upstream was connected, so a refusal (say a
/// `403`, or a `200`) left a raw pipe through which a client could smuggle requests that the
/// proxy never parsed, past any route or filter. Switchback reads the answer: only a `101`
/// opens the tunnel; anything else is relayed with `Connection: close`, both connections are
/// closed, and no byte the client sent after its request reaches the upstream. The route's
/// `timeout` does not apply (as in Envoy, where the answer was just tunnel bytes): the
/// tunnel's idle timeout bounds the wait for it instead. Redirects, retries, rate limits and
/// shadowing don't apply either.
///
/// Failures: no cluster or no endpoint in it, `503`; connect failure or connect timeout, `504`
/// (as Envoy's old mode); an upstream that closes before answering, `502`. Legacy tunnels are
/// counted by the router's [`Drain`](crate::Drain), refused with `503` while it drains, and
/// reported to its observer and metrics as [`TunnelMode::Legacy`](crate::TunnelMode::Legacy).
///
/// ```
/// use std::time::Duration;
/// use switchback::{Cluster, Endpoint, Forward, LegacyConfig, Route, RouteLayer, Runtime, UpgradeRouterLayer};
/// use tower::ServiceBuilder;
///
/// let chat = Cluster::new("chat", [Endpoint::new("10.0.0.1:80"), Endpoint::new("10.0.0.2:80")]);
/// let legacy = LegacyConfig::new()
///     .idle_timeout(Duration::from_secs(60))
///     .max_connect_attempts(2); // a dead first endpoint is skipped
/// let routes = vec![Route::prefix("/chat").cluster(chat).use_websocket(legacy)];
/// let stack = ServiceBuilder::new()
///     .layer(RouteLayer::new(routes, Runtime::new()).expect("valid routes"))
///     // No "websocket" entry is needed here: legacy routes bypass the decision table.
///     .layer(UpgradeRouterLayer::builder().build().expect("valid"))
///     .service(Forward::routed());
/// # let _ = stack;
/// ```
#[derive(Clone, Debug)]
pub struct LegacyConfig {
    idle_timeout: Idle,
    max_connect_attempts: usize,
}

/// A legacy route's own idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    /// The route's idle timeout, else the router's.
    Inherit,
    Off,
    After(Duration),
}

impl Default for LegacyConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Idle::Inherit,
            max_connect_attempts: 1,
        }
    }
}

impl LegacyConfig {
    /// Defaults: the route's (else the router's) idle timeout, one connect attempt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends a legacy tunnel when no byte moved either way for this long. It also bounds the
    /// wait for the upstream's answer.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = Idle::After(t);
        self
    }

    /// Legacy tunnels on this route never end for being idle (nor does the wait for the
    /// upstream's answer).
    pub fn no_idle_timeout(mut self) -> Self {
        self.idle_timeout = Idle::Off;
        self
    }

    /// How many endpoints to try connecting to, round robin, before answering `504`
    /// (at least 1).
    pub fn max_connect_attempts(mut self, n: usize) -> Self {
        self.max_connect_attempts = n.max(1);
        self
    }
}

impl LegacyConfig {
    /// The idle timeout of a tunnel on this route: its own, else the route's (`route`), else
    /// the router's.
    pub(crate) fn tunnel_idle_timeout(
        &self,
        route: Option<IdleTimeout>,
        router: Option<Duration>,
    ) -> Option<Duration> {
        match self.idle_timeout {
            Idle::Inherit => route.map_or(router, |t| t.0),
            Idle::Off => None,
            Idle::After(t) => Some(t),
        }
    }
}

/// The answer to a legacy upgrade, boxed: this path is per connection, not per byte.
pub(crate) type LegacyFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Proxies a WebSocket upgrade on a legacy route: a `101` carries the upstream's connection
/// back to the router (which opens the tunnel) in its extensions. `has_body`: the request
/// declared an HTTP body of its own (the router strips `Transfer-Encoding` before we see it).
/// `idle` bounds the wait for the upstream's answer.
pub(crate) fn proxy<B>(req: Request<B>, has_body: bool, idle: Option<Duration>) -> LegacyFuture
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Box::pin(run(req, has_body, idle))
}

async fn run<B>(req: Request<B>, has_body: bool, idle: Option<Duration>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let ty = UpgradeType::new("websocket");
    let Some(cluster) = req.extensions().get::<Cluster>().cloned() else {
        let (status, message) = (StatusCode::SERVICE_UNAVAILABLE, "no cluster for this request");
        return upstream::fail(&ty, HandshakeFailure::Connect, status, message);
    };
    let connects = req
        .extensions()
        .get::<LegacyConfig>()
        .map_or(1, |c| c.max_connect_attempts);
    // Envoy's old mode: connect failures are tried on further endpoints and answer 504;
    // nothing else is retried, and the route's `timeout` doesn't apply: the idle timeout
    // bounds the wait for the answer instead.
    let policy = RetryPolicy::new()
        .retry_on(RetryOn::CONNECT_FAILURE)
        .num_retries(u32::try_from(connects - 1).unwrap_or(u32::MAX));
    let mut attempts = Attempts::new(idle, policy).connect_failed(StatusCode::GATEWAY_TIMEOUT);
    let (parts, body) = req.into_parts();
    // Without a declared body, send none: a body hyper can't see the end of would make it add
    // `Transfer-Encoding: chunked` to a GET.
    let body = if has_body { Body::new(body) } else { Body::empty() };
    // No layer sees a legacy tunnel: the router joins the connections. Its task waits for the
    // server to write the 101, so bytes the client sent after its request go upstream only
    // then.
    let tunnel = upstream::Tunnel {
        ty: &ty,
        client: Body::empty(),
        client_untouched: true,
    };
    upstream::switch(&cluster, &mut attempts, parts, body, tunnel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_bounds() {
        let c = LegacyConfig::new();
        assert_eq!(c.idle_timeout, Idle::Inherit);
        assert_eq!(c.max_connect_attempts, 1);
        let c = c.max_connect_attempts(0).no_idle_timeout();
        assert_eq!(c.max_connect_attempts, 1, "at least one attempt");
        assert_eq!(c.idle_timeout, Idle::Off, "explicitly off, not inherited");
    }
}
