//! `http_filters` (and an upgrade type's `filters`) to tower / tower-http layers.
//!
//! | YAML                          | layer                                                        |
//! |-------------------------------|--------------------------------------------------------------|
//! | `request_body_limit: N`       | [`tower_http::limit::RequestBodyLimitLayer`] (413)           |
//! | `request_headers_to_add: {}`  | tower-http's `SetMultipleRequestHeadersLayer` (appending)    |
//! | `response_headers_to_add: {}` | tower-http's `SetMultipleResponseHeadersLayer` (appending)   |
//! | `concurrency_limit: N`        | [`tower::limit::ConcurrencyLimitLayer`]                      |
//! | `timeout: D`                  | [`tower::timeout::TimeoutLayer`] (the router answers 504)    |
//!
//! Added headers use the *append* mode, which is Envoy's default for `*_headers_to_add`
//! (`append_action: APPEND_IF_EXISTS_OR_ADD`): a value the client (or upstream) already sent
//! is kept and the configured one is added next to it.
//!
//! A chain is built from the router outwards: the last filter wraps
//! [`Forward::routed`](switchback::Forward::routed), the first filter is the outermost layer.
//! Each step is boxed into a [`Chain`] so any list of filters has one type.
//!
//! The body limit wraps the request body, so the tunnel payload of upgrades going through
//! this chain counts against it (docs/architecture.md: "the payload is a body"), and such
//! tunnels are pumped instead of joined. The header, concurrency and timeout layers leave
//! bodies alone and keep the joined fast path. `concurrency_limit` and `timeout` apply to the
//! exchange up to the response head: a tunnel does not hold a concurrency permit once its
//! `101` has been sent.

use http::Request;
use http::header::HeaderName;
use switchback::{Body, Chain, Forward};
use switchback_config::{Filter, HeadersToAdd};
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;
use tower::{Layer, ServiceExt};
use tower_http::body::Limited;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::HeaderMetadata;
use tower_http::set_header::request::SetMultipleRequestHeadersLayer;
use tower_http::set_header::response::SetMultipleResponseHeadersLayer;

/// The chain of `filters`, in order, ending in [`Forward::routed`].
pub(crate) fn chain(filters: &[Filter]) -> Chain {
    filters
        .iter()
        .rev()
        .fold(Chain::new(Forward::routed()), |chain, filter| wrap(filter, chain))
}

/// The names of the request headers the filters add: the router must not let a client's
/// `Connection` header nominate them for removal.
pub(crate) fn added_request_headers(filters: &[Filter]) -> Vec<HeaderName> {
    filters
        .iter()
        .filter_map(|f| match f {
            Filter::RequestHeadersToAdd(h) => Some(h),
            _ => None,
        })
        .flat_map(HeadersToAdd::names)
        .cloned()
        .collect()
}

fn wrap(filter: &Filter, inner: Chain) -> Chain {
    match filter {
        Filter::RequestBodyLimit(limit) => {
            let limit = usize::try_from(*limit).unwrap_or(usize::MAX);
            // The limit wraps the request body in `Limited`; the chain below takes `Body`.
            let inner = inner.map_request(|req: Request<Limited<Body>>| req.map(Body::new));
            Chain::new(RequestBodyLimitLayer::new(limit).layer(inner))
        }
        Filter::RequestHeadersToAdd(headers) => {
            Chain::new(SetMultipleRequestHeadersLayer::appending(metadata(headers)).layer(inner))
        }
        Filter::ResponseHeadersToAdd(headers) => {
            Chain::new(SetMultipleResponseHeadersLayer::appending(metadata(headers)).layer(inner))
        }
        Filter::ConcurrencyLimit(max) => Chain::new(ConcurrencyLimitLayer::new(max.get()).layer(inner)),
        Filter::Timeout(timeout) => Chain::new(TimeoutLayer::new(*timeout).layer(inner)),
    }
}

fn metadata<T>(headers: &HeadersToAdd) -> Vec<HeaderMetadata<T>> {
    headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()).into())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeadersToAdd {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn added_request_header_names() {
        let filters = [
            Filter::RequestHeadersToAdd(headers(&[("x-a", "1"), ("x-b", "2")])),
            Filter::ResponseHeadersToAdd(headers(&[("x-c", "3")])),
        ];
        let mut names: Vec<String> = added_request_headers(&filters)
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x-a", "x-b"], "response headers left out");
    }
}
