//! The configuration as a tower stack.
//!
//! Outermost first: the forwarded headers ([`ForwardedLayer`]: `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Request-Id`, whose id the access log reads), the W3C trace context
//! ([`TraceContextLayer`]: `traceparent` to the upstream, a span per request), the access log,
//! [`RouteLayer`] (matches the route once), the
//! [`UpgradeRouter`](switchback::UpgradeRouter) (listener `upgrade_configs`, `ignore_upgrades`,
//! tunnel idle timeout, drain, access-log observer), then the default chain: `http_filters`
//! in order, ending in [`Forward::routed`](switchback::Forward::routed).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response};
use hyper::body::Incoming;
use switchback::{
    BoxError, Cluster, Drain, Endpoint, ForwardedLayer, HealthCheck, IgnoreUpgrades, LbPolicy, LegacyConfig,
    OutlierDetection, RetryOn, RetryPolicy, Route, RouteLayer, SystemResolver, TunnelConfig, UpgradeConfig,
    UpgradeRouterLayer,
};
use switchback_config::{self as config, Config, PathMatch, RouteTarget};
use tower::{Service, ServiceBuilder};

use crate::access_log::AccessLog;
use crate::fatal::Fatal;
use crate::filters;
use crate::reload::RuntimeValues;
use switchback::trace::TraceContextLayer;

/// What every stack is built with, the same across reloads: the drain its tunnels register
/// with, the runtime values its routes read, the access log it writes.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    /// Counts, lists and drains the tunnels.
    pub(crate) drain: Drain,
    /// The runtime values, some perhaps set on the admin endpoint.
    pub(crate) runtime: RuntimeValues,
    /// A line per request and two per tunnel.
    pub(crate) log: AccessLog,
}

impl Shared {
    /// What `config` asks for: the drain lists its tunnels only with an admin endpoint to
    /// show them (a listed tunnel costs a little more).
    pub(crate) fn new(config: &Config) -> Result<Self, Fatal> {
        let drain = if config.admin.is_some() {
            Drain::listing()
        } else {
            Drain::new()
        };
        drain.set_close_window(config.drain_close_window);
        Ok(Self {
            drain,
            runtime: RuntimeValues::new(&config.runtime),
            log: AccessLog::open(&config.access_log)?,
        })
    }
}

/// Builds the proxy's service from `config`, its routes sending to `clusters` (see
/// [`clusters`]), with what every stack shares.
pub(crate) fn build(
    config: &Config,
    clusters: &[Cluster],
    shared: &Shared,
) -> Result<
    impl Service<
        Request<Incoming>,
        Response = Response<
            impl http_body::Body<Data = Bytes, Error = impl Into<BoxError> + use<>> + Send + 'static + use<>,
        >,
        Error = Infallible,
        Future: Send + 'static,
    >
    + Clone
    + Send
    + Sync
    + 'static
    + use<>,
    Fatal,
> {
    let routes = routes(config, clusters)?;
    let router = router(config, &shared.drain, &shared.log)?;
    let default_chain = filters::chain(&config.http_filters);
    let runtime = shared.runtime.runtime().clone();
    Ok(ServiceBuilder::new()
        .layer(forwarded(config))
        // The trace context before the access log, which records its trace id.
        .layer(
            TraceContextLayer::new()
                .sampling(config.tracing.as_ref().map_or(100.0, |t| f64::from(t.sampling))),
        )
        .layer(shared.log.layer())
        .layer(RouteLayer::new(routes, runtime).map_err(|e| Fatal::new(e.to_string()))?)
        .layer(router)
        .service(default_chain))
}

/// The forwarded-identity layer from the top-level Envoy-named fields. `X-Forwarded-Proto`
/// is `https` for requests that came over a TLS listener.
fn forwarded(config: &Config) -> ForwardedLayer {
    ForwardedLayer::new()
        .use_remote_address(config.use_remote_address)
        .xff_num_trusted_hops(config.xff_num_trusted_hops)
        .x_forwarded_proto(config.x_forwarded_proto)
        .generate_request_id(config.generate_request_id)
        .preserve_external_request_id(config.preserve_external_request_id)
}

