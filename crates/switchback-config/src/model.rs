//! The validated, effective configuration: every default filled in.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::{Serialize, Serializer};

use crate::duration;
use crate::parsed::{self, HeadersToAdd, PathRegex, UpgradeToken};

/// Default `listen` address: `127.0.0.1:10000`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10000);
/// The most `workers` a configuration may ask for.
pub const MAX_WORKERS: usize = 1024;
/// Default `drain_timeout`: 30 seconds.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default route `timeout`: 15 seconds, as Envoy's route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default `stream_idle_timeout`: 5 minutes.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default cluster `connect_timeout`: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `ignore_upgrades`: `["tls/*"]`.
pub const DEFAULT_IGNORE_UPGRADES: &[UpgradeToken] = &[UpgradeToken::from_static("tls/*")];
/// Default `websocket_config.max_connect_attempts`: 1 (no retry).
pub const DEFAULT_MAX_CONNECT_ATTEMPTS: NonZeroU32 = NonZeroU32::MIN;

/// The whole configuration of the `switchback` binary, validated and with every default
/// filled in. Serializing it (e.g. to JSON for an admin `GET /config`) yields the effective
/// configuration in the same shape as the YAML file, durations written like `"30s"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The proxy's listeners, each plaintext (HTTP/1.1 and HTTP/2 with prior knowledge on one
    /// port) or TLS (HTTP/2 by ALPN). `listen: ADDR` in the file is one plaintext listener.
    /// Default: one plaintext listener on `127.0.0.1:10000`.
    pub listeners: Vec<crate::Listener>,
    /// The admin endpoint: its address and, optionally, the token that lets callers other
    /// than loopback ones in. Default: none (no admin listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<crate::AdminEndpoint>,
    /// Worker threads serving the listener, each with its own event loop and its own
    /// `SO_REUSEPORT` listener; a connection and its tunnel stay on the worker that accepted
    /// it. Default: one per CPU the process may use. At most 1024.
    pub workers: NonZeroUsize,
    /// How long a graceful shutdown waits for in-flight requests and upgraded streams
    /// before closing them. Default `30s`; `0s` closes them at once.
    #[serde(serialize_with = "duration::serialize")]
    pub drain_timeout: Duration,
    /// Tunnels still open at the drain deadline close at moments spread over this window,
    /// so that their clients don't all reconnect in the same instant. Default `10s`; `0s`:
    /// all at once.
    #[serde(serialize_with = "duration::serialize")]
    pub drain_close_window: Duration,
    /// The unix socket a new process started with `--takeover` takes the listening sockets
    /// from (binary takeover). Absent: takeover off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeover_socket: Option<PathBuf>,
    /// Default idle timeout of upgraded (tunnelled) streams: a stream with no bytes in either
    /// direction for this long is closed. Default `5m`; `0s` = off (no idle timeout).
    /// Routes inherit it unless they set `idle_timeout`.
    #[serde(serialize_with = "duration::serialize")]
    pub stream_idle_timeout: Duration,
    /// How long a client has to send a whole request head, counted from accept (a connection
    /// that sends nothing is closed then) or from the head's first byte on a kept-alive
    /// connection; on HTTP/2, every HEADERS block from its first frame. Default `10s`
    /// (Envoy's edge recommendation); `0s` is refused.
    #[serde(serialize_with = "duration::serialize")]
    pub request_headers_timeout: Duration,
    /// The largest request head, in KiB (Envoy's name): a larger one is answered `431` and
    /// the connection closed. Default 60, from 8 to 8192.
    pub max_request_headers_kb: u32,
    /// The most header lines a request may have; more is answered `431`. Default 100.
    pub max_headers_count: u32,
    /// The most streams (requests and tunnels) an HTTP/2 client may have open at once on one
    /// connection (Envoy's `http2_protocol_options.max_concurrent_streams`). Default 100
    /// (HAProxy's; Envoy's is 2^31 - 1), from 1 to 2^31 - 1. Each HTTP/2 tunnel also takes a
    /// place under `max_connections`.
    pub max_concurrent_streams: u32,
    /// How long a client connection may sit idle between requests before it is closed
    /// (HTTP/2: GOAWAY first). Envoy's `idle_timeout`; default `1h`; `0s` = never.
    #[serde(serialize_with = "duration::serialize")]
    pub connection_idle_timeout: Duration,
    /// The most client connections open at once, tunnels included. When full, a newcomer
    /// takes the place of the connection that waited longest for a request head or sat idle
    /// longest; when all are busy it gets `503`. Absent: half the descriptor limit, after a
    /// quarter of it (at most 256) is kept back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// The most tunnels open at once (handshakes in flight included); past it an upgrade
    /// gets `503` before any upstream contact. Absent: what the descriptor limit allows, as
    /// for `max_connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tunnels: Option<u64>,
    /// Listener-level upgrade types (YAML `upgrade_configs`), in file order. Default: empty,
    /// i.e. no upgrade type is allowed unless a route enables it. Upgrade types are unique
    /// (case-insensitive).
    pub upgrade_configs: Vec<UpgradeConfig>,
    /// Upgrade tokens that are stripped from the request (`Upgrade` header and the
    /// `upgrade` connection option) so the request is proxied as plain HTTP. A trailing `*`
    /// matches any suffix (`tls/*`). `h2c` is always ignored, whether listed or not.
    /// Default `["tls/*"]`.
    pub ignore_upgrades: Vec<UpgradeToken>,
    /// The default filter chain, in order; the router is implicitly the last element.
    /// Default: empty (router only).
    pub http_filters: Vec<Filter>,
    /// Runtime values by key: percentages `0..=100` used by `runtime_fraction` route
    /// matches for traffic shifting. Default: empty.
    pub runtime: BTreeMap<String, u8>,
    /// Routes, tried in order; the first match wins. Default: empty.
    pub routes: Vec<Route>,
    /// Upstream clusters, referenced by name from routes. Default: empty. Names are unique.
    pub clusters: Vec<Cluster>,
    /// Envoy's `use_remote_address`: the proxy is the edge, so the peer's address is
    /// appended to `X-Forwarded-For` and is the trusted client (unless `xff_num_trusted_hops`
    /// says otherwise). `false`: `X-Forwarded-For` is left alone. Default `true` (Envoy's is
    /// `false`).
    pub use_remote_address: bool,
    /// How many proxies in front append to `X-Forwarded-For` and are trusted to: the
    /// trusted client is the one the outermost of them saw, and their `X-Forwarded-Proto` is
    /// kept. Default 0, at most 64.
    pub xff_num_trusted_hops: u32,
    /// Whether to set `X-Forwarded-Proto` (always `http` until the listener has TLS).
    /// Default `true`.
    pub x_forwarded_proto: bool,
    /// Envoy's `generate_request_id`: a request without a usable `X-Request-Id` gets a UUID
    /// v4; `false` leaves the header alone. Default `true`.
    pub generate_request_id: bool,
    /// Envoy's `preserve_external_request_id`: keep a client's `X-Request-Id` rather than
    /// replace it. Default `true` (Envoy's is `false`).
    pub preserve_external_request_id: bool,
    /// Where the JSON-lines access log goes. Default: standard output (`-`).
    pub access_log: AccessLog,
    /// Where spans are exported (OTLP). Default: none (trace context still propagated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::Tracing>,
}

