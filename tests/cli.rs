//! The `switchback` binary as a process: a config file, real sockets, signals.
//!
//! Every test writes its config into its own temporary directory, listening on port 0,
//! starts the binary with `--ready-file` and stdout and stderr going to files there, reads
//! the ports it bound from the ready file, and kills the process (if still alive) when the
//! test ends. No port is picked in advance, so parallel tests can't race for one. Waits are
//! bounded by timeouts.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

#[path = "cli/client_input.rs"]
mod client_input;
#[path = "cli/connect.rs"]
mod connect;
#[path = "cli/descriptors.rs"]
mod descriptors;
#[path = "cli/h2_upstream.rs"]
mod h2_upstream;
#[path = "cli/otlp.rs"]
mod otlp;
mod pki;
#[path = "cli/security.rs"]
mod security;
mod support;
mod webdriver;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use support::{RawUpstream, raw_client, read_head, ws_echo};

const BIN: &str = env!("CARGO_BIN_EXE_switchback");

/// The longest any single wait may take: longer than `support::WAIT`, as a wait here may
/// include starting a process.
const WAIT: Duration = Duration::from_secs(15);

/// `support::within`, naming what timed out: with a process on the other side, the wait is
/// the only clue.
async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

// === temporary directories ===

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchback-cli-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === the process ===

/// The addresses a proxy bound, from its ready file.
#[derive(Debug, Clone, Copy)]
struct Bound {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
}

