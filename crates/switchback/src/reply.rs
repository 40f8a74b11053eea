//! Local replies: responses Switchback makes itself.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::Body;

/// A short plain-text response. With `close`, the downstream connection is closed after it.
pub(crate) fn local(status: StatusCode, message: impl Into<String>, close: bool) -> Response<Body> {
    let mut text = message.into();
    text.push('\n');
    let mut res = Response::new(Body::from(text));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}
