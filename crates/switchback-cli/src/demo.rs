//! The demo (`switchback` without arguments): the [`echo`] upstream on an ephemeral loopback
//! port, behind the proxy on `127.0.0.1:10000` (or `SWITCHBACK_DEMO_LISTEN`), configured by
//! [`Config::demo`]. The echo's page, on `/`, is then the proxy's page too.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use switchback_config::{Config, DEFAULT_LISTEN};

use crate::cli::DEMO_LISTEN_ENV;
use crate::echo;
use crate::fatal::Fatal;
use crate::reload::Loaded;
use crate::run::{self, Origin};

/// Runs the demo until a signal drains it; `ready_file` as for a config file.
pub(crate) async fn run(ready_file: Option<PathBuf>) -> Result<(), Fatal> {
    let listen = listen_addr(std::env::var(DEMO_LISTEN_ENV).ok().as_deref())?;
    let upstream = echo::spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| Fatal::new(format!("demo: cannot start the echo upstream on 127.0.0.1: {e}")))?;
    tracing::info!(%upstream, "demo: WebSocket echo upstream started");
    let mut config = Config::demo(upstream);
    config.listeners[0].address = listen;
    run::run(
        Loaded::built_in(config),
        Origin::Demo,
        ready_file,
        run::Options::default(),
    )
    .await
}

/// The proxy's address: `value` (the environment variable) when set, else `127.0.0.1:10000`.
fn listen_addr(value: Option<&str>) -> Result<SocketAddr, Fatal> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_LISTEN),
        Some(v) => v.parse().map_err(|_| {
            Fatal::new(format!(
                "{DEMO_LISTEN_ENV}={v:?} is not an address; use IP:PORT, e.g. {DEMO_LISTEN_ENV}=127.0.0.1:10001"
            ))
        }),
    }
}

/// What the demo prints once it listens: the page to open, where to connect, and a one-line
/// way to try it that needs nothing but Python 3's standard library.
pub(crate) fn banner(listen: SocketAddr) -> String {
    let (host, port) = (listen.ip(), listen.port());
    let try_it = format!(
        concat!(
            r#"python3 -c "import socket,os;s=socket.create_connection(('{host}',{port}));"#,
            r#"s.sendall(b'GET / HTTP/1.1\r\nHost: demo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"#,
            r#"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');"#,
            r#"print(s.recv(4096).split(b'\r\n')[0].decode());m=b'hello, switchback';k=os.urandom(4);"#,
            r#"s.sendall(bytes([129,128+len(m)])+k+bytes(c^k[i%4] for i,c in enumerate(m)));"#,
            r#"print(s.recv(4096)[2:].decode())""#
        ),
        host = host,
        port = port
    );
    // `SocketAddr` prints an IPv6 host in brackets, as a URL wants it.
    let (page, url) = (format!("http://{listen}/"), format!("ws://{listen}/"));
    format!(
        "Switchback demo: a WebSocket echo server behind the proxy.\n\
         \n  open in a browser:  {page}\n\
         \n  connect to:  {url}\n\
         \n  try it (Python 3, nothing to install):\n    {try_it}\n\
         \n  or, with websocat installed:  websocat {url}\n\
         \n  Ctrl-C drains and stops. `switchback --help` shows how to run your own config.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_override() {
        assert_eq!(listen_addr(None).unwrap(), DEFAULT_LISTEN);
        assert_eq!(listen_addr(Some("")).unwrap(), DEFAULT_LISTEN);
        assert_eq!(
            listen_addr(Some("127.0.0.1:10001")).unwrap(),
            "127.0.0.1:10001".parse::<SocketAddr>().unwrap()
        );
        let err = listen_addr(Some("localhost")).unwrap_err().to_string();
        assert!(
            err.contains("SWITCHBACK_DEMO_LISTEN=\"localhost\" is not an address"),
            "{err}"
        );
    }

    #[test]
    fn banner_names_the_url_and_a_one_liner() {
        let b = banner("127.0.0.1:10000".parse().unwrap());
        assert!(b.contains("open in a browser:  http://127.0.0.1:10000/"));
        assert!(b.contains("connect to:  ws://127.0.0.1:10000/"));
        let v6 = banner("[::1]:10000".parse().unwrap());
        assert!(v6.contains("http://[::1]:10000/") && v6.contains("ws://[::1]:10000/"));
        let one_liner = b
            .lines()
            .find(|l| l.trim_start().starts_with("python3 -c"))
            .unwrap();
        assert!(one_liner.contains("('127.0.0.1',10000)"));
        assert!(
            !one_liner.contains('!'),
            "no history expansion in interactive shells"
        );
    }
}
