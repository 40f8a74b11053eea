//! The `proxy` role: one Switchback stack served by [`switchback::Workers`] (one
//! single-threaded runtime and `SO_REUSEPORT` listener per CPU, as the `switchback` binary
//! runs it), in a process of its own.
//!
//! - `fast`: `UpgradeRouterLayer(websocket) -> Forward`. No layer touches a body, so tunnels
//!   are joined (the fast path).
//! - `chain`: the same with an identity wrapper around the request and the response body in
//!   the default chain (what tower-http's `MapRequestBody`/`MapResponseBody` do with an
//!   identity function). Both bodies are then foreign types, so the payload is pumped through
//!   the chain both ways. The wrapper does no work of its own: this measures the pumped path.
//! - `legacy`: a `use_websocket` route (`RouteLayer` above the router, `Forward::routed()`).
//! - `limits`: the fast path with every WebSocket limit on, none reached.
//! - `filter`: a `ws::MessageFilterLayer` whose filter passes every message, on the
//!   `websocket` type's chain: frames parsed, messages reassembled and sent on rebuilt.
//!
//! `--host-rewrite` sets every request's `Host` before the stack sees it (Autobahn's echo
//! server, the upstream of `scripts/autobahn.sh`, checks it).
//!
//! Library defaults everywhere else (tunnel buffers, idle timeout).

use std::num::NonZeroUsize;

use std::convert::Infallible;

use http::{Request, Response, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use rustix::process::Signal;
use switchback::ws::{Message, MessageFilterLayer, Verdict, WebSocketLimits};
use switchback::{
    Body, Chain, Cluster, Endpoint, Forward, LegacyConfig, Route, RouteLayer, Runtime, UpgradeConfig,
    UpgradeRouterLayer, Workers,
};
use tower::{Service, ServiceBuilder, service_fn};

use crate::cli::{ProxyArgs, ProxyMode};
use crate::error::{Context, Result};
use crate::{role, sys};

/// Runs the `proxy` role until `SIGTERM`.
pub(crate) fn main(args: &ProxyArgs) -> Result<()> {
    sys::die_with_parent(Signal::KILL).context("prctl(PR_SET_PDEATHSIG)")?;
    // Only the SIGTERM handler runs here; the stack runs on the workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        role::exit_on_sigterm()?;
        let workers = start(args)?;
        role::announce_addr(workers.local_addr())?;
        std::future::pending::<Result<()>>().await
    })
}

fn start(args: &ProxyArgs) -> Result<Workers> {
    let threads = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let cluster =
        Cluster::new("upstream", [Endpoint::new(args.upstream.to_string())]).http2(args.h2_upstream);
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .build()
        .context("upgrade router")?;
    match args.mode {
        ProxyMode::Fast => {
            let stack = ServiceBuilder::new().layer(router).service(Forward::new(cluster));
            serve(args, threads, stack)
        }
        ProxyMode::Chain => {
            let stack = ServiceBuilder::new()
                .layer(router)
                .map_request(|req: Request<Body>| req.map(|b| Body::new(b.map_frame(|f| f))))
                .map_response(|res: Response<Body>| res.map(|b| b.map_frame(|f| f)))
                .service(Forward::new(cluster));
            serve(args, threads, stack)
        }
        ProxyMode::Limits => {
            // Far above any workload's rate and message size, and pings no workload waits
            // for: checked on every frame, never hit.
            let limits = WebSocketLimits::new()
                .max_frames_per_second(1_000_000_000)
                .max_message_size(16 << 20)
                .max_upstream_message_size(16 << 20)
                .ping_interval(std::time::Duration::from_secs(30));
            let router = UpgradeRouterLayer::builder()
                .upgrade_config(UpgradeConfig::new("websocket").websocket(limits))
                .build()
                .context("upgrade router")?;
            let stack = ServiceBuilder::new().layer(router).service(Forward::new(cluster));
            serve(args, threads, stack)
        }
        ProxyMode::Filter => {
            let pass = service_fn(|_: Message| std::future::ready(Ok::<_, Infallible>(Verdict::Pass)));
            let forward = Forward::new(cluster);
            let filtered = Chain::new(
                ServiceBuilder::new()
                    // Above Autobahn's largest message (16 MiB).
                    .layer(MessageFilterLayer::new(pass).max_message_size(64 << 20))
                    .service(forward.clone()),
            );
            let router = UpgradeRouterLayer::builder()
                .upgrade_config(UpgradeConfig::new("websocket").chain(filtered))
                .build()
                .context("upgrade router")?;
            let stack = ServiceBuilder::new().layer(router).service(forward);
            serve(args, threads, stack)
        }
        ProxyMode::Legacy => {
            let routes = vec![
                Route::prefix("/")
                    .cluster(cluster)
                    .use_websocket(LegacyConfig::new()),
            ];
            // Legacy routes bypass the router's decision table: no upgrade type is needed.
            let stack = ServiceBuilder::new()
                .layer(RouteLayer::new(routes, Runtime::new()).context("routes")?)
                .layer(UpgradeRouterLayer::builder().build().context("upgrade router")?)
                .service(Forward::routed());
            serve(args, threads, stack)
        }
    }
    .context(format_args!("proxy: serving on {}", args.listen))
}

/// Serves `stack` on the workers, behind the `Host` rewrite if one was asked for.
fn serve<S, B>(args: &ProxyArgs, threads: NonZeroUsize, stack: S) -> std::io::Result<Workers>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = hyper::body::Bytes> + Send + 'static,
    B::Error: Into<switchback::BoxError>,
{
    let host = args.host_rewrite.clone();
    let stack = ServiceBuilder::new()
        .map_request(move |mut req: Request<Incoming>| {
            if let Some(host) = &host {
                req.headers_mut().insert(header::HOST, host.clone());
            }
            req
        })
        .service(stack);
    Workers::start(args.listen, threads, stack)
}
