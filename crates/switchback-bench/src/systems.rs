//! The systems under test, and starting one: its own fresh upstream, then the proxy in front of
//! it (none for `direct`), checked with one WebSocket echo before any workload runs.
//!
//! For a TLS workload the proxy terminates TLS with the run's certificate and speaks plain TCP
//! to the upstream: Switchback is then its binary with a TLS listener (see
//! [`crate::peers::switchback`]), nginx and HAProxy get `ssl` listeners; the first echo goes
//! over TLS too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use tokio::process::Command;

use crate::child::ChildProc;
use crate::cli::{ProxyMode, Splice};
use crate::client;
use crate::error::{Context, Error, Result, within};
use crate::peers::{self, Peer};
use crate::tls::Certs;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub(crate) enum SystemKind {
    /// No proxy: the client talks to the upstream (the limit).
    Direct,
    /// Switchback, new style, fast path (joined tunnels): the reference of every ratio.
    Switchback,
    /// Switchback with a body-touching layer in the default chain (pumped tunnels).
    SwitchbackChain,
    /// Switchback's legacy `use_websocket` route mode.
    SwitchbackLegacy,
    /// Switchback's fast path with WebSocket limits on (never reached): what checking them
    /// costs. Not run unless asked for (`--systems switchback-limits`).
    SwitchbackLimits,
    /// Switchback with a WebSocket message filter that passes every message (pumped
    /// tunnels, frames parsed and rebuilt). Not run unless asked for.
    SwitchbackFilter,
    /// Switchback's fast path to an upstream that speaks HTTP/2 (`Cluster::http2`): each
    /// tunnel an RFC 8441 stream on a shared connection. Not run unless asked for.
    SwitchbackH2Upstream,
    /// Switchback's binary (`switchback`, from a YAML file) with a plain listener: the same
    /// process the TLS workloads measure as `switchback`, without TLS, for the plain
    /// workloads. Not run unless asked for (`--systems switchback-bin`).
    SwitchbackBin,
    /// The binary with a `tracing:` block exporting every request's span (sampling 100%) to
    /// a collector in the harness that takes every batch: what tracing costs. Not run unless
    /// asked for.
    SwitchbackBinTraced,
    /// nginx.
    Nginx,
    /// HAProxy.
    Haproxy,
}

impl SystemKind {
    /// Every system, in report order.
    pub(crate) const ALL: [Self; 11] = [
        Self::Direct,
        Self::Switchback,
        Self::SwitchbackChain,
        Self::SwitchbackLegacy,
        Self::SwitchbackLimits,
        Self::SwitchbackFilter,
        Self::SwitchbackH2Upstream,
        Self::SwitchbackBin,
        Self::SwitchbackBinTraced,
        Self::Nginx,
        Self::Haproxy,
    ];

    /// The systems a run without `--systems` measures: all but `switchback-bin`,
    /// `switchback-limits`, `switchback-filter` and `switchback-h2-upstream`.
    pub(crate) fn default_set() -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|&s| {
                !matches!(
                    s,
                    Self::SwitchbackBin
                        | Self::SwitchbackBinTraced
                        | Self::SwitchbackLimits
                        | Self::SwitchbackFilter
                        | Self::SwitchbackH2Upstream
                )
            })
            .collect()
    }

    /// The name in the report and on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Switchback => "switchback",
            Self::SwitchbackChain => "switchback-chain",
            Self::SwitchbackLegacy => "switchback-legacy",
            Self::SwitchbackLimits => "switchback-limits",
            Self::SwitchbackFilter => "switchback-filter",
            Self::SwitchbackH2Upstream => "switchback-h2-upstream",
            Self::SwitchbackBin => "switchback-bin",
            Self::SwitchbackBinTraced => "switchback-bin-traced",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
        }
    }
}

/// What starting systems needs.
#[derive(Debug)]
pub(crate) struct Env {
    /// This executable, re-executed for the upstream and Switchback roles.
    pub(crate) exe: PathBuf,
    /// A scratch directory for peer configs and logs.
    pub(crate) work: PathBuf,
    /// nginx, if installed.
    pub(crate) nginx: Option<Peer>,
    /// HAProxy, if installed.
    pub(crate) haproxy: Option<Peer>,
    /// HAProxy's splicing options.
    pub(crate) haproxy_splice: Splice,
    /// The descriptor limit every process runs with (peers are sized to it).
    pub(crate) nofile: u64,
    /// The `switchback` binary, for the TLS workloads, if found.
    pub(crate) switchback_bin: Option<Peer>,
    /// The run's TLS certificate, when a TLS workload runs.
    pub(crate) certs: Option<Certs>,
}

/// A started system; dropping it stops its processes.
#[derive(Debug)]
pub(crate) struct Running {
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    /// The proxy process (group); `None` for `direct`.
    pub(crate) proxy: Option<ChildProc>,
    /// The upstream process.
    pub(crate) upstream: ChildProc,
}

impl Running {
    /// Stops the proxy, then the upstream.
    pub(crate) fn stop(mut self) {
        if let Some(p) = &mut self.proxy {
            p.stop();
        }
        self.upstream.stop();
    }
}

