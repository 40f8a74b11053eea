//! [`Forward`](crate::Forward): the terminal service that sends requests upstream.

mod pre_body;
pub(crate) mod upstream;
pub(crate) mod verify;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use tokio::sync::oneshot;
use tower::Service;

use crate::body::Holding;
use crate::cluster::{Active, Cluster, Endpoint, Outcome};
use crate::ext::{AutoHostRewrite, ResponseTimeout, Upgrading, UpstreamAddr};
use crate::metrics::HandshakeFailure;
use crate::reply::Then;
use crate::retry::RetryPolicy;
use crate::websocket::SEC_WEBSOCKET_KEY;
use crate::{Body, BoxError, hop, reply};
use pre_body::PreBody;

/// The terminal "router" service: sends requests to an upstream cluster (the request's own,
/// from its extensions, or the default).
///
/// Plain requests go through the cluster's connection pool. An upgrade uses a dedicated
/// connection, never pooled: Forward writes the request head (and any body the request
/// declared), reads the answer, and opens a tunnel only on a `101` that names a protocol the
/// client offered (the `verify` module). Anything else is relayed as an ordinary response; the
/// client's bytes after its request never reach the upstream.
///
/// ```no_run
/// use std::time::Duration;
/// use switchback::{Cluster, Endpoint, Forward, UpgradeRouterLayer};
/// use tower::ServiceBuilder;
///
/// let forward = Forward::new(Cluster::new("echo", [Endpoint::new("127.0.0.1:9001")]))
///     .response_timeout(Duration::from_secs(10));
/// let stack = ServiceBuilder::new()
///     .layer(UpgradeRouterLayer::builder().upgrade("websocket").build().unwrap())
///     .service(forward);
/// # let _ = stack;
/// ```
#[derive(Clone)]
pub struct Forward {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Option<Cluster>,
    response_timeout: Option<Duration>,
    retry: RetryPolicy,
}

impl Forward {
    /// Forwards to `cluster` unless a request names its own. The response timeout is 15 s, as
    /// Envoy's default route timeout.
    pub fn new(cluster: Cluster) -> Self {
        Self::build(
            Some(cluster),
            Some(Duration::from_secs(15)),
            RetryPolicy::default(),
        )
    }

    /// Forwards only requests that carry a [`Cluster`] extension (set by route matching);
    /// others get `503`.
    pub fn routed() -> Self {
        Self::build(None, Some(Duration::from_secs(15)), RetryPolicy::default())
    }

    fn build(cluster: Option<Cluster>, response_timeout: Option<Duration>, retry: RetryPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                cluster,
                response_timeout,
                retry,
            }),
        }
    }

    /// How long the upstream may take to answer with its response head (15 s by default),
    /// retries included. On expiry the client gets `504`.
    pub fn response_timeout(self, timeout: Duration) -> Self {
        Self::build(self.inner.cluster.clone(), Some(timeout), self.inner.retry)
    }

    /// No limit on how long the upstream may take to answer.
    pub fn no_response_timeout(self) -> Self {
        Self::build(self.inner.cluster.clone(), None, self.inner.retry)
    }

    /// The retry policy of requests that carry none of their own (default: connect failures,
    /// twice, each time on another endpoint).
    pub fn retry_policy(self, policy: RetryPolicy) -> Self {
        Self::build(self.inner.cluster.clone(), self.inner.response_timeout, policy)
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("cluster", &self.inner.cluster)
            .field("response_timeout", &self.inner.response_timeout)
            .finish()
    }
}

impl<B> Service<Request<B>> for Forward
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        ResponseFuture {
            inner: Box::pin(async move { Ok(forward(&inner, req).await) }),
        }
    }
}

/// The future of [`Forward`]'s response.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>,
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

async fn forward<B>(inner: &Inner, mut req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let cluster = req
        .extensions()
        .get::<Cluster>()
        .cloned()
        .or_else(|| inner.cluster.clone());
    let Some(cluster) = cluster else {
        return reply::local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no cluster for this request",
            Then::KeepAlive,
        );
    };
    let timeout = req
        .extensions()
        .get::<ResponseTimeout>()
        .map_or(inner.response_timeout, |t| t.0);
    let retry = req
        .extensions()
        .get::<RetryPolicy>()
        .copied()
        .unwrap_or(inner.retry);
    let attempt = Attempts::new(timeout, retry);
    match req.extensions_mut().remove::<Upgrading>() {
        Some(upgrading) => upgrade(&cluster, req, upgrading, attempt).await,
        None => plain(&cluster, req, attempt).await,
    }
}

