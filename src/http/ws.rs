//! `GET /ws`: the protobuf WebSocket. The shared [`driver`](super::driver)
//! serves the socket; this file upgrades it and says how a [`Session`]
//! answers the driver's events.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocket;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::driver::{configure, drive, Protocol};
use super::{AppState, ConnState, ConnectionPermit};
use crate::doc::{Peer, Wire};
use crate::session::{AckOutcome, Flow, Session, SessionLimits};

/// Longest wait for outstanding acks before closing a socket.
const ACK_FLUSH_ON_CLOSE: Duration = Duration::from_secs(5);

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<AppState>,
    permit: Option<Extension<ConnectionPermit>>,
    conn: Option<Extension<Arc<ConnState>>>,
) -> Response {
    // The socket's own stall close applies to this connection from now on.
    let carrying = conn.map(|Extension(c)| c.websocket());
    configure(ws, app.config.max_message_bytes).on_upgrade(move |socket| {
        let id = app.next_connection_id.fetch_add(1, Ordering::Relaxed);
        // Everything logged while serving this socket (session, shards,
        // loads) carries its id; one span per connection, none per message.
        let ip = permit.as_ref().and_then(|Extension(p)| p.ip());
        let span = tracing::info_span!("ws", conn = id, ip = tracing::field::Empty);
        if let Some(ip) = ip {
            span.record("ip", tracing::field::display(ip));
        }
        let tracker = app.connections.clone();
        tracker.track_future(
            async move {
                // Held for as long as the socket is open.
                let _held = (permit, carrying);
                run(socket, app, id).await;
            }
            .instrument(span),
        )
    })
}

async fn run(socket: WebSocket, app: AppState, id: u64) {
    let limits = app.config.limits;
    let (peer, rx) = Peer::channel(id, Wire::Folio, limits.outbound_queue_bytes);
    let session = Session::new(
        peer.clone(),
        app.registry.clone(),
        SessionLimits::from_config(&app.config, app.config.max_docs_per_connection),
        app.auth.clone(),
    );
    drive(socket, app, peer, rx, session).await;
}

impl Protocol for Session {
    type Durable = AckOutcome;
    const NAME: &'static str = "connection";

    fn can_read(&self) -> bool {
        Session::can_read(self)
    }

    fn on_frame(&mut self, frame: Bytes) -> impl Future<Output = Flow> + Send {
        Session::on_frame(self, frame)
    }

    fn has_pending_writes(&self) -> bool {
        self.has_pending_acks()
    }

    fn next_write(&mut self) -> impl Future<Output = AckOutcome> + Send {
        self.next_ack()
    }

    fn on_write(&mut self, outcome: AckOutcome) -> impl Future<Output = Flow> + Send {
        self.on_ack(outcome)
    }

    fn on_peer_notice(&mut self) -> impl Future<Output = Flow> + Send {
        Session::on_peer_notice(self)
    }

    fn has_pending_resync(&self) -> bool {
        Session::has_pending_resync(self)
    }

    fn on_drained(&mut self) -> Flow {
        Session::on_drained(self)
    }

    /// The earliest expiry of a token in use (a Hello, Subscribe or Reauth
    /// moves it).
    fn next_timer(&self) -> Option<Instant> {
        self.expiry_deadline()
    }

    fn on_timer(&mut self) -> impl Future<Output = Flow> + Send {
        self.on_expiry()
    }

    fn on_revocation(&mut self) -> impl Future<Output = Flow> + Send {
        Session::on_revocation(self)
    }

    /// Updates already applied still get their acks before the close; the
    /// wait is bounded in case the disk is stuck.
    async fn before_close(&mut self) {
        let flush_acks = async {
            while self.has_pending_acks() {
                let outcome = self.next_ack().await;
                if self.on_ack(outcome).await != Flow::Continue {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(ACK_FLUSH_ON_CLOSE, flush_acks).await;
    }

    fn close(&mut self) {
        Session::close(self);
    }
}
