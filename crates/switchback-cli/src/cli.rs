//! The command line: which of the five modes to run (the proxy, `--check`, the demo,
//! `echo`, `drain`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Environment variable that moves the demo's listener off `127.0.0.1:10000`.
pub(crate) const DEMO_LISTEN_ENV: &str = "SWITCHBACK_DEMO_LISTEN";

const LONG_ABOUT: &str = "\
Switchback: Envoy-style HTTP Upgrade and WebSocket proxying, as a ready proxy.

The proxy is the switchback library's tower stack (forwarded headers, access log, routes,
upgrade router, the filter chain of `http_filters`, the forwarder) driven by a YAML file.

Modes:
  switchback --config FILE   run the proxy described by FILE
  switchback --check FILE    validate FILE: exit 0 when it is valid, otherwise print every
                             problem as `file:line:column: field.path: message` (and a
                             `hint:` line where one helps) and exit 1; after a YAML syntax
                             error the file cannot be read further, so it is shown alone
  switchback                 run the demo: a built-in WebSocket echo server behind the proxy
                             on 127.0.0.1:10000 (set SWITCHBACK_DEMO_LISTEN=ADDR:PORT to move it);
                             open http://127.0.0.1:10000/ in a browser to try it
  switchback echo            run a WebSocket echo server on 127.0.0.1:9001 (--listen ADDR:PORT,
                             repeatable), an upstream to try a config with; GET / is the page
  switchback drain --admin ADDR:PORT [--after 5s] [--token-file FILE]
                             ask a running switchback to drain (a preStop hook): /ready fails
                             now, the drain starts after --after; the token in FILE (the
                             config's admin.token_file) is needed unless ADDR is loopback

Ready file:
  --ready-file PATH: once every listener is bound, switchback writes the addresses it bound
  to PATH as one line of JSON, e.g. {\"admin\":\"127.0.0.1:41235\",\"listen\":\"127.0.0.1:41234\"}
  (admin is null without an admin endpoint), and removes it on exit. The file appears whole
  (written under another name, then renamed). With `listen: 127.0.0.1:0` it tells the port.";

const AFTER_LONG_HELP: &str = "\
Shutdown:
  SIGTERM or SIGINT (Ctrl-C) drains: the listener stops accepting, new upgrades get 503,
  open tunnels may run for `drain_timeout`, then they are closed (WebSocket tunnels with a
  1001 Going Away close frame each way) and switchback exits 0. A second signal stops
  waiting and exits at once.

Admin endpoint (when `admin: ADDR:PORT` or `admin: { address, token_file }` is set):
  /ready and /metrics answer anyone; every other path answers loopback clients, or others
  that send `Authorization: Bearer <token>` (the token in `token_file`), with a Host naming
  the endpoint (else 421) and, for a POST, no foreign Origin (else 403).
  GET  /metrics                  Prometheus text exposition
  GET  /ready                    200, or 503 while draining
  GET  /runtime                  the runtime values as JSON
  POST /runtime?key=K&value=V    set runtime value K to V (0-100); answers the old and new value
  GET  /config                   the effective configuration as JSON
  POST /reload                   re-read the config file and its certificates (as SIGHUP)
  POST /drain?after=5s           /ready fails now; the drain starts after `after`

Access log:
  One JSON object per line on standard output, or appended to `access_log: PATH`: one line
  per request, and for each tunnel one line when it opens and one when it closes; each
  names its `request_id` (the X-Request-Id sent upstream).

Logs:
  Diagnostics, and the demo's banner, go to standard error; RUST_LOG sets the level and
  filters (default: info), e.g. RUST_LOG=debug or RUST_LOG=switchback=debug,info.

Exit status:
  0 after a clean run or drain, or a valid --check; 1 on an invalid config, an address already
  in use or any other startup failure; 2 on a bad command line.";

/// `switchback`: see `--help`.
#[derive(Debug, Parser)]
#[command(
    name = "switchback",
    version,
    about = "Envoy-style HTTP Upgrade / WebSocket proxy built on tower",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub(crate) struct Args {
    /// A mode of its own instead of the proxy.
    #[command(subcommand)]
    command: Option<Command>,

    /// Run the proxy from this YAML configuration file.
    #[arg(short, long, value_name = "FILE", conflicts_with = "check")]
    config: Option<PathBuf>,

    /// Validate this YAML configuration file and exit: 0 when valid, 1 with every problem
    /// printed (file:line:column: field path: message).
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,

    /// Once every listener is bound, write the bound addresses to this file as JSON
    /// (`listen` and `admin`); removed on exit.
    #[arg(long, value_name = "PATH", conflicts_with = "check")]
    ready_file: Option<PathBuf>,

    /// Reload the configuration file when it changes (checked twice a second; editors'
    /// write-by-rename and Kubernetes ConfigMap symlink swaps included), as SIGHUP does.
    #[arg(long, requires = "config")]
    watch: bool,

    /// Take the listening sockets over from the process serving on the config's
    /// `takeover_socket` (a new version replacing a running one): nothing in their queues is
    /// lost, and the old process drains its tunnels and exits.
    #[arg(long, requires = "config")]
    takeover: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a WebSocket echo server: an upstream to try a configuration with.
    ///
    /// Every text and binary message on a WebSocket (any path) comes back; GET / is a page
    /// that does that from a browser, with live counts; any other GET is a line of text.
    /// Each bound address is printed on standard output (port 0: a free port). SIGTERM or
    /// SIGINT (Ctrl-C) stops it.
    Echo {
        /// Listen on this address; repeat for several (the example config's endpoints are
        /// 127.0.0.1:9001, :9002 and :9003).
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9001")]
        listen: Vec<SocketAddr>,
    },
    /// Ask a running switchback to drain (a Kubernetes preStop hook).
    ///
    /// Its /ready fails at once, so load balancers stop sending it new connections; after
    /// --after it drains as on SIGTERM: no new connections or upgrades, open tunnels run up
    /// to drain_timeout. Returns once the drain has started; a SIGTERM after it is not taken
    /// for a second signal.
    Drain {
        /// The running process's admin endpoint.
        #[arg(long, value_name = "ADDR:PORT")]
        admin: SocketAddr,
        /// How long it keeps accepting after /ready fails, e.g. 5s.
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration)]
        after: std::time::Duration,
        /// The file holding the admin token (the config's admin.token_file), sent as
        /// `Authorization: Bearer`: needed unless --admin is a loopback address.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
}

/// A duration argument: `5s`, `500ms`, `1m`.
fn duration(text: &str) -> Result<std::time::Duration, String> {
    switchback_config::parse_duration(text).map_err(|e| e.to_string())
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `--config FILE`, maybe with `--ready-file PATH`.
    Run {
        /// The configuration file.
        config: PathBuf,
        /// Where to write the bound addresses.
        ready_file: Option<PathBuf>,
        /// `--watch`: reload when the file changes.
        watch: bool,
        /// `--takeover`: take the sockets of the running process.
        takeover: bool,
    },
    /// `--check FILE`.
    Check(PathBuf),
    /// No arguments, or only `--ready-file PATH`.
    Demo {
        /// Where to write the bound addresses.
        ready_file: Option<PathBuf>,
    },
    /// `echo [--listen ADDR:PORT]...`.
    Echo {
        /// The addresses to serve on.
        listen: Vec<SocketAddr>,
    },
    /// `drain --admin ADDR:PORT [--after DURATION] [--token-file FILE]`.
    Drain {
        /// The admin endpoint to ask.
        admin: SocketAddr,
        /// How long before the drain starts.
        after: std::time::Duration,
        /// Where the admin token is.
        token_file: Option<PathBuf>,
    },
}

impl Args {
    /// The mode the arguments ask for.
    pub(crate) fn mode(self) -> Mode {
        match self.command {
            Some(Command::Echo { listen }) => return Mode::Echo { listen },
            Some(Command::Drain {
                admin,
                after,
                token_file,
            }) => {
                return Mode::Drain {
                    admin,
                    after,
                    token_file,
                };
            }
            None => {}
        }
        match (self.config, self.check) {
            (_, Some(check)) => Mode::Check(check),
            (Some(config), None) => Mode::Run {
                config,
                ready_file: self.ready_file,
                watch: self.watch,
                takeover: self.takeover,
            },
            (None, None) => Mode::Demo {
                ready_file: self.ready_file,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn mode(args: &[&str]) -> Result<Mode, clap::Error> {
        Args::try_parse_from(args).map(Args::mode)
    }

    #[test]
    fn modes() {
        assert_eq!(mode(&["switchback"]).unwrap(), Mode::Demo { ready_file: None });
        let run = Mode::Run {
            config: "a.yaml".into(),
            ready_file: None,
            watch: false,
            takeover: false,
        };
        assert_eq!(mode(&["switchback", "--config", "a.yaml"]).unwrap(), run);
        assert_eq!(mode(&["switchback", "-c", "a.yaml"]).unwrap(), run);
        assert_eq!(
            mode(&["switchback", "-c", "a.yaml", "--ready-file", "r.json"]).unwrap(),
            Mode::Run {
                config: "a.yaml".into(),
                ready_file: Some("r.json".into()),
                watch: false,
                takeover: false,
            }
        );
        assert_eq!(
            mode(&["switchback", "-c", "a.yaml", "--watch"]).unwrap(),
            Mode::Run {
                config: "a.yaml".into(),
                ready_file: None,
                watch: true,
                takeover: false,
            }
        );
        assert!(
            mode(&["switchback", "--watch"]).is_err(),
            "--watch needs --config"
        );
        assert_eq!(
            mode(&["switchback", "--ready-file", "r.json"]).unwrap(),
            Mode::Demo {
                ready_file: Some("r.json".into())
            }
        );
        assert_eq!(
            mode(&["switchback", "--check", "a.yaml"]).unwrap(),
            Mode::Check("a.yaml".into())
        );
    }

    #[test]
    fn echo() {
        let addr = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert_eq!(
            mode(&["switchback", "echo"]).unwrap(),
            Mode::Echo {
                listen: vec![addr("127.0.0.1:9001")]
            }
        );
        assert_eq!(
            mode(&[
                "switchback",
                "echo",
                "--listen",
                "127.0.0.1:0",
                "--listen",
                "[::1]:9002"
            ])
            .unwrap(),
            Mode::Echo {
                listen: vec![addr("127.0.0.1:0"), addr("[::1]:9002")]
            }
        );
        let err = mode(&["switchback", "echo", "--listen", "localhost:9001"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let err = mode(&["switchback", "--config", "a.yaml", "echo"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn drain() {
        assert_eq!(
            mode(&["switchback", "drain", "--admin", "127.0.0.1:9901"]).unwrap(),
            Mode::Drain {
                admin: "127.0.0.1:9901".parse().unwrap(),
                after: std::time::Duration::ZERO,
                token_file: None,
            }
        );
        assert_eq!(
            mode(&[
                "switchback",
                "drain",
                "--admin",
                "[::1]:9901",
                "--after",
                "5s",
                "--token-file",
                "/etc/switchback-admin/token"
            ])
            .unwrap(),
            Mode::Drain {
                admin: "[::1]:9901".parse().unwrap(),
                after: std::time::Duration::from_secs(5),
                token_file: Some("/etc/switchback-admin/token".into()),
            }
        );
        assert!(mode(&["switchback", "drain"]).is_err(), "--admin is required");
    }

    #[test]
    fn check_conflicts_with_running() {
        let err = mode(&["switchback", "--config", "a", "--check", "b"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = mode(&["switchback", "--check", "b", "--ready-file", "r"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }
}
