//! The workloads, what they measure, and how long they run.

pub(crate) mod backpressure;
pub(crate) mod bulk;
pub(crate) mod handshake;
pub(crate) mod latency;
pub(crate) mod memory;
pub(crate) mod storm;

use std::time::Duration;

use crate::child::ChildProc;
use crate::error::{Context, Result};
use crate::systems::{Running, SystemKind};
use crate::tls::Certs;

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Workload {
    /// Bulk throughput, one tunnel, both directions at once.
    Bulk1,
    /// Bulk throughput, 64 tunnels, both directions at once.
    Bulk64,
    /// Echo round trips of 64-byte messages on one tunnel.
    Latency,
    /// New tunnels per second from 64 clients.
    Handshake,
    /// Proxy RSS per idle tunnel.
    Memory,
    /// Proxy RSS while the client stops reading and the upstream floods.
    Backpressure,
    /// Every client of many open tunnels drops its tunnel and reconnects at once.
    Storm,
    /// New wss:// tunnels per second, each a full TLS handshake (no resumption).
    TlsHandshake,
    /// New wss:// tunnels per second, each client resuming its last TLS session.
    TlsResume,
    /// Bulk throughput over one wss:// tunnel, both directions at once.
    TlsBulk,
}

impl Workload {
    /// Every workload, in run order.
    pub(crate) const ALL: [Self; 10] = [
        Self::Bulk1,
        Self::Bulk64,
        Self::Latency,
        Self::Handshake,
        Self::Memory,
        Self::Backpressure,
        Self::Storm,
        Self::TlsHandshake,
        Self::TlsResume,
        Self::TlsBulk,
    ];

    /// The name on the command line and in logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Bulk1 => "bulk1",
            Self::Bulk64 => "bulk64",
            Self::Latency => "latency",
            Self::Handshake => "handshake",
            Self::Memory => "memory",
            Self::Backpressure => "backpressure",
            Self::Storm => "storm",
            Self::TlsHandshake => "tls-handshake",
            Self::TlsResume => "tls-resume",
            Self::TlsBulk => "tls-bulk",
        }
    }

    /// Whether the workload measures a proxy process (so `direct` has nothing to report).
    pub(crate) fn needs_proxy(self) -> bool {
        matches!(self, Self::Memory | Self::Backpressure) || self.is_tls()
    }

    /// Whether the client speaks TLS to the proxy (which speaks plain TCP to the upstream).
    pub(crate) fn is_tls(self) -> bool {
        matches!(self, Self::TlsHandshake | Self::TlsResume | Self::TlsBulk)
    }
}

/// A figure in the report: one row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Metric {
    /// MB/s each way over one tunnel.
    Bulk1,
    /// MB/s each way over 64 tunnels (sum).
    Bulk64,
    /// Proxy CPU time per GB relayed (both ways summed) over one tunnel, ms.
    BulkCpu,
    /// Echo round trip, median, µs.
    EchoP50,
    /// Echo round trip, 99th percentile, µs.
    EchoP99,
    /// Median round trip added over `direct`, µs (derived).
    EchoAddedP50,
    /// Tunnels per second (handshake, echo, close).
    Handshakes,
    /// Proxy CPU time per tunnel in the handshake workload, µs.
    HandshakeCpu,
    /// The user-space part of [`Metric::HandshakeCpu`], µs: the rest is the kernel's
    /// (sockets, system calls), which no change to the proxy's code takes away.
    HandshakeUserCpu,
    /// Proxy RSS per idle tunnel, bytes.
    IdleBytes,
    /// Upstream connections the idle tunnels of the memory workload take.
    UpstreamConns,
    /// The machine's kernel slab memory per idle tunnel (sockets and what goes with them, on
    /// every side: client, proxy, upstream), bytes.
    KernelSlab,
    /// Proxy RSS after the flood, MiB.
    FloodRss,
    /// Proxy RSS growth during the flood, MiB.
    FloodGrowth,
    /// Reconnect storm: seconds from the drop until every client has reconnected and echoed.
    StormSeconds,
    /// Reconnect storm: handshake latency (connect start to `101`), median, ms.
    StormP50,
    /// Reconnect storm: handshake latency, 99th percentile, ms.
    StormP99,
    /// Reconnect storm: attempts that failed (and were retried).
    StormFailures,
    /// Reconnect storm: proxy CPU time over the storm per reconnected tunnel, µs.
    StormCpu,
    /// The user-space part of [`Metric::StormCpu`], µs.
    StormUserCpu,
    /// wss:// tunnels per second, full TLS handshake each.
    TlsHandshakes,
    /// Proxy CPU time per wss:// tunnel with a full TLS handshake, µs.
    TlsHandshakeCpu,
    /// wss:// tunnels per second, clients resuming their TLS sessions.
    TlsResumes,
    /// Proxy CPU time per wss:// tunnel when clients resume, µs.
    TlsResumeCpu,
    /// Share of the resuming workload's handshakes that the server resumed, percent.
    TlsResumedPct,
    /// MB/s each way over one wss:// tunnel.
    TlsBulk1,
    /// Proxy CPU time per GB relayed (both ways summed) over one wss:// tunnel, ms (the same
    /// number as µs per MB).
    TlsBulkCpu,
}

