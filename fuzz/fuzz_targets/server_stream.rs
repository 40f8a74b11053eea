//! A client byte stream into the real server stack (`switchback::serve_with`, an
//! `UpgradeRouterLayer` allowing `websocket` and `foo`, `Forward`) over loopback TCP, against
//! a scripted upstream that records every byte it receives.
//!
//! The input's first byte is the upstream's script (how it answers an upgrade request, and
//! whether a valid upgrade head goes before the rest); the rest is what the client sends, all
//! at once. Asserted, on every upstream connection:
//!
//! - an upgrade request arrives only as the first request of a fresh connection (never on a
//!   pooled one); a CONNECT counts as an upgrade request that no answer makes valid
//!   (Switchback doesn't proxy CONNECT);
//! - no byte beyond the upgrade request (head and declared body) has arrived when the upstream
//!   answers it;
//! - unless that answer was a valid `101`, no such byte arrives afterwards either: the
//!   client's would-be tunnel bytes never reach the upstream;
//! - and no panic anywhere (libfuzzer's panic hook aborts on a panic in any thread).
#![no_main]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout, timeout_at};

use switchback::{ClientLimits, Cluster, Endpoint, Forward, TunnelConfig, UpgradeRouterLayer, serve_with};

/// How long a side waits for more bytes before it decides the peer is done.
const QUIET: Duration = Duration::from_millis(25);
/// The longest a client or an upstream connection lives in one iteration.
const LIFETIME: Duration = Duration::from_millis(400);

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        // libFuzzer's `main` is C's, so SIGPIPE keeps its default action (Rust's own `main`
        // ignores it): a write to a socket the peer reset would kill the process. A handler
        // of tokio's, installed once and kept (LeakSanitizer would report a forgotten one at
        // exit), turns that into an EPIPE error.
        static PIPE: OnceLock<Mutex<Signal>> = OnceLock::new();
        let _guard = rt.enter();
        PIPE.get_or_init(|| Mutex::new(signal(SignalKind::pipe()).expect("a SIGPIPE handler")));
        rt
    })
}

/// Upgrade requests the upstream judged, those it answered with a valid `101`, and runs: a
/// line on stderr every 1000 runs shows that the oracle is exercised, and whether tasks pile up.
static JUDGED: AtomicUsize = AtomicUsize::new(0);
static SWITCHED: AtomicUsize = AtomicUsize::new(0);
static RUNS: AtomicUsize = AtomicUsize::new(0);

fuzz_target!(|data: &[u8]| {
    let Some((&script, client)) = data.split_first() else {
        return;
    };
    let script = Script(script);
    let client = match script.prefix() {
        Some(head) => [head.as_bytes(), client].concat(),
        None => client.to_vec(),
    };
    runtime().block_on(iteration(script, &client));
    let runs = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    if runs % 1000 == 0 {
        eprintln!(
            "server_stream: {runs} runs, {} upgrade requests judged, {} answered with a valid 101, {} tasks alive",
            JUDGED.load(Ordering::Relaxed),
            SWITCHED.load(Ordering::Relaxed),
            runtime().metrics().num_alive_tasks(),
        );
    }
});

/// How the upstream answers an upgrade request.
#[derive(Clone, Copy, Debug)]
struct Script(u8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `101` with the offered protocol, `Connection: upgrade`, the right accept key.
    Valid101,
    /// `101` naming a protocol the client didn't offer.
    OtherProtocol101,
    /// `101` with a wrong `Sec-WebSocket-Accept` (valid unless the handshake needs one).
    WrongAccept101,
    /// `426` naming the upgrade, as a backend does for a bad `Sec-WebSocket-Version`.
    Refuse426,
    /// `200` with a body.
    Ok200,
    /// Closes without answering.
    Close,
    /// Never answers (the proxy's response timeout ends it).
    Silent,
    /// A valid `101` but as HTTP/1.0.
    Http10Switch,
}

impl Script {
    fn answer(self) -> Answer {
        match self.0 & 7 {
            0 => Answer::Valid101,
            1 => Answer::OtherProtocol101,
            2 => Answer::WrongAccept101,
            3 => Answer::Refuse426,
            4 => Answer::Ok200,
            5 => Answer::Close,
            6 => Answer::Silent,
            _ => Answer::Http10Switch,
        }
    }
    /// Answer 20 ms late: room for a proxy that forwards early to do so.
    fn late(self) -> bool {
        self.0 & 8 != 0
    }
    /// Send tunnel bytes of the upstream's own right behind a `101`.
    fn eager(self) -> bool {
        self.0 & 16 != 0
    }
    /// A valid upgrade head put before the client's bytes, so that most runs reach the
    /// upstream and the rest of the input is what a client sends behind its request.
    fn prefix(self) -> Option<&'static str> {
        match self.0 >> 5 {
            1 => Some(
                "GET /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            ),
            2 => Some("GET /foo HTTP/1.1\r\nHost: a.example\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"),
            3 => Some(
                "POST /foo HTTP/1.1\r\nHost: a.example\r\nUpgrade: foo\r\nConnection: upgrade\r\n\
                 Content-Length: 4\r\n\r\nbody",
            ),
            _ => None,
        }
    }
}

