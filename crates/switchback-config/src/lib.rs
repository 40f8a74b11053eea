//! The YAML configuration contract of the `switchback` binary: the schema, its defaults
//! and its validation.
//!
//! [`Config::from_yaml_str`] (or [`Config::load`] for a file) parses a document with
//! [serde-saphyr](https://docs.rs/serde-saphyr), fills in every default and checks the
//! result, reporting **all** problems at once as [`ConfigError`]s that carry the file, line,
//! column and field path, e.g.
//! `config.yaml:12:14: routes[0].cluster: unknown cluster "ech"; define it under `clusters` or fix the name (known: echo)`.
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
//! admin: 127.0.0.1:9901            # optional
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
//! Parse errors (bad YAML, wrong types, unknown fields, missing required fields) stop the
//! parse, so at most one of them is reported; the document is then checked no further.
//! Once the document parses, every validation problem is reported. Both kinds carry line,
//! column (from serde-saphyr's [`Spanned`](serde_saphyr::Spanned) values and error
//! locations) and the field path.

mod duration;
mod error;
mod locate;
mod model;
mod parsed;
mod raw;
mod suggest;
mod validate;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::Path;

use serde_saphyr::{MessageFormatter, UserMessageFormatter};

pub use crate::duration::{format_duration, parse_duration};
pub use crate::error::ConfigError;
pub use crate::model::{
    AccessLog, Cluster, Config, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IGNORE_UPGRADES,
    DEFAULT_LISTEN, DEFAULT_MAX_CONNECT_ATTEMPTS, DEFAULT_ROUTE_TIMEOUT, DEFAULT_STREAM_IDLE_TIMEOUT,
    Endpoint, Filter, HeaderMatcher, MAX_WORKERS, PathMatch, Route, RouteMatch, RouteTarget, RuntimeFraction,
    UpgradeConfig, WebSocketConfig, WeightedCluster, default_workers,
};
pub use crate::parsed::{HeadersToAdd, InvalidToken, PathRegex, UpgradeToken};

use crate::locate::Want;
use crate::raw::RawConfig;
use crate::validate::{Ctx, line_column};

impl Config {
    /// Parses and validates a YAML document. `file_name` is only used in the errors.
    ///
    /// # Errors
    ///
    /// Every problem found, sorted by position: one parse error if the document is not
    /// valid YAML of the right shape, otherwise all validation errors.
    pub fn from_yaml_str(text: &str, file_name: &str) -> Result<Config, Vec<ConfigError>> {
        let options = serde_saphyr::options! { with_snippet: false };
        let raw: RawConfig = match serde_saphyr::from_str_with_options(text, options) {
            Ok(raw) => raw,
            Err(e) => return Err(vec![parse_error(&e, text, file_name)]),
        };
        let mut ctx = Ctx::new(file_name);
        let config = ctx.build(&raw);
        if ctx.errors.is_empty() {
            Ok(config)
        } else {
            let mut errors = ctx.errors;
            errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(0)));
            Err(errors)
        }
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
            Err(e) => Err(vec![ConfigError {
                file,
                line: None,
                column: None,
                path: String::new(),
                message: format!("cannot read the config file: {e}"),
            }]),
        }
    }

    /// The configuration of the built-in demo: listen on `127.0.0.1:10000`, WebSocket
    /// upgrades enabled, one route (prefix `/`) to the cluster `echo` whose only endpoint is
    /// `upstream`; everything else at its default.
    #[must_use]
    pub fn demo(upstream: SocketAddr) -> Config {
        Config {
            listen: DEFAULT_LISTEN,
            upgrade_configs: vec![UpgradeConfig {
                upgrade_type: UpgradeToken::from_static("websocket"),
                enabled: true,
                filters: None,
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
                upgrade_configs: Vec::new(),
                use_websocket: false,
                websocket_config: WebSocketConfig {
                    idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
                    max_connect_attempts: DEFAULT_MAX_CONNECT_ATTEMPTS,
                },
            }],
            clusters: vec![Cluster {
                name: "echo".to_owned(),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                endpoints: vec![Endpoint::from_socket_addr(upstream)],
            }],
            ..Config::default()
        }
    }
}

/// The innermost real error (serde-saphyr wraps errors met through aliases or with
/// snippets).
fn original_error(mut error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    loop {
        match error {
            serde_saphyr::Error::WithSnippet { error: inner, .. }
            | serde_saphyr::Error::AliasError { error: inner, .. } => error = inner,
            _ => return error,
        }
    }
}

/// A "did you mean" and the list of valid names.
fn known_names(wrong: &str, expected: &[&str], what: &str) -> String {
    let list = expected.join(", ");
    match suggest::closest(wrong, expected) {
        Some(close) => format!("did you mean `{close}`? (known {what}: {list})"),
        None => format!("remove it or use one of the known {what}: {list}"),
    }
}

/// Converts a serde-saphyr error into a [`ConfigError`], finding the field path of its
/// location and rewording the common cases for operators.
fn parse_error(error: &serde_saphyr::Error, text: &str, file: &str) -> ConfigError {
    use serde_saphyr::Error as E;
    let inner = original_error(error);
    let (want, message): (Want, Cow<'_, str>) = match inner {
        E::SerdeUnknownField {
            field, expected, ..
        } => (
            Want::Key,
            format!(
                "unknown field `{field}`; {}",
                known_names(field, expected, "fields")
            )
            .into(),
        ),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let what = if expected == Filter::NAMES {
                "filter"
            } else {
                "name"
            };
            (
                Want::Key,
                format!(
                    "unknown {what} `{variant}`; {}",
                    known_names(variant, expected, &format!("{what}s"))
                )
                .into(),
            )
        }
        E::SerdeMissingField { field, .. } => (
            Want::EnclosingMapping,
            format!("missing required field `{field}`; add it").into(),
        ),
        E::DuplicateMappingKey { key, .. } => (
            Want::Key,
            match key {
                Some(key) => format!(
                    "duplicate key `{key}`; a key may appear only once in a mapping, remove one"
                )
                .into(),
                None => "duplicate key; a key may appear only once in a mapping, remove one".into(),
            },
        ),
        E::ExpectedMappingEndAfterEnumVariantValue { .. } => (
            Want::Key,
            "a filter entry is a mapping with exactly one key, e.g. `- request_body_limit: 1024`; put each filter in its own list item"
                .into(),
        ),
        E::Unexpected { expected, .. } => (
            Want::Value,
            match *expected {
                "sequence start" => "expected a list here".into(),
                "mapping start" => "expected a mapping (key: value) here".into(),
                "string scalar" => "expected a single value (a string) here".into(),
                other => format!("expected {other} here").into(),
            },
        ),
        E::InvalidScalar { ty, .. } if ty.starts_with('u') => (
            Want::Value,
            "expected a whole number that is 0 or more here".into(),
        ),
        E::InvalidScalar { ty, .. } if ty.starts_with("bool") => {
            (Want::Value, "expected true or false here".into())
        }
        other => (Want::Value, UserMessageFormatter.format_message(other)),
    };
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let (line, column) = error.location().map_or((None, None), |at| line_column(&at));
    let path = match (line, column) {
        (Some(line), Some(column)) => locate::path_at(text, line, column, want),
        _ => String::new(),
    };
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        path,
        message,
    }
}

#[cfg(test)]
mod tests;
