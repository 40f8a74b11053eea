//! Distributed tracing: W3C trace context (`traceparent`, `tracestate`) through every request
//! and tunnel, and a `tracing` span per request named and attributed by OpenTelemetry's HTTP
//! conventions. [`TraceContextLayer`] does both.
//!
//! ```
//! use switchback::trace::{TraceContext, TraceContextLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     // Outermost but for `ForwardedLayer`: every request, plain or upgrade, gets a context.
//!     .layer(TraceContextLayer::new().sampling(10.0))
//!     .service_fn(|req: http::Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(req))
//!     });
//! let req = http::Request::builder()
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(())
//!     .unwrap();
//! let upstream_sees = svc.oneshot(req).await.unwrap().into_body();
//! let ctx = upstream_sees.extensions().get::<TraceContext>().unwrap();
//! // The client's trace, with the proxy's span as the parent of what comes next.
//! assert_eq!(ctx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(ctx.parent_span_id().unwrap().to_string(), "00f067aa0ba902b7");
//! let sent = upstream_sees.headers()["traceparent"].to_str().unwrap();
//! assert_eq!(sent, format!("00-{}-{}-01", ctx.trace_id(), ctx.span_id()));
//! # }
//! ```
//!
//! The span (target `switchback::trace`, name `request`) lasts from the request to its
//! response, or for an upgrade to the tunnel's end, and carries the trace ids as fields
//! (`trace_id`, `span_id`, `parent_span_id`, `trace.sampled`) so that an exporter can send
//! it under the ids the upstream was told. Without a subscriber that wants it, it costs a
//! disabled span; the context itself (two random ids, one header) is always propagated.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::field::{Empty, display};

use crate::ext::UpstreamAddr;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `tracing` target of Switchback's spans and their events.
pub const TARGET: &str = "switchback::trace";

/// A trace's id: 16 bytes, never all zero; shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, never all zero; shown as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// `bytes` as lowercase hex digits into `out` (twice as long): a table, not `fmt`, as this
/// runs on every request (a `{:02x}` per byte cost some 4 000 instructions an id).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, hex: &[u8]) -> fmt::Result {
    f.write_str(std::str::from_utf8(hex).map_err(|_| fmt::Error)?)
}

impl TraceId {
    /// The id as 32 lowercase hex digits (ASCII), as `traceparent` and logs write it.
    pub fn to_hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        out
    }
}

impl SpanId {
    /// The id as 16 lowercase hex digits (ASCII).
    pub fn to_hex(&self) -> [u8; 16] {
        let mut out = [0; 16];
        hex_into(&self.0, &mut out);
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.to_hex())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.to_hex())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// A request's place in a trace, in its extensions (and in its tunnel's
/// [`TunnelInfo`](crate::TunnelInfo)): the trace, the proxy's span in it, the client's span
/// (the parent), whether the trace is sampled, and the `tracing` span that records it.
#[derive(Clone, Debug)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    /// Shared by every copy of the context, so the span ends when the request does (or its
    /// tunnel), whoever still holds a copy (a retry's request, a pooled connection).
    span: Arc<Mutex<Option<tracing::Span>>>,
}