async fn iteration(script: Script, client: &[u8]) {
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let upstream_addr = upstream.local_addr().expect("upstream address");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy_addr = listener.local_addr().expect("proxy address");

    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .upgrade("foo")
        .tunnel(TunnelConfig::new().idle_timeout(Duration::from_millis(300)))
        .build()
        .expect("router");
    let cluster = Cluster::new("up", [Endpoint::new(upstream_addr.to_string())]);
    let stack = tower::ServiceBuilder::new()
        .layer(router)
        .service(Forward::new(cluster).response_timeout(Duration::from_millis(200)));
    let limits = ClientLimits::new().request_headers_timeout(Duration::from_millis(200));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_with(
        listener,
        stack,
        async {
            let _ = stopped.await;
        },
        limits,
    ));

    let (done, finished) = oneshot::channel::<()>();
    let upstream = tokio::spawn(accept_all(upstream, script, finished));
    run_client(proxy_addr, client).await;
    let _ = done.send(());
    let verdicts = upstream.await.expect("the upstream task");
    let _ = stop.send(());
    for verdict in verdicts {
        if let Err(why) = verdict {
            panic!(
                "{why}\nscript {script:?}, client bytes {:?}",
                String::from_utf8_lossy(client)
            );
        }
    }
}

/// Sends the bytes, reads whatever comes back until the proxy closes or goes quiet, then
/// resets the connection.
async fn run_client(proxy: SocketAddr, bytes: &[u8]) {
    let Ok(mut stream) = TcpStream::connect(proxy).await else {
        return;
    };
    let _ = stream.set_zero_linger();
    let deadline = Instant::now() + LIFETIME;
    if timeout_at(deadline, stream.write_all(bytes)).await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut got_any = false;
    loop {
        let wait = if got_any { QUIET } else { LIFETIME };
        match timeout_at(deadline.min(Instant::now() + wait), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => got_any = true,
        }
    }
}

/// Accepts upstream connections until the client is done, then waits for each to finish.
async fn accept_all(
    listener: TcpListener,
    script: Script,
    mut finished: oneshot::Receiver<()>,
) -> Vec<Result<(), String>> {
    let mut conns = Vec::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => conns.push(tokio::spawn(serve_upstream(stream, script))),
                Err(_) => break,
            },
            _ = &mut finished => break,
        }
    }
    let mut verdicts = Vec::new();
    for conn in conns {
        verdicts.push(conn.await.unwrap_or_else(|e| Err(format!("upstream task: {e}"))));
    }
    verdicts
}

/// A request head as the upstream saw it.
struct Message {
    head_len: usize,
    /// `None`: the body is not all here (or its framing is broken).
    body_len: Option<usize>,
    upgrade: Option<Offer>,
}

/// What an upgrade request offered.
struct Offer {
    protocol: String,
    key: Option<Vec<u8>>,
}

/// Parses the message at the start of `buf`: `None` until its head is complete (or if it
/// isn't HTTP).
fn parse(buf: &[u8]) -> Option<Message> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let get = |name: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let has_token = |name: &str, token: &str| {
        get(name)
            .into_iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let body = &buf[head_len..];
    let body_len = if has_token("transfer-encoding", "chunked") {
        chunked_len(body)
    } else if let Some(cl) = get("content-length").first() {
        std::str::from_utf8(cl)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
    } else {
        Some(0)
    };
    let upgrade = match get("upgrade").first() {
        Some(protocol) if has_token("connection", "upgrade") => Some(Offer {
            protocol: String::from_utf8_lossy(protocol).into_owned(),
            key: get("sec-websocket-key").first().map(|k| k.to_vec()),
        }),
        // Switchback doesn't proxy CONNECT: one that reaches the upstream is judged as an
        // upgrade attempt that no answer makes valid.
        _ if req.method == Some("CONNECT") => Some(Offer {
            protocol: "connect".to_owned(),
            key: None,
        }),
        _ => None,
    };
    Some(Message {
        head_len,
        body_len,
        upgrade,
    })
}

/// The length of a complete chunked body at the start of `buf`, trailers included.
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let line = |at: usize| -> Option<(usize, &[u8])> {
        let rest = buf.get(at..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((at + end + 2, &rest[..end]))
    };
    let mut at = 0;
    loop {
        let (next, size_line) = line(at)?;
        let hex = size_line.split(|&b| b == b';').next()?.trim_ascii();
        let size = usize::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        at = next;
        if size == 0 {
            loop {
                let (next, trailer) = line(at)?;
                at = next;
                if trailer.is_empty() {
                    return Some(at);
                }
            }
        }
        if buf.get(at + size..at + size + 2)? != b"\r\n" {
            return None;
        }
        at += size + 2;
    }
}