impl Default for Config {
    /// The configuration of an empty YAML file: every field at its default.
    fn default() -> Self {
        Config {
            listeners: vec![crate::Listener {
                address: DEFAULT_LISTEN,
                tls: None,
            }],
            admin: None,
            workers: default_workers(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_close_window: Duration::from_secs(10),
            takeover_socket: None,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            request_headers_timeout: Duration::from_secs(10),
            max_request_headers_kb: 60,
            max_headers_count: 100,
            max_concurrent_streams: 100,
            connection_idle_timeout: Duration::from_secs(3600),
            max_connections: None,
            max_tunnels: None,
            upgrade_configs: Vec::new(),
            ignore_upgrades: DEFAULT_IGNORE_UPGRADES.to_vec(),
            http_filters: Vec::new(),
            runtime: BTreeMap::new(),
            routes: Vec::new(),
            clusters: Vec::new(),
            use_remote_address: true,
            xff_num_trusted_hops: 0,
            x_forwarded_proto: true,
            generate_request_id: true,
            preserve_external_request_id: true,
            access_log: AccessLog::Stdout,
            tracing: None,
        }
    }
}

/// One worker per CPU the process may use (1 if that can't be known), at most
/// [`MAX_WORKERS`].
#[must_use]
pub fn default_workers() -> NonZeroUsize {
    const MAX: NonZeroUsize = match NonZeroUsize::new(MAX_WORKERS) {
        Some(max) => max,
        None => panic!("MAX_WORKERS is at least 1"),
    };
    std::thread::available_parallelism().map_or(NonZeroUsize::MIN, |n| n.min(MAX))
}

impl Config {
    /// Looks up a cluster by name.
    #[must_use]
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Looks up a listener-level upgrade config by type (case-insensitive).
    #[must_use]
    pub fn upgrade_config(&self, upgrade_type: &str) -> Option<&UpgradeConfig> {
        self.upgrade_configs
            .iter()
            .find(|u| u.upgrade_type.as_str().eq_ignore_ascii_case(upgrade_type))
    }
}

/// One upgrade type, at listener level (top-level `upgrade_configs`) or on a route
/// (`routes[].upgrade_configs`, which overrides `enabled` for that route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradeConfig {
    /// The upgrade token, e.g. `websocket`: lowercased, as upgrade types compare
    /// case-insensitively.
    pub upgrade_type: UpgradeToken,
    /// Whether upgrades of this type are allowed. Default `true`.
    pub enabled: bool,
    /// Listener level only: this type's own filter chain, used instead of `http_filters`
    /// for upgrade requests of this type. `None` (field absent) = use the default chain
    /// (`http_filters`); `Some(vec![])` (`filters: []`) = router only. Always `None` on
    /// route-level entries (a route entry with `filters` is rejected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<Filter>>,
    /// Listener level, `websocket` entries only: limits of every WebSocket tunnel (YAML
    /// `websocket:`); a route's own override them field by field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketLimits>,
    /// Route level, `CONNECT` entries only (Envoy's `connect_config`): the proxy terminates
    /// CONNECT on this route, answering `200` itself and relaying raw TCP to the route's
    /// cluster. Absent: a CONNECT is forwarded to the cluster (an upstream proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_config: Option<ConnectConfig>,
}