/// The upgrade router's layer: listener-level types (each with its own chain when it has
/// `filters`), ignored tokens, tunnel settings, the drain handle and the access-log observer.
fn router(config: &Config, drain: &Drain, log: &AccessLog) -> Result<UpgradeRouterLayer, Fatal> {
    let mut builder = UpgradeRouterLayer::builder()
        .ignore_upgrades(IgnoreUpgrades::new(&config.ignore_upgrades))
        .tunnel(match off_if_zero(config.stream_idle_timeout) {
            Some(t) => TunnelConfig::new().idle_timeout(t),
            None => TunnelConfig::new().no_idle_timeout(),
        })
        .drain(drain.clone())
        .observer(log.observer());
    if let Some(max) = config.max_tunnels {
        builder = builder.max_tunnels(usize::try_from(max).unwrap_or(usize::MAX));
    }
    for u in &config.upgrade_configs {
        let mut entry = UpgradeConfig::new(u.upgrade_type.as_str()).enabled(u.enabled);
        if let Some(filters) = &u.filters {
            entry = entry.chain(filters::chain(filters));
        }
        if let Some(limits) = &u.websocket {
            entry = entry.websocket(websocket_limits(limits));
        }
        builder = builder.upgrade_config(entry);
    }
    for name in protected_headers(config) {
        builder = builder.protect_header(name);
    }
    builder
        .build()
        .map_err(|e| Fatal::new(format!("upgrade_configs: {e}")))
}

/// Every request header the proxy adds (filters and routes): a client's `Connection` header
/// may not nominate them for removal.
fn protected_headers(config: &Config) -> Vec<HeaderName> {
    let mut names = filters::added_request_headers(&config.http_filters);
    for u in &config.upgrade_configs {
        names.extend(filters::added_request_headers(
            u.filters.as_deref().unwrap_or_default(),
        ));
    }
    for r in &config.routes {
        names.extend(r.request_headers_to_add.names().cloned());
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// The clusters, in the file's order, with their health checks. One `Cluster` value each:
/// every route to it shares its endpoints' state (active counts, ejection, health), which the
/// health checker and the admin endpoint see too.
pub(crate) fn clusters(config: &Config) -> Result<Vec<Cluster>, String> {
    config
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let endpoints = c.endpoints.iter().map(|e| {
                let endpoint = Endpoint::new(e.address.as_str());
                match &e.hostname {
                    Some(h) => endpoint.hostname(h.as_str()),
                    None => endpoint,
                }
            });
            let mut cluster = Cluster::new(c.name.as_str(), endpoints)
                .connect_timeout(c.connect_timeout)
                .close_connections_on_host_health_failure(c.close_connections_on_host_health_failure)
                .lb_policy(match c.lb_policy {
                    config::LbPolicy::RoundRobin => LbPolicy::RoundRobin,
                    config::LbPolicy::LeastRequest => LbPolicy::LeastRequest,
                    config::LbPolicy::Random => LbPolicy::Random,
                });
            if let Some(o) = c.outlier_detection {
                cluster = cluster.outlier_detection(
                    OutlierDetection::new()
                        .consecutive_gateway_failure(o.consecutive_gateway_failure)
                        .base_ejection_time(o.base_ejection_time)
                        .max_ejection_time(o.max_ejection_time)
                        .max_ejection_percent(o.max_ejection_percent),
                );
            }
            // An endpoint given by name stands for every address it resolves to (Envoy's
            // STRICT_DNS), looked up off the request path.
            if c.endpoints
                .iter()
                .any(|e| e.address.parse::<std::net::SocketAddr>().is_err())
            {
                cluster = cluster.dns_discovery(SystemResolver, c.dns_refresh_rate);
            }
            for h in &c.health_checks {
                let check = match &h.path {
                    Some(path) => HealthCheck::http(path.as_str()),
                    None => HealthCheck::tcp(),
                };
                cluster = cluster.health_check(
                    check
                        .interval(h.interval)
                        .timeout(h.timeout)
                        .unhealthy_threshold(h.unhealthy_threshold.get())
                        .healthy_threshold(h.healthy_threshold.get()),
                );
            }
            if let Some(tls) = crate::tls::upstream(c, &format!("clusters[{i}]"))? {
                cluster = cluster.tls(tls);
            }
            if c.http2_protocol_options.is_some() {
                cluster = cluster.http2(true);
            }
            Ok(cluster)
        })
        .collect()
}

