//! Which endpoint gets the next request or tunnel: the load-balancing policy, each
//! endpoint's active count, and outlier ejection.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a cluster picks an endpoint (Envoy's `lb_policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest active requests and tunnels (ties go round robin).
    /// Tunnels live long: after a restart, round robin leaves endpoints uneven for as long
    /// as the old tunnels last; this evens them out (HAProxy's advice for WebSockets).
    LeastRequest,
    /// Any endpoint, at random.
    Random,
}

/// Outlier ejection (Envoy's `outlier_detection`): an endpoint that fails
/// `consecutive_gateway_failure` times in a row (a connect failure, a reset, a timeout, or a
/// `502`, `503` or `504` answer) gets nothing new for `base_ejection_time`, doubled on each
/// repeat (at most `max_ejection_time`); at most `max_ejection_percent` of a cluster's
/// endpoints are out at once.
///
/// ```
/// use std::time::Duration;
/// use switchback::{Cluster, Endpoint, OutlierDetection};
///
/// let cluster = Cluster::new("chat", [Endpoint::new("10.0.0.1:80"), Endpoint::new("10.0.0.2:80")])
///     .outlier_detection(
///         OutlierDetection::new()
///             .consecutive_gateway_failure(3)
///             .base_ejection_time(Duration::from_secs(10)),
///     );
/// # let _ = cluster;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    consecutive_gateway_failure: u32,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_gateway_failure: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierDetection {
    /// Five failures in a row, 30 s (doubling, at most 5 min), at most half the endpoints.
    pub fn new() -> Self {
        Self::default()
    }

    /// Failures in a row that eject an endpoint (at least 1).
    pub fn consecutive_gateway_failure(mut self, failures: u32) -> Self {
        self.consecutive_gateway_failure = failures.max(1);
        self
    }

    /// How long the first ejection lasts; each repeat doubles it.
    pub fn base_ejection_time(mut self, time: Duration) -> Self {
        self.base_ejection_time = time;
        self
    }

    /// The longest an ejection lasts.
    pub fn max_ejection_time(mut self, time: Duration) -> Self {
        self.max_ejection_time = time;
        self
    }

    /// The largest share of the cluster's endpoints ejected at once, in percent (0 to 100).
    pub fn max_ejection_percent(mut self, percent: u8) -> Self {
        self.max_ejection_percent = percent.min(100);
        self
    }
}

/// What became of a request or tunnel handshake sent to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer that isn't a gateway error.
    Success,
    /// No connection.
    ConnectFailure,
    /// A reset or timeout before the answer, or a `502`, `503` or `504`.
    GatewayFailure,
}

/// One endpoint's counters.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    /// Requests and tunnels in flight.
    active: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// When the current ejection ends (see [`Balancer::millis`]); zero when not ejected.
    ejected_until: AtomicU64,
    /// Ejections so far, for doubling; forgotten after a quiet spell.
    ejections: AtomicU32,
    connect_failures: AtomicU64,
    /// The active health checks it fails now, one bit each; healthy when zero.
    pub(crate) unhealthy: AtomicU32,
    /// Cancelled when it turns unhealthy, for a cluster that closes its tunnels then (and
    /// replaced by a fresh one); `None` for one that doesn't.
    host_failure: Option<Mutex<CancellationToken>>,
}

/// Picks endpoints for one cluster.
#[derive(Debug)]
pub(crate) struct Balancer {
    pub(crate) policy: LbPolicy,
    pub(crate) outlier: Option<OutlierDetection>,
    next: AtomicUsize,
    epoch: Instant,
    /// One per endpoint, in the cluster's order; shared with a later generation of the
    /// cluster's endpoints (DNS discovery) for the addresses both have.
    pub(crate) states: Vec<Arc<EndpointState>>,
    close_on_failure: bool,
}

/// An endpoint's share of the work, held while a request or tunnel is in flight there.
#[derive(Debug)]
pub(crate) struct Active {
    state: Arc<EndpointState>,
}

impl Active {
    /// Cancelled when the endpoint turns unhealthy, if its cluster closes tunnels then.
    pub(crate) fn host_failure(&self) -> Option<CancellationToken> {
        let token = self.state.host_failure.as_ref()?;
        Some(token.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Relaxed);
    }
}

/// An [`Active`] on its way, in a response's extensions, from the forwarder to whoever
/// keeps it while the request or tunnel lives (the router, for a tunnel). Extensions are
/// cloned; the count is taken once.
#[derive(Debug, Clone)]
pub(crate) struct Carried(Arc<Mutex<Option<Active>>>);

impl Carried {
    pub(crate) fn new(active: Active) -> Self {
        Self(Arc::new(Mutex::new(Some(active))))
    }

