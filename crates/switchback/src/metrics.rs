//! Metric names, recorded through the [`metrics`] facade: install any recorder (for example a
//! Prometheus exporter) in the application to collect them. Without one they cost nothing.

use std::sync::{Arc, LazyLock, Mutex};

use ::metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata};

use crate::detect::UpgradeType;
use crate::tunnel::TunnelEnd;
use crate::tunnel_info::TunnelMode;

/// Counter: upgrades that reached the router and were allowed (`type`).
pub const UPGRADES_STARTED: &str = "switchback_upgrades_started_total";
/// Counter: upgrades refused (`type`, `reason`). An upgrade type that neither the router nor
/// the route names is counted as [`OTHER_TYPE`]: a label never takes a client's own token.
pub const UPGRADES_REJECTED: &str = "switchback_upgrades_rejected_total";
/// The `type` label of upgrades whose type no configuration names.
pub const OTHER_TYPE: &str = "other";
/// Counter: upgrade handshakes that did not open a tunnel (`type`, `reason`: `connect`,
/// `timeout`, `refused`, `not_101`, `bad_101`, `no_upstream`).
pub const HANDSHAKE_FAILURES: &str = "switchback_handshake_failures_total";
/// Gauge: tunnels open now (`type`, `mode`: `joined`, `pumped` or `legacy`).
pub const TUNNELS_ACTIVE: &str = "switchback_tunnels_active";
/// Counter: tunnels opened (`type`, `mode`).
pub const TUNNELS_OPENED: &str = "switchback_tunnels_opened_total";
/// Counter: tunnel payload bytes (`type`, `direction`: `upstream` or `downstream`).
pub const TUNNEL_BYTES: &str = "switchback_tunnel_bytes_total";
/// Histogram: tunnel lifetimes in seconds (`type`, `end`).
pub const TUNNEL_DURATION: &str = "switchback_tunnel_duration_seconds";
/// Counter: WebSocket messages relayed (`type`, `direction`: `upstream` or `downstream`); a
/// fragmented message counts once, control frames not at all.
pub const WEBSOCKET_MESSAGES: &str = "switchback_websocket_messages_total";
/// Counter: WebSocket tunnels by their first close frame (`by`: `client`, `upstream` or
/// `proxy`; `code`: a code RFC 6455 defines (`1000` to `1015`), `3xxx` (registered), `4xxx`
/// (private), `none` (a close frame without a code) or `invalid`). Never a peer's raw value:
/// the labels stay a bounded set whatever peers send.
pub const WEBSOCKET_CLOSES: &str = "switchback_websocket_closes_total";
/// Counter: connections closed to make room for a newcomer when a listener was full.
pub const CONNECTIONS_EVICTED: &str = "switchback_connections_evicted_total";
/// Counter: connections answered `503` because a listener was full of busy ones.
pub const CONNECTIONS_REFUSED: &str = "switchback_connections_refused_total";
/// Counter: TLS handshakes with upstream endpoints that failed (`cluster`, `reason`:
/// `bad_certificate`, `alert`, `handshake`, `bad_name` or `io`).
pub const UPSTREAM_TLS_FAILURES: &str = "switchback_upstream_tls_failures_total";
/// Counter: TLS handshakes on a listener that failed (`reason`: `timeout`, `closed` or
/// `handshake`; a port scanner's connections land here, not in the log).
pub const TLS_HANDSHAKE_FAILURES: &str = "switchback_tls_handshake_failures_total";
/// Counter: responses by status class and code (`status`).
pub const REQUESTS: &str = "switchback_requests_total";
/// Counter: active health-check probes (`cluster`, `endpoint`, `result`: `success`,
/// `bad_status`, `connect_failure`, `timeout` or `error`).
pub const HEALTH_CHECKS: &str = "switchback_health_checks_total";
/// Gauge: 1 while an endpoint passes its cluster's active health checks, else 0 (`cluster`,
/// `endpoint`). Set by [`Cluster::record_metrics`](crate::Cluster::record_metrics), as are the
/// four below.
pub const ENDPOINT_HEALTHY: &str = "switchback_endpoint_healthy";
/// Gauge: 1 while outlier detection has an endpoint ejected, else 0 (`cluster`, `endpoint`).
pub const ENDPOINT_EJECTED: &str = "switchback_endpoint_ejected";
/// Gauge: requests and tunnels in flight at an endpoint (`cluster`, `endpoint`).
pub const ENDPOINT_ACTIVE: &str = "switchback_endpoint_active";
/// Counter: failed connects to an endpoint by requests and tunnels (`cluster`, `endpoint`).
pub const ENDPOINT_CONNECT_FAILURES: &str = "switchback_endpoint_connect_failures_total";
/// Gauge: a cluster's endpoints that get new requests, neither unhealthy nor ejected
/// (`cluster`).
pub const CLUSTER_ENDPOINTS_AVAILABLE: &str = "switchback_cluster_endpoints_available";

