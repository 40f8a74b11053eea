//! An upgrade's attempts on dedicated upstream connections, shared by
//! [`Forward`](super::Forward) and the legacy WebSocket mode: connect, write the head, read
//! the answer, and turn it into the client's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::attempt::{Answer, Answered, Attempts, Failure, Sender};
use super::raw_exchange::Raw;
use super::{origin_form, upstream_host, verify, with_timeout};
use crate::body::Body;
use crate::cluster::{Carried, Cluster, ConnectError, Endpoint};
use crate::detect::UpgradeType;
use crate::ext::UpstreamAddr;
use crate::handoff::{Handoff, Switch, Switching, UpstreamIo};
use crate::hop;
use crate::metrics::HandshakeFailure;
use crate::reply::{self, Then};
use crate::tls::UpstreamStream;

/// The upstream's answer to an upgrade attempt, on its dedicated connection.
pub(crate) struct Exchanged {
    head: http::response::Parts,
    /// The answer's body, read by hyper's client; `None` for a `101` read without it.
    body: Option<Incoming>,
    /// The head as sent, for checking a `101` against it.
    request_headers: HeaderMap,
    /// For a `101`: the upstream's upgraded connection (the bytes that came with the `101`
    /// included), or its switch still under way while the request body is sent.
    upgraded: Option<hyper::Result<Switch>>,
    /// For anything else: the connection, still to be driven while the body is read.
    conn: Option<Pin<Box<Conn>>>,
}

impl Answered for Exchanged {
    fn status(&self) -> StatusCode {
        self.head.status
    }
}

/// An upgrade attempt's connection to the upstream, driven by whoever waits on it.
type Conn = dyn Future<Output = hyper::Result<()>> + Send;

/// What the tunnel needs from the upgrade that asks: its type, and the body that will carry
/// the client's tunnel bytes (`client_untouched`: no layer wrapped it).
pub(crate) struct Tunnel<'a> {
    pub(crate) ty: &'a UpgradeType,
    pub(crate) client: Body,
    pub(crate) client_untouched: bool,
}

/// An upgrade's way upstream, for [`Forward`](super::Forward) and the legacy mode alike: each
/// attempt connects to an endpoint afresh (a connection no pool will see), sends the head as
/// HTTP/1.1 in origin form with `body`, and reads the answer; [`Attempts`] decides which
/// endpoint and whether to try again (never after a `101`). The answer becomes the client's
/// ([`answer_upgrade`]).
pub(crate) async fn switch(
    cluster: &Cluster,
    attempts: &mut Attempts,
    parts: http::request::Parts,
    body: Body,
    tunnel: Tunnel<'_>,
) -> Response<Body> {
    // Only a policy that sends the head again after it reached an upstream needs a copy of
    // it (most handshakes don't); a connect failure is retried before the head is taken.
    let resend = attempts.may_resend() && http_body::Body::is_end_stream(&body);
    let mut dedicated = Dedicated {
        cluster,
        parts: Some(parts),
        resend,
    };
    let answered = attempts.run(cluster, body, &mut dedicated).await;
    match answered {
        Ok(answer) => answer_upgrade(answer, tunnel),
        Err(failure) => {
            let (status, message) = attempts.status(&failure);
            fail(tunnel.ty, failure.reason(), status, message)
        }
    }
}

/// An upgrade's attempts, each on a connection of its own.
struct Dedicated<'a> {
    cluster: &'a Cluster,
    /// The head, kept for another attempt only when `resend`.
    parts: Option<http::request::Parts>,
    resend: bool,
}