impl Metric {
    /// Every row, in report order.
    pub(crate) const ALL: [Self; 27] = [
        Self::Bulk1,
        Self::Bulk64,
        Self::BulkCpu,
        Self::EchoP50,
        Self::EchoP99,
        Self::EchoAddedP50,
        Self::Handshakes,
        Self::HandshakeCpu,
        Self::HandshakeUserCpu,
        Self::IdleBytes,
        Self::UpstreamConns,
        Self::KernelSlab,
        Self::FloodRss,
        Self::FloodGrowth,
        Self::StormSeconds,
        Self::StormP50,
        Self::StormP99,
        Self::StormFailures,
        Self::StormCpu,
        Self::StormUserCpu,
        Self::TlsHandshakes,
        Self::TlsHandshakeCpu,
        Self::TlsResumes,
        Self::TlsResumeCpu,
        Self::TlsResumedPct,
        Self::TlsBulk1,
        Self::TlsBulkCpu,
    ];

    /// A stable identifier (JSON key).
    pub(crate) fn id(self) -> &'static str {
        match self {
            Self::Bulk1 => "bulk_1_tunnel_mb_s",
            Self::Bulk64 => "bulk_64_tunnels_mb_s",
            Self::BulkCpu => "bulk_1_tunnel_proxy_cpu_ms_per_gb",
            Self::EchoP50 => "echo_p50_us",
            Self::EchoP99 => "echo_p99_us",
            Self::EchoAddedP50 => "echo_p50_added_us",
            Self::Handshakes => "handshakes_per_s",
            Self::HandshakeCpu => "handshake_proxy_cpu_us",
            Self::HandshakeUserCpu => "handshake_proxy_user_cpu_us",
            Self::IdleBytes => "idle_bytes_per_tunnel",
            Self::UpstreamConns => "idle_upstream_connections",
            Self::KernelSlab => "idle_kernel_slab_bytes_per_tunnel",
            Self::FloodRss => "flood_rss_mib",
            Self::FloodGrowth => "flood_rss_growth_mib",
            Self::StormSeconds => "storm_all_back_s",
            Self::StormP50 => "storm_handshake_p50_ms",
            Self::StormP99 => "storm_handshake_p99_ms",
            Self::StormFailures => "storm_failed_attempts",
            Self::StormCpu => "storm_proxy_cpu_us_per_tunnel",
            Self::StormUserCpu => "storm_proxy_user_cpu_us_per_tunnel",
            Self::TlsHandshakes => "tls_full_handshakes_per_s",
            Self::TlsHandshakeCpu => "tls_full_handshake_proxy_cpu_us",
            Self::TlsResumes => "tls_resumed_handshakes_per_s",
            Self::TlsResumeCpu => "tls_resumed_handshake_proxy_cpu_us",
            Self::TlsResumedPct => "tls_resumed_percent",
            Self::TlsBulk1 => "tls_bulk_1_tunnel_mb_s",
            Self::TlsBulkCpu => "tls_bulk_1_tunnel_proxy_cpu_ms_per_gb",
        }
    }

    /// The row label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Bulk1 => "bulk, 1 tunnel, MB/s each way",
            Self::Bulk64 => "bulk, 64 tunnels, MB/s each way",
            Self::BulkCpu => "bulk, 1 tunnel, proxy CPU ms per GB",
            Self::EchoP50 => "echo 64 B, p50 µs",
            Self::EchoP99 => "echo 64 B, p99 µs",
            Self::EchoAddedP50 => "echo p50 added over direct, µs",
            Self::Handshakes => "new tunnels/s",
            Self::HandshakeCpu => "new tunnel, proxy CPU µs each",
            Self::HandshakeUserCpu => "new tunnel, proxy user-space CPU µs each",
            Self::IdleBytes => "idle tunnel, proxy RSS bytes each",
            Self::UpstreamConns => "idle tunnels' upstream connections",
            Self::KernelSlab => "idle tunnel, machine's kernel slab bytes each",
            Self::FloodRss => "flood, proxy RSS after, MiB",
            Self::FloodGrowth => "flood, proxy RSS growth, MiB",
            Self::StormSeconds => "storm, all reconnected and echoed, s",
            Self::StormP50 => "storm, handshake p50, ms",
            Self::StormP99 => "storm, handshake p99, ms",
            Self::StormFailures => "storm, failed attempts",
            Self::StormCpu => "storm, proxy CPU µs per tunnel",
            Self::StormUserCpu => "storm, proxy user-space CPU µs per tunnel",
            Self::TlsHandshakes => "TLS full handshake tunnels/s",
            Self::TlsHandshakeCpu => "TLS full handshake tunnel, proxy CPU µs each",
            Self::TlsResumes => "TLS resuming tunnels/s",
            Self::TlsResumeCpu => "TLS resuming tunnel, proxy CPU µs each",
            Self::TlsResumedPct => "TLS resuming: handshakes resumed, %",
            Self::TlsBulk1 => "TLS bulk, 1 tunnel, MB/s each way",
            Self::TlsBulkCpu => "TLS bulk, 1 tunnel, proxy CPU ms per GB",
        }
    }

    /// Whether a bigger figure is better.
    pub(crate) fn higher_is_better(self) -> bool {
        matches!(
            self,
            Self::Bulk1
                | Self::Bulk64
                | Self::Handshakes
                | Self::TlsHandshakes
                | Self::TlsResumes
                | Self::TlsResumedPct
                | Self::TlsBulk1
        )
    }
}

