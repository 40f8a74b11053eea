//! CONNECT through the binary, from YAML: terminate mode (`connect_config`) against a raw TCP
//! upstream, proxy mode against an upstream proxy, Envoy's answers to the bad forms, HTTP/2
//! CONNECT streams, and curl's own CONNECT tunnel (`curl -p -x`).

use super::*;

const CONNECT: &[u8] = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";

/// A config whose first route terminates CONNECT to `terminate` and whose second forwards
/// CONNECTs carrying `x-forward: 1` to `forward` (an upstream proxy); CONNECT is enabled at
/// listener level. Plain requests match no route.
fn connect_config(dir: &TempDir, terminate: SocketAddr, forward: SocketAddr, log: &Path) -> PathBuf {
    dir.write(
        "connect.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\n\
             upgrade_configs: [{{ upgrade_type: CONNECT }}]\n\
             routes:\n\
             \x20 - match: {{ connect_matcher: {{}}, headers: [{{ name: x-forward, exact: \"1\" }}] }}\n\
             \x20   cluster: proxy\n\
             \x20 - match: {{ connect_matcher: {{}} }}\n\
             \x20   cluster: tcp\n\
             \x20   upgrade_configs: [{{ upgrade_type: CONNECT, connect_config: {{}} }}]\n\
             clusters:\n\
             \x20 - {{ name: tcp, endpoints: [\"{terminate}\"] }}\n\
             \x20 - {{ name: proxy, endpoints: [\"{forward}\"] }}\n",
            log.display()
        ),
    )
}

#[tokio::test]
async fn terminate_mode_from_yaml_relays_raw_tcp_and_logs_the_tunnel() {
    let dir = TempDir::new("connect-terminate");
    let echo = support::echo_then_bye().await;
    let proxy_up = RawUpstream::bind().await;
    let log = dir.path("access.jsonl");
    let file = connect_config(&dir, echo, proxy_up.addr, &log);
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    let mut client = raw_client(listen, &[CONNECT, b"early "].concat()).await;
    let (head, rest) = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    client.write_all(b"payload").await.unwrap();
    let echoed = support::read_n(&mut client, rest, 13).await;
    assert_eq!(echoed, b"early payload");
    client.shutdown().await.unwrap();
    assert_eq!(support::read_to_eof(&mut client).await, b"bye");

    let close = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(close["method"], "CONNECT", "{close}");
    assert_eq!(close["path"], "example.com:443", "{close}");
    assert_eq!(close["status"], 200, "{close}");
    assert_eq!(close["upgrade"], "connect", "{close}");
    assert_eq!(close["route"], "routes[1]", "{close}");
    assert_eq!(close["upstream"], echo.to_string(), "{close}");
    assert_eq!(close["bytes_received"], 13, "{close}");
    assert_eq!(close["bytes_sent"], 16, "{close}");
    proxy_up.assert_untouched("a terminated CONNECT").await;
}

#[tokio::test]
async fn proxy_mode_from_yaml_holds_early_bytes_and_relays_refusals() {
    let dir = TempDir::new("connect-proxy");
    let echo = support::echo_then_bye().await;
    let up = RawUpstream::bind().await;
    let log = dir.path("access.jsonl");
    let file = connect_config(&dir, echo, up.addr, &log);
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let forwarded = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nx-forward: 1\r\n\r\n";

    // A 200 opens the tunnel; what the client sent early waits for it.
    let mut client = raw_client(listen, &[&forwarded[..], b"early"].concat()).await;
    let mut conn = up.accept().await;
    let (head, rest) = read_head(&mut conn).await;
    assert!(head.starts_with("CONNECT example.com:443 HTTP/1.1\r\n"), "{head}");
    assert!(rest.is_empty(), "{rest:?}");
    let mut buf = [0u8; 8];
    let early = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
    assert!(early.is_err(), "bytes went ahead of the answer: {early:?}");
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(support::read_n(&mut conn, Vec::new(), 5).await, b"early");

    // A 407 is relayed; nothing tunnels, and the client's connection closes.
    let mut client = raw_client(
        listen,
        &[&forwarded[..], b"GET /smuggled HTTP/1.1\r\n\r\n"].concat(),
    )
    .await;
    let mut conn = up.accept().await;
    let _ = read_head(&mut conn).await;
    conn.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    support::read_to_eof(&mut client).await;
    let after = support::read_to_eof(&mut conn).await;
    assert!(after.is_empty(), "{:?}", String::from_utf8_lossy(&after));
}