impl Sender for Dedicated<'_> {
    type Answer = Exchanged;
    const REPEATS_ENDPOINTS: bool = false;

    async fn send(
        &mut self,
        endpoint: &Endpoint,
        timeout: Option<Duration>,
        body: &mut Option<Body>,
    ) -> Result<Exchanged, Failure> {
        let cluster = self.cluster;
        let stream = cluster.connect(endpoint).await.map_err(Failure::Connect)?;
        let head = match &self.parts {
            Some(p) if self.resend => super::clone_parts(p),
            _ => self
                .parts
                .take()
                .ok_or_else(|| Failure::Reset("the head was sent already".into()))?,
        };
        let body = body.take().unwrap_or_default();
        match send(stream, endpoint, head, body, timeout).await {
            // A TLS 1.3 endpoint that refuses our certificate says so on the first read: a
            // connect failure, as a refusal during the handshake is.
            Err(Failure::Reset(e)) => {
                match crate::cluster::refused_session(cluster.name(), endpoint.address(), &*e) {
                    Some(refused) => Err(Failure::Connect(ConnectError::Tls(refused))),
                    None => Err(Failure::Reset(e)),
                }
            }
            answer => answer,
        }
    }
}

/// One attempt on a connected endpoint. A plain connection stays a bare `TcpStream` under
/// hyper, so that its tunnel can be spliced.
async fn send(
    stream: UpstreamStream,
    endpoint: &Endpoint,
    parts: http::request::Parts,
    body: Body,
    timeout: Option<Duration>,
) -> Result<Exchanged, Failure> {
    match stream {
        // Nearly every upgrade: no body, a plain connection. Its exchange needs no HTTP
        // client, unless the answer is not a `101`.
        UpstreamStream::Plain(tcp) if http_body::Body::is_end_stream(&body) => {
            let mut parts = parts;
            upgrade_head(&mut parts, endpoint, false);
            let exchange = super::raw_exchange::exchange(tcp, &parts);
            match with_timeout(timeout, exchange).await {
                None => Err(Failure::Timeout),
                Some(Err(e)) => Err(Failure::Reset(e.into())),
                Some(Ok(Raw::Switched { head, io })) => Ok(Exchanged {
                    head,
                    body: None,
                    request_headers: parts.headers,
                    upgraded: Some(Ok(Switch::Done(UpstreamIo::Spliceable(io)))),
                    conn: None,
                }),
                // Anything else is hyper's to read, from the bytes read so far on. The head
                // went already: what hyper writes of it is not sent again.
                Some(Ok(Raw::Other(replay))) => {
                    Box::pin(send_on(replay, endpoint, parts, body, timeout)).await
                }
            }
        }
        // Boxed, as the refusal above: hyper's client is large, and the common path's future
        // would otherwise be as large (and copied whole at each `await`).
        UpstreamStream::Plain(tcp) => Box::pin(send_on(tcp, endpoint, parts, body, timeout)).await,
        UpstreamStream::Tls(tls) => Box::pin(send_on(tls, endpoint, parts, body, timeout)).await,
    }
}

