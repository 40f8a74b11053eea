//! The harness end to end at its smallest: `direct` and `switchback` only (no peers), tiny
//! durations and counts, every workload. Proves the processes start, measure, report and stop;
//! asserts nothing about speed.

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
    ] {
        let m = metrics
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no {id}"));
        assert!(m["systems"]["switchback"]["median"].is_number(), "{id}: {m}");
    }
    let svg = std::fs::read_to_string(out.join("results.svg")).expect("results.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&out);
}
