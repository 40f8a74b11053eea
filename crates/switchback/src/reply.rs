//! Local replies: responses Switchback makes itself.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;

/// What becomes of the client's connection after a local reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    KeepAlive,
    /// `Connection: close`: the client may already be sending bytes (a tunnel's) that must
    /// never be read as a request.
    Close,
}

/// A short plain-text response.
pub(crate) fn local(status: StatusCode, message: impl Into<String>, then: Then) -> Response<Body> {
    let mut text = message.into();
    text.push('\n');
    let mut res = Response::new(Body::from(text));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if then == Then::Close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}
