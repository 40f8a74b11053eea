//! The request body an upgrade declared, cut from a layer's body where its HTTP part ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tokio::sync::oneshot;

use crate::body::{Body, BoxError, PreBodyEnd};

/// Yields a layer's upgrade request body up to the end of its HTTP part (see
/// [`PreBodyEnd`]), then hands the body back for the tunnel.
pub(crate) struct PreBody {
    body: Option<Body>,
    end: PreBodyEnd,
    back: Option<oneshot::Sender<Body>>,
}

impl PreBody {
    pub(crate) fn new(body: Body, end: PreBodyEnd, back: oneshot::Sender<Body>) -> Self {
        Self {
            body: Some(body),
            end,
            back: Some(back),
        }
    }

    fn give_back(&mut self) {
        if let (Some(body), Some(back)) = (self.body.take(), self.back.take()) {
            let _ = back.send(body);
        }
    }
}

impl HttpBody for PreBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(body) = &mut this.body else {
                return Poll::Ready(None);
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => return Poll::Ready(Some(Ok(frame))),
                // Trailers can't be sent ahead of a tunnel; a layer may have made some.
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                // The whole body ended: there will be no tunnel bytes from the client.
                Poll::Ready(None) => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Poll::Pending if this.end.reached() => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for PreBody {
    fn drop(&mut self) {
        self.give_back();
    }
}
