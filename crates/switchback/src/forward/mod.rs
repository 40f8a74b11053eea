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

use crate::cluster::{Cluster, Endpoint};
use crate::ext::{AutoHostRewrite, ResponseTimeout, Upgrading, UpstreamAddr};
use crate::handoff::Handoff;
use crate::metrics::HandshakeFailure;
use crate::reply::Then;
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
}

impl Forward {
    /// Forwards to `cluster` unless a request names its own. The response timeout is 15 s, as
    /// Envoy's default route timeout.
    pub fn new(cluster: Cluster) -> Self {
        Self::build(Some(cluster), Some(Duration::from_secs(15)))
    }

    /// Forwards only requests that carry a [`Cluster`] extension (set by route matching);
    /// others get `503`.
    pub fn routed() -> Self {
        Self::build(None, Some(Duration::from_secs(15)))
    }

    fn build(cluster: Option<Cluster>, response_timeout: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                cluster,
                response_timeout,
            }),
        }
    }

    /// How long the upstream may take to answer with its response head (15 s by default).
    /// On expiry the client gets `504`.
    pub fn response_timeout(self, timeout: Duration) -> Self {
        Self::build(self.inner.cluster.clone(), Some(timeout))
    }

    /// No limit on how long the upstream may take to answer.
    pub fn no_response_timeout(self) -> Self {
        Self::build(self.inner.cluster.clone(), None)
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
    match req.extensions_mut().remove::<Upgrading>() {
        Some(upgrading) => upgrade(&cluster, req, upgrading, timeout).await,
        None => plain(&cluster, req, timeout).await,
    }
}

/// A plain request, through the cluster's pool.
async fn plain<B>(cluster: &Cluster, req: Request<B>, timeout: Option<Duration>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(endpoint) = cluster.pick().cloned() else {
        return reply::local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            Then::KeepAlive,
        );
    };
    let (mut parts, body) = req.into_parts();
    upstream_host(&mut parts, &endpoint);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(endpoint.address())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => return reply::local(StatusCode::BAD_GATEWAY, "bad upstream address", Then::KeepAlive),
    };
    parts.version = Version::HTTP_11;
    let send = cluster
        .client()
        .request(Request::from_parts(parts, Body::new(body)));
    let res = match with_timeout(timeout, send).await {
        None => {
            return reply::local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream response timeout",
                Then::KeepAlive,
            );
        }
        Some(Err(e)) if e.is_connect() => {
            tracing::debug!(error = %e, cluster = cluster.name(), "upstream connect failed");
            return reply::local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error",
                Then::KeepAlive,
            );
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, cluster = cluster.name(), "upstream request failed");
            return reply::local(
                StatusCode::BAD_GATEWAY,
                "upstream reset before response",
                Then::KeepAlive,
            );
        }
        Some(Ok(res)) => res,
    };
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
    Response::from_parts(parts, Body::new(body))
}

async fn upgrade<B>(
    cluster: &Cluster,
    req: Request<B>,
    upgrading: Upgrading,
    timeout: Option<Duration>,
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
    }
    let answer = match upstream::exchange(cluster, 1, parts, upstream_body, timeout).await {
        Ok(answer) => answer,
        Err(failure) => {
            tracing::debug!(error = %failure, cluster = cluster.name(), "upgrade: no answer from upstream");
            let (reason, status, message) = failure.reply(StatusCode::SERVICE_UNAVAILABLE);
            return fail(reason, status, message);
        }
    };
    if answer.res.status() != StatusCode::SWITCHING_PROTOCOLS {
        return upstream::relay_refusal(answer, &ty);
    }
    let upstream::Answer {
        res,
        endpoint,
        request_headers,
        upgraded,
        ..
    } = answer;
    if let Err(bad) = verify::verify(&request_headers, res.headers(), ty.is_websocket()) {
        tracing::info!(
            endpoint = endpoint.address(),
            reason = bad.as_str(),
            "upgrade: refusing the upstream's 101"
        );
        return fail(HandshakeFailure::Bad101, StatusCode::BAD_GATEWAY, bad.as_str());
    }
    let upgraded = match upstream::switched_connection(upgraded, &ty) {
        Ok(u) => u,
        Err(res) => return *res,
    };
    let (mut parts, _) = res.into_parts();
    upstream::switched_head(&mut parts, &endpoint);

    // The tunnel is the router's to open: hand the upstream half back with the `101`.
    let handoff = Handoff::new(upgraded, client, client_untouched);
    parts.extensions.insert(handoff.clone());
    Response::from_parts(parts, Body::upstream_tunnel(handoff))
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
        parts.headers.insert("sec-websocket-key", key);
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