/// The routes, in order, named `routes[i]` after their place in the file.
fn routes(config: &Config, clusters: &[Cluster]) -> Result<Vec<Route>, Fatal> {
    let by_name: HashMap<&str, &Cluster> = clusters.iter().map(|c| (c.name(), c)).collect();
    let cluster = |at: &str, name: &str| {
        by_name.get(name).map(|c| (*c).clone()).ok_or_else(|| {
            Fatal::new(format!(
                "{at}: unknown cluster {name:?}; define it under `clusters`"
            ))
        })
    };
    let mut out = Vec::with_capacity(config.routes.len());
    for (i, r) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        let mut route = match &r.matcher.path {
            PathMatch::Prefix(p) => Route::prefix(p.as_str()),
            PathMatch::Path(p) => Route::path(p.as_str()),
            PathMatch::Regex(re) => Route::path_regex(re.regex().clone()),
            PathMatch::ConnectMatcher(_) => Route::connect_matcher(),
        }
        .name(at.as_str());
        for h in &r.matcher.headers {
            route = route.header(h.name.clone(), h.exact.clone());
        }
        if let Some(f) = &r.matcher.runtime_fraction {
            route = route.runtime_fraction(f.runtime_key.as_str(), f.default);
        }
        route = match &r.target {
            RouteTarget::Cluster(name) => route.cluster(cluster(&format!("{at}.cluster"), name)?),
            RouteTarget::WeightedClusters(list) => {
                let weighted = list
                    .iter()
                    .enumerate()
                    .map(|(j, w)| {
                        Ok((
                            cluster(&format!("{at}.weighted_clusters[{j}]"), &w.name)?,
                            w.weight,
                        ))
                    })
                    .collect::<Result<Vec<_>, Fatal>>()?;
                route.weighted_clusters(weighted)
            }
        };
        if let Some(p) = &r.prefix_rewrite {
            route = route.prefix_rewrite(p.as_str());
        }
        if let Some(h) = &r.host_rewrite_literal {
            route = route.host_rewrite_literal(h.as_str());
        }
        route = route.auto_host_rewrite(r.auto_host_rewrite);
        for (name, value) in r.request_headers_to_add.iter() {
            route = route.request_header_to_add(name.clone(), value.clone());
        }
        for name in &r.request_headers_to_remove {
            route = route.request_header_to_remove(name.clone());
        }
        route = match r.timeout.and_then(off_if_zero) {
            Some(t) => route.timeout(t),
            None => route.no_timeout(),
        };
        route = match off_if_zero(r.idle_timeout) {
            Some(t) => route.idle_timeout(t),
            None => route.no_idle_timeout(),
        };
        if let Some(longest) = r.max_stream_duration {
            route = route.max_stream_duration(longest);
        }
        if let Some(max) = r.max_tunnels {
            route = route.max_tunnels(usize::try_from(max).unwrap_or(usize::MAX));
        }
        if let Some(p) = &r.retry_policy {
            // The config crate checked the tokens.
            let on = p.retry_on.parse::<RetryOn>().unwrap_or(RetryOn::CONNECT_FAILURE);
            let mut policy = RetryPolicy::new().retry_on(on).num_retries(p.num_retries);
            if let Some(t) = p.per_try_timeout {
                policy = policy.per_try_timeout(t);
            }
            route = route.retry_policy(policy);
        }
        for u in &r.upgrade_configs {
            route = route.upgrade(u.upgrade_type.as_str(), u.enabled);
            if let Some(c) = u.connect_config {
                route = route.connect_config(switchback::ConnectConfig::new().allow_post(c.allow_post));
            }
        }
        if let Some(limits) = &r.websocket {
            route = route.websocket(websocket_limits(limits));
        }
        if r.use_websocket {
            // u32 to usize only narrows on 16-bit targets; saturate there.
            let attempts =
                usize::try_from(r.websocket_config.max_connect_attempts.get()).unwrap_or(usize::MAX);
            let legacy = LegacyConfig::new().max_connect_attempts(attempts);
            route = route.use_websocket(match off_if_zero(r.websocket_config.idle_timeout) {
                Some(t) => legacy.idle_timeout(t),
                None => legacy.no_idle_timeout(),
            });
        }
        out.push(route);
    }
    Ok(out)
}