/// A running `switchback`, killed on drop.
struct Proxy {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proxy {
    fn start(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let stdout = dir.path("stdout.log");
        let stderr = dir.path("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the switchback binary");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Starts switchback with `args` and `--ready-file`, and waits until it has bound every
    /// listener; returns the process and the addresses it bound.
    async fn start_ready(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> (Self, Bound) {
        let ready = dir.path("ready.json");
        let mut args = args.to_vec();
        args.extend(["--ready-file", ready.to_str().unwrap()]);
        let mut proxy = Proxy::start(dir, &args, env);
        let bound = proxy.wait_ready(&ready).await;
        (proxy, bound)
    }

    /// Starts `switchback --config file` and waits until it listens; returns the proxy and
    /// its address.
    async fn serve(dir: &TempDir, file: &Path) -> (Self, SocketAddr) {
        let (proxy, bound) = Proxy::start_ready(dir, &["--config", file.to_str().unwrap()], &[]).await;
        (proxy, bound.listen)
    }

    /// As [`Proxy::serve`], for a config with an admin endpoint: returns its address too.
    async fn with_admin(dir: &TempDir, file: &Path) -> (Self, SocketAddr, SocketAddr) {
        let (proxy, bound) = Proxy::start_ready(dir, &["--config", file.to_str().unwrap()], &[]).await;
        let admin = bound.admin.expect("the config has an admin endpoint");
        (proxy, bound.listen, admin)
    }

    /// Waits for the ready file at `path`; fails with the process's stderr if it exits first.
    async fn wait_ready(&mut self, path: &Path) -> Bound {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("switchback exited early ({status}):\n{}", self.stderr());
            }
            // Renamed into place: if the file is there, it is whole.
            if let Ok(text) = std::fs::read_to_string(path) {
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
                let addr = |v: &Value| v.as_str().map(|a| a.parse::<SocketAddr>().unwrap());
                return Bound {
                    listen: addr(&v["listen"]).expect("a listen address"),
                    admin: addr(&v["admin"]),
                };
            }
            assert!(
                Instant::now() < deadline,
                "no ready file at {}:\n{}",
                path.display(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends SIGTERM and waits until the admin endpoint says the proxy is draining.
    async fn start_draining(&self, admin: SocketAddr) {
        self.signal("TERM");
        within("/ready to say 503", async {
            while http(admin, "GET", "/ready", &[], b"").await.status != 503 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "switchback did not exit:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for `--check` and `--help`).
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the switchback binary")
}

// === upstreams ===

/// An HTTP/1.1 server answering every request with its `name`, a newline and the request
/// head it received.
async fn http_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("{name}\n{}", String::from_utf8_lossy(&head));
                let res = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(res.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// An upstream for any upgrade type: answers `101` with the offered `Upgrade` value, then
/// echoes the bytes.
async fn raw_upgrade_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (head, rest) = read_head(&mut stream).await;
                let offered = support::header(&head, "upgrade").unwrap_or("none");
                let res = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {offered}\r\n\r\n"
                );
                if stream.write_all(res.as_bytes()).await.is_err() || stream.write_all(&rest).await.is_err() {
                    return;
                }
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Opens an `Upgrade: ty` tunnel through the proxy, sends `n` bytes and returns how many
/// came back before the tunnel ended (or all of them).
async fn raw_tunnel_echo(proxy: SocketAddr, ty: &str, n: usize) -> usize {
    within(&format!("a {ty} tunnel"), async {
        let req = format!("GET /t HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: {ty}\r\n\r\n");
        let mut stream = raw_client(proxy, req.as_bytes()).await;
        let (head, early) = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(early.is_empty());
        let (mut r, mut w) = stream.into_split();
        let writer = tokio::spawn(async move {
            for _ in 0..n / 256 {
                if w.write_all(&[b'x'; 256]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            w
        });
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while got < n {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        drop(writer.await);
        got
    })
    .await
}

// === an HTTP/1.1 client ===

struct Reply {
    status: u16,
    headers: HashMap<String, Vec<String>>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
async fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    within(&format!("{method} {target} on {addr}"), async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        stream.write_all(req.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        parse_reply(&raw)
    })
    .await
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').unwrap();
        headers
            .entry(k.trim().to_ascii_lowercase())
            .or_default()
            .push(v.trim().to_owned());
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|v| v.eq_ignore_ascii_case("chunked")))
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_line = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// The access log's lines so far.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A WebSocket client connection through the proxy.
type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` (through the proxy); the handshake must succeed.
async fn ws_connect(url: String) -> (Ws, tokio_tungstenite::tungstenite::handshake::client::Response) {
    within("connect", tokio_tungstenite::connect_async(url))
        .await
        .expect("the handshake goes through")
}

/// Sends `msg` and expects the upstream to echo it back unchanged.
async fn ws_roundtrip(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(within("echo", ws.next()).await.unwrap().unwrap(), msg);
}

/// Closes from the client side and waits for the closing handshake to finish.
async fn ws_close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
}

/// Waits for an access log line with this `event` (and, if given, `path`).
async fn wait_log_line(path: &Path, event: &str, req_path: Option<&str>) -> Value {
    within(&format!("an access log line {event}"), async {
        loop {
            if let Some(line) = log_lines(path)
                .into_iter()
                .find(|l| l["event"] == event && req_path.is_none_or(|p| l["path"] == p))
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

/// The sum of the values of the metric lines of `name` whose labels contain every `label`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

// === the tests ===

#[test]
fn help_documents_every_mode() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--config <FILE>",
        "--check <FILE>",
        "--ready-file <PATH>",
        "switchback                 run the demo",
        "http://127.0.0.1:10000/",
        "switchback echo            run a WebSocket echo server",
        "SWITCHBACK_DEMO_LISTEN",
        "SIGTERM",
        "1001",
        "GET  /metrics",
        "POST /runtime?key=K&value=V",
        "GET  /ready",
        "GET  /config",
        "RUST_LOG",
        "access_log",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn check_accepts_a_good_file() {
    let dir = TempDir::new("check-good");
    let file = dir.write(
        "good.yaml",
        "listen: 127.0.0.1:10000\nadmin: 127.0.0.1:9901\nupgrade_configs:\n  - upgrade_type: websocket\n\
         http_filters:\n  - request_body_limit: 1024\nroutes:\n  - match: { prefix: / }\n    cluster: echo\n\
         clusters:\n  - name: echo\n    endpoints: [127.0.0.1:9001]\n",
    );
    let out = run(&["--check", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("good.yaml: ok (1 route, 1 cluster, listening on 127.0.0.1:10000)"),
        "{stdout}"
    );
    assert!(out.stderr.is_empty());
}

/// The documented example in examples/switchback.yaml stays a valid configuration.
#[test]
fn the_example_config_passes_check() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/switchback.yaml");
    let out = run(&["--check", file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("ok (6 routes, 2 clusters, listening on 127.0.0.1:10000)"),
        "{stdout}"
    );
}

/// The config in the Kubernetes ConfigMap (deploy/kubernetes) stays valid too.
#[test]
fn the_kubernetes_configmap_config_passes_check() {
    let manifest = include_str!("../deploy/kubernetes/configmap.yaml");
    let (_, body) = manifest
        .split_once("switchback.yaml: |\n")
        .expect("the config key");
    let config: String = body
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = TempDir::new("configmap");
    // The Secret's mount, in the test's folder.
    let token_file = "/etc/switchback-admin/token";
    assert!(config.contains(token_file), "{config}");
    let config = config.replace(token_file, "admin-token");
    dir.write("admin-token", "a-token-for-the-check-0123456789\n");
    let file = dir.write("switchback.yaml", &config);
    let out = run(&["--check", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}\n{config}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_every_error_with_line_column_and_path() {
    let dir = TempDir::new("check-bad");

    // Validation: every problem, in file order.
    let file = dir.write(
        "bad.yaml",
        "listen: 127.0.0.1:10000\ndrain_timeout: 30\nroutes:\n  - match: { prefix: / }\n    cluster: ech\n",
    );
    let out = run(&["--check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let f = file.display();
    assert!(
        lines[0].starts_with(&format!("{f}:2:16: drain_timeout: ")),
        "{stderr}"
    );
    assert!(lines[0].contains("30s"), "the fix is named: {stderr}");
    assert!(
        lines[1].starts_with(&format!("{f}:5:14: routes[0].cluster: unknown cluster \"ech\"")),
        "{stderr}"
    );

    // An unknown field, with a suggestion; the rest of the file is still checked.
    let file = dir.write(
        "typo.yaml",
        "listen: 127.0.0.1:10000\nroutes:\n  - match: { prefx: / }\n    cluster: a\n",
    );
    let out = run(&["--check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    let f = file.display();
    assert!(
        stderr.starts_with(&format!("{f}:3:14: routes[0].match")),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown field `prefx`; did you mean `prefix`?"),
        "{stderr}"
    );

    // No file.
    let missing = dir.path("missing.yaml");
    let out = run(&["--check", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("missing.yaml: cannot read the config file"),
        "{stderr}"
    );
}

/// Type errors, invalid values and unknown fields in different places are all reported in
/// one run, each on its own line with file:line:column, field path and fix.
#[test]
fn check_reports_errors_of_every_kind_in_one_run() {
    let dir = TempDir::new("check-many");
    let file = dir.write(
        "many.yaml",
        "workers: two\nlisten: nowhere\nroutes:\n  - match: { prefix: /chat }\n    cluster: chta\n    retries: 3\n\
         clusters:\n  - name: chat\n    endpoints: [127.0.0.1:9001]\n",
    );
    let out = run(&["--check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let f = file.display();
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "{f}:1:10: workers: expected a whole number from 1 to 1024 here, found \"two\"\n\
             {f}:2:9: listen: \"nowhere\" is not a socket address; write ip:port, e.g. 127.0.0.1:10000 or [::1]:10000\n\
             {f}:5:14: routes[0].cluster: unknown cluster \"chta\"; did you mean `chat`? (known: chat)\n\
             {f}:6:5: routes[0].retries: unknown field `retries`; remove it or use one of the known fields: match, cluster, \
             weighted_clusters, prefix_rewrite, host_rewrite_literal, auto_host_rewrite, request_headers_to_add, \
             request_headers_to_remove, timeout, idle_timeout, max_stream_duration, max_tunnels, retry_policy, upgrade_configs, use_websocket, websocket_config, websocket\n"
        )
    );
}

/// A syntax error is the only error shown, says so, and gets a hint for the indentation
/// mistake behind it.
#[test]
fn check_explains_a_syntax_error() {
    let dir = TempDir::new("check-syntax");
    let file = dir.write(
        "indent.yaml",
        "routes:\n  - match: { prefix: / }\n    cluster: echo\n - match: { prefix: /a }\n",
    );
    let out = run(&["--check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let f = file.display();
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "{f}:4:2: YAML syntax error: while parsing a block mapping, did not find expected key\n\
             \x20 hint: check the indentation of line 4: the items of `routes` start with `- ` in column 3 (line 2), \
             but this one starts in column 2; line up the `- ` of every item\n\
             \x20 note: only the first syntax error can be shown: the file cannot be read past it, so nothing after it \
             was checked\n"
        )
    );
}

#[test]
fn an_invalid_config_does_not_start() {
    let dir = TempDir::new("run-bad");
    let file = dir.write(
        "bad.yaml",
        "listen: 127.0.0.1:0\nclusters:\n  - name: a\n    endpoints: []\n",
    );
    let out = run(&["--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(":4:"), "located: {stderr}");
    assert!(stderr.contains("clusters[0].endpoints"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_port_in_use_is_one_clear_line() {
    let dir = TempDir::new("port-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let file = dir.write("busy.yaml", &format!("listen: {addr}\n"));
    let mut proxy = Proxy::start(&dir, &["--config", file.to_str().unwrap()], &[]);
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(1));
    let stderr = proxy.stderr();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!(
            "cannot listen on {addr} (`listen`): the address is already in use"
        )),
        "{stderr}"
    );
    assert!(errors[0].contains("change `listen` in"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn websocket_through_the_proxy_with_access_log_and_metrics() {
    let dir = TempDir::new("websocket");
    let echo = ws_echo().await.addr;
    let web = http_upstream("web").await;
    let log = dir.path("access.jsonl");
    let file = dir.write(
        "ws.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: {}\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: /ws }}\n    cluster: echo\n  - match: {{ prefix: / }}\n    cluster: web\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n  - name: web\n    endpoints: [{web}]\n",
            log.display()
        ),
    );
    let (_proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;

    // A WebSocket conversation through the proxy.
    let (mut ws, res) = ws_connect(format!("ws://{listen}/ws/chat")).await;
    assert_eq!(res.status(), 101);
    ws_roundtrip(&mut ws, Message::text("hello")).await;
    ws.send(Message::binary(vec![7u8; 3000])).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::binary(vec![7u8; 3000])
    );
    let open = wait_log_line(&log, "tunnel_open", None).await;
    // The closing handshake, with a code of the client's: the upstream answers and closes its
    // connection first (RFC 6455 §7.1.1), the proxy passes the FIN on, then the client
    // closes its own.
    let bye = CloseFrame {
        code: CloseCode::from(4001),
        reason: "done".into(),
    };
    ws.close(Some(bye)).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);

    // A plain request too.
    let reply = http(listen, "GET", "/page?q=1", &[], b"").await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.starts_with("web\n"));

    // The access log: the tunnel's two lines and the request's line.
    assert_eq!(open["method"], "GET");
    assert_eq!(open["path"], "/ws/chat");
    assert_eq!(open["route"], "routes[0]");
    assert_eq!(open["upgrade"], "websocket");
    assert_eq!(open["status"], 101);
    assert_eq!(open["upstream"], echo.to_string());
    assert!(open["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(open["end"].is_null());
    let close = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(close["client"], open["client"]);
    assert_eq!(close["route"], "routes[0]");
    assert_eq!(close["end"], "upstream_close");
    let (up, down) = (
        close["bytes_received"].as_u64().unwrap(),
        close["bytes_sent"].as_u64().unwrap(),
    );
    assert!(up > 3005, "client frames are masked and framed: {up}");
    assert!(down > 3005, "{down}");
    assert!(close["duration_ms"].is_u64());
    assert!(close["time"].as_str().unwrap().ends_with('Z'));
    // Two messages each way, and the first close frame's code, the client's.
    assert_eq!(close["messages_received"], 2, "{close}");
    assert_eq!(close["messages_sent"], 2, "{close}");
    assert_eq!(close["close_code"], 4001, "{close}");
    assert!(open["messages_received"].is_null() && open["close_code"].is_null());
    let page = wait_log_line(&log, "request", Some("/page")).await;
    assert_eq!(page["status"], 200);
    assert_eq!(page["route"], "routes[1]");
    assert_eq!(page["upstream"], web.to_string());
    assert_eq!(page["bytes_sent"].as_u64().unwrap(), reply.body.len() as u64);
    assert_eq!(page["end"], "complete");
    assert!(page["upgrade"].is_null());

    // The metrics.
    let metrics = http(admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(metrics.status, 200);
    let m = &metrics.body;
    assert_eq!(
        metric(m, "switchback_upgrades_started_total", &["type=\"websocket\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(m, "switchback_tunnels_opened_total", &["type=\"websocket\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(m, "switchback_tunnels_active", &["type=\"websocket\""]),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(m, "switchback_tunnel_bytes_total", &["direction=\"upstream\""]),
        up as f64,
        "{m}"
    );
    assert_eq!(
        metric(m, "switchback_tunnel_bytes_total", &["direction=\"downstream\""]),
        down as f64,
        "{m}"
    );
    assert_eq!(
        metric(
            m,
            "switchback_tunnel_duration_seconds_count",
            &["end=\"upstream_close\""]
        ),
        1.0,
        "{m}"
    );
    assert!(
        m.contains("switchback_tunnel_duration_seconds_bucket{"),
        "a histogram: {m}"
    );
    for direction in ["direction=\"upstream\"", "direction=\"downstream\""] {
        assert_eq!(
            metric(m, "switchback_websocket_messages_total", &[direction]),
            2.0,
            "{m}"
        );
    }
    assert_eq!(
        metric(
            m,
            "switchback_websocket_closes_total",
            &["by=\"client\"", "code=\"4xxx\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(m, "switchback_downstream_responses_total", &["status=\"101\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(m, "switchback_downstream_responses_total", &["status=\"200\""]),
        1.0,
        "{m}"
    );

    // A refused upgrade is logged with its type, and counted as `other`: a type nobody
    // configured is the client's own word, and would be a series of its own.
    let refused = http(
        listen,
        "GET",
        "/ws/x",
        &[("connection", "upgrade"), ("upgrade", "foo")],
        b"",
    )
    .await;
    assert_eq!(refused.status, 403);
    let line = wait_log_line(&log, "request", Some("/ws/x")).await;
    assert_eq!(line["upgrade"], "foo");
    assert_eq!(line["status"], 403);
    let m = http(admin, "GET", "/metrics", &[], b"").await.body;
    assert_eq!(
        metric(
            &m,
            "switchback_upgrades_rejected_total",
            &["type=\"other\"", "reason=\"not_configured\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_legacy_websocket_route_from_the_config() {
    let dir = TempDir::new("legacy");
    let echo = ws_echo().await.addr;
    let log = dir.path("access.jsonl");
    // No listener-level upgrade types: the legacy mode bypasses the decision table.
    let file = dir.write(
        "legacy.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\n\
             routes:\n  - match: {{ prefix: /legacy }}\n    cluster: echo\n    use_websocket: true\n\
             \x20   websocket_config: {{ idle_timeout: 10s, max_connect_attempts: 2 }}\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n",
            log.display()
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    let (mut ws, _) = ws_connect(format!("ws://{listen}/legacy")).await;
    ws_roundtrip(&mut ws, Message::text("old school")).await;
    ws_close(ws).await;

    let close = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(close["mode"], "legacy");
    assert_eq!(close["route"], "routes[0]");
    assert_eq!(close["path"], "/legacy");
    assert_eq!(close["upstream"], echo.to_string());
    assert!(close["bytes_received"].as_u64().unwrap() > 10);
}

/// The forwarded-identity fields reach the upstream of a plain request and of an upgrade, and
/// every access-log line (`request`, `tunnel_open`, `tunnel_close`) names the request id the
/// upstream saw: generated for the plain request, the client's own for the upgrade.
#[tokio::test]
async fn forwarded_headers_reach_the_upstream_and_the_access_log() {
    let dir = TempDir::new("forwarded");
    let plain = http_upstream("plain").await;
    let raw = RawUpstream::bind().await;
    let log = dir.path("access.jsonl");
    let file = dir.write(
        "forwarded.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\nxff_num_trusted_hops: 1\n\
             upgrade_configs:\n  - upgrade_type: foo\n\
             routes:\n  - match: {{ prefix: /up }}\n    cluster: raw\n\
             \x20 - match: {{ prefix: / }}\n    cluster: plain\n\
             clusters:\n  - name: raw\n    endpoints: [{}]\n  - name: plain\n    endpoints: [{plain}]\n",
            log.display(),
            raw.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    // One trusted hop in front: its X-Forwarded-Proto is kept, the peer appended.
    let via = [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https")];
    let reply = http(listen, "GET", "/hello", &via, b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = reply.body.replace('\n', "\r\n");
    assert_eq!(
        support::header(&seen, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(support::header(&seen, "x-forwarded-proto"), Some("https"));
    let id = support::header(&seen, "x-request-id").expect("an id").to_owned();
    assert!(
        id.len() == 36 && id.as_bytes()[14] == b'4' && id.matches('-').count() == 4,
        "a UUID v4: {id}"
    );
    let line = wait_log_line(&log, "request", Some("/hello")).await;
    assert_eq!(line["request_id"], id.as_str(), "{line}");

    let mut client = raw_client(
        listen,
        b"GET /up HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: foo\r\nx-request-id: trace-42\r\n\r\n",
    )
    .await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert_eq!(support::header(&head, "x-request-id"), Some("trace-42"), "{head}");
    assert_eq!(
        support::header(&head, "x-forwarded-for"),
        Some("127.0.0.1"),
        "{head}"
    );
    assert_eq!(
        support::header(&head, "x-forwarded-proto"),
        Some("http"),
        "{head}"
    );
    up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_head(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let open = wait_log_line(&log, "tunnel_open", Some("/up")).await;
    assert_eq!(open["request_id"], "trace-42", "{open}");
    drop((client, up));
    let close = wait_log_line(&log, "tunnel_close", Some("/up")).await;
    assert_eq!(close["request_id"], "trace-42", "{close}");
}

#[tokio::test]
async fn admin_endpoints_and_a_runtime_change_that_shifts_routing() {
    let dir = TempDir::new("admin");
    // Two workers on port 0: both serve the one port the ready file names, and share the
    // runtime values.
    let (blue, green) = (http_upstream("blue").await, http_upstream("green").await);
    let file = dir.write(
        "admin.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nworkers: 2\naccess_log: {}\nruntime:\n  shift.green: 0\n\
             routes:\n  - match:\n      prefix: /\n      runtime_fraction: {{ runtime_key: shift.green, default: 0 }}\n    cluster: green\n\
             \x20 - match: {{ prefix: / }}\n    cluster: blue\n\
             clusters:\n  - name: blue\n    endpoints: [{blue}]\n  - name: green\n    endpoints: [{green}]\n",
            dir.path("access.jsonl").display()
        ),
    );
    let (_proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;

    let ready = http(admin, "GET", "/ready", &[], b"").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    for _ in 0..5 {
        let r = http(listen, "GET", "/", &[], b"").await;
        assert!(r.body.starts_with("blue\n"), "0% to green: {}", r.body);
    }

    let set = http(admin, "POST", "/runtime?key=shift.green&value=100", &[], b"").await;
    assert_eq!(set.status, 200, "{}", set.body);
    let answer: Value = serde_json::from_str(&set.body).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({ "key": "shift.green", "old": 0, "new": 100 })
    );
    for _ in 0..5 {
        let r = http(listen, "GET", "/", &[], b"").await;
        assert!(r.body.starts_with("green\n"), "100% to green: {}", r.body);
    }

    // Bad input is refused and changes nothing.
    for bad in [
        "/runtime?key=shift.green&value=101",
        "/runtime?key=shift.green&value=x",
        "/runtime?key=shift.green",
        "/runtime?key=shfit.green&value=5",
    ] {
        let r = http(admin, "POST", bad, &[], b"").await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let unknown = http(admin, "POST", "/runtime?key=shfit.green&value=5", &[], b"").await;
    assert!(
        unknown.body.contains("known keys: shift.green"),
        "{}",
        unknown.body
    );
    let runtime: Value = serde_json::from_str(&http(admin, "GET", "/runtime", &[], b"").await.body).unwrap();
    assert_eq!(runtime, serde_json::json!({ "shift.green": 100 }));

    // The effective config, runtime included.
    let config = http(admin, "GET", "/config", &[], b"").await;
    assert_eq!(config.status, 200);
    assert_eq!(config.header("content-type"), Some("application/json"));
    let config: Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(config["listen"], listen.to_string(), "port 0 resolved");
    assert_eq!(config["admin"], admin.to_string());
    assert_eq!(config["runtime"]["shift.green"], 100);
    assert_eq!(config["drain_timeout"], "30s");
    assert_eq!(
        config["routes"][0]["match"]["runtime_fraction"]["runtime_key"],
        "shift.green"
    );
    assert_eq!(
        config["clusters"][1]["endpoints"][0]["address"],
        green.to_string()
    );

    let missing = http(admin, "GET", "/nope", &[], b"").await;
    assert_eq!(missing.status, 404);
    let wrong = http(admin, "DELETE", "/ready", &[], b"").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET"));
}

#[tokio::test]
async fn http_filters_shape_requests_and_responses() {
    let dir = TempDir::new("filters");
    let web = http_upstream("web").await;
    let file = dir.write(
        "filters.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\nhttp_filters:\n  - request_body_limit: 16\n\
             \x20 - request_headers_to_add: {{ x-proxied-by: switchback }}\n\
             \x20 - response_headers_to_add: {{ x-served-by: switchback }}\n\
             \x20 - concurrency_limit: 10\n  - timeout: 5s\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: web\n    request_headers_to_add: {{ x-route: web }}\n\
             clusters:\n  - name: web\n    endpoints: [{web}]\n",
            dir.path("access.jsonl").display()
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    let r = http(listen, "GET", "/", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("x-proxied-by: switchback\r\n"), "{}", r.body);
    assert!(r.body.contains("x-route: web\r\n"), "{}", r.body);
    assert_eq!(r.header("x-served-by"), Some("switchback"));

    let big = http(listen, "POST", "/", &[], &[b'x'; 100]).await;
    assert_eq!(big.status, 413);
    let small = http(listen, "POST", "/", &[], &[b'x'; 10]).await;
    assert_eq!(small.status, 200);

    // A header the proxy adds can't be nominated for removal by the client.
    for name in ["x-proxied-by", "x-route"] {
        let r = http(listen, "GET", "/", &[("connection", name)], b"").await;
        assert_eq!(r.status, 400, "Connection: {name}");
    }
}

#[tokio::test]
async fn an_upgrade_type_with_its_own_chain_skips_the_default_filters() {
    let dir = TempDir::new("chains");
    let upstream = raw_upgrade_echo().await;
    let log = dir.path("access.jsonl");
    // The default chain limits bodies to 1 KiB, tunnel payload included; `foo` has a
    // router-only chain, `bar` takes the default one.
    let file = dir.write(
        "chains.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\nhttp_filters:\n  - request_body_limit: 1024\n\
             upgrade_configs:\n  - upgrade_type: foo\n    filters: []\n  - upgrade_type: bar\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: raw\n\
             clusters:\n  - name: raw\n    endpoints: [{upstream}]\n",
            log.display()
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    assert_eq!(
        raw_tunnel_echo(listen, "foo", 4096).await,
        4096,
        "router only: untouched"
    );
    let foo = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(
        (foo["upgrade"].as_str(), foo["mode"].as_str()),
        (Some("foo"), Some("joined"))
    );

    let echoed = raw_tunnel_echo(listen, "bar", 4096).await;
    assert!(
        echoed <= 1024,
        "the body limit ends the tunnel: {echoed} bytes echoed"
    );
    let bar = within("the bar tunnel's close line", async {
        loop {
            if let Some(l) = log_lines(&log)
                .into_iter()
                .find(|l| l["event"] == "tunnel_close" && l["upgrade"] == "bar")
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert_eq!(bar["mode"], "pumped");
    assert_eq!(bar["end"], "error");
}

#[tokio::test]
async fn the_timeout_filter_answers_504() {
    let dir = TempDir::new("timeout");
    // An upstream that never answers: the kernel completes the connection, nobody reads it.
    let silent = RawUpstream::bind().await;
    let upstream = silent.addr;
    let file = dir.write(
        "timeout.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\nhttp_filters:\n  - timeout: 200ms\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: silent\n\
             clusters:\n  - name: silent\n    endpoints: [{upstream}]\n",
            dir.path("access.jsonl").display()
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let r = http(listen, "GET", "/", &[], b"").await;
    assert_eq!(r.status, 504, "{}", r.body);
}

#[tokio::test]
async fn sigterm_drains_a_live_tunnel_with_1001() {
    let dir = TempDir::new("drain");
    let echo = ws_echo().await.addr;
    let log = dir.path("access.jsonl");
    let file = dir.write(
        "drain.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: {}\ndrain_timeout: 2s\ndrain_close_window: 0s\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n",
            log.display()
        ),
    );
    let (mut proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;

    let (mut ws, _) = ws_connect(format!("ws://{listen}/")).await;
    ws_roundtrip(&mut ws, Message::text("before")).await;
    assert_eq!(http(admin, "GET", "/ready", &[], b"").await.status, 200);

    // Draining: not ready, and the tunnel still works until the deadline.
    proxy.start_draining(admin).await;
    ws_roundtrip(&mut ws, Message::text("during")).await;

    // At the deadline: a 1001 close frame.
    let frame = match within("the close frame", ws.next()).await {
        Some(Ok(Message::Close(frame))) => frame,
        Some(Ok(other)) => panic!("unexpected message {other:?}"),
        Some(Err(e)) => panic!("no close frame: {e}"),
        None => panic!("closed without a close frame"),
    };
    assert_eq!(frame.expect("a close code").code, CloseCode::Away);

    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        !dir.path("ready.json").exists(),
        "the ready file goes with the process"
    );
    let close = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(close["end"], "drain");
    let stderr = proxy.stderr();
    assert!(stderr.contains("draining"), "{stderr}");
    assert!(stderr.contains("closed=1"), "{stderr}");
}

/// The admin endpoint lists live tunnels (JSON, one object each with what an operator asks
/// first) and closes one on request with `1001`; its dashboard page is served at `/`.
#[tokio::test]
async fn admin_lists_live_tunnels_and_closes_one() {
    let dir = TempDir::new("tunnels");
    let echo = ws_echo().await.addr;
    let file = dir.write(
        "tunnels.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: /chat }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n"
        ),
    );
    let (_proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let (mut first, _) = ws_connect(format!("ws://{listen}/chat/one")).await;
    ws_roundtrip(&mut first, Message::text("hello")).await;
    let (mut second, _) = ws_connect(format!("ws://{listen}/chat/two")).await;
    ws_roundtrip(&mut second, Message::text("hi")).await;

    let reply = http(admin, "GET", "/tunnels", &[], b"").await;
    assert_eq!(reply.status, 200);
    let tunnels: Value = serde_json::from_str(&reply.body).unwrap();
    let tunnels = tunnels.as_array().unwrap();
    assert_eq!(tunnels.len(), 2, "{tunnels:?}");
    let one = &tunnels[0];
    assert_eq!(one["path"], "/chat/one");
    assert_eq!(one["route"], "routes[0]");
    assert_eq!(one["upgrade"], "websocket");
    assert_eq!(one["mode"], "joined");
    assert_eq!(one["protocol"], "HTTP/1.1");
    assert_eq!(one["upstream"], echo.to_string());
    assert!(one["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{one}");
    assert!(one["started"].as_str().unwrap().ends_with('Z'), "{one}");
    assert!(one["age_ms"].as_u64().is_some(), "{one}");
    // "hello" as a masked client frame is 11 bytes, echoed unmasked 7.
    assert_eq!(
        (one["bytes_received"].as_u64(), one["bytes_sent"].as_u64()),
        (Some(11), Some(7))
    );

    let id = one["id"].as_u64().unwrap();
    let reply = http(admin, "POST", &format!("/tunnels/close?id={id}"), &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let frame = match within("the close frame", first.next()).await {
        Some(Ok(Message::Close(frame))) => frame,
        other => panic!("expected a close frame, got {other:?}"),
    };
    assert_eq!(frame.expect("a close code").code, CloseCode::Away);
    ws_roundtrip(&mut second, Message::text("still open")).await;
    assert_eq!(
        http(admin, "POST", "/tunnels/close?id=999999", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(http(admin, "POST", "/tunnels/close", &[], b"").await.status, 400);
    assert_eq!(
        http(admin, "GET", "/tunnels/close?id=1", &[], b"").await.status,
        405
    );

    let page = http(admin, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        page.body.contains("fetch(\"/tunnels\")"),
        "the dashboard reads /tunnels"
    );
}

/// `health_checks` run from the start: a TCP check finds the dead endpoint, `GET /clusters`
/// shows each endpoint's health and load, and the metrics say the same.
#[tokio::test]
async fn health_checks_and_the_clusters_page() {
    let dir = TempDir::new("health");
    let echo = ws_echo().await.addr;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let file = dir.write(
        "health.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{dead}, {echo}]\n\
             \x20   health_checks:\n      - {{ tcp: {{}}, interval: 50ms, timeout: 500ms }}\n"
        ),
    );
    let (_proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let clusters = within("the dead endpoint turning unhealthy", async {
        loop {
            let reply = http(admin, "GET", "/clusters", &[], b"").await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.header("content-type"), Some("application/json"));
            let v: Value = serde_json::from_str(&reply.body).unwrap();
            if v[0]["endpoints"][0]["healthy"] == false {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(clusters[0]["name"], "echo");
    let [down, up] = [&clusters[0]["endpoints"][0], &clusters[0]["endpoints"][1]];
    assert_eq!(down["address"], dead.to_string());
    assert_eq!(up["address"], echo.to_string());
    assert_eq!(up["healthy"], true);
    for e in [down, up] {
        assert_eq!(e["ejected"], false, "{e}");
        assert_eq!(e["active"], 0, "{e}");
        assert_eq!(e["consecutive_failures"], 0, "{e}");
        assert_eq!(e["connect_failures"], 0, "{e}");
    }

    // Every tunnel goes to the live endpoint, and counts there while open.
    let mut open = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = ws_connect(format!("ws://{listen}/chat")).await;
        ws_roundtrip(&mut ws, Message::text("hi")).await;
        open.push(ws);
    }
    let v: Value = serde_json::from_str(&http(admin, "GET", "/clusters", &[], b"").await.body).unwrap();
    assert_eq!(v[0]["endpoints"][1]["active"], 3, "{v}");
    assert_eq!(v[0]["endpoints"][0]["connect_failures"], 0, "never tried: {v}");

    let metrics = http(admin, "GET", "/metrics", &[], b"").await.body;
    let labels = |e: SocketAddr| format!("{{cluster=\"echo\",endpoint=\"{e}\"}}");
    for line in [
        format!("switchback_endpoint_healthy{} 0", labels(dead)),
        format!("switchback_endpoint_healthy{} 1", labels(echo)),
        format!("switchback_endpoint_active{} 3", labels(echo)),
        "switchback_cluster_endpoints_available{cluster=\"echo\"} 1".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in:\n{metrics}");
    }
    assert!(
        metrics.contains("switchback_health_checks_total{cluster=\"echo\",endpoint="),
        "{metrics}"
    );
    let missing = http(admin, "GET", "/nope", &[], b"").await;
    assert!(missing.body.contains("GET /clusters"), "{}", missing.body);
}

/// The binary bounds silent clients and large heads as the config says.
#[tokio::test]
async fn client_limits_from_the_config() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new("limits");
    let echo = ws_echo().await.addr;
    let file = dir.write(
        "limits.yaml",
        &format!(
            "listen: 127.0.0.1:0\nrequest_headers_timeout: 300ms\nmax_request_headers_kb: 8\n\
             connection_idle_timeout: 0s\nmax_connections: 50\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: /one }}\n    cluster: echo\n    max_tunnels: 1\n\
             \x20 - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n"
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut got = Vec::new();
    let _ = within("the silent connection to close", silent.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A 9 KiB header over an 8 KiB limit.
    let reply = http(listen, "GET", "/", &[("x-big", &"a".repeat(9 * 1024))], b"").await;
    assert_eq!(reply.status, 431);
    // The route's max_tunnels: a second tunnel on it gets 503; elsewhere tunnels still open.
    let (mut first, _) = ws_connect(format!("ws://{listen}/one")).await;
    let second = tokio_tungstenite::connect_async(format!("ws://{listen}/one")).await;
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("a second tunnel on /one: {other:?}"),
    }
    let (mut other, _) = ws_connect(format!("ws://{listen}/two")).await;
    ws_roundtrip(&mut first, Message::text("one")).await;
    ws_roundtrip(&mut other, Message::text("two")).await;
}

/// Through the binary: a cluster with a dead endpoint, least-request balancing, outlier
/// detection and a route retry policy; every WebSocket opens and the dead endpoint is
/// ejected after its failures.
#[tokio::test]
async fn a_dead_endpoint_in_the_config_costs_no_websocket() {
    let dir = TempDir::new("upstreams");
    let echo = ws_echo().await.addr;
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let file = dir.write(
        "upstreams.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: /dev/null\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n\
             \x20   retry_policy: {{ retry_on: \"connect-failure,gateway-error\", num_retries: 1, per_try_timeout: 2s }}\n\
             clusters:\n  - name: echo\n    endpoints: [{dead}, {echo}]\n    lb_policy: least_request\n\
             \x20   outlier_detection: {{ consecutive_gateway_failure: 1, base_ejection_time: 1m }}\n"
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    for i in 0..6 {
        let (mut ws, _) = ws_connect(format!("ws://{listen}/")).await;
        ws_roundtrip(&mut ws, Message::text(format!("hello {i}"))).await;
    }
}

/// Through the binary: an endpoint given by name is looked up (the system resolver) and
/// its address becomes the endpoint `/clusters` shows; WebSockets reach it.
#[tokio::test]
async fn an_endpoint_given_by_name_is_resolved_off_the_request_path() {
    let dir = TempDir::new("dns");
    let echo = ws_echo().await.addr;
    let file = dir.write(
        "dns.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: /dev/null\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    dns_refresh_rate: 100ms\n    endpoints: [localhost:{}]\n",
            echo.port()
        ),
    );
    let (_proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let want = format!("127.0.0.1:{}", echo.port());
    within("localhost resolved to 127.0.0.1", async {
        loop {
            let reply = http(admin, "GET", "/clusters", &[], b"").await;
            let v: Value = serde_json::from_str(&reply.body).unwrap();
            let found = v[0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["address"] == want.as_str());
            if found {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (mut ws, _) = ws_connect(format!("ws://{listen}/")).await;
    ws_roundtrip(&mut ws, Message::text("by name")).await;
}

/// Reloading the config file: a tunnel opened under the old file lives on untouched, new
/// requests follow the new file, a bad file is refused with `--check`'s errors and changes
/// nothing, an unchanged file is a no-op, and SIGHUP reloads too.
#[tokio::test]
async fn a_reload_changes_what_new_requests_see_and_no_tunnel() {
    let dir = TempDir::new("reload");
    let echo = ws_echo().await.addr;
    let config = |prefix: &str| {
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: /dev/null\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: {prefix} }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n"
        )
    };
    let file = dir.write("reload.yaml", &config("/a"));
    let (proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let (mut old, _) = ws_connect(format!("ws://{listen}/a")).await;
    ws_roundtrip(&mut old, Message::text("before")).await;

    // The new file routes /b only.
    dir.write("reload.yaml", &config("/b"));
    let reply = http(admin, "POST", "/reload", &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        (v["changed"].as_bool(), v["generation"].as_u64()),
        (Some(true), Some(2)),
        "{v}"
    );
    ws_roundtrip(&mut old, Message::text("after the reload")).await;
    let (mut new, _) = ws_connect(format!("ws://{listen}/b")).await;
    ws_roundtrip(&mut new, Message::text("new route")).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{listen}/a")).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref res)) if res.status() == 404),
        "{refused:?}"
    );
    let config_now: Value =
        serde_json::from_str(&http(admin, "GET", "/config", &[], b"").await.body).unwrap();
    assert_eq!(config_now["generation"], 2);
    assert_eq!(config_now["routes"][0]["match"]["prefix"], "/b");

    // Unchanged: a no-op.
    let v: Value = serde_json::from_str(&http(admin, "POST", "/reload", &[], b"").await.body).unwrap();
    assert_eq!(
        (v["changed"].as_bool(), v["generation"].as_u64()),
        (Some(false), Some(2)),
        "{v}"
    );

    // A broken file: 400 naming the file, the line and the field; /b still served.
    dir.write(
        "reload.yaml",
        &config("/c").replace("cluster: echo", "cluster: nowhere"),
    );
    let reply = http(admin, "POST", "/reload", &[], b"").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("reload.yaml:") && reply.body.contains("unknown cluster"),
        "{}",
        reply.body
    );
    ws_roundtrip(&mut new, Message::text("still here")).await;
    let (mut again, _) = ws_connect(format!("ws://{listen}/b")).await;
    ws_roundtrip(&mut again, Message::text("still routed")).await;

    // SIGHUP reloads too.
    dir.write("reload.yaml", &config("/d"));
    proxy.signal("HUP");
    within("SIGHUP applying the new file", async {
        loop {
            if tokio_tungstenite::connect_async(format!("ws://{listen}/d"))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    ws_roundtrip(&mut old, Message::text("through two reloads")).await;
}

/// `--watch` reloads on an editor's write-by-rename and on a Kubernetes ConfigMap update
/// (the file is a symlink through `..data`, and `..data` is swapped to a new directory).
#[tokio::test]
async fn watch_reloads_on_rename_and_on_a_configmap_symlink_swap() {
    let dir = TempDir::new("watch");
    let echo = ws_echo().await.addr;
    let config = |prefix: &str| {
        format!(
            "listen: 127.0.0.1:0\naccess_log: /dev/null\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: {prefix} }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n"
        )
    };
    // The ConfigMap layout: config.yaml -> ..data/config.yaml, ..data -> ..v1.
    let v1 = dir.path("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("config.yaml"), config("/a")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path("..data")).unwrap();
    let file = dir.path("config.yaml");
    std::os::unix::fs::symlink("..data/config.yaml", &file).unwrap();
    let (_proxy, bound) =
        Proxy::start_ready(&dir, &["--config", file.to_str().unwrap(), "--watch"], &[]).await;
    let listen = bound.listen;
    let (mut old, _) = ws_connect(format!("ws://{listen}/a")).await;

    let routed = |prefix: &'static str| async move {
        within(&format!("--watch applying {prefix}"), async {
            loop {
                if tokio_tungstenite::connect_async(format!("ws://{listen}{prefix}"))
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    };
    // The swap: a new directory, and `..data` renamed over to point at it.
    let v2 = dir.path("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("config.yaml"), config("/b")).unwrap();
    std::os::unix::fs::symlink("..v2", dir.path("..data_tmp")).unwrap();
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    routed("/b").await;

    // An editor's save: write a new file, rename it over the old (here, the version file).
    std::fs::write(v2.join("config.yaml.swp"), config("/c")).unwrap();
    std::fs::rename(v2.join("config.yaml.swp"), v2.join("config.yaml")).unwrap();
    routed("/c").await;
    ws_roundtrip(&mut old, Message::text("opened before both reloads")).await;
}

/// Binary takeover: a new process takes the listening sockets (and the admin one) over the
/// `takeover_socket`. Clients connecting in a loop meanwhile are never refused; the old
/// process's tunnel keeps working, and the old process exits once it has ended.
#[tokio::test]
async fn a_new_process_takes_the_sockets_over_without_refusing_anyone() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let dir = TempDir::new("takeover-old");
    let echo = ws_echo().await.addr;
    let socket = dir.path("takeover.sock");
    let file = dir.write(
        "takeover.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: /dev/null\ndrain_timeout: 1h\n\
             drain_close_window: 0s\ntakeover_socket: {}\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n",
            socket.display()
        ),
    );
    let (mut old, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let (mut tunnel, _) = ws_connect(format!("ws://{listen}/")).await;
    ws_roundtrip(&mut tunnel, Message::text("on the old process")).await;

    // A takeover that never confirms (the new process died): the old one serves on, and
    // keeps its sockets for the next attempt.
    {
        use std::io::Read;
        let mut failed = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let mut head = [0u8; 3];
        failed.read_exact(&mut head).unwrap();
        assert!(head[0] == 0 && head[1] > 0 && head[2] == 1, "{head:?}");
    }
    within("the old process to log the failed takeover", async {
        while !old.stderr().contains("takeover failed") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (mut still, _) = ws_connect(format!("ws://{listen}/")).await;
    ws_roundtrip(&mut still, Message::text("after a failed takeover")).await;
    drop(still);

    // Clients keep connecting while the sockets change hands.
    let stop = Arc::new(AtomicBool::new(false));
    // Connections served so far, for waiting on.
    let served = Arc::new(AtomicUsize::new(0));
    let clients = tokio::spawn({
        let (stop, served) = (stop.clone(), served.clone());
        async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match tokio_tungstenite::connect_async(format!("ws://{listen}/")).await {
                    Ok((mut ws, _)) => {
                        ws_roundtrip(&mut ws, Message::text("meanwhile")).await;
                        ok += 1;
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }
    });
    let served_at_least = |n: usize| {
        let served = served.clone();
        async move {
            while served.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    within("the clients to connect before the takeover", served_at_least(1)).await;
    let new_dir = TempDir::new("takeover-new");
    let (_new, bound) =
        Proxy::start_ready(&new_dir, &["--config", file.to_str().unwrap(), "--takeover"], &[]).await;
    assert_eq!(bound.listen, listen);
    assert_eq!(bound.admin, Some(admin));
    // The old process has let go of the sockets; clients go on connecting after that.
    within("the old process to report the takeover", async {
        while !old.stderr().contains("taken over") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let after = served.load(Ordering::Relaxed) + 5;
    within(
        "the clients to connect after the takeover",
        served_at_least(after),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = clients.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 0);

    // The old process still carries its tunnel, and exits once it ends.
    ws_roundtrip(&mut tunnel, Message::text("still on the old process")).await;
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process left its tunnel"
    );
    tunnel.close(None).await.unwrap();
    while tunnel.next().await.is_some() {}
    drop(tunnel);
    let status = old.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", old.stderr());
    assert!(old.stderr().contains("taken over"), "{}", old.stderr());

    let (mut ws, _) = ws_connect(format!("ws://{listen}/")).await;
    ws_roundtrip(&mut ws, Message::text("on the new process")).await;
    assert_eq!(http(admin, "GET", "/ready", &[], b"").await.status, 200);
}

/// CPU time (user + system, in clock ticks) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of descriptors, the proxy backs off instead of spinning on accept, and serves again
/// once descriptors are free. The limit is lowered on the running process (`prlimit`), to
/// a few more than it has open.
#[tokio::test]
async fn running_out_of_descriptors_never_busy_loops() {
    let dir = TempDir::new("descriptors");
    let echo = ws_echo().await.addr;
    let file = dir.write(
        "fds.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: /dev/null\nworkers: 1\nmax_connections: 100000\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n"
        ),
    );
    let (proxy, listen) = Proxy::serve(&dir, &file).await;
    let pid = proxy.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = format!("--nofile={0}:{0}", open + 4);
    let lowered = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .expect("prlimit (util-linux) lowers the running proxy's descriptor limit");
    assert!(lowered.success());

    // More connections than descriptors: the rest wait in the accept queue.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(TcpStream::connect(listen).await.unwrap());
    }
    within("the proxy to run out of descriptors", async {
        while !proxy.stderr().contains("accept failed") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    // A spinning accept loop burns a whole core: 100 ticks a second.
    assert!(used < 25, "{used} ticks of CPU in one second out of descriptors");

    drop(held);
    let (mut ws, _) = within(
        "a tunnel once descriptors are free",
        ws_connect(format!("ws://{listen}/")),
    )
    .await;
    ws_roundtrip(&mut ws, Message::text("served again")).await;
    assert!(
        proxy.stderr().contains("accept failed"),
        "the proxy never ran out: {}",
        proxy.stderr()
    );
}

/// A second signal ends the drain at once: with an hour of drain_timeout, a live tunnel and
/// a request waiting for an upstream that never answers (and no route timeout), the process
/// still exits promptly.
#[tokio::test]
async fn a_second_signal_closes_everything_now() {
    let dir = TempDir::new("second-signal");
    let echo = ws_echo().await.addr;
    // An upstream that accepts and never answers.
    let silent = RawUpstream::bind().await;
    let silent_addr = silent.addr;
    let file = dir.write(
        "second.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: /dev/null\ndrain_timeout: 1h\n\
             upgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: /slow }}\n    cluster: silent\n    timeout: 0s\n\
             \x20 - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{echo}]\n\
             \x20 - name: silent\n    endpoints: [{silent_addr}]\n"
        ),
    );
    let (mut proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;

    let (mut ws, _) = ws_connect(format!("ws://{listen}/")).await;
    ws_roundtrip(&mut ws, Message::text("before")).await;
    let _slow = raw_client(listen, b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let _held = silent.accept().await;

    proxy.start_draining(admin).await;
    ws_roundtrip(&mut ws, Message::text("during")).await;
    proxy.signal("TERM");

    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(proxy.stderr().contains("second signal"), "{}", proxy.stderr());
    match within("the tunnel to end", ws.next()).await {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(other)) => panic!("unexpected message {other:?}"),
    }
}

#[tokio::test]
async fn the_demo_runs_without_arguments() {
    let dir = TempDir::new("demo");
    let (mut proxy, bound) =
        Proxy::start_ready(&dir, &[], &[("SWITCHBACK_DEMO_LISTEN", "127.0.0.1:0")]).await;
    let listen = bound.listen;
    assert_eq!(bound.admin, None);

    let (mut ws, _) = ws_connect(format!("ws://{listen}/")).await;
    ws_roundtrip(&mut ws, Message::text("hello, switchback")).await;
    ws_close(ws).await;
    // The echo's page comes through the proxy.
    let page = http(listen, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>Switchback echo</title>"));

    // The banner goes to standard error, standard output is all access log.
    let banner = proxy.stderr();
    assert!(
        banner.contains(&format!("open in a browser:  http://{listen}/")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("connect to:  ws://{listen}/")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!(
            "python3 -c \"import socket,os;s=socket.create_connection(('127.0.0.1',{}))",
            listen.port()
        )),
        "{banner}"
    );
    let close = within("the tunnel's access log line", async {
        loop {
            let out = proxy.stdout();
            let lines: Vec<Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
                .collect();
            if let Some(close) = lines.into_iter().find(|l| l["event"] == "tunnel_close") {
                return close;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert_eq!(close["upgrade"], "websocket");
    assert!(close["bytes_sent"].as_u64().unwrap() > 17);

    proxy.signal("INT");
    assert_eq!(proxy.wait_exit().await.code(), Some(0), "{}", proxy.stderr());
    assert!(!proxy.stdout().contains("Ctrl-C"), "no banner on stdout");
}

#[tokio::test]
async fn the_demo_says_when_its_port_is_busy() {
    let dir = TempDir::new("demo-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut proxy = Proxy::start(&dir, &[], &[("SWITCHBACK_DEMO_LISTEN", &addr.to_string())]);
    assert_eq!(proxy.wait_exit().await.code(), Some(1));
    let stderr = proxy.stderr();
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(
        stderr.contains("SWITCHBACK_DEMO_LISTEN=127.0.0.1:10001"),
        "{stderr}"
    );
    drop(taken);
}

// === switchback echo, and the demo page ===

/// Starts `switchback echo` listening on `n` ports of its choosing; returns it and the
/// addresses it printed, in order.
async fn start_echo(dir: &TempDir, n: usize) -> (Proxy, Vec<SocketAddr>) {
    let mut args = vec!["echo"];
    for _ in 0..n {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    let mut echo = Proxy::start(dir, &args, &[]);
    let addrs = within("switchback echo to print its addresses", async {
        loop {
            if let Some(status) = echo.child.try_wait().unwrap() {
                panic!("switchback echo exited early ({status}):\n{}", echo.stderr());
            }
            let out = echo.stdout();
            let addrs: Vec<SocketAddr> = out
                .lines()
                .filter_map(|l| l.strip_prefix("switchback echo: listening on "))
                .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
                .collect();
            if addrs.len() == n {
                return addrs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    (echo, addrs)
}

#[tokio::test]
async fn echo_serves_websocket_its_page_and_text() {
    let dir = TempDir::new("echo");
    let (mut echo, addrs) = start_echo(&dir, 2).await;
    assert_ne!(addrs[0], addrs[1]);
    for addr in addrs {
        assert_ne!(addr.port(), 0, "the bound port is printed");
        let (mut ws, res) = ws_connect(format!("ws://{addr}/any/path")).await;
        assert_eq!(res.status(), 101);
        ws_roundtrip(&mut ws, Message::text("hello")).await;
        ws_roundtrip(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
        ws_close(ws).await;

        let page = http(addr, "GET", "/", &[], b"").await;
        assert_eq!(page.status, 200);
        assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(page.body.contains("<title>Switchback echo</title>"));
        let about = http(addr, "GET", "/health", &[], b"").await;
        assert_eq!(about.status, 200);
        assert_eq!(about.header("content-type"), Some("text/plain; charset=utf-8"));
        assert!(about.body.contains("a WebSocket echo server"), "{}", about.body);
        let post = http(addr, "POST", "/", &[], b"x").await;
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
        // An upgrade the echo can't accept is refused, not half-accepted.
        let bad = http(
            addr,
            "GET",
            "/",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            b"",
        )
        .await;
        assert_eq!(bad.status, 400);
    }
    echo.signal("TERM");
    assert_eq!(echo.wait_exit().await.code(), Some(0), "{}", echo.stderr());
}

#[tokio::test]
async fn echo_says_when_its_port_is_busy() {
    let dir = TempDir::new("echo-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut echo = Proxy::start(&dir, &["echo", "--listen", &addr], &[]);
    assert_eq!(echo.wait_exit().await.code(), Some(1));
    let stderr = echo.stderr();
    assert!(
        stderr.contains(&format!(
            "echo: cannot listen on {addr}: the address is already in use by another program; \
             stop it or pick another --listen"
        )),
        "{stderr}"
    );
    drop(taken);
}

/// The README's two terminals: `switchback echo` on every endpoint examples/switchback.yaml
/// names, and the proxy from that file (its addresses moved to free ports). Every route to
/// the echo works: the page on `/`, the WebSocket route it uses (`/ws`, weighted between the
/// two clusters, three endpoints), and the plain `/health`.
#[tokio::test]
async fn the_example_config_runs_against_switchback_echo() {
    let echo_dir = TempDir::new("example-echo");
    let (_echo, echoes) = start_echo(&echo_dir, 3).await;
    let example = include_str!("../examples/switchback.yaml");
    let mut yaml = example
        .replace("listen: 127.0.0.1:10000", "listen: 127.0.0.1:0")
        .replace("admin: 127.0.0.1:9901", "admin: 127.0.0.1:0")
        .replace(
            "# access_log: /var/log/switchback.jsonl",
            "access_log: ACCESS_LOG",
        );
    for (port, echo) in ["9001", "9002", "9003"].into_iter().zip(&echoes) {
        let original = format!("127.0.0.1:{port}");
        assert!(yaml.contains(&original), "the example names {original}");
        yaml = yaml.replace(&original, &echo.to_string());
    }
    assert!(
        yaml.contains("access_log: ACCESS_LOG"),
        "the example's access_log line"
    );
    let dir = TempDir::new("example");
    let log = dir.path("access.log");
    let file = dir.write("example.yaml", &yaml.replace("ACCESS_LOG", log.to_str().unwrap()));
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    let page = http(listen, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<title>Switchback echo</title>"));
    assert!(
        page.body.contains("://${location.host}/ws`"),
        "the page's WebSocket path"
    );
    // Tunnels until each endpoint has had one: echo's two take turns, canary gets a random
    // 20% (200 tunnels all missing it: 0.8^200).
    let tunnel_upstreams = || -> std::collections::HashSet<String> {
        log_lines(&log)
            .iter()
            .filter(|l| l["event"] == "tunnel_close")
            .map(|l| l["upstream"].as_str().unwrap().to_owned())
            .collect()
    };
    for i in 0..200 {
        let (mut ws, _) = ws_connect(format!("ws://{listen}/ws")).await;
        ws_roundtrip(&mut ws, Message::text(format!("message {i}"))).await;
        ws_close(ws).await;
        if tunnel_upstreams().len() == echoes.len() {
            break;
        }
    }
    within("every endpoint to have had a tunnel", async {
        while tunnel_upstreams().len() < echoes.len() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    let health = http(listen, "GET", "/health", &[], b"").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("x-served-by"), Some("switchback"));
}

/// The demo page in headless Chromium, loaded through the demo proxy: what a person types
/// goes out on the page's WebSocket, comes back through the proxy, and the counters move.
#[tokio::test]
async fn the_demo_page_echoes_in_a_browser() {
    use futures_util::FutureExt as _;

    let Some(chromium) = webdriver::Chromium::installed() else {
        return;
    };
    let dir = TempDir::new("demo-page");
    let (mut proxy, bound) =
        Proxy::start_ready(&dir, &[], &[("SWITCHBACK_DEMO_LISTEN", "127.0.0.1:0")]).await;
    let listen = bound.listen;
    let driver = chromium.start_driver(&dir.0).await;
    let browser = driver.session().await;
    // Whatever happens in between, close the browser; then report what happened.
    let outcome = std::panic::AssertUnwindSafe(async {
        browser.goto(&format!("http://{listen}/")).await;
        let ws_url = format!("ws://{listen}/ws");
        browser
            .wait_text("#status", "the page's WebSocket to open", |s| {
                s == format!("connected to {ws_url}")
            })
            .await;

        let input = browser.find("#message").await;
        browser.send_keys(&input, "hello from chromium").await;
        browser.click(&browser.find("#send").await).await;
        browser.wait_text("#received", "the echo", |s| s == "1").await;
        let echoed = browser.text("#log .received").await;
        assert!(echoed.starts_with("hello from chromium "), "{echoed:?}");
        assert!(echoed.ends_with(" ms"), "the round trip is shown: {echoed:?}");

        // Enter sends too; bytes are UTF-8 bytes.
        browser
            .send_keys(&input, &format!("grüße{}", webdriver::Key::Enter))
            .await;
        browser
            .wait_text("#received", "the second echo", |s| s == "2")
            .await;
        assert_eq!(browser.text("#sent").await, "2");
        assert_eq!(browser.text("#bytes-sent").await, "26");
        assert_eq!(browser.text("#bytes-received").await, "26");
        assert!(browser.text("#log .received").await.starts_with("grüße "));
        for rtt in ["#rtt-last", "#rtt-average"] {
            let text = browser.text(rtt).await;
            let ms: f64 = text
                .strip_suffix(" ms")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{rtt} says {text:?}"));
            assert!(ms >= 0.0, "{rtt} says {text:?}");
        }
    })
    .catch_unwind()
    .await;
    browser.delete().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    // The page and its WebSocket both came through the proxy.
    let lines: Vec<Value> = proxy
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "request" && l["path"] == "/" && l["status"] == 200),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "tunnel_open" && l["path"] == "/ws" && l["upgrade"] == "websocket"),
        "{lines:?}"
    );
    proxy.signal("INT");
    assert_eq!(proxy.wait_exit().await.code(), Some(0), "{}", proxy.stderr());
}

// === TLS ===

/// Every listener address in the ready file, in the config's order.
fn ready_listeners(dir: &TempDir) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string(dir.path("ready.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect()
}

/// A WebSocket echo upstream behind TLS, presenting `leaf`.
async fn wss_echo_upstream(leaf: &pki::Leaf) -> SocketAddr {
    pki::wss_echo(leaf.server_config()).await
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A `wss://` client through `proxy`, asking for `localhost`; returns it and the certificate
/// the proxy presented.
async fn wss_connect(proxy: SocketAddr, ca: &pki::Ca) -> (Wss, rustls::pki_types::CertificateDer<'static>) {
    let tls = within(
        "TLS handshake",
        pki::connect(proxy, "localhost", ca.client_config(&[b"http/1.1"])),
    )
    .await
    .unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (ws, res) = within(
        "WebSocket handshake over TLS",
        tokio_tungstenite::client_async("wss://localhost/chat", tls),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 101);
    (ws, served)
}

async fn wss_roundtrip(ws: &mut Wss, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(within("echo", ws.next()).await.unwrap().unwrap(), msg);
}

/// A TLS listener beside a plain one, to a TLS upstream; the access log says which; SIGHUP
/// puts a renewed certificate in place for new handshakes while a tunnel lives on, and a
/// broken key file is refused with the old certificate kept.
#[tokio::test]
async fn tls_listener_beside_a_plain_one_to_a_tls_upstream_with_certificate_reload() {
    let dir = TempDir::new("tls");
    let ca = pki::Ca::new("test CA");
    std::fs::write(dir.path("ca.pem"), &ca.pem).unwrap();
    let first = ca.issue(&["localhost"]);
    first.write(&dir.0, "proxy");
    let upstream = wss_echo_upstream(&ca.issue(&["localhost"])).await;
    let config = dir.write(
        "switchback.yaml",
        &format!(
            "listeners:\n  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert_chain_file: proxy.pem\n          private_key_file: proxy.key\n\
             admin: 127.0.0.1:0\naccess_log: {log}\nupgrade_configs: [{{ upgrade_type: websocket }}]\n\
             routes: [{{ match: {{ prefix: / }}, cluster: echo }}]\n\
             clusters:\n  - name: echo\n    endpoints: [{{ address: \"{upstream}\", hostname: localhost }}]\n    tls: {{ trusted_ca_file: ca.pem }}\n",
            log = dir.path("access.log").display(),
        ),
    );
    let check = run(&["--check", config.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("(TLS)"));
    let (proxy, _, admin) = Proxy::with_admin(&dir, &config).await;
    let [plain, tls] = ready_listeners(&dir)[..] else {
        panic!("two listeners")
    };

    let (mut live, served) = wss_connect(tls, &ca).await;
    assert_eq!(served, first.der);
    wss_roundtrip(&mut live, Message::binary(vec![9u8; 100 * 1024])).await;
    let (mut ws, _) = ws_connect(format!("ws://{plain}/chat")).await;
    ws_roundtrip(&mut ws, Message::text("plain listener, TLS upstream")).await;
    ws_close(ws).await;
    let line = wait_log_line(&dir.path("access.log"), "tunnel_open", Some("/chat")).await;
    let lines = log_lines(&dir.path("access.log"));
    let over_tls = lines
        .iter()
        .find(|l| l["event"] == "tunnel_open" && l["tls"] == true)
        .unwrap_or_else(|| panic!("a TLS tunnel line in {lines:?}"));
    assert_eq!(over_tls["protocol"], "HTTP/1.1");
    assert_eq!(over_tls["sni"], "localhost");
    assert!(line["protocol"].is_string(), "{line}");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "tunnel_open" && l["tls"] == false && l["sni"].is_null()),
        "{lines:?}"
    );

    // Plain HTTP to the TLS port: no answer in HTTP, a counted failure, no error line.
    let mut scanner = TcpStream::connect(tls).await.unwrap();
    scanner
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = within("the scanner's close", support::read_to_eof(&mut scanner)).await;
    assert!(!answer.starts_with(b"HTTP/"));
    // The worker counts the failure just after it closes the socket: the scanner may see the
    // close first.
    within("the failed handshake counted", async {
        loop {
            let metrics = http(admin, "GET", "/metrics", &[], b"").await.body;
            let failures = metric(
                &metrics,
                "switchback_tls_handshake_failures_total",
                &["reason=\"handshake\""],
            );
            if failures >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!proxy.stderr().contains("ERROR"), "{}", proxy.stderr());

    // A renewed certificate under the same names: SIGHUP, and new handshakes get it.
    let renewed = ca.issue(&["localhost"]);
    renewed.write(&dir.0, "proxy");
    proxy.signal("HUP");
    within("the renewed certificate", async {
        loop {
            let (mut ws, served) = wss_connect(tls, &ca).await;
            if served == renewed.der {
                wss_roundtrip(&mut ws, Message::text("renewed")).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    wss_roundtrip(&mut live, Message::text("the tunnel outlived the reload")).await;

    // A key that doesn't belong to the certificate: refused, and the running one stays.
    std::fs::write(dir.path("proxy.key"), ca.issue(&["localhost"]).key_pem).unwrap();
    let refused = http(admin, "POST", "/reload", &[], b"").await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("listeners[1].tls.certificates[0]") && refused.body.contains("proxy.key"),
        "{}",
        refused.body
    );
    let (_, served) = wss_connect(tls, &ca).await;
    assert_eq!(served, renewed.der);
    wss_roundtrip(&mut live, Message::text("still")).await;
}

#[test]
fn check_parses_certificates_and_names_the_field_and_file() {
    let dir = TempDir::new("tls-check");
    let ca = pki::Ca::new("test CA");
    let (cert, _) = ca.issue(&["localhost"]).write(&dir.0, "proxy");
    std::fs::write(dir.path("other.key"), ca.issue(&["localhost"]).key_pem).unwrap();
    let config = dir.write(
        "switchback.yaml",
        "listeners:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - { cert_chain_file: proxy.pem, private_key_file: other.key }\n",
    );
    let out = run(&["--check", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listeners[0].tls.certificates[0]")
            && err.contains("other.key")
            && err.contains("doesn't match"),
        "{err}"
    );
    // Started with it, the binary says the same and exits 1.
    let started = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(started.status.code(), Some(1));
    let err = String::from_utf8_lossy(&started.stderr);
    assert!(
        err.contains("listeners[0].tls.certificates[0]") && err.contains("other.key"),
        "{err}"
    );
    // A missing file is a config error with line, column and field.
    std::fs::remove_file(&cert).unwrap();
    let out = run(&["--check", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":5:")
            && err.contains("listeners[0].tls.certificates[0].cert_chain_file")
            && err.contains("cannot read"),
        "{err}"
    );
}

/// Headless Chromium opens `wss://` through a TLS listener of the binary and echoes 100 KB.
/// The page comes over the same origin first, so Chromium may carry the WebSocket on that
/// HTTP/2 connection (RFC 8441); the access log says which protocol it used.
#[tokio::test]
async fn chromium_echoes_100_kb_over_wss() {
    use futures_util::FutureExt as _;

    let Some(chromium) = webdriver::Chromium::installed() else {
        return;
    };
    let dir = TempDir::new("tls-browser");
    let ca = pki::Ca::new("test CA");
    ca.issue(&["localhost", "127.0.0.1"]).write(&dir.0, "proxy");
    let echo = Command::new(BIN)
        .args(["echo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut echo = EchoProcess(echo);
    let upstream = echo.address();
    let config = dir.write(
        "switchback.yaml",
        &format!(
            "listeners:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{ cert_chain_file: proxy.pem, private_key_file: proxy.key }}\n\
             access_log: {log}\nupgrade_configs: [{{ upgrade_type: websocket }}]\n\
             routes: [{{ match: {{ prefix: / }}, cluster: echo }}]\nclusters: [{{ name: echo, endpoints: [\"{upstream}\"] }}]\n",
            log = dir.path("access.log").display(),
        ),
    );
    let (mut proxy, listen) = Proxy::serve(&dir, &config).await;
    let driver = chromium.start_driver(&dir.0).await;
    let browser = driver.session_accepting_test_certificates().await;
    let outcome = std::panic::AssertUnwindSafe(async {
        browser
            .goto(&format!("https://localhost:{}/", listen.port()))
            .await;
        let echoed = browser
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 const ws = new WebSocket(`wss://${location.host}/big`);
                 const sent = 'x'.repeat(100 * 1024);
                 ws.onopen = () => ws.send(sent);
                 ws.onmessage = (e) => { done(e.data === sent ? e.data.length : -1); ws.close(); };
                 ws.onerror = () => done('error');",
            )
            .await;
        assert_eq!(echoed, 100 * 1024, "the browser got its 100 KB back");
    })
    .catch_unwind()
    .await;
    browser.delete().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let line = wait_log_line(&dir.path("access.log"), "tunnel_open", Some("/big")).await;
    assert_eq!(line["tls"], true, "{line}");
    let protocol = line["protocol"].as_str().unwrap().to_owned();
    assert!(protocol == "HTTP/1.1" || protocol == "HTTP/2", "{line}");
    // Reported so the protocol Chromium chose shows in the test output.
    eprintln!("chromium's wss:// tunnel used {protocol}");
    proxy.signal("INT");
    assert_eq!(proxy.wait_exit().await.code(), Some(0), "{}", proxy.stderr());
}

/// `switchback echo` as a child process, killed on drop.
struct EchoProcess(Child);

impl EchoProcess {
    /// The address it prints once it listens.
    fn address(&mut self) -> SocketAddr {
        use std::io::BufRead as _;
        let stdout = self.0.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        line.split_whitespace()
            .find_map(|w| w.trim_start_matches("ws://").trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A reload adds a listener, removes one and turns one to TLS on its own sockets; tunnels
/// opened on each keep running, and the untouched listener never notices.
#[tokio::test]
async fn a_reload_adds_removes_and_changes_listeners_without_cutting_tunnels() {
    let dir = TempDir::new("reload-listeners");
    let ca = pki::Ca::new("test CA");
    ca.issue(&["localhost"]).write(&dir.0, "proxy");
    let echo = ws_echo().await;
    let tls = "\n    tls: { certificates: [{ cert_chain_file: proxy.pem, private_key_file: proxy.key }] }";
    let config = |listeners: &str| {
        format!(
            "listeners:\n{listeners}\nadmin: 127.0.0.1:0\nupgrade_configs: [{{ upgrade_type: websocket }}]\n\
             routes: [{{ match: {{ prefix: / }}, cluster: echo }}]\nclusters: [{{ name: echo, endpoints: [\"{}\"] }}]\n",
            echo.addr
        )
    };
    let file = dir.write("switchback.yaml", &config("  - address: 127.0.0.1:0"));
    let (_proxy, a, admin) = Proxy::with_admin(&dir, &file).await;
    let (mut on_a, _) = ws_connect(format!("ws://{a}/a")).await;
    let reload = |listeners: String| reload_to(&dir, admin, config(&listeners));

    // Added: a TLS listener beside A.
    let now = reload(format!("  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0{tls}")).await;
    assert_eq!(now[0], a, "A is kept as it was");
    let b = now[1];
    let (mut on_b, _) = wss_connect(b, &ca).await;
    wss_roundtrip(&mut on_b, Message::text("on the added listener")).await;
    ws_roundtrip(&mut on_a, Message::text("A's tunnel through the first reload")).await;

    // Removed: B. Its port refuses new connections; its tunnel runs on.
    let now = reload("  - address: 127.0.0.1:0".to_owned()).await;
    assert_eq!(now, [a]);
    within("B's port to close", async {
        while TcpStream::connect(b).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    wss_roundtrip(&mut on_b, Message::text("the removed listener's tunnel")).await;

    // Changed: A turns to TLS on the same sockets; its plain tunnel runs on.
    let now = reload(format!("  - address: 127.0.0.1:0{tls}")).await;
    assert_eq!(now, [a], "the same port");
    let (mut tls_on_a, _) = wss_connect(a, &ca).await;
    wss_roundtrip(&mut tls_on_a, Message::text("A speaks TLS now")).await;
    ws_roundtrip(&mut on_a, Message::text("A's plain tunnel through three reloads")).await;
    wss_roundtrip(&mut on_b, Message::text("and B's")).await;
}

/// Writes `yaml` as the config, reloads, and returns the running listeners' addresses.
async fn reload_to(dir: &TempDir, admin: SocketAddr, yaml: String) -> Vec<SocketAddr> {
    dir.write("switchback.yaml", &yaml);
    let reply = http(admin, "POST", "/reload", &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let running: Value = serde_json::from_str(&http(admin, "GET", "/config", &[], b"").await.body).unwrap();
    running["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["address"].as_str().unwrap().parse::<SocketAddr>().unwrap())
        .collect()
}

/// `switchback drain` (the preStop hook): `/ready` fails at once while the listener still
/// accepts; after `--after` the drain starts, and the SIGTERM that follows is a first signal
/// (tunnels get `drain_timeout`), not a second one that would cut them.
#[tokio::test]
async fn drain_subcommand_makes_the_pod_unready_then_drains() {
    let dir = TempDir::new("prestop");
    let echo = ws_echo().await;
    let file = dir.write(
        "switchback.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ndrain_timeout: 5s\nupgrade_configs: [{{ upgrade_type: websocket }}]\n\
             routes: [{{ match: {{ prefix: / }}, cluster: echo }}]\nclusters: [{{ name: echo, endpoints: [\"{}\"] }}]\n",
            echo.addr
        ),
    );
    let (mut proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let (mut tunnel, _) = ws_connect(format!("ws://{listen}/ws")).await;
    let admin_arg = admin.to_string();
    let hook = std::thread::spawn(move || run(&["drain", "--admin", &admin_arg, "--after", "700ms"]));
    within("/ready to fail", async {
        while http(admin, "GET", "/ready", &[], b"").await.status != 503 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Unready, and still serving until the drain starts.
    let (mut late, _) = ws_connect(format!("ws://{listen}/ws")).await;
    ws_roundtrip(&mut late, Message::text("accepted while unready")).await;
    let out = tokio::task::spawn_blocking(move || hook.join().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The kubelet's SIGTERM: the drain goes on, tunnels keep working within drain_timeout.
    proxy.signal("TERM");
    within("the proxy to take the SIGTERM", async {
        while !["draining: no new connections", "second signal"]
            .iter()
            .any(|line| proxy.stderr().contains(line))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    ws_roundtrip(&mut tunnel, Message::text("still within drain_timeout")).await;
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "no new connections while draining"
    );
    ws_close(tunnel).await;
    ws_close(late).await;
    assert_eq!(proxy.wait_exit().await.code(), Some(0), "{}", proxy.stderr());
    assert!(!proxy.stderr().contains("second signal"), "{}", proxy.stderr());
}

/// `--watch` follows certificate files: a certificate renewed in place (as cert-manager or
/// certbot do) reaches new handshakes without a signal.
#[tokio::test]
async fn watch_picks_up_a_renewed_certificate() {
    let dir = TempDir::new("watch-cert");
    let ca = pki::Ca::new("test CA");
    ca.issue(&["localhost"]).write(&dir.0, "proxy");
    let echo = ws_echo().await;
    let file = dir.write(
        "switchback.yaml",
        &format!(
            "listeners:\n  - address: 127.0.0.1:0\n    tls: {{ certificates: [{{ cert_chain_file: proxy.pem, private_key_file: proxy.key }}] }}\n\
             upgrade_configs: [{{ upgrade_type: websocket }}]\n\
             routes: [{{ match: {{ prefix: / }}, cluster: echo }}]\nclusters: [{{ name: echo, endpoints: [\"{}\"] }}]\n",
            echo.addr
        ),
    );
    let (_proxy, bound) =
        Proxy::start_ready(&dir, &["--config", file.to_str().unwrap(), "--watch"], &[]).await;
    let (mut live, _) = wss_connect(bound.listen, &ca).await;
    let renewed = ca.issue(&["localhost"]);
    // Written under other names and renamed over the old files, as renewal tools do.
    renewed.write(&dir.0, "next");
    std::fs::rename(dir.path("next.key"), dir.path("proxy.key")).unwrap();
    std::fs::rename(dir.path("next.pem"), dir.path("proxy.pem")).unwrap();
    within("the renewed certificate", async {
        loop {
            let (_, served) = wss_connect(bound.listen, &ca).await;
            if served == renewed.der {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    wss_roundtrip(&mut live, Message::text("opened before the renewal")).await;
}

/// A takeover carries every listener, TLS ones included: the new process serves each on the
/// same port, and a TLS tunnel on the old process runs on.
#[tokio::test]
async fn a_takeover_carries_every_listener() {
    let dir = TempDir::new("takeover-listeners");
    let ca = pki::Ca::new("test CA");
    ca.issue(&["localhost"]).write(&dir.0, "proxy");
    let echo = ws_echo().await.addr;
    let socket = dir.path("takeover.sock");
    let file = dir.write(
        "takeover.yaml",
        &format!(
            "listeners:\n  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0\n    tls: {{ certificates: [{{ cert_chain_file: proxy.pem, private_key_file: proxy.key }}] }}\n\
             access_log: /dev/null\ndrain_timeout: 1h\ntakeover_socket: {}\n\
             upgrade_configs: [{{ upgrade_type: websocket }}]\n\
             routes: [{{ match: {{ prefix: / }}, cluster: echo }}]\nclusters: [{{ name: echo, endpoints: [\"{echo}\"] }}]\n",
            socket.display()
        ),
    );
    let (mut old, _) = Proxy::start_ready(&dir, &["--config", file.to_str().unwrap()], &[]).await;
    let ports = ready_listeners(&dir);
    let (mut tunnel, _) = wss_connect(ports[1], &ca).await;

    let new_dir = TempDir::new("takeover-listeners-new");
    let (_new, _) =
        Proxy::start_ready(&new_dir, &["--config", file.to_str().unwrap(), "--takeover"], &[]).await;
    assert_eq!(
        ready_listeners(&new_dir),
        ports,
        "the same ports, in the same order"
    );
    let (mut plain, _) = ws_connect(format!("ws://{}/", ports[0])).await;
    ws_roundtrip(&mut plain, Message::text("plain, on the new process")).await;
    let (mut tls, _) = wss_connect(ports[1], &ca).await;
    wss_roundtrip(&mut tls, Message::text("TLS, on the new process")).await;
    wss_roundtrip(&mut tunnel, Message::text("TLS, still on the old process")).await;
    tunnel.close(None).await.unwrap();
    while tunnel.next().await.is_some() {}
    drop(tunnel);
    assert_eq!(old.wait_exit().await.code(), Some(0), "{}", old.stderr());
}
