//! One request's way to an upstream: every rule of an attempt at a cluster lives here once.
//!
//! [`Attempts`] owns what plain requests, upgrades and the legacy mode share: which endpoint
//! to try next (the cluster's balancer, skipping endpoints tried already, any one when all
//! were), the deadlines (the route's timeout for all attempts, the per-try timeout for each),
//! what each attempt tells outlier detection, whether to try again (the retry policy, and a
//! request body that can't be sent twice), and which status a failure answers. The callers
//! differ only in how one attempt is sent: through the cluster's pool, or on a dedicated
//! connection that no pool sees (an upgrade's).

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::cluster::{Active, Cluster, ConnectError, Endpoint, Outcome};
use crate::metrics::HandshakeFailure;
use crate::retry::RetryPolicy;

/// Why an attempt at one endpoint got no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No endpoint to try.
    NoEndpoint,
    /// No connection: refused, unreachable, timed out, or the TLS session failed or was
    /// refused.
    Connect(ConnectError),
    /// The connection failed before the response head.
    Reset(BoxError),
    /// No response head in time.
    Timeout,
    /// A `101` in a response that isn't HTTP/1.1: `101` exists only there (RFC 9110 §15.2.2).
    NotHttp11Switch,
    /// An HTTP/2 endpoint that doesn't allow extended CONNECT (RFC 8441 §3): no upgrade can
    /// go to it.
    NoExtendedConnect,
}

impl Failure {
    /// The status and message the client gets; a connect failure answers `connect_failed`.
    pub(crate) fn status(&self, connect_failed: StatusCode) -> (StatusCode, &'static str) {
        match self {
            Self::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            Self::Connect(_) => (connect_failed, "upstream connect error"),
            Self::Reset(_) => (StatusCode::BAD_GATEWAY, "upstream reset before response"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream response timeout"),
            Self::NotHttp11Switch => (
                StatusCode::BAD_GATEWAY,
                "the upstream answered 101 outside HTTP/1.1",
            ),
            Self::NoExtendedConnect => (
                StatusCode::BAD_GATEWAY,
                "the HTTP/2 upstream does not accept extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)",
            ),
        }
    }

    /// The `reason` an upgrade's failure is counted under.
    pub(crate) fn reason(&self) -> HandshakeFailure {
        match self {
            Self::NoEndpoint | Self::Connect(_) => HandshakeFailure::Connect,
            Self::Reset(_) => HandshakeFailure::Refused,
            Self::Timeout => HandshakeFailure::Timeout,
            Self::NotHttp11Switch | Self::NoExtendedConnect => HandshakeFailure::Bad101,
        }
    }

    /// What outlier detection counts for it.
    fn outcome(&self) -> Outcome {
        match self {
            Self::NoEndpoint | Self::Connect(_) => Outcome::ConnectFailure,
            Self::Reset(_) | Self::Timeout | Self::NotHttp11Switch | Self::NoExtendedConnect => {
                Outcome::GatewayFailure
            }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEndpoint => f.write_str("no endpoint to try"),
            Self::Connect(e) => write!(f, "{e}"),
            Self::Reset(e) => write!(f, "failed before answering: {e}"),
            Self::Timeout => f.write_str("no response head before the timeout"),
            Self::NotHttp11Switch => f.write_str("a 101 outside HTTP/1.1"),
            Self::NoExtendedConnect => f.write_str("no extended CONNECT on an HTTP/2 upstream"),
        }
    }
}

/// One way of making an attempt at an endpoint: through the cluster's pool, or on a
/// connection of its own.
pub(crate) trait Sender {
    /// What an endpoint answers.
    type Answer: Answered;

    /// Whether an endpoint tried already may be tried again once every one has been: a
    /// pooled request may find another connection there, while a fresh connection to an
    /// endpoint that just failed would most likely fail the same way.
    const REPEATS_ENDPOINTS: bool;

    /// Sends the request to `endpoint`, waiting up to `timeout` for the answer; takes the body
    /// out of `body` when it sends it.
    fn send<'a>(
        &'a mut self,
        endpoint: &'a Endpoint,
        timeout: Option<Duration>,
        body: &'a mut Option<Body>,
    ) -> impl Future<Output = Result<Self::Answer, Failure>> + Send + 'a;
}

/// What an attempt's answer tells the loop: its status.
pub(crate) trait Answered {
    fn status(&self) -> StatusCode;
}

impl<B> Answered for http::Response<B> {
    fn status(&self) -> StatusCode {
        self.status()
    }
}

/// An answer, from the endpoint that gave it, still counted active there.
pub(crate) struct Answer<A> {
    pub(crate) answer: A,
    pub(crate) endpoint: Endpoint,
    pub(crate) active: Active,
}

/// A request's attempts at a cluster: the retries and the time it has left, and the endpoints
/// it has tried.
#[derive(Debug)]
pub(crate) struct Attempts {
    policy: RetryPolicy,
    retries: u32,
    /// When the route's timeout ends, for all attempts together.
    deadline: Option<Instant>,
    /// One retry of a reset outside the policy: a reused pooled connection that the upstream
    /// closed meanwhile fails before any response byte.
    stale_retry: bool,
    tried: Vec<usize>,
    /// What a connect failure answers: `503` (Envoy's router), or `504` (Envoy's old
    /// WebSocket mode, which the legacy mode keeps).
    connect_failed: StatusCode,
}

