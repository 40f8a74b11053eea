//! An axum app whose `/chat/...` WebSocket goes through Switchback with a message filter:
//! the client's first message must carry the token (and is not passed on), and in every JSON
//! message, either way, the `ssn` field is redacted. Other routes are plain axum handlers.
//!
//! ```sh
//! UPSTREAM=127.0.0.1:9001 TOKEN=secret cargo run -p switchback --example message_filter
//! # then, e.g. with websocat:  websocat ws://127.0.0.1:3000/chat/
//! #   {"token":"secret"}
//! #   {"name":"ada","ssn":"078-05-1120"}   -> the upstream sees "ssn":"[redacted]"
//! ```
//!
//! The filter is a `tower::Service<Message>` with per-tunnel state in its own fields: each
//! tunnel gets a fresh clone, so `authenticated` is this client's alone. A token in the first
//! message, rather than in the URL or a header, is what browsers' WebSocket API allows without
//! leaking the token into logs of URLs.

use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::routing::get;
use switchback::ws::{Direction, Message, MessageFilterLayer, MessageKind, Verdict};
use switchback::{Chain, Cluster, Endpoint, Forward, UpgradeConfig, UpgradeRouterLayer};
use tower::{Service, ServiceBuilder};

/// The JSON field taken out of every message.
const REDACTED_FIELD: &str = "ssn";

/// A tunnel's guard: the token to expect, and whether this client has sent it.
#[derive(Clone, Debug)]
pub struct ChatGuard {
    token: Arc<str>,
    authenticated: bool,
}

impl ChatGuard {
    /// A guard expecting `token` as `{"token": "..."}` in the client's first message.
    pub fn new(token: Arc<str>) -> Self {
        Self {
            token,
            authenticated: false,
        }
    }

    fn judge(&mut self, msg: Message) -> Verdict {
        if msg.direction() == Direction::ToUpstream && !self.authenticated {
            let presented = json(&msg).and_then(|v| v.get("token")?.as_str().map(str::to_owned));
            // A real check compares in constant time (e.g. the `subtle` crate).
            if presented.as_deref() == Some(&*self.token) {
                self.authenticated = true;
                return Verdict::Drop;
            }
            return Verdict::close(1008, "the first message must carry the token");
        }
        match json(&msg) {
            Some(mut value) => match value.get_mut(REDACTED_FIELD) {
                Some(field) => {
                    *field = serde_json::Value::from("[redacted]");
                    Verdict::Replace(msg.with_text(value.to_string()))
                }
                None => Verdict::Pass,
            },
            None => Verdict::Pass,
        }
    }
}

/// A text message's JSON object, if it is one.
fn json(msg: &Message) -> Option<serde_json::Value> {
    if msg.kind() != MessageKind::Text {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(msg.text()?)
        .ok()
        .filter(serde_json::Value::is_object)
}

impl Service<Message> for ChatGuard {
    type Response = Verdict;
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Verdict, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Message) -> Self::Future {
        ready(Ok(self.judge(msg)))
    }
}

/// The app: WebSocket under `/chat/` through the guard to `upstream`, a plain handler at `/`.
pub fn app(upstream: SocketAddr, token: Arc<str>) -> Router {
    let forward = Forward::new(Cluster::new("chat", [Endpoint::new(upstream.to_string())]));
    let guarded = Chain::new(
        ServiceBuilder::new()
            .layer(MessageFilterLayer::new(ChatGuard::new(token)).max_message_size(1 << 20))
            .service(forward.clone()),
    );
    let proxy = ServiceBuilder::new()
        .layer(
            UpgradeRouterLayer::builder()
                .upgrade_config(UpgradeConfig::new("websocket").chain(guarded))
                .build()
                .expect("one upgrade type"),
        )
        .service(forward);
    Router::new()
        .route_service("/chat/{*rest}", proxy)
        .route("/", get(|| async { "plain axum handler\n" }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let upstream: SocketAddr = std::env::var("UPSTREAM")
        .unwrap_or_else(|_| "127.0.0.1:9001".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("UPSTREAM: {e}")))?;
    let token: Arc<str> = std::env::var("TOKEN")
        .unwrap_or_else(|_| "example-token".into())
        .into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "ws://{}/chat/ (send {{\"token\":\"...\"}} first)",
        listener.local_addr()?
    );
    axum::serve(listener, app(upstream, token)).await
}