/// The `code` label of [`WEBSOCKET_CLOSES`].
pub(crate) fn close_code_label(code: Option<u16>) -> &'static str {
    const DEFINED: [&str; 16] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
        "1012", "1013", "1014", "1015",
    ];
    match code {
        None => "none",
        Some(c @ 1000..=1015) => DEFINED[usize::from(c - 1000)],
        Some(3000..=3999) => "3xxx",
        Some(4000..=4999) => "4xxx",
        Some(_) => "invalid",
    }
}

/// Counts a response by its status ([`REQUESTS`]).
pub(crate) fn count_status(status: http::StatusCode) {
    // One key per status from 100 to 599, built once (the macro would build one per call).
    static KEYS: LazyLock<Box<[Key]>> = LazyLock::new(|| {
        (100..600u16)
            .map(|code| Key::from_parts(REQUESTS, vec![Label::new("status", code.to_string())]))
            .collect()
    });
    match KEYS.get(usize::from(status.as_u16()).wrapping_sub(100)) {
        Some(key) => counter(key).increment(1),
        None => ::metrics::counter!(REQUESTS, "status" => status.as_str().to_owned()).increment(1),
    }
}

/// What the macros would say of the metrics recorded through prebuilt keys.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The counter of a prebuilt key, from the recorder in use (as `counter!` would).
pub(crate) fn counter(key: &Key) -> Counter {
    ::metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

/// The gauge of a prebuilt key.
pub(crate) fn gauge(key: &Key) -> Gauge {
    ::metrics::with_recorder(|r| r.register_gauge(key, &METADATA))
}

/// The histogram of a prebuilt key.
pub(crate) fn histogram(key: &Key) -> Histogram {
    ::metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
}

/// The keys of one upgrade type's tunnel metrics, built once per type: a key built for each
/// call (as the macros do) allocates its labels and hashes them, and a tunnel records nine
/// metrics.
pub(crate) struct TunnelKeys {
    /// [`TUNNELS_OPENED`] and [`TUNNELS_ACTIVE`] by mode (joined, pumped, legacy).
    opened: [Key; 3],
    active: [Key; 3],
    /// [`TUNNEL_BYTES`] and [`WEBSOCKET_MESSAGES`]: upstream, downstream.
    pub(crate) bytes: [Key; 2],
    pub(crate) messages: [Key; 2],
    /// [`TUNNEL_DURATION`] by how the tunnel ended.
    duration: [Key; TunnelEnd::ALL.len()],
}

/// Types whose keys are kept; past them (a configuration naming that many upgrade types),
/// keys are built for each tunnel.
const KEPT_TYPES: usize = 64;

impl TunnelKeys {
    /// The keys of `ty`'s tunnels.
    pub(crate) fn of(ty: &UpgradeType) -> Arc<Self> {
        static KEPT: Mutex<Vec<(UpgradeType, Arc<TunnelKeys>)>> = Mutex::new(Vec::new());
        let mut kept = KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, keys)) = kept.iter().find(|(t, _)| t == ty) {
            return keys.clone();
        }
        let keys = Arc::new(Self::new(ty));
        if kept.len() < KEPT_TYPES {
            kept.push((ty.clone(), keys.clone()));
        }
        keys
    }

    fn new(ty: &UpgradeType) -> Self {
        let key = |name: &'static str, label: &'static str, value: &'static str| {
            Key::from_parts(
                name,
                vec![
                    Label::new("type", ty.label()),
                    Label::from_static_parts(label, value),
                ],
            )
        };
        let modes = [TunnelMode::Joined, TunnelMode::Pumped, TunnelMode::Legacy];
        Self {
            opened: modes.map(|m| key(TUNNELS_OPENED, "mode", m.as_str())),
            active: modes.map(|m| key(TUNNELS_ACTIVE, "mode", m.as_str())),
            bytes: ["upstream", "downstream"].map(|d| key(TUNNEL_BYTES, "direction", d)),
            messages: ["upstream", "downstream"].map(|d| key(WEBSOCKET_MESSAGES, "direction", d)),
            duration: TunnelEnd::ALL.map(|end| key(TUNNEL_DURATION, "end", end.as_str())),
        }
    }

    pub(crate) fn opened(&self, mode: TunnelMode) -> &Key {
        &self.opened[mode_index(mode)]
    }

    pub(crate) fn active(&self, mode: TunnelMode) -> &Key {
        &self.active[mode_index(mode)]
    }

    pub(crate) fn duration(&self, end: TunnelEnd) -> &Key {
        &self.duration[end as usize]
    }
}

