//! Who may use the admin endpoint and the takeover socket, through the binary over real
//! sockets.
//!
//! A remote admin client is this host's own non-loopback address (the one the default route
//! leaves from): the admin endpoint binds `0.0.0.0`, and the test connects to that address,
//! so the connection's peer is not loopback. Without such an address those tests say
//! `SKIPPED` and pass; the door's rules are unit-tested in the binary too
//! (`admin::door::tests`). Another user is `nobody` (uid 65534): this test binary run again
//! as that user, which needs root; without it those parts say `SKIPPED`.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};

use super::*;

/// The admin token the tests write into `admin-token`.
const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Another user's uid and gid.
const NOBODY: u32 = 65534;

/// This host's address on its default route, when it has one that is not loopback.
fn non_loopback_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // TEST-NET-3: connecting a UDP socket only picks the route and its source address; no
    // packet is sent.
    socket.connect("203.0.113.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// One request on a fresh connection, with exactly these headers (`Host` included only if
/// given), read to the end.
async fn ask(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    within(&format!("{method} {target} on {addr}"), async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\ncontent-length: 0\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        parse_reply(&raw)
    })
    .await
}

/// Every admin request that changes the proxy or reveals what it serves: the ones the door
/// guards.
const GUARDED: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/config"),
    ("GET", "/tunnels"),
    ("GET", "/clusters"),
    ("GET", "/runtime"),
    ("POST", "/runtime?key=shift&value=100"),
    ("POST", "/reload"),
    ("POST", "/tunnels/close?id=1"),
    ("POST", "/drain"),
];

/// A config with an upstream, a runtime key, and the admin endpoint as `admin`.
fn config_with_admin(dir: &TempDir, upstream: SocketAddr, admin: &str) -> PathBuf {
    dir.write("admin-token", &format!("{TOKEN}\n"));
    dir.write(
        "switchback.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: {admin}\naccess_log: /dev/null\ndrain_timeout: 1s\nruntime: {{ shift: 0 }}\n\
             http_filters:\n  - request_headers_to_add: {{ authorization: Bearer upstream-secret-1 }}\n\
             routes:\n  - match: {{ prefix: /, headers: [{{ name: x-key, exact: secret-2 }}] }}\n    cluster: app\n\
             \x20   request_headers_to_add: {{ x-api-key: secret-3 }}\n\
             \x20 - match: {{ prefix: / }}\n    cluster: app\n\
             clusters: [{{ name: app, endpoints: [\"{upstream}\"] }}]\n"
        ),
    )
}

/// The proxy still serves: a request through it reaches the upstream.
async fn still_serves(listen: SocketAddr) {
    let r = http(listen, "GET", "/", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("app\n"), "{}", r.body);
}

