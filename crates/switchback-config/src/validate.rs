//! Checks the file as written ([`RawConfig`]) and builds the effective [`Config`],
//! collecting every problem with its location instead of stopping at the first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::duration::parse_duration;
use crate::error::Ctx;
use crate::locate::{join_index, join_key};
/// The `retry_on` tokens Switchback knows (Envoy's).
const RETRY_ON: [&str; 4] = ["connect-failure", "reset", "gateway-error", "5xx"];

/// What leaving a tunnel cap out means.
const NO_CAP: &str = "leave it out for no cap of its own";

use crate::model::{
    AccessLog, Cluster, Config, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECT_ATTEMPTS, Endpoint, Filter,
    HeaderMatcher, LbPolicy, MAX_WORKERS, OutlierDetection, PathMatch, RetryPolicy, Route, RouteMatch,
    RouteTarget, RuntimeFraction, UpgradeConfig, WebSocketConfig, WebSocketLimits, WeightedCluster,
};
use crate::parsed::{HeadersToAdd, InvalidToken, PathRegex, UpgradeToken};
use crate::raw::{
    CONCURRENT_STREAMS, CONNECT_ATTEMPTS, FRAMES_PER_SECOND, HEADERS_COUNT, HEADERS_KB, MESSAGE_SIZE,
    PERCENTAGE, RETRIES, RawCluster, RawConfig, RawEndpoint, RawFilter, RawMatch, RawOutlierDetection,
    RawRetryPolicy, RawRoute, RawUpgradeConfig, RawWebSocketLimits, WEIGHT, WORKERS, XFF_HOPS,
};
use crate::read::{Field, List, Pairs, S, Whole};
use crate::suggest;

