//! An upgrade's attempts on a cluster that speaks HTTP/2: each is a stream on a shared
//! connection (RFC 8441 extended CONNECT, `:protocol` the upgrade token; a CONNECT in proxy
//! mode stays a CONNECT). The upstream's 2xx becomes the client's `101`, with the
//! `Sec-WebSocket-Accept` its key asks for; anything else is relayed as a refusal.

use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};

use super::attempt::{Answer, Answered, Attempts, Failure, Sender};
use super::upstream::{Tunnel, fail};
use super::{origin_form, upstream_host, with_timeout};
use crate::body::Body;
use crate::cluster::{Cluster, ConnectError, Endpoint, StreamSlot};
use crate::detect::UpgradeType;
use crate::ext::UpstreamAddr;
use crate::h2stream::{H2Body, H2Stream};
use crate::handoff::{Switch, UpstreamIo};
use crate::hop;
use crate::metrics::HandshakeFailure;
use crate::websocket::SEC_WEBSOCKET_KEY;

/// The upgrade `parts` (in its HTTP/1.1 form: what the router and `Forward` made of the
/// client's request) as a stream to one of `cluster`'s endpoints, through the attempt loop.
pub(crate) async fn switch(
    cluster: &Cluster,
    attempts: &mut Attempts,
    parts: http::request::Parts,
    body: Body,
    tunnel: Tunnel<'_>,
) -> Response<Body> {
    let ty = tunnel.ty;
    if !http_body::Body::is_end_stream(&body) {
        // On HTTP/2 the stream's DATA is the tunnel: a body before it has nowhere to go.
        let message = "an upgrade request with a body cannot go to an HTTP/2 upstream";
        return fail(
            ty,
            HandshakeFailure::Refused,
            StatusCode::NOT_IMPLEMENTED,
            message,
        );
    }
    let client_key = parts.headers.get(SEC_WEBSOCKET_KEY).cloned();
    let mut streams = Streams { cluster, parts, ty };
    match attempts.run(cluster, Body::empty(), &mut streams).await {
        Ok(answer) => answer_upgrade(answer, tunnel, client_key),
        Err(failure) => {
            let (status, message) = attempts.status(&failure);
            fail(ty, failure.reason(), status, message)
        }
    }
}

/// An upgrade's attempts, each a new stream.
struct Streams<'a> {
    cluster: &'a Cluster,
    parts: http::request::Parts,
    ty: &'a UpgradeType,
}

/// The upstream's answer on a stream.
struct Streamed {
    res: Response<RecvStream>,
    send: SendStream<Bytes>,
    slot: StreamSlot,
}

impl Answered for Streamed {
    fn status(&self) -> StatusCode {
        self.res.status()
    }
}

impl Sender for Streams<'_> {
    type Answer = Streamed;
    // A stream on a shared connection: a failed endpoint is as unlikely to take a second one
    // as a fresh connection is.
    const REPEATS_ENDPOINTS: bool = false;

    async fn send(
        &mut self,
        endpoint: &Endpoint,
        timeout: Option<Duration>,
        _: &mut Option<Body>,
    ) -> Result<Streamed, Failure> {
        let lease = match self.cluster.h2_lease(endpoint).await {
            Some(lease) => lease.map_err(Failure::Connect)?,
            None => return Err(Failure::Connect(ConnectError::NoEndpoint)),
        };
        if !self.ty.is_connect() && !lease.extended_connect {
            return Err(Failure::NoExtendedConnect);
        }
        let req = stream_request(&self.parts, endpoint, self.ty, self.cluster.has_tls());
        let reset = |e: h2::Error| Failure::Reset(e.into());
        let opening = async {
            let mut send = lease.send.ready().await.map_err(reset)?;
            let (response, stream) = send.send_request(req, false).map_err(reset)?;
            let res = response.await.map_err(reset)?;
            Ok((res, stream))
        };
        let (res, send) = match with_timeout(timeout, opening).await {
            Some(answer) => answer?,
            None => return Err(Failure::Timeout),
        };
        Ok(Streamed {
            res,
            send,
            slot: lease.slot,
        })
    }
}

/// The request that opens the stream: CONNECT to the upstream's authority, with `:protocol`
/// for an upgrade; HTTP/1.1's connection headers, `Host` (now `:authority`) and the
/// WebSocket key (RFC 8441 has none) left out.
fn stream_request(
    parts: &http::request::Parts,
    endpoint: &Endpoint,
    ty: &UpgradeType,
    tls: bool,
) -> Request<()> {
    let mut head = super::clone_parts(parts);
    upstream_host(&mut head, endpoint);
    let authority = head
        .headers
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(endpoint.address()).ok());
    hop::strip(&mut head.headers);
    head.headers.remove(SEC_WEBSOCKET_KEY);
    let mut uri = http::uri::Parts::default();
    uri.authority = authority;
    if !ty.is_connect() {
        uri.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
        uri.path_and_query = origin_form(&parts.uri).path_and_query().cloned();
        head.extensions.insert(h2::ext::Protocol::from(ty.as_str()));
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
    *req.headers_mut() = head.headers;
    if let Some(protocol) = head.extensions.remove::<h2::ext::Protocol>() {
        req.extensions_mut().insert(protocol);
    }
    req
}

/// The upstream's 2xx as the client's answer: a `101` naming the protocol (with the accept
/// value its WebSocket key asks for), or a CONNECT's 2xx as it came; the stream goes to the
/// tunnel. Anything else is relayed, and the client's connection closes after it.
fn answer_upgrade(
    answer: Answer<Streamed>,
    tunnel: Tunnel<'_>,
    client_key: Option<HeaderValue>,
) -> Response<Body> {
    let Answer {
        answer,
        endpoint,
        active,
    } = answer;
    let ty = tunnel.ty;
    let (mut parts, recv) = answer.res.into_parts();
    hop::strip(&mut parts.headers);
    parts
        .extensions
        .insert(UpstreamAddr(endpoint.address().to_owned()));
    if !parts.status.is_success() {
        HandshakeFailure::Not101.record(ty);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        parts.version = Version::HTTP_11;
        return Response::from_parts(parts, Body::new(H2Body::new(recv, answer.slot)));
    }
    if !ty.is_connect() {
        parts.status = StatusCode::SWITCHING_PROTOCOLS;
        if let Ok(token) = HeaderValue::from_str(ty.as_str()) {
            parts.headers.insert(header::UPGRADE, token);
        }
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(key) = client_key
            && let Ok(accept) = HeaderValue::from_str(&crate::websocket::accept_key(key.as_bytes()))
        {
            parts.headers.insert("sec-websocket-accept", accept);
        }
    }
    parts.version = Version::HTTP_11;
    let stream = H2Stream::new(answer.send, recv, answer.slot);
    let upstream = Switch::Done(UpstreamIo::Multiplexed(Box::new(stream)));
    super::upstream::hand_over(parts, upstream, tunnel, active)
}
