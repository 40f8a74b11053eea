//! The demo (`switchback` without arguments): a built-in WebSocket echo upstream on an
//! ephemeral loopback port, behind the proxy on `127.0.0.1:10000` (or
//! `SWITCHBACK_DEMO_LISTEN`), configured by [`Config::demo`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchback_config::{Config, DEFAULT_LISTEN};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::DEMO_LISTEN_ENV;
use crate::fatal::Fatal;
use crate::run::{self, Origin};

/// Runs the demo until a signal drains it; `ready_file` as for a config file.
pub(crate) async fn run(ready_file: Option<PathBuf>) -> Result<(), Fatal> {
    let listen = listen_addr(std::env::var(DEMO_LISTEN_ENV).ok().as_deref())?;
    let upstream = start_echo().await?;
    tracing::info!(%upstream, "demo: WebSocket echo upstream started");
    let mut config = Config::demo(upstream);
    config.listen = listen;
    run::run(config, Origin::Demo, ready_file).await
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

/// What the demo prints once it listens: where to connect and a one-line way to try it
/// that needs nothing but Python 3's standard library.
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
    let url = match listen {
        SocketAddr::V4(_) => format!("ws://{listen}/"),
        SocketAddr::V6(_) => format!("ws://[{host}]:{port}/"),
    };
    format!(
        "Switchback demo: a WebSocket echo server behind the proxy.\n\
         \n  connect to:  {url}\n\
         \n  try it (Python 3, nothing to install):\n    {try_it}\n\
         \n  or, with websocat installed:  websocat {url}\n\
         \n  Ctrl-C drains and stops. `switchback --help` shows how to run your own config.\n"
    )
}

/// Starts the echo upstream on `127.0.0.1` (ephemeral port) and returns its address.
async fn start_echo() -> Result<SocketAddr, Fatal> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Fatal::new(format!("demo: cannot start the echo upstream on 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Fatal::new(format!("demo: echo upstream address: {e}")))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "demo: echo upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(addr)
}

/// Echoes text and binary messages; pings and closes are answered by tungstenite.
async fn echo(stream: TcpStream) {
    let mut ws = match tokio_tungstenite::accept_async(stream).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "demo: not a WebSocket handshake");
            return;
        }
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
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
        assert!(b.contains("ws://127.0.0.1:10000/"));
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
