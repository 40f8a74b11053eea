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
//! by the same rules. The request is one HTTP/1.1 exchange on hyper's client connection.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use switchback_config::AdminToken;
use tokio::net::TcpStream;

use crate::fatal::{self, Fatal};

/// How long the admin endpoint has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The longest answer read.
const MAX_BODY: usize = 4096;

/// Sends `POST /drain?after=…` to `admin` (with the token in `token_file`, if given), then
/// waits `after`.
pub(crate) async fn run(admin: SocketAddr, after: Duration, token_file: Option<&Path>) -> Result<(), Fatal> {
    let fail = |e: &dyn std::fmt::Display| Fatal::new(format!("drain: the admin endpoint on {admin}: {e}"));
    let token = token_file
        .map(|path| AdminToken::read(path).map_err(|e| Fatal::new(format!("drain: --token-file: {e}"))))
        .transpose()?;
    let after_text = switchback_config::format_duration(after);
    let mut request = Request::post(format!("/drain?after={after_text}"))
        .header(HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(&e))?;
    if let Some(token) = &token {
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.secret()))
            .map_err(|_| Fatal::new("drain: --token-file: the token is not a valid header value"))?;
        // Kept out of any debug output.
        bearer.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, bearer);
    }
    let (status, body) = tokio::time::timeout(ANSWER_WITHIN, exchange(admin, request))
        .await
        .map_err(|_| fail(&"no answer within 10s"))?
        .map_err(|e| fail(&e))?;
    if status != StatusCode::ACCEPTED {
        let said = body.lines().next().map(str::trim).unwrap_or_default();
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(" ({said})")
        };
        let hint = match status {
            StatusCode::UNAUTHORIZED if token_file.is_none() => {
                "; it wants the admin token: add --token-file with the config's admin.token_file"
            }
            StatusCode::UNAUTHORIZED => {
                "; the token in --token-file is not the one the running process read at start"
            }
            _ => "",
        };
        return Err(fail(&format_args!("expected 202, got {status}{said}{hint}")));
    }
    fatal::print_out(&format!(
        "switchback at {admin} is unready; its drain starts in {after_text}"
    ));
    tokio::time::sleep(after).await;
    Ok(())
}

/// One request on a new connection to `admin`: the status and the body (an error past
/// [`MAX_BODY`]: the endpoint's answers are a line or two).
async fn exchange(
    admin: SocketAddr,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, String), Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(admin).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection; it ends once the exchange is over and `sender` is dropped.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "drain: the admin connection ended with an error");
        }
    });
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY).collect().await?;
    Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
}
