//! The hand-off of an upgrade's upstream half, from whoever made the upstream connection
//! ([`Forward`](crate::Forward) or the legacy service) to the tunnel: a response extension,
//! kept apart from both so that data flows down the stack (forward, then tunnel) and the
//! body type can read it without importing the tunnel.
//!
//! The forwarder puts a [`Handoff`] in the `101`'s extensions and makes the `101`'s body read
//! from it (`body::UpstreamTunnel`); it starts nothing. When the router sees the `101` come
//! out of the chain it picks the tunnel's ends (`tunnel::Ends`): if neither body was touched
//! by a layer, the two upgraded connections are joined whole; otherwise the bodies as the
//! layers left them are the byte sources, and the connections' write halves the sinks.
//! Whichever reads or writes the upstream first splits it. The hand-off knows neither: the
//! client's body is a type parameter.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};

use crate::h2stream::H2Stream;
use crate::tls::UpstreamStream;
use crate::tunnel::Prefixed;

/// The read half of the client's upgraded connection, read as body data on the pumped path.
pub(crate) type TunnelRead = ReadHalf<TokioIo<Upgraded>>;
/// The halves of the upstream's connection on the pumped path.
pub(crate) type UpstreamRead = ReadHalf<UpstreamIo>;
pub(crate) type UpstreamWrite = WriteHalf<UpstreamIo>;