/// Starts `kind` in front of a fresh upstream and checks one echo through it; with `tls`, the
/// proxy terminates TLS from clients.
pub(crate) async fn start(kind: SystemKind, env: &Env, tls: bool) -> Result<Running> {
    let certs = if tls {
        Some(env.certs.as_ref().context("no TLS certificate for this run")?)
    } else {
        None
    };
    // A proxy that reads frames needs a real WebSocket server behind it.
    let frames = matches!(kind, SystemKind::SwitchbackFilter);
    let mut args = vec!["upstream", "--listen", "127.0.0.1:0"];
    if frames {
        args.push("--frames");
    }
    let h2 = kind == SystemKind::SwitchbackH2Upstream;
    if h2 {
        args.push("--h2");
    }
    let mut upstream = role(env, "upstream", &args)?;
    let upstream_addr = upstream.listening().await?;
    let up = upstream_addr.to_string();
    let (proxy, addr) = match (kind, certs) {
        (SystemKind::Switchback, Some(_))
        | (SystemKind::SwitchbackBin | SystemKind::SwitchbackBinTraced, None) => {
            // `certs` says which listener: TLS for `switchback` in a TLS workload, else plain.
            let bin = env.switchback_bin.as_ref().context(
                "no switchback binary: build it (cargo build --release -p switchback-cli) or pass --switchback-bin",
            )?;
            let dir = env.work.join("switchback-bin");
            std::fs::create_dir_all(&dir).context(format_args!("creating {}", dir.display()))?;
            let collector = match kind {
                SystemKind::SwitchbackBinTraced => Some(peers::switchback::otlp_sink().await?),
                _ => None,
            };
            let (proxy, addr) = peers::switchback::start(bin, &dir, upstream_addr, certs, collector).await?;
            (Some(proxy), addr)
        }
        (SystemKind::Nginx | SystemKind::Haproxy, _) => {
            let dir = env.work.join(kind.name());
            std::fs::create_dir_all(&dir).context(format_args!("creating {}", dir.display()))?;
            let (proxy, addr) = if kind == SystemKind::Nginx {
                let peer = env.nginx.as_ref().context("nginx is not installed")?;
                peers::nginx::start(peer, &dir, upstream_addr, env.nofile, certs).await?
            } else {
                let peer = env.haproxy.as_ref().context("haproxy is not installed")?;
                let splice = env.haproxy_splice;
                peers::haproxy::start(peer, &dir, upstream_addr, splice, env.nofile, certs).await?
            };
            (Some(proxy), addr)
        }
        (_, Some(_)) => {
            return Err(Error::new(format!("{} does not terminate TLS", kind.name())));
        }
        (SystemKind::Direct, None) => (None, upstream_addr),
        (
            SystemKind::Switchback
            | SystemKind::SwitchbackChain
            | SystemKind::SwitchbackLegacy
            | SystemKind::SwitchbackLimits
            | SystemKind::SwitchbackFilter
            | SystemKind::SwitchbackH2Upstream,
            None,
        ) => {
            let mode = match kind {
                SystemKind::SwitchbackChain => ProxyMode::Chain,
                SystemKind::SwitchbackLegacy => ProxyMode::Legacy,
                SystemKind::SwitchbackLimits => ProxyMode::Limits,
                SystemKind::SwitchbackFilter => ProxyMode::Filter,
                _ => ProxyMode::Fast,
            };
            let mode = mode.to_possible_value().context("proxy mode name")?;
            let mut args = vec![
                "proxy",
                "--mode",
                mode.get_name(),
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &up,
            ];
            if h2 {
                args.push("--h2-upstream");
            }
            let mut proxy = role(env, kind.name(), &args)?;
            let addr = proxy.listening().await?;
            (Some(proxy), addr)
        }
    };
    let running = Running {
        addr,
        proxy,
        upstream,
    };
    probe(addr, certs).await.context(format_args!(
        "{}: a first WebSocket echo through it{} failed",
        kind.name(),
        if tls { " (over TLS)" } else { "" }
    ))?;
    Ok(running)
}

/// Starts this executable in `role` (a hidden subcommand).
fn role(env: &Env, name: &str, args: &[&str]) -> Result<ChildProc> {
    let mut cmd = Command::new(&env.exe);
    cmd.args(args);
    ChildProc::spawn(name, cmd)
}

/// One handshake, one echo, one close (over TLS with `certs`).
async fn probe(addr: SocketAddr, certs: Option<&Certs>) -> Result<()> {
    let frame = client::masked_frame(client::BINARY, b"probe", [9, 8, 7, 6]);
    within(Duration::from_secs(5), "probe", async {
        match certs {
            None => {
                let mut ws = client::connect(addr, "/probe", 0).await?;
                ws.echo(&frame).await?;
                ws.close().await
            }
            Some(certs) => {
                let (stream, _) = certs.client(false)?.connect(addr).await?;
                let mut ws = client::upgrade(stream, "/probe", 0).await?;
                ws.echo(&frame).await?;
                ws.close().await
            }
        }
    })
    .await
}
