//! Handshake rate: concurrent clients each open a WebSocket tunnel (full handshake), echo one
//! 64-byte message, close it (close frame each way, then TCP half-close and the proxy's close),
//! and start again. Tunnels completed per second after a warm-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{CpuWindow, Metric, Outcome, Params};
use crate::child::ChildProc;
use crate::client;
use crate::error::{Error, Result};

/// The longest one tunnel's life may take.
const ONE_LIMIT: Duration = Duration::from_secs(5);

/// One tunnel's whole life.
pub(crate) async fn one(addr: SocketAddr, seed: u64) -> Result<()> {
    let mut ws = client::connect(addr, "/echo", seed).await?;
    let frame = client::masked_frame(client::BINARY, &[0x42; 64], [1, 2, 3, 4]);
    ws.echo(&frame).await?;
    ws.close().await
}

/// Runs `p.clients` clients in a loop and reports tunnels per second.
pub(crate) async fn run(addr: SocketAddr, proxy: Option<&ChildProc>, p: &Params) -> Result<Outcome> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = JoinSet::new();
    for c in 0..p.clients {
        let (done, errors, stop, first_error) =
            (done.clone(), errors.clone(), stop.clone(), first_error.clone());
        tasks.spawn(async move {
            let mut seed = (c as u64) << 32;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                match tokio::time::timeout(ONE_LIMIT, one(addr, seed)).await {
                    Ok(Ok(())) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    failed => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("timed out after {ONE_LIMIT:?}"),
                        };
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(why);
                        // Don't spin on a refusing proxy.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    tokio::time::sleep(p.hs_warmup).await;
    let cpu = CpuWindow::start(proxy)?;
    let (c0, e0, t0) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(p.hs_time).await;
    let (c1, e1, t1) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        Instant::now(),
    );
    let cpu = cpu.used()?;
    stop.store(true, Ordering::Relaxed);
    if tokio::time::timeout(ONE_LIMIT * 2, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tasks.abort_all();
    }
    let rate = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    let failed = e1 - e0;
    let why = first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    if c1 == c0 {
        return Err(Error::new(format!(
            "no tunnel completed; {}",
            why.unwrap_or_else(|| "no error seen".to_owned())
        )));
    }
    let mut detail = format!("{rate:.0} tunnels/s, {} clients", p.clients);
    if failed > 0 {
        let why = why.unwrap_or_default();
        detail.push_str(&format!(", {failed} FAILED while measuring (first: {why})"));
    }
    let mut values = vec![(Metric::Handshakes, rate)];
    if let Some(cpu) = cpu {
        let each = cpu.as_secs_f64() * 1e6 / (c1 - c0) as f64;
        values.push((Metric::HandshakeCpu, each));
        detail.push_str(&format!(", proxy CPU {each:.0} µs each"));
    }
    Ok(Outcome { values, detail })
}