/// `connect_config` on a route's `CONNECT` upgrade entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnectConfig {
    /// A POST on the route is terminated too: its body goes to the upstream as raw bytes and
    /// the upstream's bytes come back as the `200`'s body. Default `false`.
    pub allow_post: bool,
}

/// WebSocket limits (YAML `websocket:` on a listener's `websocket` upgrade type, or on a
/// route). They need only frame headers, so they keep the joined (splice) path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebSocketLimits {
    /// The most frames a second from the client (a token bucket allowing a second's worth at
    /// once); past it the client gets `1008`, the upstream `1001`. From 1 to 1 000 000;
    /// absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frames_per_second: Option<u32>,
    /// The largest message from the client, in payload bytes (a fragmented one's frames
    /// together); past it the client gets `1009`, the upstream `1001`, and the message is
    /// never delivered whole. Absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<u64>,
    /// The largest message from the upstream; past it the upstream gets `1009`, the client
    /// `1001`. Absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_upstream_message_size: Option<u64>,
    /// After this long without a byte from the client, the proxy pings it; its pong is not
    /// forwarded. Absent: no pings.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub ping_interval: Option<Duration>,
    /// How long the client has to answer a ping before the tunnel is closed (`1001` each
    /// way). Absent: 10 s.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub pong_timeout: Option<Duration>,
}

