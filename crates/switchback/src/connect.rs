//! CONNECT tunnels (RFC 9110 §9.3.6): see [`ConnectConfig`](crate::ConnectConfig).

use http::{HeaderMap, Method, Request, StatusCode, header};

/// A route's CONNECT termination: Envoy's `connect_config` on a route's `CONNECT` upgrade
/// entry.
///
/// CONNECT is an upgrade type like any other (`CONNECT`, compared case-insensitively):
/// enabled at listener level with [`UpgradeConfig`](crate::UpgradeConfig) or on a route with
/// [`Route::upgrade`](crate::Route::upgrade), and matched by a route made with
/// [`Route::connect_matcher`](crate::Route::connect_matcher) (a CONNECT has no path: path
/// conditions never take one). What [`Forward`](crate::Forward) does with an allowed CONNECT
/// depends on its route:
///
/// - **Terminate** (the route has a `ConnectConfig`): the proxy connects to an endpoint of the
///   route's cluster over TCP (its balancer, retries on connect failure, health and outlier
///   detection apply), answers `200` itself, and relays the payload as raw bytes. The target
///   the client named is not used: the route's cluster is where its bytes go.
/// - **Proxy** (no `ConnectConfig`): the CONNECT goes on to the cluster, which is itself a
///   proxy. Only its 2xx opens the tunnel; bytes the client sent early are held until then.
///   Any other answer (a `407`, say) is relayed and the client's connection closed.
///
/// Either way the tunnel is a tunnel like any other: the payload passes through the chain,
/// it is counted, drained, timed out when idle and half-closed as an upgrade's.
///
/// Bad forms get Envoy's answers, and the client's connection is closed after them: a
/// CONNECT whose target is not `host:port` or with a non-zero `Content-Length` gets `400`, one with `Transfer-Encoding` `501`,
/// one no route takes `404`, and one on a route that doesn't allow CONNECT `403`.
///
/// ```
/// use switchback::{Cluster, ConnectConfig, Endpoint, Forward, Route, RouteLayer, Runtime, UpgradeRouterLayer};
/// use tower::ServiceBuilder;
///
/// let egress = Cluster::new("egress", [Endpoint::new("10.0.0.7:443")]);
/// let routes = vec![
///     Route::connect_matcher()
///         .cluster(egress)
///         .upgrade("CONNECT", true)
///         .connect_config(ConnectConfig::new()),
/// ];
/// let stack = ServiceBuilder::new()
///     .layer(RouteLayer::new(routes, Runtime::new()).expect("valid routes"))
///     .layer(UpgradeRouterLayer::builder().build().expect("valid"))
///     .service(Forward::routed());
/// # let _ = stack;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectConfig {
    pub(crate) allow_post: bool,
}

impl ConnectConfig {
    /// Terminates CONNECT requests; POSTs stay ordinary requests.
    pub fn new() -> Self {
        Self::default()
    }

    /// A POST on the route is terminated too (Envoy's `allow_post`): its body goes to the
    /// upstream as raw bytes (its end as the upstream's FIN) and the upstream's bytes come
    /// back as the `200`'s body. Used by clients that can't send CONNECT (some HTTP/2 and
    /// browser stacks). Such a relay is an ordinary request to the router: it is not a
    /// tunnel (not counted or drained, no idle timeout), and the chain's body layers see it.
    pub fn allow_post(mut self, on: bool) -> Self {
        self.allow_post = on;
        self
    }
}

/// Whether `req` is a plain CONNECT: one without `:protocol`, which an HTTP/2 extended
/// CONNECT (RFC 8441) carries and which is an upgrade of that protocol instead.
pub(crate) fn is_plain_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_none()
}

/// The checks of a CONNECT's form: its target is `host:port` (authority form, RFC 9112
/// §3.2.3; `:authority` under HTTP/2), else `400`; and, as Envoy's, it carries no body of its
/// own, so a non-zero `Content-Length` is a `400` and any `Transfer-Encoding` a `501`.
pub(crate) fn check<B>(req: &Request<B>) -> Result<(), (StatusCode, &'static str)> {
    let uri = req.uri();
    let authority_form = uri.scheme().is_none()
        && uri.path_and_query().is_none()
        && uri.authority().is_some_and(|a| a.port_u16().is_some());
    // An HTTP/2 CONNECT's URI is built from `:authority` alone, which h2 checks the same way.
    if !authority_form {
        return Err((StatusCode::BAD_REQUEST, "a CONNECT's target must be host:port"));
    }
    check_framing(req.headers())
}

fn check_framing(headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err((
            StatusCode::NOT_IMPLEMENTED,
            "a CONNECT may not carry Transfer-Encoding",
        ));
    }
    let has_length = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .any(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0));
    if has_length {
        return Err((
            StatusCode::BAD_REQUEST,
            "a CONNECT may not carry a body (Content-Length must be 0)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn a_connect_names_host_and_port() {
        let status = |target: &str| {
            let req = Request::connect(target).body(()).expect("request");
            check(&req).err().map(|e| e.0)
        };
        assert_eq!(status("example.com:443"), None);
        assert_eq!(status("[::1]:8080"), None);
        assert_eq!(status("example.com"), Some(StatusCode::BAD_REQUEST), "no port");
        assert_eq!(status("http://example.com:80/x"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status("/x"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status("*"), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn framing_of_a_connect() {
        assert!(check_framing(&headers(&[])).is_ok());
        assert!(check_framing(&headers(&[("content-length", "0")])).is_ok());
        let status = |h| check_framing(&headers(h)).unwrap_err().0;
        assert_eq!(status(&[("content-length", "1")]), StatusCode::BAD_REQUEST);
        assert_eq!(status(&[("content-length", "x")]), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&[("content-length", "0"), ("content-length", "5")]),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&[("transfer-encoding", "chunked")]),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            status(&[("transfer-encoding", "identity"), ("content-length", "0")]),
            StatusCode::NOT_IMPLEMENTED
        );
    }
}
