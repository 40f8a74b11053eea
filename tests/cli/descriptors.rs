//! The binary under a small descriptor limit (`prlimit --nofile=256:256`): the default
//! `max_connections` leaves most of it to connections, a crowd of upgrades is answered, not
//! left waiting, and a real client behind a flood of silent connections gets its answer.

use super::*;

/// Starts `switchback --config file` under `prlimit --nofile=N:N` and waits until it listens.
async fn serve_with_descriptors(dir: &TempDir, file: &Path, descriptors: u32) -> (Proxy, SocketAddr) {
    let ready = dir.path("ready.json");
    let stdout = dir.path("stdout.log");
    let stderr = dir.path("stderr.log");
    let child = Command::new("prlimit")
        .arg(format!("--nofile={descriptors}:{descriptors}"))
        .arg(BIN)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("prlimit (util-linux) starts the binary under a descriptor limit");
    let mut proxy = Proxy {
        child,
        stdout,
        stderr,
    };
    let bound = proxy.wait_ready(&ready).await;
    (proxy, bound.listen)
}

/// A config with one WebSocket route to `upstream`, no access log.
fn one_route(dir: &TempDir, upstream: SocketAddr) -> PathBuf {
    dir.write(
        "fds.yaml",
        &format!(
            "listen: 127.0.0.1:0\nupgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: up\n\
             clusters:\n  - name: up\n    endpoints: [{upstream}]\n"
        ),
    )
}

const UPGRADE: &[u8] = b"GET /t HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";

/// How an upgrade attempt ended: its status, or 0 for a connection closed without one.
async fn upgrade_status(listen: SocketAddr) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(listen).await.unwrap();
    let _ = stream.write_all(UPGRADE).await;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return (0, stream),
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    (support::status(&head), stream)
}

/// 400 upgrades at once through a proxy allowed 256 descriptors: about a hundred get their
/// tunnel (96 places: a quarter of the limit is kept back), every other one a `503` (or a
/// close) within 6 s, and the proxy, full of tunnels, idles.
#[tokio::test]
async fn a_crowd_of_upgrades_under_256_descriptors_is_answered_in_time() {
    let dir = TempDir::new("crowd");
    let (proxy, listen) = serve_with_descriptors(&dir, &one_route(&dir, ws_echo().await.addr), 256).await;
    let start = Instant::now();
    let clients: Vec<_> = (0..400)
        .map(|_| {
            tokio::spawn(
                async move { tokio::time::timeout(Duration::from_secs(6), upgrade_status(listen)).await },
            )
        })
        .collect();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut open = Vec::new();
    for client in clients {
        let (status, stream) = client
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("an upgrade had no answer after 6 s:\n{}", proxy.stderr()));
        *statuses.entry(status).or_default() += 1;
        // No client hangs up, refused or not: a crowd that holds on to its connections
        // must not take the descriptors the proxy needs to answer the rest.
        open.push(stream);
    }
    let took = start.elapsed();
    let tunnels = statuses.get(&101).copied().unwrap_or(0);
    assert!(
        (80..=96).contains(&tunnels),
        "{tunnels} tunnels in {took:?}: {statuses:?}"
    );
    assert_eq!(
        statuses.keys().filter(|s| ![0, 101, 503].contains(*s)).count(),
        0,
        "{statuses:?}"
    );
    // Full of tunnels, with nothing more to do, the proxy doesn't spin.
    let pid = proxy.child.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    assert!(used < 25, "{used} ticks of CPU in one idle second");
    drop(open);
}

/// 300 connections that send nothing, then a real upgrade, under 256 descriptors: silent
/// connections give way to newcomers once they have waited two seconds, and the real client
/// gets its `101` within 5 s.
#[tokio::test]
async fn a_real_upgrade_behind_300_silent_connections_is_answered_in_time() {
    let dir = TempDir::new("silent");
    let (proxy, listen) = serve_with_descriptors(&dir, &one_route(&dir, ws_echo().await.addr), 256).await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(listen).await.unwrap());
    }
    let start = Instant::now();
    let (status, _stream) = tokio::time::timeout(Duration::from_secs(5), upgrade_status(listen))
        .await
        .unwrap_or_else(|_| panic!("no answer within 5 s:\n{}", proxy.stderr()));
    assert!(
        [101, 503].contains(&status),
        "{status} after {:?}",
        start.elapsed()
    );
    drop(silent);
}
