//! The file as written: the document tree read into the schema's shape, each value with its
//! location. Only structure and scalar types are checked here (every problem reported, see
//! [`read`](crate::read)); everything else is checked in `validate`.

use crate::admin::RawAdmin;
use crate::error::Ctx;
use crate::health::RawHealthCheck;
use crate::locate::join_key;
use crate::model::{Filter, MAX_WORKERS};
use crate::read::{Field, Keys, List, Pairs, S, Whole, known_names, parse_whole};
use crate::telemetry::RawTracing;
use crate::tls::{RawListener, RawUpstreamTls};
use crate::tree::{Content, Node};

/// `workers`: a `NonZeroUsize` of at most [`MAX_WORKERS`].
pub(crate) const WORKERS: Whole = Whole {
    min: 1,
    max: MAX_WORKERS as u64,
};
/// `max_request_headers_kb`: 8 KiB (hyper's smallest read buffer) to 8 MiB.
pub(crate) const HEADERS_KB: Whole = Whole { min: 8, max: 8192 };
/// `max_headers_count`.
pub(crate) const HEADERS_COUNT: Whole = Whole { min: 1, max: 10_000 };
/// `max_concurrent_streams`: HTTP/2's SETTINGS value is 31 bits wide (RFC 9113 §6.5.2).
pub(crate) const CONCURRENT_STREAMS: Whole = Whole {
    min: 1,
    max: 2_147_483_647,
};
/// `request_body_limit`, in bytes; 0 allows only empty bodies.
pub(crate) const BODY_LIMIT: Whole = Whole::at_least(0);
/// `xff_num_trusted_hops`: more than a few dozen proxies in a row is a typo.
pub(crate) const XFF_HOPS: Whole = Whole { min: 0, max: 64 };
/// `max_connections` and `max_tunnels`: at least one.
pub(crate) const COUNT: Whole = Whole::at_least(1);
/// `num_retries`.
pub(crate) const RETRIES: Whole = Whole { min: 0, max: 10 };
/// `concurrency_limit`: a `NonZeroUsize`.
pub(crate) const CONCURRENCY_LIMIT: Whole = Whole::at_least(1);
/// `runtime` values and `runtime_fraction.default`.
pub(crate) const PERCENTAGE: Whole = Whole { min: 0, max: 100 };
/// A weighted cluster's `weight`: a `u32`.
pub(crate) const WEIGHT: Whole = Whole {
    min: 0,
    max: u32::MAX as u64,
};
/// `max_connect_attempts`: a `NonZeroU32`.
pub(crate) const CONNECT_ATTEMPTS: Whole = Whole {
    min: 1,
    max: u32::MAX as u64,
};

#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub(crate) listen: Option<S<String>>,
    pub(crate) listeners: Option<S<List<RawListener>>>,
    pub(crate) admin: Option<S<RawAdmin>>,
    pub(crate) workers: Option<S<u64>>,
    pub(crate) drain_timeout: Option<S<String>>,
    pub(crate) drain_close_window: Option<S<String>>,
    pub(crate) takeover_socket: Option<S<String>>,
    pub(crate) stream_idle_timeout: Option<S<String>>,
    pub(crate) request_headers_timeout: Option<S<String>>,
    pub(crate) max_request_headers_kb: Option<S<u64>>,
    pub(crate) max_headers_count: Option<S<u64>>,
    pub(crate) max_concurrent_streams: Option<S<u64>>,
    pub(crate) connection_idle_timeout: Option<S<String>>,
    pub(crate) max_connections: Option<S<u64>>,
    pub(crate) max_tunnels: Option<S<u64>>,
    pub(crate) upgrade_configs: List<RawUpgradeConfig>,
    pub(crate) ignore_upgrades: Option<S<List<String>>>,
    pub(crate) http_filters: List<RawFilter>,
    pub(crate) runtime: Pairs<u64>,
    pub(crate) routes: List<RawRoute>,
    /// `Invalid` when `clusters` is not a list: then no cluster name is known for sure.
    pub(crate) clusters: Field<S<List<RawCluster>>>,
    pub(crate) use_remote_address: Option<S<bool>>,
    pub(crate) xff_num_trusted_hops: Option<S<u64>>,
    pub(crate) x_forwarded_proto: Option<S<bool>>,
    pub(crate) generate_request_id: Option<S<bool>>,
    pub(crate) preserve_external_request_id: Option<S<bool>>,
    pub(crate) access_log: Option<S<String>>,
    pub(crate) tracing: Option<S<RawTracing>>,
}

