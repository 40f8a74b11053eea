//! Route matching: see [`RouteLayer`](crate::RouteLayer).

mod action;
mod matcher;
mod runtime;
mod service;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

pub use runtime::Runtime;
pub use service::{ResponseFuture, RouteLayer, RouteService};

use crate::cluster::Cluster;
use crate::detect::UpgradeType;
pub(crate) use crate::ext::MatchedRoute;
use crate::ext::{IdleTimeout, MaxStreamDuration, ResponseTimeout};
use crate::legacy::LegacyConfig;
use action::{Action, HostRewrite, Target};
use matcher::{Fraction, HeaderMatch, Matcher, PathMatch};

/// One route: conditions on the request, and what to do with a request that meets them.
///
/// Built with consuming setters. Settings that can't be checked by the type system
/// (`prefix_rewrite`, `host_rewrite_literal`) are checked when set; a route with a bad one
/// answers `500` to the requests it matches, naming the setting, rather than guessing.
#[derive(Clone, Debug)]
pub struct Route {
    name: Arc<str>,
    matcher: Matcher,
    action: Action,
}

impl Route {
    fn with(path: PathMatch) -> Self {
        Self {
            name: path.to_string().into(),
            matcher: Matcher::new(path),
            action: Action::default(),
        }
    }

    /// Takes requests whose path starts with `p` (case-sensitive, textual: `/ws` also takes
    /// `/wsx`).
    pub fn prefix(p: impl Into<String>) -> Self {
        Self::with(PathMatch::Prefix(p.into()))
    }

    /// Takes CONNECT requests (Envoy's `connect_matcher`): HTTP/1 CONNECT and HTTP/2 CONNECT
    /// without `:protocol`, and nothing else. Path conditions never take a CONNECT, which has
    /// no path. See [`ConnectConfig`](crate::ConnectConfig).
    pub fn connect_matcher() -> Self {
        Self::with(PathMatch::Connect)
    }

    /// Takes requests whose path is exactly `p`.
    pub fn path(p: impl Into<String>) -> Self {
        Self::with(PathMatch::Exact(p.into()))
    }

    /// Takes requests whose path contains a match of `re` (a search: anchor with `^...$` to
    /// match the whole path).
    pub fn regex(re: &str) -> Result<Self, regex::Error> {
        Ok(Self::path_regex(regex::Regex::new(re)?))
    }

    /// [`Route::regex`] with a pattern compiled already.
    pub fn path_regex(re: regex::Regex) -> Self {
        Self::with(PathMatch::Regex(re))
    }

