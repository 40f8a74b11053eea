#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::*;

/// The example of the schema, exactly as documented.
const FULL: &str = r#"listen: 127.0.0.1:10000          # HTTP/1.1 and HTTP/2 prior knowledge on one port
admin: 127.0.0.1:9901            # optional
drain_timeout: 30s
stream_idle_timeout: 5m          # default idle timeout of upgraded streams
upgrade_configs:                 # listener-level upgrade types
  - upgrade_type: websocket
  - upgrade_type: foo
    enabled: false
    filters: []                  # present: this type's own chain; [] = router only
ignore_upgrades: ["tls/*"]       # tokens stripped and proxied as plain HTTP; h2c always is
http_filters:                    # the default chain, in order; the router is implicit at the end
  - request_body_limit: 1024
  - request_headers_to_add: { x-proxied-by: switchback }
  - response_headers_to_add: { x-served-by: switchback }
  - concurrency_limit: 1000
runtime:
  routing.traffic_shift.canary: 10
routes:
  - match:
      prefix: /ws                # or path: /exact, or regex: "^/ws/[0-9]+$"
      headers: [{ name: x-canary, exact: "1" }]   # optional; without exact: present
      runtime_fraction: { runtime_key: routing.traffic_shift.canary, default: 100 }
    cluster: echo                # or weighted_clusters: [{ name: a, weight: 80 }, { name: b, weight: 20 }]
    prefix_rewrite: /echo
    host_rewrite_literal: echo.internal   # or auto_host_rewrite: true
    request_headers_to_add: { x-route: ws }
    request_headers_to_remove: [x-debug]
    timeout: 15s
    idle_timeout: 1m
    upgrade_configs:
      - { upgrade_type: foo, enabled: true }
    use_websocket: false         # true: legacy raw mode for WebSocket upgrades on this route
    websocket_config: { idle_timeout: 10s, max_connect_attempts: 3 }
clusters:
  - name: echo
    connect_timeout: 1s
    endpoints:
      - 127.0.0.1:9001
      - { address: 127.0.0.1:9002, hostname: echo.internal }
access_log: /var/log/switchback.jsonl    # optional; "-" or absent = stdout
"#;

/// A small valid base that tests append to.
const CLUSTERS: &str = "\
clusters:
  - name: echo
    endpoints: [127.0.0.1:9001]
  - name: other
    endpoints: [127.0.0.1:9002]
";

fn parse(yaml: &str) -> Config {
    match Config::from_yaml_str(yaml, "config.yaml") {
        Ok(config) => config,
        Err(errors) => panic!("unexpected errors:\n{}", render(&errors)),
    }
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    match Config::from_yaml_str(yaml, "config.yaml") {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => errors,
    }
}

fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The only error of `yaml`.
fn one(yaml: &str) -> ConfigError {
    let errors = errors(yaml);
    assert_eq!(errors.len(), 1, "expected one error, got:\n{}", render(&errors));
    errors.into_iter().next().unwrap()
}

/// Asserts path, line and that the message contains `needle`.
#[track_caller]
fn check(error: &ConfigError, path: &str, line: usize, needle: &str) {
    assert_eq!(error.path, path, "path of {error}");
    assert_eq!(error.line, Some(line), "line of {error}");
    assert!(error.column.is_some(), "column of {error}");
    assert!(
        error.message.contains(needle),
        "message of {error} should contain {needle:?}"
    );
    assert_eq!(error.file, "config.yaml");
}

