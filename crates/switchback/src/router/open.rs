//! Opening a tunnel once the chain answered an upgrade.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::body::TunnelRead;
use crate::drain::{Drain, TunnelGuard};
use crate::forward::UpstreamAddr;
use crate::tunnel::pump::{self, Direction, Link};
use crate::tunnel::{TunnelConfig, TunnelEvent, TunnelInfo, TunnelMode, TunnelObserver, TunnelStats, duplex};
use crate::{Body, UpgradeType, metrics};

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
                let opened = (info, self.observer);
                tokio::spawn(Self::joined(
                    self.on_upgrade,
                    join.upstream,
                    settings,
                    guard,
                    opened,
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

    /// The joined tunnel's task. It takes only what the relay needs (not `self`): an idle
    /// tunnel should cost little more than its two sockets.
    async fn joined(
        on_upgrade: OnUpgrade,
        upstream: hyper::upgrade::Upgraded,
        settings: duplex::Settings,
        guard: TunnelGuard,
        opened: (TunnelInfo, Option<TunnelObserver>),
    ) {
        let client = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "client connection did not upgrade");
                return;
            }
        };
        let opened = Opened::new(opened.0, opened.1);
        let stats = duplex::join(client, upstream, settings, &guard).await;
        opened.finish(stats);
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

/// Metrics, logs and observer calls of one open tunnel, from opening to closing.
pub(crate) struct Opened {
    info: TunnelInfo,
    observer: Option<TunnelObserver>,
    start: Instant,
}

impl Opened {
    pub(crate) fn new(info: TunnelInfo, observer: Option<TunnelObserver>) -> Self {
        let (ty, mode) = (info.upgrade.to_string(), info.mode.as_str());
        ::metrics::counter!(metrics::TUNNELS_OPENED, "type" => ty.clone(), "mode" => mode).increment(1);
        ::metrics::gauge!(metrics::TUNNELS_ACTIVE, "type" => ty, "mode" => mode).increment(1.0);
        tracing::debug!(upgrade = %info.upgrade, mode, path = %info.path, "tunnel open");
        if let Some(o) = &observer {
            o.notify(&TunnelEvent::Opened(&info));
        }
        Self {
            info,
            observer,
            start: Instant::now(),
        }
    }

    pub(crate) fn finish(self, stats: TunnelStats) {
        let (ty, mode) = (self.info.upgrade.to_string(), self.info.mode.as_str());
        let elapsed = self.start.elapsed();
        ::metrics::gauge!(metrics::TUNNELS_ACTIVE, "type" => ty.clone(), "mode" => mode).decrement(1.0);
        ::metrics::counter!(metrics::TUNNEL_BYTES, "type" => ty.clone(), "direction" => "upstream")
            .increment(stats.upstream_bytes);
        ::metrics::counter!(metrics::TUNNEL_BYTES, "type" => ty.clone(), "direction" => "downstream")
            .increment(stats.downstream_bytes);
        ::metrics::histogram!(metrics::TUNNEL_DURATION, "type" => ty, "end" => stats.end.as_str())
            .record(elapsed.as_secs_f64());
        tracing::debug!(
            upgrade = %self.info.upgrade,
            mode,
            end = %stats.end,
            upstream_bytes = stats.upstream_bytes,
            downstream_bytes = stats.downstream_bytes,
            duration_s = elapsed.as_secs_f64(),
            "tunnel closed"
        );
        if let Some(o) = &self.observer {
            o.notify(&TunnelEvent::Closed(&self.info, &stats, elapsed));
        }
    }
}
