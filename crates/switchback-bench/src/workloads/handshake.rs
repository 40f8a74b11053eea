//! Handshake rate: concurrent clients each open a WebSocket tunnel (full handshake), echo one
//! 64-byte message, close it (close frame each way, then TCP half-close and the proxy's close),
//! and start again. Tunnels completed per second after a warm-up, and the proxy's CPU time per
//! tunnel.
//!
//! Over TLS (`tls-handshake`, `tls-resume`) each tunnel starts with a TLS handshake to the
//! proxy (TLS 1.3, `TLS_AES_128_GCM_SHA256`, X25519; see [`crate::tls`]), and the close
//! half-closes with a `close_notify`. `tls-handshake` turns client resumption off, so every
//! handshake is a full one (an ECDHE exchange and an ECDSA P-256 signature on the proxy).
//! `tls-resume` gives each client a session store of its own that it keeps across its
//! connections, as a reconnecting browser does: the proxy can resume with a TLS 1.3 ticket
//! (PSK with ECDHE, so still one X25519 exchange, but no signature). The share of handshakes
//! the server actually resumed, by rustls's `handshake_kind()`, is reported too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{CpuWindow, Metric, Outcome, Params, Transport};
use crate::child::ChildProc;
use crate::client;
use crate::error::{Error, Result};
use crate::tls;

/// The longest one tunnel's life may take.
const ONE_LIMIT: Duration = Duration::from_secs(5);

/// One tunnel's whole life.
pub(crate) async fn one(addr: SocketAddr, seed: u64) -> Result<()> {
    let mut ws = client::connect(addr, "/echo", seed).await?;
    let frame = client::masked_frame(client::BINARY, &[0x42; 64], [1, 2, 3, 4]);
    ws.echo(&frame).await?;
    ws.close().await
}

/// One wss:// tunnel's whole life; returns how its TLS handshake went.
pub(crate) async fn one_tls(addr: SocketAddr, seed: u64, tls: &tls::Client) -> Result<tls::Kind> {
    let (stream, kind) = tls.connect(addr).await?;
    let mut ws = client::upgrade(stream, "/echo", seed).await?;
    let frame = client::masked_frame(client::BINARY, &[0x42; 64], [1, 2, 3, 4]);
    ws.echo(&frame).await?;
    ws.close().await?;
    Ok(kind)
}

/// Counters the clients share.
#[derive(Debug, Default)]
struct Counts {
    /// Tunnels completed.
    done: AtomicU64,
    /// Of those, over a resumed TLS session.
    resumed: AtomicU64,
    /// Of those, after a HelloRetryRequest.
    retried: AtomicU64,
    /// Tunnels that failed.
    errors: AtomicU64,
}

impl Counts {
    /// (done, resumed, retried, errors) now.
    fn read(&self) -> [u64; 4] {
        [&self.done, &self.resumed, &self.retried, &self.errors].map(|c| c.load(Ordering::Relaxed))
    }
}

/// Runs `p.clients` clients in a loop and reports tunnels per second.
pub(crate) async fn run(
    addr: SocketAddr,
    proxy: Option<&ChildProc>,
    transport: Transport<'_>,
    p: &Params,
) -> Result<Outcome> {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = JoinSet::new();
    for c in 0..p.clients {
        // A client of its own per task: with resumption, its own session store.
        let tls = match transport {
            Transport::Plain => None,
            Transport::Tls { certs, resume } => Some(certs.client(resume)?),
        };
        let (counts, stop, first_error) = (counts.clone(), stop.clone(), first_error.clone());
        tasks.spawn(async move {
            let mut seed = (c as u64) << 32;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                let life = async {
                    match &tls {
                        None => one(addr, seed).await.map(|()| None),
                        Some(tls) => one_tls(addr, seed, tls).await.map(Some),
                    }
                };
                match tokio::time::timeout(ONE_LIMIT, life).await {
                    Ok(Ok(kind)) => {
                        counts.done.fetch_add(1, Ordering::Relaxed);
                        match kind {
                            Some(tls::Kind::Resumed) => counts.resumed.fetch_add(1, Ordering::Relaxed),
                            Some(tls::Kind::Retried) => counts.retried.fetch_add(1, Ordering::Relaxed),
                            _ => 0,
                        };
                    }
                    failed => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
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
    let (before, t0) = (counts.read(), Instant::now());
    tokio::time::sleep(p.hs_time).await;
    let (after, t1) = (counts.read(), Instant::now());
    let cpu = cpu.split()?;
    stop.store(true, Ordering::Relaxed);
    if tokio::time::timeout(ONE_LIMIT * 2, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tasks.abort_all();
    }
    let [done, resumed, retried, failed] = [0, 1, 2, 3].map(|i| after[i] - before[i]);
    let rate = done as f64 / (t1 - t0).as_secs_f64();
    let why = first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    if done == 0 {
        return Err(Error::new(format!(
            "no tunnel completed; {}",
            why.unwrap_or_else(|| "no error seen".to_owned())
        )));
    }
    let (rate_metric, cpu_metric) = match transport {
        Transport::Plain => (Metric::Handshakes, Metric::HandshakeCpu),
        Transport::Tls { resume: false, .. } => (Metric::TlsHandshakes, Metric::TlsHandshakeCpu),
        Transport::Tls { resume: true, .. } => (Metric::TlsResumes, Metric::TlsResumeCpu),
    };
    let mut detail = format!("{rate:.0} tunnels/s, {} clients", p.clients);
    let mut values = vec![(rate_metric, rate)];
    if let Transport::Tls { resume, .. } = transport {
        let pct = resumed as f64 * 100.0 / done as f64;
        detail.push_str(&format!(", {pct:.1}% resumed"));
        if resume {
            values.push((Metric::TlsResumedPct, pct));
        }
        if retried > 0 {
            detail.push_str(&format!(", {retried} after a HelloRetryRequest"));
        }
    }
    if failed > 0 {
        let why = why.unwrap_or_default();
        detail.push_str(&format!(", {failed} FAILED while measuring (first: {why})"));
    }
    if let Some((cpu, user)) = cpu {
        let each = cpu.as_secs_f64() * 1e6 / done as f64;
        let user = user.as_secs_f64() * 1e6 / done as f64;
        values.push((cpu_metric, each));
        if let Transport::Plain = transport {
            values.push((Metric::HandshakeUserCpu, user));
        }
        detail.push_str(&format!(
            ", proxy CPU {each:.0} µs each ({user:.0} in user space)"
        ));
    }
    Ok(Outcome { values, detail })
}