/// Whether a zero duration is acceptable for a field.
#[derive(Clone, Copy)]
enum Zero {
    /// `0s` is allowed (it means "off" or "immediately", as documented on the field).
    Allowed,
    /// `0s` is rejected with this explanation.
    Rejected(&'static str),
}

/// The characters allowed in a header name, for messages.
const HEADER_NAME_RULE: &str = "header names are non-empty and use only letters, digits and !#$%&'*+-.^_`|~";

impl Ctx<'_> {
    pub(crate) fn socket_addr(&mut self, value: &S<String>, path: &str, example: &str) -> Option<SocketAddr> {
        match value.value.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    value.at,
                    path,
                    format!(
                        "\"{}\" is not a socket address; write ip:port, e.g. {example} or [::1]:{}",
                        value.value,
                        example.rsplit(':').next().unwrap_or("10000"),
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &S<String>, path: &str, zero: Zero) -> Option<Duration> {
        match parse_duration(&value.value) {
            Ok(d) if d.is_zero() => match zero {
                Zero::Allowed => Some(d),
                Zero::Rejected(why) => {
                    self.error(value.at, path, why);
                    None
                }
            },
            Ok(d) => Some(d),
            Err(message) => {
                self.error(value.at, path, message);
                None
            }
        }
    }

    /// A cap (`max_connections`, `max_tunnels`): at least one.
    fn count(&mut self, value: &Option<S<u64>>, path: &str, absent: &str) -> Option<u64> {
        let v = value.as_ref()?;
        if v.value == 0 {
            let field = path.rsplit('.').next().unwrap_or(path);
            self.error(v.at, path, format!("{field} must be at least 1; {absent}"));
            return None;
        }
        Some(v.value)
    }

    /// An upgrade token (`upgrade_type`, `ignore_upgrades` entries): non-empty, one word.
    fn token(&mut self, value: &S<String>, path: &str, what: &str) -> Option<UpgradeToken> {
        let message = match UpgradeToken::new(&value.value) {
            Ok(token) => return Some(token),
            Err(InvalidToken::Empty) => {
                format!("{what} is empty; write an upgrade token such as \"websocket\"")
            }
            Err(InvalidToken::Whitespace) => format!(
                "{what} \"{}\" contains whitespace; an upgrade token is a single word such as \"websocket\"",
                value.value
            ),
        };
        self.error(value.at, path, message);
        None
    }

    fn header_name(&mut self, name: &S<String>, path: &str) -> Option<HeaderName> {
        let parsed = HeaderName::from_bytes(name.value.as_bytes()).ok();
        if parsed.is_none() {
            self.error(
                name.at,
                path,
                format!("invalid header name \"{}\": {HEADER_NAME_RULE}", name.value),
            );
        }
        parsed
    }

    fn header_value(&mut self, value: &S<String>, path: &str, header: &str) -> Option<HeaderValue> {
        let parsed = HeaderValue::from_str(&value.value).ok();
        if parsed.is_none() {
            self.error(
                value.at,
                path,
                format!(
                    "invalid value for header \"{header}\": header values may not contain control characters such as line breaks"
                ),
            );
        }
        parsed
    }

    fn headers_to_add(&mut self, pairs: &Pairs<String>, path: &str) -> HeadersToAdd {
        let mut out = Vec::new();
        let mut seen: Vec<(HeaderName, usize)> = Vec::new();
        for (name, value) in &pairs.0 {
            let entry_path = join_key(path, &name.value);
            let mut parsed_name = self.header_name(name, &entry_path);
            if let Some(parsed) = &parsed_name {
                if let Some((_, line)) = seen.iter().find(|(n, _)| n == parsed) {
                    self.error(
                        name.at,
                        &entry_path,
                        format!(
                            "header \"{}\" is already set at line {line} (header names are case-insensitive); keep one",
                            name.value
                        ),
                    );
                    parsed_name = None;
                } else {
                    seen.push((parsed.clone(), name.at.line));
                }
            }
            let parsed_value = self.header_value(value, &entry_path, &name.value);
            out.extend(parsed_name.zip(parsed_value));
        }
        out.into_iter().collect()
    }

    fn filters(&mut self, raw: &List<RawFilter>, path: &str) -> Vec<Filter> {
        let mut out = Vec::new();
        for (i, filter) in raw.iter().enumerate() {
            let Some(filter) = filter else { continue };
            let entry = join_index(path, i);
            let built = match &filter.value {
                RawFilter::RequestBodyLimit(limit) => Some(Filter::RequestBodyLimit(limit.value)),
                RawFilter::RequestHeadersToAdd(pairs) => Some(Filter::RequestHeadersToAdd(
                    self.headers_to_add(pairs, &join_key(&entry, "request_headers_to_add")),
                )),
                RawFilter::ResponseHeadersToAdd(pairs) => Some(Filter::ResponseHeadersToAdd(
                    self.headers_to_add(pairs, &join_key(&entry, "response_headers_to_add")),
                )),
                RawFilter::ConcurrencyLimit(limit) => {
                    let p = join_key(&entry, "concurrency_limit");
                    match usize::try_from(limit.value).map(NonZeroUsize::new) {
                        Ok(None) => {
                            self.error(
                                limit.at,
                                &p,
                                "concurrency_limit 0 would refuse every request; use at least 1, or remove the filter for no limit",
                            );
                            None
                        }
                        Ok(Some(n)) => Some(Filter::ConcurrencyLimit(n)),
                        Err(_) => {
                            self.error(limit.at, &p, "concurrency_limit is too large");
                            None
                        }
                    }
                }
                RawFilter::Timeout(value) => self
                    .duration(
                        value,
                        &join_key(&entry, "timeout"),
                        Zero::Rejected(
                            "a timeout filter of 0s would fail every request; use a positive duration, or remove the filter for no timeout",
                        ),
                    )
                    .map(Filter::Timeout),
            };
            out.extend(built);
        }
        out
    }

    fn upgrade_configs(
        &mut self,
        raw: &List<RawUpgradeConfig>,
        path: &str,
        route_level: bool,
    ) -> Vec<UpgradeConfig> {
        let mut out = Vec::new();
        let mut seen: Vec<(UpgradeToken, String, usize)> = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let Some(entry) = entry else { continue };
            let entry_path = join_index(path, i);
            let RawUpgradeConfig {
                upgrade_type,
                enabled,
                filters,
                websocket,
                connect_config,
            } = &entry.value;
            let type_path = join_key(&entry_path, "upgrade_type");
            let token = upgrade_type
                .as_ref()
                .and_then(|t| self.token(t, &type_path, "upgrade_type"));
            if let Some(token) = &token
                && let Some(upgrade_type) = upgrade_type
            {
                if let Some((_, first, line)) = seen.iter().find(|(t, _, _)| t == token) {
                    let scope = if route_level {
                        "in this route's upgrade_configs"
                    } else {
                        "in upgrade_configs"
                    };
                    self.error(
                        upgrade_type.at,
                        &type_path,
                        format!(
                            "duplicate upgrade_type \"{}\": \"{first}\" is already configured at line {line} {scope} (upgrade types are case-insensitive); keep one entry",
                            upgrade_type.value
                        ),
                    );
                } else {
                    seen.push((token.clone(), upgrade_type.value.clone(), upgrade_type.at.line));
                }
            }
            let filters = match filters {
                None => None,
                Some(list) if route_level => {
                    let entry_name = upgrade_type
                        .as_ref()
                        .map_or_else(|| "this type".to_owned(), |t| format!("\"{}\"", t.value));
                    self.error(
                        list.at,
                        &join_key(&entry_path, "filters"),
                        format!(
                            "`filters` is not allowed in a route's upgrade_configs: a type's chain belongs at listener level; move it to the top-level upgrade_configs entry for {entry_name} and keep only `enabled` here"
                        ),
                    );
                    None
                }
                Some(list) => Some(self.filters(&list.value, &join_key(&entry_path, "filters"))),
            };
            let ws_path = join_key(&entry_path, "websocket");
            let websocket = match websocket {
                None => None,
                Some(raw) if route_level => {
                    self.error(
                        raw.at,
                        &ws_path,
                        "`websocket` limits of a route go on the route itself (`routes[..].websocket`), not in its upgrade_configs".to_owned(),
                    );
                    None
                }
                Some(raw) if token.as_ref().is_some_and(|t| t.as_str() != "websocket") => {
                    self.error(
                        raw.at,
                        &ws_path,
                        "`websocket` limits apply to the `websocket` upgrade type only; move them to that entry".to_owned(),
                    );
                    None
                }
                Some(raw) => Some(self.websocket_limits(&raw.value, &ws_path)),
            };
            let connect_path = join_key(&entry_path, "connect_config");
            let connect_config = match connect_config {
                None => None,
                Some(raw) if !route_level => {
                    self.error(
                        raw.at,
                        &connect_path,
                        "`connect_config` terminates CONNECT on a route: move it to the `CONNECT` entry of that route's upgrade_configs".to_owned(),
                    );
                    None
                }
                Some(raw) if token.as_ref().is_some_and(|t| t.as_str() != "connect") => {
                    self.error(
                        raw.at,
                        &connect_path,
                        "`connect_config` applies to the `CONNECT` upgrade type only; write `upgrade_type: CONNECT` or remove it".to_owned(),
                    );
                    None
                }
                Some(raw) => Some(crate::model::ConnectConfig {
                    allow_post: raw.value.allow_post.unwrap_or(false),
                }),
            };
            out.extend(token.map(|upgrade_type| UpgradeConfig {
                upgrade_type,
                enabled: enabled.unwrap_or(true),
                filters,
                websocket,
                connect_config,
            }));
        }
        out
    }

