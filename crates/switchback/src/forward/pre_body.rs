//! The request body an upgrade declared, cut from a layer's body at the separator.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tokio::sync::oneshot;

use crate::BoxError;

/// Yields a wrapped upgrade request body up to the separator that ends its HTTP part (an empty
/// trailers frame, see [`Body`](crate::Body)), then hands the body back for the tunnel.
pub(crate) struct PreBody<B> {
    body: Option<Pin<Box<B>>>,
    back: Option<oneshot::Sender<Pin<Box<B>>>>,
}

impl<B> PreBody<B> {
    pub(crate) fn new(body: B, back: oneshot::Sender<Pin<Box<B>>>) -> Self {
        Self {
            body: Some(Box::pin(body)),
            back: Some(back),
        }
    }

    fn give_back(&mut self) {
        if let (Some(body), Some(back)) = (self.body.take(), self.back.take()) {
            let _ = back.send(body);
        }
    }
}

impl<B> HttpBody for PreBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(body) = &mut this.body else {
            return Poll::Ready(None);
        };
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) if frame.is_data() => Poll::Ready(Some(Ok(frame))),
            Some(Ok(_)) | None => {
                this.give_back();
                Poll::Ready(None)
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
        }
    }
}

impl<B> Drop for PreBody<B> {
    fn drop(&mut self) {
        self.give_back();
    }
}