/// Reads into `buf` until `more` bytes are there, the peer closes, or it goes quiet.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> bool {
    let mut chunk = [0u8; 4096];
    let quiet = deadline.min(Instant::now() + QUIET);
    match timeout_at(quiet, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// One upstream connection: answers plain requests `200`, the upgrade request by the script,
/// and judges what it received.
async fn serve_upstream(mut stream: TcpStream, script: Script) -> Result<(), String> {
    let _ = stream.set_zero_linger();
    let deadline = Instant::now() + LIFETIME;
    let mut buf = Vec::new();
    let mut at = 0;
    let mut requests = 0;
    loop {
        let Some(msg) = parse(&buf[at..]) else {
            if !read_more(&mut stream, &mut buf, deadline).await {
                return Ok(());
            }
            continue;
        };
        requests += 1;
        if let Some(offer) = &msg.upgrade {
            if requests > 1 {
                return Err(format!(
                    "an upgrade request came on a reused upstream connection: {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            return upgrade(stream, buf, msg.head_len, offer, script, deadline).await;
        }
        let Some(body_len) = msg.body_len else {
            if !read_more(&mut stream, &mut buf, deadline).await {
                return Ok(());
            }
            requests -= 1;
            continue;
        };
        at += msg.head_len + body_len;
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if stream.write_all(ok).await.is_err() {
            return Ok(());
        }
    }
}

/// The upgrade request on a fresh connection (`buf` starts with it): answer by the script,
/// read on, and check that no byte after the request arrived early, nor at all unless the
/// answer was a valid `101`.
async fn upgrade(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    head_len: usize,
    offer: &Offer,
    script: Script,
    deadline: Instant,
) -> Result<(), String> {
    if script.late() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything that came in by the time of the answer, at least what is already buffered.
    while read_more_now(&mut stream, &mut buf).await {}
    let before_answer = buf.len();

    let websocket = offer.protocol.eq_ignore_ascii_case("websocket");
    let connect = offer.protocol == "connect";
    let accept = offer
        .key
        .as_deref()
        .map(switchback::websocket::accept_key)
        .unwrap_or_default();
    let switch = |version: &str, protocol: &str, accept: &str| {
        let mut head =
            format!("{version} 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n");
        if websocket {
            head.push_str(&format!("Sec-WebSocket-Accept: {accept}\r\n"));
        }
        head.push_str("\r\n");
        if script.eager() {
            head.push_str("UPSTREAM-FIRST");
        }
        head
    };
    let (answer, valid) = match script.answer() {
        Answer::Valid101 => (Some(switch("HTTP/1.1", &offer.protocol, &accept)), true),
        Answer::OtherProtocol101 => (Some(switch("HTTP/1.1", "bogus", &accept)), false),
        Answer::WrongAccept101 => (
            Some(switch(
                "HTTP/1.1",
                &offer.protocol,
                "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            )),
            !(websocket && offer.key.is_some()),
        ),
        Answer::Refuse426 => (
            Some(format!(
                "HTTP/1.1 426 Upgrade Required\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\
                 Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
                offer.protocol
            )),
            false,
        ),
        Answer::Ok200 => (
            Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned()),
            false,
        ),
        Answer::Close => (None, false),
        Answer::Silent => (None, false),
        Answer::Http10Switch => (Some(switch("HTTP/1.0", &offer.protocol, &accept)), false),
    };
    let valid = valid && !connect;
    match (answer, script.answer()) {
        (Some(answer), _) => {
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        (None, Answer::Close) => {
            drop(stream);
            return judge(&buf, head_len, before_answer, false);
        }
        (None, _) => {}
    }
    while read_more(&mut stream, &mut buf, deadline).await {}
    judge(&buf, head_len, before_answer, valid)
}

/// Reads what is already there, without waiting.
async fn read_more_now(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match timeout(Duration::from_millis(1), stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// The verdict on an upgrade connection's bytes.
fn judge(buf: &[u8], head_len: usize, before_answer: usize, valid: bool) -> Result<(), String> {
    JUDGED.fetch_add(1, Ordering::Relaxed);
    if valid {
        SWITCHED.fetch_add(1, Ordering::Relaxed);
    }
    // The request's end, if its body is all here; else every byte is still its body.
    let Some(body_len) = parse(buf).and_then(|m| m.body_len) else {
        return Ok(());
    };
    let end = head_len + body_len;
    let shown = || String::from_utf8_lossy(buf).into_owned();
    if before_answer > end {
        return Err(format!(
            "{} byte(s) beyond the upgrade request reached the upstream before its answer: {:?}",
            before_answer - end,
            shown()
        ));
    }
    if !valid && buf.len() > end {
        return Err(format!(
            "{} byte(s) beyond the upgrade request reached the upstream without a valid 101: {:?}",
            buf.len() - end,
            shown()
        ));
    }
    Ok(())
}
