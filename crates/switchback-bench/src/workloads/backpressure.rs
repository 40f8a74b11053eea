//! Backpressure: a client opens a tunnel to the upstream's `/flood` path, reads the first
//! 64 KiB (so the flood is known to flow through the proxy), then stops reading while the
//! upstream keeps writing as fast as it can. Proxy RSS is read before the tunnel opens and
//! after `p.flood_time`. A proxy that respects backpressure stops reading the upstream once the
//! client's socket is full; one that doesn't buffers the flood.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{MIB, Metric, Outcome, Params};
use crate::child::ChildProc;
use crate::client;
use crate::error::{Error, Result, within};

/// Flood bytes read before the client stops reading.
const FIRST_READ: usize = 64 * 1024;

/// Floods one tunnel whose client doesn't read, and reports proxy RSS.
pub(crate) async fn run(addr: SocketAddr, proxy: &ChildProc, p: &Params) -> Result<Outcome> {
    tokio::time::sleep(p.settle).await;
    let before = proxy.rss()?;
    let mut ws = within(
        Duration::from_secs(10),
        "flood handshake",
        client::connect(addr, "/flood", 7),
    )
    .await?;
    let mut got = ws.pending.len();
    let mut buf = vec![0u8; 16 * 1024];
    within(Duration::from_secs(10), "first flood bytes", async {
        while got < FIRST_READ {
            let n = ws.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(Error::new("the flood stopped"));
            }
            got += n;
        }
        Ok(())
    })
    .await?;
    // The client now stops reading, and holds the tunnel open.
    tokio::time::sleep(p.flood_time).await;
    let after = proxy.rss()?;
    drop(ws);
    let growth = after.saturating_sub(before) as f64 / MIB;
    Ok(Outcome {
        values: vec![
            (Metric::FloodRss, after as f64 / MIB),
            (Metric::FloodGrowth, growth),
        ],
        detail: format!(
            "RSS {:.1} MiB before, {:.1} MiB after {:?} of flood (+{growth:.2} MiB)",
            before as f64 / MIB,
            after as f64 / MIB,
            p.flood_time
        ),
    })
}
