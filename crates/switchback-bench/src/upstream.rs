//! The upstream every system talks to: a raw WebSocket endpoint that answers the opening
//! handshake with a correct `101` (including `Sec-WebSocket-Accept`) and then echoes the raw
//! bytes it receives, or, for the path `/flood`, writes as fast as it can and never reads.
//!
//! It doesn't parse frames: a client reads back its own (masked) frames. The proxies under test
//! relay bytes without interpreting them, so this changes nothing they do, and keeps the
//! upstream cheap. An idle connection holds no buffer (it is freed after 100 ms without data).
//!
//! Its listen backlog is as deep as the kernel allows ([`BACKLOG`], capped by
//! `net.core.somaxconn`), not the 128 of `TcpListener::bind`: in the storm workload every
//! proxy opens thousands of upstream connections at once, and the upstream's queue must not
//! be what overflows.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustix::process::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::cli::UpstreamArgs;
use crate::error::{Context, Result};
use crate::sys;

/// The echo buffer of a busy connection.
const ECHO_BUF: usize = 64 * 1024;
/// After this long without data a connection gives its echo buffer back.
const IDLE_RELEASE: Duration = Duration::from_millis(100);
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 65_535;
/// What `/flood` writes, over and over.
pub(crate) static FLOOD: [u8; 64 * 1024] = [0x5a; 64 * 1024];

/// Runs the `upstream` role until `SIGTERM`.
pub(crate) fn main(args: &UpstreamArgs) -> Result<()> {
    sys::die_with_parent(Signal::KILL).context("prctl(PR_SET_PDEATHSIG)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    if args.h2 {
        return rt.block_on(async {
            let listener = crate::upstream_h2::bind(args.listen).await?;
            crate::role::announce(&listener)?;
            crate::role::exit_on_sigterm()?;
            crate::upstream_h2::serve(listener).await
        });
    }
    rt.block_on(serve(args.listen, args.frames))
}

async fn serve(listen: SocketAddr, frames: bool) -> Result<()> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("upstream: socket")?;
    socket.set_reuseaddr(true).context("upstream: SO_REUSEADDR")?;
    socket
        .bind(listen)
        .context(format_args!("upstream: binding {listen}"))?;
    let listener = socket
        .listen(BACKLOG)
        .context(format_args!("upstream: listening on {listen}"))?;
    crate::role::announce(&listener)?;
    crate::role::exit_on_sigterm()?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                eprintln!("upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            // Clients vanish mid-workload by design (a bulk run ends by dropping them).
            let _ = connection(stream, frames).await;
        });
    }
}

async fn connection(mut stream: TcpStream, frames: bool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (head, rest) = tokio::time::timeout(HEAD_TIMEOUT, crate::client::read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head"))??;
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let Some(key) = crate::client::header(&head, "sec-websocket-key") else {
        let refusal = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        return stream.write_all(refusal.as_bytes()).await;
    };
    let accept = switchback::websocket::accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await?;
    if path == "/flood" {
        loop {
            stream.write_all(&FLOOD).await?;
        }
    }
    if frames {
        return frame_echo(stream, rest).await;
    }
    stream.write_all(&rest).await?;
    echo(stream).await
}

/// Echoes each frame back unmasked, as a WebSocket server does, until EOF. `rest`: bytes
/// read past the handshake.
async fn frame_echo(stream: TcpStream, rest: Vec<u8>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(ECHO_BUF, std::io::Cursor::new(rest).chain(rd));
    let (mut payload, mut out) = (Vec::new(), Vec::new());
    loop {
        let mut head = [0u8; 2];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return wr.shutdown().await,
            Err(e) => return Err(e),
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(rd.read_u16().await?),
            127 => rd.read_u64().await?,
            n => u64::from(n),
        };
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 {
            rd.read_exact(&mut mask).await?;
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("frame too large"))?;
        payload.resize(len, 0);
        rd.read_exact(&mut payload).await?;
        unmask(&mut payload, mask);
        out.clear();
        out.push(head[0]);
        match len {
            0..=125 => out.push(len as u8),
            126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&payload);
        wr.write_all(&out).await?;
    }
}

/// XORs `buf` with `mask`, eight bytes at a time (a byte loop would make this upstream the
/// slowest part of a bulk run).
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Echoes until EOF, then closes.
async fn echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        if buf.is_empty() {
            stream.readable().await?;
            buf = vec![0u8; ECHO_BUF];
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return stream.shutdown().await,
            Ok(n) => stream.write_all(&buf[..n]).await?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(IDLE_RELEASE, stream.readable()).await {
                    Ok(ready) => ready?,
                    Err(_) => buf = Vec::new(),
                }
            }
            Err(e) => return Err(e),
        }
    }
}