impl RawConfig {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "listen",
        "listeners",
        "admin",
        "workers",
        "drain_timeout",
        "drain_close_window",
        "takeover_socket",
        "stream_idle_timeout",
        "request_headers_timeout",
        "max_request_headers_kb",
        "max_headers_count",
        "max_concurrent_streams",
        "connection_idle_timeout",
        "max_connections",
        "max_tunnels",
        "upgrade_configs",
        "ignore_upgrades",
        "http_filters",
        "runtime",
        "routes",
        "clusters",
        "use_remote_address",
        "xff_num_trusted_hops",
        "x_forwarded_proto",
        "generate_request_id",
        "preserve_external_request_id",
        "access_log",
        "tracing",
    ];

    /// Reads the document's root; an empty document is all defaults.
    pub(crate) fn read(ctx: &mut Ctx<'_>, root: Option<&Node>) -> RawConfig {
        let Some(f) = root.and_then(|root| ctx.fields(root, "", Self::FIELDS)) else {
            return RawConfig::default();
        };
        RawConfig {
            listen: f.optional(ctx, "listen", Ctx::string).ok(),
            listeners: f
                .optional(ctx, "listeners", |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                    ctx.list(node, path, RawListener::read)
                })
                .ok(),
            admin: f.optional(ctx, "admin", RawAdmin::read).ok(),
            workers: f
                .optional(ctx, "workers", |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                    ctx.whole(node, path, WORKERS)
                })
                .ok(),
            drain_timeout: f.optional(ctx, "drain_timeout", Ctx::string).ok(),
            drain_close_window: f.optional(ctx, "drain_close_window", Ctx::string).ok(),
            takeover_socket: f.optional(ctx, "takeover_socket", Ctx::string).ok(),
            stream_idle_timeout: f.optional(ctx, "stream_idle_timeout", Ctx::string).ok(),
            request_headers_timeout: f.optional(ctx, "request_headers_timeout", Ctx::string).ok(),
            max_request_headers_kb: f
                .optional(
                    ctx,
                    "max_request_headers_kb",
                    |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.whole(node, path, HEADERS_KB),
                )
                .ok(),
            max_headers_count: f
                .optional(
                    ctx,
                    "max_headers_count",
                    |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.whole(node, path, HEADERS_COUNT),
                )
                .ok(),
            max_concurrent_streams: f
                .optional(
                    ctx,
                    "max_concurrent_streams",
                    |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.whole(node, path, CONCURRENT_STREAMS),
                )
                .ok(),
            connection_idle_timeout: f.optional(ctx, "connection_idle_timeout", Ctx::string).ok(),
            max_connections: f.optional(ctx, "max_connections", count).ok(),
            max_tunnels: f.optional(ctx, "max_tunnels", count).ok(),
            upgrade_configs: f.list(ctx, "upgrade_configs", RawUpgradeConfig::read).items(),
            ignore_upgrades: f
                .optional(
                    ctx,
                    "ignore_upgrades",
                    |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.list(node, path, Ctx::string),
                )
                .ok(),
            http_filters: f.list(ctx, "http_filters", RawFilter::read).items(),
            runtime: f
                .value(ctx, "runtime", |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                    ctx.pairs(node, path, percentage)
                })
                .ok()
                .unwrap_or_default(),
            routes: f.list(ctx, "routes", RawRoute::read).items(),
            clusters: f.list(ctx, "clusters", RawCluster::read),
            use_remote_address: f.optional(ctx, "use_remote_address", Ctx::boolean).ok(),
            xff_num_trusted_hops: f
                .optional(
                    ctx,
                    "xff_num_trusted_hops",
                    |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.whole(node, path, XFF_HOPS),
                )
                .ok(),
            x_forwarded_proto: f.optional(ctx, "x_forwarded_proto", Ctx::boolean).ok(),
            generate_request_id: f.optional(ctx, "generate_request_id", Ctx::boolean).ok(),
            preserve_external_request_id: f.optional(ctx, "preserve_external_request_id", Ctx::boolean).ok(),
            access_log: f.optional(ctx, "access_log", Ctx::string).ok(),
            tracing: f.optional(ctx, "tracing", RawTracing::read).ok(),
        }
    }
}

