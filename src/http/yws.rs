//! `GET /yjs/{doc}`: the y-websocket endpoint, so that the standard Yjs
//! provider connects unchanged: `new WebsocketProvider('ws://host:4700/yjs',
//! docId, ydoc)`. The provider puts the room name into the path as it is, so
//! the route takes the whole rest of the path (doc ids may contain `/`). The
//! query string carries the token (`?token=`, the provider's `params`), or an
//! `Authorization: Bearer` header where the client can set one. Same shape
//! as `/ws`: this reader loop feeds a [`YSession`], and the shared writer
//! drains the connection's queue.
//!
//! A refused token is answered after the upgrade, with a close code in the
//! 4400-4499 range (4401 missing or invalid, 4403 another document, 4440
//! expired, 4441 revoked, at the upgrade or later on the open socket), rather than with an HTTP
//! status: the provider sees no status, only a failed connection that it
//! retries forever, whereas a 44xx close stops it and tells the app why.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use futures_util::stream::StreamExt;
use tokio::time::MissedTickBehavior;
use tracing::Instrument as _;

use super::ws::{configure, is_capacity, session_limits, write_loop, Liveness};
use super::{ApiError, AppState, ConnState, ConnectionPermit};
use crate::auth::{Action, AuthError, Principal};
use crate::doc::{DocId, Outbound, Peer, Wire};
use crate::session::Flow;
use crate::ysession::{close, YSession};

/// How often every connection gets a keepalive: half the provider's 30 s
/// "no message received" watchdog, the period of its own awareness renewals.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);

/// Refuses a bad doc id with 400 before upgrading; otherwise upgrades.
pub async fn upgrade(
    State(app): State<AppState>,
    doc: Result<Path<String>, PathRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    uri: Uri,
    permit: Option<Extension<ConnectionPermit>>,
    conn: Option<Extension<Arc<ConnState>>>,
) -> Result<Response, ApiError> {
    let Path(doc) =
        doc.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_doc_id", e.body_text()))?;
    let doc = DocId::parse(&doc)?;
    let ws = ws.map_err(|e| ApiError::new(e.status(), "websocket_required", e.body_text()))?;
    let access = match app.auth.from_http(&headers, &uri) {
        Err(e @ AuthError::Expired) => Err((close::TOKEN_EXPIRED, e.to_string())),
        Err(e @ AuthError::Revoked) => Err((close::TOKEN_REVOKED, e.to_string())),
        Err(e) => Err((close::UNAUTHORIZED, e.to_string())),
        Ok(principal) => match principal.require(Action::Read, &doc) {
            Ok(()) => Ok(principal),
            Err(denied) => Err((close::FORBIDDEN, denied.to_string())),
        },
    };
    // The socket's own stall close applies to this connection from now on.
    let carrying = conn.map(|Extension(c)| c.websocket());
    Ok(
        configure(ws, app.config.max_message_bytes).on_upgrade(move |socket| {
            let id = app.next_connection_id.fetch_add(1, Ordering::Relaxed);
            // One span per connection (its one document), none per message.
            let ip = permit.as_ref().and_then(|Extension(p)| p.ip());
            let span = tracing::info_span!("yws", conn = id, %doc, ip = tracing::field::Empty);
            if let Some(ip) = ip {
                span.record("ip", tracing::field::display(ip));
            }
            let tracker = app.connections.clone();
            tracker.track_future(
                async move {
                    // Held for as long as the socket is open.
                    let _held = (permit, carrying);
                    match access {
                        Ok(principal) => run(socket, app, doc, id, principal).await,
                        Err((code, reason)) => refuse(socket, code, reason).await,
                    }
                }
                .instrument(span),
            )
        }),
    )
}

/// Closes a socket whose token was refused, before it touches any document.
async fn refuse(mut socket: WebSocket, code: u16, reason: String) {
    tracing::debug!(code, %reason, "y-websocket token refused");
    let Flow::Close(code, reason) = crate::ysession::close_with(code, reason) else {
        return;
    };
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn run(socket: WebSocket, app: AppState, doc: DocId, id: u64, principal: Principal) {
    let limits = app.config.limits;
    let (sink, mut stream) = socket.split();
    let (peer, rx) = Peer::channel(id, Wire::YSync, limits.outbound_queue_bytes);
    let mut writer = tokio::spawn(write_loop(sink, rx, limits.stall_timeout()));
    let mut session = YSession::new(
        peer.clone(),
        app.registry.clone(),
        doc.clone(),
        session_limits(&app.config, 1),
    )
    .with_access(principal.sub(), principal.can(Action::Write, &doc));
    let mut liveness = Liveness::new(&limits, peer.meter().clone());
    let mut writer_done = false;
    // No Reauth exists in y-protocols: at expiry the socket closes (4440).
    let expiry = principal
        .remaining()
        .map_or_else(|| tokio::time::sleep(Duration::MAX), tokio::time::sleep);
    tokio::pin!(expiry);
    // Wakes the loop when any token is revoked. Checked once now too: a
    // revocation between the upgrade's check and here has already fired.
    let mut revocations = app.auth.revocations().watch();
    let revoked_now = app.auth.is_revoked(&principal);
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_EVERY,
        KEEPALIVE_EVERY,
    );
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::debug!("y-websocket connection open");
    let flow = loop {
        let rate_resync_at = session
            .rate_resync_at()
            .unwrap_or_else(|| tokio::time::Instant::now() + KEEPALIVE_EVERY);
        let flow = tokio::select! {
            biased;
            () = app.shutdown.cancelled() => {
                Flow::Close(close::GOING_AWAY, "server shutting down".into())
            }
            () = &mut expiry => Flow::Close(close::TOKEN_EXPIRED, "token expired".into()),
            () = std::future::ready(()), if revoked_now => {
                Flow::Close(close::TOKEN_REVOKED, "token revoked".into())
            }
            Ok(()) = revocations.changed() => {
                if app.auth.is_revoked(&principal) {
                    Flow::Close(close::TOKEN_REVOKED, "token revoked".into())
                } else {
                    Flow::Continue
                }
            }
            // The writer gave up on the socket (it stalled, or failed).
            _ = &mut writer => {
                writer_done = true;
                break None;
            }
            outcome = session.next_write(), if session.has_pending_writes() => {
                session.on_write(outcome)
            }
            () = peer.notified() => session.on_peer_notice(),
            () = peer.drained(), if session.has_pending_resync() => session.on_drained(),
            () = tokio::time::sleep_until(rate_resync_at),
                if session.rate_resync_at().is_some() => session.on_rate_resync().await,
            _ = keepalive.tick() => {
                session.on_keepalive();
                Flow::Continue
            }
            () = liveness.due() => liveness.check(&peer),
            msg = stream.next(), if session.can_read() => {
                liveness.heard();
                match msg {
                    Some(Ok(Message::Binary(frame))) => session.on_frame(frame).await,
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
        tracing::debug!(code, %reason, "closing y-websocket connection");
        // Applied updates become durable whether or not we wait: there is no
        // ack to send, so close at once.
        let _ = peer.send(Outbound::Close(code, reason)).await;
        drop(session);
        drop(peer);
        let _ = writer.await;
    } else if !writer_done {
        // The client went away: nothing more can be written.
        writer.abort();
    }
    tracing::debug!("y-websocket connection closed");
}
