//! An upgrade's exchange without an HTTP client, for the common case: a plain connection and
//! no request body. The head goes out in one write and the answer's head is parsed with
//! `httparse`; a `101` hands the socket (and whatever came right behind the `101`) to the
//! tunnel, with nothing of hyper's in between, so the tunnel can splice it.
//!
//! Anything else (a refusal, an informational answer first, a head `httparse` won't take, an
//! early end) is handed to hyper's client as it would have been: the bytes read so far are
//! replayed to it, and what it writes of the request is dropped, since the request went
//! already. The `101` check, the refusal relay, 1xx handling and every defence the upgrade
//! path has stay as they are: the same answers reach them either way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::tunnel::Prefixed;

/// The largest answer head read here; a larger one is left to hyper (which refuses it).
const MAX_HEAD: usize = 16 * 1024;
/// The most header lines read here; more are left to hyper.
const MAX_HEADERS: usize = 64;

/// What the exchange found.
pub(crate) enum Raw {
    /// A `101` from an HTTP/1.1 upstream: its head, and the connection with the bytes that
    /// came behind it.
    Switched {
        head: http::response::Parts,
        io: Prefixed,
    },
    /// Anything else: the connection for hyper's client to read from the start.
    Other(Replay),
}

/// Writes `parts` (an upgrade's head, as [`super::upstream::upgrade_head`] left it) and reads
/// the answer's head.
pub(crate) async fn exchange(mut tcp: TcpStream, parts: &http::request::Parts) -> io::Result<Raw> {
    let head = encode(parts);
    // Straight to the socket first: tokio would wait for the event loop to say a new
    // connection is writable, which a fresh one nearly always is (a head fits the send
    // buffer). What doesn't go now goes the usual way.
    #[cfg(target_os = "linux")]
    let sent = match rustix::net::send(&tcp, &head, rustix::net::SendFlags::NOSIGNAL) {
        Ok(n) => n,
        Err(e) if e == rustix::io::Errno::AGAIN => 0,
        Err(e) => return Err(e.into()),
    };
    #[cfg(not(target_os = "linux"))]
    let sent = 0;
    tcp.write_all(&head[sent..]).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            // Closed before a whole head: hyper says how.
            return Ok(Raw::Other(Replay::new(buf.freeze(), tcp)));
        }
        match parse_101(&buf) {
            Parsed::Switched(head, len) => {
                let rest = buf.split_off(len).freeze();
                return Ok(Raw::Switched {
                    head,
                    io: Prefixed::new(rest, tcp),
                });
            }
            Parsed::Partial if buf.len() < MAX_HEAD => {}
            Parsed::Partial | Parsed::Other => return Ok(Raw::Other(Replay::new(buf.freeze(), tcp))),
        }
    }
}

/// A request head as HTTP/1.1 writes it.
fn encode(parts: &http::request::Parts) -> Vec<u8> {
    // Origin form, or a CONNECT's authority form.
    let target = match (parts.uri.path_and_query(), parts.uri.authority()) {
        (Some(path), _) => path.as_str(),
        (None, Some(authority)) => authority.as_str(),
        (None, None) => "/",
    };
    let size = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>();
    let mut out = Vec::with_capacity(parts.method.as_str().len() + target.len() + size + 16);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

enum Parsed {
    /// A whole `101` head of this many bytes.
    Switched(http::response::Parts, usize),
    /// Not all of the head yet.
    Partial,
    /// Something for hyper.
    Other,
}

/// Parses `buf` as far as telling a `101` (HTTP/1.1, every header usable) from the rest.
fn parse_101(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if res.code != Some(101) || res.version != Some(1) {
        return Parsed::Other;
    }
    let mut map = HeaderMap::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        map.append(name, value);
    }
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = StatusCode::SWITCHING_PROTOCOLS;
    head.version = Version::HTTP_11;
    head.headers = map;
    Parsed::Switched(head, len)
}