    /// A `websocket:` block of limits.
    fn websocket_limits(&mut self, raw: &RawWebSocketLimits, path: &str) -> WebSocketLimits {
        let mut within = |value: &Option<S<u64>>, name: &str, range: Whole| {
            let n = value.as_ref()?;
            if (range.min..=range.max).contains(&n.value) {
                return Some(n.value);
            }
            self.error(
                n.at,
                &join_key(path, name),
                format!(
                    "{name} must be a whole number from {} to {}",
                    range.min, range.max
                ),
            );
            None
        };
        let limits = WebSocketLimits {
            max_frames_per_second: within(
                &raw.max_frames_per_second,
                "max_frames_per_second",
                FRAMES_PER_SECOND,
            )
            .and_then(|n| u32::try_from(n).ok()),
            max_message_size: within(&raw.max_message_size, "max_message_size", MESSAGE_SIZE),
            max_upstream_message_size: within(
                &raw.max_upstream_message_size,
                "max_upstream_message_size",
                MESSAGE_SIZE,
            ),
            ping_interval: None,
            pong_timeout: None,
        };
        let never = Zero::Rejected(
            "a keepalive needs some time: give a duration such as 30s, or leave the field out",
        );
        WebSocketLimits {
            ping_interval: raw
                .ping_interval
                .as_ref()
                .and_then(|d| self.duration(d, &join_key(path, "ping_interval"), never)),
            pong_timeout: raw
                .pong_timeout
                .as_ref()
                .and_then(|d| self.duration(d, &join_key(path, "pong_timeout"), never)),
            ..limits
        }
    }

    fn endpoint(&mut self, raw: &S<RawEndpoint>, path: &str) -> Option<Endpoint> {
        let (address, address_path, hostname) = match &raw.value {
            RawEndpoint::Short(address) => (
                Some(S {
                    value: address.clone(),
                    at: raw.at,
                }),
                path.to_owned(),
                None,
            ),
            RawEndpoint::Long(long) => (
                long.address.clone(),
                join_key(path, "address"),
                long.hostname.as_ref(),
            ),
        };
        let port = address
            .as_ref()
            .and_then(|address| match endpoint_port(&address.value) {
                Ok(port) => Some(port),
                Err(message) => {
                    self.error(address.at, &address_path, message);
                    None
                }
            });
        if let Some(hostname) = hostname
            && (hostname.value.is_empty() || hostname.value.chars().any(char::is_whitespace))
        {
            self.error(
                hostname.at,
                &join_key(path, "hostname"),
                format!(
                    "hostname \"{}\" must be a non-empty name without spaces, e.g. echo.internal",
                    hostname.value
                ),
            );
        }
        Some(Endpoint {
            address: address?.value,
            port: port?,
            hostname: hostname.map(|h| h.value.clone()),
        })
    }

