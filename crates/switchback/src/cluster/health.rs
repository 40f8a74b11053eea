//! Active health checking (Envoy's `health_checks`): a [`HealthCheck`] probes every endpoint
//! of a cluster each interval, and an endpoint that fails it gets no new requests or tunnels
//! until it passes again.
//!
//! The checker is a future the application runs ([`Cluster::health_checker`]); the library
//! starts no task for it.
//!
//! Semantics, after Envoy's:
//!
//! - An endpoint is healthy until checked. Its **first** result decides at once, either way
//!   (Envoy: "during startup, only a single successful health check is required to mark a
//!   host healthy", and a host not yet checked is not routed to). Envoy keeps a new cluster
//!   warming, with no traffic, until that first round; Switchback routes as usual meanwhile,
//!   and the first round starts as soon as the checker runs.
//! - After that, `unhealthy_threshold` failures in a row (no connection, no answer within
//!   `timeout`, a reset) make a healthy endpoint unhealthy, and `healthy_threshold` passes in
//!   a row make an unhealthy one healthy again.
//! - An HTTP check passes on a `2xx` answer. Any other answer makes the endpoint unhealthy at
//!   once, without waiting for the threshold: the upstream is saying "send me nothing"
//!   (Envoy's "non-expected status code ... to immediately notify downstream hosts").
//!   Envoy's default expected status is `200` only; Switchback takes any `2xx`.
//! - With several checks, an endpoint is healthy only while it passes all of them (Envoy's
//!   multiple health checkers).
//! - When every endpoint is unhealthy (or ejected), the cluster uses them all anyway: Envoy's
//!   panic mode.
//! - Each probe uses a fresh connection (Envoy reuses one by default).
//! - With [`Cluster::close_connections_on_host_health_failure`], the tunnels open to an
//!   endpoint are closed when it turns unhealthy, as a drain closes them (a WebSocket tunnel
//!   gets a `1001` close frame each way); otherwise they run on.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use std::collections::HashMap;

use super::{Cluster, Endpoint, Members};
use crate::metrics;

/// One active health check: what to probe and how often, and the thresholds that flip an
/// endpoint's health.
///
/// ```
/// use std::time::Duration;
/// use switchback::{Cluster, Endpoint, HealthCheck};
///
/// let cluster = Cluster::new("chat", [Endpoint::new("10.0.0.1:80"), Endpoint::new("10.0.0.2:80")])
///     .health_check(
///         HealthCheck::http("/healthz")
///             .interval(Duration::from_secs(5))
///             .timeout(Duration::from_secs(1))
///             .unhealthy_threshold(3)
///             .healthy_threshold(2),
///     );
/// // Run the checker on your runtime (it never ends):
/// # async fn spawn(cluster: Cluster) {
/// tokio::spawn(cluster.health_checker());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
}

/// What a check sends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// A TCP connect, closed at once.
    Tcp,
    /// `GET path` on a fresh HTTP/1.1 connection.
    Http(String),
}

impl HealthCheck {
    /// A check that passes when a TCP connection to the endpoint opens.
    pub fn tcp() -> Self {
        Self::with(Probe::Tcp)
    }

    /// A check that sends `GET path` (with the endpoint's host as `Host`) and passes on a
    /// `2xx` answer.
    pub fn http(path: impl Into<String>) -> Self {
        Self::with(Probe::Http(path.into()))
    }

    /// Every 5 s, 1 s timeout, 3 failures to turn unhealthy, 2 passes to turn healthy.
    fn with(probe: Probe) -> Self {
        Self {
            probe,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }

    /// Time between two probes of an endpoint (at least 1 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a probe (connect and answer) may take before it counts as a failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Failures in a row that make a healthy endpoint unhealthy (at least 1).
    pub fn unhealthy_threshold(mut self, failures: u32) -> Self {
        self.unhealthy_threshold = failures.max(1);
        self
    }

    /// Passes in a row that make an unhealthy endpoint healthy again (at least 1).
    pub fn healthy_threshold(mut self, passes: u32) -> Self {
        self.healthy_threshold = passes.max(1);
        self
    }

    /// `"tcp"` or the HTTP path, for logs and metrics.
    fn label(&self) -> &str {
        match &self.probe {
            Probe::Tcp => "tcp",
            Probe::Http(path) => path,
        }
    }
}

/// How one probe went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Connected (TCP), or a `2xx` answer (HTTP).
    Pass,
    /// No connection, no answer in time, or a broken exchange: counts toward the threshold.
    Fail(&'static str),
    /// An answer outside `2xx`: unhealthy at once.
    Refused,
}

impl Verdict {
    /// The `result` label of [`metrics::HEALTH_CHECKS`].
    fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "success",
            Self::Fail(why) => why,
            Self::Refused => "bad_status",
        }
    }
}

