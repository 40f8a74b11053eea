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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{CpuWindow, Metric, Outcome, Params};
use crate::child::ChildProc;
use crate::client;
use crate::error::{Error, Result, within};

/// One raw write when frames are off.
const RAW: usize = 64 * 1024;
/// The client's read buffer.
const READ_BUF: usize = 256 * 1024;

/// Runs `tunnels` tunnels at once and reports `metric` (MB/s each way, summed over tunnels).
pub(crate) async fn run(
    addr: SocketAddr,
    proxy: Option<&ChildProc>,
    tunnels: usize,
    metric: Metric,
    p: &Params,
) -> Result<Outcome> {
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    // Open every tunnel before any starts sending: handshakes then don't compete with traffic.
    let mut opened = Vec::with_capacity(tunnels);
    for i in 0..tunnels {
        let ws = client::connect(addr, "/bulk", i as u64);
        opened.push(within(Duration::from_secs(10), "bulk handshake", ws).await?);
    }
    let frame: Arc<[u8]> = match p.bulk_frame {
        0 => vec![0xa5; RAW].into(),
        n => client::masked_frame(client::BINARY, &vec![0xa5; n], [0x0f, 0x1e, 0x2d, 0x3c]).into(),
    };
    let mut tasks = JoinSet::new();
    for ws in opened {
        let (mut rd, mut wr) = ws.stream.into_split();
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
    if let Some(cpu) = cpu
        && tunnels == 1
    {
        let gb = (u1 - u0 + d1 - d0) as f64 / 1e9;
        values.push((Metric::BulkCpu, cpu.as_secs_f64() * 1e3 / gb));
    }
    Ok(Outcome {
        values,
        detail: format!(
            "{up_mb:.0} MB/s up, {down_mb:.0} MB/s down ({tunnels} tunnels, {})",
            match p.bulk_frame {
                0 => "raw bytes".to_owned(),
                n => format!("{n} B frames"),
            }
        ),
    })
}
