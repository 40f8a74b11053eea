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
use tokio::io::AsyncWriteExt;
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
static FLOOD: [u8; 64 * 1024] = [0x5a; 64 * 1024];

/// Runs the `upstream` role until `SIGTERM`.
pub(crate) fn main(args: &UpstreamArgs) -> Result<()> {
    sys::die_with_parent(Signal::KILL).context("prctl(PR_SET_PDEATHSIG)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(serve(args.listen))
}

async fn serve(listen: SocketAddr) -> Result<()> {
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
            let _ = connection(stream).await;
        });
    }
}

async fn connection(mut stream: TcpStream) -> io::Result<()> {
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
    stream.write_all(&rest).await?;
    echo(stream).await
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