    /// A route's `retry_policy`; tokens are checked here, the values kept as written.
    fn retry_policy(&mut self, raw: &S<RawRetryPolicy>, path: &str) -> RetryPolicy {
        let raw = &raw.value;
        let mut policy = RetryPolicy {
            retry_on: "connect-failure".to_owned(),
            num_retries: 2,
            per_try_timeout: None,
        };
        if let Some(on) = &raw.retry_on {
            for token in on.value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !RETRY_ON.contains(&token) {
                    self.error(
                        on.at,
                        &join_key(path, "retry_on"),
                        format!(
                            "unknown retry_on token {token:?}; use a comma-separated list of {}",
                            RETRY_ON.join(", ")
                        ),
                    );
                }
            }
            policy.retry_on = on.value.clone();
        }
        if let Some(n) = &raw.num_retries {
            if n.value > RETRIES.max {
                self.error(
                    n.at,
                    &join_key(path, "num_retries"),
                    format!("num_retries must be from 0 to {}", RETRIES.max),
                );
            }
            policy.num_retries = u32::try_from(n.value.min(RETRIES.max)).unwrap_or(2);
        }
        if let Some(t) = &raw.per_try_timeout {
            policy.per_try_timeout = self.duration(
                t,
                &join_key(path, "per_try_timeout"),
                Zero::Rejected("per_try_timeout must be greater than zero; omit it for none"),
            );
        }
        policy
    }

    /// A cluster's `outlier_detection`, with Envoy's defaults for what it leaves out.
    fn outlier_detection(&mut self, raw: &S<RawOutlierDetection>, path: &str) -> OutlierDetection {
        let raw = &raw.value;
        let mut o = OutlierDetection {
            consecutive_gateway_failure: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        };
        if let Some(n) = &raw.consecutive_gateway_failure {
            o.consecutive_gateway_failure = u32::try_from(n.value).unwrap_or(u32::MAX);
        }
        let positive = "must be greater than zero (e.g. 30s)";
        if let Some(t) = &raw.base_ejection_time
            && let Some(t) = self.duration(t, &join_key(path, "base_ejection_time"), Zero::Rejected(positive))
        {
            o.base_ejection_time = t;
        }
        if let Some(t) = &raw.max_ejection_time
            && let Some(t) = self.duration(t, &join_key(path, "max_ejection_time"), Zero::Rejected(positive))
        {
            o.max_ejection_time = t;
        }
        if let Some(p) = &raw.max_ejection_percent {
            o.max_ejection_percent = u8::try_from(p.value.min(100)).unwrap_or(100);
        }
        o
    }

    fn cluster(&mut self, raw: &S<RawCluster>, path: &str) -> Cluster {
        let RawCluster {
            name,
            connect_timeout,
            endpoints,
            lb_policy,
            outlier_detection,
            health_checks,
            close_connections_on_host_health_failure,
            dns_refresh_rate,
            tls,
            http2_protocol_options,
        } = &raw.value;
        let lb_policy = match lb_policy.as_ref().map(|p| (p, p.value.as_str())) {
            None | Some((_, "round_robin")) => LbPolicy::RoundRobin,
            Some((_, "least_request")) => LbPolicy::LeastRequest,
            Some((_, "random")) => LbPolicy::Random,
            Some((p, other)) => {
                self.error(
                    p.at,
                    &join_key(path, "lb_policy"),
                    format!("unknown lb_policy {other:?}; use round_robin, least_request or random"),
                );
                LbPolicy::RoundRobin
            }
        };
        let outlier_detection = outlier_detection
            .as_ref()
            .map(|o| self.outlier_detection(o, &join_key(path, "outlier_detection")));
        let connect_timeout = connect_timeout
            .as_ref()
            .and_then(|value| {
                self.duration(
                    value,
                    &join_key(path, "connect_timeout"),
                    Zero::Rejected(
                        "connect_timeout must be greater than zero (e.g. 1s); omit it for the default 5s",
                    ),
                )
            })
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let endpoints_path = join_key(path, "endpoints");
        let mut built = Vec::new();
        match endpoints {
            Some(list) if !list.value.is_empty() => {
                for (i, endpoint) in list.value.iter().enumerate() {
                    let Some(endpoint) = endpoint else { continue };
                    built.extend(self.endpoint(endpoint, &join_index(&endpoints_path, i)));
                }
            }
            _ => {
                let at = endpoints.as_ref().map_or(raw.at, |e| e.at);
                let cluster = name.as_ref().map_or_else(
                    || "this cluster".to_owned(),
                    |n| format!("cluster \"{}\"", n.value),
                );
                self.error(
                    at,
                    &endpoints_path,
                    format!(
                        "{cluster} has no endpoints; add at least one under `endpoints`, e.g. `- 127.0.0.1:9001`"
                    ),
                );
            }
        }
        Cluster {
            name: name.as_ref().map(|n| n.value.clone()).unwrap_or_default(),
            connect_timeout,
            lb_policy,
            outlier_detection,
            endpoints: built,
            health_checks: crate::health::validate(self, health_checks, &join_key(path, "health_checks")),
            close_connections_on_host_health_failure: close_connections_on_host_health_failure
                .as_ref()
                .is_some_and(|b| b.value),
            dns_refresh_rate: dns_refresh_rate
                .as_ref()
                .and_then(|d| {
                    self.duration(
                        d,
                        &join_key(path, "dns_refresh_rate"),
                        Zero::Rejected("dns_refresh_rate must be greater than zero (e.g. 5s)"),
                    )
                })
                .unwrap_or(Duration::from_secs(5)),
            tls: tls.as_ref().map(|t| self.upstream_tls(t, &join_key(path, "tls"))),
            http2_protocol_options: http2_protocol_options
                .as_ref()
                .map(|_| crate::model::Http2ProtocolOptions {}),
        }
    }

    fn path_match(&mut self, m: &S<RawMatch>, path: &str) -> PathMatch {
        let RawMatch {
            prefix,
            path: exact,
            regex,
            connect_matcher,
            ..
        } = &m.value;
        let written = [("prefix", prefix), ("path", exact), ("regex", regex)];
        if let Some(connect) = connect_matcher.valid() {
            if let Some((other, _)) = written.iter().find(|(_, field)| field.is_written()) {
                self.error(
                    connect.at,
                    &join_key(path, "connect_matcher"),
                    format!(
                        "`connect_matcher` and `{other}` are both set; a CONNECT has no path, so a match takes `connect_matcher` alone, remove `{other}`"
                    ),
                );
            }
            return PathMatch::ConnectMatcher(crate::model::ConnectMatcher {});
        }
        if connect_matcher.is_written() {
            // Written, but not as a mapping: reported already.
            return PathMatch::Prefix("/".to_owned());
        }
        if !written.iter().any(|(_, field)| field.is_written()) {
            self.error(
                m.at,
                path,
                "a match needs exactly one of `prefix`, `path`, `regex` or `connect_matcher`; add one, e.g. `prefix: /`",
            );
            return PathMatch::Prefix("/".to_owned());
        }
        let present: Vec<(&str, &S<String>)> = written
            .into_iter()
            .filter_map(|(name, field)| field.valid().map(|v| (name, v)))
            .collect();
        // Written, but of the wrong type: that is reported already.
        let Some(&(kind, value)) = present.first() else {
            return PathMatch::Prefix("/".to_owned());
        };
        for (other, other_value) in present.iter().skip(1) {
            self.error(
                other_value.at,
                &join_key(path, other),
                format!(
                    "`{kind}` and `{other}` are both set; a match takes exactly one of `prefix`, `path` or `regex`, remove one"
                ),
            );
        }
        let value_path = join_key(path, kind);
        match kind {
            "regex" => match PathRegex::new(&value.value) {
                Ok(regex) => PathMatch::Regex(regex),
                Err(e) => {
                    self.error(
                        value.at,
                        &value_path,
                        format!("invalid regex \"{}\": {}", value.value, regex_error_summary(&e)),
                    );
                    PathMatch::Prefix("/".to_owned())
                }
            },
            _ => {
                if !value.value.starts_with('/') {
                    self.error(
                        value.at,
                        &value_path,
                        format!(
                            "{kind} \"{}\" must start with \"/\" (request paths always do), e.g. /{}",
                            value.value,
                            value.value.trim_start_matches('/'),
                        ),
                    );
                }
                if kind == "prefix" {
                    PathMatch::Prefix(value.value.clone())
                } else {
                    PathMatch::Path(value.value.clone())
                }
            }
        }
    }

    fn route_match(&mut self, m: &S<RawMatch>, path: &str) -> RouteMatch {
        let path_match = self.path_match(m, path);
        let mut headers = Vec::new();
        for (i, header) in m.value.headers.iter().enumerate() {
            let Some(header) = header else { continue };
            let entry = join_index(&join_key(path, "headers"), i);
            let Some(header_name) = &header.value.name else {
                continue;
            };
            let name = self.header_name(header_name, &join_key(&entry, "name"));
            if let Some(exact) = &header.value.exact {
                self.header_value(exact, &join_key(&entry, "exact"), &header_name.value);
            }
            headers.extend(name.map(|name| HeaderMatcher {
                name,
                exact: header.value.exact.as_ref().map(|e| e.value.clone()),
            }));
        }
        let runtime_fraction = m.value.runtime_fraction.as_ref().map(|fraction| {
            let fraction_path = join_key(path, "runtime_fraction");
            let key = fraction.value.runtime_key.as_ref();
            if let Some(key) = key
                && key.value.is_empty()
            {
                self.error(
                    key.at,
                    &join_key(&fraction_path, "runtime_key"),
                    "runtime_key is empty; name a key of `runtime`, e.g. routing.traffic_shift.canary",
                );
            }
            let default = fraction.value.default.as_ref().map_or(100, |default| {
                self.percentage(default, &join_key(&fraction_path, "default"), "default")
            });
            RuntimeFraction {
                runtime_key: key.map(|k| k.value.clone()).unwrap_or_default(),
                default,
            }
        });
        RouteMatch {
            path: path_match,
            headers,
            runtime_fraction,
        }
    }

    fn percentage(&mut self, value: &S<u64>, path: &str, what: &str) -> u8 {
        match u8::try_from(value.value) {
            Ok(p) if p <= 100 => p,
            _ => {
                self.error(
                    value.at,
                    path,
                    format!("{what} {} is not a percentage; use {PERCENTAGE}", value.value),
                );
                100
            }
        }
    }

    /// Checks that a route names a defined cluster. `known` is `None` when some cluster's
    /// name could not be read: an unknown name may then be that one, so it is not reported.
    fn cluster_ref(&mut self, name: &S<String>, path: &str, known: Option<&[String]>) {
        let Some(known) = known else { return };
        if known.contains(&name.value) {
            return;
        }
        let names: Vec<&str> = known.iter().map(String::as_str).collect();
        let fix = match suggest::closest(&name.value, &names) {
            Some(close) => format!("did you mean `{close}`?"),
            None => "define it under `clusters` or fix the name".to_owned(),
        };
        let listed = if known.is_empty() {
            "no clusters are defined".to_owned()
        } else {
            format!("known: {}", known.join(", "))
        };
        self.error(
            name.at,
            path,
            format!("unknown cluster \"{}\"; {fix} ({listed})", name.value),
        );
    }

    fn target(&mut self, route: &S<RawRoute>, path: &str, known: Option<&[String]>) -> RouteTarget {
        let r = &route.value;
        if let Some(cluster) = r.cluster.valid() {
            self.cluster_ref(cluster, &join_key(path, "cluster"), known);
        }
        let weighted = r.weighted_clusters.valid().map(|list| {
            let list_path = join_key(path, "weighted_clusters");
            let mut total: u64 = 0;
            // An entry that could not be read may carry weight: the total is unknown then.
            let mut complete = true;
            let mut out = Vec::new();
            for (i, entry) in list.value.iter().enumerate() {
                let entry_path = join_index(&list_path, i);
                let Some(entry) = entry else {
                    complete = false;
                    continue;
                };
                if let Some(name) = &entry.value.name {
                    self.cluster_ref(name, &join_key(&entry_path, "name"), known);
                }
                let Some(weight) = &entry.value.weight else {
                    complete = false;
                    continue;
                };
                let weight = u32::try_from(weight.value).unwrap_or_else(|_| {
                    self.error(
                        weight.at,
                        &join_key(&entry_path, "weight"),
                        format!("weight is too large; use at most {}", WEIGHT.max),
                    );
                    0
                });
                total += u64::from(weight);
                out.extend(entry.value.name.as_ref().map(|name| WeightedCluster {
                    name: name.value.clone(),
                    weight,
                }));
            }
            if complete && total == 0 {
                self.error(
                    list.at,
                    &list_path,
                    "the weights of weighted_clusters total 0; list at least one cluster with a weight above 0",
                );
            }
            (list, out)
        });
        match (r.cluster.valid(), weighted) {
            (Some(cluster), Some((list, _))) => {
                self.error(
                    list.at,
                    &join_key(path, "weighted_clusters"),
                    "a route takes either `cluster` or `weighted_clusters`, not both; remove one",
                );
                RouteTarget::Cluster(cluster.value.clone())
            }
            (Some(cluster), None) => RouteTarget::Cluster(cluster.value.clone()),
            (None, Some((_, list))) => RouteTarget::WeightedClusters(list),
            (None, None) => {
                // A target written with the wrong type is reported already.
                if !r.cluster.is_written() && !r.weighted_clusters.is_written() {
                    self.error(
                        route.at,
                        path,
                        "a route needs a target: add `cluster: <name>` or `weighted_clusters: [{ name, weight }]`",
                    );
                }
                RouteTarget::Cluster(String::new())
            }
        }
    }

    fn route(
        &mut self,
        route: &S<RawRoute>,
        path: &str,
        known: Option<&[String]>,
        stream_idle_timeout: Duration,
    ) -> Route {
        let r = &route.value;
        let matcher = match &r.matcher {
            Some(m) => self.route_match(m, &join_key(path, "match")),
            // Reported while reading; this stands in so the rest is still checked.
            None => RouteMatch {
                path: PathMatch::Prefix("/".to_owned()),
                headers: Vec::new(),
                runtime_fraction: None,
            },
        };
        let target = self.target(route, path, known);

        let auto_host_rewrite = r.auto_host_rewrite.as_ref().is_some_and(|a| a.value);
        if let Some(literal) = &r.host_rewrite_literal {
            let literal_path = join_key(path, "host_rewrite_literal");
            if literal.value.is_empty() {
                self.error(
                    literal.at,
                    &literal_path,
                    "host_rewrite_literal is empty; write a host name, e.g. echo.internal",
                );
            } else {
                self.header_value(literal, &literal_path, "host");
            }
            if let Some(auto) = r.auto_host_rewrite.as_ref().filter(|a| a.value) {
                self.error(
                    auto.at,
                    &join_key(path, "auto_host_rewrite"),
                    "`host_rewrite_literal` and `auto_host_rewrite: true` are mutually exclusive; keep one",
                );
            }
        }

        let request_headers_to_add = self.headers_to_add(
            &r.request_headers_to_add,
            &join_key(path, "request_headers_to_add"),
        );
        let remove_path = join_key(path, "request_headers_to_remove");
        let request_headers_to_remove = r
            .request_headers_to_remove
            .iter()
            .enumerate()
            .filter_map(|(i, name)| self.header_name(name.as_ref()?, &join_index(&remove_path, i)))
            .collect();

        let timeout = match &r.timeout {
            None => Some(crate::model::DEFAULT_ROUTE_TIMEOUT),
            Some(t) => self
                .duration(t, &join_key(path, "timeout"), Zero::Allowed)
                .filter(|t| !t.is_zero()),
        };
        let idle_timeout = r
            .idle_timeout
            .as_ref()
            .and_then(|t| self.duration(t, &join_key(path, "idle_timeout"), Zero::Allowed))
            .unwrap_or(stream_idle_timeout);
        let max_stream_duration = r
            .max_stream_duration
            .as_ref()
            .and_then(|t| self.duration(t, &join_key(path, "max_stream_duration"), Zero::Allowed))
            .filter(|t| !t.is_zero());
        let upgrade_configs =
            self.upgrade_configs(&r.upgrade_configs, &join_key(path, "upgrade_configs"), true);

        let mut websocket_config = WebSocketConfig {
            idle_timeout,
            max_connect_attempts: DEFAULT_MAX_CONNECT_ATTEMPTS,
        };
        if let Some(ws) = &r.websocket_config {
            let ws_path = join_key(path, "websocket_config");
            if let Some(t) = &ws.value.idle_timeout
                && let Some(t) = self.duration(t, &join_key(&ws_path, "idle_timeout"), Zero::Allowed)
            {
                websocket_config.idle_timeout = t;
            }
            if let Some(attempts) = &ws.value.max_connect_attempts {
                match u32::try_from(attempts.value).map(NonZeroU32::new) {
                    Ok(None) => self.error(
                        attempts.at,
                        &join_key(&ws_path, "max_connect_attempts"),
                        "max_connect_attempts must be at least 1 (1 = a single attempt, no retry)",
                    ),
                    Ok(Some(n)) => websocket_config.max_connect_attempts = n,
                    Err(_) => self.error(
                        attempts.at,
                        &join_key(&ws_path, "max_connect_attempts"),
                        format!(
                            "max_connect_attempts is too large; use at most {}",
                            CONNECT_ATTEMPTS.max
                        ),
                    ),
                }
            }
        }

        Route {
            matcher,
            target,
            prefix_rewrite: r.prefix_rewrite.as_ref().map(|p| p.value.clone()),
            host_rewrite_literal: r.host_rewrite_literal.as_ref().map(|h| h.value.clone()),
            auto_host_rewrite,
            request_headers_to_add,
            request_headers_to_remove,
            timeout,
            idle_timeout,
            max_stream_duration,
            max_tunnels: self.count(&r.max_tunnels, &join_key(path, "max_tunnels"), NO_CAP),
            retry_policy: r
                .retry_policy
                .as_ref()
                .map(|p| self.retry_policy(p, &join_key(path, "retry_policy"))),
            upgrade_configs,
            use_websocket: r.use_websocket,
            websocket_config,
            websocket: r
                .websocket
                .as_ref()
                .map(|w| self.websocket_limits(&w.value, &join_key(path, "websocket"))),
        }
    }

    /// Checks everything and builds the effective config; problems land in `self.errors`.
    pub(crate) fn build(&mut self, raw: &RawConfig) -> Config {
        let mut config = Config::default();

        if let Some(listen) = &raw.listen
            && let Some(addr) = self.socket_addr(listen, "listen", "127.0.0.1:10000")
        {
            config.listeners[0].address = addr;
        }
        if let Some(listeners) = &raw.listeners {
            if raw.listen.is_some() {
                self.error(
                    listeners.at,
                    "listeners",
                    "both `listen` and `listeners` are set; keep one: move the `listen` address into `listeners` as `- address: ...`",
                );
            }
            config.listeners = self.listeners(listeners);
        }
        if let Some(admin) = &raw.admin {
            config.admin = self.admin(admin);
        }
        if let Some(workers) = &raw.workers {
            // The bounds of WORKERS, which the type error names too.
            match usize::try_from(workers.value).map(NonZeroUsize::new) {
                Ok(None) => self.error(
                    workers.at,
                    "workers",
                    format!(
                        "workers must be at least {} (leave it out for one per CPU)",
                        WORKERS.min
                    ),
                ),
                Ok(Some(n)) if n.get() <= MAX_WORKERS => config.workers = n,
                _ => self.error(
                    workers.at,
                    "workers",
                    format!(
                        "workers is too large: at most {} (leave it out for one per CPU)",
                        WORKERS.max
                    ),
                ),
            }
        }
        if let Some(d) = &raw.drain_timeout
            && let Some(d) = self.duration(d, "drain_timeout", Zero::Allowed)
        {
            config.drain_timeout = d;
        }
        if let Some(path) = &raw.takeover_socket {
            if path.value.is_empty() {
                self.error(
                    path.at,
                    "takeover_socket",
                    "takeover_socket is empty; give a unix socket path, e.g. /run/switchback/takeover.sock",
                );
            } else {
                config.takeover_socket = Some(PathBuf::from(&path.value));
            }
        }
        if let Some(d) = &raw.drain_close_window
            && let Some(d) = self.duration(d, "drain_close_window", Zero::Allowed)
        {
            config.drain_close_window = d;
        }
        if let Some(d) = &raw.stream_idle_timeout
            && let Some(d) = self.duration(d, "stream_idle_timeout", Zero::Allowed)
        {
            config.stream_idle_timeout = d;
        }
        if let Some(d) = &raw.request_headers_timeout
            && let Some(d) = self.duration(
                d,
                "request_headers_timeout",
                Zero::Rejected(
                    "a client needs some time to send its request head; 10s is Envoy's edge advice",
                ),
            )
        {
            config.request_headers_timeout = d;
        }
        for (field, value, range, slot) in [
            (
                "max_request_headers_kb",
                &raw.max_request_headers_kb,
                HEADERS_KB,
                &mut config.max_request_headers_kb,
            ),
            (
                "max_headers_count",
                &raw.max_headers_count,
                HEADERS_COUNT,
                &mut config.max_headers_count,
            ),
            (
                "max_concurrent_streams",
                &raw.max_concurrent_streams,
                CONCURRENT_STREAMS,
                &mut config.max_concurrent_streams,
            ),
        ] {
            let Some(v) = value else { continue };
            match u32::try_from(v.value) {
                Ok(n) if (range.min..=range.max).contains(&v.value) => *slot = n,
                _ => self.error(
                    v.at,
                    field,
                    format!(
                        "{field} must be a whole number from {} to {}",
                        range.min, range.max
                    ),
                ),
            }
        }

        if let Some(d) = &raw.connection_idle_timeout
            && let Some(d) = self.duration(d, "connection_idle_timeout", Zero::Allowed)
        {
            config.connection_idle_timeout = d;
        }
        config.max_connections = self.count(
            &raw.max_connections,
            "max_connections",
            "leave it out to derive it from the descriptor limit",
        );
        config.max_tunnels = self.count(&raw.max_tunnels, "max_tunnels", NO_CAP);

        config.upgrade_configs = self.upgrade_configs(&raw.upgrade_configs, "upgrade_configs", false);

        if let Some(tokens) = &raw.ignore_upgrades {
            config.ignore_upgrades = Vec::new();
            for (i, token) in tokens.value.iter().enumerate() {
                let Some(token) = token else { continue };
                let token = self.token(token, &join_index("ignore_upgrades", i), "ignore_upgrades entry");
                config.ignore_upgrades.extend(token);
            }
        }

        config.http_filters = self.filters(&raw.http_filters, "http_filters");

        let mut runtime = BTreeMap::new();
        for (key, value) in &raw.runtime.0 {
            let p = self.percentage(value, &join_key("runtime", &key.value), "runtime value");
            runtime.insert(key.value.clone(), p);
        }
        config.runtime = runtime;

        // Every name written under `clusters`, even of clusters with other problems, so a
        // broken cluster does not also produce "unknown cluster" errors on its routes; and
        // when a name could not be read at all, no route's cluster is called unknown.
        let mut known: Vec<String> = Vec::new();
        let mut all_known = !matches!(raw.clusters, Field::Invalid);
        let mut first_line: BTreeMap<&str, usize> = BTreeMap::new();
        let clusters = raw.clusters.valid().map_or(&[][..], |list| &list.value[..]);
        for (i, cluster) in clusters.iter().enumerate() {
            let Some(cluster) = cluster else {
                all_known = false;
                continue;
            };
            let path = join_index("clusters", i);
            let name_path = join_key(&path, "name");
            let Some(name) = &cluster.value.name else {
                all_known = false;
                config.clusters.push(self.cluster(cluster, &path));
                continue;
            };
            if name.value.trim().is_empty() {
                self.error(
                    name.at,
                    &name_path,
                    "cluster name is empty; give the cluster a name routes can refer to",
                );
            } else if let Some(line) = first_line.get(name.value.as_str()) {
                self.error(
                    name.at,
                    &name_path,
                    format!(
                        "duplicate cluster name \"{}\" (first defined at line {line}); cluster names must be unique, rename or merge one",
                        name.value
                    ),
                );
            } else {
                first_line.insert(&name.value, name.at.line);
                known.push(name.value.clone());
            }
            let built = self.cluster(cluster, &path);
            config.clusters.push(built);
        }

        let known = all_known.then_some(&known[..]);
        for (i, route) in raw.routes.iter().enumerate() {
            let Some(route) = route else { continue };
            let built = self.route(route, &join_index("routes", i), known, config.stream_idle_timeout);
            config.routes.push(built);
        }

        self.forwarded(raw, &mut config);

        if let Some(log) = &raw.access_log {
            config.access_log = match log.value.as_str() {
                "-" => AccessLog::Stdout,
                "" => {
                    self.error(
                        log.at,
                        "access_log",
                        "access_log is empty; write a file path, or \"-\" for standard output",
                    );
                    AccessLog::Stdout
                }
                path => AccessLog::File(PathBuf::from(path)),
            };
        }
        if let Some(tracing) = &raw.tracing {
            config.tracing = self.tracing(tracing);
        }

        config
    }
}

