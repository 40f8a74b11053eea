//! Switchback's own binary (`switchback`, from `switchback-cli`), started like a peer from a
//! generated YAML file. Two uses:
//!
//! - the TLS-terminating proxy of the TLS workloads, as `switchback`: the harness's `proxy`
//!   role serves plain TCP only, and the binary is what terminates TLS in a deployment. Its
//!   listener has the run's certificate, TLS 1.3 only, ALPN `http/1.1`;
//! - the `switchback-bin` system of the plain workloads: the same process with a plain
//!   listener, to tell TLS's cost from the binary's own.
//!
//! The rest of the file: WebSocket allowed at listener level, one prefix route `/` to a
//! one-endpoint cluster (the upstream), and the binary's extras that nginx and HAProxy don't
//! do here turned off (`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-Id`) or sent nowhere
//! (the access log goes to `/dev/null`: the binary has no setting to turn it off, so its lines
//! are still formatted). Workers: the binary's default, one per CPU, like nginx's
//! `worker_processes auto` and HAProxy's default `nbthread`. `drain_timeout: 0s`, so that it
//! stops at once when the harness is done with it.
//!
//! The binary is `--switchback-bin`, or `switchback` next to this executable (both are built
//! into the same target directory by `cargo build --release -p switchback-cli -p
//! switchback-bench`).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::Peer;
use crate::child::ChildProc;
use crate::error::{Context, Result};
use crate::tls::Certs;

/// Finds the binary: `explicit`, else `switchback` next to this executable; `None` when it
/// isn't there or doesn't run.
pub(crate) fn find(explicit: Option<&Path>) -> Option<Peer> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => beside_this_executable()?,
    };
    super::find("switchback", Some(&path), "--version")
}

/// `switchback` in this executable's directory, if it is there.
fn beside_this_executable() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join("switchback");
    candidate.is_file().then_some(candidate)
}

/// A YAML double-quoted scalar holding `text` (a JSON string is one).
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The configuration text: a listener on `listen` (TLS with `certs`) in front of `upstream`,
/// exporting every request's span to `collector` if given.
pub(crate) fn config(
    listen: SocketAddr,
    upstream: SocketAddr,
    certs: Option<&Certs>,
    collector: Option<SocketAddr>,
) -> String {
    let tracing = match collector {
        Some(addr) => format!("tracing: {{ otlp_endpoint: \"http://{addr}\", sampling: 100 }}\n"),
        None => String::new(),
    };
    let listener = match certs {
        None => format!("listen: {listen}"),
        Some(certs) => format!(
            r#"listeners:
  - address: {listen}
    tls:
      certificates:
        - cert_chain_file: {}
          private_key_file: {}
      alpn: [http/1.1]
      min_version: "1.3""#,
            quoted(&certs.chain_pem.to_string_lossy()),
            quoted(&certs.key_pem.to_string_lossy())
        ),
    };
    format!(
        r#"# Written by switchback-bench.
{listener}
access_log: /dev/null
drain_timeout: 0s
use_remote_address: false
x_forwarded_proto: false
generate_request_id: false
{tracing}upgrade_configs:
  - upgrade_type: websocket
routes:
  - match: {{ prefix: / }}
    cluster: upstream
clusters:
  - name: upstream
    endpoints: [{upstream}]
"#
    )
}

/// Writes the configuration into `dir` and starts the binary (terminating TLS with `certs`,
/// if given); returns it once it accepts connections.
pub(crate) async fn start(
    peer: &Peer,
    dir: &Path,
    upstream: SocketAddr,
    certs: Option<&Certs>,
    collector: Option<SocketAddr>,
) -> Result<(ChildProc, SocketAddr)> {
    let listen = super::free_addr().context("picking a port for switchback")?;
    let conf_path = dir.join("switchback.yaml");
    std::fs::write(&conf_path, config(listen, upstream, certs, collector))
        .context(format_args!("writing {}", conf_path.display()))?;
    let args = [OsStr::new("--config"), conf_path.as_os_str()];
    // Warnings and errors only on the harness's terminal.
    let env = [("RUST_LOG", "warn")];
    let mut child = ChildProc::spawn_peer_env("switchback", &peer.path, &args, &env)?;
    child.accepting(listen).await.context(format_args!(
        "the switchback binary ({}) did not start with {}",
        peer.version,
        conf_path.display()
    ))?;
    Ok((child, listen))
}

/// An OTLP collector in the harness for `switchback-bin-traced`: takes every batch, answers
/// `200`, keeps nothing. Runs until the harness exits.
pub(crate) async fn otlp_sink() -> Result<SocketAddr> {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the OTLP sink")?;
    let addr = listener.local_addr().context("the OTLP sink's address")?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                    hyper::body::Bytes,
                >::new()))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `listeners:` with the TLS block for TLS, `listen:` without; the same route either way.
    #[test]
    fn config_has_a_tls_listener_and_one_route() {
        let dir = std::env::temp_dir().join(format!("switchback-bench-sb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let certs = Certs::generate(&dir).expect("certificates");
        let listen = "127.0.0.1:1".parse().expect("addr");
        let up = "127.0.0.1:2".parse().expect("addr");
        let conf = config(listen, up, Some(&certs), None);
        assert!(
            conf.contains("listeners:\n  - address: 127.0.0.1:1\n    tls:\n"),
            "{conf}"
        );
        assert!(conf.contains(&format!(
            "        - cert_chain_file: \"{}\"\n          private_key_file: \"{}\"\n",
            certs.chain_pem.display(),
            certs.key_pem.display()
        )));
        assert!(conf.contains("      min_version: \"1.3\"\n"));
        assert!(!conf.contains("\nlisten:"));
        assert!(conf.contains("endpoints: [127.0.0.1:2]"));
        let plain = config(listen, up, None, None);
        let traced = config(listen, up, None, Some(up));
        assert!(
            traced.contains("\ntracing: { otlp_endpoint: \"http://127.0.0.1:2\", sampling: 100 }\n"),
            "{traced}"
        );
        assert!(plain.contains("\nlisten: 127.0.0.1:1\n"), "{plain}");
        assert!(!plain.contains("tls") && !plain.contains("listeners"));
        assert!(plain.contains("endpoints: [127.0.0.1:2]"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
