//! TLS on both legs through the library: `wss://` clients through a TLS listener to TLS
//! upstreams, HTTP/2 extended CONNECT over TLS (ALPN `h2`), SNI, upstream verification,
//! certificates swapped under a live tunnel, and clients that never finish a handshake.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod pki;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tower::ServiceBuilder;

use pki::{Ca, Leaf};
use support::{within, ws_echo};
use switchback::tls::{CertResolver, Certificates, ClientTls, ServerTls};
use switchback::{ClientLimits, Cluster, Endpoint, Forward, Server, TlsSession, UpgradeRouterLayer};

/// A WebSocket echo upstream behind TLS with `leaf`'s certificate.
async fn wss_echo(leaf: &Leaf) -> SocketAddr {
    pki::wss_echo(leaf.server_config()).await
}

/// A WebSocket upgrade request, as a raw client sends it.
const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// WebSocket upgrades allowed, forwarded to `cluster`.
fn ws_stack(
    cluster: Cluster,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<switchback::Body>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(
            UpgradeRouterLayer::builder()
                .upgrade("websocket")
                .build()
                .unwrap(),
        )
        .service(Forward::new(cluster))
}

/// The proxy on a TLS listener with `resolver`'s certificates, forwarding to `cluster`.
async fn tls_proxy(resolver: Arc<CertResolver>, cluster: Cluster, limits: ClientLimits) -> SocketAddr {
    let stack = ws_stack(cluster);
    let tls = ServerTls::builder(resolver).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::new(stack)
            .limits(limits)
            .tls(tls)
            .serve(listener, std::future::pending()),
    );
    addr
}

fn resolver_for(leaf: &Leaf) -> Arc<CertResolver> {
    let key = certified(leaf);
    Arc::new(CertResolver::new(Certificates::new().default_key(key)))
}

fn certified(leaf: &Leaf) -> Arc<rustls::sign::CertifiedKey> {
    let signer = rustls::crypto::ring::sign::any_supported_type(&leaf.key()).unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(vec![leaf.der.clone()], signer))
}

/// A cluster of one TLS endpoint named `localhost`, trusting `ca`.
fn tls_cluster(addr: SocketAddr, ca: &Ca) -> Cluster {
    let dir = pki::temp_dir(&format!("ca-{}", addr.port()));
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let tls = ClientTls::builder()
        .trusted_ca_file(&ca_file)
        .unwrap()
        .build()
        .unwrap();
    Cluster::new("tls", [Endpoint::new(addr.to_string()).hostname("localhost")])
        .connect_timeout(Duration::from_secs(2))
        .tls(tls)
}

async fn wss_client(
    proxy: SocketAddr,
    sni: &str,
    ca: &Ca,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = within(pki::connect(proxy, sni, ca.client_config(&[b"http/1.1"])))
        .await
        .unwrap();
    let (ws, res) = within(tokio_tungstenite::client_async(format!("wss://{sni}/chat"), tls))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    ws
}

async fn echo_once<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(within(ws.next()).await.unwrap().unwrap(), msg);
}

#[tokio::test]
async fn wss_through_a_tls_listener_to_a_tls_upstream() {
    let ca = Ca::new("test CA");
    let upstream = wss_echo(&ca.issue(&["localhost"])).await;
    let proxy = tls_proxy(
        resolver_for(&ca.issue(&["proxy.test"])),
        tls_cluster(upstream, &ca),
        ClientLimits::default(),
    )
    .await;
    let mut ws = wss_client(proxy, "proxy.test", &ca).await;
    echo_once(&mut ws, Message::text("over TLS twice")).await;
    echo_once(&mut ws, Message::binary(vec![7u8; 100 * 1024])).await;
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn http2_extended_connect_over_tls_by_alpn() {
    let ca = Ca::new("test CA");
    let echo = ws_echo().await;
    let proxy = tls_proxy(
        resolver_for(&ca.issue(&["proxy.test"])),
        support::cluster(echo.addr),
        ClientLimits::default(),
    )
    .await;
    let tls = within(pki::connect(
        proxy,
        "proxy.test",
        ca.client_config(&[b"h2", b"http/1.1"]),
    ))
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN picks HTTP/2"
    );
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    // The server announces SETTINGS_ENABLE_CONNECT_PROTOCOL in its first SETTINGS frame.
    support::spawn_once_extended_connect(conn).await;
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://proxy.test/chat")
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let mut res = within(sender.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    let stream = within(hyper::upgrade::on(&mut res)).await.unwrap();
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(stream), Role::Client, None).await;
    echo_once(&mut ws, Message::text("h2 over TLS")).await;
    echo_once(&mut ws, Message::binary(vec![3u8; 100 * 1024])).await;
}

