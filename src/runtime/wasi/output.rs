//! `limits.output`: stdout and stderr share one budget per instance (a run, a served request,
//! a linked component's instance). The write that would pass it traps the guest with
//! [`OutputExceeded`], which the host reports as the limit, so a guest printing forever is
//! stopped instead of filling a disk or a pipe's reader.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The error a guest's stdio write traps with once the budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("the guest wrote more than {limit} bytes to stdout and stderr")]
pub(crate) struct OutputExceeded {
    /// `limits.output`, in bytes.
    pub limit: u64,
}

/// Bytes written so far, shared by stdout and stderr of one store.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    used: Arc<AtomicU64>,
    limit: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            used: Arc::new(AtomicU64::new(0)),
            limit,
        }
    }

    /// Takes `n` bytes from the budget, or refuses (taking nothing) if they do not fit.
    fn take(&self, n: usize) -> Result<(), OutputExceeded> {
        let n = n as u64;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| OutputExceeded { limit: self.limit })
    }

    /// Gives back bytes taken for a write that did not happen.
    fn refund(&self, n: usize) {
        self.used.fetch_sub(n as u64, Ordering::Relaxed);
    }
}

/// One of the host's standard streams, metered.
pub(crate) struct Metered<S> {
    pub inner: S,
    pub budget: Budget,
}

impl<S: IsTerminal> IsTerminal for Metered<S> {
    fn is_terminal(&self) -> bool {
        self.inner.is_terminal()
    }
}

impl<S: StdoutStream + 'static> StdoutStream for Metered<S> {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(MeteredStream {
            inner: self.inner.p2_stream(),
            budget: self.budget.clone(),
        })
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(MeteredStream {
            inner: Box::into_pin(self.inner.async_stream()),
            budget: self.budget.clone(),
        })
    }
}

struct MeteredStream<W> {
    inner: W,
    budget: Budget,
}

impl OutputStream for MeteredStream<Box<dyn OutputStream>> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.budget
            .take(bytes.len())
            .map_err(|e| StreamError::Trap(e.into()))?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
}

#[async_trait::async_trait]
impl Pollable for MeteredStream<Box<dyn OutputStream>> {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

type AsyncOut = Pin<Box<dyn AsyncWrite + Send + Sync>>;

impl AsyncWrite for MeteredStream<AsyncOut> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.budget.take(buf.len()) {
            return Poll::Ready(Err(io::Error::other(e)));
        }
        let r = self.inner.as_mut().poll_write(cx, buf);
        // Charge only what was written: a pending write is tried again, a short one continues.
        let written = match &r {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        self.budget.refund(buf.len() - written.min(buf.len()));
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_refuses_without_taking() {
        let b = Budget::new(10);
        let other = b.clone();
        assert!(b.take(6).is_ok());
        assert!(other.take(5).is_err(), "6 + 5 passes 10");
        assert!(other.take(4).is_ok(), "the refused 5 was not taken");
        assert!(b.take(1).is_err());
        assert!(b.take(0).is_ok());
    }
}