async fn send_on<I>(
    io: I,
    endpoint: &Endpoint,
    mut parts: http::request::Parts,
    body: Body,
    timeout: Option<Duration>,
) -> Result<Exchanged, Failure>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failure::Reset(e.into()))?;
    let connect = parts.method == http::Method::CONNECT;
    upgrade_head(&mut parts, endpoint, !http_body::Body::is_end_stream(&body));
    let request_headers = parts.headers.clone();

    // The connection is driven here, not on a task of its own: an upgrade's connection has
    // nothing left to do once the 101 is in, and a task per handshake costs a spawn and a
    // wake-up across tasks for every message.
    let mut conn: Option<Pin<Box<Conn>>> = Some(Box::pin(conn.with_upgrades()));
    let send = with_timeout(timeout, sender.send_request(Request::from_parts(parts, body)));
    tokio::pin!(send);
    let res = loop {
        let driving = async {
            match conn.as_mut() {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            res = &mut send => break res,
            ended = driving => ended,
        };
        // The connection ended first; `send` fails next with the reason.
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upgrade: upstream connection failed");
        }
        conn = None;
    };
    let mut res = match res {
        None => return Err(Failure::Timeout),
        Some(Err(e)) => return Err(Failure::Reset(e.into())),
        Some(Ok(res)) => res,
    };
    if res.status() == StatusCode::SWITCHING_PROTOCOLS && res.version() != Version::HTTP_11 {
        return Err(Failure::NotHttp11Switch);
    }
    if switches(connect, res.status()) {
        let upgrade = hyper::upgrade::on(&mut res);
        let conn = conn.take();
        let mut switching: Switching = Box::pin(async move {
            if let Some(c) = conn {
                let _ = c.await;
            }
            upgrade.await
        });
        // Without a request body still to send (nearly always), the connection has switched
        // already; otherwise the 101 goes on at once and the tunnel finishes the switch
        // (Envoy relays the 101 at once too).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let upgraded = match switching.as_mut().poll(&mut cx) {
            Poll::Ready(upgraded) => upgraded.map(|u| Switch::Done(UpstreamIo::Switched(TokioIo::new(u)))),
            Poll::Pending => Ok(Switch::Switching(switching)),
        };
        let (head, body) = res.into_parts();
        return Ok(Exchanged {
            head,
            body: Some(body),
            request_headers,
            upgraded: Some(upgraded),
            conn: None,
        });
    }
    // A refusal may have a body to stream: its body drives the connection (no task of its
    // own: only the tunnel and server modules start tasks).
    let (head, body) = res.into_parts();
    Ok(Exchanged {
        head,
        body: Some(body),
        request_headers,
        upgraded: None,
        conn,
    })
}

/// The head of an upgrade attempt as it goes to `endpoint`, from a request the router has
/// inspected: its `Host` ([`upstream_host`]), an origin-form target, HTTP/1.1, and the framing
/// of a body that is still to come (`body_pending`).
pub(crate) fn upgrade_head(parts: &mut http::request::Parts, endpoint: &Endpoint, body_pending: bool) {
    upstream_host(parts, endpoint);
    // A CONNECT keeps its authority-form target.
    if parts.method != http::Method::CONNECT {
        parts.uri = origin_form(&parts.uri);
    }
    parts.version = Version::HTTP_11;
    // A GET without framing headers goes out with no body at all (hyper's rule), and the
    // client's `Transfer-Encoding` was stripped as hop-by-hop: a body of unknown length is
    // re-framed as chunked, or it would be silently dropped.
    if body_pending && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        parts
            .headers
            .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
}

/// A failed upgrade attempt: counted, and answered with `Connection: close`.
pub(crate) fn fail(
    ty: &UpgradeType,
    why: HandshakeFailure,
    status: StatusCode,
    message: &str,
) -> Response<Body> {
    why.record(ty);
    reply::local(status, message, Then::Close)
}

/// Turns the upstream's answer into the client's: a `101` that [`verify`] accepts carries the
/// upstream's connection in a [`Handoff`] (with the tunnel's client body); a `101` it refuses,
/// or one whose connection is lost at once, is a `502`; anything else is relayed as a
/// refusal. The new-style and the legacy mode both end here, so neither can open a tunnel on a
/// `101` the other would refuse.
///
/// [`verify`]: super::verify::verify
fn answer_upgrade(answer: Answer<Exchanged>, tunnel: Tunnel<'_>) -> Response<Body> {
    let Answer {
        answer,
        endpoint,
        active,
    } = answer;
    let ty = tunnel.ty;
    let status = answer.head.status;
    if ty.is_connect() && status == StatusCode::SWITCHING_PROTOCOLS {
        let message = "the upstream answered a CONNECT with 101";
        return fail(ty, HandshakeFailure::Bad101, StatusCode::BAD_GATEWAY, message);
    }
    if !switches(ty.is_connect(), status) {
        return relay_refusal(answer, &endpoint, ty);
    }
    let Exchanged {
        head,
        request_headers,
        upgraded,
        ..
    } = answer;
    // A CONNECT's 2xx has no upgrade headers to check: the tunnel is what was asked for.
    let checked = match ty.is_connect() {
        true => Ok(()),
        false => verify::verify(&request_headers, &head.headers, ty.is_websocket()),
    };
    if let Err(bad) = checked {
        tracing::info!(
            endpoint = endpoint.address(),
            reason = bad.as_str(),
            "upgrade: refusing the upstream's 101"
        );
        return fail(
            ty,
            HandshakeFailure::Bad101,
            StatusCode::BAD_GATEWAY,
            bad.as_str(),
        );
    }
    let upgraded = match upgraded {
        Some(Ok(u)) => u,
        lost => {
            if let Some(Err(e)) = lost {
                tracing::debug!(error = %e, upgrade = %ty, "upstream connection lost after its 101");
            }
            return fail(
                ty,
                HandshakeFailure::Refused,
                StatusCode::BAD_GATEWAY,
                "upstream closed after 101",
            );
        }
    };
    let mut parts = head;
    switched_head(&mut parts, &endpoint);
    hand_over(parts, upgraded, tunnel, active)
}

