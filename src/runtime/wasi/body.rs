//! `limits.body`: an HTTP body cut off with an error once it passes the limit. The same cap
//! applies to every body a component receives or sends: requests `serve` passes to it,
//! responses it answers with, requests it sends out and responses it reads back.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::Error;

/// `inner`, failing with `too_big(bytes seen)` at the frame that passes `limit` bytes.
pub(crate) struct Capped<B> {
    inner: B,
    seen: u64,
    limit: u64,
    too_big: fn(Option<u64>) -> Error,
}

impl<B> Capped<B> {
    /// A request body: `HttpRequestBodySize` past the limit.
    pub(crate) fn request(inner: B, limit: u64) -> Self {
        Self {
            inner,
            seen: 0,
            limit,
            too_big: Error::HttpRequestBodySize,
        }
    }

    /// A response body: `HttpResponseBodySize` past the limit.
    pub(crate) fn response(inner: B, limit: u64) -> Self {
        Self {
            inner,
            seen: 0,
            limit,
            too_big: Error::HttpResponseBodySize,
        }
    }
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.seen > this.limit {
            // Already failed: the body stays failed.
            return Poll::Ready(Some(Err((this.too_big)(Some(this.seen)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err((this.too_big)(Some(this.seen)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
