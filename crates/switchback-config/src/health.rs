//! A cluster's `health_checks`: reading, checking and the effective [`HealthCheck`].
//!
//! ```yaml
//! health_checks:
//!   - { path: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2 }
//!   - tcp: {}          # a TCP connect check, with the default interval, timeout and thresholds
//! ```

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Serialize;

use crate::duration::{self, parse_duration};
use crate::error::Ctx;
use crate::locate::{join_index, join_key};
use crate::read::{Field, List, S, Whole};
use crate::tree::{Content, Node};

/// Default health check `interval`: 5 seconds.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Default health check `timeout`: 1 second.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// `unhealthy_threshold` and `healthy_threshold`.
const THRESHOLD: Whole = Whole {
    min: 1,
    max: u32::MAX as u64,
};

/// One active health check of a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// HTTP `GET path` (passes on `2xx`): `Some(path)`; a TCP connect check: `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether this is a TCP connect check (`tcp: {}` in the YAML).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tcp: bool,
    /// Time between two probes of an endpoint. Default `5s`; greater than zero.
    #[serde(serialize_with = "duration::serialize")]
    pub interval: Duration,
    /// How long a probe may take before it counts as a failure. Default `1s`; greater than
    /// zero.
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// Failures in a row that make a healthy endpoint unhealthy. Default 3.
    pub unhealthy_threshold: NonZeroU32,
    /// Passes in a row that make an unhealthy endpoint healthy again. Default 2.
    pub healthy_threshold: NonZeroU32,
}

#[derive(Debug)]
pub(crate) struct RawHealthCheck {
    path: Field<S<String>>,
    tcp: Field<S<()>>,
    interval: Option<S<String>>,
    timeout: Option<S<String>>,
    unhealthy_threshold: Option<S<u64>>,
    healthy_threshold: Option<S<u64>>,
}

impl RawHealthCheck {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "path",
        "tcp",
        "interval",
        "timeout",
        "unhealthy_threshold",
        "healthy_threshold",
    ];

    pub(crate) fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        let threshold = |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.whole(node, path, THRESHOLD);
        Some(f.at(RawHealthCheck {
            path: f.optional(ctx, "path", Ctx::string),
            tcp: f.value(ctx, "tcp", tcp),
            interval: f.optional(ctx, "interval", Ctx::string).ok(),
            timeout: f.optional(ctx, "timeout", Ctx::string).ok(),
            unhealthy_threshold: f.optional(ctx, "unhealthy_threshold", threshold).ok(),
            healthy_threshold: f.optional(ctx, "healthy_threshold", threshold).ok(),
        }))
    }
}

/// `tcp: {}`: an empty mapping (the TCP check has no settings of its own).
fn tcp(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<()>> {
    match &node.content {
        Content::Map(entries) if entries.is_empty() => Some(S {
            value: (),
            at: node.at,
        }),
        Content::Map(_) => {
            ctx.error(
                node.at,
                path,
                "a TCP connect check has no settings: write `tcp: {}` and put interval, timeout \
                 and thresholds beside `tcp`",
            );
            None
        }
        _ => {
            ctx.type_error(node, path, "`{}` (a TCP connect check has no settings)");
            None
        }
    }
}

/// Checks a cluster's `health_checks` (at `path`) and builds the effective ones.
pub(crate) fn validate(ctx: &mut Ctx<'_>, list: &List<RawHealthCheck>, path: &str) -> Vec<HealthCheck> {
    let mut out = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let Some(raw) = raw else { continue };
        let at = join_index(path, i);
        out.extend(check(ctx, raw, &at));
    }
    if let Some(extra) = list.iter().flatten().nth(32) {
        ctx.error(
            extra.at,
            path,
            "a cluster takes at most 32 health checks; remove some",
        );
    }
    out
}

fn check(ctx: &mut Ctx<'_>, raw: &S<RawHealthCheck>, path: &str) -> Option<HealthCheck> {
    let r = &raw.value;
    let kind = match (r.path.valid(), r.tcp.valid()) {
        // Written but unusable: already reported.
        (None, None) if r.path.is_written() || r.tcp.is_written() => None,
        (Some(p), None) if p.value.starts_with('/') => Some(Some(p.value.clone())),
        (Some(p), None) => {
            ctx.error(
                p.at,
                &join_key(path, "path"),
                format!("path \"{}\" must start with `/`, e.g. /healthz", p.value),
            );
            None
        }
        (None, Some(_)) => Some(None),
        (Some(_), Some(t)) => {
            ctx.error(
                t.at,
                &join_key(path, "tcp"),
                "a health check is either HTTP (`path`) or TCP (`tcp: {}`), not both; \
                 write two entries to run both",
            );
            None
        }
        (None, None) => {
            ctx.error(
                raw.at,
                path,
                "say what to check: `path: /healthz` for an HTTP check (passes on 2xx) or \
                 `tcp: {}` for a TCP connect check",
            );
            None
        }
    };
    let interval = positive(ctx, &r.interval, path, "interval", DEFAULT_HEALTH_CHECK_INTERVAL);
    let timeout = positive(ctx, &r.timeout, path, "timeout", DEFAULT_HEALTH_CHECK_TIMEOUT);
    let threshold = |t: &Option<S<u64>>, default: u32| {
        let n = t
            .as_ref()
            .map_or(default, |t| u32::try_from(t.value).unwrap_or(u32::MAX));
        NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
    };
    for (field, value) in [
        ("unhealthy_threshold", &r.unhealthy_threshold),
        ("healthy_threshold", &r.healthy_threshold),
    ] {
        if let Some(v) = value.as_ref().filter(|v| v.value == 0) {
            ctx.error(
                v.at,
                &join_key(path, field),
                format!("{field} must be at least 1"),
            );
        }
    }
    let path = kind?;
    Some(HealthCheck {
        tcp: path.is_none(),
        path,
        interval: interval?,
        timeout: timeout?,
        unhealthy_threshold: threshold(&r.unhealthy_threshold, 3),
        healthy_threshold: threshold(&r.healthy_threshold, 2),
    })
}

