//! The YAML configuration contract of the `switchback` binary: the schema, its defaults
//! and its validation.
//!
//! [`Config::from_yaml_str`] (or [`Config::load`] for a file) parses a document with
//! [serde-saphyr](https://docs.rs/serde-saphyr)'s parser, fills in every default and checks
//! the result, reporting **all** problems at once as [`ConfigError`]s that carry the file,
//! line, column and field path, e.g.
//! `config.yaml:12:14: routes[0].cluster: unknown cluster "ech"; did you mean `echo`? (known: echo, other)`.
//!
//! ```
//! use std::time::Duration;
//! use switchback_config::{Config, PathMatch, RouteTarget};
//!
//! let yaml = r#"
//! listen: 127.0.0.1:10000
//! upgrade_configs:
//!   - upgrade_type: websocket
//! routes:
//!   - match: { prefix: /ws }
//!     cluster: echo
//! clusters:
//!   - name: echo
//!     endpoints: [127.0.0.1:9001]
//! "#;
//! let config = Config::from_yaml_str(yaml, "config.yaml").expect("valid config");
//! assert_eq!(config.routes[0].matcher.path, PathMatch::Prefix("/ws".into()));
//! assert_eq!(config.routes[0].target, RouteTarget::Cluster("echo".into()));
//! // Defaults are filled in: the route inherits the 5m stream idle timeout.
//! assert_eq!(config.routes[0].idle_timeout, Duration::from_secs(300));
//!
//! // Every problem is reported, with its location and field path.
//! let errors = Config::from_yaml_str("drain_timeout: 30\nroutes:\n  - match: { prefix: / }\n    cluster: ech\n", "config.yaml")
//!     .unwrap_err();
//! assert_eq!(errors.len(), 2);
//! assert_eq!(
//!     errors[1].to_string(),
//!     "config.yaml:4:14: routes[0].cluster: unknown cluster \"ech\"; define it under `clusters` or fix the name (no clusters are defined)"
//! );
//! ```
//!
//! # The schema
//!
//! ```yaml
//! listen: 127.0.0.1:10000          # HTTP/1.1 and HTTP/2 prior knowledge on one port
//! admin: 127.0.0.1:9901            # optional; loopback callers only (probes: anyone)
//! # admin: { address: 0.0.0.0:9901, token_file: admin-token }   # others with the token too
//! drain_timeout: 30s
//! stream_idle_timeout: 5m          # default idle timeout of upgraded streams
//! upgrade_configs:                 # listener-level upgrade types
//!   - upgrade_type: websocket
//!   - upgrade_type: foo
//!     enabled: false
//!     filters: []                  # present: this type's own chain; [] = router only
//! ignore_upgrades: ["tls/*"]       # tokens stripped and proxied as plain HTTP; h2c always is
//! http_filters:                    # the default chain, in order; the router is implicit at the end
//!   - request_body_limit: 1024
//!   - request_headers_to_add: { x-proxied-by: switchback }
//!   - response_headers_to_add: { x-served-by: switchback }
//!   - concurrency_limit: 1000
//!   - timeout: 30s
//! runtime:
//!   routing.traffic_shift.canary: 10
//! routes:
//!   - match:
//!       prefix: /ws                # or path: /exact, or regex: "^/ws/[0-9]+$"
//!       headers: [{ name: x-canary, exact: "1" }]   # optional; without exact: present
//!       runtime_fraction: { runtime_key: routing.traffic_shift.canary, default: 100 }
//!     cluster: echo                # or weighted_clusters: [{ name: a, weight: 80 }, { name: b, weight: 20 }]
//!     prefix_rewrite: /echo
//!     host_rewrite_literal: echo.internal   # or auto_host_rewrite: true
//!     request_headers_to_add: { x-route: ws }
//!     request_headers_to_remove: [x-debug]
//!     timeout: 15s
//!     idle_timeout: 1m
//!     upgrade_configs:
//!       - { upgrade_type: foo, enabled: true }
//!     use_websocket: false         # true: legacy raw mode for WebSocket upgrades on this route
//!     websocket_config: { idle_timeout: 10s, max_connect_attempts: 3 }
//! clusters:
//!   - name: echo
//!     connect_timeout: 1s
//!     endpoints:
//!       - 127.0.0.1:9001
//!       - { address: 127.0.0.1:9002, hostname: echo.internal }
//! use_remote_address: true         # the edge: append the peer to X-Forwarded-For
//! xff_num_trusted_hops: 0          # proxies in front trusted to append to it
//! x_forwarded_proto: true
//! generate_request_id: true        # X-Request-Id: a UUID v4 when absent
//! preserve_external_request_id: true   # keep a client's X-Request-Id
//!     health_checks:               # an endpoint gets traffic while it passes all of them
//!       - { path: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2 }
//!       - tcp: {}                  # a TCP connect check
//!     close_connections_on_host_health_failure: false   # true: an unhealthy endpoint's tunnels close
//! access_log: /var/log/switchback.jsonl    # optional; "-" or absent = stdout
//! ```
//!
//! Durations are an integer and a unit: `250ms`, `30s`, `5m`, `1h` ([`parse_duration`]);
//! `0s` turns off the timeouts documented as such. Unknown fields are errors (with a
//! "did you mean" for near misses). Each field's default is documented on the field of
//! [`Config`] and the types it contains.
//!
//! # Errors and their locations
//!
//! The document is read into a tree of located nodes first, then field by field: a value of
//! the wrong type, an unknown field, a duplicate key or a missing required field is
//! reported and left out, and everything else is still read and validated. So one run
//! reports every problem it can reach, each with line, column and field path, and no
//! problem caused only by another (a route whose cluster is defined by an entry that could
//! not be read is not told its cluster is unknown).
//!
//! A YAML syntax error is the exception: the file cannot be read past it, so it is the only
//! error reported ([`ConfigError::syntax`]). For the common indentation mistakes it comes
//! with a hint naming the line to fix and the column to start it in:
//!
//! ```
//! use switchback_config::Config;
//!
//! let yaml = "listen: 127.0.0.1:10000\n  admin: 127.0.0.1:9901\n";
//! let errors = Config::from_yaml_str(yaml, "config.yaml").unwrap_err();
//! assert_eq!(
//!     errors[0].hint.as_deref(),
//!     Some("check the indentation of line 2: `admin:` is further in than `listen:` (line 1), which already has a value, so YAML reads `admin:` as more of that value; start it in column 1, like `listen:`")
//! );
//! ```