    /// Names the route in logs and [`MatchedRoute`]. Default: the path condition, e.g.
    /// `prefix /ws`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into().into();
        self
    }

    /// Adds a header condition: with `exact`, the header's whole value equals it (several
    /// lines of the header compare as one value joined with `,`); with `None`, the header is
    /// present. `host` also matches an HTTP/2 request's `:authority`. All header conditions
    /// must hold.
    pub fn header(mut self, name: HeaderName, exact: Option<String>) -> Self {
        self.matcher.headers.push(HeaderMatch { name, exact });
        self
    }

    /// Takes only a share of the requests that meet the other conditions: a uniform draw in
    /// `0..100` must fall below the runtime value of `key` (or `default_percent` while the key
    /// is unset; above 100 acts as 100). A request that loses the draw goes on to the next
    /// route.
    pub fn runtime_fraction(mut self, key: impl Into<String>, default_percent: u8) -> Self {
        self.matcher.fraction = Some(Fraction {
            key: key.into(),
            default: default_percent,
        });
        self
    }

    /// Sends the route's requests to `cluster`. Without a cluster the request goes on without
    /// one, to [`Forward`](crate::Forward)'s default.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.action.target = Target::One(cluster);
        self
    }

    /// Sends each request to one of `clusters`, drawn with probability proportional to its
    /// integer weight. When every weight is zero the route answers `503`.
    pub fn weighted_clusters<I: IntoIterator<Item = (Cluster, u32)>>(mut self, clusters: I) -> Self {
        self.action.target = Target::weighted(clusters);
        self
    }

    /// Replaces the matched prefix with `s` (for `path` and `regex` routes: the whole path),
    /// keeps the query, and sends the original target in `x-envoy-original-path`. As in Envoy,
    /// `/prefix` rewritten to `/` turns `/prefix/x` into `//x`; a result that would not start
    /// with `/` gets one.
    pub fn prefix_rewrite(mut self, s: impl Into<String>) -> Self {
        let s = s.into();
        if let Err(m) = action::check_prefix_rewrite(&s) {
            self.action.misconfig.get_or_insert(m);
        }
        self.action.prefix_rewrite = Some(s);
        self
    }

    /// Sets `Host` (and an HTTP/2 request's authority) to `s`. Replaces an earlier
    /// `auto_host_rewrite(true)`.
    pub fn host_rewrite_literal(mut self, s: impl Into<String>) -> Self {
        let s = s.into();
        match HostRewrite::literal(&s) {
            Ok(h) => self.action.host_rewrite = Some(h),
            Err(m) => {
                self.action.misconfig.get_or_insert(m);
            }
        }
        self
    }

    /// With `true`, sets `Host` to the hostname of the endpoint [`Forward`](crate::Forward)
    /// (or a legacy route) connects to: [`Endpoint::host`](crate::Endpoint::host). Replaces an
    /// earlier `host_rewrite_literal`.
    pub fn auto_host_rewrite(mut self, on: bool) -> Self {
        if on {
            self.action.host_rewrite = Some(HostRewrite::Auto);
        } else if matches!(self.action.host_rewrite, Some(HostRewrite::Auto)) {
            self.action.host_rewrite = None;
        }
        self
    }

    /// Appends a header to the request (Envoy's default `APPEND_IF_EXISTS_OR_ADD`). Removals
    /// happen first, so removing and adding the same name sets it.
    pub fn request_header_to_add(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.action.headers_to_add.push((name, value));
        self
    }

    /// Removes a header from the request. `host` is never removed.
    pub fn request_header_to_remove(mut self, name: HeaderName) -> Self {
        self.action.headers_to_remove.push(name);
        self
    }

    /// How long the upstream may take to send its response head (for an upgrade, its `101`).
    /// Overrides [`Forward::response_timeout`](crate::Forward::response_timeout). Legacy
    /// WebSocket tunnels ignore it.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.action.timeout = Some(ResponseTimeout(Some(t)));
        self
    }

    /// No limit on how long the upstream may take to answer on this route.
    pub fn no_timeout(mut self) -> Self {
        self.action.timeout = Some(ResponseTimeout(None));
        self
    }

    /// Idle timeout of the tunnels this route opens. Overrides the router's
    /// [`TunnelConfig`](crate::TunnelConfig).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.action.idle_timeout = Some(IdleTimeout(Some(t)));
        self
    }

    /// The longest a tunnel this route opens may live (Envoy's `max_stream_duration`); then
    /// it closes as on a drain (WebSocket: `1001` each way at frame boundaries). Overrides
    /// the router's [`TunnelConfig::max_stream_duration`](crate::TunnelConfig::max_stream_duration).
    pub fn max_stream_duration(mut self, longest: Duration) -> Self {
        self.action.max_stream_duration = Some(MaxStreamDuration(longest));
        self
    }

    /// WebSocket limits of this route's tunnels: its set fields override those of the
    /// upgrade type's ([`UpgradeConfig::websocket`](crate::UpgradeConfig::websocket)), on
    /// new-style and legacy (`use_websocket`) tunnels alike.
    pub fn websocket(mut self, limits: crate::ws::WebSocketLimits) -> Self {
        self.action.websocket = Some(limits);
        self
    }

    /// The most tunnels this route keeps open at once (handshakes in flight included); past
    /// it an upgrade is answered `503` before any upstream is contacted. Clones of the route
    /// share the count.
    pub fn max_tunnels(mut self, max: usize) -> Self {
        self.action.max_tunnels = Some(crate::cap::TunnelCap::new(max));
        self
    }

    /// When requests and upgrade handshakes on this route are tried again, on another
    /// endpoint (Envoy's route `retry_policy`). Overrides
    /// [`Forward::retry_policy`](crate::Forward::retry_policy).
    pub fn retry_policy(mut self, policy: crate::RetryPolicy) -> Self {
        self.action.retry_policy = Some(policy);
        self
    }

    /// Tunnels this route opens never end for being idle.
    pub fn no_idle_timeout(mut self) -> Self {
        self.action.idle_timeout = Some(IdleTimeout(None));
        self
    }

    /// Enables or disables an upgrade type on this route (Envoy's route `upgrade_configs`).
    /// Naming a type twice is an error when the [`RouteLayer`] is built, as in
    /// [`UpgradeRouterBuilder::build`](crate::UpgradeRouterBuilder::build).
    pub fn upgrade(mut self, ty: impl Into<UpgradeType>, enabled: bool) -> Self {
        self.action.upgrades.push((ty.into(), enabled));
        self
    }

    /// Terminates CONNECT on this route (Envoy's `connect_config`): the proxy answers `200`
    /// and relays raw TCP to the route's cluster instead of forwarding the CONNECT. CONNECT
    /// must still be allowed, here with [`Route::upgrade`] or at listener level. See
    /// [`ConnectConfig`](crate::ConnectConfig).
    pub fn connect_config(mut self, config: crate::ConnectConfig) -> Self {
        self.action.connect = Some(config);
        self
    }

    /// Proxies WebSocket upgrades on this route in the legacy raw mode (see
    /// [`LegacyConfig`](crate::LegacyConfig)), bypassing the upgrade decision table and every filter chain.
    /// Other requests on the route are unaffected.
    pub fn use_websocket(mut self, config: LegacyConfig) -> Self {
        self.action.legacy = Some(config);
        self
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{Request, Response, StatusCode, header};
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::body::Body;
    use crate::cluster::Endpoint;
    use crate::ext::AutoHostRewrite;
    use crate::router::RouteUpgrades;

    /// What the layer below the routes received.
    #[derive(Debug)]
    struct Seen {
        uri: String,
        headers: http::HeaderMap,
        ext: http::Extensions,
    }

    async fn route(routes: Vec<Route>, req: Request<Body>) -> (Response<Body>, Option<Seen>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let svc = ServiceBuilder::new()
            .layer(RouteLayer::new(routes, Runtime::new()).unwrap())
            .service_fn(move |req: Request<Body>| {
                let (parts, _) = req.into_parts();
                let _ = tx.send(Seen {
                    uri: parts.uri.to_string(),
                    headers: parts.headers,
                    ext: parts.extensions,
                });
                async { Ok::<_, Infallible>(Response::new(Body::empty())) }
            });
        let res = svc.oneshot(req).await.unwrap_or_else(|e| match e {});
        (res, rx.try_recv().ok())
    }

    fn get(uri: &str) -> http::request::Builder {
        Request::get(uri).header(header::HOST, "front")
    }

    fn cluster(name: &str) -> Cluster {
        Cluster::new(name, [Endpoint::new("127.0.0.1:1")])
    }

    #[tokio::test]
    async fn first_match_wins_and_the_route_lands_in_both_extensions() {
        let routes = vec![
            Route::path("/a").name("exact-a").cluster(cluster("one")),
            Route::prefix("/").cluster(cluster("two")),
        ];
        let (res, seen) = route(routes.clone(), get("/a").body(Body::empty()).unwrap()).await;
        let seen = seen.unwrap();
        assert_eq!(seen.ext.get::<Cluster>().unwrap().name(), "one");
        assert_eq!(seen.ext.get::<MatchedRoute>().unwrap().name.as_ref(), "exact-a");
        assert_eq!(
            res.extensions().get::<MatchedRoute>().unwrap().name.as_ref(),
            "exact-a"
        );

        let (res, seen) = route(routes, get("/a/b").body(Body::empty()).unwrap()).await;
        assert_eq!(seen.unwrap().ext.get::<Cluster>().unwrap().name(), "two");
        assert_eq!(
            res.extensions().get::<MatchedRoute>().unwrap().name.as_ref(),
            "prefix /"
        );
    }

    #[tokio::test]
    async fn no_match_is_a_404_that_closes_upgrade_connections_only() {
        let routes = vec![Route::prefix("/ws")];
        let (res, seen) = route(routes.clone(), get("/x").body(Body::empty()).unwrap()).await;
        assert!(seen.is_none());
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(res.headers().get(header::CONNECTION).is_none());

        let upgrade = get("/x")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(Body::empty())
            .unwrap();
        let (res, _) = route(routes, upgrade).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn a_route_naming_an_upgrade_type_twice_is_refused_when_the_table_is_built() {
        let twice = Route::prefix("/")
            .upgrade("websocket", true)
            .upgrade("WebSocket", false);
        let err = RouteLayer::new(vec![Route::prefix("/ok"), twice], Runtime::new()).unwrap_err();
        assert_eq!(err.0, UpgradeType::new("websocket"));
        assert!(RouteUpgrades::new([("foo", true), ("FOO", true)]).is_err());
        assert!(RouteUpgrades::new([("foo", true), ("bar", false)]).is_ok());
    }

    #[tokio::test]
    async fn actions_fill_the_request() {
        let r = Route::regex("^/v[0-9]+/chat$")
            .unwrap()
            .prefix_rewrite("/chat")
            .host_rewrite_literal("back.internal")
            .request_header_to_remove(HeaderName::from_static("x-drop"))
            .request_header_to_remove(header::HOST)
            .request_header_to_add(HeaderName::from_static("x-add"), HeaderValue::from_static("1"))
            .timeout(Duration::from_secs(3))
            .no_idle_timeout()
            .upgrade("foo", true)
            .upgrade("bar", false)
            .use_websocket(LegacyConfig::new().max_connect_attempts(3));
        let req = get("/v2/chat?x=1")
            .header("x-drop", "1")
            .header("x-add", "0")
            .body(Body::empty())
            .unwrap();
        let (_, seen) = route(vec![r], req).await;
        let seen = seen.unwrap();
        assert_eq!(seen.uri, "/chat?x=1");
        assert_eq!(seen.headers["x-envoy-original-path"], "/v2/chat?x=1");
        assert_eq!(seen.headers[header::HOST], "back.internal");
        assert!(seen.headers.get("x-drop").is_none());
        let added: Vec<_> = seen.headers.get_all("x-add").iter().collect();
        assert_eq!(added, ["0", "1"], "appended");
        assert_eq!(
            seen.ext.get::<ResponseTimeout>(),
            Some(&ResponseTimeout(Some(Duration::from_secs(3))))
        );
        assert_eq!(seen.ext.get::<IdleTimeout>(), Some(&IdleTimeout(None)));
        let upgrades = seen.ext.get::<RouteUpgrades>().unwrap();
        assert_eq!(upgrades.get(&"FOO".into()), Some(true));
        assert_eq!(upgrades.get(&"bar".into()), Some(false));
        assert!(seen.ext.get::<LegacyConfig>().is_some());
        assert!(
            seen.ext.get::<Cluster>().is_none(),
            "no cluster named: Forward's default"
        );
        assert!(seen.ext.get::<AutoHostRewrite>().is_none());
    }

    #[tokio::test]
    async fn a_clients_original_path_never_reaches_the_upstream() {
        let forged = |uri| {
            get(uri)
                .header("x-envoy-original-path", "/admin")
                .body(Body::empty())
                .unwrap()
        };
        let (_, seen) = route(vec![Route::prefix("/")], forged("/x")).await;
        assert!(seen.unwrap().headers.get("x-envoy-original-path").is_none());
        let (_, seen) = route(vec![Route::prefix("/v1").prefix_rewrite("/v2")], forged("/v1/x")).await;
        assert_eq!(
            seen.unwrap().headers["x-envoy-original-path"],
            "/v1/x",
            "the route's own"
        );
    }

    #[tokio::test]
    async fn routes_match_the_authority_of_an_absolute_form_target() {
        let routes = || {
            vec![
                Route::prefix("/")
                    .header(header::HOST, Some("admin.internal".into()))
                    .cluster(cluster("admin")),
                Route::prefix("/")
                    .header(header::HOST, Some("public.example".into()))
                    .cluster(cluster("public")),
            ]
        };
        let req = Request::get("http://admin.internal/secret")
            .header(header::HOST, "public.example")
            .body(Body::empty())
            .unwrap();
        let (_, seen) = route(routes(), req).await;
        let seen = seen.unwrap();
        assert_eq!(seen.ext.get::<Cluster>().unwrap().name(), "admin");
        assert_eq!(seen.headers[header::HOST], "admin.internal");
        let two_hosts = Request::get("/x")
            .header(header::HOST, "public.example")
            .header(header::HOST, "admin.internal")
            .body(Body::empty())
            .unwrap();
        let (res, seen) = route(routes(), two_hosts).await;
        assert_eq!(res.status(), 400);
        assert!(seen.is_none(), "refused before routing");
    }

    #[tokio::test]
    async fn untouched_settings_leave_no_trace() {
        let (_, seen) = route(vec![Route::prefix("/")], get("/x?y").body(Body::empty()).unwrap()).await;
        let seen = seen.unwrap();
        assert_eq!(seen.uri, "/x?y");
        assert!(seen.headers.get("x-envoy-original-path").is_none());
        assert!(seen.ext.get::<ResponseTimeout>().is_none());
        assert!(seen.ext.get::<IdleTimeout>().is_none());
        assert!(seen.ext.get::<RouteUpgrades>().is_none());
        assert!(seen.ext.get::<LegacyConfig>().is_none());
    }

    #[tokio::test]
    async fn http2_host_rewrite_changes_the_authority_too() {
        let req = Request::get("http://front/x")
            .version(http::Version::HTTP_2)
            .body(Body::empty())
            .unwrap();
        let (_, seen) = route(vec![Route::prefix("/").host_rewrite_literal("back:81")], req).await;
        let seen = seen.unwrap();
        assert_eq!(seen.uri, "http://back:81/x");
        assert_eq!(seen.headers[header::HOST], "back:81");
    }

    #[tokio::test]
    async fn auto_host_rewrite_leaves_a_marker_for_forward() {
        let r = Route::prefix("/")
            .host_rewrite_literal("lit")
            .auto_host_rewrite(true);
        let (_, seen) = route(vec![r], get("/").body(Body::empty()).unwrap()).await;
        let seen = seen.unwrap();
        assert!(seen.ext.get::<AutoHostRewrite>().is_some());
        assert_eq!(seen.headers[header::HOST], "front", "the literal was replaced");
        let off = Route::prefix("/")
            .auto_host_rewrite(true)
            .auto_host_rewrite(false);
        let (_, seen) = route(vec![off], get("/").body(Body::empty()).unwrap()).await;
        assert!(seen.unwrap().ext.get::<AutoHostRewrite>().is_none());
    }

    #[tokio::test]
    async fn broken_routes_answer_instead_of_guessing() {
        let bad = Route::prefix("/").prefix_rewrite("/a?b");
        let (res, seen) = route(vec![bad], get("/").body(Body::empty()).unwrap()).await;
        assert!(seen.is_none());
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let zero = Route::prefix("/").weighted_clusters([(cluster("a"), 0)]);
        let (res, seen) = route(vec![zero], get("/").body(Body::empty()).unwrap()).await;
        assert!(seen.is_none());
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn default_names_show_the_condition() {
        assert_eq!(&*Route::prefix("/ws").name, "prefix /ws");
        assert_eq!(&*Route::path("/x").name, "path /x");
        assert_eq!(&*Route::regex("^/a$").unwrap().name, "regex ^/a$");
        assert!(Route::regex("(").is_err());
    }
}
