//! The published upgrade-smuggling attacks, with the attacker's bytes over real sockets: the
//! WebSocket smuggling variants (0ang3el's websocket-smuggle), h2c smuggling (h2csmuggler),
//! framing conflicts on an upgrade request, and the payload shapes of Pingora's
//! CVE-2026-2833 and nghttpx's CVE-2026-58055.
//!
//! Every proxy here guards `/internal` and `/admin` with a filter in front of the upstream, as
//! the deployments these attacks target do: a smuggled request that reached the upstream would
//! have gone around it. Each test asserts what the upstream received and what the client got.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::convert::Infallible;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::{Service, ServiceBuilder};

use support::*;
use switchback::{Body, Forward, UpgradeRouterLayer};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The `Sec-WebSocket-Accept` for [`KEY`] (RFC 6455 §1.3).
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// What every attack below tries to get to the upstream unfiltered.
const SMUGGLED: &str = "GET /internal HTTP/1.1\r\nHost: a.example\r\n\r\n";

/// A proxy for `websocket` and `foo` upgrades whose chain refuses `/internal` and `/admin` with
/// a 403 before anything is sent upstream.
async fn guarded(upstream: std::net::SocketAddr) -> Proxy {
    let forward = Forward::new(cluster(upstream));
    let acl = tower::service_fn(move |req: http::Request<Body>| {
        let mut forward = forward.clone();
        async move {
            let path = req.uri().path();
            if path.starts_with("/internal") || path.starts_with("/admin") {
                let refused = http::Response::builder()
                    .status(403)
                    .header("content-length", "0")
                    .body(Body::empty())
                    .unwrap();
                return Ok::<_, Infallible>(refused);
            }
            forward.call(req).await
        }
    });
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .upgrade("foo")
        .build()
        .unwrap();
    start(ServiceBuilder::new().layer(router).service(acl)).await
}