fn percentage(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<u64>> {
    ctx.whole(node, path, PERCENTAGE)
}

fn headers(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<Pairs<String>> {
    ctx.pairs(node, path, Ctx::string)
}

#[derive(Debug)]
pub(crate) struct RawUpgradeConfig {
    pub(crate) upgrade_type: Option<S<String>>,
    pub(crate) enabled: Option<bool>,
    pub(crate) filters: Option<S<List<RawFilter>>>,
    pub(crate) websocket: Option<S<RawWebSocketLimits>>,
    pub(crate) connect_config: Option<S<RawConnectConfig>>,
}

impl RawUpgradeConfig {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "upgrade_type",
        "enabled",
        "filters",
        "websocket",
        "connect_config",
    ];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(
            f.at(RawUpgradeConfig {
                upgrade_type: f.required(ctx, "upgrade_type", Ctx::string),
                enabled: f.optional(ctx, "enabled", Ctx::boolean).ok().map(|b| b.value),
                filters: f
                    .optional(ctx, "filters", |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                        ctx.list(node, path, RawFilter::read)
                    })
                    .ok(),
                websocket: f.optional(ctx, "websocket", RawWebSocketLimits::read).ok(),
                connect_config: f.optional(ctx, "connect_config", RawConnectConfig::read).ok(),
            }),
        )
    }
}

/// `connect_config: { allow_post }` on a route's `CONNECT` entry.
#[derive(Debug)]
pub(crate) struct RawConnectConfig {
    pub(crate) allow_post: Option<bool>,
}

impl RawConnectConfig {
    pub(crate) const FIELDS: &'static [&'static str] = &["allow_post"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawConnectConfig {
            allow_post: f.optional(ctx, "allow_post", Ctx::boolean).ok().map(|b| b.value),
        }))
    }
}

/// A mapping with no fields: `connect_matcher: {}`, `http2_protocol_options: {}` (Envoy's
/// messages whose presence is what they say).
fn empty_map(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<()>> {
    let f = ctx.fields(node, path, &[])?;
    Some(f.at(()))
}

#[derive(Debug)]
pub(crate) enum RawFilter {
    RequestBodyLimit(S<u64>),
    RequestHeadersToAdd(Pairs<String>),
    ResponseHeadersToAdd(Pairs<String>),
    ConcurrencyLimit(S<u64>),
    Timeout(S<String>),
}

impl RawFilter {
    /// The shape of a filter entry, for the errors about it.
    const SHAPE: &'static str =
        "a filter entry is a mapping with exactly one key, e.g. `- request_body_limit: 1024`";

    /// A filter entry: a mapping with a single key, the filter's name.
    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        if !matches!(&node.content, Content::Map(entries) if !entries.is_empty()) {
            ctx.error(
                node.at,
                path,
                format!("{}; found {}", Self::SHAPE, node.describe()),
            );
            return None;
        }
        let entries = ctx.entries(node, path)?;
        for extra in entries.iter().skip(1) {
            ctx.error(
                extra.key_at,
                &join_key(path, extra.key),
                format!("{}; put each filter in its own list item", Self::SHAPE),
            );
        }
        let e = entries.first()?;
        let value_path = join_key(path, e.key);
        let filter = match e.key {
            "request_body_limit" => {
                RawFilter::RequestBodyLimit(ctx.whole(e.value, &value_path, BODY_LIMIT)?)
            }
            "request_headers_to_add" => RawFilter::RequestHeadersToAdd(headers(ctx, e.value, &value_path)?),
            "response_headers_to_add" => RawFilter::ResponseHeadersToAdd(headers(ctx, e.value, &value_path)?),
            "concurrency_limit" => {
                RawFilter::ConcurrencyLimit(ctx.whole(e.value, &value_path, CONCURRENCY_LIMIT)?)
            }
            "timeout" => RawFilter::Timeout(ctx.string(e.value, &value_path)?),
            unknown => {
                ctx.error(
                    e.key_at,
                    &value_path,
                    format!(
                        "unknown filter `{unknown}`; {}",
                        known_names(unknown, Filter::NAMES, "filters")
                    ),
                );
                return None;
            }
        };
        Some(S {
            value: filter,
            at: node.at,
        })
    }
}

