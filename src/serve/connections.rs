//! The cap on connections held at once (`serve --max-connections`): an `axum-server` acceptor
//! that gives each accepted connection a permit and closes it at once when none is left. The
//! permit travels with the connection's stream and comes back when the connection closes,
//! whoever closes it (the client, a timeout, the end of the answer).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accepts at most `max` connections at once, wrapping another acceptor.
#[derive(Clone)]
pub struct Capped<A> {
    inner: A,
    slots: Arc<Semaphore>,
    max: usize,
    refused: Arc<AtomicU64>,
}

impl<A> Capped<A> {
    /// `max` connections at once through `inner`.
    pub fn new(inner: A, max: usize) -> Capped<A> {
        let max = max.max(1);
        Capped {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<I, S, A> Accept<I, S> for Capped<A>
where
    A: Accept<Permitted<I>, S> + Clone + Send + 'static,
    A::Future: Send,
    I: Send + 'static,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future =
        Pin<Box<dyn std::future::Future<Output = io::Result<(A::Stream, A::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let permit = self.slots.clone().try_acquire_owned();
        let inner = self.inner.clone();
        let refused = self.refused.clone();
        let max = self.max;
        Box::pin(async move {
            let Ok(permit) = permit else {
                // Dropping the stream closes the connection.
                if refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                    tracing::warn!(
                        "serve: {max} connections open (--max-connections); closing new ones"
                    );
                }
                return Err(io::Error::other("connection limit reached"));
            };
            inner
                .accept(
                    Permitted {
                        inner: stream,
                        _permit: permit,
                    },
                    service,
                )
                .await
        })
    }
}

/// A connection's stream with its permit.
pub struct Permitted<I> {
    inner: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Permitted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Permitted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