/// Asserts nothing more arrives on `up`: it reads EOF or stays silent.
async fn assert_silent(up: &mut TcpStream, case: &str) {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(300), up.read(&mut buf)).await {
        Err(_) | Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "{case}: the upstream received {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// Asserts the proxy closed its side of `up` (EOF or reset), sending nothing first.
async fn assert_closed(up: &mut TcpStream, case: &str) {
    let rest = read_to_eof(up).await;
    assert!(
        rest.is_empty(),
        "{case}: the upstream received {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// websocket-smuggle, variant 1: an upgrade with a version the upstream does not speak. The
/// upstream answers `426`; the attacker then sends a second request on the same connection,
/// hoping the proxy opened a tunnel on seeing the upgrade. Switchback relays the `426` with
/// `Connection: close` and closes: the second request is read by no one, and the upstream
/// connection that saw the handshake gets nothing more.
#[tokio::test]
async fn websocket_smuggle_a_426_opens_no_tunnel() {
    let handshake = format!(
        "GET /socket.io/?EIO=3&transport=websocket HTTP/1.1\r\nHost: a.example\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 1337\r\n\
         Sec-WebSocket-Key: {KEY}\r\n\r\n"
    );
    // The smuggled request after the 426 (as the published exploit sends it), or pipelined
    // right behind the handshake.
    for pipelined in [false, true] {
        let case = if pipelined { "pipelined" } else { "after the 426" };
        let raw = RawUpstream::bind().await;
        let proxy = guarded(raw.addr).await;
        let first = if pipelined {
            format!("{handshake}{SMUGGLED}")
        } else {
            handshake.clone()
        };
        let mut client = raw_client(proxy.addr, first.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, extra) = read_head(&mut up).await;
        assert!(head.starts_with("GET /socket.io/"), "{case}: {head}");
        assert_eq!(header(&head, "sec-websocket-version"), Some("1337"), "{case}");
        assert!(
            extra.is_empty(),
            "{case}: smuggled bytes with the head: {extra:?}"
        );
        up.write_all(
            b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();

        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 426, "{case}: {head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{case}: {head}");
        assert!(header(&head, "upgrade").is_none(), "{case}: {head}");
        if !pipelined {
            // The peer may have closed already; a failed write is the expected outcome.
            let _ = client.write_all(SMUGGLED.as_bytes()).await;
        }
        let rest = read_to_eof(&mut client).await;
        assert!(
            rest.is_empty(),
            "{case}: the smuggled request was answered: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert_closed(&mut up, case).await;
        raw.assert_untouched(case).await;
    }
}

/// The same attack without `Connection: Upgrade`, as some write-ups send it: not an upgrade
/// at all. `Upgrade` is dropped, the request is served as plain HTTP on a kept-alive
/// connection, and the second request is parsed as a request of its own and meets the filter.
#[tokio::test]
async fn websocket_smuggle_without_connection_upgrade_is_plain_http() {
    let raw = RawUpstream::bind().await;
    let proxy = guarded(raw.addr).await;
    let req = "GET /socket.io/?EIO=3&transport=websocket HTTP/1.1\r\nHost: a.example\r\n\
               Sec-WebSocket-Version: 1337\r\nUpgrade: websocket\r\n\r\n";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(header(&head, "upgrade").is_none(), "{head}");
    up.write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 426, "{head}");
    assert!(header(&head, "connection").is_none(), "kept alive: {head}");

    client.write_all(SMUGGLED.as_bytes()).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 403, "the filter judged it: {head}");
    assert_silent(&mut up, "plain").await;
    raw.assert_untouched("plain").await;
}

/// websocket-smuggle, variant 2: the upstream answers `101` where it means no switch, such as
/// a health check that relays a status an attacker chose. Switchback opens a tunnel only on a
/// `101` that names the offered protocol in `Upgrade`, carries `Connection: upgrade` and, for
/// WebSocket with a key, the matching `Sec-WebSocket-Accept`. Anything else is a 502, the
/// connection closes, and the smuggled request never reaches the upstream.
#[tokio::test]
async fn websocket_smuggle_a_101_that_is_no_switch_is_a_502() {
    let good_accept = format!("Sec-WebSocket-Accept: {ACCEPT}\r\n");
    let cases = [
        (
            "a bare 101 (a relayed status)",
            true,
            "HTTP/1.1 101 SWITCHING PROTOCOLS\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: 0\r\n\r\n"
                .to_owned(),
        ),
        (
            "a bare 101 to a handshake without a key",
            false,
            "HTTP/1.1 101 SWITCHING PROTOCOLS\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: 0\r\n\r\n"
                .to_owned(),
        ),
        (
            "no Sec-WebSocket-Accept",
            true,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_owned(),
        ),
        (
            "a wrong Sec-WebSocket-Accept",
            true,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
                .to_owned(),
        ),
        (
            "another Upgrade token",
            true,
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n{good_accept}\r\n"
            ),
        ),
        (
            "websocket and another token",
            true,
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket, foo\r\n{good_accept}\r\n"
            ),
        ),
        (
            "no Upgrade header",
            true,
            format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n{good_accept}\r\n"),
        ),
        (
            "no Connection: upgrade",
            true,
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n{good_accept}\r\n"),
        ),
    ];
    for (case, with_key, answer) in cases {
        let raw = RawUpstream::bind().await;
        let proxy = guarded(raw.addr).await;
        let key = if with_key {
            format!("Sec-WebSocket-Key: {KEY}\r\n")
        } else {
            String::new()
        };
        let req = format!(
            "GET /api/health?u=http://attacker.example/ HTTP/1.1\r\nHost: a.example\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}\r\n{SMUGGLED}"
        );
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, extra) = read_head(&mut up).await;
        assert!(head.starts_with("GET /api/health?"), "{case}: {head}");
        assert!(
            extra.is_empty(),
            "{case}: smuggled bytes with the head: {extra:?}"
        );
        up.write_all(answer.as_bytes()).await.unwrap();

        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 502, "{case}: {head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{case}: {head}");
        let _ = client.write_all(SMUGGLED.as_bytes()).await;
        read_to_eof(&mut client).await;
        assert_closed(&mut up, case).await;
        raw.assert_untouched(case).await;
    }
}

/// A handshake that sends no `Sec-WebSocket-Key` goes upstream with one of the proxy's own,
/// so the upstream's `101` is still held to a `Sec-WebSocket-Accept`: a bare `101` with
/// `Upgrade` and `Connection` is a 502 and the client's next bytes never reach the upstream;
/// an upstream that answers the proxy's key opens the tunnel.
#[tokio::test]
async fn a_keyless_handshake_gets_a_key_and_the_answer_is_checked() {
    let raw = RawUpstream::bind().await;
    let proxy = guarded(raw.addr).await;
    let req = "GET /chat HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
               Sec-WebSocket-Version: 13\r\n\r\n";
    let bare = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (sent, _) = read_head(&mut up).await;
    assert!(header(&sent, "sec-websocket-key").is_some(), "{sent}");
    up.write_all(bare.as_bytes()).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 502, "{head}");
    let _ = client.write_all(SMUGGLED.as_bytes()).await;
    read_to_eof(&mut client).await;
    assert_closed(&mut up, "a bare 101 to a keyless handshake").await;

    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (sent, _) = read_head(&mut up).await;
    let key = header(&sent, "sec-websocket-key").expect("the proxy's key");
    let accept = switchback::websocket::accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    up.write_all(answer.as_bytes()).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 101, "{head}");
    client.write_all(b"tunnel").await.unwrap();
    assert_eq!(read_n(&mut up, Vec::new(), 6).await, b"tunnel");
}

