//! The admin endpoint (`admin: ADDR:PORT`, or `admin: { address, token_file }`), served by
//! its own small HTTP/1.1 server and routed by axum: one handler per path, its query a typed
//! struct, any other method `405` with `Allow`, any other path `404` with the list.
//!
//! | request                        | answer                                                      |
//! |--------------------------------|-------------------------------------------------------------|
//! | `GET /metrics`                 | Prometheus text of every metric recorded                    |
//! | `GET /ready`                   | `200 ready`, or `503 draining` once a drain has been asked for |
//! | `GET /runtime`                 | the runtime values, as a JSON object                        |
//! | `POST /runtime?key=K&value=V`  | sets `K` to `V` (0-100): `{"key":K,"old":O,"new":V}`; 400 on a bad or unknown key or value |
//! | `GET /config`                  | the effective configuration as JSON (runtime values as now), with its `generation` and `hash` (the SHA-256 of the file) |
//! | `POST /reload`                 | asks the owner to re-read the config file: `{"changed","generation","hash","restart_needed"}`; 400 with `--check`'s errors, the running config staying; 503 once draining |
//! | `POST /drain[?after=5s]`       | `/ready` fails now, the drain starts `after` from now (as a first SIGTERM): `202 {"draining_in":"5s"}` |
//! | `GET /tunnels`                 | the live tunnels, as a JSON array (see [`TunnelRow`])       |
//! | `POST /tunnels/close?id=ID`    | closes one as the drain does (WebSocket: `1001` each way); 404 when no such tunnel |
//! | `GET /clusters`                | each cluster's endpoints: health, ejection, active requests and tunnels, failures (see [`ClusterRow`]) |
//! | `GET /`                        | a dashboard of live tunnels and counters that refreshes itself |
//!
//! Metrics come from the library through the `metrics` facade, rendered by
//! `metrics-exporter-prometheus` (its own HTTP listener is not used): upgrades started
//! (`switchback_upgrades_started_total`), rejected (`switchback_upgrades_rejected_total`,
//! by type and reason), handshake failures by reason, tunnels opened and active (by type and
//! mode, legacy included), tunnel bytes each way, the tunnel duration histogram, WebSocket
//! messages each way (`switchback_websocket_messages_total`) and tunnels by their first close
//! frame (`switchback_websocket_closes_total`, by who sent it and a bounded code label), the
//! chains' responses by status (`switchback_requests_total`) and, from the CLI's access-log layer,
//! every response sent to clients by status (`switchback_downstream_responses_total`), and
//! per cluster and endpoint: health-check results (`switchback_health_checks_total`),
//! health, ejection, active requests and tunnels, and connect failures
//! (`switchback_endpoint_*`, refreshed at each scrape); from the binary, reloads
//! (`switchback_config_reloads_total`) and the config's generation.
//!
//! Who may use what is [`door`]'s, and the door answers before any route does: the probes
//! (`/ready`, `/metrics`) answer anyone; every other path only loopback callers or the
//! bearer of `admin.token_file`'s token, and only for a `Host` that names the endpoint and,
//! to change anything, no foreign `Origin`. `GET /config` shows header values as
//! `<redacted>`.

mod door;

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use switchback::{Cluster, Drain, EndpointStats, LiveTunnel};
use switchback_config::{Config, Filter, HeadersToAdd};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub(crate) use self::door::{Caller, Door};

use crate::fatal::Fatal;
use crate::proxy::{Control, Shutdown};
use crate::reload::{Digest, RuntimeValues, SharedView};

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

/// What the admin endpoint reads and changes; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    metrics: PrometheusHandle,
    drain: Drain,
    /// The runtime values: `POST /runtime` sets them by hand.
    runtime: RuntimeValues,
    /// The running config and its clusters, replaced by each reload.
    view: SharedView,
    /// Asks the proxy's owner to reload (`POST /reload`) and to drain (`POST /drain`).
    control: Control,
}

/// The admin endpoint, served: its task, and a duplicate of its socket for a takeover.
#[derive(Debug)]
pub(crate) struct Served {
    task: JoinHandle<()>,
    socket: Option<OwnedFd>,
}