/// An HTTP filter: one single-key mapping in `http_filters` (or an upgrade type's
/// `filters`), e.g. `- request_body_limit: 1024`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// `request_body_limit: <bytes>`: reject request bodies larger than this many bytes
    /// (413). `0` allows only empty bodies.
    RequestBodyLimit(u64),
    /// `request_headers_to_add: {name: value}`: set these headers on the request sent
    /// upstream.
    RequestHeadersToAdd(HeadersToAdd),
    /// `response_headers_to_add: {name: value}`: set these headers on the response sent
    /// downstream.
    ResponseHeadersToAdd(HeadersToAdd),
    /// `concurrency_limit: <n>`: at most this many requests in flight through the chain.
    ConcurrencyLimit(NonZeroUsize),
    /// `timeout: <duration>`: fail requests whose response headers take longer (must be
    /// greater than zero).
    Timeout(#[serde(serialize_with = "duration::serialize")] Duration),
}

impl Filter {
    /// Every filter name accepted in the YAML, in the order the documentation lists them.
    pub const NAMES: &'static [&'static str] = &[
        "request_body_limit",
        "request_headers_to_add",
        "response_headers_to_add",
        "concurrency_limit",
        "timeout",
    ];

    /// The YAML name of this filter (`request_body_limit`, ...).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Filter::RequestBodyLimit(_) => "request_body_limit",
            Filter::RequestHeadersToAdd(_) => "request_headers_to_add",
            Filter::ResponseHeadersToAdd(_) => "response_headers_to_add",
            Filter::ConcurrencyLimit(_) => "concurrency_limit",
            Filter::Timeout(_) => "timeout",
        }
    }
}

/// A route: a match and where matching requests go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// What requests this route takes (YAML key `match`).
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// The upstream: `cluster: <name>` or `weighted_clusters: [...]` (exactly one).
    #[serde(flatten)]
    pub target: RouteTarget,
    /// Replace the matched part of the path with this before forwarding: the prefix of a
    /// `prefix` match, the whole path of a `path` match. Default: none (path unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Set the `Host` (`:authority`) header sent upstream to this value (non-empty, a valid
    /// header value). Default: none. Mutually exclusive with `auto_host_rewrite: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_rewrite_literal: Option<String>,
    /// Set the `Host` header sent upstream to the chosen endpoint's `hostname` (or its
    /// address when it has none). Default `false`.
    pub auto_host_rewrite: bool,
    /// Headers set on the request sent upstream for this route. Default: empty.
    pub request_headers_to_add: HeadersToAdd,
    /// Header names removed from the request before it is sent upstream. Default: empty.
    #[serde(serialize_with = "parsed::serialize_header_names")]
    pub request_headers_to_remove: Vec<HeaderName>,
    /// How long to wait for the upstream's response headers (for an upgrade: until the
    /// `101`). Absent in the YAML = 15 s, as Envoy (already filled in here); `0s` = no limit
    /// (`None`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub timeout: Option<Duration>,
    /// Idle timeout of upgraded streams on this route. Absent in the YAML = the top-level
    /// `stream_idle_timeout` (already filled in here); [`Duration::ZERO`] (`0s`) = off.
    #[serde(serialize_with = "duration::serialize")]
    pub idle_timeout: Duration,
    /// The longest an upgraded stream on this route may live (Envoy's name); then it closes
    /// as on a drain (WebSocket: `1001` each way, between frames). Absent or `0s`: no limit.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub max_stream_duration: Option<Duration>,
    /// The most tunnels this route keeps open at once; past it an upgrade gets `503` before
    /// any upstream contact. Absent: no cap of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tunnels: Option<u64>,
    /// When a request or upgrade handshake is tried again on another endpoint. Absent:
    /// connect failures, twice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// Per-route overrides of upgrade types (`enabled` only; no `filters`). Upgrade types
    /// are unique within a route (case-insensitive). Default: empty (listener settings
    /// apply).
    pub upgrade_configs: Vec<UpgradeConfig>,
    /// `true`: WebSocket upgrades on this route use the legacy raw mode configured by
    /// `websocket_config`. Default `false`.
    pub use_websocket: bool,
    /// Settings of the legacy WebSocket mode (used when `use_websocket` is `true`), with
    /// defaults filled in.
    pub websocket_config: WebSocketConfig,
    /// WebSocket limits of this route's tunnels (YAML `websocket:`), new style and legacy;
    /// each field set here overrides the listener's `websocket` type's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketLimits>,
}