impl Ctx<'_> {
    /// The forwarded-identity fields: `xff_num_trusted_hops` in range, and no
    /// `preserve_external_request_id: false` that could never take effect.
    fn forwarded(&mut self, raw: &RawConfig, config: &mut Config) {
        let flag = |v: &Option<S<bool>>, default: bool| v.as_ref().map_or(default, |v| v.value);
        config.use_remote_address = flag(&raw.use_remote_address, config.use_remote_address);
        config.x_forwarded_proto = flag(&raw.x_forwarded_proto, config.x_forwarded_proto);
        config.generate_request_id = flag(&raw.generate_request_id, config.generate_request_id);
        config.preserve_external_request_id = flag(
            &raw.preserve_external_request_id,
            config.preserve_external_request_id,
        );
        if let Some(hops) = &raw.xff_num_trusted_hops {
            match u32::try_from(hops.value) {
                Ok(n) if hops.value <= XFF_HOPS.max => config.xff_num_trusted_hops = n,
                _ => self.error(
                    hops.at,
                    "xff_num_trusted_hops",
                    format!(
                        "xff_num_trusted_hops must be from 0 to {}: the number of proxies in front of \
                         switchback that append to X-Forwarded-For",
                        XFF_HOPS.max
                    ),
                ),
            }
        }
        if let Some(p) = raw.preserve_external_request_id.as_ref().filter(|p| !p.value) {
            let why = if !config.generate_request_id {
                Some("needs `generate_request_id: true`, or nothing would replace the client's id")
            } else if !config.use_remote_address {
                Some("needs `use_remote_address: true`: only an edge request's id is replaced")
            } else {
                None
            };
            if let Some(why) = why {
                self.error(
                    p.at,
                    "preserve_external_request_id",
                    format!("`preserve_external_request_id: false` {why}; change one or remove it"),
                );
            }
        }
    }
}