/// `0s` turns a timeout off.
fn off_if_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// The library's WebSocket limits for the config's.
fn websocket_limits(config: &switchback_config::WebSocketLimits) -> switchback::ws::WebSocketLimits {
    let mut limits = switchback::ws::WebSocketLimits::new();
    if let Some(n) = config.max_frames_per_second {
        limits = limits.max_frames_per_second(n);
    }
    if let Some(n) = config.max_message_size {
        limits = limits.max_message_size(n);
    }
    if let Some(n) = config.max_upstream_message_size {
        limits = limits.max_upstream_message_size(n);
    }
    if let Some(d) = config.ping_interval {
        limits = limits.ping_interval(d);
    }
    if let Some(d) = config.pong_timeout {
        limits = limits.pong_timeout(d);
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
listen: 127.0.0.1:10000
upgrade_configs:
  - upgrade_type: websocket
  - upgrade_type: foo
    enabled: false
    filters: []
  - upgrade_type: bar
    filters:
      - request_headers_to_add: { x-bar: "1" }
http_filters:
  - request_body_limit: 1024
  - request_headers_to_add: { x-proxied-by: switchback }
  - response_headers_to_add: { x-served-by: switchback }
  - concurrency_limit: 1000
  - timeout: 30s
runtime:
  canary: 10
routes:
  - match:
      prefix: /ws
      headers: [{ name: x-canary, exact: "1" }, { name: x-any }]
      runtime_fraction: { runtime_key: canary, default: 100 }
    weighted_clusters: [{ name: echo, weight: 80 }, { name: other, weight: 20 }]
    prefix_rewrite: /echo
    host_rewrite_literal: echo.internal
    request_headers_to_add: { x-route: ws }
    request_headers_to_remove: [x-debug]
    timeout: 15s
    idle_timeout: 0s
    upgrade_configs:
      - { upgrade_type: foo, enabled: true }
  - match: { regex: "^/legacy/[0-9]+$" }
    cluster: echo
    auto_host_rewrite: true
    use_websocket: true
    websocket_config: { idle_timeout: 10s, max_connect_attempts: 3 }
  - match: { path: /exact }
    cluster: other
clusters:
  - name: echo
    connect_timeout: 1s
    endpoints:
      - 127.0.0.1:9001
      - { address: 127.0.0.1:9002, hostname: echo.internal }
  - name: other
    endpoints: [127.0.0.1:9003]
"#;

    #[test]
    fn the_documented_schema_builds() {
        let config = Config::from_yaml_str(FULL, "full.yaml").unwrap();
        assert_eq!(routes(&config, &clusters(&config).unwrap()).unwrap().len(), 3);
        assert!(
            router(
                &config,
                &Drain::new(),
                &AccessLog::to_writer(Box::new(std::io::sink()))
            )
            .is_ok()
        );
    }

    #[test]
    fn protected_headers_are_every_added_request_header() {
        let config = Config::from_yaml_str(FULL, "full.yaml").unwrap();
        let names: Vec<_> = protected_headers(&config)
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        assert_eq!(names, ["x-bar", "x-proxied-by", "x-route"]);
    }

    #[test]
    fn zero_turns_timeouts_off() {
        assert_eq!(off_if_zero(Duration::ZERO), None);
        assert_eq!(off_if_zero(Duration::from_secs(1)), Some(Duration::from_secs(1)));
    }
}