/// One endpoint's standing under one check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tracker {
    state: State,
    /// Passes in a row while unhealthy, failures in a row while healthy.
    streak: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Not checked yet (counted healthy).
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl Tracker {
    /// Records a probe's verdict; `Some(healthy)` when the endpoint's health flips.
    pub(crate) fn record(&mut self, verdict: Verdict, check: &HealthCheck) -> Option<bool> {
        let (state, flipped) = match (self.state, verdict) {
            // The first result decides at once; an unchecked endpoint already counts healthy.
            (State::Unknown, Verdict::Pass) => (State::Healthy, None),
            (State::Unknown, _) => (State::Unhealthy, Some(false)),
            (State::Healthy, Verdict::Pass) | (State::Unhealthy, Verdict::Fail(_) | Verdict::Refused) => {
                self.streak = 0;
                return None;
            }
            (State::Healthy, Verdict::Refused) => (State::Unhealthy, Some(false)),
            (State::Healthy, Verdict::Fail(_)) => {
                self.streak += 1;
                if self.streak < check.unhealthy_threshold {
                    return None;
                }
                (State::Unhealthy, Some(false))
            }
            (State::Unhealthy, Verdict::Pass) => {
                self.streak += 1;
                if self.streak < check.healthy_threshold {
                    return None;
                }
                (State::Healthy, Some(true))
            }
        };
        self.state = state;
        self.streak = 0;
        flipped
    }
}

impl Cluster {
    /// Adds an active health check (see [`HealthCheck`]); with several, an endpoint must pass
    /// all of them (at most 32; more are ignored). Nothing is probed until the future of
    /// [`Cluster::health_checker`] runs.
    pub fn health_check(self, check: HealthCheck) -> Self {
        let mut settings = self.settings();
        if settings.health_checks.len() < 32 {
            settings.health_checks.push(check);
        }
        Self::build(settings)
    }

    /// Closes the tunnels open to an endpoint when active health checking finds it unhealthy
    /// (Envoy's `close_connections_on_host_health_failure`; default: they run on). They close
    /// as a drain closes them: a WebSocket tunnel gets a `1001` close frame each way.
    pub fn close_connections_on_host_health_failure(self, close: bool) -> Self {
        Self::build(super::Settings {
            close_on_health_failure: close,
            ..self.settings()
        })
    }

    /// The cluster's active health checker: probes every endpoint per each
    /// [`HealthCheck`], flips their health, logs each flip and records
    /// [`metrics::HEALTH_CHECKS`] and the per-endpoint gauges. It never ends while there is a
    /// check (it ends at once when there is none); spawn it on your runtime, once per cluster,
    /// and drop or abort it to stop checking.
    pub fn health_checker(&self) -> impl Future<Output = ()> + Send + 'static {
        let checks: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = self
            .inner
            .health_checks
            .iter()
            .enumerate()
            .map(|(bit, check)| {
                Box::pin(run(self.clone(), check.clone(), 1 << bit))
                    as Pin<Box<dyn Future<Output = ()> + Send>>
            })
            .collect();
        join_all(checks)
    }

    /// Marks endpoint `i` failing (or passing) the check whose bit is `bit`; returns whether
    /// its overall health changed.
    fn set_failing(&self, members: &Members, i: usize, bit: u32, failing: bool) -> bool {
        let flags = &members.balancer.states[i].unhealthy;
        let before = if failing {
            flags.fetch_or(bit, Relaxed)
        } else {
            flags.fetch_and(!bit, Relaxed)
        };
        let after = if failing { before | bit } else { before & !bit };
        let changed = (before == 0) != (after == 0);
        if changed && after != 0 && self.inner.close_on_health_failure {
            members.balancer.host_failed(i);
        }
        changed
    }
}

