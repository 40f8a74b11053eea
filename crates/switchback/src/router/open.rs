//! Opening a tunnel once the chain (or the legacy service) answered an upgrade.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use tokio::sync::oneshot;

use crate::body::Body;
use crate::cap::Holds;
use crate::cluster::Carried;
use crate::conn::Slot;
use crate::drain::Drain;
use crate::ext::UpstreamAddr;
use crate::handoff::{Handoff, TunnelRead};
use crate::metrics::HandshakeFailure;
use crate::reply;
use crate::reply::Then;
use crate::tunnel::{self, Ends, Opening, Settings, TunnelObserver};
use crate::tunnel_info::{TunnelInfo, TunnelMode};

/// An allowed upgrade waiting for its answer.
pub(crate) struct Pending {
    /// What is known of the tunnel so far: the id, the upstream and (pumped or not) the mode
    /// come with the answer.
    pub(crate) info: TunnelInfo,
    pub(crate) observer: Option<TunnelObserver>,
    pub(crate) on_upgrade: OnUpgrade,
    /// Hands the client's read half to the request body (pumped path).
    pub(crate) client_reader: oneshot::Sender<TunnelRead>,
    pub(crate) settings: Settings,
    pub(crate) drain: Drain,
    /// The tunnel's places under the caps; given back if no tunnel opens.
    pub(crate) holds: Holds,
    /// The HTTP/1 client connection (served by this crate's server) whose task runs the
    /// tunnel.
    pub(crate) seat: Option<Arc<Slot>>,
}

impl Pending {
    /// Whether the connection's task may run the tunnel. Not when the upgrade request has a
    /// body: hyper lets the connection go only once the body has all arrived, and the tunnel
    /// bounds how long that may take, so it needs a task of its own meanwhile.
    pub(crate) fn seated(mut self, may: bool) -> Self {
        if !may {
            self.seat = None;
        }
        self
    }

    /// Given the answer: a `101` opens the tunnel and goes to the client without a body (with
    /// a [`TunnelHandle`](crate::TunnelHandle) in its extensions); anything else closes the
    /// connection after it.
    pub(crate) fn open(mut self, res: Response<Body>) -> Response<Body> {
        let (mut parts, body) = res.into_parts();
        let switched = match self.info.upgrade.is_connect() {
            true => parts.status.is_success(),
            false => parts.status == StatusCode::SWITCHING_PROTOCOLS,
        };
        if !switched {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Response::from_parts(parts, body);
        }
        let handoff = parts.extensions.remove::<Handoff<Body>>();
        self.info.upstream_protocol = handoff.as_ref().map(Handoff::protocol);
        self.holds.upstream = parts.extensions.remove::<Carried>().and_then(|c| c.take());
        let Some(ends) = Ends::new(body, handoff, self.client_reader) else {
            tracing::warn!(
                upgrade = %self.info.upgrade,
                "the chain answered 101 without an upstream connection (a layer dropped the \
                 response's extensions, or the chain doesn't end in Forward)"
            );
            HandshakeFailure::NoUpstream.record(&self.info.upgrade);
            return reply::local(
                StatusCode::BAD_GATEWAY,
                "no upstream connection for the 101",
                Then::Close,
            );
        };
        if self.info.version == http::Version::HTTP_2 {
            // RFC 8441: an extended CONNECT succeeds with a 2xx, and HTTP/2 has no connection
            // headers, so the upgrade pair and the HTTP/1.1 handshake proof stay behind.
            parts.status = StatusCode::OK;
            crate::hop::strip(&mut parts.headers);
            parts.headers.remove("sec-websocket-accept");
        }
        let info = &mut self.info;
        info.id = tunnel::next_id();
        if let (Ends::Pumped(_), TunnelMode::Joined) = (&ends, info.mode) {
            info.mode = TunnelMode::Pumped;
        }
        info.upstream = parts.extensions.get::<UpstreamAddr>().map(|a| a.0.clone());
        if let Some(span) = info.trace.as_ref().and_then(crate::trace::TraceContext::span) {
            span.record("switchback.upgrade", info.upgrade.as_str());
            span.record("switchback.tunnel.mode", info.mode.as_str());
            if let Some(route) = &info.route {
                span.record("http.route", &**route);
            }
        }
        let host_failure = self.holds.upstream.as_ref().and_then(|a| a.host_failure());
        let opening = Opening {
            guard: self.drain.track(&self.info).close_on(host_failure),
            info: self.info,
            settings: self.settings,
            observer: self.observer,
            holds: self.holds,
        };
        let handle = tunnel::open(self.on_upgrade, ends, opening, self.seat);
        parts.extensions.insert(handle);
        Response::from_parts(parts, Body::empty())
    }
}
