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
//! this chain counts against it (DESIGN.md: "the payload passes through the chain"), and such
//! tunnels are pumped instead of joined. The header, concurrency and timeout layers leave
//! bodies alone and keep the joined fast path. `concurrency_limit` and `timeout` apply to the
//! exchange up to the response head: a tunnel does not hold a concurrency permit once its
//! `101` has been sent.

use std::time::Duration;

use http::Request;
use http::header::{HeaderName, HeaderValue};
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

use crate::fatal::Fatal;

/// The chain of `filters`, in order, ending in [`Forward::routed`]. `at` names the list in
/// errors (e.g. `http_filters`).
pub(crate) fn chain(filters: &[Filter], at: &str) -> Result<Chain, Fatal> {
    let mut chain = Chain::new(Forward::routed());
    for (i, filter) in filters.iter().enumerate().rev() {
        chain = wrap(filter, chain).map_err(|e| Fatal::new(format!("{at}[{i}].{}: {e}", filter.name())))?;
    }
    Ok(chain)
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
        .flat_map(|h| h.keys())
        .filter_map(|name| HeaderName::try_from(name.as_str()).ok())
        .collect()
}

fn wrap(filter: &Filter, inner: Chain) -> Result<Chain, String> {
    Ok(match filter {
        Filter::RequestBodyLimit(limit) => {
            let limit = usize::try_from(*limit).unwrap_or(usize::MAX);
            // The limit wraps the request body in `Limited`; the chain below takes `Body`.
            let inner = inner.map_request(|req: Request<Limited<Body>>| req.map(Body::new));
            Chain::new(RequestBodyLimitLayer::new(limit).layer(inner))
        }
        Filter::RequestHeadersToAdd(headers) => {
            Chain::new(SetMultipleRequestHeadersLayer::appending(metadata(headers)?).layer(inner))
        }
        Filter::ResponseHeadersToAdd(headers) => {
            Chain::new(SetMultipleResponseHeadersLayer::appending(metadata(headers)?).layer(inner))
        }
        Filter::ConcurrencyLimit(max) => Chain::new(ConcurrencyLimitLayer::new((*max).max(1)).layer(inner)),
        Filter::Timeout(timeout) => Chain::new(TimeoutLayer::new(nonzero(*timeout)).layer(inner)),
    })
}

/// The config crate refuses `timeout: 0s`; should one get here, it must not fail every
/// request at once.
fn nonzero(d: Duration) -> Duration {
    if d.is_zero() { Duration::from_millis(1) } else { d }
}

fn metadata<T>(headers: &HeadersToAdd) -> Result<Vec<HeaderMetadata<T>>, String> {
    headers
        .iter()
        .map(|(name, value)| {
            let (name, value) = header(name, value)?;
            Ok((name, value).into())
        })
        .collect()
}

/// A validated header pair (the config crate validated them already; this never panics).
pub(crate) fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::try_from(name).map_err(|_| format!("{name:?} is not a valid header name"))?;
    let v = HeaderValue::try_from(value)
        .map_err(|_| format!("the value of {name:?} is not a valid header value"))?;
    Ok((n, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn headers(pairs: &[(&str, &str)]) -> HeadersToAdd {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    }

    #[test]
    fn every_filter_builds() {
        let filters = [
            Filter::RequestBodyLimit(1024),
            Filter::RequestHeadersToAdd(headers(&[("x-proxied-by", "switchback")])),
            Filter::ResponseHeadersToAdd(headers(&[("x-served-by", "switchback")])),
            Filter::ConcurrencyLimit(10),
            Filter::Timeout(Duration::from_secs(1)),
        ];
        assert!(chain(&filters, "http_filters").is_ok());
        assert!(chain(&[], "http_filters").is_ok());
    }

    #[test]
    fn bad_headers_name_the_filter() {
        let filters = [
            Filter::ConcurrencyLimit(1),
            Filter::RequestHeadersToAdd(headers(&[("bad name", "x")])),
        ];
        let err = chain(&filters, "http_filters").unwrap_err();
        assert_eq!(
            err.to_string(),
            "http_filters[1].request_headers_to_add: \"bad name\" is not a valid header name"
        );
    }

    #[test]
    fn added_request_header_names() {
        let filters = [
            Filter::RequestHeadersToAdd(headers(&[("x-a", "1"), ("X-B", "2")])),
            Filter::ResponseHeadersToAdd(headers(&[("x-c", "3")])),
        ];
        let mut names: Vec<String> = added_request_headers(&filters)
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x-a", "x-b"], "lowercased, response headers left out");
    }
}
