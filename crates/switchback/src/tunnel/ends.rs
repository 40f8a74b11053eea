//! The two ends of a tunnel about to open, picked from the `101` that came out of the chain
//! and the hand-off the forwarder left with it: the upgraded connections joined whole, or the
//! bodies as the layers left them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use crate::body::Body;
use crate::handoff::{Handoff, Switch, TunnelRead, UpstreamWrite};

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
        handoff: Option<Handoff<Body>>,
        client_reader: oneshot::Sender<TunnelRead>,
    ) -> Option<Self> {
        let handoff = handoff?;
        if body.is_unread_tunnel()
            && handoff.client_untouched()
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
    handoff: Handoff<Body>,
    write: Option<UpstreamWrite>,
}

impl UpstreamWriter {
    fn get(&mut self) -> io::Result<Pin<&mut UpstreamWrite>> {
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
