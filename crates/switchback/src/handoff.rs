//! The hand-off of an upgrade's upstream half, from whoever made the upstream connection
//! ([`Forward`](crate::Forward) or the legacy service) to the tunnel: a response extension,
//! kept apart from both so that data flows down the stack (forward, then tunnel) and the
//! body type can read it without importing the tunnel.
//!
//! The forwarder puts a [`Handoff`] in the `101`'s extensions and makes the `101`'s body an
//! [`UpstreamTunnel`] over it; it starts nothing. When the router sees the `101` come out of
//! the chain it picks the tunnel's [`Ends`]: if neither body was touched by a layer, the two
//! upgraded connections are joined whole; otherwise the bodies as the layers left them are the
//! byte sources, and the connections' write halves the sinks. Whichever reads or writes the
//! upstream first splits it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::oneshot;

use crate::Body;
use crate::cluster::Active;

/// The read half of an upgraded connection, read as body data on the pumped path.
pub(crate) type TunnelRead = ReadHalf<TokioIo<Upgraded>>;
type TunnelWrite = WriteHalf<TokioIo<Upgraded>>;

/// An upstream connection that has answered `101` but may still be sending the upgrade
/// request's body: hyper hands the connection over only once the body is sent. The `101`
/// goes to the client at once (the client may still be sending that body); the tunnel
/// waits for the switch before it relays a byte.
pub(crate) enum Switch {
    Done(Upgraded),
    Switching(Switching),
}

/// Sends the rest of the request body, then yields the switched connection.
pub(crate) type Switching = Pin<Box<dyn Future<Output = hyper::Result<Upgraded>> + Send>>;

impl Switch {
    /// Drives the switch; ready once the connection is handed over (or failed).
    pub(crate) fn poll_switched(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        if let Self::Switching(switching) = self {
            *self = Self::Done(ready!(switching.as_mut().poll(cx))?);
        }
        Poll::Ready(Ok(()))
    }