fn mode_index(mode: TunnelMode) -> usize {
    match mode {
        TunnelMode::Joined => 0,
        TunnelMode::Pumped => 1,
        TunnelMode::Legacy => 2,
    }
}

/// Why an upgrade handshake opened no tunnel: the `reason` of [`HANDSHAKE_FAILURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// No endpoint, or none could be connected to.
    Connect,
    /// No answer before the response timeout.
    Timeout,
    /// The upstream closed or reset before answering, or right after its `101`.
    Refused,
    /// The upstream answered something else than `101` (relayed to the client).
    Not101,
    /// The upstream's `101` did not match the request (a `502`).
    Bad101,
    /// The chain answered `101` without an upstream connection.
    NoUpstream,
}

impl HandshakeFailure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Not101 => "not_101",
            Self::Bad101 => "bad_101",
            Self::NoUpstream => "no_upstream",
        }
    }

    /// Counts one failure of an upgrade of type `ty`.
    pub(crate) fn record(self, ty: &crate::detect::UpgradeType) {
        ::metrics::counter!(HANDSHAKE_FAILURES, "type" => ty.label(), "reason" => self.as_str()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prebuilt_keys_are_the_macros_keys() {
        let ty = UpgradeType::new("websocket");
        let keys = TunnelKeys::of(&ty);
        let labels = |key: &Key| {
            key.labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect::<Vec<_>>()
        };
        for (i, end) in TunnelEnd::ALL.into_iter().enumerate() {
            assert_eq!(end as usize, i, "TunnelEnd::ALL is in declaration order");
            let key = keys.duration(end);
            assert_eq!(key.name(), TUNNEL_DURATION);
            assert_eq!(
                labels(key),
                [
                    ("type".into(), "websocket".into()),
                    ("end".into(), end.as_str().into())
                ]
            );
        }
        for mode in [TunnelMode::Joined, TunnelMode::Pumped, TunnelMode::Legacy] {
            assert_eq!(labels(keys.opened(mode))[1].1, mode.as_str());
            assert_eq!(labels(keys.active(mode))[1].1, mode.as_str());
        }
        assert!(Arc::ptr_eq(
            &keys,
            &TunnelKeys::of(&UpgradeType::new("WebSocket"))
        ));
        assert_eq!(
            labels(&TunnelKeys::of(&UpgradeType::new("foo")).bytes[1])[0].1,
            "foo"
        );
    }

    #[test]
    fn close_code_labels_are_a_bounded_set() {
        use close_code_label as label;
        assert_eq!(label(Some(1000)), "1000");
        assert_eq!(label(Some(1015)), "1015");
        assert_eq!(label(Some(1016)), "invalid");
        assert_eq!(label(Some(999)), "invalid");
        assert_eq!(label(Some(3000)), "3xxx");
        assert_eq!(label(Some(4999)), "4xxx");
        assert_eq!(label(Some(5000)), "invalid");
        assert_eq!(label(Some(u16::MAX)), "invalid");
        assert_eq!(label(None), "none");
        let all: std::collections::BTreeSet<_> = (0..=u16::MAX).map(|c| label(Some(c))).collect();
        assert_eq!(all.len(), 16 + 3, "{all:?}");
    }
}