/// Durations and counts of a run.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Bulk: time before measuring.
    pub(crate) bulk_warmup: Duration,
    /// Bulk: measured time.
    pub(crate) bulk_time: Duration,
    /// Bulk: payload bytes per frame; 0 for raw, unframed 64 KiB writes.
    pub(crate) bulk_frame: usize,
    /// Latency: round trips before measuring.
    pub(crate) echo_warmup: usize,
    /// Latency: measured round trips.
    pub(crate) echo_samples: usize,
    /// Handshake: concurrent clients.
    pub(crate) clients: usize,
    /// Handshake: time before measuring.
    pub(crate) hs_warmup: Duration,
    /// Handshake: measured time.
    pub(crate) hs_time: Duration,
    /// Memory: idle tunnels held open.
    pub(crate) idle_tunnels: usize,
    /// Memory: tunnels opened per second.
    pub(crate) open_rate: f64,
    /// Memory and backpressure: wait before reading RSS.
    pub(crate) settle: Duration,
    /// Backpressure: how long the upstream floods before RSS is read.
    pub(crate) flood_time: Duration,
    /// Storm: tunnels open before the storm, all reconnecting in it.
    pub(crate) storm_tunnels: usize,
}

impl Params {
    /// The reported run.
    pub(crate) fn full() -> Self {
        Self {
            bulk_warmup: Duration::from_secs(1),
            bulk_time: Duration::from_secs(5),
            bulk_frame: 64 * 1024,
            echo_warmup: 2_000,
            echo_samples: 20_000,
            clients: 64,
            hs_warmup: Duration::from_secs(1),
            hs_time: Duration::from_secs(5),
            idle_tunnels: 10_000,
            open_rate: 2_000.0,
            settle: Duration::from_secs(1),
            flood_time: Duration::from_secs(10),
            storm_tunnels: 10_000,
        }
    }

    /// `--quick`: the same workloads, shorter (about 1-2 minutes in all).
    pub(crate) fn quick() -> Self {
        Self {
            bulk_warmup: Duration::from_millis(500),
            bulk_time: Duration::from_millis(1500),
            echo_warmup: 500,
            echo_samples: 3_000,
            hs_warmup: Duration::from_millis(300),
            hs_time: Duration::from_millis(1500),
            idle_tunnels: 2_000,
            settle: Duration::from_millis(500),
            flood_time: Duration::from_secs(3),
            storm_tunnels: 500,
            ..Self::full()
        }
    }

    /// The harness's own test: seconds in all, figures meaningless.
    pub(crate) fn smoke() -> Self {
        Self {
            bulk_warmup: Duration::from_millis(50),
            bulk_time: Duration::from_millis(200),
            bulk_frame: 64 * 1024,
            echo_warmup: 10,
            echo_samples: 100,
            clients: 8,
            hs_warmup: Duration::from_millis(50),
            hs_time: Duration::from_millis(200),
            idle_tunnels: 50,
            open_rate: 1_000.0,
            settle: Duration::from_millis(100),
            flood_time: Duration::from_millis(300),
            storm_tunnels: 50,
        }
    }
}

