//! The admin endpoint (`admin: ADDR:PORT`, or `admin: { address, token_file }`), served by
//! its own small HTTP/1.1 server.
//!
//! | request                        | answer                                                      |
//! |--------------------------------|-------------------------------------------------------------|
//! | `GET /metrics`                 | Prometheus text of every metric recorded                    |
//! | `GET /ready`                   | `200 ready`, or `503 draining` once a drain has started     |
//! | `GET /runtime`                 | the runtime values, as a JSON object                        |
//! | `POST /runtime?key=K&value=V`  | sets `K` to `V` (0-100): `{"key":K,"old":O,"new":V}`; 400 on a bad or unknown key or value |
//! | `GET /config`                  | the effective configuration as JSON (runtime values as now), with its `generation` and `hash` |
//! | `POST /reload`                 | re-reads the config file: `{"changed","generation","hash","restart_needed"}`; 400 with `--check`'s errors, the running config staying |
//! | `GET /tunnels`                 | the live tunnels, as a JSON array (see [`TunnelRow`])       |
//! | `POST /tunnels/close?id=ID`    | closes one as the drain does (WebSocket: `1001` each way); 404 when no such tunnel |
//! | `GET /clusters`                | each cluster's endpoints: health, ejection, active requests and tunnels, failures (see [`ClusterRow`]) |
//! | `GET /`                        | a dashboard of live tunnels and counters that refreshes itself |
//!
//! Metrics come from the library through the `metrics` facade, rendered by
//! `metrics-exporter-prometheus` (its own HTTP listener is not used): upgrades started
//! (`switchback_upgrades_started_total`), rejected (`switchback_upgrades_rejected_total`,
//! by type and reason), handshake failures by reason, tunnels opened and active (by type and
//! mode, legacy included), tunnel bytes each way, the tunnel duration histogram, the chains'
//! responses by status (`switchback_requests_total`) and, from the CLI's access-log layer,
//! every response sent to clients by status (`switchback_downstream_responses_total`), and
//! per cluster and endpoint: health-check results (`switchback_health_checks_total`),
//! health, ejection, active requests and tunnels, and connect failures
//! (`switchback_endpoint_*`, refreshed at each scrape).
//!
//! Who may use what is [`door`]'s: the probes (`/ready`, `/metrics`) answer anyone; every
//! other path only loopback callers or the bearer of `admin.token_file`'s token, and only
//! for a `Host` that names the endpoint and, to change anything, no foreign `Origin`.
//! `GET /config` shows header values as `<redacted>`.

mod door;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use switchback::{Cluster, Drain, EndpointStats, LiveTunnel, Runtime};
use switchback_config::{Config, Filter, HeadersToAdd};
use tokio::net::TcpListener;

pub(crate) use self::door::{Caller, Door};

use crate::fatal::Fatal;
use crate::reload::{Reload, SharedView, View};

/// The dashboard at `GET /`: one self-contained page that polls `GET /tunnels` and
/// `GET /metrics`.
const DASHBOARD: &str = include_str!("admin_dashboard.html");

/// One live tunnel in `GET /tunnels`.
#[derive(Debug, Serialize)]
pub(crate) struct TunnelRow {
    id: u64,
    client: Option<String>,
    upstream: Option<String>,
    route: Option<String>,
    path: String,
    upgrade: String,
    /// `joined`, `pumped` or `legacy`.
    mode: &'static str,
    /// The client's HTTP version.
    protocol: String,
    /// When the tunnel opened, RFC 3339 with milliseconds.
    started: String,
    age_ms: u64,
    /// From the client.
    bytes_received: u64,
    /// To the client.
    bytes_sent: u64,
}