fn with_clusters(yaml: &str) -> String {
    format!("{CLUSTERS}{yaml}")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn token(s: &str) -> UpgradeToken {
    s.parse().unwrap()
}

fn header_name(s: &str) -> HeaderName {
    HeaderName::from_bytes(s.as_bytes()).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeadersToAdd {
    pairs
        .iter()
        .map(|(name, value)| (header_name(name), HeaderValue::from_str(value).unwrap()))
        .collect()
}

fn attempts(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

// ---------------------------------------------------------------- the full example

#[test]
fn full_example_lands_everywhere() {
    let c = parse(FULL);
    assert_eq!(c.listeners[0].address, addr("127.0.0.1:10000"));
    assert_eq!(c.admin, Some(AdminEndpoint::new(addr("127.0.0.1:9901"))));
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.stream_idle_timeout, Duration::from_secs(300));

    assert_eq!(
        c.upgrade_configs,
        vec![
            UpgradeConfig {
                upgrade_type: token("websocket"),
                enabled: true,
                filters: None,
                websocket: None,
                connect_config: None,
            },
            UpgradeConfig {
                upgrade_type: token("foo"),
                enabled: false,
                filters: Some(vec![]),
                websocket: None,
                connect_config: None,
            },
        ]
    );
    assert_eq!(c.ignore_upgrades, vec![token("tls/*")]);
    assert_eq!(
        c.http_filters,
        vec![
            Filter::RequestBodyLimit(1024),
            Filter::RequestHeadersToAdd(headers(&[("x-proxied-by", "switchback")])),
            Filter::ResponseHeadersToAdd(headers(&[("x-served-by", "switchback")])),
            Filter::ConcurrencyLimit(NonZeroUsize::new(1000).unwrap()),
        ]
    );
    assert_eq!(
        c.runtime,
        BTreeMap::from([("routing.traffic_shift.canary".to_owned(), 10)])
    );

    assert_eq!(c.routes.len(), 1);
    let r = &c.routes[0];
    assert_eq!(r.matcher.path, PathMatch::Prefix("/ws".into()));
    assert_eq!(
        r.matcher.headers,
        vec![HeaderMatcher {
            name: header_name("x-canary"),
            exact: Some("1".into())
        }]
    );
    assert_eq!(
        r.matcher.runtime_fraction,
        Some(RuntimeFraction {
            runtime_key: "routing.traffic_shift.canary".into(),
            default: 100
        })
    );
    assert_eq!(r.target, RouteTarget::Cluster("echo".into()));
    assert_eq!(r.prefix_rewrite.as_deref(), Some("/echo"));
    assert_eq!(r.host_rewrite_literal.as_deref(), Some("echo.internal"));
    assert!(!r.auto_host_rewrite);
    assert_eq!(r.request_headers_to_add, headers(&[("x-route", "ws")]));
    assert_eq!(r.request_headers_to_remove, vec![header_name("x-debug")]);
    assert_eq!(r.timeout, Some(Duration::from_secs(15)));
    assert_eq!(r.idle_timeout, Duration::from_secs(60));
    assert_eq!(
        r.upgrade_configs,
        vec![UpgradeConfig {
            upgrade_type: token("foo"),
            enabled: true,
            filters: None,
            websocket: None,
            connect_config: None,
        }]
    );
    assert_eq!(r.upgrade_override("FOO"), Some(true));
    assert_eq!(r.upgrade_override("websocket"), None);
    assert!(!r.use_websocket);
    assert_eq!(
        r.websocket_config,
        WebSocketConfig {
            idle_timeout: Duration::from_secs(10),
            max_connect_attempts: attempts(3)
        }
    );

    assert_eq!(c.clusters.len(), 1);
    let cluster = &c.clusters[0];
    assert_eq!(cluster.name, "echo");
    assert_eq!(cluster.connect_timeout, Duration::from_secs(1));
    assert_eq!(
        cluster.endpoints,
        vec![
            Endpoint {
                address: "127.0.0.1:9001".into(),
                port: 9001,
                hostname: None
            },
            Endpoint {
                address: "127.0.0.1:9002".into(),
                port: 9002,
                hostname: Some("echo.internal".into())
            },
        ]
    );
    assert_eq!(
        c.access_log,
        AccessLog::File(PathBuf::from("/var/log/switchback.jsonl"))
    );
    assert_eq!(c.cluster("echo"), Some(cluster));
    assert_eq!(c.upgrade_config("WebSocket"), Some(&c.upgrade_configs[0]));
}

// ---------------------------------------------------------------- defaults

#[test]
fn empty_document_is_all_defaults() {
    for yaml in ["", "# nothing but a comment\n", "{}\n"] {
        let c = parse(yaml);
        assert_eq!(c, Config::default());
        assert_eq!(c.listeners[0].address, addr("127.0.0.1:10000"));
        assert_eq!(c.admin, None);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.stream_idle_timeout, Duration::from_secs(300));
        assert!(c.upgrade_configs.is_empty());
        assert_eq!(c.ignore_upgrades, vec![token("tls/*")]);
        assert!(c.http_filters.is_empty());
        assert!(c.runtime.is_empty());
        assert!(c.routes.is_empty());
        assert!(c.clusters.is_empty());
        assert_eq!(c.access_log, AccessLog::Stdout);
    }
}

#[test]
fn nested_defaults() {
    let c = parse(&with_clusters(
        "\
stream_idle_timeout: 2m
upgrade_configs:
  - upgrade_type: websocket
routes:
  - match: { path: /exact }
    cluster: echo
  - match: { prefix: /a }
    cluster: echo
    websocket_config: { max_connect_attempts: 2 }
  - match: { prefix: /b }
    cluster: echo
    idle_timeout: 0s
access_log: \"-\"
",
    ));
    assert!(c.upgrade_configs[0].enabled);
    assert_eq!(c.upgrade_configs[0].filters, None);
    assert_eq!(c.clusters[0].connect_timeout, Duration::from_secs(5));
    assert_eq!(c.access_log, AccessLog::Stdout);

    let r = &c.routes[0];
    assert_eq!(r.matcher.path, PathMatch::Path("/exact".into()));
    assert!(r.matcher.headers.is_empty());
    assert_eq!(r.matcher.runtime_fraction, None);
    assert_eq!(
        r.timeout,
        Some(Duration::from_secs(15)),
        "absent = Envoy's 15 s default"
    );
    // Route idle timeout absent = stream_idle_timeout; websocket_config defaults to it too.
    assert_eq!(r.idle_timeout, Duration::from_secs(120));
    assert_eq!(
        r.websocket_config,
        WebSocketConfig {
            idle_timeout: Duration::from_secs(120),
            max_connect_attempts: attempts(1)
        }
    );
    assert!(!r.use_websocket);
    assert!(!r.auto_host_rewrite);
    assert!(r.upgrade_configs.is_empty());
    assert!(r.request_headers_to_add.is_empty());

    assert_eq!(c.routes[1].websocket_config.max_connect_attempts, attempts(2));
    assert_eq!(
        c.routes[1].websocket_config.idle_timeout,
        Duration::from_secs(120)
    );
    // 0s = off, and the WebSocket idle timeout follows the route's.
    assert_eq!(c.routes[2].idle_timeout, Duration::ZERO);
    assert_eq!(c.routes[2].websocket_config.idle_timeout, Duration::ZERO);
}

#[test]
fn zero_timeouts_mean_off() {
    let c = parse(&with_clusters(
        "\
drain_timeout: 0s
stream_idle_timeout: 0s
routes:
  - match: { prefix: / }
    cluster: echo
    timeout: 0s
    websocket_config: { idle_timeout: 0ms }
",
    ));
    assert_eq!(c.drain_timeout, Duration::ZERO);
    assert_eq!(c.stream_idle_timeout, Duration::ZERO);
    assert_eq!(c.routes[0].idle_timeout, Duration::ZERO);
    assert_eq!(c.routes[0].timeout, None);
    assert_eq!(c.routes[0].websocket_config.idle_timeout, Duration::ZERO);
}

#[test]
fn filters_empty_list_versus_absent() {
    let c = parse(
        "\
upgrade_configs:
  - upgrade_type: websocket
  - upgrade_type: connect-udp
    filters: []
  - upgrade_type: foo
    filters:
      - request_body_limit: 0
      - timeout: 250ms
",
    );
    assert_eq!(c.upgrade_configs[0].filters, None, "absent = default chain");
    assert_eq!(c.upgrade_configs[1].filters, Some(vec![]), "[] = router only");
    assert_eq!(
        c.upgrade_configs[2].filters,
        Some(vec![
            Filter::RequestBodyLimit(0),
            Filter::Timeout(Duration::from_millis(250))
        ])
    );
}

#[test]
fn endpoint_short_and_long_forms() {
    let c = parse(
        "\
clusters:
  - name: mixed
    endpoints:
      - 127.0.0.1:9001
      - \"[::1]:9002\"
      - echo.internal:80
      - address: 10.0.0.1:443
        hostname: api.example.com
      - { address: backend:8080 }
",
    );
    let e = &c.clusters[0].endpoints;
    assert_eq!(e.len(), 5);
    assert_eq!(
        (e[0].address.as_str(), e[0].port, e[0].hostname.as_deref()),
        ("127.0.0.1:9001", 9001, None)
    );
    assert_eq!(e[0].socket_addr(), Some(addr("127.0.0.1:9001")));
    assert_eq!(e[1].port, 9002);
    assert_eq!(e[1].host(), "::1");
    assert_eq!(e[2].host(), "echo.internal");
    assert_eq!(e[2].socket_addr(), None, "host names are not resolved");
    assert_eq!(
        (e[3].address.as_str(), e[3].port, e[3].hostname.as_deref()),
        ("10.0.0.1:443", 443, Some("api.example.com"))
    );
    assert_eq!(
        (e[4].host(), e[4].port, e[4].hostname.as_deref()),
        ("backend", 8080, None)
    );
}

#[test]
fn weighted_clusters_and_other_matches() {
    let c = parse(&with_clusters(
        r#"
routes:
  - match:
      regex: "^/ws/[0-9]+$"
      headers: [{ name: x-present }]
    weighted_clusters: [{ name: echo, weight: 80 }, { name: other, weight: 20 }]
    auto_host_rewrite: true
"#,
    ));
    let r = &c.routes[0];
    assert_eq!(
        r.matcher.path,
        PathMatch::Regex(PathRegex::new("^/ws/[0-9]+$").unwrap())
    );
    assert_eq!(
        r.matcher.headers,
        vec![HeaderMatcher {
            name: header_name("x-present"),
            exact: None
        }]
    );
    assert_eq!(
        r.target,
        RouteTarget::WeightedClusters(vec![
            WeightedCluster {
                name: "echo".into(),
                weight: 80
            },
            WeightedCluster {
                name: "other".into(),
                weight: 20
            },
        ])
    );
    assert!(r.auto_host_rewrite);
}

// ---------------------------------------------------------------- durations

#[test]
fn durations_good() {
    for (text, expected) in [
        ("250ms", Duration::from_millis(250)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("0s", Duration::ZERO),
        ("0ms", Duration::ZERO),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
        let c = parse(&format!("drain_timeout: {text}\n"));
        assert_eq!(c.drain_timeout, expected);
    }
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    assert_eq!(format_duration(Duration::from_secs(61)), "61s");
}

#[test]
fn durations_bad() {
    for text in [
        "30",
        "30sec",
        "1.5s",
        "-1s",
        "s",
        "",
        "5 m",
        "1d",
        "30S",
        "99999999999999999999s",
        "18446744073709551615h",
    ] {
        let message = parse_duration(text).unwrap_err();
        assert!(message.contains(&format!("\"{text}\"")), "{message}");
    }
    assert!(
        parse_duration("30")
            .unwrap_err()
            .contains("a bare number has no unit; expected an integer followed by a unit: ms, s, m or h (e.g. 250ms, 30s, 5m, 1h")
    );
    assert!(
        parse_duration("30sec")
            .unwrap_err()
            .contains("unknown unit \"sec\"")
    );
    assert!(
        parse_duration("1.5s")
            .unwrap_err()
            .contains("fractions are not supported")
    );

    let e = one("listen: 127.0.0.1:10000\ndrain_timeout: 30\n");
    check(
        &e,
        "drain_timeout",
        2,
        "invalid duration \"30\": a bare number has no unit",
    );
    assert_eq!(e.column, Some(16));
    assert_eq!(
        e.to_string(),
        "config.yaml:2:16: drain_timeout: invalid duration \"30\": a bare number has no unit; expected an integer followed by a unit: ms, s, m or h (e.g. 250ms, 30s, 5m, 1h; 0s turns a timeout off where allowed)"
    );
    let e = one("stream_idle_timeout: 5min\n");
    check(
        &e,
        "stream_idle_timeout",
        1,
        "unknown unit \"min\"; expected an integer followed by a unit: ms, s, m or h",
    );
}

#[test]
fn zero_where_a_duration_cannot_be_off() {
    let e = one("clusters:\n  - name: a\n    connect_timeout: 0s\n    endpoints: [a:1]\n");
    check(
        &e,
        "clusters[0].connect_timeout",
        3,
        "connect_timeout must be greater than zero",
    );
    let e = one("http_filters:\n  - timeout: 0s\n");
    check(
        &e,
        "http_filters[0].timeout",
        2,
        "a timeout filter of 0s would fail every request",
    );
    let e = one("http_filters:\n  - timeout: 10\n");
    check(&e, "http_filters[0].timeout", 2, "a bare number has no unit");
}

// ---------------------------------------------------------------- validation errors

#[test]
fn duplicate_upgrade_type_at_listener_level() {
    let e = one("upgrade_configs:\n  - upgrade_type: websocket\n  - upgrade_type: WebSocket\n");
    check(
        &e,
        "upgrade_configs[1].upgrade_type",
        3,
        "duplicate upgrade_type \"WebSocket\": \"websocket\" is already configured at line 2 in upgrade_configs (upgrade types are case-insensitive); keep one entry",
    );
    assert_eq!(e.column, Some(19));
}

#[test]
fn duplicate_upgrade_type_in_a_route() {
    let e = one(&with_clusters(
        "\
routes:
  - match: { prefix: / }
    cluster: echo
    upgrade_configs:
      - upgrade_type: foo
      - { upgrade_type: FOO, enabled: false }
",
    ));
    check(
        &e,
        "routes[0].upgrade_configs[1].upgrade_type",
        11,
        "duplicate upgrade_type \"FOO\": \"foo\" is already configured at line 10 in this route's upgrade_configs",
    );
}

#[test]
fn route_names_a_missing_cluster() {
    let e = one(&with_clusters(
        "routes:\n  - match: { prefix: / }\n    cluster: ech\n",
    ));
    check(&e, "routes[0].cluster", 8, "");
    assert_eq!(
        e.to_string(),
        "config.yaml:8:14: routes[0].cluster: unknown cluster \"ech\"; did you mean `echo`? (known: echo, other)"
    );
}

#[test]
fn weighted_cluster_names_a_missing_cluster() {
    let e = one(&with_clusters(
        "\
routes:
  - match: { prefix: / }
    weighted_clusters:
      - { name: echo, weight: 1 }
      - { name: nope, weight: 1 }
",
    ));
    check(
        &e,
        "routes[0].weighted_clusters[1].name",
        10,
        "unknown cluster \"nope\"; define it under `clusters` or fix the name (known: echo, other)",
    );
}

#[test]
fn route_upgrade_config_with_filters() {
    let e = one(&with_clusters(
        "\
upgrade_configs:
  - upgrade_type: foo
routes:
  - match: { prefix: / }
    cluster: echo
    upgrade_configs:
      - upgrade_type: foo
        filters: []
",
    ));
    check(
        &e,
        "routes[0].upgrade_configs[0].filters",
        13,
        "`filters` is not allowed in a route's upgrade_configs: a type's chain belongs at listener level; move it to the top-level upgrade_configs entry for \"foo\"",
    );
}

#[test]
fn weights_totalling_zero() {
    for (weights, line) in [
        // A block list is located at its first item.
        (
            "\n      - { name: echo, weight: 0 }\n      - { name: other, weight: 0 }",
            9,
        ),
        (" []", 8),
    ] {
        let e = one(&with_clusters(&format!(
            "routes:\n  - match: {{ prefix: / }}\n    weighted_clusters:{weights}\n"
        )));
        check(
            &e,
            "routes[0].weighted_clusters",
            line,
            "the weights of weighted_clusters total 0; list at least one cluster with a weight above 0",
        );
    }
}

#[test]
fn cluster_and_weighted_clusters_both_or_neither() {
    let e = one(&with_clusters(
        "\
routes:
  - match: { prefix: / }
    cluster: echo
    weighted_clusters: [{ name: other, weight: 1 }]
",
    ));
    check(
        &e,
        "routes[0].weighted_clusters",
        9,
        "a route takes either `cluster` or `weighted_clusters`, not both; remove one",
    );

    let e = one(&with_clusters(
        "routes:\n  - match: { prefix: / }\n    prefix_rewrite: /x\n",
    ));
    check(
        &e,
        "routes[0]",
        7,
        "a route needs a target: add `cluster: <name>` or `weighted_clusters: [{ name, weight }]`",
    );
}

#[test]
fn match_needs_exactly_one_path_condition() {
    let e = one(&with_clusters(
        "routes:\n  - match: { headers: [{ name: x-a }] }\n    cluster: echo\n",
    ));
    check(
        &e,
        "routes[0].match",
        7,
        "a match needs exactly one of `prefix`, `path`, `regex` or `connect_matcher`; add one, e.g. `prefix: /`",
    );

    let errors = errors(&with_clusters(
        "\
routes:
  - match:
      prefix: /a
      path: /b
      regex: ^/c$
    cluster: echo
",
    ));
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    check(
        &errors[0],
        "routes[0].match.path",
        9,
        "`prefix` and `path` are both set",
    );
    check(
        &errors[1],
        "routes[0].match.regex",
        10,
        "`prefix` and `regex` are both set",
    );

    let e = one(&with_clusters(
        "routes:\n  - match: { prefix: ws }\n    cluster: echo\n",
    ));
    check(
        &e,
        "routes[0].match.prefix",
        7,
        "prefix \"ws\" must start with \"/\"",
    );
}

#[test]
fn invalid_regex() {
    let e = one(&with_clusters(
        "routes:\n  - match: { regex: \"^/ws/[0-9+$\" }\n    cluster: echo\n",
    ));
    check(
        &e,
        "routes[0].match.regex",
        7,
        "invalid regex \"^/ws/[0-9+$\": unclosed character class",
    );
}

#[test]
fn host_rewrite_literal_and_auto() {
    let e = one(&with_clusters(
        "\
routes:
  - match: { prefix: / }
    cluster: echo
    host_rewrite_literal: echo.internal
    auto_host_rewrite: true
",
    ));
    check(
        &e,
        "routes[0].auto_host_rewrite",
        10,
        "`host_rewrite_literal` and `auto_host_rewrite: true` are mutually exclusive; keep one",
    );
    // auto_host_rewrite: false next to a literal is fine.
    parse(&with_clusters(
        "routes:\n  - match: { prefix: / }\n    cluster: echo\n    host_rewrite_literal: a\n    auto_host_rewrite: false\n",
    ));
}

#[test]
fn duplicate_cluster_names_and_empty_clusters() {
    let errors = errors(
        "\
clusters:
  - name: echo
    endpoints: [a:1]
  - name: echo
    endpoints: []
  - name: lonely
",
    );
    assert_eq!(errors.len(), 3, "{}", render(&errors));
    check(
        &errors[0],
        "clusters[1].name",
        4,
        "duplicate cluster name \"echo\" (first defined at line 2); cluster names must be unique",
    );
    check(
        &errors[1],
        "clusters[1].endpoints",
        5,
        "cluster \"echo\" has no endpoints; add at least one under `endpoints`",
    );
    check(
        &errors[2],
        "clusters[2].endpoints",
        6,
        "cluster \"lonely\" has no endpoints",
    );
}

#[test]
fn max_connect_attempts_zero() {
    let e = one(&with_clusters(
        "\
routes:
  - match: { prefix: / }
    cluster: echo
    use_websocket: true
    websocket_config:
      max_connect_attempts: 0
",
    ));
    check(
        &e,
        "routes[0].websocket_config.max_connect_attempts",
        11,
        "max_connect_attempts must be at least 1",
    );
}

#[test]
fn percentages_above_100() {
    let e = one(&with_clusters(
        "\
routes:
  - match:
      prefix: /
      runtime_fraction: { runtime_key: canary, default: 101 }
    cluster: echo
",
    ));
    check(
        &e,
        "routes[0].match.runtime_fraction.default",
        9,
        "default 101 is not a percentage; use a whole number from 0 to 100",
    );

    let e = one("runtime:\n  ok: 100\n  canary: 150\n");
    check(
        &e,
        "runtime.canary",
        3,
        "runtime value 150 is not a percentage; use a whole number from 0 to 100",
    );
}

#[test]
fn invalid_header_names_and_values() {
    let errors = errors(&with_clusters(
        r#"
http_filters:
  - request_headers_to_add: { "bad header": x, x-ok: "line\nbreak" }
  - response_headers_to_add: { X-Dup: a, x-dup: b }
routes:
  - match:
      prefix: /
      headers: [{ name: "a:b" }]
    cluster: echo
    request_headers_to_add: { "": v }
    request_headers_to_remove: ["x y"]
"#,
    ));
    assert_eq!(errors.len(), 6, "{}", render(&errors));
    check(
        &errors[0],
        "http_filters[0].request_headers_to_add.bad header",
        8,
        "invalid header name \"bad header\": header names are non-empty and use only letters, digits and",
    );
    check(
        &errors[1],
        "http_filters[0].request_headers_to_add.x-ok",
        8,
        "invalid value for header \"x-ok\": header values may not contain control characters",
    );
    check(
        &errors[2],
        "http_filters[1].response_headers_to_add.x-dup",
        9,
        "header \"x-dup\" is already set at line 9 (header names are case-insensitive)",
    );
    check(
        &errors[3],
        "routes[0].match.headers[0].name",
        13,
        "invalid header name \"a:b\"",
    );
    check(
        &errors[4],
        "routes[0].request_headers_to_add.",
        15,
        "invalid header name \"\"",
    );
    check(
        &errors[5],
        "routes[0].request_headers_to_remove[0]",
        16,
        "invalid header name \"x y\"",
    );
}

#[test]
fn listen_and_admin_must_be_socket_addresses() {
    let errors = errors("listen: localhost:10000\nadmin: 9901\n");
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    check(
        &errors[0],
        "listen",
        1,
        "\"localhost:10000\" is not a socket address; write ip:port, e.g. 127.0.0.1:10000 or [::1]:10000",
    );
    check(
        &errors[1],
        "admin",
        2,
        "\"9901\" is not a socket address; write ip:port, e.g. 127.0.0.1:9901",
    );
    assert_eq!(
        parse("listen: \"[::1]:8080\"\n").listeners[0].address,
        addr("[::1]:8080")
    );
}

#[test]
fn upgrade_type_empty_or_with_whitespace() {
    let errors = errors(
        "\
upgrade_configs:
  - upgrade_type: \"\"
  - upgrade_type: web socket
ignore_upgrades: [\"tls/ *\"]
",
    );
    assert_eq!(errors.len(), 3, "{}", render(&errors));
    check(
        &errors[0],
        "upgrade_configs[0].upgrade_type",
        2,
        "upgrade_type is empty; write an upgrade token such as \"websocket\"",
    );
    check(
        &errors[1],
        "upgrade_configs[1].upgrade_type",
        3,
        "upgrade_type \"web socket\" contains whitespace; an upgrade token is a single word",
    );
    check(
        &errors[2],
        "ignore_upgrades[0]",
        4,
        "ignore_upgrades entry \"tls/ *\" contains whitespace",
    );
}

#[test]
fn bad_endpoints_and_filters() {
    let errors = errors(
        "\
http_filters:
  - concurrency_limit: 0
clusters:
  - name: c
    endpoints:
      - echo.internal
      - { address: \"echo:99999\", hostname: \"\" }
access_log: \"\"
",
    );
    assert_eq!(errors.len(), 5, "{}", render(&errors));
    check(
        &errors[0],
        "http_filters[0].concurrency_limit",
        2,
        "concurrency_limit 0 would refuse every request",
    );
    check(
        &errors[1],
        "clusters[0].endpoints[0]",
        6,
        "endpoint address \"echo.internal\" has no port; write host:port, e.g. 127.0.0.1:9001",
    );
    check(
        &errors[2],
        "clusters[0].endpoints[1].address",
        7,
        "port \"99999\" is not a number from 1 to 65535",
    );
    check(
        &errors[3],
        "clusters[0].endpoints[1].hostname",
        7,
        "hostname \"\" must be a non-empty name",
    );
    check(&errors[4], "access_log", 8, "access_log is empty");
}

#[test]
fn several_errors_are_all_reported_in_order() {
    let errors = errors(
        "\
listen: nowhere
drain_timeout: 30
upgrade_configs:
  - upgrade_type: websocket
  - upgrade_type: websocket
routes:
  - match: { prefix: / }
    cluster: ech
  - match: { prefix: /a, path: /a }
    cluster: echo
    websocket_config: { max_connect_attempts: 0 }
clusters:
  - name: echo
    endpoints: []
",
    );
    let rendered = render(&errors);
    assert_eq!(errors.len(), 7, "{rendered}");
    let where_: Vec<(&str, Option<usize>)> = errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        where_,
        vec![
            ("listen", Some(1)),
            ("drain_timeout", Some(2)),
            ("upgrade_configs[1].upgrade_type", Some(5)),
            ("routes[0].cluster", Some(8)),
            ("routes[1].match.path", Some(9)),
            ("routes[1].websocket_config.max_connect_attempts", Some(11)),
            ("clusters[0].endpoints", Some(14)),
        ],
        "{rendered}"
    );
    // A cluster with problems still counts as defined: no cascade of "unknown cluster".
    assert!(!rendered.contains("unknown cluster \"echo\""), "{rendered}");
}

// ---------------------------------------------------------------- parse errors

#[test]
fn unknown_field_suggests_the_closest_name() {
    let e = one("listn: 127.0.0.1:1\n");
    check(
        &e,
        "listn",
        1,
        "unknown field `listn`; did you mean `listen`? (known fields: listen, listeners, admin,",
    );
    assert_eq!(e.column, Some(1));

    let e = one(&with_clusters(
        "routes:\n  - match:\n      prefx: /ws\n    cluster: echo\n",
    ));
    check(
        &e,
        "routes[0].match.prefx",
        8,
        "unknown field `prefx`; did you mean `prefix`? (known fields: prefix, path, regex, connect_matcher, headers, runtime_fraction)",
    );
    assert_eq!(
        e.to_string(),
        "config.yaml:8:7: routes[0].match.prefx: unknown field `prefx`; did you mean `prefix`? (known fields: prefix, path, regex, connect_matcher, headers, runtime_fraction)"
    );

    let e = one("clusters:\n  - name: a\n    endpoints:\n      - { adress: a:1 }\n");
    check(
        &e,
        "clusters[0].endpoints[0].adress",
        4,
        "did you mean `address`? (known fields: address, hostname)",
    );

    let e = one("something_else: 1\n");
    check(
        &e,
        "something_else",
        1,
        "unknown field `something_else`; remove it or use one of the known fields: listen, listeners,",
    );
}

#[test]
fn unknown_filter_lists_the_known_filters() {
    let e = one("http_filters:\n  - request_body_limit: 1\n  - rate_limit: 5\n");
    check(
        &e,
        "http_filters[1].rate_limit",
        3,
        "unknown filter `rate_limit`; remove it or use one of the known filters: request_body_limit, request_headers_to_add, response_headers_to_add, concurrency_limit, timeout",
    );
    let e = one("http_filters:\n  - concurency_limit: 5\n");
    check(
        &e,
        "http_filters[0].concurency_limit",
        2,
        "did you mean `concurrency_limit`?",
    );
    let e = one("http_filters:\n  - request_body_limit: 1\n    timeout: 1s\n");
    check(
        &e,
        "http_filters[0].timeout",
        3,
        "a filter entry is a mapping with exactly one key",
    );
}

#[test]
fn other_parse_errors_carry_path_and_line() {
    let e = one("upgrade_configs:\n  - enabled: true\n");
    check(
        &e,
        "upgrade_configs[0]",
        2,
        "missing required field `upgrade_type`; add it",
    );

    let found = errors("routes:\n  - cluster: echo\n");
    assert_eq!(found.len(), 2, "{}", render(&found));
    check(&found[0], "routes[0]", 2, "missing required field `match`");
    // The rest of the route is still checked.
    check(&found[1], "routes[0].cluster", 2, "unknown cluster \"echo\"");

    let e = one("http_filters:\n  - request_body_limit: lots\n");
    check(
        &e,
        "http_filters[0].request_body_limit",
        2,
        "expected a whole number that is 0 or more here",
    );

    let e = one("routes: {}\n");
    check(&e, "routes", 1, "expected a list here");

    let e = one("clusters:\n  - name: a\n    endpoints: [9001]\n");
    check(
        &e,
        "clusters[0].endpoints[0]",
        3,
        "an endpoint: a string host:port or a mapping {address, hostname}",
    );

    // The first value is the one checked.
    let found = errors("listen: a\nlisten: b\n");
    assert_eq!(found.len(), 2, "{}", render(&found));
    check(&found[0], "listen", 1, "\"a\" is not a socket address");
    check(&found[1], "listen", 2, "duplicate key `listen`");

    let found = errors("routes:\n  - match: { prefix: / }\n    use_websocket: maybe\n");
    assert_eq!(found.len(), 2, "{}", render(&found));
    check(&found[0], "routes[0]", 2, "a route needs a target");
    check(
        &found[1],
        "routes[0].use_websocket",
        3,
        "expected true or false here",
    );

    let e = one("listen: 'unclosed\n");
    check(&e, "listen", 1, "unclosed quote");

    let e = one("listen: [a]\n");
    check(
        &e,
        "listen",
        1,
        "expected a single value (a string) here, found a list",
    );

    // An unclosed bracket is a syntax error: the rest of the file cannot be read.
    let e = one("listen: [a\n");
    check(&e, "listen", 1, "YAML syntax error: unclosed bracket '['");
    assert!(e.syntax);
}

// ---------------------------------------------------------------- display, load, demo, serialize

#[test]
fn display_without_location_or_path() {
    let e = ConfigError {
        file: "a.yaml".into(),
        line: None,
        column: None,
        path: String::new(),
        message: "broken".into(),
        hint: None,
        syntax: false,
    };
    assert_eq!(e.to_string(), "a.yaml: broken");
    let e = ConfigError {
        line: Some(3),
        column: Some(1),
        path: "x".into(),
        ..e
    };
    assert_eq!(e.to_string(), "a.yaml:3:1: x: broken");
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let dir = std::env::temp_dir().join(format!("switchback-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, FULL).unwrap();
    assert_eq!(Config::load(&good).unwrap(), parse(FULL));

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "drain_timeout: soon\n").unwrap();
    let errors = Config::load(&bad).unwrap_err();
    assert_eq!(errors[0].file, bad.display().to_string());
    assert!(
        errors[0]
            .to_string()
            .starts_with(&format!("{}:1:16: drain_timeout: ", bad.display()))
    );

    let missing = dir.join("missing.yaml");
    let errors = Config::load(&missing).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, None);
    assert!(
        errors[0]
            .to_string()
            .starts_with(&format!("{}: cannot read the config file: ", missing.display())),
        "{}",
        errors[0]
    );
    std::fs::remove_dir_all(Path::new(&dir)).unwrap();
}

#[test]
fn demo_config() {
    let c = Config::demo(addr("127.0.0.1:9001"));
    assert_eq!(c.listeners[0].address, addr("127.0.0.1:10000"));
    assert_eq!(c.upgrade_config("websocket").map(|u| u.enabled), Some(true));
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].matcher.path, PathMatch::Prefix("/".into()));
    assert_eq!(c.routes[0].target, RouteTarget::Cluster("echo".into()));
    assert_eq!(
        c.cluster("echo").unwrap().endpoints[0].socket_addr(),
        Some(addr("127.0.0.1:9001"))
    );
    // The demo is what this YAML says.
    let yaml = "\
upgrade_configs: [{ upgrade_type: websocket }]
routes: [{ match: { prefix: / }, cluster: echo }]
clusters: [{ name: echo, endpoints: [127.0.0.1:9001] }]
";
    assert_eq!(parse(yaml), c);
}

/// The effective config serializes in the file's own shape and parses back unchanged.
#[test]
fn serialized_config_round_trips() {
    let mut full = parse(FULL);
    full.http_filters
        .push(Filter::Timeout(Duration::from_millis(1500)));
    for config in [
        full,
        Config::default(),
        Config::demo(addr("[::1]:9001")),
        parse(&with_clusters(
            "routes:\n  - match: { regex: ^/x$ }\n    weighted_clusters: [{ name: echo, weight: 1 }]\n    auto_host_rewrite: true\n",
        )),
    ] {
        let yaml = serde_saphyr::to_string(&config).unwrap();
        let back = Config::from_yaml_str(&yaml, "serialized.yaml")
            .unwrap_or_else(|e| panic!("{}\n---\n{yaml}", render(&e)));
        assert_eq!(back, config, "{yaml}");
    }
    let yaml = serde_saphyr::to_string(&parse(FULL)).unwrap();
    for needle in [
        "drain_timeout: 30s",
        "stream_idle_timeout: 5m",
        "idle_timeout: 1m",
        "connect_timeout: 1s",
        "prefix: /ws",
        "cluster: echo",
        "request_body_limit: 1024",
        "access_log: /var/log/switchback.jsonl",
    ] {
        assert!(yaml.contains(needle), "{needle:?} missing from\n{yaml}");
    }
    assert!(!yaml.contains("port:"), "{yaml}");
}

/// What validation parsed is kept parsed, and serializes back to its text.
#[test]
fn parsed_values_serialize_as_their_text() {
    let c = parse(&with_clusters(
        "\
upgrade_configs: [{ upgrade_type: WebSocket }]
ignore_upgrades: [TLS/*, Foo]
routes:
  - match:
      regex: \"^/r/[0-9]+$\"
      headers: [{ name: X-Tenant, exact: Blue }]
    cluster: echo
    request_headers_to_add: { X-B: \"2\", x-a: \"1\" }
    request_headers_to_remove: [X-Debug]
",
    ));
    assert_eq!(c.upgrade_configs[0].upgrade_type.as_str(), "websocket");
    assert_eq!(c.ignore_upgrades, vec![token("tls/*"), token("foo")]);
    let r = &c.routes[0];
    let PathMatch::Regex(re) = &r.matcher.path else {
        panic!("a regex match: {:?}", r.matcher.path);
    };
    assert!(re.regex().is_match("/r/42"));
    let added: Vec<_> = r
        .request_headers_to_add
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(
        added,
        [("x-b", "2"), ("x-a", "1")],
        "file order, names lowercased"
    );

    let json = serde_json::to_value(&c).unwrap();
    let route = &json["routes"][0];
    assert_eq!(json["upgrade_configs"][0]["upgrade_type"], "websocket");
    assert_eq!(json["ignore_upgrades"], serde_json::json!(["tls/*", "foo"]));
    assert_eq!(route["match"]["regex"], "^/r/[0-9]+$");
    assert_eq!(
        route["match"]["headers"],
        serde_json::json!([{ "name": "x-tenant", "exact": "Blue" }])
    );
    assert_eq!(
        route["request_headers_to_add"],
        serde_json::json!({ "x-b": "2", "x-a": "1" })
    );
    assert_eq!(route["request_headers_to_remove"], serde_json::json!(["x-debug"]));
}

#[test]
fn upgrade_tokens() {
    assert_eq!(UpgradeToken::new("WebSocket").unwrap().as_str(), "websocket");
    assert_eq!(UpgradeToken::new(""), Err(InvalidToken::Empty));
    assert_eq!(UpgradeToken::new("a b"), Err(InvalidToken::Whitespace));
    assert_eq!(UpgradeToken::new("a\u{a0}b"), Err(InvalidToken::Whitespace));
    assert_eq!(UpgradeToken::from_static("tls/*"), token("TLS/*"));
    assert_eq!(DEFAULT_IGNORE_UPGRADES, [token("tls/*")]);
}

#[test]
fn workers_default_to_one_per_cpu_and_must_be_sensible() {
    assert_eq!(parse("listen: 127.0.0.1:10000\n").workers, default_workers());
    assert!(default_workers().get() <= MAX_WORKERS);
    assert_eq!(parse("workers: 3\n").workers.get(), 3);
    let e = one("listen: 127.0.0.1:10000\nworkers: 0\n");
    check(&e, "workers", 2, "workers must be at least 1");
    let e = one("workers: 100000\n");
    check(&e, "workers", 1, "workers is too large: at most 1024");
    let e = one("workers: two\n");
    assert_eq!(e.path, "workers", "{e}");
}

// ---------------------------------------------------------------- every error in one run

#[test]
fn every_error_is_reported_in_one_run() {
    // Wrong types, invalid values, an unknown field and misspelt cluster names, in several
    // places: each is reported, in file order, with its location, field path and fix.
    let yaml = "\
workers: two
listen: nowhere
routes:
  - match: { prefix: /chat }
    cluster: chta
    timeout: soon
    retries: 3
  - match: { path: /feed }
    weighted_clusters:
      - { name: chat, weight: lots }
      - { name: feeds, weight: 1 }
clusters:
  - name: chat
    endpoints: [127.0.0.1:9001]
  - name: feed
    endpoints: [127.0.0.1:9002, 9003]
";
    let expected = "\
config.yaml:1:10: workers: expected a whole number from 1 to 1024 here, found \"two\"
config.yaml:2:9: listen: \"nowhere\" is not a socket address; write ip:port, e.g. 127.0.0.1:10000 or [::1]:10000
config.yaml:5:14: routes[0].cluster: unknown cluster \"chta\"; did you mean `chat`? (known: chat, feed)
config.yaml:6:14: routes[0].timeout: invalid duration \"soon\": expected an integer followed by a unit: ms, s, m or h (e.g. 250ms, 30s, 5m, 1h; 0s turns a timeout off where allowed)
config.yaml:7:5: routes[0].retries: unknown field `retries`; remove it or use one of the known fields: match, cluster, weighted_clusters, prefix_rewrite, host_rewrite_literal, auto_host_rewrite, request_headers_to_add, request_headers_to_remove, timeout, idle_timeout, max_stream_duration, max_tunnels, retry_policy, upgrade_configs, use_websocket, websocket_config, websocket
config.yaml:10:31: routes[1].weighted_clusters[0].weight: expected a whole number from 0 to 4294967295 here, found \"lots\"
config.yaml:11:17: routes[1].weighted_clusters[1].name: unknown cluster \"feeds\"; did you mean `feed`? (known: chat, feed)
config.yaml:16:33: clusters[1].endpoints[1]: expected an endpoint: a string host:port or a mapping {address, hostname}; found \"9003\"";
    assert_eq!(render(&errors(yaml)), expected);
}

#[test]
fn type_errors_say_what_they_found() {
    for (yaml, expected) in [
        (
            "routes: {}\n",
            "config.yaml:1:9: routes: expected a list here, found an empty mapping",
        ),
        (
            "clusters:\n  - name:\n    endpoints: [a:1]\n",
            "config.yaml:2:9: clusters[0].name: expected a single value (a string) here, found nothing",
        ),
        (
            "runtime: [canary]\n",
            "config.yaml:1:10: runtime: expected a mapping (key: value) here, found a list",
        ),
        (
            "http_filters:\n  - timeout\n",
            "config.yaml:2:5: http_filters[0]: a filter entry is a mapping with exactly one key, e.g. `- request_body_limit: 1024`; found \"timeout\"",
        ),
        (
            "admin: [127.0.0.1:9901]\n",
            "config.yaml:1:8: admin: expected a single value (a string) here, found a list",
        ),
    ] {
        assert_eq!(one(yaml).to_string(), expected);
    }
}

/// A number's type error names the range its check enforces, so `workers: two` and
/// `workers: 0` are told the same thing.
#[test]
fn number_type_errors_name_the_range_the_checks_enforce() {
    let two = one("workers: two\n");
    let zero = one("workers: 0\n");
    let many = one("workers: 2000\n");
    assert_eq!(
        two.message,
        "expected a whole number from 1 to 1024 here, found \"two\""
    );
    assert_eq!(
        zero.message,
        "workers must be at least 1 (leave it out for one per CPU)"
    );
    assert_eq!(
        many.message,
        "workers is too large: at most 1024 (leave it out for one per CPU)"
    );
    assert_eq!(
        one("workers: -1\n").message,
        "expected a whole number from 1 to 1024 here, found \"-1\""
    );

    for (yaml, expected) in [
        (
            "http_filters:\n  - request_body_limit: lots\n",
            "expected a whole number that is 0 or more here, found \"lots\"",
        ),
        (
            "http_filters:\n  - concurrency_limit: many\n",
            "expected a whole number that is 1 or more here, found \"many\"",
        ),
        (
            "runtime:\n  canary: half\n",
            "expected a whole number from 0 to 100 here, found \"half\"",
        ),
        (
            "runtime:\n  canary: 101\n",
            "runtime value 101 is not a percentage; use a whole number from 0 to 100",
        ),
    ] {
        assert_eq!(one(yaml).message, expected, "{yaml}");
    }
    let e = one(&with_clusters(
        "routes:\n  - match: { prefix: / }\n    cluster: echo\n    websocket_config: { max_connect_attempts: -1 }\n",
    ));
    assert_eq!(
        e.message,
        "expected a whole number from 1 to 4294967295 here, found \"-1\""
    );
    // The forms YAML has for whole numbers are accepted, as before.
    assert_eq!(parse("workers: 0x4\n").workers.get(), 4);
    assert_eq!(parse("workers: \"+2\"\n").workers.get(), 2);
}

#[test]
fn a_misspelt_field_is_not_also_missing() {
    let e = one("upgrade_configs:\n  - upgrade_typ: websocket\n");
    assert_eq!(
        e.to_string(),
        "config.yaml:2:5: upgrade_configs[0].upgrade_typ: unknown field `upgrade_typ`; did you mean `upgrade_type`? (known fields: upgrade_type, enabled, filters, websocket, connect_config)"
    );
    // A misspelt target is not also "no target".
    let e = one(&with_clusters(
        "routes:\n  - match: { prefix: / }\n    clustr: echo\n",
    ));
    check(&e, "routes[0].clustr", 8, "did you mean `cluster`?");
}

#[test]
fn no_error_is_caused_only_by_another() {
    // A cluster whose name cannot be read may be the one the route names.
    let e = one(
        "routes:\n  - match: { prefix: / }\n    cluster: echo\nclusters:\n  - name: [echo]\n    endpoints: [a:1]\n",
    );
    check(
        &e,
        "clusters[0].name",
        5,
        "expected a single value (a string) here, found a list",
    );
    let e = one("routes:\n  - match: { prefix: / }\n    cluster: echo\nclusters: echo\n");
    check(&e, "clusters", 4, "expected a list here, found \"echo\"");

    // A target of the wrong type is not also a missing target; a weight that cannot be read
    // may be the one above 0.
    let found = errors(&with_clusters(
        "\
routes:
  - match: { prefix: / }
    cluster: [echo]
  - match: { path: [/a] }
    weighted_clusters: [{ name: echo, weight: 0 }, { name: other, weight: x }]
",
    ));
    let rendered = render(&found);
    assert_eq!(found.len(), 3, "{rendered}");
    check(
        &found[0],
        "routes[0].cluster",
        8,
        "expected a single value (a string) here",
    );
    check(
        &found[1],
        "routes[1].match.path",
        9,
        "expected a single value (a string) here",
    );
    check(
        &found[2],
        "routes[1].weighted_clusters[1].weight",
        10,
        "expected a whole number from 0 to 4294967295 here",
    );
}

#[test]
fn aliases_and_merge_keys_are_read_as_before() {
    let c = parse(
        "\
clusters:
  - &echo { name: echo, endpoints: [127.0.0.1:9001], connect_timeout: 2s }
  - <<: *echo
    name: other
routes:
  - match: { prefix: / }
    cluster: other
",
    );
    assert_eq!(c.clusters[1].name, "other");
    assert_eq!(c.clusters[1].connect_timeout, Duration::from_secs(2));
    assert_eq!(c.clusters[1].endpoints, c.clusters[0].endpoints);
}

#[test]
fn what_stops_the_reading_is_the_only_error() {
    let e = one("listen: 127.0.0.1:10000\n---\nlisten: 127.0.0.1:10001\n");
    assert_eq!(
        e.to_string(),
        "config.yaml:2:1: a second YAML document starts here; the configuration is a single document, so remove this `---` or move what follows it into the first
  note: only the first syntax error can be shown: the file cannot be read past it, so nothing after it was checked"
    );
    // Nothing after a syntax error is checked, even what comes before it on other lines.
    let e = one("workers: two\nlisten: 'unclosed\n");
    assert_eq!(
        e.to_string(),
        "config.yaml:2:9: listen: YAML syntax error: unclosed quote
  note: only the first syntax error can be shown: the file cannot be read past it, so nothing after it was checked"
    );
}

// ---------------------------------------------------------------- indentation hints

/// The note under every syntax error.
const SYNTAX_NOTE: &str = "\n  note: only the first syntax error can be shown: the file cannot be read past it, so nothing after it was checked";

#[test]
fn a_field_indented_under_a_field_with_a_value() {
    for (yaml, expected) in [
        (
            "listen: 127.0.0.1:10000\n  admin: 127.0.0.1:9901\n",
            "config.yaml:2:8: listen: YAML syntax error: mapping values are not allowed in this context
  hint: check the indentation of line 2: `admin:` is further in than `listen:` (line 1), which already has a value, so YAML reads `admin:` as more of that value; start it in column 1, like `listen:`",
        ),
        (
            "clusters:\n- name: echo\n    endpoints: [127.0.0.1:9001]\n",
            "config.yaml:3:14: clusters[0].name: YAML syntax error: mapping values are not allowed in this context
  hint: check the indentation of line 3: `endpoints:` is further in than `name:` (line 2), which already has a value, so YAML reads `endpoints:` as more of that value; start it in column 3, like `name:`",
        ),
        (
            "runtime:\n  canary: 10\n   stable: 90\n",
            "config.yaml:3:10: runtime.canary: YAML syntax error: mapping values are not allowed in this context
  hint: check the indentation of line 3: `stable:` is further in than `canary:` (line 2), which already has a value, so YAML reads `stable:` as more of that value; start it in column 3, like `canary:`",
        ),
    ] {
        let e = one(yaml);
        assert!(e.syntax);
        assert_eq!(e.to_string(), format!("{expected}{SYNTAX_NOTE}"));
    }
}

#[test]
fn a_field_out_of_line_with_its_neighbours() {
    for (yaml, expected) in [
        // Between the `- ` of its item and the item's fields.
        (
            "routes:\n  - match: { prefix: / }\n   cluster: echo\n",
            "config.yaml:3:4: routes: YAML syntax error: while parsing a block collection, did not find expected '-' indicator
  hint: check the indentation of line 3: `cluster` is a field of `routes[0]`, whose fields start in column 5 (like `match:` on line 2); start `cluster:` in column 5 too",
        ),
        // In line with the `- ` instead of the item's fields.
        (
            "clusters:\n  - name: echo\n  endpoints: [127.0.0.1:9001]\n",
            "config.yaml:3:3: clusters: YAML syntax error: while parsing a block collection, did not find expected '-' indicator
  hint: check the indentation of line 3: `endpoints` is a field of `clusters[0]`, whose fields start in column 5 (like `name:` on line 2); start `endpoints:` in column 5 too",
        ),
        // Further in than its neighbours.
        (
            "routes:\n  - match: { prefix: / }\n      cluster: echo\n",
            "config.yaml:3:7: routes[0]: YAML syntax error: while parsing a block mapping, did not find expected key
  hint: check the indentation of line 3: `cluster` is a field of `routes[0]`, whose fields start in column 5 (like `match:` on line 2); start `cluster:` in column 5 too",
        ),
        // Between two levels: the field's name says which one it belongs to.
        (
            "routes:\n  - match:\n      prefix: /\n     headers: [{ name: x-canary }]\n    cluster: echo\n",
            "config.yaml:4:6: routes[0]: YAML syntax error: while parsing a block mapping, did not find expected key
  hint: check the indentation of line 4: `headers` is a field of `routes[0].match`, whose fields start in column 7 (like `prefix:` on line 3); start `headers:` in column 7 too",
        ),
    ] {
        assert_eq!(one(yaml).to_string(), format!("{expected}{SYNTAX_NOTE}"));
    }
}

#[test]
fn a_list_item_out_of_line_with_the_others() {
    for (yaml, expected) in [
        (
            "routes:\n  - match: { prefix: / }\n    cluster: echo\n - match: { prefix: /a }\n   cluster: echo\n",
            "config.yaml:4:2: YAML syntax error: while parsing a block mapping, did not find expected key
  hint: check the indentation of line 4: the items of `routes` start with `- ` in column 3 (line 2), but this one starts in column 2; line up the `- ` of every item",
        ),
        (
            "routes:\n  - match: { prefix: / }\n    cluster: echo\n   - match: { prefix: /a }\n",
            "config.yaml:4:4: routes: YAML syntax error: while parsing a block collection, did not find expected '-' indicator
  hint: check the indentation of line 4: the items of `routes` start with `- ` in column 3 (line 2), but this one starts in column 4; line up the `- ` of every item",
        ),
    ] {
        assert_eq!(one(yaml).to_string(), format!("{expected}{SYNTAX_NOTE}"));
    }
}

#[test]
fn tabs_colons_and_items_on_the_key_line() {
    for (yaml, expected) in [
        (
            "routes:\n  - match: { prefix: / }\n\tcluster: echo\n",
            "config.yaml:3:2: routes[0].match.prefix: YAML syntax error: tabs disallowed within this context (block indentation)
  hint: check the indentation of line 3: it starts with a tab, and YAML indents with spaces only; replace the tab with spaces",
        ),
        (
            "routes:\n  - match: { prefix: / }\n    cluster echo\n",
            "config.yaml:3:5: routes[0]: YAML syntax error: simple key expected ':'
  hint: check line 3: `cluster echo` has no colon; a field is written `name: value`, e.g. `cluster: echo`",
        ),
        (
            "routes:\n  - match: { prefix: / }\n    cluster:echo\n",
            "config.yaml:3:5: routes[0]: YAML syntax error: simple key expected ':'
  hint: check line 3: a field name is followed by a colon and a space; write `cluster: echo`",
        ),
        (
            "access_log: logs: /var/log\n",
            "config.yaml:1:17: access_log: YAML syntax error: mapping values are not allowed in this context
  hint: a value cannot contain \": \" (a colon and a space) unless it is quoted; if `logs: /var/log` is one value, write it in quotes: \"logs: /var/log\"",
        ),
        (
            "ignore_upgrades: - tls/*\n",
            "config.yaml:1:18: ignore_upgrades: YAML syntax error: block sequence entries are not allowed in this context
  hint: check line 1: a list item (`- `) cannot follow `ignore_upgrades:` on the same line; put `- tls/*` on the next line, further in than `ignore_upgrades:`, or write the list in brackets: `ignore_upgrades: [tls/*]`",
        ),
    ] {
        assert_eq!(one(yaml).to_string(), format!("{expected}{SYNTAX_NOTE}"));
    }
}

/// Indentation mistakes that are valid YAML, but not what was meant.
#[test]
fn indentation_that_parses_into_something_else() {
    // A list item further in than the one above continues its value.
    let e = one("clusters:\n  - name: echo\n    endpoints:\n    - 127.0.0.1:9001\n      - 127.0.0.1:9002\n");
    assert_eq!(
        e.to_string(),
        "config.yaml:4:7: clusters[0].endpoints[0]: endpoint address \"127.0.0.1:9001 - 127.0.0.1:9002\" is not a valid IPv6 socket address; IPv6 addresses need brackets, e.g. [::1]:9001
  hint: check the indentation of line 5: its `- ` is further in than the one on line 4, so YAML reads it as more of that item's value; start it in column 5, like the item above"
    );
    let e = one("ignore_upgrades: tls/*\n  - foo\n");
    assert_eq!(
        e.to_string(),
        "config.yaml:1:18: ignore_upgrades: expected a list here, found \"tls/* - foo\"
  hint: check the indentation of line 2: YAML reads it as more of the value of `ignore_upgrades` on line 1; for a list, leave nothing after `ignore_upgrades:` and put each item on a line of its own"
    );

    // A field meant to be nested, in line with the field it belongs under.
    let found = errors(&with_clusters(
        "routes:\n  - match:\n    prefix: /\n    cluster: echo\n",
    ));
    assert_eq!(
        render(&found),
        "config.yaml:7:10: routes[0].match: expected a mapping (key: value) here, found nothing
config.yaml:8:5: routes[0].prefix: unknown field `prefix`; remove it or use one of the known fields: match, cluster, weighted_clusters, prefix_rewrite, host_rewrite_literal, auto_host_rewrite, request_headers_to_add, request_headers_to_remove, timeout, idle_timeout, max_stream_duration, max_tunnels, retry_policy, upgrade_configs, use_websocket, websocket_config, websocket
  hint: check the indentation of line 8: `prefix` is a field of `match` (line 7), which is left empty; indent `prefix:` further than `match:` to put it inside"
    );
}

/// The table of which mapping takes which keys, used by the hints, agrees with the reader:
/// every key of the documented example is accepted where it is.
#[test]
fn hint_schema_matches_the_reader() {
    use crate::read::Keys;
    use crate::tree::{Content, Node};

    fn walk(node: &Node, path: &str) {
        match &node.content {
            Content::Scalar(_) => {}
            Content::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"));
                }
            }
            Content::Map(entries) => {
                let keys = crate::raw::keys_at(path);
                for (key, value) in entries {
                    let Content::Scalar(key) = &key.content else {
                        panic!("{path}: a complex key")
                    };
                    // Endpoint mappings and filter entries are where they are expected.
                    assert!(
                        keys.accepts(&key.text),
                        "{path} should accept {} ({keys:?})",
                        key.text
                    );
                    let child = if path.is_empty() {
                        key.text.clone()
                    } else {
                        format!("{path}.{}", key.text)
                    };
                    walk(value, &child);
                }
            }
        }
    }

    let root = crate::tree::parse(FULL).unwrap().unwrap();
    walk(&root, "");
    assert!(matches!(
        crate::raw::keys_at("routes[3].request_headers_to_add"),
        Keys::Any
    ));
    assert!(matches!(crate::raw::keys_at("routes[0].cluster"), Keys::Unknown));
}

#[test]
fn client_limits_have_edge_defaults_and_are_checked() {
    let c = parse("listen: 127.0.0.1:1\n");
    assert_eq!(c.request_headers_timeout, Duration::from_secs(10));
    assert_eq!((c.max_request_headers_kb, c.max_headers_count), (60, 100));
    let c = parse("request_headers_timeout: 2s\nmax_request_headers_kb: 16\nmax_headers_count: 40\n");
    assert_eq!(c.request_headers_timeout, Duration::from_secs(2));
    assert_eq!((c.max_request_headers_kb, c.max_headers_count), (16, 40));
    let e = one("request_headers_timeout: 0s\n");
    assert!(e.to_string().contains("request_headers_timeout"), "{e}");
    let e = one("max_request_headers_kb: 4\n");
    assert!(e.to_string().contains("from 8 to 8192"), "{e}");
    let e = one("max_headers_count: many\n");
    assert!(e.to_string().contains("max_headers_count"), "{e}");
}

#[test]
fn drain_close_window() {
    assert_eq!(
        parse("listen: 127.0.0.1:1\n").drain_close_window,
        Duration::from_secs(10)
    );
    assert_eq!(
        parse("drain_close_window: 0s\n").drain_close_window,
        Duration::ZERO
    );
    let e = one("drain_close_window: soon\n");
    assert!(
        e.to_string().contains("drain_close_window: invalid duration"),
        "{e}"
    );
}

#[test]
fn connection_and_tunnel_caps() {
    let c = parse("listen: 127.0.0.1:1\n");
    assert_eq!(c.connection_idle_timeout, Duration::from_secs(3600));
    assert_eq!((c.max_connections, c.max_tunnels), (None, None));
    let c = parse(
        "connection_idle_timeout: 0s\nmax_connections: 5000\nmax_tunnels: 4000\n\
         routes:\n  - match: { prefix: / }\n    cluster: c\n    max_tunnels: 10\n\
         clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n",
    );
    assert_eq!(c.connection_idle_timeout, Duration::ZERO);
    assert_eq!((c.max_connections, c.max_tunnels), (Some(5000), Some(4000)));
    assert_eq!(c.routes[0].max_tunnels, Some(10));
    let e = one("max_connections: 0\n");
    assert!(
        e.to_string().contains("max_connections must be at least 1"),
        "{e}"
    );
    assert!(e.to_string().contains("descriptor limit"), "{e}");
    let e = one(
        "routes:\n  - match: { prefix: / }\n    cluster: c\n    max_tunnels: 0\n\
         clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n",
    );
    assert!(e.to_string().contains("routes[0].max_tunnels"), "{e}");
    let e = one("max_tunnels: lots\n");
    assert!(e.to_string().contains("max_tunnels"), "{e}");
}

#[test]
fn retry_policies_balancing_and_outlier_detection() {
    let c = parse(
        "routes:\n  - match: { prefix: / }\n    cluster: c\n\
         \x20   retry_policy: { retry_on: \"connect-failure, 5xx\", num_retries: 3, per_try_timeout: 2s }\n\
         clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n    lb_policy: least_request\n\
         \x20   outlier_detection: { consecutive_gateway_failure: 3, base_ejection_time: 10s }\n",
    );
    let policy = c.routes[0].retry_policy.clone().unwrap();
    assert_eq!(policy.retry_on, "connect-failure, 5xx");
    assert_eq!(
        (policy.num_retries, policy.per_try_timeout),
        (3, Some(Duration::from_secs(2)))
    );
    assert_eq!(c.clusters[0].lb_policy, crate::LbPolicy::LeastRequest);
    let o = c.clusters[0].outlier_detection.unwrap();
    assert_eq!(
        (o.consecutive_gateway_failure, o.base_ejection_time),
        (3, Duration::from_secs(10))
    );
    assert_eq!(
        (o.max_ejection_time, o.max_ejection_percent),
        (Duration::from_secs(300), 50)
    );
    assert_eq!(c.clusters[0].dns_refresh_rate, Duration::from_secs(5));
    let e = one("clusters:\n  - name: c\n    endpoints: [svc.local:80]\n    dns_refresh_rate: 0s\n");
    assert!(
        e.to_string()
            .contains("dns_refresh_rate must be greater than zero"),
        "{e}"
    );

    let e = one(
        "routes:\n  - match: { prefix: / }\n    cluster: c\n    retry_policy: { retry_on: retriable-4xx }\n\
         clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n",
    );
    assert!(
        e.to_string()
            .contains("routes[0].retry_policy.retry_on: unknown retry_on token"),
        "{e}"
    );
    let e = one("clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n    lb_policy: leastconn\n");
    assert!(
        e.to_string().contains("use round_robin, least_request or random"),
        "{e}"
    );
    let e = one(
        "clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n    outlier_detection: { ejection: 1s }\n",
    );
    assert!(
        e.to_string()
            .contains("clusters[0].outlier_detection.ejection: unknown field"),
        "{e}"
    );
}

#[test]
fn forwarded_identity_fields() {
    let c = parse("listen: 127.0.0.1:1\n");
    assert!(c.use_remote_address && c.x_forwarded_proto);
    assert!(c.generate_request_id && c.preserve_external_request_id);
    assert_eq!(c.xff_num_trusted_hops, 0);
    let c = parse(
        "use_remote_address: false\nxff_num_trusted_hops: 2\nx_forwarded_proto: off\n\
         generate_request_id: no\n",
    );
    assert!(!c.use_remote_address && !c.x_forwarded_proto && !c.generate_request_id);
    assert_eq!(c.xff_num_trusted_hops, 2);
    assert!(!parse("preserve_external_request_id: false\n").preserve_external_request_id);

    let e = one("xff_num_trusted_hops: 65\n");
    check(
        &e,
        "xff_num_trusted_hops",
        1,
        "xff_num_trusted_hops must be from 0 to 64: the number of proxies in front of switchback",
    );
    let e = one("xff_num_trusted_hops: -1\n");
    check(
        &e,
        "xff_num_trusted_hops",
        1,
        "expected a whole number from 0 to 64",
    );
    let e = one("use_remote_address: maybe\n");
    check(&e, "use_remote_address", 1, "expected");
    let e = one("generate_request_id: false\npreserve_external_request_id: false\n");
    check(
        &e,
        "preserve_external_request_id",
        2,
        "`preserve_external_request_id: false` needs `generate_request_id: true`",
    );
    let e = one("use_remote_address: false\npreserve_external_request_id: false\n");
    check(
        &e,
        "preserve_external_request_id",
        2,
        "needs `use_remote_address: true`",
    );
    let e = one("xff_num_trusted_hop: 1\n");
    check(
        &e,
        "xff_num_trusted_hop",
        1,
        "did you mean `xff_num_trusted_hops`?",
    );
}

#[test]
fn a_routes_max_stream_duration() {
    let route = |extra: &str| {
        let c = parse(&format!(
            "routes:\n  - match: {{ prefix: / }}\n    cluster: c\n{extra}clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n"
        ));
        c.routes[0].max_stream_duration
    };
    assert_eq!(route(""), None);
    assert_eq!(
        route("    max_stream_duration: 2h\n"),
        Some(Duration::from_secs(7200))
    );
    assert_eq!(route("    max_stream_duration: 0s\n"), None, "0s: no limit");
    let e = one(
        "routes:\n  - match: { prefix: / }\n    cluster: c\n    max_stream_duration: long\nclusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n",
    );
    assert!(e.to_string().contains("routes[0].max_stream_duration"), "{e}");
}

/// PEM files for the TLS settings, in a folder of their own; returns the folder.
fn pem_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchback-config-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    dir
}

#[test]
fn listeners_with_tls_and_their_defaults() {
    let dir = pem_dir("listeners");
    let file = dir.join("switchback.yaml");
    let yaml = "listeners:\n  - address: 0.0.0.0:8443\n    tls:\n      certificates:\n        - cert_chain_file: cert.pem\n          private_key_file: key.pem\n          server_names: [Example.com, \"*.example.com\"]\n        - { cert_chain_file: cert.pem, private_key_file: key.pem }\n      min_version: 1.3\n  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0\n";
    let c = Config::from_yaml_str(yaml, file.to_str().unwrap()).unwrap();
    assert_eq!(c.listeners.len(), 3, "port 0 may repeat");
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    assert_eq!(tls.min_version, crate::TlsMinVersion::Tls13);
    assert_eq!(tls.certificates[0].server_names, ["example.com", "*.example.com"]);
    assert_eq!(
        tls.certificates[0].cert_chain_file,
        dir.join("cert.pem"),
        "relative to the file"
    );
    assert!(tls.certificates[1].server_names.is_empty(), "the default");
    assert!(c.listeners[1].tls.is_none());
    // `listen` is the one-listener shorthand.
    assert_eq!(
        parse("listen: 127.0.0.1:8080\n").listeners,
        [crate::Listener {
            address: addr("127.0.0.1:8080"),
            tls: None
        }]
    );
}

#[test]
fn listener_mistakes_name_the_field_and_the_fix() {
    let dir = pem_dir("listener-errors");
    let file = dir.join("switchback.yaml");
    let found = |yaml: &str| Config::from_yaml_str(yaml, file.to_str().unwrap()).unwrap_err();
    let both = found("listen: 127.0.0.1:1\nlisteners:\n  - address: 127.0.0.1:2\n");
    assert_eq!((both[0].path.as_str(), both[0].line), ("listeners", Some(3)));
    assert!(
        both[0].message.contains("both `listen` and `listeners`"),
        "{}",
        both[0]
    );
    let twice = found("listeners:\n  - address: 127.0.0.1:2\n  - address: 127.0.0.1:2\n");
    assert_eq!(
        (twice[0].path.as_str(), twice[0].line),
        ("listeners[1].address", Some(3))
    );
    assert!(twice[0].message.contains("listed twice"), "{}", twice[0]);
    let e = found(
        "listeners:\n  - address: 127.0.0.1:2\n    tls:\n      certificates:\n        - { cert_chain_file: missing.pem, private_key_file: cert.pem }\n        - { cert_chain_file: cert.pem, private_key_file: key.pem }\n      alpn: [h3]\n      min_version: \"1.1\"\n",
    );
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].tls.certificates[0].cert_chain_file",
            "listeners[0].tls.certificates[0].private_key_file",
            "listeners[0].tls.certificates[1]",
            "listeners[0].tls.alpn[0]",
            "listeners[0].tls.min_version",
        ],
        "{e:?}"
    );
    assert!(
        e[0].message.contains("cannot read") && e[0].message.contains("missing.pem"),
        "{}",
        e[0]
    );
    assert!(e[1].message.contains("has no PEM private key"), "{}", e[1]);
    assert!(e[2].message.contains("only one can be the default"), "{}", e[2]);
    let names = found(
        "listeners:\n  - address: 127.0.0.1:2\n    tls:\n      certificates:\n        - { cert_chain_file: cert.pem, private_key_file: key.pem, server_names: [a.test, \"b..test\"] }\n        - { cert_chain_file: cert.pem, private_key_file: key.pem, server_names: [A.test] }\n",
    );
    assert!(names[0].message.contains("not a server name"), "{}", names[0]);
    assert!(
        names[1].message.contains("named by two certificates"),
        "{}",
        names[1]
    );
}

#[test]
fn a_clusters_tls() {
    let dir = pem_dir("cluster-tls");
    let file = dir.join("switchback.yaml");
    let yaml = |tls: &str| format!("clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n    tls: {tls}\n");
    let c = Config::from_yaml_str(
        &yaml("{ sni: chat.internal, trusted_ca_file: cert.pem }"),
        file.to_str().unwrap(),
    )
    .unwrap();
    let tls = c.clusters[0].tls.as_ref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("chat.internal"));
    assert_eq!(
        tls.trusted_ca_file.as_deref(),
        Some(dir.join("cert.pem").as_path())
    );
    let c = Config::from_yaml_str(&yaml("{}"), file.to_str().unwrap()).unwrap();
    assert_eq!(
        c.clusters[0].tls,
        Some(crate::UpstreamTls::default()),
        "webpki roots, endpoint names"
    );
    let e =
        Config::from_yaml_str(&yaml("{ cert_chain_file: cert.pem }"), file.to_str().unwrap()).unwrap_err();
    assert_eq!(
        (e[0].path.as_str(), e[0].line),
        ("clusters[0].tls.private_key_file", Some(4))
    );
    assert!(e[0].message.contains("needs its key"), "{}", e[0]);
}

// ---------------------------------------------------------------- the admin endpoint

/// A folder holding `token` with `text` in it; returns the folder.
fn token_dir(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchback-config-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), text).unwrap();
    dir
}

#[test]
fn admin_short_and_long_forms() {
    let dir = token_dir("admin-forms", "0123456789abcdef0123\n");
    let file = dir.join("switchback.yaml");
    let load = |yaml: &str| Config::from_yaml_str(yaml, file.to_str().unwrap());

    let short = load("admin: 127.0.0.1:9901\n").unwrap().admin.unwrap();
    assert_eq!(short, AdminEndpoint::new(addr("127.0.0.1:9901")));

    let long = load("admin: { address: \"[::]:9901\", token_file: token }\n")
        .unwrap()
        .admin
        .unwrap();
    assert_eq!(long.address, addr("[::]:9901"));
    assert_eq!(
        long.token_file.as_deref(),
        Some(dir.join("token").as_path()),
        "relative to the file"
    );
    let token = long.token.unwrap();
    assert_eq!(token.secret(), "0123456789abcdef0123", "the newline is dropped");
    assert!(token.matches(b"0123456789abcdef0123"));

    // Without a token file the mapping is the short form.
    let bare = load("admin:\n  address: 127.0.0.1:9901\n")
        .unwrap()
        .admin
        .unwrap();
    assert_eq!(bare, short);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn admin_token_file_errors_name_the_file_the_field_and_the_fix() {
    let dir = token_dir("admin-errors", "\n");
    std::fs::write(dir.join("short"), "abc\n").unwrap();
    let file = dir.join("switchback.yaml");
    let name = file.to_str().unwrap();
    let one = |yaml: &str| {
        let errors = Config::from_yaml_str(yaml, name).unwrap_err();
        assert_eq!(errors.len(), 1, "{}", render(&errors));
        errors.into_iter().next().unwrap()
    };

    let empty = one("admin: { address: 0.0.0.0:9901, token_file: token }\n");
    assert_eq!(empty.path, "admin.token_file");
    assert_eq!(empty.line, Some(1));
    let token = dir.join("token");
    assert_eq!(
        empty.message,
        format!(
            "the admin token in {}: it is empty; e.g. write one with `openssl rand -hex 32 > FILE`",
            token.display()
        )
    );

    let missing = one("admin: { address: 0.0.0.0:9901, token_file: nope }\n");
    assert_eq!(missing.path, "admin.token_file");
    assert!(
        missing
            .message
            .starts_with(&format!("cannot read {}: ", dir.join("nope").display()))
            && missing.message.ends_with(
                "give the path of a file holding the admin token, absolute or relative to the config file"
            ),
        "{missing}"
    );

    let short = one("admin: { address: 0.0.0.0:9901, token_file: short }\n");
    assert!(
        short.message.contains("it is 3 characters long; use at least 16"),
        "{short}"
    );

    let blank = one("admin: { address: 0.0.0.0:9901, token_file: \"\" }\n");
    assert!(blank.message.contains("the file name is empty"), "{blank}");

    // Every problem at once: the missing address and the empty token.
    let both = Config::from_yaml_str("admin: { token_file: token }\n", name).unwrap_err();
    assert_eq!(both.len(), 2, "{}", render(&both));
    assert!(
        both[0].message.contains("missing required field `address`"),
        "{}",
        both[0]
    );
    assert_eq!(both[1].path, "admin.token_file");

    let bad_address = errors("admin: { address: 9901 }\n");
    check(
        &bad_address[0],
        "admin.address",
        1,
        "\"9901\" is not a socket address",
    );

    let unknown = one("admin: { address: 127.0.0.1:9901, token: abc }\n");
    assert!(unknown.message.contains("unknown field `token`"), "{unknown}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn max_concurrent_streams_is_bounded_by_http2() {
    assert_eq!(parse("listen: 127.0.0.1:1\n").max_concurrent_streams, 100);
    for (text, value) in [("1", 1), ("128", 128), ("2147483647", 2_147_483_647)] {
        let c = parse(&format!("max_concurrent_streams: {text}\n"));
        assert_eq!(c.max_concurrent_streams, value, "{text}");
    }
    for bad in ["0", "2147483648", "-1", "many"] {
        let e = one(&format!("max_concurrent_streams: {bad}\n"));
        assert!(e.to_string().contains("max_concurrent_streams"), "{bad}: {e}");
        assert!(e.to_string().contains("2147483647"), "{bad}: {e}");
    }
}

#[test]
fn websocket_limits_on_the_type_and_on_routes() {
    let c = parse(
        "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { max_frames_per_second: 100 }\n\
         routes:\n  - match: { prefix: /chat }\n    cluster: c\n    websocket: { max_frames_per_second: 1 }\n\
         \x20 - match: { prefix: / }\n    cluster: c\n\
         clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n",
    );
    let limits = |n| {
        Some(WebSocketLimits {
            max_frames_per_second: Some(n),
            ..WebSocketLimits::default()
        })
    };
    assert_eq!(c.upgrade_configs[0].websocket, limits(100));
    assert_eq!(c.routes[0].websocket, limits(1));
    assert_eq!(c.routes[1].websocket, None);
    let c = parse(
        "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { max_frames_per_second: 1000000 }\n",
    );
    assert_eq!(c.upgrade_configs[0].websocket, limits(1_000_000));
    let c = parse(
        "upgrade_configs:\n  - upgrade_type: websocket\n    websocket:\n      max_message_size: 1048576\n\
         \x20     max_upstream_message_size: 9223372036854775807\n",
    );
    let sizes = WebSocketLimits {
        max_message_size: Some(1_048_576),
        max_upstream_message_size: Some(i64::MAX as u64),
        ..WebSocketLimits::default()
    };
    assert_eq!(c.upgrade_configs[0].websocket, Some(sizes));
    let c = parse("upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { max_message_size: 0 }\n");
    let zero = c.upgrade_configs[0].websocket.unwrap().max_message_size;
    assert_eq!(zero, Some(0), "empty messages only");
    let c = parse(
        "routes:\n  - match: { prefix: / }\n    cluster: c\n    websocket: { ping_interval: 30s, pong_timeout: 250ms }\n\
         clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n",
    );
    let ws = c.routes[0].websocket.unwrap();
    assert_eq!(
        (ws.ping_interval, ws.pong_timeout),
        (Some(Duration::from_secs(30)), Some(Duration::from_millis(250)))
    );

    for (yaml, says) in [
        (
            "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { max_frames_per_second: 0 }\n",
            "max_frames_per_second must be a whole number from 1 to 1000000",
        ),
        (
            "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { max_frames_per_second: 1000001 }\n",
            "from 1 to 1000000",
        ),
        (
            "upgrade_configs:\n  - upgrade_type: foo\n    websocket: { max_frames_per_second: 5 }\n",
            "apply to the `websocket` upgrade type only",
        ),
        (
            "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { max_message_size: 9223372036854775808 }\n",
            "max_message_size must be a whole number from 0 to 9223372036854775807",
        ),
        (
            "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { max_upstream_message_size: -1 }\n",
            "max_upstream_message_size",
        ),
        (
            "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { ping_interval: 0s }\n",
            "a keepalive needs some time",
        ),
        (
            "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { pong_timeout: soon }\n",
            "pong_timeout",
        ),
        (
            "upgrade_configs:\n  - upgrade_type: websocket\n    websocket: { max_frame_per_second: 5 }\n",
            "max_frame_per_second",
        ),
        (
            "routes:\n  - match: { prefix: / }\n    cluster: c\n    upgrade_configs:\n      - upgrade_type: websocket\n        websocket: { max_frames_per_second: 5 }\n\
             clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n",
            "go on the route itself",
        ),
    ] {
        let e = one(yaml);
        assert!(e.to_string().contains(says), "{yaml}: {e}");
        assert!(e.to_string().contains("websocket"), "{yaml}: the path: {e}");
    }
}

#[test]
fn a_tracing_block_names_the_collector() {
    assert_eq!(parse("").tracing, None, "no block: nothing exported");
    let c = parse("tracing:\n  otlp_endpoint: http://collector:4318/\n");
    let t = c.tracing.unwrap();
    assert_eq!(
        t.otlp_endpoint, "http://collector:4318",
        "the trailing slash goes"
    );
    assert_eq!((t.service_name.as_str(), t.sampling), ("switchback", 100));
    let c =
        parse("tracing: { otlp_endpoint: \"http://10.0.0.1:4318/otlp\", service_name: edge, sampling: 0 }\n");
    let t = c.tracing.unwrap();
    assert_eq!(
        (t.otlp_endpoint.as_str(), t.service_name.as_str(), t.sampling),
        ("http://10.0.0.1:4318/otlp", "edge", 0)
    );
    for (yaml, path, says) in [
        (
            "tracing: { otlp_endpoint: \"https://c:4318\" }\n",
            "tracing.otlp_endpoint",
            "https collectors are not supported",
        ),
        (
            "tracing: { otlp_endpoint: \"c:4318\" }\n",
            "tracing.otlp_endpoint",
            "e.g. http://127.0.0.1:4318",
        ),
        (
            "tracing: { otlp_endpoint: \"http://c:4318?x=1\" }\n",
            "tracing.otlp_endpoint",
            "query",
        ),
        (
            "tracing: { otlp_endpoint: \"http://c:4318\", sampling: 101 }\n",
            "tracing.sampling",
            "from 0 to 100",
        ),
        (
            "tracing: { otlp_endpoint: \"http://c:4318\", service_name: \" \" }\n",
            "tracing.service_name",
            "empty",
        ),
        ("tracing: { service_name: edge }\n", "tracing", "otlp_endpoint"),
        (
            "tracing: { otlp_endpoint: \"http://c:4318\", sample: 5 }\n",
            "tracing.sample",
            "sampling",
        ),
    ] {
        let e = one(yaml);
        check(&e, path, 1, says);
    }
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn connect_routes_terminate_or_forward() {
    let c = parse(&with_clusters(
        "\
upgrade_configs:
  - upgrade_type: CONNECT
routes:
  - match: { connect_matcher: {} }
    cluster: echo
    upgrade_configs:
      - upgrade_type: CONNECT
        connect_config: { allow_post: true }
  - match: { connect_matcher: {}, headers: [{ name: x-proxy }] }
    cluster: other
",
    ));
    assert_eq!(
        c.upgrade_config("connect").map(|u| u.enabled),
        Some(true),
        "types are case-insensitive"
    );
    let terminate = &c.routes[0];
    assert_eq!(
        terminate.matcher.path,
        PathMatch::ConnectMatcher(ConnectMatcher {})
    );
    assert_eq!(
        terminate.upgrade_configs[0].connect_config,
        Some(ConnectConfig { allow_post: true })
    );
    let forward = &c.routes[1];
    assert_eq!(forward.matcher.path, PathMatch::ConnectMatcher(ConnectMatcher {}));
    assert_eq!(forward.matcher.headers.len(), 1);
    assert!(forward.upgrade_configs.is_empty());
}

#[test]
fn connect_config_defaults_and_misplacements() {
    let c = parse(&with_clusters(
        "\
routes:
  - match: { connect_matcher: {} }
    cluster: echo
    upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }]
",
    ));
    assert_eq!(
        c.routes[0].upgrade_configs[0].connect_config,
        Some(ConnectConfig { allow_post: false })
    );

    let e = one(&with_clusters(
        "\
upgrade_configs:
  - upgrade_type: CONNECT
    connect_config: {}
",
    ));
    check(
        &e,
        "upgrade_configs[0].connect_config",
        8,
        "move it to the `CONNECT` entry of that route's upgrade_configs",
    );

    let e = one(&with_clusters(
        "\
routes:
  - match: { prefix: / }
    cluster: echo
    upgrade_configs:
      - upgrade_type: websocket
        connect_config: {}
",
    ));
    check(
        &e,
        "routes[0].upgrade_configs[0].connect_config",
        11,
        "applies to the `CONNECT` upgrade type only",
    );

    let e = one(&with_clusters(
        "\
routes:
  - match: { connect_matcher: {} }
    cluster: echo
    upgrade_configs:
      - upgrade_type: CONNECT
        connect_config: { allow_posts: true }
",
    ));
    check(
        &e,
        "routes[0].upgrade_configs[0].connect_config.allow_posts",
        11,
        "allow_post",
    );
}

#[test]
fn connect_matcher_takes_no_path_and_no_fields() {
    let e = one(&with_clusters(
        "\
routes:
  - match: { prefix: /, connect_matcher: {} }
    cluster: echo
",
    ));
    check(
        &e,
        "routes[0].match.connect_matcher",
        7,
        "a CONNECT has no path, so a match takes `connect_matcher` alone, remove `prefix`",
    );

    let e = one(&with_clusters(
        "\
routes:
  - match: { connect_matcher: { host: example.com } }
    cluster: echo
",
    ));
    assert_eq!(e.path, "routes[0].match.connect_matcher.host", "{e}");
    assert_eq!(e.line, Some(7), "{e}");

    let e = one(&with_clusters(
        "\
routes:
  - match: {}
    cluster: echo
",
    ));
    check(&e, "routes[0].match", 7, "`connect_matcher`");
}

#[test]
fn http2_protocol_options_on_a_cluster() {
    let c = parse(
        "\
clusters:
  - name: grpc
    http2_protocol_options: {}
    endpoints: [127.0.0.1:9001]
  - name: plain
    endpoints: [127.0.0.1:9002]
",
    );
    assert_eq!(
        c.clusters[0].http2_protocol_options,
        Some(Http2ProtocolOptions {})
    );
    assert_eq!(c.clusters[1].http2_protocol_options, None);

    let e = one("\
clusters:
  - name: grpc
    http2_protocol_options: { max_concurrent_streams: 100 }
    endpoints: [127.0.0.1:9001]
");
    assert_eq!(
        e.path, "clusters[0].http2_protocol_options.max_concurrent_streams",
        "{e}"
    );
    assert_eq!(e.line, Some(3), "{e}");
}