impl Attempts {
    /// Attempts under `policy`, all within `timeout`.
    pub(crate) fn new(timeout: Option<Duration>, policy: RetryPolicy) -> Self {
        Self {
            policy,
            retries: policy.num_retries,
            deadline: timeout.map(|t| Instant::now() + t),
            stale_retry: false,
            tried: Vec::new(),
            connect_failed: StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A connect failure answers `status`.
    pub(crate) fn connect_failed(mut self, status: StatusCode) -> Self {
        self.connect_failed = status;
        self
    }

    /// A request that may be sent once more after a reset, whatever the policy (an
    /// idempotent one without a body, on a pooled connection).
    pub(crate) fn stale_retry(mut self, on: bool) -> Self {
        self.stale_retry = on;
        self
    }

    /// The status and message for a failure.
    pub(crate) fn status(&self, failure: &Failure) -> (StatusCode, &'static str) {
        failure.status(self.connect_failed)
    }

    /// Whether a policy would send a request that reached an upstream once more: only then
    /// does a caller keep a copy of its head.
    pub(crate) fn may_resend(&self) -> bool {
        let on = self.policy.retry_on;
        self.retries > 0 && (on.reset() || on.server_error || on.gateway_error)
    }

    /// Tries endpoints until one answers in a way the policy doesn't retry, or no try is
    /// left; `sender` makes each attempt. It takes the request body out of the slot it is
    /// given when it sends it, so a body is sent once: a failure before it was taken (a
    /// dedicated connection that didn't connect) is retried, one after it only when the body
    /// was empty.
    pub(crate) async fn run<S: Sender>(
        &mut self,
        cluster: &Cluster,
        body: Body,
        sender: &mut S,
    ) -> Result<Answer<S::Answer>, Failure> {
        let empty = http_body::Body::is_end_stream(&body);
        let mut body = Some(body);
        let mut last = None;
        loop {
            let again = || S::REPEATS_ENDPOINTS.then(|| cluster.choose(&[])).flatten();
            let Some((i, endpoint, active)) = cluster.choose(&self.tried).or_else(again) else {
                return Err(last.unwrap_or(Failure::NoEndpoint));
            };
            self.tried.push(i);
            if body.is_none() {
                body = Some(Body::empty());
            }
            let result = sender.send(&endpoint, self.per_try(), &mut body).await;
            let sendable = empty || body.is_some();
            let outcome = match &result {
                Ok(a) if matches!(a.status().as_u16(), 502..=504) => Outcome::GatewayFailure,
                Ok(_) => Outcome::Success,
                Err(failure) => failure.outcome(),
            };
            cluster.report(&active, &endpoint, outcome);
            match result {
                Ok(answer) if !(sendable && self.again_after(answer.status())) => {
                    return Ok(Answer {
                        answer,
                        endpoint,
                        active,
                    });
                }
                Ok(answer) => {
                    tracing::debug!(status = %answer.status(), cluster = cluster.name(), "retrying after the upstream's answer");
                }
                Err(failure) => {
                    let retried = sendable && self.again(&failure);
                    tracing::debug!(error = %failure, cluster = cluster.name(), endpoint = endpoint.address(), retried, "upstream attempt failed");
                    if !retried {
                        return Err(failure);
                    }
                    last = Some(failure);
                }
            }
        }
    }

    /// This attempt's time: the per-try timeout, within what is left of the route's.
    fn per_try(&self) -> Option<Duration> {
        let left = self.deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match (left, self.policy.per_try_timeout) {
            (Some(left), Some(per_try)) => Some(left.min(per_try)),
            (left, per_try) => left.or(per_try),
        }
    }

    fn time_left(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d)
    }

    /// Whether to try again after `failure` (using up a retry).
    fn again(&mut self, failure: &Failure) -> bool {
        let on = self.policy.retry_on;
        let wanted = match failure {
            Failure::Connect(_) => on.connect_failure(),
            Failure::Reset(_) | Failure::Timeout => on.reset(),
            Failure::NoEndpoint | Failure::NotHttp11Switch | Failure::NoExtendedConnect => return false,
        };
        if wanted && self.retries > 0 && self.time_left() {
            self.retries -= 1;
            return true;
        }
        if matches!(failure, Failure::Reset(_)) && std::mem::take(&mut self.stale_retry) {
            return self.time_left();
        }
        false
    }

    /// Whether to try again after an answer with `status` (using up a retry).
    fn again_after(&mut self, status: StatusCode) -> bool {
        if self.policy.retry_on.status(status) && self.retries > 0 && self.time_left() {
            self.retries -= 1;
            return true;
        }
        false
    }
}

/// Whether `e` is a pooled request's connect failure (a TLS session the endpoint refused on
/// its first read included), as the pool reports it.
pub(crate) fn pooled_connect_failure(
    cluster: &Cluster,
    endpoint: &Endpoint,
    e: &hyper_util::client::legacy::Error,
) -> Option<ConnectError> {
    if let Some(refused) = crate::cluster::refused_session(cluster.name(), endpoint.address(), e) {
        return Some(ConnectError::Tls(refused));
    }
    e.is_connect()
        .then(|| ConnectError::Io(std::io::Error::other(e.to_string())))
}