#[tokio::test]
async fn sni_picks_the_certificate_and_an_unknown_name_fails_the_handshake() {
    let ca = Ca::new("test CA");
    let (a, b) = (ca.issue(&["a.example.test"]), ca.issue(&["*.b.example.test"]));
    let certs = Certificates::new()
        .add(certified(&a), ["a.example.test"])
        .add(certified(&b), ["*.b.example.test"]);
    let echo = ws_echo().await;
    let proxy = tls_proxy(
        Arc::new(CertResolver::new(certs)),
        support::cluster(echo.addr),
        ClientLimits::default(),
    )
    .await;
    let config = ca.client_config(&[b"http/1.1"]);
    let served = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let to_a = within(pki::connect(proxy, "a.example.test", config.clone()))
        .await
        .unwrap();
    assert_eq!(served(&to_a), a.der);
    let to_b = within(pki::connect(proxy, "chat.b.example.test", config.clone()))
        .await
        .unwrap();
    assert_eq!(served(&to_b), b.der);
    // No default certificate: a name that matches none gets an alert, not someone's cert.
    let unknown = within(pki::connect(proxy, "c.example.test", config)).await;
    assert!(unknown.is_err(), "the handshake must fail");
}

#[tokio::test]
async fn an_upstream_certificate_that_does_not_verify_is_a_503() {
    let (ca, rogue) = (Ca::new("test CA"), Ca::new("someone else"));
    let upstream = wss_echo(&rogue.issue(&["localhost"])).await;
    let stack = ws_stack(tls_cluster(upstream, &ca));
    let proxy = support::start(stack).await;
    // An upgrade...
    let mut client = support::raw_client(proxy.addr, UPGRADE).await;
    let (head, _) = within(support::read_head(&mut client)).await;
    assert_eq!(support::status(&head), 503, "{head}");
    // ...and a plain request through the pool.
    let mut client = support::raw_client(proxy.addr, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, _) = within(support::read_head(&mut client)).await;
    assert_eq!(support::status(&head), 503, "{head}");
}

#[tokio::test]
async fn a_new_certificate_serves_new_handshakes_and_leaves_a_live_tunnel_alone() {
    let ca = Ca::new("test CA");
    let (old, new) = (ca.issue(&["proxy.test"]), ca.issue(&["proxy.test"]));
    let resolver = resolver_for(&old);
    let echo = ws_echo().await;
    let proxy = tls_proxy(
        resolver.clone(),
        support::cluster(echo.addr),
        ClientLimits::default(),
    )
    .await;
    let mut live = wss_client(proxy, "proxy.test", &ca).await;
    assert_eq!(
        live.get_ref().get_ref().1.peer_certificates().unwrap()[0],
        old.der
    );

    resolver.replace(Certificates::new().default_key(certified(&new)));

    let mut fresh = wss_client(proxy, "proxy.test", &ca).await;
    assert_eq!(
        fresh.get_ref().get_ref().1.peer_certificates().unwrap()[0],
        new.der
    );
    echo_once(&mut fresh, Message::text("new certificate")).await;
    echo_once(&mut live, Message::text("still here")).await;
}

