//! What every tunnel reports: metrics, a debug log line and observer events, from the moment
//! bytes may flow to the end.

use std::sync::Arc;
use std::time::Instant;

use super::{TunnelEvent, TunnelObserver, TunnelStats};
use crate::metrics::{self, TunnelKeys, counter, gauge, histogram};
use crate::tunnel_info::TunnelInfo;

/// Metrics, logs and observer calls of one open tunnel, from opening to closing.
pub(crate) struct Opened {
    info: TunnelInfo,
    observer: Option<TunnelObserver>,
    start: Instant,
    keys: Arc<TunnelKeys>,
}

impl Opened {
    pub(crate) fn new(info: TunnelInfo, observer: Option<TunnelObserver>) -> Self {
        let keys = TunnelKeys::of(&info.upgrade);
        counter(keys.opened(info.mode)).increment(1);
        gauge(keys.active(info.mode)).increment(1.0);
        tracing::debug!(upgrade = %info.upgrade, mode = info.mode.as_str(), path = %info.path, "tunnel open");
        if let Some(o) = &observer {
            o.notify(&TunnelEvent::Opened(&info));
        }
        Self {
            info,
            observer,
            start: Instant::now(),
            keys,
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
        let (keys, elapsed) = (&self.keys, self.start.elapsed());
        gauge(keys.active(self.info.mode)).decrement(1.0);
        counter(&keys.bytes[0]).increment(stats.upstream_bytes);
        counter(&keys.bytes[1]).increment(stats.downstream_bytes);
        histogram(keys.duration(stats.end)).record(elapsed.as_secs_f64());
        if ty.is_websocket() {
            counter(&keys.messages[0]).increment(stats.upstream_messages);
            counter(&keys.messages[1]).increment(stats.downstream_messages);
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