    pub(crate) fn take(&self) -> Option<Active> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A snapshot of one endpoint, for the admin endpoint and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    /// The endpoint's address.
    pub address: String,
    /// Requests and tunnels in flight.
    pub active: usize,
    /// Whether outlier detection has ejected it now.
    pub ejected: bool,
    /// Whether active health checking finds it unhealthy.
    pub unhealthy: bool,
    /// Failures in a row, as outlier detection counts them.
    pub consecutive_failures: u32,
    /// Connect failures since start.
    pub connect_failures: u64,
}

impl Balancer {
    /// A balancer for `endpoints` endpoints; `close_on_failure` gives each a token that
    /// [`Balancer::host_failed`] cancels.
    pub(crate) fn new(
        endpoints: usize,
        policy: LbPolicy,
        outlier: Option<OutlierDetection>,
        close_on_failure: bool,
    ) -> Self {
        Self {
            policy,
            outlier,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            states: (0..endpoints).map(|_| fresh_state(close_on_failure)).collect(),
            close_on_failure,
        }
    }

    /// The balancer for a new set of endpoints (`now`, after `before`): an address in both
    /// keeps its counters, health and ejection; the live tunnels of one that left keep
    /// theirs until they end.
    pub(crate) fn next_generation(&self, before: &[super::Endpoint], now: &[super::Endpoint]) -> Self {
        let states = now
            .iter()
            .map(|e| {
                before
                    .iter()
                    .position(|b| b.address() == e.address())
                    .map_or_else(|| fresh_state(self.close_on_failure), |i| self.states[i].clone())
            })
            .collect();
        Self {
            policy: self.policy,
            outlier: self.outlier,
            next: AtomicUsize::new(self.next.load(Relaxed)),
            epoch: self.epoch,
            states,
            close_on_failure: self.close_on_failure,
        }
    }

    /// Endpoint `i` turned unhealthy: the tunnels watching its token close, and later ones
    /// get a fresh token.
    pub(crate) fn host_failed(&self, i: usize) {
        if let Some(token) = &self.states[i].host_failure {
            let old = std::mem::take(&mut *token.lock().unwrap_or_else(|e| e.into_inner()));
            old.cancel();
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn available(&self, i: usize, now: u64) -> bool {
        available(&self.states[i], now)
    }

    /// The endpoint for the next request, skipping those in `tried` and, while any other is
    /// left, ejected or unhealthy ones (when none is left, any is better than none: Envoy's
    /// panic mode). `None` only when every endpoint was tried.
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.states.len();
        let now = self.millis(Instant::now());
        let fresh = |i: &usize| !tried.contains(i);
        let candidates: Vec<usize> = (0..n).filter(fresh).filter(|&i| self.available(i, now)).collect();
        let candidates = if candidates.is_empty() {
            (0..n).filter(fresh).collect()
        } else {
            candidates
        };
        if candidates.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Relaxed);
        Some(match self.policy {
            LbPolicy::RoundRobin => candidates[turn % candidates.len()],
            LbPolicy::Random => candidates[rand::random_range(0..candidates.len())],
            LbPolicy::LeastRequest => {
                // The fewest active; among equals, the one whose turn it is. Each count is read
                // once: other workers change them meanwhile, and a second read could leave no
                // endpoint at the minimum of the first.
                let loads: Vec<(usize, usize)> = candidates
                    .into_iter()
                    .map(|i| (i, self.states[i].active.load(Relaxed)))
                    .collect();
                let fewest = loads.iter().map(|&(_, load)| load).min().unwrap_or(0);
                let tied: Vec<usize> = loads
                    .into_iter()
                    .filter(|&(_, load)| load == fewest)
                    .map(|(i, _)| i)
                    .collect();
                tied[turn % tied.len()]
            }
        })
    }

    /// Counts a request or tunnel in flight at endpoint `i` until the guard drops.
    pub(crate) fn activate(&self, i: usize) -> Active {
        self.states[i].active.fetch_add(1, Relaxed);
        Active {
            state: self.states[i].clone(),
        }
    }

    /// Records how an attempt at `active`'s endpoint went; returns whether it ejected the
    /// endpoint.
    pub(crate) fn report(&self, active: &Active, outcome: Outcome) -> bool {
        let s = &*active.state;
        if outcome == Outcome::ConnectFailure {
            s.connect_failures.fetch_add(1, Relaxed);
        }
        let Some(outlier) = self.outlier else {
            return false;
        };
        let now = Instant::now();
        if outcome == Outcome::Success {
            s.consecutive_failures.store(0, Relaxed);
            // A spell as long as the base ejection time without ejection forgets the past.
            let until = s.ejected_until.load(Relaxed);
            if until != 0 && self.millis(now) > until + millis(outlier.base_ejection_time) {
                s.ejections.store(0, Relaxed);
                s.ejected_until.store(0, Relaxed);
            }
            return false;
        }
        let failures = s.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures < outlier.consecutive_gateway_failure || !available(s, self.millis(now)) {
            return false;
        }
        let ejected = (0..self.states.len())
            .filter(|&j| !self.available(j, self.millis(now)))
            .count();
        let limit = self.states.len() * usize::from(outlier.max_ejection_percent) / 100;
        if ejected + 1 > limit {
            return false;
        }
        let repeats = s.ejections.fetch_add(1, Relaxed).min(16);
        let time = outlier
            .base_ejection_time
            .saturating_mul(1 << repeats)
            .min(outlier.max_ejection_time);
        s.ejected_until.store(self.millis(now + time), Relaxed);
        s.consecutive_failures.store(0, Relaxed);
        true
    }