#[derive(Debug)]
pub(crate) struct RawRoute {
    pub(crate) matcher: Option<S<RawMatch>>,
    pub(crate) cluster: Field<S<String>>,
    pub(crate) weighted_clusters: Field<S<List<RawWeightedCluster>>>,
    pub(crate) prefix_rewrite: Option<S<String>>,
    pub(crate) host_rewrite_literal: Option<S<String>>,
    pub(crate) auto_host_rewrite: Option<S<bool>>,
    pub(crate) request_headers_to_add: Pairs<String>,
    pub(crate) request_headers_to_remove: List<String>,
    pub(crate) timeout: Option<S<String>>,
    pub(crate) idle_timeout: Option<S<String>>,
    pub(crate) max_stream_duration: Option<S<String>>,
    pub(crate) max_tunnels: Option<S<u64>>,
    pub(crate) retry_policy: Option<S<RawRetryPolicy>>,
    pub(crate) upgrade_configs: List<RawUpgradeConfig>,
    pub(crate) use_websocket: bool,
    pub(crate) websocket_config: Option<S<RawWebSocketConfig>>,
    pub(crate) websocket: Option<S<RawWebSocketLimits>>,
}

impl RawRoute {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "match",
        "cluster",
        "weighted_clusters",
        "prefix_rewrite",
        "host_rewrite_literal",
        "auto_host_rewrite",
        "request_headers_to_add",
        "request_headers_to_remove",
        "timeout",
        "idle_timeout",
        "max_stream_duration",
        "max_tunnels",
        "retry_policy",
        "upgrade_configs",
        "use_websocket",
        "websocket_config",
        "websocket",
    ];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(
            f.at(RawRoute {
                matcher: f.required(ctx, "match", RawMatch::read),
                cluster: f.optional(ctx, "cluster", Ctx::string),
                weighted_clusters: f.optional(
                    ctx,
                    "weighted_clusters",
                    |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                        ctx.list(node, path, RawWeightedCluster::read)
                    },
                ),
                prefix_rewrite: f.optional(ctx, "prefix_rewrite", Ctx::string).ok(),
                host_rewrite_literal: f.optional(ctx, "host_rewrite_literal", Ctx::string).ok(),
                auto_host_rewrite: f.optional(ctx, "auto_host_rewrite", Ctx::boolean).ok(),
                request_headers_to_add: f
                    .value(ctx, "request_headers_to_add", headers)
                    .ok()
                    .unwrap_or_default(),
                request_headers_to_remove: f.list(ctx, "request_headers_to_remove", Ctx::string).items(),
                timeout: f.optional(ctx, "timeout", Ctx::string).ok(),
                idle_timeout: f.optional(ctx, "idle_timeout", Ctx::string).ok(),
                max_stream_duration: f.optional(ctx, "max_stream_duration", Ctx::string).ok(),
                max_tunnels: f.optional(ctx, "max_tunnels", count).ok(),
                retry_policy: f.optional(ctx, "retry_policy", RawRetryPolicy::read).ok(),
                upgrade_configs: f.list(ctx, "upgrade_configs", RawUpgradeConfig::read).items(),
                use_websocket: f
                    .value(ctx, "use_websocket", Ctx::boolean)
                    .ok()
                    .is_some_and(|b| b.value),
                websocket_config: f.optional(ctx, "websocket_config", RawWebSocketConfig::read).ok(),
                websocket: f.optional(ctx, "websocket", RawWebSocketLimits::read).ok(),
            }),
        )
    }
}