/// A duration field that must be greater than zero, or its default when left out.
fn positive(
    ctx: &mut Ctx<'_>,
    value: &Option<S<String>>,
    path: &str,
    field: &str,
    default: Duration,
) -> Option<Duration> {
    let Some(value) = value else {
        return Some(default);
    };
    let at = join_key(path, field);
    match parse_duration(&value.value) {
        Ok(d) if d.is_zero() => {
            ctx.error(
                value.at,
                &at,
                format!(
                    "{field} must be greater than zero (e.g. {}); omit it for the default",
                    duration::format_duration(default)
                ),
            );
            None
        }
        Ok(d) => Some(d),
        Err(message) => {
            ctx.error(value.at, &at, message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError};

    const BASE: &str = "clusters:\n  - name: echo\n    endpoints: [127.0.0.1:9001]\n";

    fn parse(extra: &str) -> Result<Config, Vec<ConfigError>> {
        Config::from_yaml_str(&format!("{BASE}{extra}"), "config.yaml")
    }

    /// The only error of `extra`: its path, line and a piece of its message.
    #[track_caller]
    fn one(extra: &str, path: &str, line: usize, needle: &str) {
        let errors = parse(extra).expect_err("expected an error");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.path.as_str(), e.line), (path, Some(line)), "{e}");
        assert!(e.message.contains(needle), "{e} should contain {needle:?}");
    }

    #[test]
    fn http_and_tcp_checks_with_defaults() {
        let config = parse(
            "    health_checks:\n\
             \x20     - { path: /healthz, interval: 2s, timeout: 500ms, unhealthy_threshold: 4, healthy_threshold: 1 }\n\
             \x20     - tcp: {}\n\
             \x20   close_connections_on_host_health_failure: true\n",
        )
        .unwrap();
        let c = &config.clusters[0];
        assert!(c.close_connections_on_host_health_failure);
        let [http, tcp] = &c.health_checks[..] else {
            panic!("{:?}", c.health_checks)
        };
        assert_eq!(http.path.as_deref(), Some("/healthz"));
        assert!(!http.tcp);
        assert_eq!(http.interval, std::time::Duration::from_secs(2));
        assert_eq!(http.timeout, std::time::Duration::from_millis(500));
        assert_eq!(
            (http.unhealthy_threshold.get(), http.healthy_threshold.get()),
            (4, 1)
        );
        assert!(tcp.tcp && tcp.path.is_none());
        assert_eq!(tcp.interval, super::DEFAULT_HEALTH_CHECK_INTERVAL);
        assert_eq!(tcp.timeout, super::DEFAULT_HEALTH_CHECK_TIMEOUT);
        assert_eq!(
            (tcp.unhealthy_threshold.get(), tcp.healthy_threshold.get()),
            (3, 2)
        );
        let json = serde_json::to_string(&config.clusters[0]).unwrap();
        assert!(
            json.contains(r#""health_checks":[{"path":"/healthz","interval":"2s""#),
            "{json}"
        );
        assert!(json.contains(r#"{"tcp":true,"interval":"5s""#), "{json}");
        assert!(!parse("").unwrap().clusters[0].close_connections_on_host_health_failure);
    }

    #[test]
    fn bad_checks_are_named() {
        let at = "clusters[0].health_checks[0]";
        one(
            "    health_checks:\n      - interval: 5s\n",
            at,
            5,
            "say what to check",
        );
        one(
            "    health_checks:\n      - { path: /h, tcp: {} }\n",
            &format!("{at}.tcp"),
            5,
            "not both",
        );
        one(
            "    health_checks:\n      - path: healthz\n",
            &format!("{at}.path"),
            5,
            "must start with `/`",
        );
        one(
            "    health_checks:\n      - tcp: { port: 1 }\n",
            &format!("{at}.tcp"),
            5,
            "has no settings",
        );
        one(
            "    health_checks:\n      - tcp: yes\n",
            &format!("{at}.tcp"),
            5,
            "`{}`",
        );
        one(
            "    health_checks:\n      - { tcp: {}, interval: 0s }\n",
            &format!("{at}.interval"),
            5,
            "greater than zero",
        );
        one(
            "    health_checks:\n      - { tcp: {}, timeout: 1 }\n",
            &format!("{at}.timeout"),
            5,
            "no unit",
        );
        one(
            "    health_checks:\n      - { tcp: {}, healthy_threshold: 0 }\n",
            &format!("{at}.healthy_threshold"),
            5,
            "at least 1",
        );
        one(
            "    health_checks:\n      - { tcp: {}, unhealthy_treshold: 2 }\n",
            &format!("{at}.unhealthy_treshold"),
            5,
            "did you mean `unhealthy_threshold`",
        );
        one(
            "    close_connections_on_host_health_failure: sometimes\n",
            "clusters[0].close_connections_on_host_health_failure",
            4,
            "true or false",
        );
    }
}
