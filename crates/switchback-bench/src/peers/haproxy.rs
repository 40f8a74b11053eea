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
//!
//! For the TLS workloads the frontend terminates TLS (`bind ... ssl crt FILE`) with the run's
//! certificate, TLS 1.3 only, `TLS_AES_128_GCM_SHA256`, X25519 and ALPN `http/1.1` (what the
//! bench client offers); session resumption is HAProxy's default (tickets on, and its shared
//! session cache). The backend stays plain. HAProxy can't splice a TLS leg, so the splice
//! options change nothing there.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::Peer;
use crate::cli::Splice;

use crate::child::ChildProc;
use crate::error::{Context, Result};
use crate::tls::Certs;

/// Splicing pipes: each spliced tunnel direction holds one (two descriptors) while data
/// moves. HAProxy's default (`maxconn / 4`) would take a quarter of the descriptors; this
/// covers the 64-tunnel bulk workload both ways with room to spare.
const MAX_PIPES: u64 = 256;

/// The configuration text; with `tls`, the frontend terminates TLS with that certificate.
pub(crate) fn config(
    listen: SocketAddr,
    upstream: SocketAddr,
    splice: Splice,
    nofile: u64,
    tls: Option<&Certs>,
) -> String {
    let ssl = match tls {
        None => String::new(),
        Some(certs) => format!(
            " ssl crt {} ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 curves X25519 alpn http/1.1",
            certs.combined_pem.display()
        ),
    };
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
    bind {listen}{ssl}
    default_backend echo

backend echo
    server echo {upstream}
"#
    );
    conf
}

/// Writes the configuration into `dir` and starts HAProxy in the foreground (terminating TLS
/// with `tls`, if given); returns it once it accepts connections.
pub(crate) async fn start(
    peer: &Peer,
    dir: &Path,
    upstream: SocketAddr,
    splice: Splice,
    nofile: u64,
    tls: Option<&Certs>,
) -> Result<(ChildProc, SocketAddr)> {
    let listen = super::free_addr().context("picking a port for HAProxy")?;
    let conf_path = dir.join("haproxy.cfg");
    std::fs::write(&conf_path, config(listen, upstream, splice, nofile, tls))
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
        let conf = config(listen, up, Splice::Always, 20_000, None);
        assert!(conf.contains("timeout tunnel 1h"));
        assert!(conf.contains("bind 127.0.0.1:1"));
        assert!(conf.contains("server echo 127.0.0.1:2"));
        assert!(conf.contains("option splice-response"));
        assert!(!config(listen, up, Splice::Off, 20_000, None).contains("splice"));
        assert!(!conf.contains("http-server-close"));
        assert!(!conf.contains("ssl"));
    }

    /// The TLS bind line: the run's file, TLS 1.3, the one suite and group, default tickets.
    #[test]
    fn tls_config_pins_the_suite() {
        let dir = std::env::temp_dir().join(format!("switchback-bench-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let certs = Certs::generate(&dir).expect("certificates");
        let listen = "127.0.0.1:1".parse().expect("addr");
        let up = "127.0.0.1:2".parse().expect("addr");
        let conf = config(listen, up, Splice::Always, 20_000, Some(&certs));
        let bind = format!(
            "bind 127.0.0.1:1 ssl crt {} ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 curves X25519 alpn http/1.1\n",
            certs.combined_pem.display()
        );
        assert!(conf.contains(&bind), "{conf}");
        assert!(!conf.contains("no-tls-tickets"));
        assert!(conf.contains("server echo 127.0.0.1:2"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