/// What one workload measured on one system.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The figures.
    pub(crate) values: Vec<(Metric, f64)>,
    /// A line for the log, with details the table leaves out.
    pub(crate) detail: String,
}

/// The longest a workload may take before it counts as failed.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(300);

/// Runs `workload` against a started system; the TLS workloads need the run's `certs`.
pub(crate) async fn run(
    workload: Workload,
    system: &Running,
    p: &Params,
    certs: Option<&Certs>,
) -> Result<Outcome> {
    let addr = system.addr;
    let proxy = system.proxy.as_ref();
    let tls = |resume| match certs {
        Some(certs) => Ok(Transport::Tls { certs, resume }),
        None => Err(crate::error::Error::new("no TLS certificate for this run")),
    };
    let fut = async {
        match workload {
            Workload::Bulk1 => bulk::run(addr, proxy, 1, Transport::Plain, p).await,
            Workload::Bulk64 => bulk::run(addr, proxy, 64, Transport::Plain, p).await,
            Workload::Latency => latency::run(addr, p).await,
            Workload::Handshake => handshake::run(addr, proxy, Transport::Plain, p).await,
            Workload::TlsHandshake => handshake::run(addr, proxy, tls(false)?, p).await,
            Workload::TlsResume => handshake::run(addr, proxy, tls(true)?, p).await,
            Workload::TlsBulk => bulk::run(addr, proxy, 1, tls(false)?, p).await,
            Workload::Memory => {
                let proxy = system.proxy.as_ref().context("no proxy process to measure")?;
                memory::run(addr, proxy, &system.upstream, p).await
            }
            Workload::Backpressure => {
                let proxy = system.proxy.as_ref().context("no proxy process to measure")?;
                backpressure::run(addr, proxy, p).await
            }
            Workload::Storm => storm::run(addr, proxy, p).await,
        }
    };
    match tokio::time::timeout(WORKLOAD_LIMIT, fut).await {
        Ok(outcome) => outcome,
        Err(_) => Err(crate::error::Error::new(format!(
            "{} did not finish within {WORKLOAD_LIMIT:?}",
            workload.name()
        ))),
    }
}

/// The proxy's CPU time over a workload's measured window (`direct` has no proxy: nothing).
pub(crate) struct CpuWindow<'a> {
    proxy: Option<(&'a ChildProc, Duration, Duration)>,
}

impl<'a> CpuWindow<'a> {
    /// Starts the window.
    pub(crate) fn start(proxy: Option<&'a ChildProc>) -> Result<Self> {
        let proxy = match proxy {
            Some(child) => Some((child, child.cpu()?, child.user_cpu()?)),
            None => None,
        };
        Ok(Self { proxy })
    }

    /// The CPU time used since [`CpuWindow::start`], if there is a proxy.
    pub(crate) fn used(&self) -> Result<Option<Duration>> {
        Ok(self.split()?.map(|(all, _)| all))
    }

    /// The CPU time used since [`CpuWindow::start`] and its user-space part, if there is a
    /// proxy.
    pub(crate) fn split(&self) -> Result<Option<(Duration, Duration)>> {
        match self.proxy {
            Some((child, all, user)) => Ok(Some((
                child.cpu()?.saturating_sub(all),
                child.user_cpu()?.saturating_sub(user),
            ))),
            None => Ok(None),
        }
    }
}

/// How a workload's client reaches the system.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Transport<'a> {
    /// Plain TCP (ws://).
    Plain,
    /// TLS (wss://) to a proxy serving the run's certificate; `resume`: each client keeps its
    /// session store across its connections (else every handshake is a full one).
    Tls {
        /// The run's certificate (its CA is what the client trusts).
        certs: &'a Certs,
        /// Whether clients resume sessions.
        resume: bool,
    },
}

/// Whether `kind` can run `workload` at all. The TLS workloads run on the systems that
/// terminate TLS: Switchback (its binary, with a TLS listener), nginx and HAProxy;
/// `switchback-bin` is that binary with a plain listener, for the plain workloads.
pub(crate) fn applies(workload: Workload, kind: SystemKind) -> bool {
    if workload.is_tls() {
        return matches!(
            kind,
            SystemKind::Switchback | SystemKind::Nginx | SystemKind::Haproxy
        );
    }
    !(workload.needs_proxy() && kind == SystemKind::Direct)
}

/// Bytes in a MiB.
pub(crate) const MIB: f64 = 1024.0 * 1024.0;
