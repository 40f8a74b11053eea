//! Trace context over real sockets: what the upstream is told (`traceparent`, `tracestate`) on
//! plain requests, upgrades and legacy routes, and the span each request and tunnel records.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use support::*;
use switchback::trace::TraceContextLayer;
use switchback::{Drain, Forward, LegacyConfig, Route, RouteLayer, Runtime, UpgradeRouterLayer};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The fields of every closed `switchback::trace` span, and its events' messages.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<HashMap<String, String>>>>);

struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != switchback::trace::TARGET {
            return;
        }
        let mut fields = Fields(HashMap::new());
        attrs.record(&mut fields);
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(f) = ctx.span(id).unwrap().extensions_mut().get_mut::<Fields>() {
            values.record(f);
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else { return };
        let mut msg = Fields(HashMap::new());
        event.record(&mut msg);
        if let Some(f) = span.extensions_mut().get_mut::<Fields>() {
            let events = f.0.entry("events".into()).or_default();
            events.push_str(msg.0.get("message").map_or("", String::as_str));
            events.push(';');
        }
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(f) = ctx.span(&id).unwrap().extensions_mut().remove::<Fields>() {
            self.0.lock().unwrap().push(f.0);
        }
    }
}

impl Spans {
    /// Waits for the `n`th closed span.
    async fn closed(&self, n: usize) -> HashMap<String, String> {
        within(async {
            loop {
                if let Some(s) = self.0.lock().unwrap().get(n - 1) {
                    return s.clone();
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
    }
}

fn capture() -> (Spans, tracing::subscriber::DefaultGuard) {
    let spans = Spans::default();
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    (spans, guard)
}

/// A proxy with the trace layer in front of the router, optionally a legacy route.
async fn proxy(upstream: std::net::SocketAddr, legacy: bool) -> Proxy {
    proxy_with(upstream, legacy, Drain::new()).await
}

async fn proxy_with(upstream: std::net::SocketAddr, legacy: bool, drain: Drain) -> Proxy {
    let mut route = Route::prefix("/").cluster(cluster(upstream)).name("chat");
    if legacy {
        route = route.use_websocket(LegacyConfig::new());
    }
    let stack = ServiceBuilder::new()
        .layer(TraceContextLayer::new())
        .layer(RouteLayer::new(vec![route], Runtime::new()).unwrap())
        .layer(
            UpgradeRouterLayer::builder()
                .upgrade("websocket")
                .drain(drain)
                .build()
                .unwrap(),
        )
        .service(Forward::routed());
    start(stack).await
}

#[tokio::test]
async fn a_plain_request_continues_the_clients_trace() {
    let (spans, _guard) = capture();
    let raw = RawUpstream::bind().await;
    let proxy = proxy(raw.addr, false).await;
    let req = format!(
        "GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\n\
         tracestate: vendor=abc\r\n\r\n"
    );
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    let sent = header(&head, "traceparent").unwrap().to_owned();
    assert_eq!(header(&head, "tracestate"), Some("vendor=abc"));
    up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
    let (res, _) = read_head(&mut client).await;
    assert_eq!(status(&res), 204);
    let span = spans.closed(1).await;
    assert_eq!(span["trace_id"], CLIENT_TRACE);
    assert_eq!(span["parent_span_id"], CLIENT_SPAN);
    assert_eq!(
        sent,
        format!("00-{CLIENT_TRACE}-{}-01", span["span_id"]),
        "the proxy's span is the parent"
    );
    assert_ne!(span["span_id"], CLIENT_SPAN);
    assert_eq!(span["http.request.method"], "GET");
    assert_eq!(span["url.path"], "/a");
    assert_eq!(span["http.response.status_code"], "204");
    assert_eq!(span["switchback.upstream"], raw.addr.to_string());
    assert!(span["events"].contains("upstream answered"), "{span:?}");
}

#[tokio::test]
async fn a_malformed_traceparent_is_replaced_and_its_tracestate_dropped() {
    let (_spans, _guard) = capture();
    let raw = RawUpstream::bind().await;
    let proxy = proxy(raw.addr, false).await;
    for bad in [
        "00-zz-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\ntraceparent: {bad}\r\ntracestate: v=1\r\n\r\n");
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, _) = read_head(&mut up).await;
        let sent = header(&head, "traceparent").unwrap();
        assert_ne!(sent, bad);
        assert_eq!(sent.len(), 55, "{sent}");
        assert!(
            sent.starts_with("00-") && sent.ends_with("-01"),
            "a new, sampled trace: {sent}"
        );
        assert_eq!(header(&head, "tracestate"), None);
        up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        read_head(&mut client).await;
    }
    // None at all: a new trace too.
    let mut client = raw_client(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert_eq!(header(&head, "traceparent").unwrap().len(), 55);
    up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
    read_head(&mut client).await;
}

/// A WebSocket tunnel on a new-style and on a legacy route: the upstream's handshake carries
/// the trace, and the span lasts to the tunnel's end and records it.
#[tokio::test]
async fn a_tunnels_span_ends_with_the_tunnel_and_records_it() {
    for legacy in [false, true] {
        let (spans, _guard) = capture();
        let raw = RawUpstream::bind().await;
        let proxy = proxy(raw.addr, legacy).await;
        let req = format!(
            "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\
             traceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\n\r\n"
        );
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, _) = read_head(&mut up).await;
        let sent = header(&head, "traceparent").unwrap().to_owned();
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        );
        up.write_all(answer.as_bytes()).await.unwrap();
        read_head(&mut client).await;
        // One masked text message up, then the upstream closes with 1000 and both sides go.
        client
            .write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
            .await
            .unwrap();
        let mut got = [0; 8];
        within(up.read_exact(&mut got)).await.unwrap();
        up.write_all(&[0x88, 0x02, 0x03, 0xe8]).await.unwrap();
        let mut close = [0; 4];
        within(client.read_exact(&mut close)).await.unwrap();
        drop((client, up));
        let span = spans.closed(1).await;
        let case = if legacy { "legacy" } else { "new style" };
        assert_eq!(span["trace_id"], CLIENT_TRACE, "{case}");
        assert_eq!(
            sent,
            format!("00-{CLIENT_TRACE}-{}-01", span["span_id"]),
            "{case}"
        );
        assert_eq!(span["http.response.status_code"], "101", "{case}");
        assert_eq!(span["switchback.upgrade"], "websocket", "{case}");
        assert_eq!(
            span["switchback.tunnel.mode"],
            if legacy { "legacy" } else { "joined" }
        );
        assert_eq!(span["http.route"], "chat", "{case}");
        assert_eq!(span["switchback.tunnel.bytes_received"], "8", "{case}");
        assert_eq!(span["switchback.tunnel.bytes_sent"], "4", "{case}");
        assert_eq!(span["websocket.messages_received"], "1", "{case}");
        assert_eq!(span["websocket.close_code"], "1000", "{case}");
        assert!(span["events"].contains("tunnel closed"), "{case}: {span:?}");
    }
}

#[tokio::test]
async fn a_drain_is_an_event_on_the_tunnels_span() {
    let (spans, _guard) = capture();
    let echo = ws_echo().await;
    let drain = Drain::new();
    let proxy = proxy_with(echo.addr, false, drain.clone()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    within(ws.next()).await.unwrap().unwrap();
    let outcome = drain.drain(std::time::Duration::from_millis(200)).await;
    assert_eq!(outcome.closed, 1);
    loop {
        match within(ws.next()).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    drop(ws);
    let span = spans.closed(1).await;
    assert!(span["events"].contains("drain: closing the tunnel"), "{span:?}");
    assert_eq!(span["websocket.close_code"], "1001");
    assert_eq!(span["switchback.tunnel.end"], "drain");
}
