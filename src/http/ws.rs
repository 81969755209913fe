//! `GET /ws`: the protobuf WebSocket. Two tasks per connection: this reader
//! loop, which feeds the [`Session`], and a writer that drains the
//! connection's bounded queue into the socket, flushing once per batch
//! rather than once per frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::AppState;
use crate::doc::{Outbound, Peer, Wire};
use crate::session::{close, Flow, Session, SessionLimits};

/// Longest wait for outstanding acks before closing a socket.
const ACK_FLUSH_ON_CLOSE: std::time::Duration = std::time::Duration::from_secs(5);

/// Frames written before one flush at most, so a busy queue still flushes.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// Socket buffer sizes. tungstenite's defaults (128 KiB read) would dominate
/// the memory of an idle connection; messages larger than the buffer still
/// work, the buffer just grows for them.
const READ_BUFFER_BYTES: usize = 4 * 1024;
const WRITE_BUFFER_BYTES: usize = 0;

pub async fn upgrade(ws: WebSocketUpgrade, State(app): State<AppState>) -> Response {
    configure(ws, app.config.max_message_bytes).on_upgrade(move |socket| {
        let id = app.next_connection_id.fetch_add(1, Ordering::Relaxed);
        // Everything logged while serving this socket (session, shards,
        // loads) carries its id; one span per connection, none per message.
        let span = tracing::info_span!("ws", conn = id);
        let tracker = app.connections.clone();
        tracker.track_future(run(socket, app, id).instrument(span))
    })
}

/// The socket settings every WebSocket endpoint uses (`/ws` and `/yjs`).
pub(super) fn configure(ws: WebSocketUpgrade, max_message_bytes: u32) -> WebSocketUpgrade {
    let max = max_message_bytes as usize;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // One byte over our limit reaches the session, which closes with 1009.
        .max_message_size(max + 1)
        .max_frame_size(max + 1)
}

async fn run(socket: WebSocket, app: AppState, id: u64) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(app.config.outbound_queue_frames.max(1));
    let peer = Arc::new(Peer::new(id, Wire::Folio, tx));
    let writer = tokio::spawn(write_loop(sink, rx));
    let limits = SessionLimits {
        max_message_bytes: app.config.max_message_bytes,
        max_docs_per_connection: app.config.max_docs_per_connection,
        max_unacked_updates: app.config.max_unacked_updates,
    };
    let mut session = Session::new(peer.clone(), app.registry.clone(), limits, app.auth.clone());
    // One timer per connection for token expiry, re-armed only when the
    // earliest deadline changes (a Hello, Subscribe, Reauth or expiry).
    let expiry = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(expiry);
    let mut armed = None;
    tracing::debug!("connection open");
    let flow = loop {
        let deadline = session.expiry_deadline();
        if deadline != armed {
            if let Some(at) = deadline {
                expiry.as_mut().reset(at);
            }
            armed = deadline;
        }
        let flow = tokio::select! {
            biased;
            () = app.shutdown.cancelled() => {
                Flow::Close(close::GOING_AWAY, "server shutting down".into())
            }
            // Before reading: a frame that arrives after the deadline finds
            // the rights already gone.
            () = &mut expiry, if armed.is_some() => session.on_expiry().await,
            outcome = session.next_ack(), if session.has_pending_acks() => {
                session.on_ack(outcome).await
            }
            () = peer.lagged() => session.on_lagged().await,
            msg = stream.next(), if session.can_read() => match msg {
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
                        Flow::Close(close::MESSAGE_TOO_BIG, "message too big".into())
                    } else {
                        break None;
                    }
                }
            },
        };
        if let Flow::Close(code, reason) = flow {
            break Some((code, reason));
        }
    };
    session.close();
    // Updates already applied still get their acks before the close, unless
    // the socket is gone; the wait is bounded in case the disk is stuck.
    if let Some((code, reason)) = flow {
        let flush_acks = async {
            while session.has_pending_acks() {
                let outcome = session.next_ack().await;
                if session.on_ack(outcome).await != Flow::Continue {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(ACK_FLUSH_ON_CLOSE, flush_acks).await;
        let _ = peer.send(Outbound::Close(code, reason)).await;
        drop(session);
        drop(peer);
        let _ = writer.await;
    } else {
        // The client went away: nothing more can be written.
        writer.abort();
    }
    tracing::debug!("connection closed");
}

/// Whether a read error is a frame over the size limit (close with 1009).
pub(super) fn is_capacity(e: &axum::Error) -> bool {
    // axum wraps tungstenite's error; its message names the capacity limit.
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("Capacity")
}

/// Drains a connection's queue into the socket, flushing once per batch;
/// stops after writing an [`Outbound::Close`] or when the socket fails.
pub(super) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
) {
    let mut batch = Vec::with_capacity(MAX_FRAMES_PER_FLUSH);
    while rx.recv_many(&mut batch, MAX_FRAMES_PER_FLUSH).await > 0 {
        for out in batch.drain(..) {
            let result = match out {
                Outbound::Frame(frame) => {
                    crate::metrics::sent(frame.len());
                    sink.feed(Message::Binary(frame)).await
                }
                Outbound::Close(code, reason) => {
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            };
            if result.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}
