//! A benchmark run: start each system for each workload, measure, stop it; repeat; report.
//!
//! Every (workload, system) pair gets a fresh upstream and a fresh proxy process, so no
//! workload inherits another's buffers, allocator state or sockets, and RSS baselines are
//! comparable. Systems are interleaved within a workload so that each row's figures are taken
//! close together in time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::cli::RunArgs;
use crate::error::{Context, Error, Result};
use crate::machine::Machine;
use crate::peers;
use crate::report::{self, Results, RunFigures};
use crate::sys;
use crate::systems::{self, Env, SystemKind};
use crate::tls::Certs;
use crate::workloads::{self, Metric, Params, Workload};

/// Runs the benchmark; Ctrl-C or SIGTERM stops every child process before returning.
pub(crate) fn main(args: &RunArgs) -> Result<()> {
    let nofile = sys::raise_nofile(sys::WANT_NOFILE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        // Dropping the run future (when a signal wins) drops every child guard: children stop.
        tokio::select! {
            r = run(args, nofile) => r,
            _ = tokio::signal::ctrl_c() => Err(Error::new("interrupted (Ctrl-C); child processes stopped")),
            _ = term.recv() => Err(Error::new("terminated (SIGTERM); child processes stopped")),
        }
    })
}

/// Removes the scratch directory when the run ends, however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(args: &RunArgs, nofile: u64) -> Result<()> {
    let (mut params, profile) = if args.smoke {
        (Params::smoke(), "smoke")
    } else if args.quick {
        (Params::quick(), "quick")
    } else {
        (Params::full(), "full")
    };
    params.bulk_frame = args.bulk_frame;
    if let Some(secs) = args.handshake_seconds {
        params.hs_time = Duration::from_secs_f64(secs.max(0.1));
    }
    let fit = idle_tunnels_that_fit(nofile);
    match args.idle_tunnels {
        Some(n) => params.idle_tunnels = n.max(1),
        None if fit < params.idle_tunnels => {
            println!(
                "note: RLIMIT_NOFILE is {nofile} and cannot be raised here (no CAP_SYS_RESOURCE?); a proxy \
                 needs two descriptors per tunnel, so the memory workload holds {fit} idle tunnels, not {}",
                params.idle_tunnels
            );
            params.idle_tunnels = fit;
        }
        None => {}
    }
    // The storm holds as many tunnels as the memory workload, for the same reason.
    let storm_capped = args.storm_tunnels.is_none() && fit < params.storm_tunnels;
    match args.storm_tunnels {
        Some(n) => params.storm_tunnels = n.max(1),
        None if storm_capped => params.storm_tunnels = fit,
        None => {}
    }
    let workloads: Vec<Workload> = if args.only.is_empty() {
        Workload::ALL.to_vec()
    } else {
        let chosen: Vec<Workload> = args.only.iter().flat_map(|w| w.workloads()).copied().collect();
        Workload::ALL.into_iter().filter(|w| chosen.contains(w)).collect()
    };
    let wanted: Vec<SystemKind> = if args.systems.is_empty() {
        SystemKind::default_set()
    } else {
        SystemKind::ALL
            .into_iter()
            .filter(|s| args.systems.contains(s))
            .collect()
    };

    let nginx = peers::find("nginx", args.nginx.as_deref(), "-v");
    let haproxy = peers::find("haproxy", args.haproxy.as_deref(), "-v");
    let mut systems = Vec::new();
    let mut skipped = Vec::new();
    let mut peer_versions = Vec::new();
    for kind in wanted {
        let found = match kind {
            SystemKind::Nginx => Some(&nginx),
            SystemKind::Haproxy => Some(&haproxy),
            _ => None,
        };
        match found {
            Some(None) => {
                let why = format!(
                    "{} is not installed (apt-get install nginx-light haproxy)",
                    kind.name()
                );
                println!("{} skipped: {why}", kind.name());
                skipped.push((kind, why));
            }
            Some(Some(peer)) => {
                peer_versions.push((kind, peer.version.clone()));
                systems.push(kind);
            }
            None => systems.push(kind),
        }
    }

    // The TLS workloads run Switchback as its binary, and so does `switchback-bin`; without
    // one they are skipped.
    let tls = workloads.iter().any(|w| w.is_tls());
    let binary_runs: Vec<(Workload, SystemKind)> = workloads
        .iter()
        .flat_map(|&w| systems.iter().map(move |&s| (w, s)))
        .filter(|&(w, s)| {
            workloads::applies(w, s)
                && (matches!(s, SystemKind::SwitchbackBin | SystemKind::SwitchbackBinTraced)
                    || (s == SystemKind::Switchback && w.is_tls()))
        })
        .collect();
    let mut unavailable = Vec::new();
    let switchback_bin = if binary_runs.is_empty() {
        None
    } else {
        let found = peers::switchback::find(args.switchback_bin.as_deref());
        match &found {
            Some(bin) => peer_versions.push((
                SystemKind::SwitchbackBin,
                format!("{} ({})", bin.version, bin.path.display()),
            )),
            None => {
                let why = match &args.switchback_bin {
                    Some(path) => format!("--switchback-bin {} does not run", path.display()),
                    None => "no switchback binary next to this executable (cargo build --release -p \
                             switchback-cli, or pass --switchback-bin)"
                        .to_owned(),
                };
                println!("switchback binary not found: {why}; skipping what needs it");
                unavailable.extend(binary_runs.into_iter().map(|(w, s)| (w, s, why.clone())));
            }
        }
        found
    };

    let work = std::env::temp_dir().join(format!("switchback-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).context(format_args!("creating {}", work.display()))?;
    let _scratch = Scratch(work.clone());
    // One certificate for every proxy in the run.
    let certs = if tls {
        Some(Certs::generate(&work).context("making the TLS certificate")?)
    } else {
        None
    };
    let env = Env {
        exe: std::env::current_exe().context("locating this executable")?,
        work,
        nginx,
        haproxy,
        haproxy_splice: args.haproxy_splice,
        nofile,
        switchback_bin,
        certs,
    };
    let out_dir = args.out.clone().unwrap_or_else(default_out_dir);
    let mut notes = Vec::new();
    if workloads.contains(&Workload::Storm) {
        let why = if storm_capped {
            format!(" (not 10000: RLIMIT_NOFILE is {nofile}, and a proxy needs two descriptors per tunnel)")
        } else {
            String::new()
        };
        notes.push(format!(
            "storm: {} tunnels dropped and reconnected at once{why}",
            params.storm_tunnels
        ));
    }

    let mut results = Results {
        machine: Machine::detect(nofile),
        peers: peer_versions,
        command: std::iter::once("switchback-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        systems,
        skipped,
        workloads: workloads.clone(),
        runs: Vec::new(),
        failures: Vec::new(),
        unavailable,
        profile,
        repeat: args.runs,
        notes,
    };
    print!("{}", report::table::header(&results));
    if workloads.contains(&Workload::Memory) && params.idle_tunnels > fit {
        println!(
            "warning: {} idle tunnels may not fit RLIMIT_NOFILE {nofile}",
            params.idle_tunnels
        );
    }
    if workloads.contains(&Workload::Storm) && params.storm_tunnels > fit {
        println!(
            "warning: {} storm tunnels may not fit RLIMIT_NOFILE {nofile}",
            params.storm_tunnels
        );
    }

    for run in 1..=args.runs {
        let mut figures = RunFigures::new();
        for &workload in &workloads {
            for &kind in &results.systems {
                if !workloads::applies(workload, kind) || results.unavailable(workload, kind) {
                    continue;
                }
                let label = format!(
                    "[run {run}/{}] {:<12} {:<18}",
                    args.runs,
                    workload.name(),
                    kind.name()
                );
                match measure(workload, kind, &env, &params).await {
                    Ok(outcome) => {
                        println!("{label} {}", outcome.detail);
                        figures.extend(outcome.values.into_iter().map(|(m, v)| ((m, kind), v)));
                    }
                    Err(e) => {
                        println!("{label} FAILED: {e}");
                        results.failures.push((workload, kind, e.to_string()));
                    }
                }
                // Let the kernel finish closing the last system's sockets.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        derive_added_latency(&mut figures);
        results.runs.push(figures);
    }

    println!();
    print!("{}", report::table::header(&results));
    println!();
    print!("{}", report::table::render(&results));
    write_outputs(&out_dir, &results)?;
    match results.failures.len() {
        0 => Ok(()),
        n => Err(Error::new(format!("{n} measurement(s) failed; see above"))),
    }
}

/// The most idle tunnels (a multiple of 500) a proxy can hold within `nofile` descriptors: two
/// per tunnel, with room for listeners, the runtime and HAProxy's splicing pipes.
fn idle_tunnels_that_fit(nofile: u64) -> usize {
    let tunnels = nofile.saturating_sub(1_800) / 2 / 500 * 500;
    usize::try_from(tunnels).unwrap_or(usize::MAX).max(500)
}

/// Starts `kind`, runs `workload` on it, stops it.
async fn measure(
    workload: Workload,
    kind: SystemKind,
    env: &Env,
    params: &Params,
) -> Result<workloads::Outcome> {
    let system = systems::start(kind, env, workload.is_tls()).await?;
    let outcome = workloads::run(workload, &system, params, env.certs.as_ref()).await;
    system.stop();
    outcome
}

/// Adds "p50 added over direct" for every system, from this run's figures.
fn derive_added_latency(figures: &mut RunFigures) {
    let Some(&direct) = figures.get(&(Metric::EchoP50, SystemKind::Direct)) else {
        return;
    };
    let added: Vec<_> = figures
        .iter()
        .filter(|((m, _), _)| *m == Metric::EchoP50)
        .map(|((_, s), v)| ((Metric::EchoAddedP50, *s), v - direct))
        .collect();
    figures.extend(added);
}

/// `<workspace>/target/bench`.
fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench")
}

fn write_outputs(dir: &Path, results: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).context(format_args!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let json = dir.join("results.json");
    std::fs::write(&json, report::json::render(results))
        .context(format_args!("writing {}", json.display()))?;
    let svg = dir.join("results.svg");
    std::fs::write(&svg, report::svg::render(results)).context(format_args!("writing {}", svg.display()))?;
    println!("\nwrote {} and {}", json.display(), svg.display());
    Ok(())
}