/// The answer that opens a tunnel, however the upstream was reached: the router opens it,
/// so the upstream half goes back in the answer's extensions (with the endpoint's place,
/// held until the tunnel ends), and the answer's body reads from it if a layer asks.
pub(crate) fn hand_over(
    mut parts: http::response::Parts,
    upstream: Switch,
    tunnel: Tunnel<'_>,
    active: crate::cluster::Active,
) -> Response<Body> {
    let handoff = Handoff::new(upstream, tunnel.client, tunnel.client_untouched);
    parts.extensions.insert(handoff.clone());
    parts.extensions.insert(Carried::new(active));
    Response::from_parts(parts, Body::upstream_tunnel(handoff))
}

/// Whether an answer with `status` switches the connection: a `101` to an upgrade, a 2xx to
/// a CONNECT (RFC 9110 §9.3.6).
fn switches(connect: bool, status: StatusCode) -> bool {
    match connect {
        true => status.is_success(),
        false => status == StatusCode::SWITCHING_PROTOCOLS,
    }
}

/// Relays an answer that is not a `101` as an ordinary response: hop-by-hop headers (the
/// upgrade pair included) removed, and the client's connection closed after it, because the
/// client may already be sending tunnel bytes that must never be read as HTTP.
fn relay_refusal(answer: Exchanged, endpoint: &Endpoint, ty: &UpgradeType) -> Response<Body> {
    HandshakeFailure::Not101.record(ty);
    let mut parts = answer.head;
    // Every answer but a `101` is read by hyper, so it has a body.
    let Some(body) = answer.body else {
        return reply::local(
            StatusCode::BAD_GATEWAY,
            "upstream answer without a body",
            Then::Close,
        );
    };
    let body = Driven {
        body,
        conn: answer.conn,
    };
    hop::strip(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    parts
        .extensions
        .insert(UpstreamAddr(endpoint.address().to_owned()));
    Response::from_parts(parts, Body::new(body))
}

/// The head of an accepted `101` as the client gets it: hop-by-hop headers removed but for
/// the upgrade pair, with the protocol the upstream chose.
fn switched_head(parts: &mut http::response::Parts, endpoint: &Endpoint) {
    match parts.headers.get(header::UPGRADE).cloned() {
        Some(chosen) => hop::strip_keep_upgrade(&mut parts.headers, chosen),
        None => hop::strip(&mut parts.headers),
    }
    parts
        .extensions
        .insert(UpstreamAddr(endpoint.address().to_owned()));
}

/// A refusal's body, driving its dedicated connection as it is read.
struct Driven {
    body: Incoming,
    conn: Option<Pin<Box<Conn>>>,
}

impl http_body::Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(conn) = &mut self.conn
            && let Poll::Ready(ended) = conn.as_mut().poll(cx)
        {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream connection failed");
            }
            self.conn = None;
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
