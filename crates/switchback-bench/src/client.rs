//! A minimal WebSocket client over raw TCP: the opening handshake (checked: `101` and the right
//! `Sec-WebSocket-Accept`), masked client frames, and exact reads. Lean on purpose: the load
//! generator must cost less than what it measures.

use std::io;
use std::net::SocketAddr;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// The largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Opcode of a binary frame.
pub(crate) const BINARY: u8 = 0x2;

/// An open WebSocket connection over `S`: plain TCP, or TLS for the TLS workloads.
#[derive(Debug)]
pub(crate) struct Ws<S = TcpStream> {
    /// The connection; bytes in `pending` come before anything read from it.
    pub(crate) stream: S,
    /// Bytes that arrived with the handshake response, after its head.
    pub(crate) pending: Vec<u8>,
}

/// Connects to `addr`, sends an upgrade request for `path` and checks the `101`. `seed` makes
/// the `Sec-WebSocket-Key` differ between connections.
pub(crate) async fn connect(addr: SocketAddr, path: &str, seed: u64) -> Result<Ws> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    upgrade(stream, path, seed).await
}

/// Sends an upgrade request for `path` on an open connection and checks the `101`.
pub(crate) async fn upgrade<S>(mut stream: S, path: &str, seed: u64) -> Result<Ws<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&seed.to_le_bytes());
    nonce[8..].copy_from_slice(b"swbbench");
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: bench.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let (head, pending) = read_head(&mut stream).await?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "101" {
        let first = head.lines().next().unwrap_or("");
        return Err(Error::new(format!("handshake answered {first:?}, not 101")));
    }
    let want = switchback::websocket::accept_key(key.as_bytes());
    match header(&head, "sec-websocket-accept") {
        Some(got) if got == want => Ok(Ws { stream, pending }),
        got => Err(Error::new(format!(
            "Sec-WebSocket-Accept is {got:?}, expected {want:?}"
        ))),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    /// Fills `buf` from pending bytes, then the connection.
    pub(crate) async fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let from_pending = self.pending.len().min(buf.len());
        buf[..from_pending].copy_from_slice(&self.pending[..from_pending]);
        self.pending.drain(..from_pending);
        self.stream.read_exact(&mut buf[from_pending..]).await?;
        Ok(())
    }

    /// Sends `frame` (masked, at most 125 payload bytes: a probe, a ping, a close) and reads
    /// it back from the echo upstream: the same bytes, or the same frame unmasked from a
    /// WebSocket echo (`upstream --frames`).
    pub(crate) async fn echo(&mut self, frame: &[u8]) -> Result<()> {
        self.stream.write_all(frame).await?;
        let mut head = [0u8; 2];
        self.read_exact(&mut head).await?;
        let masked = head[1] & 0x80 != 0;
        let mut back = head.to_vec();
        back.resize(if masked { frame.len() } else { frame.len() - 4 }, 0);
        self.read_exact(&mut back[2..]).await?;
        let want = if masked { frame.to_vec() } else { unmasked(frame) };
        if back != want {
            return Err(Error::new("the echo differs from what was sent"));
        }
        Ok(())
    }

    /// Sends a close frame, reads it back, half-closes, and waits for the other side's close.
    /// Over TLS the half-close is a `close_notify` alert; a peer that then closes the TCP
    /// connection without its own `close_notify` (nginx and HAProxy may) still counts as
    /// closed.
    pub(crate) async fn close(mut self) -> Result<()> {
        let frame = switchback::websocket::client_close_frame(1000, [0x11, 0x22, 0x33, 0x44]);
        self.echo(&frame).await?;
        self.stream.shutdown().await?;
        let mut rest = [0u8; 256];
        loop {
            match self.stream.read(&mut rest).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A masked client frame (FIN set) with `opcode` and `payload`, as RFC 6455 §5.2 lays it out.
pub(crate) fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// A short masked frame (see [`masked_frame`]) as a server sends it: mask bit and key gone,
/// payload unmasked.
fn unmasked(frame: &[u8]) -> Vec<u8> {
    let mask = [frame[2], frame[3], frame[4], frame[5]];
    let mut out = vec![frame[0], frame[1] & 0x7f];
    out.extend(frame[6..].iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// Reads an HTTP head (at most 16 KiB) through its blank line; returns it and the bytes read
/// past it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "head larger than 16 KiB",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            let msg = format!("connection closed after {} bytes of head", buf.len());
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name` (lowercase) in a raw head.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_frames() {
        let f = masked_frame(BINARY, b"abc", [1, 2, 3, 4]);
        assert_eq!(f, [0x82, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
        let f = masked_frame(BINARY, &[0; 300], [0; 4]);
        assert_eq!(f[..4], [0x82, 0xfe, 0x01, 0x2c]);
        assert_eq!(f.len(), 4 + 4 + 300);
        let f = masked_frame(BINARY, &[0; 70_000], [0; 4]);
        assert_eq!(f[..10], [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(f.len(), 10 + 4 + 70_000);
    }

    #[test]
    fn finds_headers() {
        let head = "HTTP/1.1 101 OK\r\nSEC-WebSocket-Accept:  x= \r\n\r\n";
        assert_eq!(header(head, "sec-websocket-accept"), Some("x="));
        assert_eq!(header(head, "upgrade"), None);
    }
}