    /// The connection, once switched.
    pub(crate) fn switched(self) -> Option<Upgraded> {
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

/// The upstream half of an upgrade, in the `101`'s response extensions.
#[derive(Clone, Debug)]
pub(crate) struct Handoff(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    upstream: Mutex<Upstream>,
    /// The body that carries the client's tunnel bytes: the request body as the chain's
    /// layers left it.
    client: Mutex<Option<Body>>,
    /// No layer wrapped the request body: it is Switchback's own.
    client_untouched: bool,
    /// The upstream endpoint's count of tunnels and requests, for the tunnel to keep.
    active: Mutex<Option<Active>>,
}

#[derive(Debug)]
enum Upstream {
    Whole(Switch),
    Split {
        read: Option<TunnelRead>,
        write: Option<TunnelWrite>,
    },
}

impl Handoff {
    /// `client` is the body that carries the client's tunnel bytes; `client_untouched` says
    /// it is still Switchback's own (no layer wrapped it).
    pub(crate) fn new(
        upstream: Switch,
        client: Body,
        client_untouched: bool,
        active: Option<Active>,
    ) -> Self {
        Self(Arc::new(Shared {
            upstream: Mutex::new(Upstream::Whole(upstream)),
            client: Mutex::new(Some(client)),
            client_untouched,
            active: Mutex::new(active),
        }))
    }

    /// The upstream endpoint's count, for the tunnel to hold while it lives.
    pub(crate) fn take_active(&self) -> Option<Active> {
        self.0.active.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn upstream(&self) -> MutexGuard<'_, Upstream> {
        self.0.upstream.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drives the upstream's switch, when it is still whole and switching.
    fn poll_switched(&self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match &mut *self.upstream() {
            Upstream::Whole(switch) => switch.poll_switched(cx),
            Upstream::Split { .. } => Poll::Ready(Ok(())),
        }
    }

    /// The upstream connection, if nobody has read or written it yet.
    fn take_whole(&self) -> Option<Switch> {
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
            let (read, write) = tokio::io::split(TokioIo::new(u));
            *upstream = Upstream::Split {
                read: Some(read),
                write: Some(write),
            };
        }
    }

    fn take_read(&self) -> Option<TunnelRead> {
        let mut upstream = self.upstream();
        Self::split(&mut upstream);
        match &mut *upstream {
            Upstream::Split { read, .. } => read.take(),
            Upstream::Whole(_) => None,
        }
    }

    fn take_write(&self) -> Option<TunnelWrite> {
        let mut upstream = self.upstream();
        Self::split(&mut upstream);
        match &mut *upstream {
            Upstream::Split { write, .. } => write.take(),
            Upstream::Whole(_) => None,
        }
    }

    fn take_client(&self) -> Option<Body> {
        self.0.client.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The `101`'s body: the upstream's tunnel bytes, read only if a layer reads it (else the
/// connections are joined and it is dropped unread).
#[derive(Debug)]
pub(crate) enum UpstreamTunnel {
    Unread(Handoff),
    Reading(TunnelRead),
    /// The connection's read half is gone (taken by another reader).
    Gone,
}

impl UpstreamTunnel {
    /// The read half to read from, splitting the connection on the first read.
    pub(crate) fn reader(&mut self) -> Option<&mut TunnelRead> {
        if let Self::Unread(handoff) = self {
            *self = match handoff.take_read() {
                Some(read) => Self::Reading(read),
                None => Self::Gone,
            };
        }
        match self {
            Self::Reading(read) => Some(read),
            Self::Unread(_) | Self::Gone => None,
        }
    }
}

/// The two ends of a tunnel about to open.
pub(crate) enum Ends {
    /// Neither body was touched: relay between the two upgraded connections.
    Joined { upstream: Switch },
    /// A layer touched a body: relay between the bodies as the layers left them.
    Pumped(Box<PumpedEnds>),
}

impl Ends {
    /// Ready once the upstream connection has switched: the rest of the upgrade request's
    /// body is sent first.
    pub(crate) fn poll_switched(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match self {
            Self::Joined { upstream } => upstream.poll_switched(cx),
            Self::Pumped(ends) => ends.upstream.handoff.poll_switched(cx),
        }
    }
}

/// The ends of a pumped tunnel.
pub(crate) struct PumpedEnds {
    /// Carries the client's bytes (a layer's wrapper over the client's read half).
    pub(crate) client_body: Body,
    /// Hands the client's read half to the request body once the client has upgraded.
    pub(crate) client_reader: oneshot::Sender<TunnelRead>,
    /// Carries the upstream's bytes (a layer's wrapper over the upstream's read half).
    pub(crate) upstream_body: Body,
    pub(crate) upstream: UpstreamWriter,
}

impl Ends {
    /// The ends of the tunnel a `101` opens: `body` is the `101`'s body as it came out of the
    /// chain, `handoff` what the forwarder left in its extensions. `None` when the `101`
    /// carries no upstream connection (it came from something other than Switchback's
    /// forwarder, or a layer rebuilt the response without its extensions).
    pub(crate) fn new(
        body: Body,
        handoff: Option<Handoff>,
        client_reader: oneshot::Sender<TunnelRead>,
    ) -> Option<Self> {
        let handoff = handoff?;
        if body.is_unread_tunnel()
            && handoff.0.client_untouched
            && let Some(upstream) = handoff.take_whole()
        {
            return Some(Self::Joined { upstream });
        }
        let client_body = handoff.take_client().unwrap_or_default();
        Some(Self::Pumped(Box::new(PumpedEnds {
            client_body,
            client_reader,
            upstream_body: body,
            upstream: UpstreamWriter { handoff, write: None },
        })))
    }
}

/// The upstream's write half, taken from the hand-off on first use.
#[derive(Debug)]
pub(crate) struct UpstreamWriter {
    handoff: Handoff,
    write: Option<TunnelWrite>,
}

impl UpstreamWriter {
    fn get(&mut self) -> io::Result<Pin<&mut TunnelWrite>> {
        if self.write.is_none() {
            self.write = self.handoff.take_write();
        }
        match &mut self.write {
            Some(w) => Ok(Pin::new(w)),
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the upstream connection is gone",
            )),
        }
    }
}

impl AsyncWrite for UpstreamWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get()?.poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get()?.poll_shutdown(cx)
    }
}
