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

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::Peer;
use crate::child::ChildProc;
use crate::error::{Context, Result};

/// The configuration text.
pub(crate) fn config(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    user: Option<&str>,
    nofile: u64,
) -> String {
    let connections = nofile.min(25_000);
    let dir = dir.display();
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
        listen {listen} backlog=4096;

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

/// Writes the configuration into `dir` and starts nginx in the foreground; returns it once it
/// accepts connections.
pub(crate) async fn start(
    peer: &Peer,
    dir: &Path,
    upstream: SocketAddr,
    nofile: u64,
) -> Result<(ChildProc, SocketAddr)> {
    let listen = super::free_addr().context("picking a port for nginx")?;
    let user = worker_user();
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, config(dir, listen, upstream, user, nofile))
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
        );
        assert!(conf.contains("listen 127.0.0.1:1 backlog=4096;"));
        assert!(conf.contains("server 127.0.0.1:2;"));
        assert!(conf.contains("proxy_set_header Connection \"upgrade\";"));
        assert!(!conf.contains("user "));
    }
}
