//! Which pooled connection a request went out on, and whether it had
//! answered before: hyper's pool knows when it hands out a reused
//! connection but does not say, and a failure before any answer means
//! something else on each. On a fresh connection it is the origin's own
//! (it answered garbage, or closed at once); on a reused one it is most
//! likely the connection's past (the origin's keep-alive timer fired as the
//! request went out, or the tail of an earlier answer that overran its
//! `Content-Length` arrived late), which a fresh connection cures.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Extensions, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

/// Set once a connection has given a whole response head: a later
/// failure on it is a failure of a reused connection. Shared by every
/// response of one connection through hyper's per-connection extras.
#[derive(Debug, Clone, Default)]
pub struct Answered(Arc<AtomicBool>);

impl Answered {
    /// Marks the connection a response came on.
    pub fn mark(extensions: &Extensions) {
        if let Some(answered) = extensions.get::<Answered>() {
            answered.0.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the connection a failed request went out on had answered
    /// before.
    pub fn before(error: &hyper_util::client::legacy::Error) -> bool {
        let Some(connected) = error.connect_info() else {
            return false;
        };
        let mut extensions = Extensions::new();
        connected.get_extras(&mut extensions);
        extensions
            .get::<Answered>()
            .is_some_and(|answered| answered.0.load(Ordering::Relaxed))
    }
}

/// A connector whose connections each carry an [`Answered`] mark.
#[derive(Debug, Clone)]
pub struct Marking<C>(pub C);

impl<C> Service<Uri> for Marking<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Marked<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            Ok(Marked {
                io: connecting.await?,
                answered: Answered::default(),
            })
        })
    }
}

/// A connection with its [`Answered`] mark; reads and writes go straight
/// through.
#[derive(Debug)]
pub struct Marked<T> {
    io: T,
    answered: Answered,
}

impl<T: Connection> Connection for Marked<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.answered.clone())
    }
}

impl<T: Read + Unpin> Read for Marked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Marked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