impl From<&LiveTunnel> for TunnelRow {
    fn from(t: &LiveTunnel) -> Self {
        let started =
            jiff::Timestamp::try_from(t.started).map_or_else(|_| String::new(), |ts| format!("{ts:.3}"));
        Self {
            id: t.info.id,
            client: t.info.client.map(|a| a.to_string()),
            upstream: t.info.upstream.clone(),
            route: t.info.route.as_deref().map(str::to_owned),
            path: t.info.path.clone(),
            upgrade: t.info.upgrade.to_string(),
            mode: t.info.mode.as_str(),
            protocol: format!("{:?}", t.info.version),
            started,
            age_ms: u64::try_from(t.age.as_millis()).unwrap_or(u64::MAX),
            bytes_received: t.bytes_from_client,
            bytes_sent: t.bytes_to_client,
        }
    }
}

/// One cluster in `GET /clusters`.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterRow {
    name: String,
    endpoints: Vec<EndpointRow>,
}

/// One endpoint of a [`ClusterRow`].
#[derive(Debug, Serialize)]
struct EndpointRow {
    address: String,
    /// Passes the cluster's active health checks (always, without any).
    healthy: bool,
    /// Ejected by outlier detection now.
    ejected: bool,
    /// Requests and tunnels in flight.
    active: usize,
    /// Failures in a row, as outlier detection counts them.
    consecutive_failures: u32,
    /// Failed connects by requests and tunnels since start.
    connect_failures: u64,
}

impl From<&Cluster> for ClusterRow {
    fn from(c: &Cluster) -> Self {
        let endpoint = |s: EndpointStats| EndpointRow {
            address: s.address,
            healthy: !s.unhealthy,
            ejected: s.ejected,
            active: s.active,
            consecutive_failures: s.consecutive_failures,
            connect_failures: s.connect_failures,
        };
        Self {
            name: c.name().to_owned(),
            endpoints: c.stats().into_iter().map(endpoint).collect(),
        }
    }
}

/// Buckets of the tunnel duration histogram, in seconds.
const DURATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0];

/// How often the recorder's histograms are compacted.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's `metrics` recorder and keeps it tidy.
/// Call once, inside the runtime.
pub(crate) fn install_metrics() -> Result<PrometheusHandle, Fatal> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(switchback::metrics::TUNNEL_DURATION.to_owned()),
            DURATION_BUCKETS,
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| Fatal::new(format!("cannot install the metrics recorder: {e}")))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// What the admin endpoint reads and changes.
#[derive(Clone)]
pub(crate) struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: PrometheusHandle,
    drain: Drain,
    runtime: Runtime,
    /// The running config and its clusters, replaced by each reload.
    view: SharedView,
    /// Reloads the config file (`POST /reload`).
    reload: Arc<dyn Reload>,
    /// Runtime keys set here: a reload keeps them over the file's values.
    overridden: Arc<Mutex<BTreeSet<String>>>,
    /// Starts the drain (`POST /drain`), as a first SIGTERM does.
    drain_start: DrainStart,
}

/// How the admin endpoint starts the drain: `/ready` fails at once, and after a delay the
/// process drains as on a first SIGTERM (which then doesn't count as a second one).
#[derive(Clone)]
pub(crate) struct DrainStart {
    pub(crate) unready: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) start: Arc<tokio::sync::watch::Sender<u8>>,
}

