//! The harness end to end at its smallest: `direct` and `switchback` only (no peers), tiny
//! durations and counts, every workload (the TLS ones run on Switchback only if its binary is
//! built next to the harness, and are skipped otherwise). Proves the processes start, measure,
//! report and stop; asserts nothing about speed. Then the TLS workloads on whichever peers are
//! installed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn smoke_run_measures_direct_and_switchback_and_writes_the_report() {
    let out = std::env::temp_dir().join(format!("switchback-bench-test-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchback-bench"))
        .args([
            "--smoke",
            "--systems",
            "direct,switchback",
            "--idle-tunnels",
            "50",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the harness");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the harness") {
            break status;
        }
        if Instant::now() > deadline {
            // SIGKILL: the harness's children die with it (PR_SET_PDEATHSIG).
            let _ = child.kill();
            panic!("the smoke run took longer than 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::io::read_to_string(child.stdout.take().expect("stdout")).expect("read stdout");
    assert!(status.success(), "harness failed: {status}\n{stdout}");
    assert!(stdout.contains("| figure | direct | switchback |"), "{stdout}");

    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let metrics = doc["metrics"].as_array().expect("metrics");
    for id in [
        "bulk_1_tunnel_mb_s",
        "bulk_64_tunnels_mb_s",
        "echo_p50_us",
        "handshakes_per_s",
        "idle_bytes_per_tunnel",
        "flood_rss_mib",
        "storm_all_back_s",
        "storm_handshake_p99_ms",
        "storm_proxy_cpu_us_per_tunnel",
    ] {
        let m = metrics
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no {id}"));
        assert!(m["systems"]["switchback"]["median"].is_number(), "{id}: {m}");
    }
    // The TLS workloads ran on Switchback unless its binary wasn't there to run them.
    let skipped = doc["unavailable"].as_array().expect("unavailable");
    if skipped.is_empty() {
        let m = metrics
            .iter()
            .find(|m| m["id"] == "tls_full_handshakes_per_s")
            .expect("no TLS figures, yet the switchback binary was found");
        assert!(m["systems"]["switchback"]["median"].is_number(), "{m}");
    } else {
        assert!(stdout.contains("skipped tls-handshake on switchback"), "{stdout}");
    }
    let svg = std::fs::read_to_string(out.join("results.svg")).expect("results.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&out);
}

/// The TLS workloads end to end on the peers that are installed (nginx, HAProxy): their TLS
/// configs start, the bench client handshakes with the run's certificate and resumes, and the
/// table has the TLS rows. Skipped (passes) on a machine with neither peer.
#[test]
fn smoke_run_measures_tls_on_installed_peers() {
    let installed: Vec<&str> = ["nginx", "haproxy"]
        .into_iter()
        .filter(|name| {
            ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"]
                .iter()
                .any(|dir| std::path::Path::new(dir).join(name).is_file())
        })
        .collect();
    if installed.is_empty() {
        eprintln!("neither nginx nor haproxy is installed: nothing to run the TLS workloads on");
        return;
    }
    let out = std::env::temp_dir().join(format!("switchback-bench-tls-test-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_switchback-bench"))
        .args([
            "--smoke",
            "--only",
            "tls",
            "--systems",
            &installed.join(","),
            "--out",
        ])
        .arg(&out)
        .stderr(Stdio::inherit())
        .output()
        .expect("run the harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "harness failed: {}\n{stdout}",
        output.status
    );
    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let metrics = doc["metrics"].as_array().expect("metrics");
    for id in [
        "tls_full_handshakes_per_s",
        "tls_resumed_handshakes_per_s",
        "tls_resumed_percent",
        "tls_bulk_1_tunnel_mb_s",
    ] {
        let m = metrics
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no {id}"));
        for name in &installed {
            let median = m["systems"][name]["median"].as_f64();
            assert!(median.is_some_and(|v| v > 0.0), "{id}: {m}");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}