/// The upstream connection a tunnel relays to: one hyper switched (after a `101`, or a 2xx
/// to a forwarded CONNECT), or one the proxy connected itself and never spoke HTTP on (a
/// terminated CONNECT's).
#[derive(Debug)]
pub(crate) enum UpstreamIo {
    Switched(TokioIo<Upgraded>),
    Raw(UpstreamStream),
    /// A stream on a shared HTTP/2 connection (boxed: it is the larger one).
    Multiplexed(Box<H2Stream>),
    /// A plain connection whose `101` the proxy read itself, with what came after it.
    Spliceable(Prefixed),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Switched(io) => Pin::new(io).poll_read(cx, buf),
            Self::Raw(io) => Pin::new(io).poll_read(cx, buf),
            Self::Multiplexed(io) => Pin::new(&mut **io).poll_read(cx, buf),
            Self::Spliceable(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Switched(io) => Pin::new(io).poll_write(cx, buf),
            Self::Raw(io) => Pin::new(io).poll_write(cx, buf),
            Self::Multiplexed(io) => Pin::new(&mut **io).poll_write(cx, buf),
            Self::Spliceable(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Switched(io) => Pin::new(io).poll_flush(cx),
            Self::Raw(io) => Pin::new(io).poll_flush(cx),
            Self::Multiplexed(io) => Pin::new(&mut **io).poll_flush(cx),
            Self::Spliceable(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Switched(io) => Pin::new(io).poll_shutdown(cx),
            Self::Raw(io) => Pin::new(io).poll_shutdown(cx),
            Self::Multiplexed(io) => Pin::new(&mut **io).poll_shutdown(cx),
            Self::Spliceable(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// An upstream connection that has answered `101` but may still be sending the upgrade
/// request's body: hyper hands the connection over only once the body is sent. The `101`
/// goes to the client at once (the client may still be sending that body); the tunnel
/// waits for the switch before it relays a byte.
pub(crate) enum Switch {
    Done(UpstreamIo),
    Switching(Switching),
}

/// Sends the rest of the request body, then yields the switched connection.
pub(crate) type Switching = Pin<Box<dyn Future<Output = hyper::Result<Upgraded>> + Send>>;

impl Switch {
    /// Drives the switch; ready once the connection is handed over (or failed).
    pub(crate) fn poll_switched(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        if let Self::Switching(switching) = self {
            let upgraded = ready!(switching.as_mut().poll(cx))?;
            *self = Self::Done(UpstreamIo::Switched(TokioIo::new(upgraded)));
        }
        Poll::Ready(Ok(()))
    }

    /// The connection, once switched.
    pub(crate) fn switched(self) -> Option<UpstreamIo> {
        match self {
            Self::Done(upgraded) => Some(upgraded),
            Self::Switching(_) => None,
        }
    }
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done(upgraded) => f.debug_tuple("Done").field(upgraded).finish(),
            Self::Switching(_) => f.write_str("Switching"),
        }
    }
}

/// The upstream half of an upgrade, in the `101`'s response extensions. `C` is the body that
/// carries the client's tunnel bytes ([`Body`](crate::Body)).
#[derive(Debug)]
pub(crate) struct Handoff<C>(Arc<Shared<C>>);

impl<C> Clone for Handoff<C> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

#[derive(Debug)]
struct Shared<C> {
    upstream: Mutex<Upstream>,
    /// The body that carries the client's tunnel bytes: the request body as the chain's
    /// layers left it.
    client: Mutex<Option<C>>,
    /// No layer wrapped the request body: it is Switchback's own.
    client_untouched: bool,
}

#[derive(Debug)]
enum Upstream {
    Whole(Switch),
    Split {
        read: Option<UpstreamRead>,
        write: Option<UpstreamWrite>,
    },
}

impl<C> Handoff<C> {
    /// `client` is the body that carries the client's tunnel bytes; `client_untouched` says
    /// it is still Switchback's own (no layer wrapped it).
    pub(crate) fn new(upstream: Switch, client: C, client_untouched: bool) -> Self {
        Self(Arc::new(Shared {
            upstream: Mutex::new(Upstream::Whole(upstream)),
            client: Mutex::new(Some(client)),
            client_untouched,
        }))
    }

    fn upstream(&self) -> MutexGuard<'_, Upstream> {
        self.0.upstream.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the upstream is reached, for [`TunnelInfo::upstream_protocol`](crate::TunnelInfo).
    pub(crate) fn protocol(&self) -> &'static str {
        match &*self.upstream() {
            Upstream::Whole(Switch::Done(UpstreamIo::Raw(_))) => "TCP",
            Upstream::Whole(Switch::Done(UpstreamIo::Multiplexed(_))) => "HTTP/2",
            _ => "HTTP/1.1",
        }
    }

    /// Whether no layer wrapped the client's body.
    pub(crate) fn client_untouched(&self) -> bool {
        self.0.client_untouched
    }

    /// Drives the upstream's switch, when it is still whole and switching.
    pub(crate) fn poll_switched(&self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match &mut *self.upstream() {
            Upstream::Whole(switch) => switch.poll_switched(cx),
            Upstream::Split { .. } => Poll::Ready(Ok(())),
        }
    }

    /// The upstream connection, if nobody has read or written it yet.
    pub(crate) fn take_whole(&self) -> Option<Switch> {
        let mut upstream = self.upstream();
        match std::mem::replace(
            &mut *upstream,
            Upstream::Split {
                read: None,
                write: None,
            },
        ) {
            Upstream::Whole(u) => Some(u),
            split => {
                *upstream = split;
                None
            }
        }
    }

    /// Splits a switched connection (one still switching stays whole: nothing reads or
    /// writes it before the tunnel has waited for the switch).
    fn split(upstream: &mut Upstream) {
        if let Upstream::Split { .. } | Upstream::Whole(Switch::Switching(_)) = upstream {
            return;
        }
        if let Upstream::Whole(Switch::Done(u)) = std::mem::replace(
            upstream,
            Upstream::Split {
                read: None,
                write: None,
            },
        ) {
            let (read, write) = tokio::io::split(u);
            *upstream = Upstream::Split {
                read: Some(read),
                write: Some(write),
            };
        }
    }

    pub(crate) fn take_read(&self) -> Option<UpstreamRead> {
        let mut upstream = self.upstream();
        Self::split(&mut upstream);
        match &mut *upstream {
            Upstream::Split { read, .. } => read.take(),
            Upstream::Whole(_) => None,
        }
    }

    pub(crate) fn take_write(&self) -> Option<UpstreamWrite> {
        let mut upstream = self.upstream();
        Self::split(&mut upstream);
        match &mut *upstream {
            Upstream::Split { write, .. } => write.take(),
            Upstream::Whole(_) => None,
        }
    }

    pub(crate) fn take_client(&self) -> Option<C> {
        self.0.client.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
