//! Headless Chromium for the browser tests, driven over W3C WebDriver by the `fantoccini`
//! crate: chromedriver on a loopback port of its own, one session per test.
//!
//! `fantoccini` is used without TLS features: chromedriver listens on plain HTTP on loopback,
//! so neither OpenSSL/native-tls nor a second rustls stack comes into the tree
//! (`cargo deny --offline check licenses bans sources` passes with it).
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver` packages. Without
//! them a browser test returns early after one line on standard error that names the
//! packages, so `cargo test --workspace` passes on a fresh machine. With
//! `SWITCHBACK_BROWSER_TESTS=required` (which `.ci/run` sets, after installing both) a missing
//! browser fails the test instead: CI never passes without having run them.
#![allow(clippy::unwrap_used)] // test support: a panic is a failed assertion

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

pub(crate) use fantoccini::key::Key;

/// The variable that turns a missing browser from a skip into a failure.
const REQUIRED: &str = "SWITCHBACK_BROWSER_TESTS";

/// How long a command may take: the first one starts the browser, which on a loaded machine
/// takes seconds.
const COMMAND_WAIT: Duration = Duration::from_secs(60);

/// How long chromedriver may take to listen, and a polled condition to come true.
const WAIT: Duration = Duration::from_secs(15);

/// Chromium and chromedriver, found on `PATH`.
pub(crate) struct Chromium {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Chromium {
    /// Both programs, or `None` when either is missing: then one line on standard error says
    /// what to install (once per test binary), unless `SWITCHBACK_BROWSER_TESTS=required`, in
    /// which case the test fails saying the same.
    pub(crate) fn installed() -> Option<Self> {
        let (chromium, chromedriver) = (on_path("chromium"), on_path("chromedriver"));
        if let (Some(chromium), Some(chromedriver)) = (chromium.clone(), chromedriver.clone()) {
            return Some(Self {
                chromium,
                chromedriver,
            });
        }
        let missing: Vec<&str> = [("chromium", chromium), ("chromedriver", chromedriver)]
            .into_iter()
            .filter(|(_, path)| path.is_none())
            .map(|(name, _)| name)
            .collect();
        let why = format!(
            "`{}` not on PATH; install Debian's chromium and chromium-driver packages \
             (apt-get install chromium chromium-driver)",
            missing.join("` and `")
        );
        assert!(
            std::env::var(REQUIRED).as_deref() != Ok("required"),
            "{REQUIRED}=required, but {why}"
        );
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            // Straight to the process's standard error: the test harness captures `eprintln!`
            // of a passing test, and this line is meant to be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED the browser tests: {why}; {REQUIRED}=required makes this a failure"
            );
        });
        None
    }

    /// Starts chromedriver on a free loopback port, logging to a file in `dir`, and waits
    /// until it listens.
    pub(crate) async fn start_driver(&self, dir: &Path) -> Chromedriver {
        let log = dir.join("chromedriver.log");
        // chromedriver has no `--port=0`: take a port the kernel says is free and, should
        // another program get it first, chromedriver exits and the next try takes another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map(|a: SocketAddr| a.port())
                .unwrap();
            let child = Command::new(&self.chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.chromedriver.display()));
            let mut driver = Chromedriver {
                child,
                port,
                chromium: self.chromium.clone(),
                log: log.clone(),
            };
            if driver.listening().await {
                return driver;
            }
        }
        panic!("chromedriver never listened:\n{}", log_tail(&log));
    }
}

/// A chromedriver process, killed on drop.
pub(crate) struct Chromedriver {
    child: Child,
    port: u16,
    /// The browser it starts for a session.
    chromium: PathBuf,
    /// Its log file, shown when a command fails.
    log: PathBuf,
}

impl Chromedriver {
    /// Waits until chromedriver accepts connections (it listens once it is ready for a
    /// session); false if it exits first.
    async fn listening(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A new session: a headless Chromium of its own.
    pub(crate) async fn session(&self) -> Session<'_> {
        self.start_session(false).await
    }

    /// A session whose browser accepts any TLS certificate (the W3C `acceptInsecureCerts`),
    /// for servers with a certificate from a test's own CA. TLS itself is unchanged.
    pub(crate) async fn session_accepting_test_certificates(&self) -> Session<'_> {
        self.start_session(true).await
    }

    async fn start_session(&self, insecure_certs: bool) -> Session<'_> {
        let capabilities = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": insecure_certs,
            "goog:chromeOptions": {
                "binary": self.chromium,
                // No sandbox: CI runs as root, where Chromium's sandbox refuses to start.
                // Containers often have a tiny /dev/shm.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let connect = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await;
        let client =
            connect.unwrap_or_else(|e| panic!("WebDriver new session: {e}\n{}", log_tail(&self.log)));
        Session { driver: self, client }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session. End it with [`Session::delete`]: that closes the browser, which
/// killing chromedriver would leave running.
pub(crate) struct Session<'a> {
    driver: &'a Chromedriver,
    client: Client,
}

impl Session<'_> {
    /// Awaits one WebDriver command; an error, or no answer within [`COMMAND_WAIT`], fails
    /// the test with chromedriver's log.
    async fn run<T>(
        &self,
        what: &str,
        command: impl Future<Output = Result<T, fantoccini::error::CmdError>>,
    ) -> T {
        match tokio::time::timeout(COMMAND_WAIT, command).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("WebDriver {what}: {e}\n{}", log_tail(&self.driver.log)),
            Err(_) => panic!("WebDriver {what}: no answer\n{}", log_tail(&self.driver.log)),
        }
    }

    /// Runs `script` in the page as an async function body (its last argument is the callback
    /// that ends it) and returns what it passed to the callback.
    pub(crate) async fn execute_async(&self, script: &str) -> Value {
        self.run("execute async", self.client.execute_async(script, Vec::new()))
            .await
    }

    /// Loads `url` and waits for it to load.
    pub(crate) async fn goto(&self, url: &str) {
        self.run(&format!("goto {url}"), self.client.goto(url)).await;
    }

    /// The first element matching the CSS selector `css`; fails the test if there is none.
    pub(crate) async fn find(&self, css: &str) -> Element {
        self.run(&format!("find {css}"), self.client.find(Locator::Css(css)))
            .await
    }

    /// Types `text` into `element` (special keys such as [`Key::Enter`] included).
    pub(crate) async fn send_keys(&self, element: &Element, text: &str) {
        self.run("send keys", element.send_keys(text)).await;
    }

    /// Clicks `element`.
    pub(crate) async fn click(&self, element: &Element) {
        self.run("click", element.click()).await;
    }

    /// The rendered text of the element matching `css`.
    pub(crate) async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.run(&format!("text of {css}"), element.text()).await
    }

    /// Polls the text of `css` until `done` says yes; returns it. Fails the test, naming
    /// `what` and showing the last text, if that takes too long.
    pub(crate) async fn wait_text(&self, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text(css).await;
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {css} says {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the session and closes the browser.
    pub(crate) async fn delete(self) {
        let Self { driver, client } = self;
        match tokio::time::timeout(COMMAND_WAIT, client.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("WebDriver delete session: {e}\n{}", log_tail(&driver.log)),
            Err(_) => panic!("WebDriver delete session: no answer\n{}", log_tail(&driver.log)),
        }
    }
}

/// The path of `program` on `PATH`, if it is there.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// The end of chromedriver's log, for a failure message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("chromedriver log ({}), last lines:\n{tail}", log.display())
}
