//! Opening a tunnel once the chain answered an upgrade.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::body::TunnelRead;
use crate::drain::{Drain, TunnelGuard};
use crate::forward::UpstreamAddr;
use crate::tunnel::joined::JoinedTask;
use crate::tunnel::opened::Opened;
use crate::tunnel::pump::{self, Direction, Link};
use crate::tunnel::{TunnelConfig, TunnelInfo, TunnelMode, TunnelObserver, duplex};
use crate::{Body, UpgradeType};

/// An allowed upgrade waiting for the chain's answer.
pub(crate) struct Pending {
    /// The client speaks HTTP/2: its tunnel opens on a `200` to its extended CONNECT.
    pub(crate) h2: bool,
    pub(crate) client: Option<std::net::SocketAddr>,
    pub(crate) path: String,
    pub(crate) observer: Option<TunnelObserver>,
    pub(crate) ty: UpgradeType,
    pub(crate) on_upgrade: OnUpgrade,
    /// Hands the client's read half to the request body (pumped path).
    pub(crate) client_reader: oneshot::Sender<TunnelRead>,
    pub(crate) link: Arc<Link>,
    pub(crate) tunnel: TunnelConfig,
    pub(crate) drain: Drain,
}

impl Pending {
    /// Given the chain's response: a `101` opens the tunnel in the background and goes to the
    /// client without a body; anything else closes the connection after it.
    pub(crate) fn open(self, res: Response<Body>) -> Response<Body> {
        let (mut parts, mut body) = res.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Response::from_parts(parts, body);
        }
        if self.h2 {
            // RFC 8441: an extended CONNECT succeeds with a 2xx, and HTTP/2 has no connection
            // headers, so the upgrade pair and the HTTP/1.1 handshake proof stay behind.
            parts.status = StatusCode::OK;
            crate::hop::strip(&mut parts.headers);
            parts.headers.remove("sec-websocket-accept");
        }
        let guard = self.drain.track();
        let upstream = parts.extensions.get::<UpstreamAddr>().map(|a| a.0.clone());
        match body.take_join() {
            Some(join) => {
                let info = self.info(TunnelMode::Joined, upstream);
                let settings = duplex::Settings {
                    idle_timeout: join.link.idle_timeout(),
                    half_close_timeout: self.tunnel.half_close_timeout,
                    buffer_size: self.tunnel.buffer_size,
                    websocket: join.link.is_websocket(),
                    splice: self.tunnel.splice,
                };
                tokio::spawn(JoinedTask::new(
                    self.on_upgrade,
                    join.upstream,
                    settings,
                    guard,
                    info,
                    self.observer,
                ));
            }
            None => {
                let info = self.info(TunnelMode::Pumped, upstream);
                tokio::spawn(self.pumped(body, guard, info));
            }
        }
        Response::from_parts(parts, Body::empty())
    }

    fn info(&self, mode: TunnelMode, upstream: Option<String>) -> TunnelInfo {
        TunnelInfo {
            upgrade: self.ty.clone(),
            mode,
            client: self.client,
            path: self.path.clone(),
            upstream,
        }
    }

    async fn pumped(self, body: Body, guard: TunnelGuard, info: TunnelInfo) {
        let link = self.link.clone();
        let Some(client) = self.client_upgraded().await else {
            link.abort(crate::TunnelEnd::Error);
            return;
        };
        let opened = Opened::new(info, self.observer.clone());
        let (reader, writer) = tokio::io::split(TokioIo::new(client));
        // The request body may be gone already (a layer dropped it): then nothing is pumped
        // upstream, which reads as a half-close.
        let _ = self.client_reader.send(reader);
        let watch = async {
            tokio::select! {
                stats = link.wait() => stats,
                () = guard.closed() => {
                    link.abort(crate::TunnelEnd::Drain);
                    link.wait().await
                }
            }
        };
        let ((), stats) = tokio::join!(pump::pump(body, writer, &link, Direction::ToClient), watch);
        opened.finish(stats);
    }

    async fn client_upgraded(&self) -> Option<hyper::upgrade::Upgraded> {
        // `OnUpgrade` is a shared future; polling a clone is how to await it by reference.
        match self.on_upgrade.clone().await {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::debug!(error = %e, "client connection did not upgrade");
                None
            }
        }
    }
}