/// A plain request, through the cluster's pool, retried as its policy says on endpoints not
/// tried yet. A request with a body is sent once: the body can't be replayed.
async fn plain<B>(cluster: &Cluster, req: Request<B>, mut attempt: Attempts) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_11;
    let replayable = body.is_end_stream();
    // A reused pooled connection the upstream closed meanwhile fails before any response
    // byte: an idempotent request without a body is tried once more, whatever the policy.
    attempt.stale_retry = replayable && parts.method.is_idempotent();
    let mut body = Some(Body::new(body));
    let mut tried = Vec::new();
    loop {
        let Some((i, endpoint, active)) = cluster.choose(&tried).or_else(|| cluster.choose(&[])) else {
            return reply::local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                Then::KeepAlive,
            );
        };
        tried.push(i);
        let Ok(req) = upstream_request(&parts, &endpoint, body.take().unwrap_or_default()) else {
            return reply::local(StatusCode::BAD_GATEWAY, "bad upstream address", Then::KeepAlive);
        };
        let sent = with_timeout(attempt.per_try(), cluster.client().request(req)).await;
        let failure = match sent {
            Some(Ok(res)) => {
                let gateway = matches!(res.status().as_u16(), 502..=504);
                cluster.report(
                    &active,
                    &endpoint,
                    if gateway {
                        Outcome::GatewayFailure
                    } else {
                        Outcome::Success
                    },
                );
                if replayable && attempt.retry_status(res.status()) {
                    continue;
                }
                return relayed(res, &endpoint, active);
            }
            Some(Err(e))
                if e.is_connect()
                    || crate::cluster::refused_session(cluster.name(), endpoint.address(), &e).is_some() =>
            {
                tracing::debug!(error = %e, cluster = cluster.name(), "upstream connect failed");
                cluster.report(&active, &endpoint, Outcome::ConnectFailure);
                Failed::Connect
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, cluster = cluster.name(), "upstream request failed");
                cluster.report(&active, &endpoint, Outcome::GatewayFailure);
                Failed::Reset
            }
            None => {
                cluster.report(&active, &endpoint, Outcome::GatewayFailure);
                Failed::Timeout
            }
        };
        if replayable && attempt.retry(failure) {
            continue;
        }
        let (status, message) = match failure {
            Failed::Connect => (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error"),
            Failed::Reset => (StatusCode::BAD_GATEWAY, "upstream reset before response"),
            Failed::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream response timeout"),
        };
        return reply::local(status, message, Then::KeepAlive);
    }
}

/// The request to send to `endpoint`: absolute form for the pool, HTTP/1.1.
fn upstream_request(
    parts: &http::request::Parts,
    endpoint: &Endpoint,
    body: Body,
) -> Result<Request<Body>, http::Error> {
    let mut parts = clone_parts(parts);
    upstream_host(&mut parts, endpoint);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(endpoint.address())
        .path_and_query(path)
        .build()?;
    Ok(Request::from_parts(parts, body))
}

/// A request head to send again.
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req.into_parts().0
}

/// The upstream's answer to a plain request, as the client gets it.
fn relayed(res: Response<hyper::body::Incoming>, endpoint: &Endpoint, active: Active) -> Response<Body> {
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        return reply::local(
            StatusCode::BAD_GATEWAY,
            "upstream switched protocols unasked",
            Then::KeepAlive,
        );
    }
    let (mut parts, body) = res.into_parts();
    hop::strip(&mut parts.headers);
    parts
        .extensions
        .insert(UpstreamAddr(endpoint.address().to_owned()));
    // The endpoint counts the request as active until its response body is sent.
    Response::from_parts(parts, Body::new(Holding::new(body, active)))
}

/// How an attempt failed before any response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    Connect,
    Reset,
    Timeout,
}

/// The retries left to a request and its time.
#[derive(Debug)]
struct Attempts {
    policy: RetryPolicy,
    retries: u32,
    /// When the route's timeout ends, for all attempts together.
    deadline: Option<tokio::time::Instant>,
    /// One retry of a reset, outside the policy (see [`plain`]).
    stale_retry: bool,
}

