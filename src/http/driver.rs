//! The one connection driver for both WebSocket endpoints (`/ws` and
//! `/yjs`): a reader loop that feeds the connection's sans-IO session
//! (through [`Protocol`]), and a writer task that drains the connection's
//! bounded queue into the socket, flushing once per batch rather than once
//! per frame. Shutdown, durability outcomes, the shard's notices, resyncs,
//! the session's timers, token revocations, pings and the size limit are
//! handled here once; what differs between the protocols is behind the
//! trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::WebSocketUpgrade;
use bytes::Bytes;
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use tokio::time::{Instant, Sleep};

use super::AppState;
use crate::doc::{Outbound, OutboundRx, Peer, QueueMeter};
use crate::session::{close, Flow};

/// What the driver asks of a connection's session. Each method is one event
/// of the connection; the session answers with what the transport does next.
pub(super) trait Protocol: Send {
    /// The outcome of the oldest write waiting to be durable.
    type Durable: Send;

    /// What the connection's log lines call it.
    const NAME: &'static str;

    /// Whether the driver may read another frame (not while too many writes
    /// wait to be durable).
    fn can_read(&self) -> bool;

    /// One binary frame from the client.
    fn on_frame(&mut self, frame: Bytes) -> impl Future<Output = Flow> + Send;

    /// Whether any write waits to be durable.
    fn has_pending_writes(&self) -> bool;

    /// The next durability outcome, in the order of the writes.
    fn next_write(&mut self) -> impl Future<Output = Self::Durable> + Send;

    /// Handles a durability outcome (the `/ws` ack).
    fn on_write(&mut self, outcome: Self::Durable) -> impl Future<Output = Flow> + Send;

    /// The shard left a notice on the connection's peer (fell behind, dropped).
    fn on_peer_notice(&mut self) -> impl Future<Output = Flow> + Send;

    /// Whether some document waits for the queue to drain to be resynced.
    fn has_pending_resync(&self) -> bool;

    /// The queue has drained.
    fn on_drained(&mut self) -> Flow;

    /// When the session's next timer is due (a token expiry, a rate resync,
    /// a keepalive), if it has one. After [`Protocol::on_timer`] it must lie
    /// in the future (or be `None`), or the driver would spin.
    fn next_timer(&self) -> Option<Instant>;

    /// The timer [`Protocol::next_timer`] named is due.
    fn on_timer(&mut self) -> impl Future<Output = Flow> + Send;

    /// Some token was revoked: re-check the connection's own.
    fn on_revocation(&mut self) -> impl Future<Output = Flow> + Send;

    /// Before the close frame: what the client must still hear (bounded).
    fn before_close(&mut self) -> impl Future<Output = ()> + Send;

    /// The socket is closing: leave every document.
    fn close(&mut self);
}

/// Longest wait to write a close frame: a socket that takes nothing is
/// dropped without one.
const CLOSE_FRAME_WAIT: Duration = Duration::from_secs(2);

/// A timer that does not fire (a year).
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Frames written before one flush at most, so a busy queue still flushes.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// Socket buffer sizes. tungstenite's defaults (128 KiB read) would dominate
/// the memory of an idle connection; messages larger than the buffer still
/// work, the buffer just grows for them.
const READ_BUFFER_BYTES: usize = 4 * 1024;
const WRITE_BUFFER_BYTES: usize = 0;

/// The socket settings every WebSocket endpoint uses (`/ws` and `/yjs`).
pub(super) fn configure(ws: WebSocketUpgrade, max_message_bytes: u32) -> WebSocketUpgrade {
    let max = max_message_bytes as usize;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // One byte over our limit reaches the session, which closes with 1009.
        .max_message_size(max + 1)
        .max_frame_size(max + 1)
}

/// Serves one upgraded socket with `session` until either side closes.
pub(super) async fn drive<P: Protocol>(
    socket: WebSocket,
    app: AppState,
    peer: Arc<Peer>,
    rx: OutboundRx,
    mut session: P,
) {
    let limits = app.config.limits;
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(sink, rx, limits.stall_timeout()));
    let mut liveness = Liveness::new(&limits, peer.meter().clone());
    // One timer for the session's deadlines, re-armed only when the
    // earliest one changes.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed = None;
    // Wakes the session when any token is revoked, to re-check its own.
    let mut revocations = app.auth.revocations().watch();
    tracing::debug!("{} open", P::NAME);
    let mut writer_done = false;
    let flow = loop {
        let deadline = session.next_timer();
        if deadline != armed {
            if let Some(at) = deadline {
                timer.as_mut().reset(at);
            }
            armed = deadline;
        }
        let flow = tokio::select! {
            biased;
            () = app.shutdown.cancelled() => {
                Flow::Close(close::GOING_AWAY, "server shutting down".into())
            }
            // The writer gave up on the socket (it stalled, or failed).
            _ = &mut writer => {
                writer_done = true;
                break None;
            }
            // Before reading: a frame that arrives after a token's expiry
            // finds its rights already gone.
            () = &mut timer, if armed.is_some() => session.on_timer().await,
            Ok(()) = revocations.changed() => session.on_revocation().await,
            outcome = session.next_write(), if session.has_pending_writes() => {
                session.on_write(outcome).await
            }
            () = peer.notified() => session.on_peer_notice().await,
            () = peer.drained(), if session.has_pending_resync() => session.on_drained(),
            () = liveness.due() => liveness.check(&peer),
            msg = stream.next(), if session.can_read() => {
                liveness.heard();
                match msg {
                    Some(Ok(Message::Binary(frame))) => {
                        crate::metrics::received(frame.len());
                        session.on_frame(frame).await
                    }
                    Some(Ok(Message::Text(_))) => {
                        Flow::Close(close::UNSUPPORTED_DATA, "binary frames only".into())
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read error");
                        if is_capacity(&e) {
                            let limit = app.config.max_message_bytes;
                            Flow::Close(close::MESSAGE_TOO_BIG, close::message_too_big(limit))
                        } else {
                            break None;
                        }
                    }
                }
            },
        };
        if let Flow::Close(code, reason) = flow {
            break Some((code, reason));
        }
    };
    session.close();
    if let Some((code, reason)) = flow {
        tracing::debug!(code, %reason, "closing {}", P::NAME);
        session.before_close().await;
        let _ = peer.send(Outbound::Close(code, reason)).await;
        drop(session);
        drop(peer);
        let _ = writer.await;
    } else if !writer_done {
        // The client went away: nothing more can be written.
        writer.abort();
    }
    tracing::debug!("{} closed", P::NAME);
}

