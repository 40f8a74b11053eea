//! Metric names, recorded through the [`metrics`] facade: install any recorder (for example a
//! Prometheus exporter) in the application to collect them. Without one they cost nothing.

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
    ::metrics::counter!(REQUESTS, "status" => status.as_str().to_owned()).increment(1);
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
    #[test]
    fn close_code_labels_are_a_bounded_set() {
        use super::close_code_label as label;
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