#[derive(Debug)]
pub(crate) struct RawMatch {
    pub(crate) prefix: Field<S<String>>,
    pub(crate) path: Field<S<String>>,
    pub(crate) regex: Field<S<String>>,
    pub(crate) connect_matcher: Field<S<()>>,
    pub(crate) headers: List<RawHeaderMatcher>,
    pub(crate) runtime_fraction: Option<S<RawRuntimeFraction>>,
}

impl RawMatch {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "prefix",
        "path",
        "regex",
        "connect_matcher",
        "headers",
        "runtime_fraction",
    ];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawMatch {
            prefix: f.optional(ctx, "prefix", Ctx::string),
            path: f.optional(ctx, "path", Ctx::string),
            regex: f.optional(ctx, "regex", Ctx::string),
            connect_matcher: f.optional(ctx, "connect_matcher", empty_map),
            headers: f.list(ctx, "headers", RawHeaderMatcher::read).items(),
            runtime_fraction: f.optional(ctx, "runtime_fraction", RawRuntimeFraction::read).ok(),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct RawHeaderMatcher {
    pub(crate) name: Option<S<String>>,
    pub(crate) exact: Option<S<String>>,
}

impl RawHeaderMatcher {
    pub(crate) const FIELDS: &'static [&'static str] = &["name", "exact"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawHeaderMatcher {
            name: f.required(ctx, "name", Ctx::string),
            exact: f.optional(ctx, "exact", Ctx::string).ok(),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct RawRuntimeFraction {
    pub(crate) runtime_key: Option<S<String>>,
    pub(crate) default: Option<S<u64>>,
}

impl RawRuntimeFraction {
    pub(crate) const FIELDS: &'static [&'static str] = &["runtime_key", "default"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawRuntimeFraction {
            runtime_key: f.required(ctx, "runtime_key", Ctx::string),
            default: f.required(ctx, "default", percentage),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct RawWeightedCluster {
    pub(crate) name: Option<S<String>>,
    pub(crate) weight: Option<S<u64>>,
}

impl RawWeightedCluster {
    pub(crate) const FIELDS: &'static [&'static str] = &["name", "weight"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawWeightedCluster {
            name: f.required(ctx, "name", Ctx::string),
            weight: f.required(ctx, "weight", |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                ctx.whole(node, path, WEIGHT)
            }),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct RawWebSocketLimits {
    pub(crate) max_frames_per_second: Option<S<u64>>,
    pub(crate) max_message_size: Option<S<u64>>,
    pub(crate) max_upstream_message_size: Option<S<u64>>,
    pub(crate) ping_interval: Option<S<String>>,
    pub(crate) pong_timeout: Option<S<String>>,
}

/// `max_frames_per_second`.
pub(crate) const FRAMES_PER_SECOND: Whole = Whole {
    min: 1,
    max: 1_000_000,
};
/// `max_message_size`, `max_upstream_message_size`: bytes, from 0 (empty messages only) to
/// the largest length a frame header can say (2^63 - 1).
pub(crate) const MESSAGE_SIZE: Whole = Whole {
    min: 0,
    max: i64::MAX as u64,
};

impl RawWebSocketLimits {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "max_frames_per_second",
        "max_message_size",
        "max_upstream_message_size",
        "ping_interval",
        "pong_timeout",
    ];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        let mut whole = |name: &str, range: Whole| {
            f.optional(ctx, name, |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                ctx.whole(node, path, range)
            })
            .ok()
        };
        let max_frames_per_second = whole("max_frames_per_second", FRAMES_PER_SECOND);
        let max_message_size = whole("max_message_size", MESSAGE_SIZE);
        let max_upstream_message_size = whole("max_upstream_message_size", MESSAGE_SIZE);
        Some(f.at(RawWebSocketLimits {
            max_frames_per_second,
            max_message_size,
            max_upstream_message_size,
            ping_interval: f.optional(ctx, "ping_interval", Ctx::string).ok(),
            pong_timeout: f.optional(ctx, "pong_timeout", Ctx::string).ok(),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct RawWebSocketConfig {
    pub(crate) idle_timeout: Option<S<String>>,
    pub(crate) max_connect_attempts: Option<S<u64>>,
}

impl RawWebSocketConfig {
    pub(crate) const FIELDS: &'static [&'static str] = &["idle_timeout", "max_connect_attempts"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(
            f.at(RawWebSocketConfig {
                idle_timeout: f.optional(ctx, "idle_timeout", Ctx::string).ok(),
                max_connect_attempts: f
                    .optional(
                        ctx,
                        "max_connect_attempts",
                        |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.whole(node, path, CONNECT_ATTEMPTS),
                    )
                    .ok(),
            }),
        )
    }
}

#[derive(Debug)]
pub(crate) struct RawCluster {
    pub(crate) name: Option<S<String>>,
    pub(crate) connect_timeout: Option<S<String>>,
    pub(crate) endpoints: Option<S<List<RawEndpoint>>>,
    pub(crate) lb_policy: Option<S<String>>,
    pub(crate) outlier_detection: Option<S<RawOutlierDetection>>,
    pub(crate) health_checks: List<RawHealthCheck>,
    pub(crate) close_connections_on_host_health_failure: Option<S<bool>>,
    pub(crate) dns_refresh_rate: Option<S<String>>,
    pub(crate) tls: Option<S<RawUpstreamTls>>,
    pub(crate) http2_protocol_options: Option<S<()>>,
}

/// A cluster's `outlier_detection` (Envoy's names).
#[derive(Debug)]
pub(crate) struct RawOutlierDetection {
    pub(crate) consecutive_gateway_failure: Option<S<u64>>,
    pub(crate) base_ejection_time: Option<S<String>>,
    pub(crate) max_ejection_time: Option<S<String>>,
    pub(crate) max_ejection_percent: Option<S<u64>>,
}

impl RawOutlierDetection {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "consecutive_gateway_failure",
        "base_ejection_time",
        "max_ejection_time",
        "max_ejection_percent",
    ];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(
            f.at(RawOutlierDetection {
                consecutive_gateway_failure: f.optional(ctx, "consecutive_gateway_failure", count).ok(),
                base_ejection_time: f.optional(ctx, "base_ejection_time", Ctx::string).ok(),
                max_ejection_time: f.optional(ctx, "max_ejection_time", Ctx::string).ok(),
                max_ejection_percent: f
                    .optional(
                        ctx,
                        "max_ejection_percent",
                        |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.whole(node, path, PERCENTAGE),
                    )
                    .ok(),
            }),
        )
    }
}

/// A route's `retry_policy` (Envoy's names).
#[derive(Debug)]
pub(crate) struct RawRetryPolicy {
    pub(crate) retry_on: Option<S<String>>,
    pub(crate) num_retries: Option<S<u64>>,
    pub(crate) per_try_timeout: Option<S<String>>,
}

impl RawRetryPolicy {
    pub(crate) const FIELDS: &'static [&'static str] = &["retry_on", "num_retries", "per_try_timeout"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(
            f.at(RawRetryPolicy {
                retry_on: f.optional(ctx, "retry_on", Ctx::string).ok(),
                num_retries: f
                    .optional(
                        ctx,
                        "num_retries",
                        |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.whole(node, path, RETRIES),
                    )
                    .ok(),
                per_try_timeout: f.optional(ctx, "per_try_timeout", Ctx::string).ok(),
            }),
        )
    }
}

impl RawCluster {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "name",
        "connect_timeout",
        "endpoints",
        "lb_policy",
        "outlier_detection",
        "health_checks",
        "close_connections_on_host_health_failure",
        "dns_refresh_rate",
        "tls",
        "http2_protocol_options",
    ];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(
            f.at(RawCluster {
                name: f.required(ctx, "name", Ctx::string),
                connect_timeout: f.optional(ctx, "connect_timeout", Ctx::string).ok(),
                endpoints: f
                    .optional(ctx, "endpoints", |ctx: &mut Ctx<'_>, node: &Node, path: &str| {
                        ctx.list(node, path, RawEndpoint::read)
                    })
                    .ok(),
                lb_policy: f.optional(ctx, "lb_policy", Ctx::string).ok(),
                outlier_detection: f
                    .optional(ctx, "outlier_detection", RawOutlierDetection::read)
                    .ok(),
                health_checks: f.list(ctx, "health_checks", RawHealthCheck::read).items(),
                close_connections_on_host_health_failure: f
                    .optional(ctx, "close_connections_on_host_health_failure", Ctx::boolean)
                    .ok(),
                dns_refresh_rate: f.optional(ctx, "dns_refresh_rate", Ctx::string).ok(),
                tls: f.optional(ctx, "tls", RawUpstreamTls::read).ok(),
                http2_protocol_options: f.optional(ctx, "http2_protocol_options", empty_map).ok(),
            }),
        )
    }
}

/// An endpoint: `host:port` or `{ address, hostname }`.
#[derive(Debug)]
pub(crate) enum RawEndpoint {
    Short(String),
    Long(RawEndpointLong),
}

#[derive(Debug)]
pub(crate) struct RawEndpointLong {
    pub(crate) address: Option<S<String>>,
    pub(crate) hostname: Option<S<String>>,
}

impl RawEndpoint {
    pub(crate) const FIELDS: &'static [&'static str] = &["address", "hostname"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let value = match &node.content {
            Content::Map(_) => {
                let f = ctx.fields(node, path, Self::FIELDS)?;
                RawEndpoint::Long(RawEndpointLong {
                    address: f.required(ctx, "address", Ctx::string),
                    hostname: f.optional(ctx, "hostname", Ctx::string).ok(),
                })
            }
            // A number is not an address: most likely a port without its host.
            Content::Scalar(s) if !(s.null || (s.plain && parse_whole(&s.text).is_some())) => {
                RawEndpoint::Short(s.text.clone())
            }
            _ => {
                ctx.error(
                    node.at,
                    path,
                    format!(
                        "expected an endpoint: a string host:port or a mapping {{address, hostname}}; found {}",
                        node.describe()
                    ),
                );
                return None;
            }
        };
        Some(S { value, at: node.at })
    }
}