/// Whether a read error is a frame over the size limit (close with 1009).
fn is_capacity(e: &axum::Error) -> bool {
    // axum wraps tungstenite's error; its message names the capacity limit.
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("Capacity")
}

/// Pings a connection that has been quiet for the ping interval, and closes
/// it (4031) if, within the ping timeout, it neither sent anything (a pong
/// is enough) nor took anything off its queue. A client that reads but is
/// slow to answer is thus never closed for being slow; one that stopped
/// reading is.
struct Liveness {
    interval: Option<Duration>,
    timeout: Duration,
    meter: Arc<QueueMeter>,
    heard_at: Instant,
    /// When the outstanding ping was queued, and the frames written by then.
    ping: Option<(Instant, u64)>,
    timer: Pin<Box<Sleep>>,
}

impl Liveness {
    fn new(limits: &crate::config::LimitArgs, meter: Arc<QueueMeter>) -> Self {
        let interval = limits.ping_interval();
        let now = Instant::now();
        Self {
            interval,
            timeout: limits.ping_timeout(),
            meter,
            heard_at: now,
            ping: None,
            timer: Box::pin(tokio::time::sleep_until(now + interval.unwrap_or(NEVER))),
        }
    }

    /// Something arrived from the client.
    fn heard(&mut self) {
        self.heard_at = Instant::now();
    }

    /// Resolves when it is time to [`Liveness::check`]; never without pings.
    async fn due(&mut self) {
        if self.interval.is_none() {
            return std::future::pending().await;
        }
        self.timer.as_mut().await;
    }

    /// Sends a ping, or closes the connection that did not answer the last.
    fn check(&mut self, peer: &Peer) -> Flow {
        let Some(interval) = self.interval else {
            return Flow::Continue;
        };
        let now = Instant::now();
        if let Some((sent, written)) = self.ping.take() {
            if self.heard_at < sent && self.meter.written() == written {
                crate::metrics::closed("ping_timeout");
                tracing::debug!(peer = peer.id(), "no pong in time; closing");
                return Flow::Close(close::PING_TIMEOUT, "no pong in time".into());
            }
        }
        let quiet_until = self.heard_at + interval;
        if now < quiet_until {
            self.timer.as_mut().reset(quiet_until);
        } else {
            peer.ping();
            self.ping = Some((now, self.meter.written()));
            self.timer.as_mut().reset(now + self.timeout);
        }
        Flow::Continue
    }
}

/// Drains a connection's queue into the socket, flushing once per batch;
/// stops after writing an [`Outbound::Close`] or when the socket fails. A
/// socket that takes no frame for `stall` is closed (4030, if the close
/// frame still fits) and dropped, which also ends the connection's reader.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, mut rx: OutboundRx, stall: Duration) {
    let mut batch = Vec::with_capacity(MAX_FRAMES_PER_FLUSH);
    while rx.recv_many(&mut batch, MAX_FRAMES_PER_FLUSH).await > 0 {
        for out in batch.drain(..) {
            let written = match out {
                Outbound::Frame(frame) => {
                    let len = frame.len();
                    let written =
                        tokio::time::timeout(stall, sink.feed(Message::Binary(frame))).await;
                    if matches!(written, Ok(Ok(()))) {
                        crate::metrics::sent(len);
                        rx.written(len);
                    }
                    written
                }
                Outbound::Ping => {
                    tokio::time::timeout(stall, sink.feed(Message::Ping(Default::default()))).await
                }
                Outbound::Close(code, reason) => {
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let close = sink.send(Message::Close(Some(frame)));
                    let _ = tokio::time::timeout(CLOSE_FRAME_WAIT, close).await;
                    return;
                }
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => return stalled(sink, stall).await,
            }
        }
        match tokio::time::timeout(stall, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => return stalled(sink, stall).await,
        }
    }
    let _ = sink.close().await;
}

/// The socket took nothing for `stall`: try a close frame, then drop it.
async fn stalled(mut sink: SplitSink<WebSocket, Message>, stall: Duration) {
    crate::metrics::closed("stalled");
    tracing::info!(stall_secs = stall.as_secs(), "socket stalled; closing");
    let frame = CloseFrame {
        code: close::STALLED,
        reason: "stalled: the socket took nothing".into(),
    };
    let _ = tokio::time::timeout(CLOSE_FRAME_WAIT, sink.send(Message::Close(Some(frame)))).await;
}