/// Keys a route reads, or that the config sets: the only ones worth setting.
fn runtime_keys(config: &Config) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = config.runtime.keys().cloned().collect();
    keys.extend(
        config
            .routes
            .iter()
            .filter_map(|r| r.matcher.runtime_fraction.as_ref())
            .map(|f| f.runtime_key.clone()),
    );
    keys
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl Admin {
    /// The admin state.
    pub(crate) fn new(
        metrics: PrometheusHandle,
        drain: Drain,
        runtime: Runtime,
        view: SharedView,
        reload: Arc<dyn Reload>,
        overridden: Arc<Mutex<BTreeSet<String>>>,
        drain_start: DrainStart,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                drain,
                runtime,
                view,
                reload,
                overridden,
                drain_start,
            }),
        }
    }

    /// `POST /drain[?after=5s]`: `/ready` fails now; the drain starts `after` from now (a
    /// load balancer has that long to stop sending new connections). Idempotent.
    fn start_drain(&self, query: &str) -> Response<Full<Bytes>> {
        let after = match query.split('&').find_map(|kv| kv.strip_prefix("after=")) {
            None => Duration::ZERO,
            Some(text) => match switchback_config::parse_duration(text) {
                Ok(after) => after,
                Err(e) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        format!("after={text}: {e}; write a duration such as 5s\n"),
                    );
                }
            },
        };
        let start = self.inner.drain_start.clone();
        start.unready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "drain requested on the admin endpoint: /ready fails now, the drain starts in {after:?}"
        );
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            start.start.send_if_modified(|state| {
                let starting = *state == 0;
                *state = (*state).max(1);
                starting
            });
        });
        json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "draining_in": switchback_config::format_duration(after) }),
        )
    }

    fn view(&self) -> View {
        self.inner.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves the admin endpoint on `listener`, behind `door`, until the task is dropped.
    pub(crate) async fn serve(self, listener: TcpListener, door: Door) {
        if let Ok(addr) = listener.local_addr()
            && !addr.ip().is_loopback()
        {
            tracing::info!(
                %addr,
                token = door.has_token(),
                "the admin endpoint is not on loopback: anyone who reaches it gets /ready and /metrics; the rest needs a loopback client or the admin token"
            );
        }
        let door = Arc::new(door);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // The Host check compares with the address this connection arrived on.
            let local = match stream.local_addr() {
                Ok(local) => local,
                Err(e) => {
                    tracing::debug!(error = %e, "admin: no local address; connection dropped");
                    continue;
                }
            };
            let caller = Caller { peer, local };
            let (admin, door) = (self.clone(), Arc::clone(&door));
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = door.refusal(&req, caller).unwrap_or_else(|| admin.handle(&req));
                async move { Ok::<_, Infallible>(answer) }
            });
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin: connection ended with an error");
                }
            });
        }
    }

    /// Answers one admin request.
    pub(crate) fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let inner = &*self.inner;
        let method = req.method();
        match req.uri().path() {
            "/metrics" => only(method, &[Method::GET], || {
                // The per-endpoint state is recorded here, off the request path.
                for cluster in &self.view().clusters {
                    cluster.record_metrics();
                }
                text(
                    StatusCode::OK,
                    inner.metrics.render(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }),
            "/ready" => only(method, &[Method::GET], || {
                let unready = inner
                    .drain_start
                    .unready
                    .load(std::sync::atomic::Ordering::Relaxed);
                if unready || inner.drain.is_draining() {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    plain(StatusCode::OK, "ready\n")
                }
            }),
            "/runtime" => match *method {
                Method::GET | Method::HEAD => json(StatusCode::OK, &inner.runtime.snapshot()),
                Method::POST => self.set_runtime(req.uri().query().unwrap_or("")),
                _ => not_allowed(&[Method::GET, Method::POST]),
            },
            "/config" => only(method, &[Method::GET], || {
                let view = self.view();
                let mut config = view.config;
                config.runtime = inner.runtime.snapshot();
                redact_header_values(&mut config);
                #[derive(Serialize)]
                struct Running {
                    generation: u64,
                    hash: String,
                    /// The first listener's address, as the `listen` shorthand names it.
                    listen: Option<std::net::SocketAddr>,
                    #[serde(flatten)]
                    config: Config,
                }
                json(
                    StatusCode::OK,
                    &Running {
                        generation: view.generation,
                        hash: view.hash,
                        listen: config.listeners.first().map(|l| l.address),
                        config,
                    },
                )
            }),
            "/tunnels" => only(method, &[Method::GET], || {
                let rows: Vec<TunnelRow> = inner.drain.tunnels().iter().map(TunnelRow::from).collect();
                json(StatusCode::OK, &rows)
            }),
            "/clusters" => only(method, &[Method::GET], || {
                let rows: Vec<ClusterRow> = self.view().clusters.iter().map(ClusterRow::from).collect();
                json(StatusCode::OK, &rows)
            }),
            "/reload" => match *method {
                Method::POST => match inner.reload.reload() {
                    Ok(reloaded) => json(StatusCode::OK, &reloaded),
                    Err(errors) => plain(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "config not reloaded; the running config stays:\n{}\n",
                            errors.join("\n")
                        ),
                    ),
                },
                _ => not_allowed(&[Method::POST]),
            },
            "/drain" => match *method {
                Method::POST => self.start_drain(req.uri().query().unwrap_or("")),
                _ => not_allowed(&[Method::POST]),
            },
            "/tunnels/close" => match *method {
                Method::POST => self.close_tunnel(req.uri().query().unwrap_or("")),
                _ => not_allowed(&[Method::POST]),
            },
            "/" => only(method, &[Method::GET], || {
                text(StatusCode::OK, DASHBOARD, "text/html; charset=utf-8")
            }),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; try GET /, GET /metrics, GET /ready, GET /runtime, POST /runtime?key=K&value=V, \
                 GET /config, POST /reload, GET /tunnels, POST /tunnels/close?id=ID, GET /clusters\n",
            ),
        }
    }

    /// `POST /tunnels/close?id=ID`.
    fn close_tunnel(&self, query: &str) -> Response<Full<Bytes>> {
        let id = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("id="))
            .and_then(|id| id.parse::<u64>().ok());
        let Some(id) = id else {
            return plain(
                StatusCode::BAD_REQUEST,
                "say which tunnel: POST /tunnels/close?id=ID (the ids are in GET /tunnels)\n",
            );
        };
        if self.inner.drain.close(id) {
            json(StatusCode::OK, &serde_json::json!({ "id": id, "closing": true }))
        } else {
            plain(StatusCode::NOT_FOUND, format!("no live tunnel {id}\n"))
        }
    }

    fn set_runtime(&self, query: &str) -> Response<Full<Bytes>> {
        let (key, value) = match parse_set(query) {
            Ok(pair) => pair,
            Err(msg) => return plain(StatusCode::BAD_REQUEST, format!("{msg}\n")),
        };
        let keys = runtime_keys(&self.view().config);
        if !keys.contains(&key) {
            let known: Vec<&str> = keys.iter().map(String::as_str).collect();
            let known = if known.is_empty() {
                "no route reads a runtime key".to_owned()
            } else {
                format!("known keys: {}", known.join(", "))
            };
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown runtime key {key:?} (neither under `runtime` nor in a route's runtime_fraction); {known}\n"
                ),
            );
        }
        let old = self.inner.runtime.set(key.as_str(), value);
        self.inner
            .overridden
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        tracing::info!(key, ?old, new = value, "runtime value changed");
        #[derive(Serialize)]
        struct Changed<'a> {
            key: &'a str,
            old: Option<u8>,
            new: u8,
        }
        json(
            StatusCode::OK,
            &Changed {
                key: &key,
                old,
                new: value,
            },
        )
    }
}