/// The keys the mapping at `path` (a field path, e.g. `routes[2].match`) accepts, for
/// hints about where a misplaced field belongs.
pub(crate) fn keys_at(path: &str) -> Keys {
    // The path without list indices: `routes[2].match` is `routes.match`.
    let mut shape = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => shape.push(c),
            _ => {}
        }
    }
    match shape.as_str() {
        "" => Keys::Fields(RawConfig::FIELDS),
        "admin" => Keys::Fields(RawAdmin::FIELDS),
        "tracing" => Keys::Fields(RawTracing::FIELDS),
        "upgrade_configs" | "routes.upgrade_configs" => Keys::Fields(RawUpgradeConfig::FIELDS),
        "routes.upgrade_configs.connect_config" => Keys::Fields(RawConnectConfig::FIELDS),
        "routes.match.connect_matcher" | "clusters.http2_protocol_options" => Keys::Fields(&[]),
        "http_filters" | "upgrade_configs.filters" => Keys::Fields(Filter::NAMES),
        "routes" => Keys::Fields(RawRoute::FIELDS),
        "routes.match" => Keys::Fields(RawMatch::FIELDS),
        "routes.match.headers" => Keys::Fields(RawHeaderMatcher::FIELDS),
        "routes.match.runtime_fraction" => Keys::Fields(RawRuntimeFraction::FIELDS),
        "routes.weighted_clusters" => Keys::Fields(RawWeightedCluster::FIELDS),
        "routes.websocket_config" => Keys::Fields(RawWebSocketConfig::FIELDS),
        "routes.retry_policy" => Keys::Fields(RawRetryPolicy::FIELDS),
        "clusters.outlier_detection" => Keys::Fields(RawOutlierDetection::FIELDS),
        "clusters" => Keys::Fields(RawCluster::FIELDS),
        "clusters.endpoints" => Keys::Fields(RawEndpoint::FIELDS),
        "clusters.health_checks" => Keys::Fields(RawHealthCheck::FIELDS),
        "runtime" => Keys::Any,
        s if s.ends_with("request_headers_to_add") || s.ends_with("response_headers_to_add") => Keys::Any,
        _ => Keys::Unknown,
    }
}

/// A count with a floor of one (`max_connections`, `max_tunnels`).
fn count(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<u64>> {
    ctx.whole(node, path, COUNT)
}
