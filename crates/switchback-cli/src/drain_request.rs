//! `switchback drain --admin ADDR [--after 5s] [--token-file FILE]`: asks a running switchback
//! to drain, for a Kubernetes preStop hook (the image needs no HTTP client of its own).
//!
//! The admin endpoint's `/ready` fails at once, so the load balancer stops sending new
//! connections; `after` later the drain starts, as on a first SIGTERM. The command returns
//! once it has, so the SIGTERM the kubelet sends next finds the drain under way (and is not
//! taken for a second signal).
//!
//! Like every admin `POST`, the drain answers a loopback caller, or one that presents the
//! admin token: `--token-file` names the file the config's `admin.token_file` names, read
//! by the same rules.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchback_config::AdminToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fatal::{self, Fatal};

/// Sends `POST /drain?after=…` to `admin` (with the token in `token_file`, if given), then
/// waits `after`.
pub(crate) async fn run(admin: SocketAddr, after: Duration, token_file: Option<&Path>) -> Result<(), Fatal> {
    let fail = |e: &dyn std::fmt::Display| Fatal::new(format!("drain: the admin endpoint on {admin}: {e}"));
    let authorization = match token_file {
        None => String::new(),
        Some(path) => {
            let token =
                AdminToken::read(path).map_err(|e| Fatal::new(format!("drain: --token-file: {e}")))?;
            format!("Authorization: Bearer {}\r\n", token.secret())
        }
    };
    let after_text = switchback_config::format_duration(after);
    let exchange = async {
        let mut stream = TcpStream::connect(admin).await?;
        let request = format!(
            "POST /drain?after={after_text} HTTP/1.1\r\nHost: {admin}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        std::io::Result::Ok(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| fail(&"no answer within 10s"))?
        .map_err(|e| fail(&e))?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply.split(' ').nth(1).unwrap_or("");
    if status != "202" {
        let line = reply.lines().next().unwrap_or("an empty reply");
        let hint = match status {
            "401" if token_file.is_none() => {
                "; it wants the admin token: add --token-file with the config's admin.token_file"
            }
            "401" => "; the token in --token-file is not the one the running process read at start",
            _ => "",
        };
        return Err(fail(&format_args!("expected 202, got {line:?}{hint}")));
    }
    fatal::print_out(&format!(
        "switchback at {admin} is unready; its drain starts in {after_text}"
    ));
    tokio::time::sleep(after).await;
    Ok(())
}
