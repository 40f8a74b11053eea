//! `switchback`: the Switchback tower stack driven by a YAML file, with an admin endpoint,
//! a JSON access log, config reloads, binary takeover and graceful drain. Run
//! `switchback --help` for the command line.
//!
//! Modules:
//! - the command line: [`cli`] (arguments and modes), [`fatal`] (a startup failure as one
//!   line), [`signals`] (SIGTERM and SIGINT);
//! - the proxy's life: [`run`] (the steps, in order) walks [`proxy`] (the one owner of the
//!   running proxy: listeners, admin endpoint, reloader, takeover offer and drain, and its
//!   lifecycle), which starts [`listeners`] (each listener's workers, changed by a reload),
//!   [`reload`] (SIGHUP, `--watch` and `POST /reload`; the config file's digest),
//!   [`takeover`] (the listening sockets handed to a new process) and [`ready`] (the
//!   `--ready-file`);
//! - what a request meets, in order: [`stack`] (config to tower stack), [`access_log`],
//!   [`filters`] (`http_filters` to tower layers), with [`tls`] (certificates and keys as the
//!   library's TLS);
//! - beside the proxy: [`admin`] (the admin endpoint, behind its access rules), [`demo`] and
//!   [`echo`] (the WebSocket echo upstream and its page, `switchback echo`), and
//!   [`drain_request`] (`switchback drain`, the preStop hook).
//!
//! Threads: every mode runs on one current-thread runtime on the main thread ([`block_on`]).
//! For the proxy that runtime carries the owner, the admin endpoint, signals, reloads and
//! the clusters' health checks; the proxy itself runs on each listener's worker threads,
//! each with a single-threaded runtime of its own.

#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod cli;
mod demo;
mod drain_request;
mod echo;
mod fatal;
mod filters;
mod listeners;
mod otlp;
mod proxy;
mod ready;
mod reload;
mod run;
mod signals;
mod stack;
mod takeover;
mod tls;

use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// A proxy allocates and frees a connection's buffers per handshake; mimalloc handles that
/// churn with less CPU and less resident memory than glibc's malloc (see the benchmarks).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use switchback_config::{Config, ConfigError};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::cli::Mode;
use crate::fatal::Fatal;

fn main() -> ExitCode {
    let mode = cli::Args::parse().mode();
    init_tracing();
    match mode {
        Mode::Check(path) => check(&path),
        Mode::Run {
            config,
            ready_file,
            watch,
            takeover,
        } => match reload::load(&config) {
            Ok(loaded) => block_on(run::run(
                loaded,
                run::Origin::File(config),
                ready_file,
                run::Options { watch, takeover },
            )),
            Err(errors) => {
                report(&errors);
                ExitCode::FAILURE
            }
        },
        Mode::Demo { ready_file } => block_on(demo::run(ready_file)),
        Mode::Echo { listen } => block_on(echo::run(&listen)),
        Mode::Drain {
            admin,
            after,
            token_file,
        } => block_on(drain_request::run(admin, after, token_file.as_deref())),
    }
}

/// The diagnostics' filter without `RUST_LOG`: `info`, but not the per-request spans and
/// events (`switchback::trace`), which are for the span exporter.
const DEFAULT_LOG: &str = "info,switchback::trace=warn";

/// Diagnostics to standard error (standard output carries the access log), filtered by
/// `RUST_LOG` ([`DEFAULT_LOG`] by default); and the span exporter's layer, which wants the
/// library's request spans only while a `tracing:` block exports them ([`otlp`]).
fn init_tracing() {
    let (filter, bad) = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Err(_) => (EnvFilter::new(DEFAULT_LOG), None),
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_LOG), Some((spec, e))),
        },
    };
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let spans = otlp::SpanLayer.with_filter(otlp::SpanFilter);
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(spans)
        .init();
    if let Some((spec, e)) = bad {
        tracing::warn!("RUST_LOG={spec:?} is not a valid filter ({e}); logging at info");
    }
}

/// `--check FILE`.
fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            // The certificate and key files, parsed as a start or a reload would.
            let tls_errors = tls::check(&config);
            if !tls_errors.is_empty() {
                for e in &tls_errors {
                    fatal::print_err(&format!("{}: {e}", path.display()));
                }
                return ExitCode::FAILURE;
            }
            let listening: Vec<String> = config
                .listeners
                .iter()
                .map(|l| match l.tls {
                    Some(_) => format!("{} (TLS)", l.address),
                    None => l.address.to_string(),
                })
                .collect();
            fatal::print_out(&format!(
                "{}: ok ({}, {}, listening on {})",
                path.display(),
                count(config.routes.len(), "route"),
                count(config.clusters.len(), "cluster"),
                listening.join(", ")
            ));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(&errors);
            ExitCode::FAILURE
        }
    }
}

/// `1 route`, `2 routes`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Every config error: `file:line:column: path: message`, then its `hint:` and `note:` lines
/// if it has any.
fn report(errors: &[ConfigError]) {
    for e in errors {
        fatal::print_err(&e.to_string());
    }
}

/// Runs `main` on a current-thread runtime; a failure is one line on standard error.
fn block_on(main: impl Future<Output = Result<(), Fatal>>) -> ExitCode {
    // One thread is enough for what runs here (see the module documentation): the proxy's
    // traffic runs on the listeners' workers.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&Fatal::new(format!("cannot start the async runtime: {e}"))),
    };
    let result = runtime.block_on(main);
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Reports `e` and exits 1.
fn fail(e: &Fatal) -> ExitCode {
    fatal::print_err(&format!("switchback: error: {e}"));
    ExitCode::FAILURE
}