mod admin;
mod duration;
mod error;
mod health;
mod hint;
mod locate;
mod model;
mod parsed;
mod raw;
mod read;
mod suggest;
mod telemetry;
mod tls;
mod tree;
mod validate;

use std::net::SocketAddr;
use std::path::Path;

pub use crate::admin::{AdminEndpoint, AdminToken};
pub use crate::duration::{format_duration, parse_duration};
pub use crate::error::ConfigError;
pub use crate::health::{DEFAULT_HEALTH_CHECK_INTERVAL, DEFAULT_HEALTH_CHECK_TIMEOUT, HealthCheck};
pub use crate::model::{
    AccessLog, Cluster, Config, ConnectConfig, ConnectMatcher, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_IGNORE_UPGRADES, DEFAULT_LISTEN, DEFAULT_MAX_CONNECT_ATTEMPTS,
    DEFAULT_ROUTE_TIMEOUT, DEFAULT_STREAM_IDLE_TIMEOUT, Endpoint, Filter, HeaderMatcher,
    Http2ProtocolOptions, LbPolicy, MAX_WORKERS, OutlierDetection, PathMatch, RetryPolicy, Route, RouteMatch,
    RouteTarget, RuntimeFraction, UpgradeConfig, WebSocketConfig, WebSocketLimits, WeightedCluster,
    default_workers,
};
pub use crate::parsed::{HeadersToAdd, InvalidToken, PathRegex, UpgradeToken};
pub use crate::telemetry::Tracing;
pub use crate::tls::{CertificateFiles, Listener, ListenerTls, TlsMinVersion, UpstreamTls};

use crate::error::Ctx;
use crate::raw::RawConfig;
use crate::tree::{ParseError, Pos};