/// One check's loop over all the cluster's endpoints.
async fn run(cluster: Cluster, check: HealthCheck, bit: u32) {
    // By address: DNS discovery may change the endpoints between rounds.
    let mut trackers: HashMap<String, Tracker> = HashMap::new();
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let members = cluster.members();
        let probes = members
            .endpoints
            .iter()
            .map(|e| Box::pin(probe(cluster.clone(), e.clone(), check.clone())))
            .collect();
        let verdicts = join_all_output(probes).await;
        for (i, verdict) in verdicts.into_iter().enumerate() {
            let endpoint = members.endpoints[i].address();
            ::metrics::counter!(
                metrics::HEALTH_CHECKS,
                "cluster" => cluster.name().to_owned(),
                "endpoint" => endpoint.to_owned(),
                "result" => verdict.as_str(),
            )
            .increment(1);
            let tracker = trackers.entry(endpoint.to_owned()).or_default();
            let Some(healthy) = tracker.record(verdict, &check) else {
                continue;
            };
            if !cluster.set_failing(&members, i, bit, !healthy) {
                continue;
            }
            if healthy {
                tracing::info!(cluster = %cluster.name(), endpoint, check = check.label(), "endpoint is healthy again");
            } else {
                tracing::warn!(
                    cluster = %cluster.name(),
                    endpoint,
                    check = check.label(),
                    result = verdict.as_str(),
                    "endpoint is unhealthy: no new requests or tunnels go to it"
                );
            }
        }
        trackers.retain(|address, _| members.endpoints.iter().any(|e| e.address() == address));
        cluster.record_metrics();
    }
}