impl Attempts {
    fn new(timeout: Option<Duration>, policy: RetryPolicy) -> Self {
        Self {
            policy,
            retries: policy.num_retries,
            deadline: timeout.map(|t| tokio::time::Instant::now() + t),
            stale_retry: false,
        }
    }

    /// This attempt's time: the per-try timeout, within what is left of the route's.
    fn per_try(&self) -> Option<Duration> {
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        match (left, self.policy.per_try_timeout) {
            (Some(left), Some(per_try)) => Some(left.min(per_try)),
            (left, per_try) => left.or(per_try),
        }
    }

    fn time_left(&self) -> bool {
        self.deadline.is_none_or(|d| tokio::time::Instant::now() < d)
    }

    /// Whether to try again after `failure` (using up a retry).
    fn retry(&mut self, failure: Failed) -> bool {
        let on = self.policy.retry_on;
        let wanted = match failure {
            Failed::Connect => on.connect_failure(),
            Failed::Reset | Failed::Timeout => on.reset(),
        };
        if wanted && self.retries > 0 && self.time_left() {
            self.retries -= 1;
            return true;
        }
        if failure == Failed::Reset && std::mem::take(&mut self.stale_retry) {
            return self.time_left();
        }
        false
    }

    /// Whether to try again after an answer with `status` (using up a retry).
    fn retry_status(&mut self, status: StatusCode) -> bool {
        if self.policy.retry_on.status(status) && self.retries > 0 && self.time_left() {
            self.retries -= 1;
            return true;
        }
        false
    }

    /// Whether a request that reached an upstream may be sent again.
    fn may_resend(&self) -> bool {
        let on = self.policy.retry_on;
        self.retries > 0 && (on.reset() || on.server_error || on.gateway_error)
    }

    /// How many endpoints a connect may try: this one, and the retries left if connect
    /// failures are retried (those use the retries up).
    fn connects(&self) -> usize {
        if self.policy.retry_on.connect_failure() {
            self.retries as usize + 1
        } else {
            1
        }
    }
}

async fn upgrade<B>(
    cluster: &Cluster,
    req: Request<B>,
    upgrading: Upgrading,
    mut attempt: Attempts,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let ty = upgrading.ty.clone();
    let fail = |why, status, message: &str| upstream::fail(&ty, why, status, message);

    let (mut parts, body) = req.into_parts();
    // Untouched by any layer, the request body is still Switchback's own: its HTTP part goes
    // upstream as the request body, and the connections may be joined. A layer's body is sent
    // up to the end of its HTTP part and comes back to carry the tunnel bytes.
    let mut client = Body::new(body);
    let (upstream_body, client, client_untouched) = match client.take_pre_upgrade() {
        Some(pre) => (pre, client, true),
        None if upgrading.has_body => {
            let (tx, rx) = oneshot::channel();
            let pre = PreBody::new(client, upgrading.pre_body_end.clone(), tx);
            (Body::new(pre), Body::returning(rx), false)
        }
        None => (Body::empty(), client, false),
    };

    if parts.version == Version::HTTP_2 {
        h2_to_h1_upgrade(&mut parts, &ty);
    } else if ty.is_websocket() && !parts.headers.contains_key(SEC_WEBSOCKET_KEY) {
        // With no key of the client's, the upstream's `101` would prove nothing: a key of the
        // proxy's own makes it show it read this handshake (`verify` checks the answer).
        parts
            .headers
            .insert(SEC_WEBSOCKET_KEY, crate::websocket::new_key());
    }
    // Retried only before the 101, so before any tunnel byte; after a connection that got
    // the request, only when there is no body to replay.
    let replayable = !upgrading.has_body;
    // Connect failures are retried before the head is sent; only a policy that retries
    // after it needs a copy of the head (most handshakes don't).
    let resend = replayable && attempt.may_resend();
    let mut parts = Some(parts);
    let mut upstream_body = Some(upstream_body);
    let mut tried = Vec::new();
    let answer = loop {
        let head = match &parts {
            Some(p) if resend => clone_parts(p),
            _ => match parts.take() {
                Some(p) => p,
                None => {
                    return fail(
                        HandshakeFailure::Refused,
                        StatusCode::BAD_GATEWAY,
                        "no retry left",
                    );
                }
            },
        };
        let body = upstream_body.take().unwrap_or_default();
        let before = tried.len();
        let per_try = attempt.per_try();
        let connects = attempt.connects();
        let result = upstream::exchange(cluster, &mut tried, connects, head, body, per_try).await;
        // Each endpoint tried after the first used up a retry.
        let extra = u32::try_from((tried.len() - before).saturating_sub(1)).unwrap_or(u32::MAX);
        attempt.retries = attempt.retries.saturating_sub(extra);
        let failure = match result {
            Ok(answer)
                if answer.res.status() != StatusCode::SWITCHING_PROTOCOLS
                    && replayable
                    && attempt.retry_status(answer.res.status()) =>
            {
                tracing::debug!(status = %answer.res.status(), "upgrade: retrying after the upstream's answer");
                continue;
            }
            Ok(answer) => break answer,
            Err(failure) => failure,
        };
        let retried = match &failure {
            upstream::Failure::Reset(_) | upstream::Failure::Handshake(_) => {
                replayable && attempt.retry(Failed::Reset)
            }
            upstream::Failure::Timeout => replayable && attempt.retry(Failed::Timeout),
            _ => false,
        };
        tracing::debug!(error = %failure, cluster = cluster.name(), retried, "upgrade: no answer from upstream");
        if !retried {
            let (reason, status, message) = failure.reply(StatusCode::SERVICE_UNAVAILABLE);
            return fail(reason, status, message);
        }
    };
    upstream::answer_upgrade(answer, &ty, client, client_untouched)
}

