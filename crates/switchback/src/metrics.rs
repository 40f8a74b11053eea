//! Metric names, recorded through the [`metrics`] facade: install any recorder (for example a
//! Prometheus exporter) in the application to collect them. Without one they cost nothing.

/// Counter: upgrades that reached the router and were allowed (`type`).
pub const UPGRADES_STARTED: &str = "switchback_upgrades_started_total";
/// Counter: upgrades refused (`type`, `reason`).
pub const UPGRADES_REJECTED: &str = "switchback_upgrades_rejected_total";
/// Counter: upgrade handshakes that did not open a tunnel (`type`, `reason`: `connect`,
/// `timeout`, `refused`, `not_101`, `bad_101`).
pub const HANDSHAKE_FAILURES: &str = "switchback_handshake_failures_total";
/// Gauge: tunnels open now (`type`, `mode`: `joined`, `pumped` or `legacy`).
pub const TUNNELS_ACTIVE: &str = "switchback_tunnels_active";
/// Counter: tunnels opened (`type`, `mode`).
pub const TUNNELS_OPENED: &str = "switchback_tunnels_opened_total";
/// Counter: tunnel payload bytes (`type`, `direction`: `upstream` or `downstream`).
pub const TUNNEL_BYTES: &str = "switchback_tunnel_bytes_total";
/// Histogram: tunnel lifetimes in seconds (`type`, `end`).
pub const TUNNEL_DURATION: &str = "switchback_tunnel_duration_seconds";
/// Counter: responses by status class and code (`status`).
pub const REQUESTS: &str = "switchback_requests_total";
