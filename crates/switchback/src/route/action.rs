//! What a matched route does to the request before the next layer sees it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, StatusCode};

use super::MatchedRoute;
use super::runtime;
use crate::cluster::Cluster;
use crate::detect::UpgradeType;
use crate::ext::{AutoHostRewrite, IdleTimeout, MaxStreamDuration, ResponseTimeout};
use crate::legacy::LegacyConfig;
use crate::router::{DuplicateUpgradeType, RouteUpgrades};

/// The header that carries the path as the client sent it when a route rewrote it.
pub(super) const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// Where a route sends requests.
#[derive(Clone, Debug, Default)]
pub(super) enum Target {
    /// No cluster named: the request goes on without one ([`Forward`](crate::Forward)'s
    /// default, if it has one, serves it).
    #[default]
    Default,
    One(Cluster),
    Weighted {
        clusters: Arc<[(Cluster, u32)]>,
        total: u64,
    },
}

impl Target {
    pub(super) fn weighted(clusters: impl IntoIterator<Item = (Cluster, u32)>) -> Self {
        let clusters: Arc<[(Cluster, u32)]> = clusters.into_iter().collect();
        let total = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
        Self::Weighted { clusters, total }
    }

    /// The cluster for one request; `Err` when every weight is zero.
    fn pick(&self) -> Result<Option<&Cluster>, Refusal> {
        match self {
            Self::Default => Ok(None),
            Self::One(c) => Ok(Some(c)),
            Self::Weighted { clusters, total } => {
                let mut draw = runtime::below(*total);
                for (cluster, weight) in clusters.iter() {
                    let weight = u64::from(*weight);
                    if draw < weight {
                        return Ok(Some(cluster));
                    }
                    draw -= weight;
                }
                Err(Refusal::NoWeight)
            }
        }
    }
}

/// A route setting that cannot be applied, found when the route was built and reported on
/// every request the route matches (the builder's setters can't fail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Misconfig {
    /// `prefix_rewrite` is not a valid path (or holds `?` or `#`).
    PrefixRewrite(String),
    /// `host_rewrite_literal` is not a valid header value.
    HostRewrite(String),
}

impl fmt::Display for Misconfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PrefixRewrite(s) => write!(f, "prefix_rewrite {s:?} is not a valid path"),
            Self::HostRewrite(s) => write!(f, "host_rewrite_literal {s:?} is not a valid host"),
        }
    }
}

/// Why a matched route answers the request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `weighted_clusters` whose weights are all zero.
    NoWeight,
    /// The route is misconfigured.
    Misconfigured(Misconfig),
    /// The rewritten path is not a valid request target.
    BadRewrite,
}

impl Refusal {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::NoWeight => StatusCode::SERVICE_UNAVAILABLE,
            Self::Misconfigured(_) | Self::BadRewrite => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoWeight => f.write_str("no cluster of this route has a weight"),
            Self::Misconfigured(m) => write!(f, "route misconfigured: {m}"),
            Self::BadRewrite => f.write_str("the rewritten path is not a valid request target"),
        }
    }
}

/// `host_rewrite_literal` or `auto_host_rewrite`.
#[derive(Clone, Debug)]
pub(super) enum HostRewrite {
    Literal {
        value: HeaderValue,
        authority: Option<Authority>,
    },
    Auto,
}

impl HostRewrite {
    pub(super) fn literal(s: &str) -> Result<Self, Misconfig> {
        let value = HeaderValue::from_str(s).map_err(|_| Misconfig::HostRewrite(s.to_owned()))?;
        Ok(Self::Literal {
            value,
            authority: Authority::from_str(s).ok(),
        })
    }
}

/// Checks a `prefix_rewrite` value once, so that applying it can only fail on a bug.
pub(super) fn check_prefix_rewrite(s: &str) -> Result<(), Misconfig> {
    let bad = || Misconfig::PrefixRewrite(s.to_owned());
    if s.contains(['?', '#']) {
        return Err(bad());
    }
    PathAndQuery::try_from(format!("/{s}"))
        .map(drop)
        .map_err(|_| bad())
}