impl Served {
    /// The socket, for a new process to take over; `None` if it couldn't be duplicated or is
    /// out already.
    pub(crate) fn lend_socket(&mut self) -> Option<OwnedFd> {
        self.socket.take()
    }

    /// Takes back what [`Served::lend_socket`] gave, after a failed takeover.
    pub(crate) fn return_socket(&mut self, socket: Option<OwnedFd>) {
        self.socket = socket;
    }

    /// Stops serving: a new process serves the socket now.
    pub(crate) fn stop(self) {
        self.task.abort();
    }
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

impl Admin {
    /// The admin state.
    pub(crate) fn new(
        metrics: PrometheusHandle,
        drain: Drain,
        runtime: RuntimeValues,
        view: SharedView,
        control: Control,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                drain,
                runtime,
                view,
                control,
            }),
        }
    }

    /// Serves the admin endpoint on `listener`, behind `door`, on a task of its own.
    pub(crate) fn spawn(self, listener: TcpListener, door: Door) -> Served {
        if let Ok(bound) = listener.local_addr() {
            tracing::info!("admin endpoint on http://{bound}/ (metrics, ready, runtime, config, clusters)");
        }
        // A duplicate, for a takeover to hand over.
        let socket = listener.as_fd().try_clone_to_owned().ok();
        let task = tokio::spawn(serve(self.router(), listener, door));
        Served { task, socket }
    }

    /// One route per path; each answers its methods, and `405` with `Allow` to the others
    /// (`HEAD` goes with `GET`).
    fn router(self) -> Router {
        Router::new()
            .route("/", only(get(dashboard), &["GET"]))
            .route("/metrics", only(get(metrics), &["GET"]))
            .route("/ready", only(get(ready), &["GET"]))
            .route(
                "/runtime",
                only(get(runtime_values).post(set_runtime), &["GET", "POST"]),
            )
            .route("/config", only(get(running_config), &["GET"]))
            .route("/reload", only(post(reload), &["POST"]))
            .route("/drain", only(post(start_drain), &["POST"]))
            .route("/tunnels", only(get(tunnels), &["GET"]))
            .route("/tunnels/close", only(post(close_tunnel), &["POST"]))
            .route("/clusters", only(get(clusters), &["GET"]))
            .fallback(not_found)
            .with_state(self)
    }
}

/// Accepts admin connections on `listener` until the task is aborted. Each request meets
/// `door` first; only those it lets through reach `router`.
async fn serve(router: Router, listener: TcpListener, door: Door) {
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
        let (router, door) = (router.clone(), Arc::clone(&door));
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let refusal = door.refusal(&req, caller);
            let router = router.clone();
            async move {
                match refusal {
                    Some(refusal) => Ok(refusal.map(Body::new)),
                    None => router.oneshot(req).await,
                }
            }
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

// === the routes ===

/// `GET /`.
async fn dashboard() -> Response {
    text(StatusCode::OK, DASHBOARD, "text/html; charset=utf-8")
}

/// `GET /metrics`.
async fn metrics(State(admin): State<Admin>) -> Response {
    let inner = &*admin.inner;
    // The per-endpoint state is recorded here, off the request path.
    inner.view.read(|view| {
        for cluster in &view.clusters {
            cluster.record_metrics();
        }
    });
    text(
        StatusCode::OK,
        inner.metrics.render(),
        "text/plain; version=0.0.4; charset=utf-8",
    )
}

/// `GET /ready`.
async fn ready(State(admin): State<Admin>) -> Response {
    let inner = &*admin.inner;
    if inner.control.shutdown() >= Shutdown::Announced || inner.drain.is_draining() {
        plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        plain(StatusCode::OK, "ready\n")
    }
}

/// `GET /runtime`.
async fn runtime_values(State(admin): State<Admin>) -> Response {
    json(StatusCode::OK, &admin.inner.runtime.snapshot())
}

/// The query of `POST /runtime`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRuntime {
    key: String,
    value: Percent,
}

/// A runtime value: a whole number from 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
struct Percent(u8);