/// A connection whose request went already, for hyper's client: reads return what was read
/// so far, then the socket; hyper's copy of the request head is dropped, and every byte
/// written after it (a tunnel's, once hyper has switched) goes to the socket.
pub(crate) struct Replay {
    read: Bytes,
    tcp: TcpStream,
    /// hyper has written its copy of the request: before that, an answer would be one it
    /// never asked for.
    asked: bool,
    /// A read that came before the request, woken when it is written.
    reader: Option<Waker>,
    /// How much of the blank line that ends hyper's head it has written (4: all of it).
    head_end: u8,
}

/// The end of a request head: the first blank line (a header value holds no CR or LF).
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

impl Replay {
    fn new(read: Bytes, tcp: TcpStream) -> Self {
        Self {
            read,
            tcp,
            asked: false,
            reader: None,
            head_end: 0,
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.asked {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if usize::from(self.head_end) == HEAD_END.len() {
            return Pin::new(&mut self.tcp).poll_write(cx, buf);
        }
        self.asked = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        // Dropped up to the end of hyper's head, and not a byte further.
        for (i, &b) in buf.iter().enumerate() {
            self.head_end = match (self.head_end, b) {
                (n, b) if HEAD_END[usize::from(n)] == b => n + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if usize::from(self.head_end) == HEAD_END.len() {
                return Poll::Ready(Ok(i + 1));
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_written_as_http_1_1() {
        let req = http::Request::get("http://ignored.example/chat?room=1")
            .header("host", "app")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(())
            .expect("request");
        let (mut parts, ()) = req.into_parts();
        parts.uri = super::super::origin_form(&parts.uri);
        assert_eq!(
            String::from_utf8(encode(&parts)).expect("text"),
            "GET /chat?room=1 HTTP/1.1\r\nhost: app\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        );
    }

    /// hyper's copy of the head is dropped, however it is cut into writes; what follows it
    /// reaches the socket, and reads wait for the request, then replay first.
    #[tokio::test]
    async fn a_replay_drops_the_head_and_nothing_after_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tcp = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (mut peer, _) = listener.accept().await.expect("accept");
        let mut replay = Replay::new(Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"), tcp);
        let parts = [
            &b"CONNECT a:1 HTTP/1.1\r\nhost: a:1\r"[..],
            b"\n\r",
            b"\ntunnel",
            b" bytes",
        ];
        let mut written = 0;
        for part in parts {
            let mut part = part;
            while !part.is_empty() {
                let n = replay.write(part).await.expect("write");
                part = &part[n..];
                written += n;
            }
        }
        assert_eq!(
            written,
            parts.iter().map(|p| p.len()).sum::<usize>(),
            "every write taken"
        );
        let mut got = [0u8; 12];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"tunnel bytes");
        let mut answer = [0u8; 19];
        replay.read_exact(&mut answer).await.expect("replayed");
        assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n\r\n");
        peer.write_all(b"more").await.expect("write");
        let mut more = [0u8; 4];
        replay.read_exact(&mut more).await.expect("then the socket");
        assert_eq!(&more, b"more");
    }

    #[test]
    fn a_connect_keeps_its_authority_form() {
        let req = http::Request::connect("db.internal:5432")
            .header("host", "db.internal:5432")
            .body(())
            .expect("request");
        let (parts, ()) = req.into_parts();
        assert_eq!(
            String::from_utf8(encode(&parts)).expect("text"),
            "CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\n\r\n"
        );
    }

    #[test]
    fn only_a_whole_http_1_1_101_is_taken_here() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\nbytes";
        match parse_101(ok) {
            Parsed::Switched(head, len) => {
                assert_eq!(len, ok.len() - 5);
                assert_eq!(head.headers["upgrade"], "foo");
            }
            _ => panic!("a 101"),
        }
        assert!(matches!(parse_101(&ok[..20]), Parsed::Partial));
        for other in [
            &b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: foo\r\n\r\n"[..],
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n bar\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                matches!(parse_101(other), Parsed::Other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
