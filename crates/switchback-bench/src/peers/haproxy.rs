//! HAProxy as a WebSocket proxy, configured as its documentation and the HAProxy blog's
//! WebSocket guide say: `mode http` (it parses the handshake and switches the stream to tunnel
//! mode on the `101`), `timeout tunnel 1h` so idle tunnels stay open, and no
//! `option http-server-close`. `nbthread` is left at its default (one thread per CPU). `maxconn`
//! is as high as the descriptor limit allows (HAProxy needs two descriptors per connection,
//! plus two per splicing pipe), 50 000 at most.
//!
//! Splicing: `option splice-request` and `option splice-response` (the default,
//! `--haproxy-splice always`) make HAProxy move tunnel payload with `splice(2)` through a pipe
//! instead of copying it through user space. On this machine that made HAProxy's bulk
//! throughput 1.5-2x better with unchanged echo latency and handshake rate, so the peer gets
//! it. `option splice-auto` (`--haproxy-splice auto`) is the documented "let HAProxy decide"
//! setting, but HAProxy 2.6 never spliced these tunnels with it (strace shows only
//! `recvfrom`/`sendto`), so it measures the same as `off`. `maxpipes` is set so that pipes
//! can't starve connections of descriptors.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::Peer;
use crate::cli::Splice;

use crate::child::ChildProc;
use crate::error::{Context, Result};

/// Splicing pipes: each spliced tunnel direction holds one (two descriptors) while data
/// moves. HAProxy's default (`maxconn / 4`) would take a quarter of the descriptors; this
/// covers the 64-tunnel bulk workload both ways with room to spare.
const MAX_PIPES: u64 = 256;

/// The configuration text.
pub(crate) fn config(listen: SocketAddr, upstream: SocketAddr, splice: Splice, nofile: u64) -> String {
    let pipes = if splice == Splice::Off { 0 } else { MAX_PIPES };
    let maxconn = (nofile.saturating_sub(2 * pipes + 200) / 2).min(50_000);
    let mut conf = format!(
        r#"# Written by switchback-bench.
global
    maxconn {maxconn}
"#
    );
    if pipes > 0 {
        let _ = writeln!(conf, "    maxpipes {pipes}");
    }
    let _ = write!(
        conf,
        r#"
defaults
    mode http
    maxconn {maxconn}
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
"#
    );
    match splice {
        Splice::Always => conf.push_str("    option splice-request\n    option splice-response\n"),
        Splice::Auto => conf.push_str("    option splice-auto\n"),
        Splice::Off => {}
    }
    let _ = write!(
        conf,
        r#"
frontend bench
    bind {listen}
    default_backend echo

backend echo
    server echo {upstream}
"#
    );
    conf
}

/// Writes the configuration into `dir` and starts HAProxy in the foreground; returns it once it
/// accepts connections.
pub(crate) async fn start(
    peer: &Peer,
    dir: &Path,
    upstream: SocketAddr,
    splice: Splice,
    nofile: u64,
) -> Result<(ChildProc, SocketAddr)> {
    let listen = super::free_addr().context("picking a port for HAProxy")?;
    let conf_path = dir.join("haproxy.cfg");
    std::fs::write(&conf_path, config(listen, upstream, splice, nofile))
        .context(format_args!("writing {}", conf_path.display()))?;
    let args = [OsStr::new("-f"), conf_path.as_os_str(), OsStr::new("-db")];
    let mut child = ChildProc::spawn_peer("haproxy", &peer.path, &args)?;
    child.accepting(listen).await.context("HAProxy did not start")?;
    Ok((child, listen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_websocket_settings() {
        let listen = "127.0.0.1:1".parse().expect("addr");
        let up = "127.0.0.1:2".parse().expect("addr");
        let conf = config(listen, up, Splice::Always, 20_000);
        assert!(conf.contains("timeout tunnel 1h"));
        assert!(conf.contains("bind 127.0.0.1:1"));
        assert!(conf.contains("server echo 127.0.0.1:2"));
        assert!(conf.contains("option splice-response"));
        assert!(!config(listen, up, Splice::Off, 20_000).contains("splice"));
        assert!(!conf.contains("http-server-close"));
    }
}