    pub(crate) fn stats(&self, i: usize, address: &str) -> EndpointStats {
        let s = &self.states[i];
        EndpointStats {
            address: address.to_owned(),
            active: s.active.load(Relaxed),
            ejected: s.ejected_until.load(Relaxed) > self.millis(Instant::now()),
            unhealthy: s.unhealthy.load(Relaxed) != 0,
            consecutive_failures: s.consecutive_failures.load(Relaxed),
            connect_failures: s.connect_failures.load(Relaxed),
        }
    }
}

/// Whether an attempt at this endpoint may be made now: neither ejected nor unhealthy.
fn available(s: &EndpointState, now: u64) -> bool {
    s.ejected_until.load(Relaxed) <= now && s.unhealthy.load(Relaxed) == 0
}

/// A new endpoint's counters; `close_on_failure` gives it a token [`Balancer::host_failed`]
/// cancels.
fn fresh_state(close_on_failure: bool) -> Arc<EndpointState> {
    Arc::new(EndpointState {
        host_failure: close_on_failure.then(Mutex::default),
        ..EndpointState::default()
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_request_picks_the_least_busy() {
        let b = Balancer::new(3, LbPolicy::LeastRequest, None, false);
        let _a = b.activate(0);
        let _b = b.activate(0);
        let _c = b.activate(1);
        assert_eq!(b.pick(&[]), Some(2));
        let _d = b.activate(2);
        // 1 and 2 tie: they take turns.
        let (x, y) = (b.pick(&[]), b.pick(&[]));
        assert!(
            x != y && [x, y].iter().all(|p| matches!(p, Some(1 | 2))),
            "{x:?} {y:?}"
        );
        // A tried endpoint is skipped whatever its load.
        assert_eq!(b.pick(&[1, 2]), Some(0));
    }

    #[test]
    fn least_request_picks_while_other_workers_change_the_counts() {
        let b = Balancer::new(4, LbPolicy::LeastRequest, None, false);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for worker in 0..2 {
                let (b, stop) = (&b, &stop);
                s.spawn(move || {
                    let mut held = Vec::new();
                    for n in 0usize.. {
                        if stop.load(Relaxed) {
                            break;
                        }
                        held.push(b.activate((n + worker) % 4));
                        if held.len() > 3 {
                            held.remove(n % 3);
                        }
                    }
                });
            }
            for _ in 0..200_000 {
                assert!(matches!(b.pick(&[]), Some(0..4)));
            }
            stop.store(true, Relaxed);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_skips_an_endpoint_then_lets_it_back_doubling() {
        let outlier = OutlierDetection::new()
            .consecutive_gateway_failure(2)
            .base_ejection_time(Duration::from_secs(10));
        let b = Balancer::new(2, LbPolicy::RoundRobin, Some(outlier), false);
        let (zero, one) = (b.activate(0), b.activate(1));
        assert!(!b.report(&zero, Outcome::GatewayFailure));
        assert!(b.report(&zero, Outcome::ConnectFailure));
        for _ in 0..4 {
            assert_eq!(b.pick(&[]), Some(1));
        }
        // Only endpoint 1 is left; tried, the ejected one is better than none.
        assert_eq!(b.pick(&[1]), Some(0));
        // The other may not be ejected too: half the cluster is out already.
        b.report(&one, Outcome::GatewayFailure);
        assert!(!b.report(&one, Outcome::GatewayFailure));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.stats(0, "a").consecutive_failures == 0 && !b.stats(0, "a").ejected);
        // Ejected again: 20 s this time.
        b.report(&zero, Outcome::GatewayFailure);
        assert!(b.report(&zero, Outcome::GatewayFailure));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(b.stats(0, "a").ejected);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!b.stats(0, "a").ejected);
    }

    #[test]
    fn a_new_generation_keeps_the_counters_of_the_addresses_it_shares() {
        use crate::cluster::Endpoint;
        let b = Balancer::new(2, LbPolicy::LeastRequest, None, false);
        let held = b.activate(1);
        let (before, now) = (
            [Endpoint::new("10.0.0.1:80"), Endpoint::new("10.0.0.2:80")],
            [Endpoint::new("10.0.0.2:80"), Endpoint::new("10.0.0.3:80")],
        );
        let next = b.next_generation(&before, &now);
        assert_eq!((next.stats(0, "b").active, next.stats(1, "c").active), (1, 0));
        drop(held);
        assert_eq!(next.stats(0, "b").active, 0);
    }
}