/// The `Host` the upstream gets: the client's, an HTTP/2 request's authority, or the route's
/// rewrite; failing all (an HTTP/1.0 client may send none) the endpoint's address, as hyper's
/// client would write for a plain request, so that the HTTP/1.1 head always has one.
pub(crate) fn upstream_host(parts: &mut http::request::Parts, endpoint: &Endpoint) {
    keep_authority_as_host(parts);
    auto_host_rewrite(parts, endpoint);
    if !parts.headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(endpoint.address())
    {
        parts.headers.insert(header::HOST, host);
    }
}

/// `Host` becomes the endpoint's hostname when the route asked for it ([`AutoHostRewrite`]).
fn auto_host_rewrite(parts: &mut http::request::Parts, endpoint: &Endpoint) {
    if parts.extensions.get::<AutoHostRewrite>().is_some()
        && let Ok(host) = HeaderValue::from_str(endpoint.host())
    {
        parts.headers.insert(header::HOST, host);
    }
}

/// Turns an HTTP/2 extended CONNECT (RFC 8441) into the HTTP/1.1 upgrade the upstream
/// expects: `GET` with the upgrade pair and, for WebSocket, a fresh `Sec-WebSocket-Key`, whose
/// answer [`verify`] then checks like any client's.
pub(crate) fn h2_to_h1_upgrade(parts: &mut http::request::Parts, ty: &crate::UpgradeType) {
    parts.method = http::Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
    if let Ok(upgrade) = HeaderValue::from_str(ty.as_str()) {
        hop::strip_keep_upgrade(&mut parts.headers, upgrade);
    }
    if ty.is_websocket() {
        let key = crate::websocket::new_key();
        parts.headers.insert(SEC_WEBSOCKET_KEY, key);
    }
}

/// HTTP/2 requests carry the authority in the URI; HTTP/1.1 upstreams want it in `Host`.
fn keep_authority_as_host(parts: &mut http::request::Parts) {
    if parts.headers.contains_key(header::HOST) {
        return;
    }
    if let Some(value) = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, value);
    }
}

/// The target as the upstream gets it: path and query, `/` for none. An absolute-form target
/// may have an empty path (`http://a.example#x`); a `Uri` made of that empty path alone would
/// print as an empty target, so the path is taken as text (where it reads `/`).
pub(crate) fn origin_form(uri: &Uri) -> Uri {
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    Uri::from(PathAndQuery::try_from(path).unwrap_or_else(|_| PathAndQuery::from_static("/")))
}

pub(crate) async fn with_timeout<F: Future>(timeout: Option<Duration>, f: F) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, f).await.ok(),
        None => Some(f.await),
    }
}
