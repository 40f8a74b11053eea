//! Bulk throughput: each tunnel's client writes binary WebSocket frames with a 64 KiB payload
//! (masked, as a client must; one frame per write) as fast as it can while it reads the echo
//! back, both directions at once. After a warm-up, the bytes moved each way over a fixed time
//! give MB/s (10^6 bytes; frame headers are 14 bytes per 64 KiB, 0.02%). The headline is the
//! lesser direction; the two agree in steady state, since the upstream echoes.
//!
//! Why real frames and not raw bytes: nginx and HAProxy relay bytes after the `101` without
//! looking at them, but Switchback follows WebSocket frame headers (to close politely on drain)
//! and splices only frame payload, so arbitrary bytes (which parse as a stream of tiny frames)
//! would measure a path real WebSocket traffic never takes. The echo upstream sends the same
//! masked frames back; a relay doesn't care which side masks. `--bulk-frame 0` writes raw
//! unframed 64 KiB chunks instead, `--bulk-frame N` frames of N payload bytes.
//!
//! `tls-bulk` is the one-tunnel workload over wss://: the client encrypts what it writes and
//! decrypts what it reads (TLS 1.3 records of at most 16 KiB, `TLS_AES_128_GCM_SHA256`), and
//! the proxy decrypts, relays to the plain upstream, and encrypts the echo. The client's own
//! TLS work runs on the same cores as the proxy, for every system alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{CpuWindow, Metric, Outcome, Params, Transport};
use crate::child::ChildProc;
use crate::client;
use crate::error::{Error, Result, within};

/// One raw write when frames are off.
const RAW: usize = 64 * 1024;
/// The client's read buffer.
const READ_BUF: usize = 256 * 1024;

/// A tunnel's read half.
type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A tunnel's write half.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens one tunnel over `transport` and splits it in halves.
async fn open(addr: SocketAddr, seed: u64, transport: Transport<'_>) -> Result<(Reader, Writer)> {
    Ok(match transport {
        Transport::Plain => {
            let (rd, wr) = client::connect(addr, "/bulk", seed).await?.stream.into_split();
            (Box::new(rd), Box::new(wr))
        }
        Transport::Tls { certs, resume } => {
            let (stream, _) = certs.client(resume)?.connect(addr).await?;
            let ws = client::upgrade(stream, "/bulk", seed).await?;
            let (rd, wr) = tokio::io::split(ws.stream);
            (Box::new(rd), Box::new(wr))
        }
    })
}

/// Runs `tunnels` tunnels at once and reports MB/s each way, summed over tunnels (and, for
/// one tunnel, the proxy's CPU time per GB).
pub(crate) async fn run(
    addr: SocketAddr,
    proxy: Option<&ChildProc>,
    tunnels: usize,
    transport: Transport<'_>,
    p: &Params,
) -> Result<Outcome> {
    let (metric, cpu_metric) = match (transport, tunnels) {
        (Transport::Plain, 1) => (Metric::Bulk1, Some(Metric::BulkCpu)),
        (Transport::Plain, _) => (Metric::Bulk64, None),
        (Transport::Tls { .. }, 1) => (Metric::TlsBulk1, Some(Metric::TlsBulkCpu)),
        (Transport::Tls { .. }, n) => {
            return Err(Error::new(format!("no TLS bulk figure for {n} tunnels")));
        }
    };
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    // Open every tunnel before any starts sending: handshakes then don't compete with traffic.
    let mut opened = Vec::with_capacity(tunnels);
    for i in 0..tunnels {
        let ws = open(addr, i as u64, transport);
        opened.push(within(Duration::from_secs(10), "bulk handshake", ws).await?);
    }
    let frame: Arc<[u8]> = match p.bulk_frame {
        0 => vec![0xa5; RAW].into(),
        n => client::masked_frame(client::BINARY, &vec![0xa5; n], [0x0f, 0x1e, 0x2d, 0x3c]).into(),
    };
    let mut tasks = JoinSet::new();
    for (mut rd, mut wr) in opened {
        let up = up.clone();
        let frame = frame.clone();
        tasks.spawn(async move {
            loop {
                wr.write_all(&frame).await?;
                up.fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
        });
        let down = down.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; READ_BUF];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "echo closed",
                    ));
                }
                down.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(p.bulk_warmup).await;
    let cpu = CpuWindow::start(proxy)?;
    let (u0, d0, t0) = (
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(p.bulk_time).await;
    let (u1, d1, t1) = (
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
        Instant::now(),
    );
    let cpu = cpu.used()?;
    // Every task loops forever: one that ended has failed.
    let failed = tasks.try_join_next();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Some(ended) = failed {
        let why = match ended {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(())) => "ended".to_owned(),
            Err(e) => e.to_string(),
        };
        return Err(Error::new(format!("a bulk tunnel failed: {why}")));
    }
    let secs = (t1 - t0).as_secs_f64();
    let up_mb = (u1 - u0) as f64 / secs / 1e6;
    let down_mb = (d1 - d0) as f64 / secs / 1e6;
    let mut values = vec![(metric, up_mb.min(down_mb))];
    if let (Some(cpu), Some(cpu_metric)) = (cpu, cpu_metric) {
        let gb = (u1 - u0 + d1 - d0) as f64 / 1e9;
        values.push((cpu_metric, cpu.as_secs_f64() * 1e3 / gb));
    }
    Ok(Outcome {
        values,
        detail: format!(
            "{up_mb:.0} MB/s up, {down_mb:.0} MB/s down ({tunnels} tunnels, {}{})",
            match p.bulk_frame {
                0 => "raw bytes".to_owned(),
                n => format!("{n} B frames"),
            },
            match transport {
                Transport::Plain => "",
                Transport::Tls { .. } => ", over TLS",
            }
        ),
    })
}