#[tokio::test]
async fn requests_carry_the_tls_session_and_x_forwarded_proto_is_https() {
    let ca = Ca::new("test CA");
    let seen = Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    let app = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            *record.lock().unwrap() = Some((
                req.extensions().get::<TlsSession>().cloned(),
                req.headers().get("x-forwarded-proto").cloned(),
            ));
            Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            ))
        }
    });
    let stack = ServiceBuilder::new()
        .layer(switchback::ForwardedLayer::new())
        .service(app);
    let tls = ServerTls::builder(resolver_for(&ca.issue(&["proxy.test"])))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::new(stack)
            .tls(tls)
            .serve(listener, std::future::pending()),
    );

    let mut tls = within(pki::connect(addr, "proxy.test", ca.client_config(&[b"http/1.1"])))
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = within(support::read_head(&mut tls)).await;
    assert_eq!(support::status(&head), 200);
    let (session, proto) = seen.lock().unwrap().take().unwrap();
    let session = session.expect("a TlsSession");
    assert_eq!(session.server_name.as_deref(), Some("proxy.test"));
    assert_eq!(session.version, "TLSv1.3");
    assert_eq!(proto.unwrap(), "https");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed_at_the_head_timeout() {
    let ca = Ca::new("test CA");
    let echo = ws_echo().await;
    let limits = ClientLimits::new().request_headers_timeout(Duration::from_millis(300));
    let proxy = tls_proxy(
        resolver_for(&ca.issue(&["proxy.test"])),
        support::cluster(echo.addr),
        limits,
    )
    .await;
    // Silent after connecting, then half a ClientHello: both are closed once the head's time
    // is up.
    for sent in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let mut buf = [0u8; 64];
        let read = within(tcp.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
    }
    // Plain HTTP to a TLS port is a failed handshake (rustls answers an alert), not a crash.
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let got = within(support::read_to_eof(&mut tcp)).await;
    assert!(!got.starts_with(b"HTTP/"), "no HTTP answer on a TLS port");
    // And the listener still serves.
    let mut ws = wss_client(proxy, "proxy.test", &ca).await;
    echo_once(&mut ws, Message::text("still serving")).await;
}