impl TryFrom<String> for Percent {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.trim()
            .parse::<u8>()
            .ok()
            .filter(|v| *v <= 100)
            .map(Self)
            .ok_or_else(|| format!("{text:?} is not a whole number from 0 to 100"))
    }
}

/// `POST /runtime?key=K&value=V`.
async fn set_runtime(
    State(admin): State<Admin>,
    query: Result<Query<SetRuntime>, QueryRejection>,
) -> Response {
    const USAGE: &str = "POST /runtime?key=K&value=V with V from 0 to 100";
    let SetRuntime {
        key,
        value: Percent(value),
    } = match query {
        Ok(Query(set)) => set,
        Err(rejection) => return bad_query(&rejection, USAGE),
    };
    if key.is_empty() {
        return plain(StatusCode::BAD_REQUEST, format!("missing `key`; use {USAGE}\n"));
    }
    let keys = admin.inner.view.read(|view| runtime_keys(&view.config));
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
    let old = admin.inner.runtime.set_by_hand(&key, value);
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

/// `GET /config`.
async fn running_config(State(admin): State<Admin>) -> Response {
    let view = admin.inner.view.get();
    let mut config = view.config;
    config.runtime = admin.inner.runtime.snapshot();
    redact_header_values(&mut config);
    #[derive(Serialize)]
    struct Running {
        generation: u64,
        hash: Digest,
        /// The first listener's address, as the `listen` shorthand names it.
        listen: Option<std::net::SocketAddr>,
        #[serde(flatten)]
        config: Config,
    }
    json(
        StatusCode::OK,
        &Running {
            generation: view.generation,
            hash: view.digest,
            listen: config.listeners.first().map(|l| l.address),
            config,
        },
    )
}

/// `POST /reload`: the owner reloads between two steps of its own loop.
async fn reload(State(admin): State<Admin>) -> Response {
    match admin.inner.control.reload().await {
        Some(Ok(reloaded)) => json(StatusCode::OK, &reloaded),
        Some(Err(errors)) => plain(
            StatusCode::BAD_REQUEST,
            format!(
                "config not reloaded; the running config stays:\n{}\n",
                errors.join("\n")
            ),
        ),
        None => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "config not reloaded: the process is draining\n",
        ),
    }
}

/// The query of `POST /drain`.
#[derive(Debug, Deserialize)]
struct DrainAfter {
    after: Option<Delay>,
}

/// A delay written as the config writes durations (`5s`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
struct Delay(Duration);

impl TryFrom<String> for Delay {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        switchback_config::parse_duration(&text).map(Self)
    }
}

/// `POST /drain[?after=5s]`: `/ready` fails now; the drain starts `after` from now (a load
/// balancer has that long to stop sending new connections). Idempotent.
async fn start_drain(
    State(admin): State<Admin>,
    query: Result<Query<DrainAfter>, QueryRejection>,
) -> Response {
    let after = match query {
        Ok(Query(DrainAfter { after })) => after.map_or(Duration::ZERO, |Delay(d)| d),
        Err(rejection) => return bad_query(&rejection, "POST /drain?after=5s"),
    };
    tracing::info!("drain requested on the admin endpoint: /ready fails now, the drain starts in {after:?}");
    admin.inner.control.announce_drain(after);
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "draining_in": switchback_config::format_duration(after) }),
    )
}

/// `GET /tunnels`.
async fn tunnels(State(admin): State<Admin>) -> Response {
    let rows: Vec<TunnelRow> = admin.inner.drain.tunnels().iter().map(TunnelRow::from).collect();
    json(StatusCode::OK, &rows)
}

/// The query of `POST /tunnels/close`.
#[derive(Debug, Deserialize)]
struct CloseTunnel {
    id: u64,
}

/// `POST /tunnels/close?id=ID`.
async fn close_tunnel(
    State(admin): State<Admin>,
    query: Result<Query<CloseTunnel>, QueryRejection>,
) -> Response {
    let Ok(Query(CloseTunnel { id })) = query else {
        return plain(
            StatusCode::BAD_REQUEST,
            "say which tunnel: POST /tunnels/close?id=ID (the ids are in GET /tunnels)\n",
        );
    };
    if admin.inner.drain.close(id) {
        json(StatusCode::OK, &serde_json::json!({ "id": id, "closing": true }))
    } else {
        plain(StatusCode::NOT_FOUND, format!("no live tunnel {id}\n"))
    }
}

