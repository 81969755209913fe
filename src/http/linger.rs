//! Lingering close: how a connection's socket is let go of.
//!
//! Dropping a socket whose receive buffer still holds unread bytes makes
//! Linux send a TCP reset at once, throwing away whatever it had not yet
//! transmitted, and every later byte from the peer draws another reset. A
//! client still sending the rest of an oversized message then has its send
//! fail with ECONNRESET before it ever reads the 1009 close frame the server
//! sent (browsers report an abnormal closure, 1006), and some stacks also
//! discard what they had received but not yet handed to the application.
//!
//! So a closed connection first sends its FIN (shutting down the write side:
//! everything written is delivered, then end of stream), and then reads and
//! discards what the peer still sends until it closes its side, for at most
//! [`LINGER_FOR`] and [`LINGER_MAX_BYTES`]. Past the byte budget the socket
//! is held without reading until the time is up (the peer's sends then wait
//! on flow control, and it has time to read what it was sent); then it is
//! dropped, reset or not. For TLS this happens on the TCP stream under the
//! session: the reset is a TCP matter, and what is read is discarded unread.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Longest a closed connection lingers.
pub const LINGER_FOR: Duration = Duration::from_secs(2);

/// Most bytes read and discarded from one lingering connection. A client
/// that sends a whole oversized message before reading (many do) only sees
/// the close frame if the server takes the message: this covers messages up
/// to 32 MiB (eight times the default `--max-message-bytes`); one that
/// sends more without reading gets a reset after [`LINGER_FOR`].
pub const LINGER_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Most connections lingering at once. At the cap a closing connection is
/// dropped at once, as without lingering (its peer may then get a reset
/// instead of the last bytes), so a flood of closing connections costs at
/// most this many descriptors and read buffers for [`LINGER_FOR`].
pub const MAX_LINGERING: usize = 1024;

/// Read size while draining; the buffer lives in the lingering task, so
/// lingering sockets hold at most [`MAX_LINGERING`] times this.
const DRAIN_CHUNK: usize = 8 * 1024;

/// A stream that can give up the TCP socket it runs on.
pub trait IntoTcp {
    /// The TCP stream underneath (any layers above it are discarded).
    fn into_tcp(self) -> TcpStream;
}

impl IntoTcp for TcpStream {
    fn into_tcp(self) -> TcpStream {
        self
    }
}

impl IntoTcp for tokio_rustls::server::TlsStream<TcpStream> {
    /// Whatever the TLS session still held unsent is dropped: by the time a
    /// connection is dropped hyper or the WebSocket writer has flushed it.
    fn into_tcp(self) -> TcpStream {
        self.into_inner().0
    }
}

/// The lingering closes of one listener's connections, bounded by
/// [`MAX_LINGERING`].
#[derive(Debug, Clone)]
pub struct Linger {
    permits: Arc<Semaphore>,
}

impl Default for Linger {
    fn default() -> Self {
        Self::new(MAX_LINGERING)
    }
}

impl Linger {
    /// At most `max` sockets lingering at once.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }

    /// Closes `tcp` with a lingering close in its own task, or at once when
    /// [`MAX_LINGERING`] sockets already linger or no runtime is running
    /// (the process is ending).
    pub fn close(&self, tcp: TcpStream) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::debug!("too many lingering sockets; closing at once");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _permit = permit;
            drain(tcp).await;
        });
    }
}

/// FIN, then read and discard until the peer closes or the bounds are hit.
async fn drain(mut tcp: TcpStream) {
    // Already shut down if hyper ended the connection politely; an error
    // here (the peer is gone) leaves nothing to linger for.
    if tcp.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER_FOR, async {
        let mut buf = [0u8; DRAIN_CHUNK];
        let mut left = LINGER_MAX_BYTES;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
        // Budget spent: hold the socket, unread, until the time is up.
        std::future::pending::<()>().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    #[tokio::test]
    async fn unread_input_does_not_reset_what_was_written() {
        let (mut server, mut client) = pair().await;
        // The client sends more than the server reads, as an oversized
        // frame does; the server answers and closes.
        client.write_all(&[7u8; 64 * 1024]).await.expect("send");
        server.write_all(b"bye").await.expect("answer");
        let mut first = [0u8; 16];
        server.read_exact(&mut first).await.expect("read a little");
        Linger::new(1).close(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("no reset");
        assert_eq!(got, b"bye");
    }

    #[tokio::test]
    async fn at_the_cap_sockets_close_at_once() {
        let linger = Linger::new(1);
        let (first, _first_peer) = pair().await;
        linger.close(first);
        assert_eq!(linger.permits.available_permits(), 0);
        let (second, mut second_peer) = pair().await;
        linger.close(second);
        // Dropped at once: the peer reads end of stream with the first still lingering.
        let mut got = Vec::new();
        second_peer.read_to_end(&mut got).await.expect("eof");
        assert!(got.is_empty());
        assert_eq!(linger.permits.available_permits(), 0);
    }
}
