//! The wrapper around every accepted connection's socket, plain TCP and TLS
//! alike: [`ConnListener`] wraps a listener, and each connection it yields
//! is a [`ConnIo`], which does two things at the transport level that no
//! handler can do:
//!
//! - **Stall close.** A peer that stops reading fills the socket's buffers;
//!   hyper's writes then wait and it stops polling the response body, so an
//!   SSE stream's own timers never run and the watcher would keep its
//!   connection and its cap slot forever. When writes have made no progress
//!   for the stall timeout (`--stall-timeout-secs`), the write fails with
//!   `TimedOut`, hyper drops the connection, and with it the body and its
//!   permit. Counted in `folio_connections_closed_total` as `sse_stalled`
//!   (while an SSE stream is open on it) or `http_stalled`. A connection
//!   carrying a WebSocket is left to the socket's own stall close (4030,
//!   with its close frame: see `ws::write_loop`), so the two never race.
//! - **Lingering close** when the connection is dropped: see [`super::linger`].
//!
//! Handlers reach the connection's [`ConnState`] through the request
//! extensions ([`expose`]), to say what it carries.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::linger::{IntoTcp, Linger};

/// A listener whose connections are [`ConnIo`]s.
pub struct ConnListener<L> {
    inner: L,
    stall_after: Duration,
    linger: Linger,
}

impl<L> ConnListener<L> {
    /// Wraps `inner`; writes that make no progress for `stall_after` fail.
    pub fn new(inner: L, stall_after: Duration) -> Self {
        Self {
            inner,
            stall_after,
            linger: Linger::default(),
        }
    }
}

impl<L> Listener for ConnListener<L>
where
    L: Listener<Addr = SocketAddr>,
    L::Io: IntoTcp,
{
    type Io = ConnIo<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let io = ConnIo {
            io: Some(io),
            state: Arc::default(),
            stall_after: self.stall_after,
            stall: None,
            armed: false,
            counted: false,
            linger: self.linger.clone(),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// What a connection carries, as its handlers mark it; shared between the
/// handlers (through the request extensions) and the connection's [`ConnIo`].
#[derive(Debug, Default)]
pub struct ConnState {
    sse_streams: AtomicUsize,
    websockets: AtomicUsize,
}

impl ConnState {
    /// Marks an SSE stream open on this connection until the mark drops.
    pub fn sse_stream(self: &Arc<Self>) -> CarryMark {
        CarryMark::new(self, Carries::Sse)
    }

    /// Marks a WebSocket open on this connection until the mark drops:
    /// meanwhile the WebSocket's own stall close applies, not ours.
    pub fn websocket(self: &Arc<Self>) -> CarryMark {
        CarryMark::new(self, Carries::WebSocket)
    }

    fn counter(&self, kind: Carries) -> &AtomicUsize {
        match kind {
            Carries::Sse => &self.sse_streams,
            Carries::WebSocket => &self.websockets,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Carries {
    Sse,
    WebSocket,
}

/// One SSE stream or WebSocket on a connection; see [`ConnState`].
#[derive(Debug)]
pub struct CarryMark {
    state: Arc<ConnState>,
    kind: Carries,
}

impl CarryMark {
    fn new(state: &Arc<ConnState>, kind: Carries) -> Self {
        state.counter(kind).fetch_add(1, Ordering::Relaxed);
        Self {
            state: state.clone(),
            kind,
        }
    }
}

impl Drop for CarryMark {
    fn drop(&mut self) {
        self.state
            .counter(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connect info of a [`ConnListener`] connection (see
/// `Router::into_make_service_with_connect_info`); [`expose`] turns it into
/// the `ConnectInfo<SocketAddr>` and `Arc<ConnState>` handlers look for.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub state: Arc<ConnState>,
}

impl<L> Connected<IncomingStream<'_, ConnListener<L>>> for ConnInfo
where
    L: Listener<Addr = SocketAddr>,
    L::Io: IntoTcp,
{
    fn connect_info(stream: IncomingStream<'_, ConnListener<L>>) -> Self {
        Self {
            remote: *stream.remote_addr(),
            state: stream.io().state.clone(),
        }
    }
}

/// Middleware: puts the client's address (`ConnectInfo<SocketAddr>`) and
/// the connection's `Arc<ConnState>` into the request's extensions.
pub async fn expose(mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(info)) = req.extensions().get::<ConnectInfo<ConnInfo>>().cloned() {
        req.extensions_mut().insert(ConnectInfo(info.remote));
        req.extensions_mut().insert(info.state);
    }
    next.run(req).await
}

/// One accepted connection's socket; see the module docs.
pub struct ConnIo<S: IntoTcp> {
    /// `None` only once dropped (taken for the lingering close).
    io: Option<S>,
    state: Arc<ConnState>,
    stall_after: Duration,
    /// Allocated at the first write that waits; reused after.
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether writes have been waiting since the timer was last reset.
    armed: bool,
    /// The stall was counted (hyper may poll again before dropping).
    counted: bool,
    linger: Linger,
}

impl<S: IntoTcp> ConnIo<S> {
    fn io(&mut self) -> io::Result<Pin<&mut S>>
    where
        S: Unpin,
    {
        self.io
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Passes on the outcome of a write, flush or shutdown; one that waits
    /// arms (or polls) the stall timer, and fails when it fires.
    fn watch<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() || self.state.websockets.load(Ordering::Relaxed) > 0 {
            self.armed = false;
            return polled;
        }
        let at = Instant::now() + self.stall_after;
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if !self.armed {
            timer.as_mut().reset(at);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.armed = false;
                self.count_stall();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer took nothing for the stall timeout",
                )))
            }
        }
    }

    fn count_stall(&mut self) {
        if std::mem::replace(&mut self.counted, true) {
            return;
        }
        let reason = if self.state.sse_streams.load(Ordering::Relaxed) > 0 {
            "sse_stalled"
        } else {
            "http_stalled"
        };
        crate::metrics::closed(reason);
        tracing::info!(
            stall_secs = self.stall_after.as_secs(),
            reason,
            "connection stalled; closing"
        );
    }
}

fn gone<T>(e: io::Error) -> Poll<io::Result<T>> {
    Poll::Ready(Err(e))
}

impl<S: AsyncRead + IntoTcp + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_read(cx, buf),
            Err(e) => gone(e),
        }
    }
}

impl<S: AsyncWrite + IntoTcp + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.io() {
            Ok(io) => io.poll_write(cx, buf),
            Err(e) => return gone(e),
        };
        self.watch(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.io() {
            Ok(io) => io.poll_write_vectored(cx, bufs),
            Err(e) => return gone(e),
        };
        self.watch(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = match self.io() {
            Ok(io) => io.poll_flush(cx),
            Err(e) => return gone(e),
        };
        self.watch(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = match self.io() {
            Ok(io) => io.poll_shutdown(cx),
            Err(e) => return gone(e),
        };
        self.watch(polled, cx)
    }
}

impl<S: IntoTcp> Drop for ConnIo<S> {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            self.linger.close(io.into_tcp());
        }
    }
}
