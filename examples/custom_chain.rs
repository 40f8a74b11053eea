//! Per-type chains: WebSocket tunnels go through a user-written layer that sees their payload
//! (it counts the bytes each way, as an Envoy filter would see WebSocket data), while `foo`
//! tunnels have a router-only chain and pass untouched (and joined, at full speed).
//!
//! ```sh
//! UPSTREAM=127.0.0.1:9001 cargo run -p switchback --example custom_chain
//! ```

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame};
use pin_project_lite::pin_project;
use switchback::{Body, Chain, Cluster, Endpoint, Forward, UpgradeConfig, UpgradeRouterLayer};
use tower::{Layer, Service, ServiceBuilder};

/// Payload bytes seen by [`CountLayer`], each way.
#[derive(Debug, Default)]
pub struct Counts {
    /// Client to upstream.
    pub up: AtomicU64,
    /// Upstream to client.
    pub down: AtomicU64,
}

/// A layer that counts body bytes both ways; on an upgrade, that is the tunnel payload.
#[derive(Clone, Debug)]
pub struct CountLayer(pub Arc<Counts>);

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            counts: self.0.clone(),
        }
    }
}

/// The service of [`CountLayer`].
#[derive(Clone, Debug)]
pub struct Count<S> {
    inner: S,
    counts: Arc<Counts>,
}

impl<S> Service<Request<Body>> for Count<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Counted<Body>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let counts = self.counts.clone();
        let req = req.map(|b| {
            Body::new(Counted {
                inner: b,
                counts: counts.clone(),
                up: true,
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|b| Counted {
                inner: b,
                counts,
                up: false,
            }))
        })
    }
}

pin_project! {
    /// A body that counts the data bytes passing through it.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        counts: Arc<Counts>,
        up: bool,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame
            && let Some(data) = f.data_ref()
        {
            let counter = if *this.up {
                &this.counts.up
            } else {
                &this.counts.down
            };
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    }
}

/// The stack: WebSocket through the counting chain, `foo` router-only, both to `upstream`.
pub fn stack(
    upstream: SocketAddr,
    counts: Arc<Counts>,
) -> impl Service<
    Request<hyper::body::Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let forward = Forward::new(Cluster::new("app", [Endpoint::new(upstream.to_string())]));
    let counted = Chain::new(
        ServiceBuilder::new()
            .layer(CountLayer(counts))
            .service(forward.clone()),
    );
    let router = UpgradeRouterLayer::builder()
        .upgrade_config(UpgradeConfig::new("websocket").chain(counted))
        .upgrade_config(UpgradeConfig::new("foo").chain(Chain::new(forward.clone())))
        .build()
        .expect("distinct upgrade types");
    ServiceBuilder::new().layer(router).service(forward)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let upstream: SocketAddr = std::env::var("UPSTREAM")
        .unwrap_or_else(|_| "127.0.0.1:9001".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("UPSTREAM: {e}")))?;
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:10000").await?;
    println!(
        "ws://{} counts WebSocket payload; Ctrl-C prints the counts",
        listener.local_addr()?
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    switchback::serve(listener, stack(upstream, counts.clone()), ctrl_c).await?;
    println!(
        "up {} bytes, down {} bytes",
        counts.up.load(Ordering::Relaxed),
        counts.down.load(Ordering::Relaxed)
    );
    Ok(())
}