/// h2c smuggling: `h2c` is stripped in any case, in any order of the `Connection` tokens, and
/// next to another token; `HTTP2-Settings` goes with it. The upstream's `101` to `h2c` is then
/// an answer to a question nobody asked: a 502, and the HTTP/2 bytes the attacker sends next
/// are read by the proxy, which closes the connection; the upstream never sees them.
#[tokio::test]
async fn h2c_smuggling_variants_never_switch() {
    let h2c_101 = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    let settings = "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
    let cases = [
        (
            "Connection: HTTP2-Settings, Upgrade",
            "HTTP2-Settings, Upgrade",
            "h2c",
        ),
        ("Upgrade: H2C", "Upgrade, HTTP2-Settings", "H2C"),
        (
            "Upgrade: h2c, websocket",
            "Upgrade, HTTP2-Settings",
            "h2c, websocket",
        ),
    ];
    for (case, connection, upgrade) in cases {
        let raw = RawUpstream::bind().await;
        let proxy = guarded(raw.addr).await;
        let req = format!(
            "GET /flag HTTP/1.1\r\nHost: a.example\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\n\
             {settings}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, _) = read_head(&mut up).await;
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("h2c"), "{case}: {head}");
        assert!(!lower.contains("http2-settings"), "{case}: {head}");
        if upgrade.contains("websocket") {
            assert_eq!(header(&head, "upgrade"), Some("websocket"), "{case}: {head}");
            assert_eq!(header(&head, "connection"), Some("upgrade"), "{case}: {head}");
        } else {
            assert!(header(&head, "upgrade").is_none(), "{case}: {head}");
            assert!(header(&head, "connection").is_none(), "{case}: {head}");
        }
        up.write_all(h2c_101.as_bytes()).await.unwrap();
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 502, "{case}: {head}");

        // What h2csmuggler sends once it believes the switch happened.
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let _ = client.write_all(&h2).await;
        // hyper reads the preface as an HTTP/2 client on an HTTP/1.1 connection: it closes
        // without an answer.
        let rest = read_to_eof(&mut client).await;
        assert!(rest.is_empty(), "{case}: {:?}", String::from_utf8_lossy(&rest));
        assert_silent(&mut up, case).await;
        raw.assert_untouched(case).await;
    }
}

/// Both `Content-Length` and `Transfer-Encoding: chunked` on an upgrade (the CL.TE and TE.CL
/// payloads). The request is not refused: RFC 9112 §6.3 lets a server go by
/// `Transfer-Encoding` alone, and hyper does, dropping `Content-Length` and marking the
/// connection to close after the response. The upstream gets the chunked body without
/// `Content-Length`, so it cannot frame the message another way; the bytes after the last
/// chunk are tunnel bytes, held until a `101` that does not come.
#[tokio::test]
async fn content_length_with_chunked_goes_by_the_chunks_alone() {
    let upgrade = "GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: foo\r\n";
    let cases = [
        (
            "CL.TE",
            format!("{upgrade}Content-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            "",
        ),
        (
            "TE.CL",
            format!(
                "{upgrade}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
                SMUGGLED.len()
            ),
            SMUGGLED,
        ),
    ];
    for (case, req, body) in cases {
        let raw = RawUpstream::bind().await;
        let proxy = guarded(raw.addr).await;
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, extra) = read_head(&mut up).await;
        assert!(header(&head, "content-length").is_none(), "{case}: {head}");
        assert_eq!(
            header(&head, "transfer-encoding"),
            Some("chunked"),
            "{case}: {head}"
        );
        assert_eq!(read_chunked(&mut up, extra).await, body.as_bytes(), "{case}");
        assert_silent(&mut up, case).await;
        up.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 403, "{case}: {head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{case}: {head}");
        read_to_eof(&mut client).await;
        assert_closed(&mut up, case).await;
        raw.assert_untouched(case).await;
    }
}

