//! Just enough of a W3C WebDriver client to drive headless Chromium from a test: chromedriver
//! on a loopback port of its own, one session, and the commands a person's clicks need.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver` packages. Without
//! them the browser tests fail, saying so: a test that skips itself would hide that CI never
//! ran it.
#![allow(clippy::unwrap_used)] // test support: a panic is a failed assertion

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// How long a command may take: the first one starts the browser, which on a loaded machine
/// takes seconds.
const COMMAND_WAIT: Duration = Duration::from_secs(60);

/// How long chromedriver may take to listen, and a polled condition to come true.
const WAIT: Duration = Duration::from_secs(15);

/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The Enter key, as `send_keys` takes it.
pub(crate) const ENTER: char = '\u{E007}';

/// A chromedriver process, killed on drop.
pub(crate) struct Chromedriver {
    child: Child,
    /// `http://127.0.0.1:PORT`, where it listens.
    base: String,
    /// The browser it starts for a session.
    chromium: PathBuf,
    /// Its log file, shown when a command fails.
    log: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Chromedriver {
    /// Starts chromedriver on a free loopback port, logging to a file in `dir`, and waits
    /// until it is ready for a session.
    pub(crate) async fn start(dir: &Path) -> Self {
        let chromium = installed("chromium");
        let chromedriver = installed("chromedriver");
        let log = dir.join("chromedriver.log");
        let client = Client::builder(TokioExecutor::new()).build_http();
        // chromedriver has no `--port=0`: take a port the kernel says is free and, should
        // another program get it first, chromedriver exits and the next try takes another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map(|a: SocketAddr| a.port())
                .unwrap();
            let child = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
            let mut driver = Self {
                child,
                base: format!("http://127.0.0.1:{port}"),
                chromium: chromium.clone(),
                log: log.clone(),
                client: client.clone(),
            };
            if driver.ready().await {
                return driver;
            }
        }
        panic!("chromedriver never became ready:\n{}", log_tail(&log));
    }

    /// Polls `GET /status` until chromedriver is ready; false if it exits first.
    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let status = Request::get(format!("{}/status", self.base))
                .body(Full::default())
                .unwrap();
            if let Ok(res) = self.client.request(status).await
                && let Ok(body) = res.into_body().collect().await
                && let Ok(v) = serde_json::from_slice::<Value>(&body.to_bytes())
                && v["value"]["ready"] == true
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
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": insecure_certs,
                "goog:chromeOptions": {
                    "binary": self.chromium,
                    // No sandbox: CI runs as root, where Chromium's sandbox refuses to start.
                    // Containers often have a tiny /dev/shm.
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
                },
            }},
        });
        let value = self.command(Method::POST, "/session", Some(capabilities)).await;
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {value}"))
            .to_owned();
        Session { driver: self, id }
    }

    /// Sends one command and returns its `value`; a WebDriver error fails the test, with
    /// chromedriver's log.
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let exchange = async {
            let res = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        let (status, body) = match tokio::time::timeout(COMMAND_WAIT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("WebDriver {method} {path}: {e}\n{}", log_tail(&self.log)),
            Err(_) => panic!("WebDriver {method} {path}: no answer\n{}", log_tail(&self.log)),
        };
        let mut v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON ({e}): {body:?}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {}: {}\n{}",
            v["value"]["error"],
            v["value"]["message"],
            log_tail(&self.log)
        );
        v["value"].take()
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
    id: String,
}

/// An element of the current page.
pub(crate) struct Element(String);

impl Session<'_> {
    /// A command on this session (`path` is relative to `/session/{id}`).
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.id);
        self.driver.command(method, &path, body).await
    }

    /// Runs `script` in the page as an async function body (its last argument is the callback
    /// that ends it) and returns what it passed to the callback.
    pub(crate) async fn execute_async(&self, script: &str) -> Value {
        self.command(
            Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Loads `url` and waits for it to load.
    pub(crate) async fn goto(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The first element matching the CSS selector `css`; fails the test if there is none.
    pub(crate) async fn find(&self, css: &str) -> Element {
        let found = self
            .command(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        Element(found[ELEMENT].as_str().unwrap().to_owned())
    }

    /// Types `text` into `element` (special keys such as [`ENTER`] included).
    pub(crate) async fn send_keys(&self, element: &Element, text: &str) {
        let path = format!("/element/{}/value", element.0);
        self.command(Method::POST, &path, Some(json!({ "text": text })))
            .await;
    }

    /// Clicks `element`.
    pub(crate) async fn click(&self, element: &Element) {
        let path = format!("/element/{}/click", element.0);
        self.command(Method::POST, &path, Some(json!({}))).await;
    }

    /// The rendered text of the element matching `css`.
    pub(crate) async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let path = format!("/element/{}/text", element.0);
        let text = self.command(Method::GET, &path, None).await;
        text.as_str().unwrap().to_owned()
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
        self.driver
            .command(Method::DELETE, &format!("/session/{}", self.id), None)
            .await;
    }
}

/// The path of `program` on `PATH`; fails the test, saying what to install, if it is missing.
fn installed(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not on PATH: the browser tests need Chromium and chromedriver; \
                 on Debian or Ubuntu install them with `apt-get install chromium chromium-driver`"
            )
        })
}

/// The end of chromedriver's log, for a failure message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("chromedriver log ({}), last lines:\n{tail}", log.display())
}
