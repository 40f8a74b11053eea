//! A cluster with `http2_protocol_options: {}` through the binary: WebSockets from HTTP/1.1
//! clients become RFC 8441 streams on one upstream connection per worker, and the access log
//! names both legs' protocols.

use super::*;
use support::h2_upstream::h2_server;

#[tokio::test]
async fn websockets_share_one_http2_upstream_connection_from_yaml() {
    let dir = TempDir::new("h2-upstream");
    let server = h2_server(1000, true).await;
    let log = dir.path("access.jsonl");
    let file = dir.write(
        "h2.yaml",
        &format!(
            "listen: 127.0.0.1:0\nworkers: 2\naccess_log: {}\n\
             upgrade_configs: [{{ upgrade_type: websocket }}]\n\
             routes: [{{ match: {{ prefix: / }}, cluster: app }}]\n\
             clusters:\n  - name: app\n    http2_protocol_options: {{}}\n    endpoints: [\"{}\"]\n",
            log.display(),
            server.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let mut tunnels = Vec::new();
    for i in 0..100 {
        let (mut ws, res) = ws_connect(format!("ws://{listen}/chat")).await;
        assert_eq!(res.status(), 101);
        ws_roundtrip(&mut ws, Message::text(format!("tunnel {i}"))).await;
        tunnels.push(ws);
    }
    // Each worker keeps its own pool, as Envoy's workers do: one connection per worker.
    let connections = server.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&connections),
        "100 tunnels on 2 workers took {connections} upstream connections"
    );
    let ws = tunnels.pop().unwrap();
    ws_close(ws).await;
    let close = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(close["protocol"], "HTTP/1.1", "{close}");
    assert_eq!(close["upstream_protocol"], "HTTP/2", "{close}");
    assert_eq!(close["upstream"], server.addr.to_string(), "{close}");

    // A plain request goes as HTTP/2 too, and says so.
    let reply = within("a plain request", async {
        let mut c = raw_client(
            listen,
            b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).await.unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    })
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("HTTP/2.0"),
        "{reply}"
    );
    let line = wait_log_line(&log, "request", Some("/plain")).await;
    assert_eq!(line["upstream_protocol"], "HTTP/2", "{line}");
}