/// Framing the proxy cannot read one way only: `chunked` not last, a second
/// `Transfer-Encoding` line that ends in another coding, an unknown coding, an obs-fold, a
/// space before the colon, `Transfer-Encoding` in HTTP/1.0, two different `Content-Length`s,
/// or one that is not a number. Each upgrade request gets a 400 and a close, and nothing
/// reaches the upstream.
#[tokio::test]
async fn ambiguous_framing_on_an_upgrade_is_a_400() {
    let cases = [
        (
            "chunked, identity",
            "HTTP/1.1",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        (
            "two Transfer-Encoding lines",
            "HTTP/1.1",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
        ("an unknown coding", "HTTP/1.1", "Transfer-Encoding: xchunked\r\n"),
        ("obs-fold", "HTTP/1.1", "Transfer-Encoding:\r\n chunked\r\n"),
        (
            "a space before the colon",
            "HTTP/1.1",
            "Transfer-Encoding : chunked\r\n",
        ),
        (
            "CL.TE with an obs-folded TE",
            "HTTP/1.1",
            "Content-Length: 5\r\nTransfer-Encoding: identity\r\n chunked\r\n",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "HTTP/1.0",
            "Transfer-Encoding: chunked\r\n",
        ),
        (
            "two Content-Lengths",
            "HTTP/1.1",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
        ("a signed Content-Length", "HTTP/1.1", "Content-Length: +5\r\n"),
    ];
    for (case, version, framing) in cases {
        let raw = RawUpstream::bind().await;
        let proxy = guarded(raw.addr).await;
        let req = format!(
            "GET /x {version}\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: foo\r\n{framing}\r\n\
             5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let all = String::from_utf8_lossy(&read_to_eof(&mut client).await).into_owned();
        assert!(all.starts_with("HTTP/1.1 400 "), "{case}: {all:?}");
        assert_eq!(all.matches("HTTP/1.1").count(), 1, "{case}: {all:?}");
        raw.assert_untouched(case).await;
    }
}

/// nghttpx's CVE-2026-58055 and the body form of Pingora's CVE-2026-2833: an upgrade whose
/// `Content-Length` body holds a second request. The body reaches the upstream as a body, with
/// its `Content-Length`, on a connection of its own. An upstream that reads it as a request
/// anyway and answers it too cannot poison anyone: after the refusal Switchback relays one
/// response, closes both connections, and the next client gets a fresh upstream connection.
#[tokio::test]
async fn an_upgrade_body_that_holds_a_request_stays_a_body() {
    let raw = RawUpstream::bind().await;
    let proxy = guarded(raw.addr).await;
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\
         Content-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, extra) = read_head(&mut up).await;
    assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head}");
    assert_eq!(
        header(&head, "content-length"),
        Some(SMUGGLED.len().to_string().as_str()),
        "{head}"
    );
    assert_eq!(header(&head, "upgrade"), Some("foo"), "{head}");
    assert_eq!(read_n(&mut up, extra, SMUGGLED.len()).await, SMUGGLED.as_bytes());
    // A desynchronised upstream: it refuses the upgrade, then answers the body as a request.
    up.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
          HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninternal",
    )
    .await
    .unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let rest = [rest, read_to_eof(&mut client).await].concat();
    assert_eq!(rest, b"ok", "{:?}", String::from_utf8_lossy(&rest));
    assert_closed(&mut up, "after the refusal").await;

    // The next client: a new connection to the upstream, not the one with a response queued.
    let mut next = raw_client(proxy.addr, b"GET /next HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let mut fresh = raw.accept().await;
    let (head, _) = read_head(&mut fresh).await;
    assert!(head.starts_with("GET /next HTTP/1.1\r\n"), "{head}");
    fresh
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        .await
        .unwrap();
    let (head, body) = read_head(&mut next).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(read_n(&mut next, body, 4).await, b"next");
}

/// Pingora's CVE-2026-2833: an upstream that refuses the upgrade with a `200`, and a second
/// request pipelined behind the first. With `Connection: upgrade` the proxy waits for the
/// answer and closes after the refusal; without it the request is plain, and the second one is
/// parsed on its own and meets the filter.
#[tokio::test]
async fn an_upgrade_refused_with_200_passes_nothing_through() {
    for with_connection in [true, false] {
        let case = if with_connection {
            "Connection: upgrade"
        } else {
            "Upgrade alone"
        };
        let raw = RawUpstream::bind().await;
        let proxy = guarded(raw.addr).await;
        let connection = if with_connection {
            "Connection: upgrade\r\n"
        } else {
            ""
        };
        let req =
            format!("GET /public HTTP/1.1\r\nHost: a.example\r\n{connection}Upgrade: foo\r\n\r\n{SMUGGLED}");
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, extra) = read_head(&mut up).await;
        assert!(head.starts_with("GET /public HTTP/1.1\r\n"), "{case}: {head}");
        assert!(extra.is_empty(), "{case}: {extra:?}");
        up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let (head, rest) = read_head(&mut client).await;
        assert_eq!(status(&head), 200, "{case}: {head}");
        if with_connection {
            assert_eq!(header(&head, "connection"), Some("close"), "{case}: {head}");
            let rest = [rest, read_to_eof(&mut client).await].concat();
            assert_eq!(rest, b"ok", "{case}: {:?}", String::from_utf8_lossy(&rest));
        } else {
            // The body, then the proxy's own answer to the second request.
            let rest = read_n(&mut client, rest, 2).await;
            assert_eq!(&rest[..2], b"ok", "{case}");
            let (second, _) = read_head(&mut (&rest[2..]).chain(&mut client)).await;
            assert_eq!(status(&second), 403, "{case}: the filter judged it: {second}");
        }
        assert_silent(&mut up, case).await;
        raw.assert_untouched(case).await;
    }
}