/// Probes `endpoint` once, within the check's timeout.
async fn probe(cluster: Cluster, endpoint: Endpoint, check: HealthCheck) -> Verdict {
    let exchange = async {
        let Ok(tcp) = cluster.connect_for_requests(&endpoint).await else {
            return Verdict::Fail("connect_failure");
        };
        let Probe::Http(path) = &check.probe else {
            return Verdict::Pass;
        };
        if cluster.is_http2() {
            return probe_http2(tcp, &endpoint, path).await;
        }
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await else {
            return Verdict::Fail("error");
        };
        let mut req = Request::get(path.as_str());
        if let Ok(host) = HeaderValue::from_str(endpoint.host()) {
            req = req.header(header::HOST, host);
        }
        let Ok(req) = req
            .header(header::USER_AGENT, "switchback-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
        else {
            return Verdict::Fail("error");
        };
        // The connection is driven here, beside the request: no task of its own. It may end
        // (`Connection: close`) with the answer already handed over: then take the answer.
        let mut conn = std::pin::pin!(conn);
        let mut send = std::pin::pin!(sender.send_request(req));
        let answer = tokio::select! {
            biased;
            answer = &mut send => answer,
            _ = &mut conn => send.await,
        };
        match answer {
            Ok(res) if res.status().is_success() => Verdict::Pass,
            Ok(_) => Verdict::Refused,
            Err(_) => Verdict::Fail("error"),
        }
    };
    tokio::time::timeout(check.timeout, exchange)
        .await
        .unwrap_or(Verdict::Fail("timeout"))
}

/// An HTTP check over HTTP/2, for a cluster that speaks it: the endpoint may speak nothing
/// else. The connection is driven beside the request and dropped after it.
async fn probe_http2(io: crate::tls::UpstreamStream, endpoint: &Endpoint, path: &str) -> Verdict {
    let executor = hyper_util::rt::TokioExecutor::new();
    let Ok((mut sender, conn)) = hyper::client::conn::http2::handshake(executor, TokioIo::new(io)).await
    else {
        return Verdict::Fail("error");
    };
    let uri = format!("http://{}{path}", endpoint.host());
    let Ok(req) = Request::get(uri)
        .header(header::USER_AGENT, "switchback-health-check")
        .body(Empty::<Bytes>::new())
    else {
        return Verdict::Fail("error");
    };
    let answer = tokio::select! {
        answer = sender.send_request(req) => answer,
        _ = conn => return Verdict::Fail("error"),
    };
    match answer {
        Ok(res) if res.status().is_success() => Verdict::Pass,
        Ok(_) => Verdict::Refused,
        Err(_) => Verdict::Fail("error"),
    }
}

/// Runs `futures` together until all end.
async fn join_all(futures: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>) {
    join_all_output(futures).await;
}

/// Runs `futures` together; their outputs in order.
async fn join_all_output<F: Future + Unpin>(futures: Vec<F>) -> Vec<F::Output> {
    let mut slots: Vec<(Option<F>, Option<F::Output>)> =
        futures.into_iter().map(|f| (Some(f), None)).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in &mut slots {
            if let Some(f) = future {
                match Pin::new(f).poll(cx) {
                    Poll::Ready(out) => {
                        *output = Some(out);
                        *future = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    slots.into_iter().filter_map(|(_, out)| out).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        HealthCheck::tcp().unhealthy_threshold(3).healthy_threshold(2)
    }

    const FAIL: Verdict = Verdict::Fail("timeout");

    #[test]
    fn the_first_result_decides_at_once() {
        let mut t = Tracker::default();
        assert_eq!(t.record(Verdict::Pass, &check()), None, "already counted healthy");
        let mut t = Tracker::default();
        assert_eq!(
            t.record(FAIL, &check()),
            Some(false),
            "no threshold before the first pass"
        );
    }

    #[test]
    fn thresholds_count_in_a_row() {
        let c = check();
        let mut t = Tracker::default();
        t.record(Verdict::Pass, &c);
        assert_eq!(t.record(FAIL, &c), None);
        assert_eq!(t.record(FAIL, &c), None);
        assert_eq!(t.record(Verdict::Pass, &c), None, "a pass breaks the streak");
        assert_eq!(t.record(FAIL, &c), None);
        assert_eq!(t.record(FAIL, &c), None);
        assert_eq!(t.record(FAIL, &c), Some(false), "third failure in a row");
        assert_eq!(t.record(FAIL, &c), None, "already unhealthy");
        assert_eq!(t.record(Verdict::Pass, &c), None);
        assert_eq!(t.record(FAIL, &c), None, "a failure breaks the streak");
        assert_eq!(t.record(Verdict::Pass, &c), None);
        assert_eq!(t.record(Verdict::Pass, &c), Some(true), "second pass in a row");
        assert_eq!(t.record(Verdict::Pass, &c), None);
    }

    #[test]
    fn a_bad_status_is_unhealthy_at_once() {
        let c = check();
        let mut t = Tracker::default();
        t.record(Verdict::Pass, &c);
        assert_eq!(t.record(FAIL, &c), None);
        assert_eq!(t.record(Verdict::Refused, &c), Some(false));
        assert_eq!(t.record(Verdict::Pass, &c), None);
        assert_eq!(t.record(Verdict::Refused, &c), None, "the streak starts over");
        assert_eq!(t.record(Verdict::Pass, &c), None);
        assert_eq!(t.record(Verdict::Pass, &c), Some(true));
    }

    #[test]
    fn thresholds_of_one_flip_on_each_change() {
        let c = check().unhealthy_threshold(0).healthy_threshold(1);
        let mut t = Tracker::default();
        t.record(Verdict::Pass, &c);
        assert_eq!(t.record(FAIL, &c), Some(false));
        assert_eq!(t.record(Verdict::Pass, &c), Some(true));
    }

    #[test]
    fn every_check_must_pass() {
        let cluster = Cluster::new("c", [Endpoint::new("127.0.0.1:1"), Endpoint::new("127.0.0.1:2")]);
        let m = cluster.members();
        assert!(cluster.set_failing(&m, 0, 1, true));
        assert!(!cluster.set_failing(&m, 0, 2, true), "already unhealthy");
        assert!(!cluster.set_failing(&m, 0, 1, false), "check 2 still fails");
        assert!(cluster.stats()[0].unhealthy);
        assert!(cluster.set_failing(&m, 0, 2, false));
        assert!(!cluster.stats()[0].unhealthy);
    }
}