/// What `GET /config` shows for a header value: they may carry credentials for upstreams.
const REDACTED: &str = "<redacted>";

/// Replaces every header value the config holds (headers added by filters and routes,
/// header matches, the `Host` a route rewrites to) with [`REDACTED`]; names stay.
fn redact_header_values(config: &mut Config) {
    fn headers(h: &mut HeadersToAdd) {
        *h = h
            .names()
            .map(|name| (name.clone(), HeaderValue::from_static(REDACTED)))
            .collect();
    }
    fn filters(list: &mut [Filter]) {
        for filter in list {
            match filter {
                Filter::RequestHeadersToAdd(h) | Filter::ResponseHeadersToAdd(h) => headers(h),
                Filter::RequestBodyLimit(_) | Filter::ConcurrencyLimit(_) | Filter::Timeout(_) => {}
            }
        }
    }
    filters(&mut config.http_filters);
    for upgrade in &mut config.upgrade_configs {
        if let Some(list) = &mut upgrade.filters {
            filters(list);
        }
    }
    for route in &mut config.routes {
        headers(&mut route.request_headers_to_add);
        for matcher in &mut route.matcher.headers {
            if let Some(exact) = &mut matcher.exact {
                REDACTED.clone_into(exact);
            }
        }
        if let Some(host) = &mut route.host_rewrite_literal {
            REDACTED.clone_into(host);
        }
        for upgrade in &mut route.upgrade_configs {
            if let Some(list) = &mut upgrade.filters {
                filters(list);
            }
        }
    }
}

