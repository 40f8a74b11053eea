//! [`Forward`](crate::Forward): the terminal service that sends requests upstream.

pub(crate) mod attempt;
mod multiplexed;
mod pre_body;
mod raw_exchange;
mod terminate;
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

use crate::body::{Body, BoxError, Holding};
use crate::cluster::{Active, Cluster, ConnectError, Endpoint};
use crate::connect::ConnectConfig;
use crate::ext::{AutoHostRewrite, ResponseTimeout, Upgrading, UpstreamAddr};
use crate::reply::Then;
use crate::retry::RetryPolicy;
use crate::websocket::SEC_WEBSOCKET_KEY;
use crate::{hop, reply};
use attempt::{Attempts, Failure};
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
    let mut attempts = Attempts::new(timeout, retry);
    let post_tunnel = req.method() == http::Method::POST
        && req
            .extensions()
            .get::<ConnectConfig>()
            .is_some_and(|c| c.allow_post);
    match req.extensions_mut().remove::<Upgrading>() {
        Some(upgrading) => upgrade(&cluster, req, upgrading, attempts).await,
        None if post_tunnel => {
            Box::pin(terminate::post(
                &cluster,
                &mut attempts,
                Body::new(req.into_body()),
            ))
            .await
        }
        None => plain(&cluster, req, attempts).await,
    }
}

/// A plain request, through the cluster's pool, retried as its policy says on endpoints not
/// tried yet. A request with a body is sent once: the body can't be replayed.
async fn plain<B>(cluster: &Cluster, req: Request<B>, attempts: Attempts) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_11;
    let body = Body::new(body);
    let stale_retry = http_body::Body::is_end_stream(&body) && parts.method.is_idempotent();
    let mut attempts = attempts.stale_retry(stale_retry);
    let sent = attempts.run(cluster, body, &mut Pooled { cluster, parts }).await;
    match sent {
        Ok(attempt::Answer {
            answer,
            endpoint,
            active,
        }) => relayed(answer, &endpoint, active),
        Err(failure) => {
            let (status, message) = attempts.status(&failure);
            reply::local(status, message, Then::KeepAlive)
        }
    }
}

/// A plain request's attempts, through the cluster's pool.
struct Pooled<'a> {
    cluster: &'a Cluster,
    parts: http::request::Parts,
}

impl attempt::Sender for Pooled<'_> {
    type Answer = Response<hyper::body::Incoming>;
    const REPEATS_ENDPOINTS: bool = true;

    async fn send(
        &mut self,
        endpoint: &Endpoint,
        timeout: Option<Duration>,
        body: &mut Option<Body>,
    ) -> Result<Self::Answer, Failure> {
        let body = body.take().unwrap_or_default();
        let req = upstream_request(&self.parts, endpoint, body).map_err(|e| {
            Failure::Connect(ConnectError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad upstream address: {e}"),
            )))
        })?;
        let cluster = self.cluster;
        match with_timeout(timeout, cluster.client().request(req)).await {
            Some(Ok(res)) => Ok(res),
            Some(Err(e)) => Err(match attempt::pooled_connect_failure(cluster, endpoint, &e) {
                Some(connect) => Failure::Connect(connect),
                None => Failure::Reset(e.into()),
            }),
            None => Err(Failure::Timeout),
        }
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
pub(crate) fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
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

async fn upgrade<B>(
    cluster: &Cluster,
    req: Request<B>,
    upgrading: Upgrading,
    mut attempts: Attempts,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let ty = upgrading.ty;
    let (mut parts, body) = req.into_parts();
    // Untouched by any layer, the request body is still Switchback's own: its HTTP part goes
    // upstream as the request body, and the connections may be joined. A layer's body is sent
    // up to the end of its HTTP part and comes back to carry the tunnel bytes.
    let mut client = Body::new(body);
    let (upstream_body, client, client_untouched) = match client.take_pre_upgrade() {
        Some(pre) => (pre, client, true),
        None if upgrading.has_body => {
            let (tx, rx) = oneshot::channel();
            let pre = PreBody::new(client, upgrading.pre_body_end, tx);
            (Body::new(pre), Body::returning(rx), false)
        }
        None => (Body::empty(), client, false),
    };

    let tunnel = upstream::Tunnel {
        ty: &ty,
        client,
        client_untouched,
    };
    if ty.is_connect() {
        if parts.extensions.get::<ConnectConfig>().is_some() {
            return Box::pin(terminate::connect(cluster, &mut attempts, tunnel)).await;
        }
        // Proxy mode: the CONNECT goes on as it came, to a cluster that is a proxy itself.
        return switch(cluster, &mut attempts, parts, upstream_body, tunnel).await;
    }
    if parts.version == Version::HTTP_2 {
        h2_to_h1_upgrade(&mut parts, &ty);
    } else if ty.is_websocket() && !parts.headers.contains_key(SEC_WEBSOCKET_KEY) {
        // With no key of the client's, the upstream's `101` would prove nothing: a key of the
        // proxy's own makes it show it read this handshake (`verify` checks the answer).
        parts
            .headers
            .insert(SEC_WEBSOCKET_KEY, crate::websocket::new_key());
    }
    switch(cluster, &mut attempts, parts, upstream_body, tunnel).await
}

/// The upgrade's exchange with the cluster: an HTTP/2 stream or an HTTP/1.1 connection. The
/// first is boxed, as the paths most upgrades don't take are: a future is as large as its
/// largest path, and every upgrade's future is moved (copied whole) as it is awaited.
async fn switch(
    cluster: &Cluster,
    attempts: &mut Attempts,
    mut parts: http::request::Parts,
    upstream_body: Body,
    tunnel: upstream::Tunnel<'_>,
) -> Response<Body> {
    if cluster.is_http2() {
        return Box::pin(multiplexed::switch(
            cluster,
            attempts,
            parts,
            upstream_body,
            tunnel,
        ))
        .await;
    }
    parts.version = Version::HTTP_11;
    upstream::switch(cluster, attempts, parts, upstream_body, tunnel).await
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
pub(crate) fn h2_to_h1_upgrade(parts: &mut http::request::Parts, ty: &crate::detect::UpgradeType) {
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