impl Config {
    /// Parses and validates a YAML document. `file_name` is only used in the errors.
    ///
    /// # Errors
    ///
    /// Every problem found, sorted by position: the first syntax error if the document is
    /// not valid YAML (nothing after it can be read), otherwise every wrong type, unknown or
    /// missing field and invalid value.
    pub fn from_yaml_str(text: &str, file_name: &str) -> Result<Config, Vec<ConfigError>> {
        let root = match tree::parse(text) {
            Ok(root) => root,
            Err(e) => return Err(vec![syntax_error(&e, text, file_name)]),
        };
        let mut ctx = Ctx::new(file_name);
        let raw = RawConfig::read(&mut ctx, root.as_ref());
        let config = ctx.build(&raw);
        let mut errors = ctx.into_errors();
        if errors.is_empty() {
            return Ok(config);
        }
        if let Some(root) = &root {
            hint::add_run_on_values(&mut errors, root, text);
        }
        Err(errors)
    }

    /// Reads, parses and validates the YAML file at `path`.
    ///
    /// # Errors
    ///
    /// As [`Config::from_yaml_str`]; an unreadable file is one error naming the file and the
    /// operating system's error.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_yaml_str(&text, &file),
            Err(e) => Err(vec![ConfigError::unreadable(file, &e)]),
        }
    }

    /// The configuration of the built-in demo: listen on `127.0.0.1:10000`, WebSocket
    /// upgrades enabled, one route (prefix `/`) to the cluster `echo` whose only endpoint is
    /// `upstream`; everything else at its default.
    #[must_use]
    pub fn demo(upstream: SocketAddr) -> Config {
        Config {
            upgrade_configs: vec![UpgradeConfig {
                upgrade_type: UpgradeToken::from_static("websocket"),
                enabled: true,
                filters: None,
                websocket: None,
                connect_config: None,
            }],
            routes: vec![Route {
                matcher: RouteMatch {
                    path: PathMatch::Prefix("/".to_owned()),
                    headers: Vec::new(),
                    runtime_fraction: None,
                },
                target: RouteTarget::Cluster("echo".to_owned()),
                prefix_rewrite: None,
                host_rewrite_literal: None,
                auto_host_rewrite: false,
                request_headers_to_add: HeadersToAdd::new(),
                request_headers_to_remove: Vec::new(),
                timeout: Some(DEFAULT_ROUTE_TIMEOUT),
                idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
                max_stream_duration: None,
                max_tunnels: None,
                retry_policy: None,
                upgrade_configs: Vec::new(),
                use_websocket: false,
                websocket_config: WebSocketConfig {
                    idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
                    max_connect_attempts: DEFAULT_MAX_CONNECT_ATTEMPTS,
                },
                websocket: None,
            }],
            clusters: vec![Cluster {
                name: "echo".to_owned(),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                endpoints: vec![Endpoint::from_socket_addr(upstream)],
                lb_policy: LbPolicy::RoundRobin,
                outlier_detection: None,
                health_checks: Vec::new(),
                close_connections_on_host_health_failure: false,
                dns_refresh_rate: std::time::Duration::from_secs(5),
                tls: None,
                http2_protocol_options: None,
            }],
            ..Config::default()
        }
    }
}

/// Converts an error that stops the reading of the document into a [`ConfigError`], with the
/// field path of its position and, for the common indentation mistakes, a hint.
fn syntax_error(error: &ParseError, text: &str, file: &str) -> ConfigError {
    let (at, message, hint) = match error {
        ParseError::Syntax(e) => {
            let at = Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            };
            // Messages are one line: the parser's may hold a control character it quotes.
            let info: String = e
                .info()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            (at, format!("YAML syntax error: {info}"), hint::for_syntax_error(text, e))
        }
        ParseError::SecondDocument(at) => (
            *at,
            "a second YAML document starts here; the configuration is a single document, so remove this `---` or move what follows it into the first".to_owned(),
            None,
        ),
        ParseError::TooLarge(at) => (
            *at,
            "aliases expand this file to more than a million nodes; write the repeated parts out, or alias less deeply nested parts".to_owned(),
            None,
        ),
        ParseError::BadMerge(at) => (
            *at,
            "a merge key (`<<`) takes a mapping or a list of mappings, e.g. `<<: *defaults`".to_owned(),
            None,
        ),
        ParseError::RecursiveAlias(at) => (
            *at,
            "this alias refers to a node that contains it; an alias can only repeat a node that is complete before it".to_owned(),
            None,
        ),
    };
    ConfigError {
        file: file.to_owned(),
        line: Some(at.line),
        column: Some(at.column),
        path: locate::path_at(text, at),
        message,
        hint,
        syntax: true,
    }
}

#[cfg(test)]
mod tests;