#[tokio::test]
async fn mutual_tls_to_an_upstream_that_asks_for_a_client_certificate() {
    let ca = Ca::new("test CA");
    let server = ca.issue(&["localhost"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.der.clone()], server.key())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // An upstream that echoes WebSocket messages to clients with a certificate from the CA.
    let upstream = pki::wss_echo(Arc::new(config)).await;
    let dir = pki::temp_dir("mtls");
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    let (cert, key) = ca.issue(&["proxy.client"]).write(&dir, "client");
    let cluster = |tls: ClientTls| {
        Cluster::new(
            "mtls",
            [Endpoint::new(upstream.to_string()).hostname("localhost")],
        )
        .connect_timeout(Duration::from_secs(2))
        .tls(tls)
    };
    let with_identity = ClientTls::builder()
        .trusted_ca_file(dir.join("ca.pem"))
        .unwrap()
        .client_auth_files(&cert, &key)
        .unwrap()
        .build()
        .unwrap();
    let without = ClientTls::builder()
        .trusted_ca_file(dir.join("ca.pem"))
        .unwrap()
        .build()
        .unwrap();
    for (tls, want) in [(with_identity, 101), (without, 503)] {
        let proxy = support::start(ws_stack(cluster(tls))).await;
        let mut client = support::raw_client(proxy.addr, UPGRADE).await;
        let (head, _) = within(support::read_head(&mut client)).await;
        assert_eq!(support::status(&head), want, "{head}");
        if want == 503 {
            // The pooled client for plain requests: the same refusal, the same answer.
            let mut client = support::raw_client(proxy.addr, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let (head, _) = within(support::read_head(&mut client)).await;
            assert_eq!(support::status(&head), 503, "{head}");
        }
    }
}

/// A cluster with TLS and HTTP/2 offers ALPN `h2` and sends each WebSocket as a stream on
/// one connection; a server that only speaks `h2` serves them all.
#[tokio::test]
async fn an_http2_cluster_over_tls_negotiates_h2() {
    let ca = Ca::new("test CA");
    let leaf = ca.issue(&["localhost"]);
    let mut config = (*leaf.server_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let server = support::h2_upstream::h2_server_tls(Arc::new(config)).await;
    let proxy = support::start(ws_stack(tls_cluster(server.addr, &ca).http2(true))).await;
    for i in 0..3 {
        let (mut ws, _) = within(tokio_tungstenite::connect_async(format!(
            "ws://{}/chat",
            proxy.addr
        )))
        .await
        .unwrap();
        echo_once(&mut ws, Message::text(format!("over h2 and TLS {i}"))).await;
    }
    assert_eq!(server.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// The answers an upgrade can get, each through the proxy's own reading of a `101` (a plain
/// upstream) and through hyper's client (a TLS upstream): the client must see the same thing
/// either way. Each case: the upstream's bytes, the status the client gets, and what it reads
/// after the head (the tunnel's first bytes, or the relayed body).
#[tokio::test]
async fn every_answer_reads_the_same_through_both_exchanges() {
    let long = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\nX-Long: {}\r\n\r\nafter",
        "a".repeat(20 * 1024)
    );
    let cases: Vec<(Vec<u8>, u16, &[u8])> = vec![
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\nafter".to_vec(), 101, b"after"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: bar\r\n\r\n".to_vec(), 502, b""),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n\r\n".to_vec(), 502, b""),
        (b"HTTP/1.0 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n".to_vec(), 502, b""),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\nafter".to_vec(),
            101,
            b"after",
        ),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno".to_vec(), 403, b"no"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(), 200, b"ok"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n folded\r\n\r\n".to_vec(), 502, b""),
        (long.into_bytes(), 101, b"after"),
        (Vec::new(), 502, b""),
    ];
    let ca = Ca::new("test CA");
    let leaf = ca.issue(&["localhost"]);
    for (answer, status, after) in cases {
        for tls in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config());
            let answer_bytes = answer.clone();
            tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut io: Box<dyn Io> = match tls {
                    false => Box::new(tcp),
                    true => Box::new(acceptor.accept(tcp).await.unwrap()),
                };
                let _ = support::read_head(&mut io).await;
                io.write_all(&answer_bytes).await.unwrap();
                if answer_bytes.is_empty() {
                    return;
                }
                // Held open until the client is done.
                let mut sink = [0u8; 64];
                while let Ok(n @ 1..) = io.read(&mut sink).await {
                    let _ = n;
                }
            });
            let cluster = match tls {
                false => support::cluster(addr),
                true => tls_cluster(addr, &ca),
            };
            let router = UpgradeRouterLayer::builder().upgrade("foo").build().unwrap();
            let proxy =
                support::start(ServiceBuilder::new().layer(router).service(Forward::new(cluster))).await;
            let mut client = support::raw_client(proxy.addr, support::foo_upgrade("/").as_bytes()).await;
            let (head, rest) = within(support::read_head(&mut client)).await;
            let case = String::from_utf8_lossy(&answer[..answer.len().min(60)]).into_owned();
            assert_eq!(support::status(&head), status, "{case:?}, tls: {tls}: {head}");
            let got = match status {
                101 => support::read_n(&mut client, rest, after.len()).await,
                502 => Vec::new(),
                _ => {
                    let all = [rest, support::read_to_eof(&mut client).await].concat();
                    match support::header(&head, "transfer-encoding") {
                        Some(_) => support::read_chunked(&mut &all[..], Vec::new()).await,
                        None => all,
                    }
                }
            };
            assert_eq!(got, after, "{case:?}, tls: {tls}");
        }
    }
}

/// A connection, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}
