//! Memory: proxy RSS per idle tunnel. After a warm-up (a few tunnels opened and closed, so
//! one-time costs land in the baseline), the proxy's RSS is read; then `p.idle_tunnels`
//! tunnels are opened at a controlled rate (at most 64 handshakes in flight), each echoes one
//! 64-byte message (an idle WebSocket has usually said something) and then stays quiet while
//! held open; after a settling pause RSS is read again. (after - before) / tunnels is the
//! figure. Kernel socket buffers are not RSS and are not counted there, for any system; the
//! machine's kernel slab (sockets, their inodes, epoll entries, on every side) is read
//! around the same window and reported per tunnel beside it, with the upstream connections
//! the tunnels took (the upstream's descriptors, before and after).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{MIB, Metric, Outcome, Params, handshake};
use crate::child::ChildProc;
use crate::client::{self, Ws};
use crate::error::{Context, Result, within};

/// Handshakes in flight while opening.
const IN_FLIGHT: usize = 64;
/// Tunnels opened and closed before the baseline.
const WARMUP_TUNNELS: u64 = 64;

/// Opens the idle tunnels, holds them, and reports bytes per tunnel.
pub(crate) async fn run(
    addr: SocketAddr,
    proxy: &ChildProc,
    upstream: &ChildProc,
    p: &Params,
) -> Result<Outcome> {
    for seed in 0..WARMUP_TUNNELS {
        within(
            Duration::from_secs(5),
            "warm-up tunnel",
            handshake::one(addr, seed),
        )
        .await?;
    }
    tokio::time::sleep(p.settle).await;
    let before = proxy.rss()?;
    let sockets_before = upstream.descriptors()?;
    let slab_before = crate::sys::kernel_slab().context("kernel slab")?;
    let tunnels = open_idle(addr, p.idle_tunnels, p.open_rate).await?;
    tokio::time::sleep(p.settle).await;
    let after = proxy.rss()?;
    let slab = crate::sys::kernel_slab()
        .context("kernel slab")?
        .saturating_sub(slab_before);
    let slab_per_tunnel = slab as f64 / p.idle_tunnels as f64;
    // The upstream's sockets now, less those before: the connections these tunnels take
    // (the warm-up's are closed by then, or shared ones the count leaves out).
    let conns = upstream.descriptors()?.saturating_sub(sockets_before);
    drop(tunnels);
    let per_tunnel = after.saturating_sub(before) as f64 / p.idle_tunnels as f64;
    Ok(Outcome {
        values: vec![
            (Metric::IdleBytes, per_tunnel),
            (Metric::UpstreamConns, conns as f64),
            (Metric::KernelSlab, slab_per_tunnel),
        ],
        detail: format!(
            "{per_tunnel:.0} B per idle tunnel: RSS {:.1} -> {:.1} MiB with {} tunnels open over {conns} upstream connections; kernel slab {slab_per_tunnel:.0} B per tunnel",
            before as f64 / MIB,
            after as f64 / MIB,
            p.idle_tunnels
        ),
    })
}

/// Opens `n` tunnels at `rate` per second, each after one echo; returns them open.
pub(crate) async fn open_idle(addr: SocketAddr, n: usize, rate: f64) -> Result<Vec<Ws>> {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut open = Vec::with_capacity(n);
    let start = Instant::now();
    let frame = Arc::new(client::masked_frame(client::BINARY, &[0x17; 64], [5, 6, 7, 8]));
    for i in 0..n {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .context("semaphore closed")?;
        let frame = frame.clone();
        tasks.spawn(async move {
            let _permit = permit;
            within(Duration::from_secs(10), format!("idle tunnel {i}"), async {
                let mut ws = client::connect(addr, "/idle", 1_000_000 + i as u64).await?;
                ws.echo(&frame).await?;
                Ok::<_, crate::error::Error>(ws)
            })
            .await
        });
        // Collect as we go so a failure stops the run early.
        while let Some(done) = tasks.try_join_next() {
            open.push(done.context("opening task")??);
        }
    }
    while let Some(done) = tasks.join_next().await {
        open.push(done.context("opening task")??);
    }
    Ok(open)
}