impl TraceContext {
    /// The trace: the client's, or a new one when it sent no valid `traceparent`.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The proxy's span: the parent the upstream is told of.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The client's span, when it sent a valid `traceparent`.
    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.parent
    }

    /// Whether the trace is sampled: the client's flag, or the sampling decision for a new
    /// trace.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The `traceparent` the upstream gets.
    pub fn traceparent(&self) -> HeaderValue {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        text[3..35].copy_from_slice(&self.trace_id.to_hex());
        text[36..52].copy_from_slice(&self.span_id.to_hex());
        if self.sampled {
            text[54] = b'1';
        }
        HeaderValue::from_bytes(&text).expect("hex digits and dashes are a valid header value")
    }

    /// The `tracing` span of the request (and its tunnel), until it has ended.
    pub fn span(&self) -> Option<tracing::Span> {
        self.slot().clone()
    }

    /// Ends the span (for every copy of the context).
    pub(crate) fn end_span(&self) -> Option<tracing::Span> {
        self.slot().take()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<tracing::Span>> {
        self.span
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a valid incoming `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parent {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

/// Lowercase hex digits into `out`, or `None` if `text` is not exactly that.
fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value by W3C Trace Context level 1: `None` for anything invalid
/// (which is then replaced, never forwarded).
fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    // version "-" trace-id "-" parent-id "-" flags; a later version may append "-" fields.
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let [version] = hex::<1>(&value[..2])?;
    if version == 0xff || (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let trace_id = hex::<16>(&value[3..35])?;
    let span_id = hex::<8>(&value[36..52])?;
    let [flags] = hex::<1>(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        sampled: flags & 1 == 1,
    })
}

/// A random id that is not all zeros.
fn random_id<const N: usize>() -> [u8; N]
where
    rand::distr::StandardUniform: rand::distr::Distribution<[u8; N]>,
{
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

/// Gives every request a [`TraceContext`]: continues the client's trace from a valid
/// `traceparent` (keeping its `tracestate`), or starts one (dropping a malformed
/// `traceparent` and any `tracestate` with it); sends the upstream `traceparent` with the
/// proxy's span as parent; and runs the request in a span (see the [module docs](self)).
///
/// New traces are sampled at [`sampling`](Self::sampling) percent (default 100, as Envoy's
/// `random_sampling`); a client's sampled flag always wins.
#[derive(Debug, Clone, Copy)]
pub struct TraceContextLayer {
    /// New traces sampled per million.
    per_million: u32,
}

impl Default for TraceContextLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceContextLayer {
    /// Every new trace sampled.
    pub fn new() -> Self {
        Self {
            per_million: 1_000_000,
        }
    }

    /// Samples this percent of new traces (0 to 100; out-of-range values are clamped).
    pub fn sampling(mut self, percent: f64) -> Self {
        let percent = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 100.0)
        };
        self.per_million = (percent * 10_000.0).round() as u32;
        self
    }

    fn decide(&self) -> bool {
        self.per_million >= 1_000_000 || rand::random::<u32>() % 1_000_000 < self.per_million
    }

    /// The context of `req`, with its headers set for the upstream.
    fn start<B>(&self, req: &mut Request<B>) -> TraceContext {
        let headers = req.headers_mut();
        let mut values = headers.get_all(TRACEPARENT).iter();
        let parent = match (values.next(), values.next()) {
            (Some(one), None) => parse_traceparent(one.as_bytes()),
            _ => None,
        };
        if parent.is_none() {
            headers.remove(TRACESTATE);
        }
        let (trace_id, parent_span, sampled) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
            None => (TraceId(random_id()), None, self.decide()),
        };
        let span_id = SpanId(random_id());
        let span = tracing::info_span!(
            target: TARGET,
            "request",
            otel.name = %req.method(),
            otel.kind = "server",
            http.request.method = %req.method(),
            url.path = req.uri().path(),
            network.protocol.version = ?req.version(),
            http.route = Empty,
            http.response.status_code = Empty,
            trace_id = %trace_id,
            span_id = %span_id,
            parent_span_id = Empty,
            trace.sampled = sampled,
            switchback.upgrade = Empty,
            switchback.upstream = Empty,
            switchback.tunnel.mode = Empty,
            switchback.tunnel.end = Empty,
            switchback.tunnel.bytes_received = Empty,
            switchback.tunnel.bytes_sent = Empty,
            websocket.close_code = Empty,
            websocket.messages_received = Empty,
            websocket.messages_sent = Empty,
        );
        if let Some(p) = parent_span {
            span.record("parent_span_id", display(p));
        }
        let ctx = TraceContext {
            trace_id,
            span_id,
            parent: parent_span,
            sampled,
            span: Arc::new(Mutex::new(Some(span))),
        };
        req.headers_mut().insert(TRACEPARENT, ctx.traceparent());
        ctx
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner, layer: *self }
    }
}

/// The service of [`TraceContextLayer`].
#[derive(Debug, Clone)]
pub struct TraceContextService<S> {
    inner: S,
    layer: TraceContextLayer,
}

impl<S, B, ResB> Service<Request<B>> for TraceContextService<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ctx = self.layer.start(&mut req);
        let span = ctx.span().unwrap_or_else(tracing::Span::none);
        req.extensions_mut().insert(ctx.clone());
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture { fut, span, ctx }
    }
}

pin_project! {
    /// The response future of [`TraceContextService`]: polls in the request's span and
    /// records the answer.
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        span: tracing::Span,
        ctx: TraceContext,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let out = ready!(this.fut.poll(cx));
        // A tunnel's span goes on to its end (the tunnel ends it); any other ends here.
        let tunnel = matches!(&out, Ok(res) if res.extensions().get::<crate::TunnelHandle>().is_some());
        if !tunnel {
            this.ctx.end_span();
        }
        if let Ok(res) = &out
            && !this.span.is_disabled()
        {
            let status = res.status().as_u16();
            this.span.record("http.response.status_code", status);
            match res.extensions().get::<UpstreamAddr>() {
                Some(addr) => {
                    this.span.record("switchback.upstream", addr.0.as_str());
                    tracing::debug!(target: TARGET, status, "upstream answered");
                }
                None => tracing::debug!(target: TARGET, status, "local reply"),
            }
        }
        Poll::Ready(out)
    }
}

/// Records a tunnel's end on its request's span (which closes when the tunnel's last
/// reference to it goes).
pub(crate) fn record_tunnel_end(span: &tracing::Span, stats: &crate::TunnelStats, websocket: bool) {
    if span.is_disabled() {
        return;
    }
    span.record("switchback.tunnel.end", stats.end.as_str());
    span.record("switchback.tunnel.bytes_received", stats.upstream_bytes);
    span.record("switchback.tunnel.bytes_sent", stats.downstream_bytes);
    if websocket {
        span.record("websocket.messages_received", stats.upstream_messages);
        span.record("websocket.messages_sent", stats.downstream_messages);
        if let Some(code) = stats.close.and_then(|c| c.code) {
            span.record("websocket.close_code", code);
        }
    }
    tracing::debug!(target: TARGET, parent: span, end = stats.end.as_str(), "tunnel closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
        // Flags other than the sampled bit are not ours to pass on: bit 0 decides.
        for (flags, sampled) in [("03", true), ("ff", true), ("02", false)] {
            let v = VALID.replace("-01", &format!("-{flags}"));
            assert_eq!(
                parse_traceparent(v.as_bytes()).unwrap().sampled,
                sampled,
                "{flags}"
            );
        }
        // A later version may carry more fields after a dash.
        let later = VALID.replacen("00-", "01-", 1) + "-extra";
        assert!(parse_traceparent(later.as_bytes()).is_some());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // 00 has no more
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ];
        for b in bad {
            assert_eq!(parse_traceparent(b.as_bytes()), None, "{b:?}");
        }
    }

    #[test]
    fn sampling_is_a_share_of_new_traces() {
        assert!((0..1000).all(|_| TraceContextLayer::new().decide()));
        assert!((0..1000).all(|_| !TraceContextLayer::new().sampling(0.0).decide()));
        assert!((0..1000).all(|_| !TraceContextLayer::new().sampling(f64::NAN).decide()));
        assert!((0..1000).all(|_| TraceContextLayer::new().sampling(1e9).decide()));
        let half = (0..10_000)
            .filter(|_| TraceContextLayer::new().sampling(50.0).decide())
            .count();
        assert!((4000..6000).contains(&half), "{half}");
    }

    #[test]
    fn a_context_continues_or_starts_a_trace() {
        let layer = TraceContextLayer::new().sampling(0.0);
        let mut req = Request::builder()
            .header("traceparent", VALID)
            .header("tracestate", "vendor=1")
            .body(())
            .unwrap();
        let ctx = layer.start(&mut req);
        assert_eq!(ctx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.sampled(), "the client's flag wins over sampling");
        assert_ne!(ctx.span_id(), ctx.parent_span_id().unwrap());
        assert_eq!(req.headers()["traceparent"], ctx.traceparent());
        assert_eq!(req.headers()["tracestate"], "vendor=1");
        // Malformed, or twice: a new trace, and its tracestate goes.
        for headers in [vec!["00-bad"], vec![VALID, VALID]] {
            let mut b = Request::builder();
            for h in &headers {
                b = b.header("traceparent", *h);
            }
            let mut req = b.header("tracestate", "vendor=1").body(()).unwrap();
            let ctx = layer.start(&mut req);
            assert_ne!(ctx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(ctx.parent_span_id(), None);
            assert!(!ctx.sampled());
            assert_eq!(req.headers().get_all("traceparent").iter().count(), 1);
            assert_eq!(req.headers()["traceparent"], ctx.traceparent());
            assert!(!req.headers().contains_key("tracestate"));
        }
    }
}
