//! What every tunnel reports: metrics, a debug log line and observer events, from the moment
//! bytes may flow to the end.

use std::time::Instant;

use super::{TunnelEvent, TunnelObserver, TunnelStats};
use crate::metrics;
use crate::tunnel_info::TunnelInfo;

/// Metrics, logs and observer calls of one open tunnel, from opening to closing.
pub(crate) struct Opened {
    info: TunnelInfo,
    observer: Option<TunnelObserver>,
    start: Instant,
}

impl Opened {
    pub(crate) fn new(info: TunnelInfo, observer: Option<TunnelObserver>) -> Self {
        // Labels share the type's text: a tunnel's metrics cost no string copies.
        let (ty, mode) = (&info.upgrade, info.mode.as_str());
        ::metrics::counter!(metrics::TUNNELS_OPENED, "type" => ty.label(), "mode" => mode).increment(1);
        ::metrics::gauge!(metrics::TUNNELS_ACTIVE, "type" => ty.label(), "mode" => mode).increment(1.0);
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

    /// The span of the tunnel's request, when it has one.
    pub(crate) fn span(&self) -> Option<tracing::Span> {
        self.info
            .trace
            .as_ref()
            .and_then(crate::trace::TraceContext::span)
    }

    pub(crate) fn finish(self, stats: TunnelStats) {
        let (ty, mode) = (&self.info.upgrade, self.info.mode.as_str());
        let elapsed = self.start.elapsed();
        ::metrics::gauge!(metrics::TUNNELS_ACTIVE, "type" => ty.label(), "mode" => mode).decrement(1.0);
        ::metrics::counter!(metrics::TUNNEL_BYTES, "type" => ty.label(), "direction" => "upstream")
            .increment(stats.upstream_bytes);
        ::metrics::counter!(metrics::TUNNEL_BYTES, "type" => ty.label(), "direction" => "downstream")
            .increment(stats.downstream_bytes);
        ::metrics::histogram!(metrics::TUNNEL_DURATION, "type" => ty.label(), "end" => stats.end.as_str())
            .record(elapsed.as_secs_f64());
        if ty.is_websocket() {
            ::metrics::counter!(metrics::WEBSOCKET_MESSAGES, "type" => ty.label(), "direction" => "upstream")
                .increment(stats.upstream_messages);
            ::metrics::counter!(metrics::WEBSOCKET_MESSAGES, "type" => ty.label(), "direction" => "downstream")
                .increment(stats.downstream_messages);
            if let Some(close) = stats.close {
                let code = metrics::close_code_label(close.code);
                ::metrics::counter!(metrics::WEBSOCKET_CLOSES, "by" => close.by.as_str(), "code" => code)
                    .increment(1);
            }
        }
        tracing::debug!(
            upgrade = %self.info.upgrade,
            mode,
            end = %stats.end,
            upstream_bytes = stats.upstream_bytes,
            downstream_bytes = stats.downstream_bytes,
            upstream_messages = stats.upstream_messages,
            downstream_messages = stats.downstream_messages,
            close_code = stats.close.and_then(|c| c.code),
            duration_s = elapsed.as_secs_f64(),
            "tunnel closed"
        );
        if let Some(span) = self
            .info
            .trace
            .as_ref()
            .and_then(crate::trace::TraceContext::end_span)
        {
            crate::trace::record_tunnel_end(&span, &stats, ty.is_websocket());
        }
        if let Some(o) = &self.observer {
            o.notify(&TunnelEvent::Closed(&self.info, &stats, elapsed));
        }
    }
}
