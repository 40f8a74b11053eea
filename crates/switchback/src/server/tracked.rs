//! [`Tracked`]: a response body that keeps its connection busy until it is sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::conn::Exchange;

pin_project! {
    /// A response body holding its request's [`Exchange`]: hyper drops the body once it
    /// has written it, and the connection counts as idle from then.
    #[derive(Debug)]
    pub(crate) struct Tracked<B> {
        #[pin]
        body: B,
        _exchange: Exchange,
    }
}

impl<B> Tracked<B> {
    pub(super) fn new(body: B, exchange: Exchange) -> Self {
        Self {
            body,
            _exchange: exchange,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
