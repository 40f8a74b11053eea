//! The `proxy` role: one Switchback stack served with [`switchback::server::serve`] on a
//! multi-threaded runtime, in a process of its own.
//!
//! - `fast`: `UpgradeRouterLayer(websocket) -> Forward`. No layer touches a body, so tunnels
//!   are joined (the fast path).
//! - `chain`: the same with an identity wrapper around the request and the response body in
//!   the default chain (what tower-http's `MapRequestBody`/`MapResponseBody` do with an
//!   identity function). Both bodies are then foreign types, so the payload is pumped through
//!   the chain both ways. The wrapper does no work of its own: this measures the pumped path.
//! - `legacy`: a `use_websocket` route (`RouteLayer` above the router, `Forward::routed()`).
//!
//! Library defaults everywhere else (tunnel buffers, idle timeout).

use std::net::SocketAddr;

use http::{Request, Response};
use http_body_util::BodyExt as _;
use rustix::process::Signal;
use switchback::{
    Body, Cluster, Endpoint, Forward, LegacyConfig, Route, RouteLayer, Runtime, UpgradeRouterLayer, server,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::cli::{ProxyArgs, ProxyMode};
use crate::error::{Context, Result};
use crate::{role, sys};

/// Runs the `proxy` role until `SIGTERM`.
pub(crate) fn main(args: &ProxyArgs) -> Result<()> {
    sys::die_with_parent(Signal::KILL).context("prctl(PR_SET_PDEATHSIG)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(serve(args.mode, args.listen, args.upstream))
}

async fn serve(mode: ProxyMode, listen: SocketAddr, upstream: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .context(format_args!("proxy: binding {listen}"))?;
    role::announce(&listener)?;
    role::exit_on_sigterm()?;
    let cluster = Cluster::new("upstream", [Endpoint::new(upstream.to_string())]);
    let forever = std::future::pending::<()>();
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .build()
        .context("upgrade router")?;
    match mode {
        ProxyMode::Fast => {
            let stack = ServiceBuilder::new().layer(router).service(Forward::new(cluster));
            server::serve(listener, stack, forever).await
        }
        ProxyMode::Chain => {
            let stack = ServiceBuilder::new()
                .layer(router)
                .map_request(|req: Request<Body>| req.map(|b| Body::new(b.map_frame(|f| f))))
                .map_response(|res: Response<Body>| res.map(|b| b.map_frame(|f| f)))
                .service(Forward::new(cluster));
            server::serve(listener, stack, forever).await
        }
        ProxyMode::Legacy => {
            let routes = vec![
                Route::prefix("/")
                    .cluster(cluster)
                    .use_websocket(LegacyConfig::new()),
            ];
            // Legacy routes bypass the router's decision table: no upgrade type is needed.
            let stack = ServiceBuilder::new()
                .layer(RouteLayer::new(routes, Runtime::new()))
                .layer(UpgradeRouterLayer::builder().build().context("upgrade router")?)
                .service(Forward::routed());
            server::serve(listener, stack, forever).await
        }
    }
    .context("proxy: serving")
}
