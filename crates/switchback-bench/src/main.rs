//! `switchback-bench`: runs the same workloads on loopback through no proxy (the limit),
//! Switchback (fast path, body-touching chain, legacy mode), nginx and HAProxy, and reports
//! one table with every figure and its ratio to Switchback's fast path.
//!
//! ```sh
//! cargo run --release -p switchback-bench -- [--quick] [--runs N] [--only WORKLOADS] [--systems SYSTEMS]
//! ```
//!
//! The TLS workloads (`--only tls`) run Switchback's own binary with a TLS listener: build it
//! into the same target directory first (`cargo build --release -p switchback-cli -p
//! switchback-bench`) or name it with `--switchback-bin`.
//!
//! Every system runs in its own process: the harness re-executes itself with the hidden
//! `proxy` and `upstream` subcommands (or starts nginx and HAProxy with generated configs),
//! so proxy RSS is measured per process and the load generator (this process) shares no
//! runtime with what it measures. See docs/performance.md.

mod child;
mod cli;
mod client;
mod error;
mod machine;
mod peers;
mod proxy;
mod report;
mod role;
mod run;
mod sys;
mod systems;
mod tls;
mod upstream;
mod upstream_h2;
mod workloads;

use std::process::ExitCode;

/// The proxy processes this harness starts run with the allocator the `switchback` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Proxy(args)) => proxy::main(&args),
        Some(Command::Upstream(args)) => upstream::main(&args),
        Some(Command::Exec(args)) => role::exec(&args),
        None => run::main(&cli.run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchback-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