impl Route {
    /// Whether this route overrides `upgrade_type` and, if so, whether it enables it.
    #[must_use]
    pub fn upgrade_override(&self, upgrade_type: &str) -> Option<bool> {
        self.upgrade_configs
            .iter()
            .find(|u| u.upgrade_type.as_str().eq_ignore_ascii_case(upgrade_type))
            .map(|u| u.enabled)
    }
}

/// What requests a route takes. All present conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteMatch {
    /// The path condition: exactly one of `prefix`, `path`, `regex`, `connect_matcher`.
    #[serde(flatten)]
    pub path: PathMatch,
    /// Header conditions; all must hold. Default: empty.
    pub headers: Vec<HeaderMatcher>,
    /// Take only this percentage of the matching requests (traffic shifting). Default:
    /// none (all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_fraction: Option<RuntimeFraction>,
}

/// The path condition of a route match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// `prefix: /ws`: the path (without query) starts with this (starts with `/`).
    Prefix(String),
    /// `path: /exact`: the path (without query) equals this (starts with `/`).
    Path(String),
    /// `regex: "^/ws/[0-9]+$"`: the path (without query) matches this regular expression
    /// (`regex` crate syntax, compiled). Matching is a search, so anchor with `^...$` for a
    /// whole-path match.
    Regex(PathRegex),
    /// `connect_matcher: {}`: CONNECT requests (HTTP/1 CONNECT, HTTP/2 CONNECT without
    /// `:protocol`), which have no path, and nothing else. Path conditions never take them.
    ConnectMatcher(ConnectMatcher),
}

/// `connect_matcher: {}`: Envoy's message has no fields; the condition is its presence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnectMatcher {}

/// A header condition of a route match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatcher {
    /// Header name (case-insensitive).
    #[serde(serialize_with = "parsed::serialize_header_name")]
    pub name: HeaderName,
    /// `Some(v)`: the header's value equals `v`, a valid header value. `None` (no `exact`):
    /// the header is present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
}

/// `runtime_fraction: { runtime_key, default }`: a route match that takes only a percentage
/// of the requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeFraction {
    /// The key in `runtime` holding the percentage.
    pub runtime_key: String,
    /// The percentage (`0..=100`) used when `runtime` has no such key.
    pub default: u8,
}

/// Where a route sends requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteTarget {
    /// `cluster: <name>`: one cluster (guaranteed to exist in `clusters`).
    Cluster(String),
    /// `weighted_clusters: [{name, weight}, ...]`: pick a cluster with probability
    /// proportional to its weight (names exist; the total weight is greater than zero).
    WeightedClusters(Vec<WeightedCluster>),
}

/// One entry of `weighted_clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedCluster {
    /// Cluster name (exists in `clusters`).
    pub name: String,
    /// Relative weight; `0` never picks this cluster.
    pub weight: u32,
}

/// `websocket_config` of a route: settings of the legacy WebSocket mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebSocketConfig {
    /// Idle timeout of the WebSocket stream. Absent in the YAML = the route's
    /// `idle_timeout` (already filled in here); [`Duration::ZERO`] (`0s`) = off.
    #[serde(serialize_with = "duration::serialize")]
    pub idle_timeout: Duration,
    /// How many times to try connecting upstream before giving up. Default 1.
    pub max_connect_attempts: NonZeroU32,
}