/// `GET /clusters`.
async fn clusters(State(admin): State<Admin>) -> Response {
    let rows: Vec<ClusterRow> = admin
        .inner
        .view
        .read(|view| view.clusters.iter().map(ClusterRow::from).collect());
    json(StatusCode::OK, &rows)
}

/// Any other path.
async fn not_found() -> Response {
    plain(
        StatusCode::NOT_FOUND,
        "not found; try GET /, GET /metrics, GET /ready, GET /runtime, POST /runtime?key=K&value=V, \
         GET /config, POST /reload, POST /drain?after=5s, GET /tunnels, POST /tunnels/close?id=ID, GET /clusters\n",
    )
}

/// `route` answering only `allowed` (plus `HEAD` with `GET`), and `405` with `Allow` to any
/// other method.
fn only(route: MethodRouter<Admin>, allowed: &'static [&'static str]) -> MethodRouter<Admin> {
    route.fallback(move || async move {
        let list = allowed.join(", ");
        let mut res = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed; use {}\n", allowed.join(" or ")),
        );
        if let Ok(v) = HeaderValue::from_str(&list) {
            res.headers_mut().insert(header::ALLOW, v);
        }
        res
    })
}

/// `400` for a query that doesn't fit, with the usage.
fn bad_query(rejection: &QueryRejection, usage: &str) -> Response {
    plain(
        StatusCode::BAD_REQUEST,
        format!("{}; use {usage}\n", rejection.body_text()),
    )
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

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response {
    text(status, body, "text/plain; charset=utf-8")
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body.into(),
    )
        .into_response()
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
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

    /// `target`'s query as `T`, or the rejection's text.
    fn query<T: serde::de::DeserializeOwned>(target: &str) -> Result<T, String> {
        let uri: http::Uri = target.parse().unwrap();
        Query::try_from_uri(&uri)
            .map(|Query(q)| q)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn typed_queries() {
        let set = query::<SetRuntime>("/runtime?key=a.b&value=100").unwrap();
        assert_eq!((set.key.as_str(), set.value), ("a.b", Percent(100)));
        let set = query::<SetRuntime>("/runtime?value=0&key=a%2Eb+c").unwrap();
        assert_eq!((set.key.as_str(), set.value), ("a.b c", Percent(0)), "decoded");
        for (bad, why) in [
            ("key=a&value=101", "0 to 100"),
            ("key=a&value=-1", "value: \"-1\" is not a whole number"),
            ("key=a&value=x", "value: \"x\" is not a whole number"),
            ("key=a", "missing field `value`"),
            ("value=1", "missing field `key`"),
            ("key=a&value=1&x=2", "unknown field `x`"),
            ("", "missing field"),
        ] {
            let err = query::<SetRuntime>(&format!("/runtime?{bad}")).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }

        assert_eq!(query::<DrainAfter>("/drain").unwrap().after, None);
        assert_eq!(
            query::<DrainAfter>("/drain?after=1500ms&x=y").unwrap().after,
            Some(Delay(Duration::from_millis(1500)))
        );
        let err = query::<DrainAfter>("/drain?after=soon").unwrap_err();
        assert!(err.contains("after: invalid duration \"soon\""), "{err}");

        assert_eq!(query::<CloseTunnel>("/tunnels/close?id=7").unwrap().id, 7);
        assert!(query::<CloseTunnel>("/tunnels/close?id=x").is_err());
        assert!(query::<CloseTunnel>("/tunnels/close").is_err());
    }

    /// An admin endpoint over a small config, without the process's metrics recorder.
    fn admin() -> (Admin, crate::proxy::Requests) {
        let yaml = "runtime: { shift: 5 }\nroutes: [{ match: { prefix: / }, cluster: c }]\n\
            clusters: [{ name: c, endpoints: [127.0.0.1:1] }]\n";
        let config = Config::from_yaml_str(yaml, "t.yaml").unwrap();
        let view = SharedView::new(crate::reload::View {
            clusters: crate::stack::clusters(&config).unwrap(),
            generation: 1,
            digest: Digest::of(yaml.as_bytes()),
            config: config.clone(),
        });
        let (control, requests) = Control::new();
        let admin = Admin::new(
            PrometheusBuilder::new().build_recorder().handle(),
            Drain::new(),
            RuntimeValues::new(&config.runtime),
            view,
            control,
        );
        (admin, requests)
    }

    /// Status, `Allow` and body of one request to the router (the door is not in it).
    async fn ask(router: &Router, method: &str, target: &str) -> (u16, Option<String>, String) {
        use http_body_util::BodyExt;
        let req = Request::builder()
            .method(method)
            .uri(target)
            .body(Body::empty())
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let allow = res
            .headers()
            .get(header::ALLOW)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, allow, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn routes_answer_their_methods_only() {
        let (admin, _requests) = admin();
        let router = admin.clone().router();
        assert_eq!(ask(&router, "GET", "/ready").await.0, 200);
        assert_eq!(ask(&router, "HEAD", "/ready").await.0, 200);
        let wrong = ask(&router, "DELETE", "/ready").await;
        assert_eq!((wrong.0, wrong.1.as_deref()), (405, Some("GET")));
        assert_eq!(wrong.2, "method not allowed; use GET\n");
        let wrong = ask(&router, "PUT", "/runtime").await;
        assert_eq!((wrong.0, wrong.1.as_deref()), (405, Some("GET, POST")));
        let wrong = ask(&router, "GET", "/tunnels/close?id=1").await;
        assert_eq!((wrong.0, wrong.1.as_deref()), (405, Some("POST")));
        let missing = ask(&router, "GET", "/nope").await;
        assert_eq!(missing.0, 404);
        assert!(missing.2.starts_with("not found; try GET /"), "{}", missing.2);

        let set = ask(&router, "POST", "/runtime?key=shift&value=100").await;
        assert_eq!(
            (set.0, set.2.as_str()),
            (
                200,
                "{\n  \"key\": \"shift\",\n  \"old\": 5,\n  \"new\": 100\n}\n"
            )
        );
        let unknown = ask(&router, "POST", "/runtime?key=shfit&value=1").await;
        assert_eq!(unknown.0, 400);
        assert!(unknown.2.contains("known keys: shift"), "{}", unknown.2);
        let bad = ask(&router, "POST", "/runtime?key=shift&value=101").await;
        assert_eq!(bad.0, 400);
        assert!(bad.2.ends_with("with V from 0 to 100\n"), "{}", bad.2);
        assert_eq!(ask(&router, "POST", "/runtime?key=&value=1").await.0, 400);
        assert_eq!(ask(&router, "POST", "/tunnels/close").await.0, 400);
        assert_eq!(ask(&router, "POST", "/tunnels/close?id=1").await.0, 404);
        assert_eq!(ask(&router, "POST", "/drain?after=x").await.0, 400);

        let config = ask(&router, "GET", "/config").await;
        assert_eq!(config.0, 200);
        let config: serde_json::Value = serde_json::from_str(&config.2).unwrap();
        assert_eq!(config["hash"].as_str().map(str::len), Some(64));
        assert_eq!(config["runtime"]["shift"], 100, "as set");
    }

    #[tokio::test]
    async fn drain_makes_ready_fail_and_reload_stops_with_the_owner() {
        let (admin, requests) = admin();
        let router = admin.clone().router();
        let drain = ask(&router, "POST", "/drain?after=1h").await;
        assert_eq!(
            (drain.0, drain.2.as_str()),
            (202, "{\n  \"draining_in\": \"1h\"\n}\n")
        );
        assert_eq!(
            ask(&router, "GET", "/ready").await,
            (503, None, "draining\n".to_owned())
        );
        assert_eq!(admin.inner.control.shutdown(), Shutdown::Announced);
        drop(requests);
        let reload = ask(&router, "POST", "/reload").await;
        assert_eq!(reload.0, 503, "{}", reload.2);
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
}
