//! nginx as a WebSocket proxy, configured as <https://nginx.org/en/docs/http/websocket.html>
//! says: `proxy_http_version 1.1`, the `Upgrade` and `Connection: upgrade` request headers set
//! explicitly (they are hop-by-hop, so nginx drops them otherwise), and a long
//! `proxy_read_timeout` so idle tunnels stay open. Sized for 10 000+ tunnels: one worker per
//! core (`worker_processes auto`), `worker_connections` for two connections per tunnel even if
//! one worker takes them all (25 000, or the descriptor limit if lower: nginx allocates and
//! initialises every connection slot at start, so this sets its baseline RSS, not the
//! per-tunnel cost). Access log off (none of the
//! proxies logs requests here). Buffer sizes are nginx's defaults: an upgraded connection
//! uses `proxy_buffer_size` (one page) each way.
//!
//! For the TLS workloads the listener terminates TLS (`listen ... ssl`) with the run's
//! certificate, TLS 1.3 only, `TLS_AES_128_GCM_SHA256` and X25519 (what the bench client
//! offers), and sessions resumable by ticket or by the shared cache
//! (`ssl_session_cache shared:SSL:10m; ssl_session_tickets on;`, so both workers resume
//! each other's sessions). The upstream leg stays plain.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::Peer;
use crate::child::ChildProc;
use crate::error::{Context, Result};
use crate::tls::Certs;

/// The configuration text; with `tls`, the listener terminates TLS with that certificate.
pub(crate) fn config(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    user: Option<&str>,
    nofile: u64,
    tls: Option<&Certs>,
) -> String {
    let connections = nofile.min(25_000);
    let dir = dir.display();
    let (ssl, ssl_settings) = match tls {
        None => ("", String::new()),
        Some(certs) => (
            " ssl",
            format!(
                r#"
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        ssl_ecdh_curve X25519;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
"#,
                certs.chain_pem.display(),
                certs.key_pem.display()
            ),
        ),
    };
    let mut conf = String::from("# Written by switchback-bench.\n");
    if let Some(user) = user {
        // Workers of a root master switch to this user (as Debian's stock nginx.conf does).
        let _ = writeln!(conf, "user {user};");
    }
    let _ = write!(
        conf,
        r#"worker_processes auto;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;

    upstream echo {{
        server {upstream};
    }}

    server {{
        listen {listen}{ssl} backlog=4096;
{ssl_settings}
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"#
    );
    conf
}

/// Writes the configuration into `dir` and starts nginx in the foreground (terminating TLS
/// with `tls`, if given); returns it once it accepts connections.
pub(crate) async fn start(
    peer: &Peer,
    dir: &Path,
    upstream: SocketAddr,
    nofile: u64,
    tls: Option<&Certs>,
) -> Result<(ChildProc, SocketAddr)> {
    let listen = super::free_addr().context("picking a port for nginx")?;
    let user = worker_user();
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, config(dir, listen, upstream, user, nofile, tls))
        .context(format_args!("writing {}", conf_path.display()))?;
    let error_log = dir.join("error.log");
    let args = [
        OsStr::new("-p"),
        dir.as_os_str(),
        OsStr::new("-c"),
        conf_path.as_os_str(),
        OsStr::new("-e"),
        error_log.as_os_str(),
        OsStr::new("-g"),
        OsStr::new("daemon off;"),
    ];
    let mut child = ChildProc::spawn_peer("nginx", &peer.path, &args)?;
    if let Err(e) = child.accepting(listen).await {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(e).context(format_args!(
            "nginx did not start (error.log: {})",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok((child, listen))
}

/// The `user` directive's value: only a root master switches users, and nginx's built-in
/// default (`nobody nobody`) names a group Debian doesn't have.
fn worker_user() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if passwd.lines().any(|l| l.starts_with("www-data:")) {
        Some("www-data")
    } else {
        Some("root root")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_websocket_settings() {
        let conf = config(
            Path::new("/tmp/x"),
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
            None,
            20_000,
            None,
        );
        assert!(conf.contains("listen 127.0.0.1:1 backlog=4096;"));
        assert!(conf.contains("server 127.0.0.1:2;"));
        assert!(conf.contains("proxy_set_header Connection \"upgrade\";"));
        assert!(!conf.contains("user "));
        assert!(!conf.contains("ssl"));
    }

    /// The TLS listener: the run's files, TLS 1.3, the one suite and group, resumption on.
    #[test]
    fn tls_config_pins_the_suite_and_resumes() {
        let dir = std::env::temp_dir().join(format!("switchback-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let certs = Certs::generate(&dir).expect("certificates");
        let listen = "127.0.0.1:1".parse().expect("addr");
        let up = "127.0.0.1:2".parse().expect("addr");
        let conf = config(&dir, listen, up, None, 20_000, Some(&certs));
        assert!(conf.contains("listen 127.0.0.1:1 ssl backlog=4096;"));
        assert!(conf.contains(&format!("ssl_certificate {};", certs.chain_pem.display())));
        assert!(conf.contains("ssl_protocols TLSv1.3;"));
        assert!(conf.contains("ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;"));
        assert!(conf.contains("ssl_ecdh_curve X25519;"));
        assert!(conf.contains("ssl_session_tickets on;"));
        assert!(conf.contains("server 127.0.0.1:2;"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
