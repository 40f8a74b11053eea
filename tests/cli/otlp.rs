//! The `tracing:` block through the binary: a fake OTLP collector receives a WebSocket
//! session's span under the ids the upstream was told, and a collector that never answers
//! costs no request and no memory beyond the export queue.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AttrValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use super::*;
use support::{header, read_n};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector on loopback: every `POST /v1/traces` body decoded, with the
/// service name of its resource.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, Span)>>>);

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = Self::default();
        let spans = this.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let spans = spans.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let spans = spans.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        for rs in export.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|kv| kv.key == "service.name")
                                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                    AttrValue::StringValue(s) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    spans.0.lock().unwrap().push((service.clone(), span));
                                }
                            }
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                            bytes::Bytes,
                        >::new(
                        )))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        (this, addr)
    }

    /// Waits for a span of trace `trace` (hex).
    async fn span_of(&self, trace: &str) -> (String, Span) {
        within("a span at the collector", async {
            loop {
                if let Some(found) = self
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, s)| hex(&s.trace_id) == trace)
                {
                    return found.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span attribute, as text.
fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AttrValue::StringValue(s) => s.clone(),
        AttrValue::IntValue(i) => i.to_string(),
        AttrValue::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test]
async fn a_websocket_sessions_span_reaches_the_collector_under_the_clients_trace() {
    let dir = TempDir::new("otlp-span");
    let (collector, collector_addr) = Collector::start().await;
    let raw = RawUpstream::bind().await;
    let log = dir.path("access.log");
    let file = dir.write(
        "otlp.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\nupgrade_configs:\n  - upgrade_type: websocket\n\
             tracing:\n  otlp_endpoint: http://{collector_addr}\n  service_name: edge-test\n  sampling: 0\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: up\n\
             clusters:\n  - name: up\n    endpoints: [{}]\n",
            log.display(),
            raw.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let req = format!(
        "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         traceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\n\r\n"
    );
    let mut client = raw_client(listen, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    let sent = header(&head, "traceparent").unwrap().to_owned();
    assert!(
        sent.starts_with(&format!("00-{CLIENT_TRACE}-")) && sent.ends_with("-01"),
        "{sent}"
    );
    let proxy_span = &sent[36..52];
    assert_ne!(proxy_span, CLIENT_SPAN);
    up.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    .await
    .unwrap();
    let (res, _) = read_head(&mut client).await;
    assert!(res.starts_with("HTTP/1.1 101"), "{res}");
    // One text message up, one down, then the upstream closes with 1000.
    client
        .write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .unwrap();
    read_n(&mut up, Vec::new(), 8).await;
    up.write_all(&[0x81, 0x02, b'o', b'k', 0x88, 0x02, 0x03, 0xe8])
        .await
        .unwrap();
    read_n(&mut client, Vec::new(), 8).await;
    drop((client, up));

    let (service, span) = collector.span_of(CLIENT_TRACE).await;
    assert_eq!(service, "edge-test");
    assert_eq!(
        hex(&span.span_id),
        proxy_span,
        "the span the upstream was told of"
    );
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN);
    assert_eq!(span.name, "GET");
    assert_eq!(span.kind, 2, "server");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    for (key, want) in [
        ("http.request.method", "GET"),
        ("url.path", "/chat"),
        ("http.route", "routes[0]"),
        ("http.response.status_code", "101"),
        ("switchback.upgrade", "websocket"),
        ("switchback.upstream", &raw.addr.to_string()),
        ("switchback.tunnel.bytes_received", "8"),
        ("switchback.tunnel.bytes_sent", "8"),
        ("websocket.messages_received", "1"),
        ("websocket.messages_sent", "1"),
        ("websocket.close_code", "1000"),
    ] {
        assert_eq!(attr(&span, key).as_deref(), Some(want), "{key} in {span:?}");
    }
    let end = attr(&span, "switchback.tunnel.end");
    assert!(
        matches!(end.as_deref(), Some("client_close" | "upstream_close")),
        "{end:?}"
    );
    let events: Vec<_> = span.events.iter().map(|e| e.name.as_str()).collect();
    assert!(
        events.contains(&"upstream answered") && events.contains(&"tunnel closed"),
        "{events:?}"
    );
    let line = wait_log_line(&log, "tunnel_close", Some("/chat")).await;
    assert_eq!(line["trace_id"], CLIENT_TRACE);

    // A new trace, not sampled (sampling 0): told to the upstream as such, never exported.
    let mut client = raw_client(listen, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    let sent = header(&head, "traceparent").unwrap().to_owned();
    assert!(sent.ends_with("-00"), "{sent}");
    up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
    read_head(&mut client).await;
    let line = wait_log_line(&log, "request", Some("/plain")).await;
    assert_eq!(line["trace_id"], sent[3..35]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let exported = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(_, s)| hex(&s.trace_id) == sent[3..35]);
    assert!(!exported, "an unsampled trace is not exported");
}

/// A collector that takes connections and never answers: every request is still served, the
/// spans that don't fit the queue are counted as dropped, and memory stays within the queue.
#[tokio::test]
async fn a_collector_that_never_answers_costs_no_request_and_no_memory() {
    let dir = TempDir::new("otlp-down");
    // Bound, never accepted: connections sit in the backlog and get no answer.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = http_upstream("app").await;
    let file = dir.write(
        "otlp.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: /dev/null\n\
             tracing: {{ otlp_endpoint: \"http://{}\" }}\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: app\n\
             clusters:\n  - name: app\n    endpoints: [{upstream}]\n",
            black_hole.local_addr().unwrap()
        ),
    );
    let (proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let serve = |n: usize| async move {
        for _ in 0..n {
            assert_eq!(http(listen, "GET", "/", &[], b"").await.status, 200);
        }
    };
    // The first rounds fill the queue and every pool; then memory must stay level while the
    // spans keep coming (each ~1 KiB, so a leak of the dropped ones would be megabytes).
    serve(6000).await;
    serve(6000).await;
    let rss_before = client_input::rss_kib(proxy.child.id());
    serve(6000).await;
    let rss_after = client_input::rss_kib(proxy.child.id());
    let metrics = http(admin, "GET", "/metrics", &[], b"").await.body;
    let dropped = metric(&metrics, "switchback_trace_spans_dropped_total", &[]);
    assert!(
        dropped >= 18_000.0 - 4.0 * 4096.0,
        "dropped {dropped}:\n{metrics}"
    );
    assert!(
        rss_after < rss_before + 2048,
        "RSS grew from {rss_before} KiB to {rss_after} KiB with the collector silent"
    );
}
