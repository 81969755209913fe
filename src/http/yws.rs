//! `GET /yjs/{doc}`: the y-websocket endpoint, so that the standard Yjs
//! provider connects unchanged: `new WebsocketProvider('ws://host:4700/yjs',
//! docId, ydoc)`. The provider puts the room name into the path as it is, so
//! the route takes the whole rest of the path (doc ids may contain `/`). The
//! query string carries the token (`?token=`, the provider's `params`), or an
//! `Authorization: Bearer` header where the client can set one. Same shape
//! as `/ws`: the shared [`driver`](super::driver) serves the socket, feeding
//! a [`YSession`].
//!
//! A refused token is answered after the upgrade, with a close code in the
//! 4400-4499 range (4401 missing or invalid, 4403 another document, 4440
//! expired, 4441 revoked, at the upgrade or later on the open socket), rather than with an HTTP
//! status: the provider sees no status, only a failed connection that it
//! retries forever, whereas a 44xx close stops it and tells the app why.

use std::future::Future;
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
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::driver::{configure, drive, Protocol};
use super::{ApiError, AppState, ConnState, ConnectionPermit};
use crate::auth::{Action, Auth, AuthError, Principal};
use crate::doc::{DocId, Peer, Wire};
use crate::session::{Flow, SessionLimits};
use crate::ysession::{close, WriteOutcome, YSession};

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
    let (peer, rx) = Peer::channel(id, Wire::YSync, limits.outbound_queue_bytes);
    let session = YSession::new(
        peer.clone(),
        app.registry.clone(),
        doc.clone(),
        SessionLimits::from_config(&app.config, 1),
    )
    .with_access(principal.sub(), principal.can(Action::Write, &doc));
    let now = Instant::now();
    let connection = YConnection {
        session,
        // No Reauth exists in y-protocols: at expiry the socket closes (4440).
        expires_at: principal.remaining().map(|left| now + left),
        // A revocation between the upgrade's check and here has already
        // fired its wake-up: check once now.
        revoked_at_open: app.auth.is_revoked(&principal),
        keepalive_at: now + KEEPALIVE_EVERY,
        auth: app.auth.clone(),
        principal,
    };
    drive(socket, app, peer, rx, connection).await;
}

/// A [`YSession`] with what the connection adds: its token's expiry and
/// revocation, and the keepalive.
struct YConnection {
    session: YSession,
    expires_at: Option<Instant>,
    revoked_at_open: bool,
    keepalive_at: Instant,
    auth: Arc<Auth>,
    principal: Principal,
}

impl Protocol for YConnection {
    type Durable = WriteOutcome;
    const NAME: &'static str = "y-websocket connection";

    fn can_read(&self) -> bool {
        self.session.can_read()
    }

    fn on_frame(&mut self, frame: Bytes) -> impl Future<Output = Flow> + Send {
        self.session.on_frame(frame)
    }

    fn has_pending_writes(&self) -> bool {
        self.session.has_pending_writes()
    }

    fn next_write(&mut self) -> impl Future<Output = WriteOutcome> + Send {
        self.session.next_write()
    }

    async fn on_write(&mut self, outcome: WriteOutcome) -> Flow {
        self.session.on_write(outcome)
    }

    async fn on_peer_notice(&mut self) -> Flow {
        self.session.on_peer_notice()
    }

    fn has_pending_resync(&self) -> bool {
        self.session.has_pending_resync()
    }

    fn on_drained(&mut self) -> Flow {
        self.session.on_drained()
    }

    /// The earliest of: now (a token revoked before the loop started), the
    /// token's expiry, the rate limit's resync, the next keepalive.
    fn next_timer(&self) -> Option<Instant> {
        let now = self.revoked_at_open.then(Instant::now);
        [now, self.expires_at, self.session.rate_resync_at()]
            .into_iter()
            .flatten()
            .min()
            .map_or(Some(self.keepalive_at), |at| {
                Some(at.min(self.keepalive_at))
            })
    }

    async fn on_timer(&mut self) -> Flow {
        let now = Instant::now();
        if self.revoked_at_open {
            return Flow::Close(close::TOKEN_REVOKED, "token revoked".into());
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Flow::Close(close::TOKEN_EXPIRED, "token expired".into());
        }
        if self.session.rate_resync_at().is_some_and(|at| now >= at) {
            let flow = self.session.on_rate_resync().await;
            if flow != Flow::Continue {
                return flow;
            }
        }
        if now >= self.keepalive_at {
            self.session.on_keepalive();
            self.keepalive_at = now + KEEPALIVE_EVERY;
        }
        Flow::Continue
    }

    async fn on_revocation(&mut self) -> Flow {
        if self.auth.is_revoked(&self.principal) {
            Flow::Close(close::TOKEN_REVOKED, "token revoked".into())
        } else {
            Flow::Continue
        }
    }

    /// Applied updates become durable whether or not we wait: there is no
    /// ack to send, so the close goes at once.
    async fn before_close(&mut self) {}

    fn close(&mut self) {
        self.session.close();
    }
}
