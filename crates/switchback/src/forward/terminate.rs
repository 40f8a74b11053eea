//! A terminated CONNECT: the proxy connects to an endpoint of the route's cluster itself,
//! answers `200`, and the tunnel relays raw bytes to that connection (Envoy's
//! `connect_config`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Response, StatusCode};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::attempt::{Answer, Answered, Attempts, Failure, Sender};
use super::upstream::{self, Tunnel};
use crate::body::Body;
use crate::cluster::{Active, Cluster, Endpoint};
use crate::ext::UpstreamAddr;
use crate::handoff::{Switch, UpstreamIo};
use crate::tls::UpstreamStream;

/// Connects to the cluster through the attempt loop (its balancer, retries on connect
/// failure, outlier detection) and answers `200` with the connection handed to the tunnel;
/// a failure answers as an upgrade's would, and closes the client's connection.
pub(crate) async fn connect(
    cluster: &Cluster,
    attempts: &mut Attempts,
    tunnel: Tunnel<'_>,
) -> Response<Body> {
    match connected(cluster, attempts).await {
        Ok((stream, endpoint, active)) => {
            let (mut parts, ()) = Response::new(()).into_parts();
            parts
                .extensions
                .insert(UpstreamAddr(endpoint.address().to_owned()));
            upstream::hand_over(parts, Switch::Done(UpstreamIo::Raw(stream)), tunnel, active)
        }
        Err(failure) => {
            let (status, message) = attempts.status(&failure);
            upstream::fail(tunnel.ty, failure.reason(), status, message)
        }
    }
}

/// A connection to one of the cluster's endpoints, made through the attempt loop.
async fn connected(
    cluster: &Cluster,
    attempts: &mut Attempts,
) -> Result<(UpstreamStream, Endpoint, Active), Failure> {
    let answer = attempts.run(cluster, Body::empty(), &mut Raw { cluster }).await?;
    let Answer {
        answer: Connected(stream),
        endpoint,
        active,
    } = answer;
    Ok((stream, endpoint, active))
}

/// An attempt that only connects: no HTTP is spoken to the endpoint.
struct Raw<'a> {
    cluster: &'a Cluster,
}

/// A connection made, which the client hears of as a `200`.
struct Connected(UpstreamStream);

impl Answered for Connected {
    fn status(&self) -> StatusCode {
        StatusCode::OK
    }
}

impl Sender for Raw<'_> {
    type Answer = Connected;
    const REPEATS_ENDPOINTS: bool = false;

    async fn send(
        &mut self,
        endpoint: &Endpoint,
        timeout: Option<Duration>,
        _: &mut Option<Body>,
    ) -> Result<Connected, Failure> {
        match super::with_timeout(timeout, self.cluster.connect(endpoint)).await {
            Some(Ok(stream)) => Ok(Connected(stream)),
            Some(Err(e)) => Err(Failure::Connect(e)),
            None => Err(Failure::Timeout),
        }
    }
}

/// A POST on a route whose `connect_config` allows it (Envoy's `allow_post`): connected as a
/// CONNECT is, then the request body goes to the upstream as raw bytes and the upstream's
/// bytes come back as the `200`'s body. The two directions are one body, driven as the
/// response is sent: no task of its own.
pub(crate) async fn post(cluster: &Cluster, attempts: &mut Attempts, body: Body) -> Response<Body> {
    match connected(cluster, attempts).await {
        Ok((stream, endpoint, active)) => {
            let relay = PostRelay {
                upload: Some(body),
                pending: Bytes::new(),
                upstream: stream,
                buf: vec![0; POST_CHUNK].into_boxed_slice(),
                _active: active,
            };
            let mut res = Response::new(Body::new(relay));
            res.extensions_mut()
                .insert(UpstreamAddr(endpoint.address().to_owned()));
            res
        }
        Err(failure) => {
            let (status, message) = attempts.status(&failure);
            crate::reply::local(status, message, crate::reply::Then::KeepAlive)
        }
    }
}

/// How much of the upstream's bytes one response frame carries at most.
const POST_CHUNK: usize = 16 * 1024;

/// The `200`'s body of a terminated POST: polling it writes the request body upstream (one
/// chunk at a time, so a slow upstream slows the client) and reads the upstream's bytes.
struct PostRelay {
    /// The request body, until its end was passed on as a half-close.
    upload: Option<Body>,
    /// What is left to write of the request body's last chunk.
    pending: Bytes,
    upstream: UpstreamStream,
    buf: Box<[u8]>,
    /// The endpoint counts the relay as active until it ends.
    _active: Active,
}

impl PostRelay {
    /// Moves request bytes upstream until the body or the upstream makes us wait; the body's
    /// end becomes the upstream's FIN.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while !self.pending.is_empty() {
                let n = ready!(Pin::new(&mut self.upstream).poll_write(cx, &self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.advance(n);
            }
            let Some(upload) = &mut self.upload else {
                return Poll::Ready(Ok(()));
            };
            match ready!(http_body::Body::poll_frame(Pin::new(upload), cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => {
                    ready!(Pin::new(&mut self.upstream).poll_shutdown(cx))?;
                    self.upload = None;
                }
            }
        }
    }
}

impl http_body::Body for PostRelay {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        // A failed upload ends the relay loudly; one waiting on either side lets the
        // download go on.
        if let Poll::Ready(Err(e)) = this.poll_upload(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        let mut read = ReadBuf::new(&mut this.buf);
        ready!(Pin::new(&mut this.upstream).poll_read(cx, &mut read))?;
        match read.filled() {
            [] => Poll::Ready(None),
            bytes => Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(bytes))))),
        }
    }
}