#[tokio::test]
async fn bad_connects_from_yaml_get_envoys_answers() {
    let dir = TempDir::new("connect-bad");
    let up = RawUpstream::bind().await;
    // CONNECT enabled nowhere, one path route and one CONNECT route.
    let file = dir.write(
        "connect.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: /dev/null\n\
             routes:\n\
             \x20 - match: {{ connect_matcher: {{}}, headers: [{{ name: x-enabled }}] }}\n\
             \x20   cluster: tcp\n\
             \x20   upgrade_configs: [{{ upgrade_type: CONNECT, connect_config: {{}} }}]\n\
             \x20 - match: {{ connect_matcher: {{}}, headers: [{{ name: x-disabled }}] }}\n\
             \x20   cluster: tcp\n\
             \x20 - match: {{ prefix: / }}\n\
             \x20   cluster: tcp\n\
             clusters: [{{ name: tcp, endpoints: [\"{}\"] }}]\n",
            up.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let cases: [(&[u8], u16); 5] = [
        (
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nx-enabled: 1\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),
        (
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nx-enabled: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 404),
        (
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nx-disabled: 1\r\n\r\n",
            403,
        ),
        (b"CONNECT a.example HTTP/1.1\r\nHost: a.example\r\nx-enabled: 1\r\n\r\n", 400),
    ];
    for (request, expected) in cases {
        let mut client = raw_client(
            listen,
            &[request, b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"].concat(),
        )
        .await;
        let (head, _) = read_head(&mut client).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {expected} ")),
            "{expected}: {head}"
        );
        // The connection closes: the smuggled request is never read.
        let rest = support::read_to_eof(&mut client).await;
        assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1"), "{rest:?}");
    }
    up.assert_untouched("a refused CONNECT").await;
}

#[tokio::test]
async fn http2_connect_streams_through_the_binary() {
    let dir = TempDir::new("connect-h2");
    let echo = support::echo_then_bye().await;
    let up = RawUpstream::bind().await;
    let log = dir.path("access.jsonl");
    let file = connect_config(&dir, echo, up.addr, &log);
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    let tcp = TcpStream::connect(listen).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..2 {
        let req = http::Request::connect("example.com:443")
            .version(http::Version::HTTP_2)
            .body(http_body_util::Empty::new())
            .unwrap();
        let mut res = within("the CONNECT's answer", sender.clone().send_request(req))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let upgraded = within("the stream", hyper::upgrade::on(&mut res)).await.unwrap();
        streams.push(hyper_util::rt::TokioIo::new(upgraded));
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("stream {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        assert_eq!(support::read_n(s, Vec::new(), msg.len()).await, msg.as_bytes());
    }
    let mut first = streams.remove(0);
    first.shutdown().await.unwrap();
    assert_eq!(support::read_to_eof(&mut first).await, b"bye");
    streams[0].write_all(b"on").await.unwrap();
    assert_eq!(support::read_n(&mut streams[0], Vec::new(), 2).await, b"on");

    let close = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(close["protocol"], "HTTP/2", "{close}");
    assert_eq!(close["method"], "CONNECT", "{close}");
}

/// curl's own CONNECT tunnel (`-p -x`), the way operators try an egress proxy: curl asks for
/// a tunnel to the target and speaks HTTP to whatever is at its end, here the route's cluster.
#[tokio::test]
async fn curl_tunnels_through_terminate_mode() {
    let Some(curl) = support::peer_tool("curl") else {
        return;
    };
    let dir = TempDir::new("connect-curl");
    let web = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = web.accept().await {
            tokio::spawn(async move {
                let (head, _) = read_head(&mut s).await;
                let body = head.lines().next().unwrap_or_default().to_owned();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    let up = RawUpstream::bind().await;
    let file = connect_config(&dir, web_addr, up.addr, &dir.path("access.jsonl"));
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    // Off the test's one thread, which also serves the web upstream.
    let curl = move || {
        Command::new(curl)
            .args(["-sS", "--max-time", "10", "-p", "-x"])
            .arg(format!("http://{listen}"))
            .arg("http://target.example:8080/hello")
            .output()
    };
    let out = within("curl", tokio::task::spawn_blocking(curl))
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "GET /hello HTTP/1.1");
}