/// Everything a route does once it matched.
#[derive(Clone, Debug, Default)]
pub(super) struct Action {
    pub(super) target: Target,
    pub(super) prefix_rewrite: Option<String>,
    pub(super) host_rewrite: Option<HostRewrite>,
    pub(super) headers_to_add: Vec<(HeaderName, HeaderValue)>,
    pub(super) headers_to_remove: Vec<HeaderName>,
    pub(super) timeout: Option<ResponseTimeout>,
    pub(super) idle_timeout: Option<IdleTimeout>,
    pub(super) max_stream_duration: Option<MaxStreamDuration>,
    pub(super) max_tunnels: Option<crate::cap::TunnelCap>,
    pub(super) websocket: Option<crate::ws::WebSocketLimits>,
    pub(super) retry_policy: Option<crate::RetryPolicy>,
    pub(super) upgrades: Vec<(UpgradeType, bool)>,
    /// Built from `upgrades` when the route table is built, so a request only clones an `Arc`.
    pub(super) route_upgrades: Option<RouteUpgrades>,
    pub(super) legacy: Option<LegacyConfig>,
    pub(super) connect: Option<crate::ConnectConfig>,
    pub(super) misconfig: Option<Misconfig>,
}

impl Action {
    /// Checks the upgrade overrides and builds what requests will carry of them.
    pub(super) fn seal_upgrades(&mut self) -> Result<(), DuplicateUpgradeType> {
        if !self.upgrades.is_empty() {
            self.route_upgrades = Some(RouteUpgrades::new(self.upgrades.iter().cloned())?);
        }
        Ok(())
    }