/// `key=K&value=V` (any order, percent-encoded or not) to a key and a percentage.
fn parse_set(query: &str) -> Result<(String, u8), String> {
    let mut key = None;
    let mut value = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)
            .ok_or_else(|| format!("the query parameter {name:?} is not valid percent-encoded UTF-8"))?;
        match name {
            "key" => key = Some(v),
            "value" => value = Some(v),
            other => return Err(format!("unknown query parameter {other:?}; use key=K&value=V")),
        }
    }
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or("missing `key`; use POST /runtime?key=K&value=V")?;
    let value = value.ok_or("missing `value`; use POST /runtime?key=K&value=V with V from 0 to 100")?;
    let value = value
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|v| *v <= 100)
        .ok_or_else(|| format!("value {value:?} is not a percentage; use a whole number from 0 to 100"))?;
    Ok((key, value))
}

/// Decodes `%XX` escapes and `+` (space) of a query component.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn only(
    method: &Method,
    allowed: &[Method],
    answer: impl FnOnce() -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    if allowed.contains(method) || (method == Method::HEAD && allowed.contains(&Method::GET)) {
        answer()
    } else {
        not_allowed(allowed)
    }
}

fn not_allowed(allowed: &[Method]) -> Response<Full<Bytes>> {
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut res = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {}\n", list.join(" or ")),
    );
    if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
        res.headers_mut().insert(header::ALLOW, v);
    }
    res
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    text(status, body, "text/plain; charset=utf-8")
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            text(status, body, "application/json")
        }
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialize: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runtime_changes() {
        assert_eq!(parse_set("key=a.b&value=100"), Ok(("a.b".to_owned(), 100)));
        assert_eq!(parse_set("value=0&key=a%2Eb"), Ok(("a.b".to_owned(), 0)));
        assert!(parse_set("key=a&value=101").unwrap_err().contains("0 to 100"));
        assert!(
            parse_set("key=a&value=-1")
                .unwrap_err()
                .contains("not a percentage")
        );
        assert!(parse_set("key=a&value=x").is_err());
        assert!(parse_set("key=a").unwrap_err().contains("missing `value`"));
        assert!(parse_set("value=1").unwrap_err().contains("missing `key`"));
        assert!(parse_set("key=&value=1").unwrap_err().contains("missing `key`"));
        assert!(
            parse_set("key=a&value=1&x=2")
                .unwrap_err()
                .contains("unknown query parameter")
        );
        assert!(parse_set("key=%ZZ&value=1").is_err());
        assert!(parse_set("").is_err());
    }

    #[test]
    fn config_shows_no_header_value() {
        let yaml = "http_filters:\n  - request_headers_to_add: { authorization: secret-1 }\n  - response_headers_to_add: { x-a: secret-2 }\n\
            upgrade_configs:\n  - upgrade_type: websocket\n    filters: [{ request_headers_to_add: { x-b: secret-3 } }]\n\
            routes:\n  - match: { prefix: /, headers: [{ name: x-key, exact: secret-4 }, { name: x-present }] }\n\
            \x20   cluster: c\n    host_rewrite_literal: secret-5\n    request_headers_to_add: { x-c: secret-6 }\n\
            clusters: [{ name: c, endpoints: [127.0.0.1:1] }]\n";
        let mut config = Config::from_yaml_str(yaml, "t.yaml").unwrap();
        redact_header_values(&mut config);
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("secret"), "{json}");
        for name in ["authorization", "x-a", "x-b", "x-c", "x-key", "x-present"] {
            assert!(json.contains(&format!("\"{name}\"")), "{name} is kept: {json}");
        }
        assert_eq!(json.matches(REDACTED).count(), 6, "{json}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a+b%20c%2e").as_deref(), Some("a b c."));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(percent_decode("é").as_deref(), Some("é"));
    }
}
