//! Opening a tunnel once the chain answered an upgrade.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::body::{Join, TunnelRead};
use crate::drain::{Drain, TunnelGuard};
use crate::tunnel::pump::{self, Direction, Link};
use crate::tunnel::{TunnelConfig, TunnelStats, duplex};
use crate::{Body, UpgradeType, metrics};

/// An allowed upgrade waiting for the chain's answer.
pub(crate) struct Pending {
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
        let guard = self.drain.track();
        let mode = match body.take_join() {
            Some(join) => {
                tokio::spawn(self.joined(join, guard));
                "joined"
            }
            None => {
                tokio::spawn(self.pumped(body, guard));
                "pumped"
            }
        };
        tracing::debug!(mode, "tunnel opening");
        Response::from_parts(parts, Body::empty())
    }

    async fn joined(self, join: Join, guard: TunnelGuard) {
        let Some(client) = self.client_upgraded().await else {
            return;
        };
        let settings = duplex::Settings {
            idle_timeout: join.link.idle_timeout(),
            half_close_timeout: self.tunnel.half_close_timeout,
            buffer_size: self.tunnel.buffer_size,
            websocket: join.link.is_websocket(),
        };
        let opened = Opened::new(&self.ty, "joined");
        let stats = duplex::run(
            TokioIo::new(client),
            TokioIo::new(join.upstream),
            settings,
            &guard,
        )
        .await;
        opened.finish(stats);
    }

    async fn pumped(self, body: Body, guard: TunnelGuard) {
        let link = self.link.clone();
        let Some(client) = self.client_upgraded().await else {
            link.abort(crate::TunnelEnd::Error);
            return;
        };
        let opened = Opened::new(&self.ty, "pumped");
        let (reader, writer) = tokio::io::split(TokioIo::new(client));
        // The request body may be gone already (a layer dropped it): then nothing is pumped
        // upstream, which reads as a half-close.
        let _ = self.client_reader.send(reader);
        let watch = async {
            tokio::select! {
                stats = link.wait() => stats,
                () = guard.closing() => {
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

/// Metrics and the log line of one open tunnel.
struct Opened {
    ty: String,
    mode: &'static str,
    start: Instant,
}

impl Opened {
    fn new(ty: &UpgradeType, mode: &'static str) -> Self {
        let ty = ty.to_string();
        ::metrics::counter!(metrics::TUNNELS_OPENED, "type" => ty.clone(), "mode" => mode).increment(1);
        ::metrics::gauge!(metrics::TUNNELS_ACTIVE, "type" => ty.clone(), "mode" => mode).increment(1.0);
        tracing::debug!(upgrade = %ty, mode, "tunnel open");
        Self {
            ty,
            mode,
            start: Instant::now(),
        }
    }

    fn finish(self, stats: TunnelStats) {
        let ty = self.ty;
        let secs = self.start.elapsed().as_secs_f64();
        ::metrics::gauge!(metrics::TUNNELS_ACTIVE, "type" => ty.clone(), "mode" => self.mode).decrement(1.0);
        ::metrics::counter!(metrics::TUNNEL_BYTES, "type" => ty.clone(), "direction" => "upstream")
            .increment(stats.upstream_bytes);
        ::metrics::counter!(metrics::TUNNEL_BYTES, "type" => ty.clone(), "direction" => "downstream")
            .increment(stats.downstream_bytes);
        ::metrics::histogram!(metrics::TUNNEL_DURATION, "type" => ty.clone(), "end" => stats.end.as_str())
            .record(secs);
        tracing::debug!(
            upgrade = %ty,
            end = %stats.end,
            upstream_bytes = stats.upstream_bytes,
            downstream_bytes = stats.downstream_bytes,
            duration_s = secs,
            "tunnel closed"
        );
    }
}