#[tokio::test]
async fn admin_door_refuses_remote_callers_without_the_token() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIPPED: this host has no non-loopback address to call the admin endpoint from");
        return;
    };
    let dir = TempDir::new("admin-remote");
    let upstream = http_upstream("app").await;
    let file = config_with_admin(&dir, upstream, "{ address: 0.0.0.0:0, token_file: admin-token }");
    let (mut proxy, listen, bound) = Proxy::with_admin(&dir, &file).await;
    assert!(bound.ip().is_unspecified(), "{bound}");
    let remote = SocketAddr::new(ip, bound.port());
    let host = remote.to_string();
    let host = ("host", host.as_str());
    let auth = format!("Bearer {TOKEN}");

    // The probes answer anyone.
    let ready = ask(remote, "GET", "/ready", &[host]).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let metrics = ask(remote, "GET", "/metrics", &[host]).await;
    assert_eq!(metrics.status, 200);

    // Everything else: no token, a wrong one, or another scheme is 401, and changes nothing.
    for (method, target) in GUARDED {
        for extra in [
            None,
            Some("Bearer test-admin-token-0123456789abcdeX"),
            Some("Bearer "),
            Some("Basic dGVzdDp0ZXN0"),
        ] {
            let mut headers = vec![host];
            headers.extend(extra.map(|v| ("authorization", v)));
            let r = ask(remote, method, target, &headers).await;
            assert_eq!(r.status, 401, "{method} {target} with {extra:?}: {}", r.body);
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{method} {target}: {:?}",
                r.headers
            );
            assert!(!r.body.contains("upstream-secret"), "{}", r.body);
        }
    }
    assert_eq!(
        ask(remote, "GET", "/ready", &[host]).await.status,
        200,
        "not draining"
    );
    still_serves(listen).await;
    let runtime: Value = serde_json::from_str(
        &http(
            SocketAddr::new([127, 0, 0, 1].into(), bound.port()),
            "GET",
            "/runtime",
            &[],
            b"",
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(
        runtime,
        serde_json::json!({ "shift": 0 }),
        "the refused POST changed nothing"
    );

    // Each refusal is logged with the peer and the path, never with what was presented.
    let stderr = proxy.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("admin: refused") && l.contains(&ip.to_string()) && l.contains("/config")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("0123456789abcde"),
        "a token in the log:\n{stderr}"
    );

    // A foreign Host is refused even with the token.
    let rebound = ask(
        remote,
        "GET",
        "/config",
        &[("host", "evil.example:9901"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(rebound.status, 421, "{}", rebound.body);

    // With the token, each works.
    let with = |method: &'static str, target: &'static str| {
        let auth = auth.clone();
        async move { ask(remote, method, target, &[host, ("authorization", &auth)]).await }
    };
    let config = with("GET", "/config").await;
    assert_eq!(config.status, 200, "{}", config.body);
    let config: Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(config["admin"]["address"], bound.to_string());
    assert!(
        config["admin"]["token_file"]
            .as_str()
            .unwrap()
            .ends_with("admin-token")
    );
    assert!(
        !config.to_string().contains(TOKEN),
        "the token itself never shows"
    );
    for (method, target, status) in [
        ("GET", "/", 200),
        ("GET", "/tunnels", 200),
        ("GET", "/clusters", 200),
        ("GET", "/runtime", 200),
        ("POST", "/runtime?key=shift&value=100", 200),
        ("POST", "/reload", 200),
        ("POST", "/tunnels/close?id=1", 404),
    ] {
        let r = with(method, target).await;
        assert_eq!(r.status, status, "{method} {target}: {}", r.body);
    }
    let drain = with("POST", "/drain").await;
    assert_eq!(drain.status, 202, "{}", drain.body);
    assert_eq!(ask(remote, "GET", "/ready", &[host]).await.status, 503);
    assert_eq!(proxy.wait_exit().await.code(), Some(0), "{}", proxy.stderr());
}

#[tokio::test]
async fn admin_door_refuses_foreign_origins_and_hosts_and_hides_header_values() {
    let dir = TempDir::new("admin-loopback");
    let upstream = http_upstream("app").await;
    let file = config_with_admin(&dir, upstream, "127.0.0.1:0");
    let (proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let own = admin.to_string();

    // A page on another site posting to the endpoint from the operator's browser.
    for origin in ["http://evil.example", "null", "https://evil.example"] {
        let r = ask(admin, "POST", "/drain", &[("host", &own), ("origin", origin)]).await;
        assert_eq!(r.status, 403, "Origin {origin}: {}", r.body);
    }
    assert_eq!(
        ask(admin, "GET", "/ready", &[("host", &own)]).await.status,
        200,
        "not draining"
    );
    still_serves(listen).await;
    assert!(proxy.stderr().contains("foreign Origin"), "{}", proxy.stderr());

    // A page whose name was rebound to 127.0.0.1 names itself in Host.
    for host in [
        "evil.example",
        &format!("evil.example:{}", admin.port()),
        "localhost.evil.example",
    ] {
        for (method, target) in GUARDED {
            let r = ask(admin, method, target, &[("host", host)]).await;
            assert_eq!(r.status, 421, "{method} {target} with Host {host}: {}", r.body);
        }
        // The probes answer whatever the Host.
        assert_eq!(ask(admin, "GET", "/ready", &[("host", host)]).await.status, 200);
        assert_eq!(ask(admin, "GET", "/metrics", &[("host", host)]).await.status, 200);
    }
    let no_host = ask(admin, "GET", "/config", &[]).await;
    assert_eq!(no_host.status, 421);
    still_serves(listen).await;

    // Loopback names and the endpoint's own address are fine; so is its own Origin.
    for host in [
        own.as_str(),
        "localhost",
        "localhost:8080",
        "127.0.0.1",
        "[::1]:9901",
    ] {
        let r = ask(admin, "GET", "/tunnels", &[("host", host)]).await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.body);
    }
    let origin = format!("http://{own}");
    let reload = ask(admin, "POST", "/reload", &[("host", &own), ("origin", &origin)]).await;
    assert_eq!(reload.status, 200, "{}", reload.body);

    // `GET /config` shows header names, never their values.
    let config = ask(admin, "GET", "/config", &[("host", &own)]).await;
    assert_eq!(config.status, 200);
    assert!(!config.body.contains("secret"), "{}", config.body);
    let json: Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(
        json["http_filters"][0]["request_headers_to_add"]["authorization"],
        "<redacted>"
    );
    assert_eq!(
        json["routes"][0]["request_headers_to_add"]["x-api-key"],
        "<redacted>"
    );
    assert_eq!(json["routes"][0]["match"]["headers"][0]["name"], "x-key");
    assert_eq!(json["routes"][0]["match"]["headers"][0]["exact"], "<redacted>");
    assert_eq!(json["admin"], own, "the short form stays a bare address");
    // The redaction is the view's only: the upstream still gets the values.
    let r = http(listen, "GET", "/", &[("x-key", "secret-2")], b"").await;
    assert!(r.body.contains("x-api-key: secret-3"), "{}", r.body);
    assert!(
        r.body.contains("authorization: Bearer upstream-secret-1"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn drain_subcommand_sends_the_admin_token() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIPPED: this host has no non-loopback address to call the admin endpoint from");
        return;
    };
    let dir = TempDir::new("drain-token");
    let upstream = http_upstream("app").await;
    let file = config_with_admin(&dir, upstream, "{ address: 0.0.0.0:0, token_file: admin-token }");
    let (mut proxy, listen, bound) = Proxy::with_admin(&dir, &file).await;
    let remote = SocketAddr::new(ip, bound.port()).to_string();

    let without = {
        let remote = remote.clone();
        tokio::task::spawn_blocking(move || run(&["drain", "--admin", &remote]))
            .await
            .unwrap()
    };
    assert_eq!(without.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("--token-file"),
        "{stderr}"
    );
    still_serves(listen).await;

    let token_file = dir.path("admin-token");
    let with = tokio::task::spawn_blocking(move || {
        run(&[
            "drain",
            "--admin",
            &remote,
            "--token-file",
            token_file.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    assert_eq!(proxy.wait_exit().await.code(), Some(0), "{}", proxy.stderr());
}

/// The token, like the admin address, is fixed at start: a reload reads the file again and
/// reports a new token as needing a restart, and the running one stays.
#[tokio::test]
async fn a_new_admin_token_needs_a_restart() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIPPED: this host has no non-loopback address to call the admin endpoint from");
        return;
    };
    let dir = TempDir::new("admin-token-reload");
    let upstream = http_upstream("app").await;
    let file = config_with_admin(&dir, upstream, "{ address: 0.0.0.0:0, token_file: admin-token }");
    let (_proxy, _, bound) = Proxy::with_admin(&dir, &file).await;
    let remote = SocketAddr::new(ip, bound.port());
    let host = remote.to_string();
    let tunnels = |token: &'static str| {
        let (auth, host) = (format!("Bearer {token}"), host.clone());
        async move {
            ask(
                remote,
                "GET",
                "/tunnels",
                &[("host", &host), ("authorization", &auth)],
            )
            .await
            .status
        }
    };
    const NEW: &str = "a-new-admin-token-after-rotation";
    dir.write("admin-token", NEW);
    let loopback = SocketAddr::new([127, 0, 0, 1].into(), bound.port());
    let reload = http(loopback, "POST", "/reload", &[], b"").await;
    assert_eq!(reload.status, 200, "{}", reload.body);
    let reloaded: Value = serde_json::from_str(&reload.body).unwrap();
    assert_eq!(reloaded["restart_needed"], serde_json::json!(["admin"]));
    assert_eq!(tunnels(TOKEN).await, 200, "the running token stays");
    assert_eq!(tunnels(NEW).await, 401);

    // An unreadable token file refuses the reload; the running config stays.
    std::fs::remove_file(dir.path("admin-token")).unwrap();
    let refused = http(loopback, "POST", "/reload", &[], b"").await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.contains("admin.token_file: cannot read"),
        "{}",
        refused.body
    );
    assert_eq!(tunnels(TOKEN).await, 200);
}

#[test]
fn an_unusable_admin_token_file_is_a_config_error() {
    let dir = TempDir::new("admin-token-check");
    dir.write("empty-token", "\n");
    let file = dir.write(
        "switchback.yaml",
        "admin:\n  address: 0.0.0.0:9901\n  token_file: empty-token\n",
    );
    let out = run(&["--check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:15: admin.token_file: the admin token in {}: it is empty; e.g. write one with `openssl rand -hex 32 > FILE`",
            file.display(),
            dir.path("empty-token").display()
        )),
        "{stderr}"
    );
    let missing = dir.write(
        "missing.yaml",
        "admin: { address: 0.0.0.0:9901, token_file: /nonexistent/token }\n",
    );
    let out = run(&["--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "it does not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.token_file: cannot read /nonexistent/token: "),
        "{stderr}"
    );
}

// === the takeover socket ===

/// Whether this process may run others as `nobody`.
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs [`takeover_peer_helper`] in a child process as `nobody`: `connect` to the takeover
/// socket at `socket` and report what came, or `offer` a fake takeover there.
fn peer_as_nobody(mode: &str, socket: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "security::takeover_peer_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SWITCHBACK_TEST_PEER", mode)
        .env("SWITCHBACK_TEST_SOCKET", socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run this test binary as nobody")
}

/// Not a test: the body of the child process [`peer_as_nobody`] starts (it does nothing
/// without `SWITCHBACK_TEST_PEER`).
#[test]
fn takeover_peer_helper() {
    let Ok(mode) = std::env::var("SWITCHBACK_TEST_PEER") else {
        return;
    };
    let path = PathBuf::from(std::env::var("SWITCHBACK_TEST_SOCKET").unwrap());
    match mode.as_str() {
        "connect" => {
            let mut stream =
                UnixStream::connect(&path).unwrap_or_else(|e| panic!("PEER: cannot connect: {e}"));
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut got = Vec::new();
            let end = stream.read_to_end(&mut got);
            println!("PEER: connected; read {} bytes ({end:?})", got.len());
        }
        "offer" => {
            let listener = UnixListener::bind(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
            let (mut stream, _) = listener.accept().unwrap();
            // A head that claims one worker socket, with none attached.
            let _ = stream.write_all(&[0, 1, 0]);
            let _ = stream.read_to_end(&mut Vec::new());
            println!("PEER: offered");
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Waits for `child` and returns its standard output and error.
async fn output_of(child: Child) -> String {
    let out = within(
        "the peer process",
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
    )
    .await
    .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn the_takeover_socket_is_private_and_refuses_other_users() {
    let dir = TempDir::new("takeover-private");
    let upstream = http_upstream("app").await;
    let socket = dir.path("takeover.sock");
    let file = dir.write(
        "switchback.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\naccess_log: /dev/null\ntakeover_socket: {}\n\
             routes: [{{ match: {{ prefix: / }}, cluster: app }}]\nclusters: [{{ name: app, endpoints: [\"{upstream}\"] }}]\n",
            socket.display()
        ),
    );
    let (proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is {mode:o}");

    if !is_root() {
        eprintln!("SKIPPED (not root): a peer of another uid; only the mode was checked");
        return;
    }
    // Opened up by hand, so that the uid check is what stands in the way.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let peer = output_of(peer_as_nobody("connect", &socket)).await;
    assert!(peer.contains("PEER: connected; read 0 bytes"), "{peer}");
    within("the refusal in the log", async {
        while !proxy.stderr().contains("takeover refused") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let stderr = proxy.stderr();
    assert!(
        stderr.contains(&format!("the peer runs as uid {NOBODY} (pid ")),
        "{stderr}"
    );
    // No takeover happened: the process serves on, ready, with its sockets.
    assert!(!stderr.contains("taken over"), "{stderr}");
    assert_eq!(http(admin, "GET", "/ready", &[], b"").await.status, 200);
    still_serves(listen).await;
}

#[tokio::test]
async fn a_takeover_from_another_user_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED (not root): needs a process of another uid");
        return;
    }
    let dir = TempDir::new("takeover-impostor");
    let shared = dir.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = shared.join("takeover.sock");
    let impostor = peer_as_nobody("offer", &socket);
    within("the impostor's socket", async {
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The folder now passes the folder check; only the peer check is left.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.write(
        "switchback.yaml",
        &format!("listen: 127.0.0.1:0\ntakeover_socket: {}\n", socket.display()),
    );
    let out = tokio::task::spawn_blocking(move || run(&["--config", file.to_str().unwrap(), "--takeover"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("the process offering it runs as uid {NOBODY} (pid "))
            && stderr.contains("refusing its sockets"),
        "{stderr}"
    );
    let peer = output_of(impostor).await;
    assert!(peer.contains("PEER: offered"), "{peer}");
}

#[test]
fn a_takeover_socket_in_a_folder_others_can_write_is_refused() {
    let dir = TempDir::new("takeover-shared");
    let shared = dir.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let file = dir.write(
        "switchback.yaml",
        &format!(
            "listen: 127.0.0.1:0\ntakeover_socket: {}\n",
            shared.join("takeover.sock").display()
        ),
    );
    let refused = || {
        // Started, not run to the end: a proxy that wrongly starts is killed on drop.
        let mut proxy = Proxy::start(&dir, &["--config", file.to_str().unwrap()], &[]);
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "it started:\n{}", proxy.stderr());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(1));
        proxy.stderr()
    };
    let stderr = refused();
    assert!(
        stderr.contains("is writable by everyone (mode 1777)") && stderr.contains("/run/switchback"),
        "{stderr}"
    );
    assert!(!shared.join("takeover.sock").exists());

    if !is_root() {
        eprintln!("SKIPPED (not root): a folder of another user");
        return;
    }
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&shared, Some(NOBODY), Some(NOBODY)).unwrap();
    let stderr = refused();
    assert!(stderr.contains(&format!("belongs to uid {NOBODY}")), "{stderr}");
}