/// The port of an endpoint address (`ip:port`, `[ipv6]:port` or `hostname:port`), or why
/// the address is not one.
fn endpoint_port(address: &str) -> Result<u16, String> {
    const FORMS: &str = "write host:port, e.g. 127.0.0.1:9001, [::1]:9001 or echo.internal:9001";
    let port = if let Ok(addr) = address.parse::<SocketAddr>() {
        addr.port()
    } else {
        let Some((host, port)) = address.rsplit_once(':') else {
            return Err(format!("endpoint address \"{address}\" has no port; {FORMS}"));
        };
        if host.is_empty() {
            return Err(format!("endpoint address \"{address}\" has no host; {FORMS}"));
        }
        if host.starts_with('[') || host.contains(':') {
            return Err(format!(
                "endpoint address \"{address}\" is not a valid IPv6 socket address; IPv6 addresses need brackets, e.g. [::1]:9001"
            ));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!(
                "endpoint address \"{address}\": \"{host}\" is not a valid host name or IP address; {FORMS}"
            ));
        }
        port.parse::<u16>().map_err(|_| {
            format!("endpoint address \"{address}\": port \"{port}\" is not a number from 1 to 65535")
        })?
    };
    if port == 0 {
        return Err(format!(
            "endpoint address \"{address}\": port 0 cannot be connected to; use a port from 1 to 65535"
        ));
    }
    Ok(port)
}

/// The one-line gist of a regex error (the `regex` crate's messages span several lines).
fn regex_error_summary(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ports() {
        assert_eq!(endpoint_port("127.0.0.1:9001"), Ok(9001));
        assert_eq!(endpoint_port("[::1]:9002"), Ok(9002));
        assert_eq!(endpoint_port("echo.internal:80"), Ok(80));
        for bad in [
            "echo.internal",
            ":80",
            "::1:80",
            "[::1:80",
            "echo internal:80",
            "echo:http",
            "echo:70000",
            "echo:0",
            "127.0.0.1:0",
        ] {
            assert!(endpoint_port(bad).is_err(), "{bad} should be rejected");
        }
        assert!(
            endpoint_port("echo")
                .unwrap_err()
                .contains("has no port; write host:port")
        );
    }

    #[test]
    fn regex_summary_is_one_line() {
        // Built at run time so clippy does not flag the (deliberately) invalid pattern.
        let pattern = String::from("^/ws/[0-9+$");
        let Err(e) = regex::Regex::new(&pattern) else {
            panic!("pattern should be invalid");
        };
        assert_eq!(regex_error_summary(&e), "unclosed character class");
    }
}