/// An upstream cluster: a named set of endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// Unique name, referenced by routes.
    pub name: String,
    /// Timeout of one TCP connect to an endpoint. Default `5s`; must be greater than zero.
    #[serde(serialize_with = "duration::serialize")]
    pub connect_timeout: Duration,
    /// Endpoints (at least one).
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is picked: `round_robin` (default), `least_request` (the fewest
    /// requests and tunnels in flight; HAProxy's advice for WebSockets) or `random`.
    pub lb_policy: LbPolicy,
    /// Ejection of endpoints that keep failing. Absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checks; an endpoint gets new requests and tunnels only while it passes
    /// all of them. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<crate::HealthCheck>,
    /// Close the tunnels to an endpoint when it turns unhealthy (Envoy's
    /// `close_connections_on_host_health_failure`). Default `false`: they run on.
    pub close_connections_on_host_health_failure: bool,
    /// How often endpoints given by name are looked up again (Envoy's `STRICT_DNS`: each
    /// address a name resolves to is an endpoint). Default `5s`.
    #[serde(serialize_with = "duration::serialize")]
    pub dns_refresh_rate: Duration,
    /// TLS to the endpoints. Absent: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::UpstreamTls>,
    /// `http2_protocol_options: {}` (Envoy's name): the endpoints speak HTTP/2 (with TLS,
    /// ALPN `h2`). Plain requests go as HTTP/2; each upgrade is an RFC 8441 stream on a
    /// shared connection. Absent: HTTP/1.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
}

/// `http2_protocol_options: {}` on a cluster: no fields of its own yet; the stream limit is
/// the endpoint's own `SETTINGS_MAX_CONCURRENT_STREAMS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Http2ProtocolOptions {}

/// A cluster's `lb_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests and tunnels in flight.
    LeastRequest,
    /// Any endpoint, at random.
    Random,
}

/// A cluster's `outlier_detection` (Envoy's names and defaults, but 50% at most ejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// Failures in a row (connect failures, resets, timeouts, `502`/`503`/`504`) that eject
    /// an endpoint. Default 5.
    pub consecutive_gateway_failure: u32,
    /// How long the first ejection lasts; each repeat doubles it. Default `30s`.
    #[serde(serialize_with = "duration::serialize")]
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts. Default `300s`.
    #[serde(serialize_with = "duration::serialize")]
    pub max_ejection_time: Duration,
    /// The most endpoints ejected at once, in percent of the cluster. Default 50.
    pub max_ejection_percent: u8,
}

/// A route's `retry_policy` (Envoy's names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Comma-separated `connect-failure`, `reset`, `gateway-error`, `5xx`. Default
    /// `connect-failure`.
    pub retry_on: String,
    /// Retries after the first attempt (0 to 10). Default 2.
    pub num_retries: u32,
    /// How long each attempt may wait for its response head. Absent: only the route's
    /// `timeout`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub per_try_timeout: Option<Duration>,
}

/// An endpoint of a cluster. In the YAML either a string `host:port` or
/// `{ address: host:port, hostname: name }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `ip:port`, `[ipv6]:port` or `hostname:port`, as written (DNS is not resolved here).
    pub address: String,
    /// The port of `address` (validated, non-zero).
    #[serde(skip)]
    pub port: u16,
    /// Host name of the endpoint, used for `auto_host_rewrite`. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl Endpoint {
    /// Builds an endpoint for a socket address (no hostname).
    #[must_use]
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Endpoint {
            address: addr.to_string(),
            port: addr.port(),
            hostname: None,
        }
    }

    /// The host part of `address`: an IP literal (IPv6 without brackets) or a host name.
    #[must_use]
    pub fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(host, _)| host);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// `address` as a socket address when it is an IP literal; `None` for `hostname:port`
    /// (which the caller resolves).
    #[must_use]
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }
}

/// Destination of the access log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// Standard output (`access_log: "-"` or absent).
    #[default]
    Stdout,
    /// Append JSON lines to this file.
    File(PathBuf),
}

impl Serialize for AccessLog {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AccessLog::Stdout => serializer.serialize_str("-"),
            AccessLog::File(path) => path.serialize(serializer),
        }
    }
}