    /// Rewrites `req` and fills its extensions. `matched` is how many bytes of the path the
    /// route's condition matched; `prefix` whether that condition was a prefix.
    pub(super) fn apply<B>(
        &self,
        req: &mut Request<B>,
        matched: usize,
        prefix: bool,
        name: &Arc<str>,
    ) -> Result<(), Refusal> {
        if let Some(m) = &self.misconfig {
            return Err(Refusal::Misconfigured(m.clone()));
        }
        let cluster = self.target.pick()?.cloned();

        for name in &self.headers_to_remove {
            // Envoy never lets a route remove the host; neither do we.
            if name != header::HOST {
                req.headers_mut().remove(name);
            }
        }
        if let Some(rewrite) = &self.prefix_rewrite {
            let kept = if prefix { matched } else { 0 };
            if let Some((uri, original)) = rewrite_path(req.uri(), kept, rewrite)? {
                *req.uri_mut() = uri;
                req.headers_mut().insert(ORIGINAL_PATH, original);
            }
        }
        match &self.host_rewrite {
            Some(HostRewrite::Literal { value, authority }) => {
                req.headers_mut().insert(header::HOST, value.clone());
                // HTTP/2 requests carry the host in the URI: keep both in step for the layers
                // below (`Forward` prefers the header).
                if let (Some(authority), Some(_)) = (authority, req.uri().authority()) {
                    let mut parts = req.uri().clone().into_parts();
                    parts.authority = Some(authority.clone());
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
            Some(HostRewrite::Auto) => {
                req.extensions_mut().insert(AutoHostRewrite);
            }
            None => {}
        }
        for (name, value) in &self.headers_to_add {
            req.headers_mut().append(name, value.clone());
        }

        let ext = req.extensions_mut();
        if let Some(c) = cluster {
            ext.insert(c);
        }
        if let Some(t) = self.timeout {
            ext.insert(t);
        }
        if let Some(t) = self.max_stream_duration {
            ext.insert(t);
        }
        if let Some(t) = self.idle_timeout {
            ext.insert(t);
        }
        if let Some(cap) = &self.max_tunnels {
            ext.insert(cap.clone());
        }
        if let Some(limits) = self.websocket {
            ext.insert(limits);
        }
        if let Some(policy) = self.retry_policy {
            ext.insert(policy);
        }
        if let Some(u) = &self.route_upgrades {
            ext.insert(u.clone());
        }
        if let Some(l) = &self.legacy {
            ext.insert(l.clone());
        }
        if let Some(c) = self.connect {
            ext.insert(c);
        }
        ext.insert(MatchedRoute { name: name.clone() });
        Ok(())
    }
}

/// The request target with the first `kept` bytes of the path replaced by `rewrite` (all of it
/// when `kept` is 0), the query unchanged; and the original target for
/// `x-envoy-original-path`. `None` for targets without a path (authority-form CONNECT).
fn rewrite_path(uri: &Uri, kept: usize, rewrite: &str) -> Result<Option<(Uri, HeaderValue)>, Refusal> {
    let Some(original) = uri.path_and_query() else {
        return Ok(None);
    };
    let rest = if kept == 0 {
        ""
    } else {
        uri.path().get(kept..).unwrap_or("")
    };
    let mut path = String::with_capacity(rewrite.len() + rest.len() + 1);
    // `/ws` rewritten to `` on `/wsx` would give `x`: never send a relative target.
    let absolute = rewrite.starts_with('/') || (rewrite.is_empty() && rest.starts_with('/'));
    if !absolute {
        path.push('/');
    }
    path.push_str(rewrite);
    path.push_str(rest);
    if let Some(q) = original.query() {
        path.push('?');
        path.push_str(q);
    }
    let pq = PathAndQuery::try_from(path).map_err(|_| Refusal::BadRewrite)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    let uri = Uri::from_parts(parts).map_err(|_| Refusal::BadRewrite)?;
    let original = HeaderValue::from_str(original.as_str()).map_err(|_| Refusal::BadRewrite)?;
    Ok(Some((uri, original)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Endpoint;

    fn rewrite(uri: &str, kept: usize, to: &str) -> (String, String) {
        let uri: Uri = uri.parse().expect("uri");
        let (uri, original) = rewrite_path(&uri, kept, to)
            .expect("rewrite")
            .expect("has a path");
        (uri.to_string(), original.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn prefix_rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
        assert_eq!(
            rewrite("/ws/chat?room=1", 3, "/socket"),
            ("/socket/chat?room=1".into(), "/ws/chat?room=1".into())
        );
        // Envoy's well-known gotcha is kept: `/prefix` -> `/` on `/prefix/x` gives `//x`.
        assert_eq!(rewrite("/prefix/x", 7, "/").0, "//x");
        assert_eq!(rewrite("/api/x", 4, "").0, "/x");
        assert_eq!(rewrite("/apix", 4, "").0, "/x", "never a relative target");
        assert_eq!(rewrite("/api", 4, "v2").0, "/v2");
    }

    #[test]
    fn whole_path_rewrite_for_exact_and_regex_routes() {
        assert_eq!(rewrite("/old/path?q=1", 0, "/new").0, "/new?q=1");
    }

    #[test]
    fn absolute_http2_targets_keep_scheme_and_authority() {
        assert_eq!(
            rewrite("http://example.com/ws/a", 3, "/x"),
            ("http://example.com/x/a".into(), "/ws/a".into())
        );
        let connect: Uri = "example.com:443".parse().expect("uri");
        assert!(rewrite_path(&connect, 0, "/x").expect("ok").is_none());
    }

    #[test]
    fn bad_settings_are_found_when_the_route_is_built() {
        assert!(check_prefix_rewrite("/ok/path").is_ok());
        assert!(check_prefix_rewrite("").is_ok());
        assert!(check_prefix_rewrite("/a?b").is_err());
        assert!(check_prefix_rewrite("/a#b").is_err());
        assert!(check_prefix_rewrite("/a b").is_err());
        assert!(HostRewrite::literal("back.internal:8080").is_ok());
        assert!(HostRewrite::literal("bad\nhost").is_err());
    }

    #[test]
    fn weighted_targets_follow_their_weights() {
        let c = |n: &str| Cluster::new(n, [Endpoint::new("127.0.0.1:1")]);
        let t = Target::weighted([(c("a"), 3), (c("b"), 0), (c("z"), 1)]);
        let mut counts = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..40_000 {
            let name = t.pick().expect("weighted").expect("a cluster").name().to_owned();
            *counts.entry(name).or_default() += 1;
        }
        assert_eq!(counts.get("b"), None, "weight 0 is never picked");
        // `a`: mean 30 000, sigma ~87; ±1 000 is over 11 sigma.
        let a = counts.get("a").copied().unwrap_or(0);
        assert!((29_000..=31_000).contains(&a), "{counts:?}");
        assert_eq!(
            Target::weighted([(c("a"), 0)]).pick().err(),
            Some(Refusal::NoWeight)
        );
        assert_eq!(Target::weighted([]).pick().err(), Some(Refusal::NoWeight));
    }
}
