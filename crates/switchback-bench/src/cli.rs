//! Command line: the benchmark run (default) and the hidden child-process subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::systems::SystemKind;
use crate::workloads::Workload;

/// Benchmarks Switchback against no proxy, nginx and HAProxy on loopback.
#[derive(Debug, Parser)]
#[command(name = "switchback-bench", version, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    /// A hidden child-process role; none runs the benchmark.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// The benchmark run's options.
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// Options of a benchmark run.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Shrinks durations and counts (about 1-2 minutes in all): a smoke run, not the
    /// reported figures.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Tiny durations and counts, for the harness's own test.
    #[arg(long, hide = true)]
    pub(crate) smoke: bool,
    /// Repeats the whole run N times and reports the median of each cell.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub(crate) runs: u32,
    /// Workloads to run (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<WorkloadArg>,
    /// Systems to run (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) systems: Vec<SystemKind>,
    /// Where results.json and results.svg go [default: WORKSPACE/target/bench].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// The nginx binary [default: `nginx` on PATH, /usr/sbin, /usr/local/sbin].
    #[arg(long)]
    pub(crate) nginx: Option<PathBuf>,
    /// The haproxy binary [default: `haproxy` on PATH, /usr/sbin, /usr/local/sbin].
    #[arg(long)]
    pub(crate) haproxy: Option<PathBuf>,
    /// HAProxy's kernel splicing: `always` (`option splice-request` + `option splice-response`),
    /// `auto` (`option splice-auto`) or `off`.
    #[arg(long, default_value = "always")]
    pub(crate) haproxy_splice: Splice,
    /// Bulk workloads: payload bytes per WebSocket frame (one frame per write); 0 writes raw
    /// 64 KiB chunks that are not frames.
    #[arg(long, default_value_t = 64 * 1024)]
    pub(crate) bulk_frame: usize,
    /// Idle tunnels opened by the memory workload [default: 10000; --quick 2000].
    #[arg(long)]
    pub(crate) idle_tunnels: Option<usize>,
    /// Tunnels that reconnect at once in the storm workload [default: 10000, or as many as
    /// the descriptor limit allows; --quick 500].
    #[arg(long)]
    pub(crate) storm_tunnels: Option<usize>,
    /// Seconds the handshake workloads measure for [default: 5; --quick 1.5]: longer runs for
    /// a profiler to attach to.
    #[arg(long)]
    pub(crate) handshake_seconds: Option<f64>,
    /// The `switchback` binary the TLS workloads run Switchback as [default: `switchback`
    /// next to this executable].
    #[arg(long)]
    pub(crate) switchback_bin: Option<PathBuf>,
}

/// A workload name on the command line; `bulk` is both bulk workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WorkloadArg {
    /// `bulk1` and `bulk64`.
    Bulk,
    /// Bulk throughput over one tunnel.
    Bulk1,
    /// Bulk throughput over 64 tunnels.
    Bulk64,
    /// Echo round trip of 64-byte messages.
    Latency,
    /// New tunnels per second.
    Handshake,
    /// Proxy RSS per idle tunnel.
    Memory,
    /// Proxy RSS while a client stops reading and the upstream floods.
    Backpressure,
    /// Every client of many open tunnels drops its tunnel and reconnects at once.
    Storm,
    /// `tls-handshake`, `tls-resume` and `tls-bulk`.
    Tls,
    /// New wss:// tunnels per second, a full TLS handshake each.
    TlsHandshake,
    /// New wss:// tunnels per second, clients resuming TLS sessions.
    TlsResume,
    /// Bulk throughput over one wss:// tunnel.
    TlsBulk,
}

impl WorkloadArg {
    /// The workloads this name selects.
    pub(crate) fn workloads(self) -> &'static [Workload] {
        match self {
            Self::Bulk => &[Workload::Bulk1, Workload::Bulk64],
            Self::Bulk1 => &[Workload::Bulk1],
            Self::Bulk64 => &[Workload::Bulk64],
            Self::Latency => &[Workload::Latency],
            Self::Handshake => &[Workload::Handshake],
            Self::Memory => &[Workload::Memory],
            Self::Backpressure => &[Workload::Backpressure],
            Self::Storm => &[Workload::Storm],
            Self::Tls => &[Workload::TlsHandshake, Workload::TlsResume, Workload::TlsBulk],
            Self::TlsHandshake => &[Workload::TlsHandshake],
            Self::TlsResume => &[Workload::TlsResume],
            Self::TlsBulk => &[Workload::TlsBulk],
        }
    }
}

/// HAProxy's use of `splice(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Splice {
    /// `option splice-request` and `option splice-response`: splice both ways.
    Always,
    /// `option splice-auto`: HAProxy decides (in 2.6 it never spliced these tunnels).
    Auto,
    /// No splicing (HAProxy's default).
    Off,
}

/// The roles the harness starts itself in.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// A Switchback proxy (child process of a run).
    #[command(hide = true)]
    Proxy(ProxyArgs),
    /// The raw WebSocket echo / flood upstream (child process of a run).
    #[command(hide = true)]
    Upstream(UpstreamArgs),
    /// Runs a peer (nginx, HAProxy) so that it dies with the harness (child process of a run).
    #[command(hide = true)]
    Exec(ExecArgs),
}

/// Which Switchback stack a proxy child serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProxyMode {
    /// `UpgradeRouterLayer(websocket) -> Forward`: joined tunnels.
    Fast,
    /// The same with an identity body wrapper in the default chain: pumped tunnels.
    Chain,
    /// A legacy `use_websocket` route.
    Legacy,
    /// The fast path with WebSocket limits on (a frame rate, message sizes and a ping
    /// interval no workload reaches): what checking them costs.
    Limits,
    /// A WebSocket message filter that passes every message: what reading messages costs.
    Filter,
}

/// Arguments of the `proxy` role.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The stack to serve.
    #[arg(long)]
    pub(crate) mode: ProxyMode,
    /// Where to listen (port 0: any; the bound address is printed as `LISTENING addr`).
    #[arg(long)]
    pub(crate) listen: SocketAddr,
    /// The upstream to forward to.
    #[arg(long)]
    pub(crate) upstream: SocketAddr,
    /// Sends every request upstream with this `Host` (for upstreams that check it, such as
    /// Autobahn's echo server).
    #[arg(long)]
    pub(crate) host_rewrite: Option<http::HeaderValue>,
    /// The upstream speaks HTTP/2: tunnels are streams on shared connections
    /// (`Cluster::http2`).
    #[arg(long)]
    pub(crate) h2_upstream: bool,
}

/// Arguments of the `exec` role.
#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) argv: Vec<std::ffi::OsString>,
}

/// Arguments of the `upstream` role.
#[derive(Debug, Args)]
pub(crate) struct UpstreamArgs {
    /// Where to listen (port 0: any; the bound address is printed as `LISTENING addr`).
    #[arg(long)]
    pub(crate) listen: SocketAddr,
    /// Echo as a WebSocket server: each frame back unmasked (RFC 6455 forbids a server's
    /// masks, and a proxy that reads frames refuses them). Without it, bytes come back as
    /// they came, masks and all: the cheapest echo, for proxies that don't read frames.
    #[arg(long)]
    pub(crate) frames: bool,
    /// Serve HTTP/2 (prior knowledge): each WebSocket is an RFC 8441 stream, echoed as bytes.
    #[arg(long, conflicts_with = "frames")]
    pub(crate) h2: bool,
}
