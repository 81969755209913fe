//! [`YSession`]: one `y-websocket` client's state machine on `/yjs/{doc}`.
//!
//! It speaks the y-protocols sync protocol the standard `y-websocket`
//! provider expects, over the same shards as Folio's own protocol. Like
//! [`crate::session`], it takes frames and durability outcomes, talks to the
//! shard and queues replies on its [`Peer`]; it never touches the socket
//! (`http::yws` is the thin transport around it).
//!
//! The conversation, as the provider has it:
//! 1. client → step 1 (its state vector) and its awareness. The first step 1
//!    subscribes: the shard queues step 2 (what the client lacks), the
//!    server's step 1 and everyone's presence.
//! 2. client → step 2 (what the server lacks), then updates; each is applied,
//!    logged and broadcast by the shard. y-protocols have no acks: a session
//!    only tracks durability to bound its writes in flight and to report a
//!    failed write by closing.
//! 3. awareness both ways. The provider drops a connection that hears
//!    nothing for 30 s; the reference server keeps it alive by echoing each
//!    client's 15 s awareness renewals back to it. Folio sends a tiny no-op
//!    awareness message every 15 s instead ([`YSession::on_keepalive`]):
//!    the provider relays every presence it hears back to the server, so an
//!    echo would send each presence change back to each client twice.
//!
//! Access control happens at the upgrade (`http::yws`: the token in
//! `?token=`); the session only learns its author and whether it may write.
//! A read-only client's step 2 and updates are dropped unapplied: the socket
//! stays open (closing would only make the provider reconnect and send the
//! same step 2 again), and the first non-empty one is answered with a
//! y-protocols "permission denied" auth message, which the provider logs.
//!
//! Frames are parsed with yrs's readers into message boundaries only: each
//! payload is handed to the shard as a slice of the frame, and the shard
//! decodes and checks it once. A bad message closes this socket with a close
//! code (y-protocols have no error message) and never touches the document
//! or the other clients.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::oneshot::error::RecvError;
use yrs::encoding::read::{self, Cursor, Read};
use yrs::sync::protocol::{
    MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2, MSG_SYNC_UPDATE,
};

use crate::doc::{
    decode_guarded, DocId, DocRegistry, DocShard, DropReason, Outbound, Peer, RegistryError,
    ShardError, Wire,
};
use crate::protocol::ysync;
use crate::rate::{self, ConnectionRates};
use crate::session::{Flow, SessionLimits};
use crate::store::{Durable, WriteFailed};

/// WebSocket close codes on `/yjs`. The provider reconnects after any code
/// outside 4400-4499, so each of these is followed by a resync.
pub mod close {
    pub use crate::doc::CLOSE_DOC_RELOADED as DOC_RELOADED;
    /// The document was deleted (`DELETE /docs/{id}`); reconnecting starts
    /// a new, empty document of that name.
    pub const DOC_DELETED: u16 = 4004;
    /// The document does not exist and the token may only read it. Final,
    /// like 4401: the provider stops instead of retrying.
    pub const NOT_FOUND: u16 = 4404;
    pub use crate::session::close::{
        message_too_big, GOING_AWAY, INVALID_PAYLOAD, MESSAGE_TOO_BIG, UNSUPPORTED_DATA,
    };
    /// A write failed or the document could not be opened.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// No token, or an invalid one. In the 4400-4499 range, which the
    /// provider treats as final: it stops reconnecting and emits `closed`,
    /// so the app can set a fresh `params.token` and call `connect()`.
    pub const UNAUTHORIZED: u16 = 4401;
    /// The token does not cover this document. Final, like 4401.
    pub const FORBIDDEN: u16 = 4403;
    /// The token expired while the socket was open. Final, like 4401:
    /// reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4440;
    /// The token was revoked (by its `jti` or its `sub`), at the upgrade or
    /// while the socket was open. Final, like 4401: reconnect with a token
    /// that is not revoked.
    pub const TOKEN_REVOKED: u16 = 4441;
    /// The server holds all the documents it may and cannot load this one.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub use crate::session::close::{PING_TIMEOUT, STALLED};
    /// An update would make the document larger than the server allows.
    /// In the 4400-4499 range, so the provider does not reconnect only to
    /// send the same update again.
    pub const DOC_TOO_LARGE: u16 = 4413;
}

/// Longest close reason in bytes: a close frame's payload is at most 125
/// bytes, two of which are the code.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Set in the peer id of a probe (see [`YSession::probe`]), so that it never
/// equals a connection's id, which counts up from 1.
const PROBE_ID_BIT: u64 = 1 << 63;

/// Bytes a probe's queue holds. The frames of a subscription go in whatever
/// their size; broadcasts that land in the instant it is subscribed may not.
const PROBE_QUEUE_BYTES: usize = 64 * 1024;

/// The encoded empty Yjs update (no structs, no deletions). Clients with
/// nothing to send answer step 1 with it: there is nothing to apply.
const EMPTY_UPDATE: &[u8] = &[0, 0];

/// An awareness update with no clients in it: the keepalive, and the answer
/// to an awareness query when nobody has presence. The provider applies it
/// as a no-op, but it counts as a message heard.
const EMPTY_AWARENESS: &[u8] = &[0];

/// One y-protocols message, its payload as a range of the frame.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    SyncStep1(Range<usize>),
    SyncStep2(Range<usize>),
    Update(Range<usize>),
    Awareness(Range<usize>),
    QueryAwareness,
    /// Auth (from server to client in y-protocols) or a type this server
    /// does not know: its layout is not ours to know, so the rest of the
    /// frame is skipped.
    Skip(u32),
}

/// Reads the next message of a frame.
fn next_message(cursor: &mut Cursor<'_>) -> Result<Inbound, read::Error> {
    let tag: u32 = cursor.read_var()?;
    match tag {
        t if t == u32::from(MSG_SYNC) => {
            let sub: u32 = cursor.read_var()?;
            match sub {
                s if s == u32::from(MSG_SYNC_STEP_1) => Ok(Inbound::SyncStep1(payload(cursor)?)),
                s if s == u32::from(MSG_SYNC_STEP_2) => Ok(Inbound::SyncStep2(payload(cursor)?)),
                s if s == u32::from(MSG_SYNC_UPDATE) => Ok(Inbound::Update(payload(cursor)?)),
                _ => Err(read::Error::UnexpectedValue),
            }
        }
        t if t == u32::from(MSG_AWARENESS) => Ok(Inbound::Awareness(payload(cursor)?)),
        t if t == u32::from(MSG_QUERY_AWARENESS) => Ok(Inbound::QueryAwareness),
        // Auth (MSG_AUTH) goes from server to client in y-protocols.
        t => Ok(Inbound::Skip(t)),
    }
}

/// Reads a length-prefixed payload and returns where it is in the frame.
fn payload(cursor: &mut Cursor<'_>) -> Result<Range<usize>, read::Error> {
    let len = cursor.read_buf()?.len();
    Ok(cursor.next - len..cursor.next)
}

/// An applied update's durability: `Err` if the writer dropped it unanswered.
pub type WriteOutcome = Result<Result<(), WriteFailed>, RecvError>;

/// What the shard would send a new subscriber: see [`YSession::probe`].
struct Probe {
    step2: Bytes,
    awareness: Option<Bytes>,
    step1: Bytes,
}

/// Answers a frame owes once all its messages are handled: several step 1s
/// or awareness queries in one frame get one answer, so that a frame of
/// thousands of one-byte queries costs one probe, not thousands.
#[derive(Default)]
struct Deferred {
    /// The last state vector of a step 1 after the first (a resync).
    step1: Option<Bytes>,
    query_awareness: bool,
}

/// One y-websocket client of one document. See the module docs.
pub struct YSession {
    peer: Arc<Peer>,
    registry: Arc<DocRegistry>,
    doc: DocId,
    limits: SessionLimits,
    /// Recorded as the author of this connection's updates and presence.
    author: String,
    /// The token allows updates. Otherwise they are dropped (module docs).
    can_write: bool,
    /// The client was told once that its updates are refused.
    told_read_only: bool,
    /// The shard, once the client's first message subscribed it.
    shard: Option<Arc<DocShard>>,
    /// Applied updates not yet durable. At most `max_unacked_updates`.
    writes: FuturesOrdered<Durable>,
    /// We sent the client a step 1 and its step 2 has not come back. Until
    /// then an update with missing dependencies is expected (typed between
    /// the client's step 1 and ours) and the coming step 2 will cover it.
    step2_due: bool,
    rates: ConnectionRates,
    /// Set when an update was dropped for the rate limit: at this time (when
    /// the bucket has refilled) the client is sent our step 1, and its step
    /// 2 brings back what was dropped.
    rate_resync: Option<tokio::time::Instant>,
    /// The shard left this connection behind: resync once the queue drains.
    resync_due: bool,
}

impl YSession {
    /// A session for `doc` that has not subscribed yet.
    pub fn new(
        peer: Arc<Peer>,
        registry: Arc<DocRegistry>,
        doc: DocId,
        limits: SessionLimits,
    ) -> Self {
        debug_assert_eq!(peer.wire(), Wire::YSync);
        let author = format!("yjs-conn-{}", peer.id());
        Self {
            peer,
            registry,
            doc,
            limits,
            author,
            can_write: true,
            told_read_only: false,
            shard: None,
            writes: FuturesOrdered::new(),
            step2_due: false,
            rates: ConnectionRates::new(&limits.rates),
            rate_resync: None,
            resync_due: false,
        }
    }

    /// Whether the shard left this connection behind (see [`YSession::on_drained`]).
    pub fn has_pending_resync(&self) -> bool {
        self.resync_due
    }

    /// The queue has drained: the shard sends what the client missed as a
    /// sync step 2 (and everyone's presence). If it does not fit yet, the
    /// next drain tries again.
    pub fn on_drained(&mut self) -> Flow {
        let Some(shard) = self.shard.clone() else {
            self.resync_due = false;
            return Flow::Continue;
        };
        match shard.resync(self.peer.id()) {
            Ok(_) => {
                self.resync_due = false;
                Flow::Continue
            }
            Err(ShardError::SlowConsumer) => Flow::Continue,
            Err(e) => {
                self.resync_due = false;
                self.shard_error(&shard, e)
            }
        }
    }

    /// When to ask the client for what the rate limit dropped, if anything was.
    pub fn rate_resync_at(&self) -> Option<tokio::time::Instant> {
        self.rate_resync
    }

    /// Asks the client for what the rate limit dropped: our step 1, to
    /// which it answers with a step 2 holding everything we lack.
    pub async fn on_rate_resync(&mut self) -> Flow {
        self.rate_resync = None;
        let Some(shard) = self.shard.clone() else {
            return Flow::Continue;
        };
        if self.step2_due {
            // A step 1 is out already; its answer covers the dropped updates.
            return Flow::Continue;
        }
        match self.probe(&shard, &[]) {
            Ok(probe) => {
                self.step2_due = true;
                self.reply(probe.step1).await
            }
            Err(e) => self.shard_error(&shard, e),
        }
    }

    fn rate_limited(&mut self, kind: rate::Kind, wait: Duration) {
        tracing::debug!(peer = self.peer.id(), doc = %self.doc, ?kind, "rate limited; dropped");
        crate::metrics::rate_limited(kind);
        if kind == rate::Kind::Update && self.rate_resync.is_none() {
            self.rate_resync = Some(tokio::time::Instant::now() + wait);
        }
    }

    /// Applies what the connection's token allows: its `sub` (if any)
    /// becomes the author, and without the write role updates are dropped.
    #[must_use]
    pub fn with_access(mut self, sub: Option<&str>, can_write: bool) -> Self {
        if let Some(sub) = sub {
            self.author = sub.to_owned();
        }
        self.can_write = can_write;
        self
    }

    /// Whether the transport may read another frame: not while
    /// `max_unacked_updates` writes are in flight, the same bound as `/ws`.
    pub fn can_read(&self) -> bool {
        self.writes.len() < self.limits.max_unacked_updates as usize
    }

    /// Whether any applied update is waiting to become durable.
    pub fn has_pending_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// The next durability outcome; pending forever when there is none.
    pub async fn next_write(&mut self) -> WriteOutcome {
        match self.writes.next().await {
            Some(outcome) => outcome,
            None => std::future::pending().await,
        }
    }

    /// Handles a durability outcome. There is no ack to send; a failed write
    /// closes the socket, the only way to tell a y-websocket client.
    pub fn on_write(&mut self, outcome: WriteOutcome) -> Flow {
        match outcome {
            Ok(Ok(())) => Flow::Continue,
            Ok(Err(e)) => {
                tracing::warn!(peer = self.peer.id(), doc = %self.doc, error = %e, "write failed");
                close_with(close::INTERNAL_ERROR, "storage failure")
            }
            Err(_) => close_with(close::INTERNAL_ERROR, "the store writer stopped"),
        }
    }

    /// What the shard told this connection's peer: it fell behind (resync
    /// once the queue drains), or it was dropped because the document is
    /// being reloaded or was deleted: close, and the provider reconnects and
    /// resyncs by state vector, which loses nothing.
    pub fn on_peer_notice(&mut self) -> Flow {
        if self.peer.take_behind().contains(&self.doc) {
            self.resync_due = true;
        }
        let dropped = self.peer.take_dropped();
        let Some((_, reason)) = dropped.iter().find(|(doc, _)| *doc == self.doc) else {
            return Flow::Continue;
        };
        self.shard = None;
        self.resync_due = false;
        match reason {
            DropReason::Reloaded => close_with(close::DOC_RELOADED, "document reloaded"),
            DropReason::Deleted => close_with(close::DOC_DELETED, "document deleted"),
        }
    }

    /// A keepalive tick: the transport calls it well within the provider's
    /// 30 s "no message received" watchdog, so that a quiet but healthy
    /// connection is not dropped. Never waits: a full queue means the client
    /// has plenty to hear already.
    pub fn on_keepalive(&self) {
        let _ = self.peer.try_send(ysync::awareness(EMPTY_AWARENESS));
    }

    /// Handles one binary frame: one or more y-protocols messages.
    pub async fn on_frame(&mut self, frame: Bytes) -> Flow {
        if frame.len() > self.limits.max_message_bytes as usize {
            let reason = close::message_too_big(self.limits.max_message_bytes);
            return close_with(close::MESSAGE_TOO_BIG, reason);
        }
        if frame.is_empty() {
            return close_with(close::INVALID_PAYLOAD, "empty frame");
        }
        let mut cursor = Cursor::new(&frame);
        let mut deferred = Deferred::default();
        while cursor.has_content() {
            let msg = match decode_guarded(|| next_message(&mut cursor)) {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::debug!(peer = self.peer.id(), error = %e, "malformed message");
                    return close_with(close::INVALID_PAYLOAD, format!("malformed message: {e}"));
                }
            };
            let flow = match msg {
                Inbound::SyncStep1(sv) if self.shard.is_none() => {
                    self.subscribe(&frame.slice(sv)).await
                }
                Inbound::SyncStep1(sv) => {
                    deferred.step1 = Some(frame.slice(sv));
                    Flow::Continue
                }
                Inbound::SyncStep2(update) => {
                    // The answer to our step 1 is the recovery of whatever
                    // the rate limit dropped: never dropped itself, or a
                    // client typing over the rate would starve it. One per
                    // step 1 sent, so it is no way around the limit.
                    let check = if self.step2_due {
                        RateCheck::Exempt
                    } else {
                        RateCheck::Apply
                    };
                    let flow = self.apply(frame.slice(update), check).await;
                    self.step2_due = false;
                    flow
                }
                Inbound::Update(update) => self.apply(frame.slice(update), RateCheck::Apply).await,
                Inbound::Awareness(update) => self.awareness(frame.slice(update)).await,
                Inbound::QueryAwareness => {
                    deferred.query_awareness = true;
                    self.ensure_subscribed().await
                }
                Inbound::Skip(tag) => {
                    tracing::debug!(peer = self.peer.id(), tag, "message type ignored");
                    break;
                }
            };
            if flow != Flow::Continue {
                return flow;
            }
        }
        self.answer(deferred).await
    }

    /// Ends the subscription, removing this client's presence. Call once
    /// when the socket closes.
    pub fn close(&mut self) {
        if let Some(shard) = self.shard.take() {
            shard.unsubscribe(self.peer.id());
        }
    }

    /// Subscribes to the document with the client's state vector; the shard
    /// queues step 2, its own step 1 and the current presence.
    async fn subscribe(&mut self, state_vector: &[u8]) -> Flow {
        // A shard can close between lookup and subscribe (idle eviction):
        // look it up again; bounded because a fresh shard is not idle.
        for _ in 0..3 {
            // Only a writer brings a missing document into being; a reader
            // of one gets a not-found close.
            let shard = match self.registry.get(&self.doc, self.can_write).await {
                Ok(shard) => shard,
                Err(e) => return self.registry_error(e),
            };
            match shard.subscribe(&self.peer, &self.author, state_vector) {
                Ok(()) => {
                    self.shard = Some(shard);
                    self.step2_due = true;
                    // The answer went in whatever the room: read nothing
                    // more until the queue is under its bound.
                    self.peer.room().await;
                    return Flow::Continue;
                }
                Err(ShardError::Closed) => continue,
                Err(e) => return self.shard_error(&shard, e),
            }
        }
        close_with(close::INTERNAL_ERROR, "document kept closing")
    }

    /// A client that talks before its step 1 gets subscribed as if it had
    /// sent an empty one (it then receives the whole document): the provider
    /// always starts with step 1, but y-protocols do not require it.
    async fn ensure_subscribed(&mut self) -> Flow {
        if self.shard.is_some() {
            return Flow::Continue;
        }
        self.subscribe(&[]).await
    }

    async fn apply(&mut self, update: Bytes, check: RateCheck) -> Flow {
        if let flow @ Flow::Close(..) = self.ensure_subscribed().await {
            return flow;
        }
        let Some(shard) = self.shard.clone() else {
            return Flow::Continue;
        };
        if update.as_ref() == EMPTY_UPDATE {
            return Flow::Continue;
        }
        if !self.can_write {
            return self.refuse_read_only().await;
        }
        if check == RateCheck::Apply {
            if let Err(wait) = self.rates.check(rate::Kind::Update) {
                // y-protocols have no error message: drop it, and ask for it
                // back (step 1) once the bucket refills.
                self.rate_limited(rate::Kind::Update, wait);
                return Flow::Continue;
            }
        }
        match shard
            .apply_update(update, &self.author, Some(self.peer.id()))
            .await
        {
            Ok(applied) => {
                self.writes.push_back(applied.durable);
                Flow::Continue
            }
            Err(ShardError::MissingDependencies) => self.on_missing_dependencies(&shard).await,
            Err(e) => self.shard_error(&shard, e),
        }
    }

    /// An update that builds on changes the document lacks changes nothing.
    /// Right after subscribing that is expected (see `step2_due`); otherwise
    /// the client is sent the server's step 1, and its step 2 fills the gap,
    /// which is what the y-websocket server achieves by keeping such updates
    /// pending.
    async fn on_missing_dependencies(&mut self, shard: &DocShard) -> Flow {
        tracing::debug!(
            peer = self.peer.id(),
            doc = %self.doc,
            step2_due = self.step2_due,
            "update with missing dependencies"
        );
        if self.step2_due {
            return Flow::Continue;
        }
        match self.probe(shard, &[]) {
            Ok(probe) => {
                self.step2_due = true;
                self.reply(probe.step1).await
            }
            Err(e) => self.shard_error(shard, e),
        }
    }

    /// Drops an update from a read-only client, telling it the first time.
    async fn refuse_read_only(&mut self) -> Flow {
        crate::metrics::error(crate::protocol::ErrorCode::ReadOnly);
        tracing::debug!(peer = self.peer.id(), doc = %self.doc, "read-only: update dropped");
        if self.told_read_only {
            return Flow::Continue;
        }
        self.told_read_only = true;
        self.reply(ysync::permission_denied(
            "read-only token: updates are not applied",
        ))
        .await
    }

    async fn awareness(&mut self, update: Bytes) -> Flow {
        if let flow @ Flow::Close(..) = self.ensure_subscribed().await {
            return flow;
        }
        let Some(shard) = self.shard.clone() else {
            return Flow::Continue;
        };
        if let Err(wait) = self.rates.check(rate::Kind::Awareness) {
            // Dropped: the provider renews its presence every 15 s anyway.
            self.rate_limited(rate::Kind::Awareness, wait);
            return Flow::Continue;
        }
        match shard.apply_awareness(update, self.peer.id()) {
            Ok(()) => Flow::Continue,
            Err(e) => self.shard_error(&shard, e),
        }
    }

    /// Answers a frame's later step 1s (with step 2: what the client lacks)
    /// and awareness queries (with everyone's presence).
    async fn answer(&mut self, deferred: Deferred) -> Flow {
        if deferred.step1.is_none() && !deferred.query_awareness {
            return Flow::Continue;
        }
        let Some(shard) = self.shard.clone() else {
            return Flow::Continue;
        };
        let state_vector = deferred.step1.clone().unwrap_or_default();
        let probe = match self.probe(&shard, &state_vector) {
            Ok(probe) => probe,
            Err(e) => return self.shard_error(&shard, e),
        };
        if deferred.step1.is_some() {
            if let flow @ Flow::Close(..) = self.reply(probe.step2).await {
                return flow;
            }
        }
        if deferred.query_awareness {
            let awareness = probe
                .awareness
                .unwrap_or_else(|| ysync::awareness(EMPTY_AWARENESS));
            return self.reply(awareness).await;
        }
        Flow::Continue
    }

    /// What the shard sends a new subscriber with `state_vector`: step 2 for
    /// it, the server's step 1 and everyone's presence, which is how a
    /// repeated step 1 or an awareness query is answered.
    ///
    /// The shard offers no other way to compute a diff or read its
    /// awareness, so this subscribes a throwaway peer and unsubscribes it at
    /// once. The probe has no presence, so its leaving tells nobody anything.
    /// A broadcast that lands between the two calls is simply dropped with
    /// the probe; one that lands when nobody had presence may stand in for
    /// the (then empty) presence, which it is, as of that instant.
    fn probe(&self, shard: &DocShard, state_vector: &[u8]) -> Result<Probe, ShardError> {
        let (probe, mut rx) = Peer::channel(
            PROBE_ID_BIT | self.peer.id(),
            Wire::YSync,
            PROBE_QUEUE_BYTES,
        );
        let subscribed = shard.subscribe(&probe, &self.author, state_vector);
        shard.unsubscribe(probe.id());
        subscribed?;
        let mut frame = || match rx.try_recv() {
            Some(Outbound::Frame(frame)) => Some(frame),
            _ => None,
        };
        let (Some(step2), Some(step1)) = (frame(), frame()) else {
            return Err(ShardError::Closed);
        };
        let awareness = frame().filter(|f| f.first() == Some(&MSG_AWARENESS));
        Ok(Probe {
            step2,
            awareness,
            step1,
        })
    }

    fn registry_error(&self, e: RegistryError) -> Flow {
        tracing::warn!(doc = %self.doc, error = %e, "could not open document");
        match e {
            RegistryError::Shard(ShardError::ShuttingDown) => {
                close_with(close::GOING_AWAY, "server shutting down")
            }
            RegistryError::Busy(_) => close_with(
                close::TRY_AGAIN_LATER,
                "server busy: too many documents in use; try again later",
            ),
            RegistryError::Deleted(_) | RegistryError::Deleting(_) => {
                close_with(close::DOC_DELETED, "document deleted")
            }
            RegistryError::NotFound(_) => close_with(
                close::NOT_FOUND,
                "no such document, and a read-only token cannot create it",
            ),
            _ => close_with(close::INTERNAL_ERROR, "could not open the document"),
        }
    }

    /// The close for a shard's refusal. The refused operation changed nothing.
    fn shard_error(&mut self, shard: &DocShard, e: ShardError) -> Flow {
        tracing::debug!(peer = self.peer.id(), doc = %self.doc, error = %e, "refused");
        if shard.is_closed() {
            self.registry.forget(shard);
            self.shard = None;
        }
        match e {
            ShardError::InvalidUpdate(_)
            | ShardError::InvalidAwareness(_)
            | ShardError::InvalidStateVector(_)
            | ShardError::MissingDependencies => close_with(close::INVALID_PAYLOAD, e.to_string()),
            // The shard dropped us for lagging just before we asked.
            ShardError::NotSubscribed | ShardError::SlowConsumer => {
                self.shard = None;
                close_with(
                    close::TRY_AGAIN_LATER,
                    "fell behind the document; reconnect to resync",
                )
            }
            ShardError::Closed => {
                self.shard = None;
                close_with(close::DOC_RELOADED, "document reloaded")
            }
            ShardError::ShuttingDown => close_with(close::GOING_AWAY, "server shutting down"),
            ShardError::TooLarge { .. } => close_with(close::DOC_TOO_LARGE, e.to_string()),
            ShardError::AlreadySubscribed
            | ShardError::Corrupt(_)
            | ShardError::NotEmpty
            | ShardError::Busy => {
                tracing::error!(doc = %self.doc, error = %e, "document fault");
                close_with(close::INTERNAL_ERROR, "internal error")
            }
        }
    }

    /// Queues a frame for this client, waiting for room: a client that does
    /// not read stops being read.
    async fn reply(&mut self, frame: Bytes) -> Flow {
        match self.peer.send(Outbound::Frame(frame)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close(close::GOING_AWAY, "connection closed".into()),
        }
    }
}

/// A close with `reason` cut to what a close frame can carry.
/// Whether an update takes a token from the connection's update bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateCheck {
    Apply,
    /// The step 2 that answers our own step 1.
    Exempt,
}

pub(crate) fn close_with(code: u16, reason: impl Into<String>) -> Flow {
    let mut reason = reason.into();
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        let mut cut = MAX_CLOSE_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Flow::Close(code, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::sync::protocol::MSG_AUTH;
    use yrs::updates::decoder::Decode;

    fn parse(frame: &[u8]) -> Result<Vec<Inbound>, String> {
        let mut cursor = Cursor::new(frame);
        let mut out = Vec::new();
        while cursor.has_content() {
            let msg = decode_guarded(|| next_message(&mut cursor))?;
            let skip = matches!(msg, Inbound::Skip(_));
            out.push(msg);
            if skip {
                break;
            }
        }
        Ok(out)
    }

    #[test]
    fn frames_split_into_messages_with_payload_ranges() {
        let mut frame = ysync::step1(&[0]).to_vec();
        frame.extend_from_slice(&ysync::awareness(&[0]));
        frame.extend_from_slice(&ysync::update(&[0, 0]));
        frame.push(MSG_QUERY_AWARENESS);
        assert_eq!(
            parse(&frame),
            Ok(vec![
                Inbound::SyncStep1(3..4),
                Inbound::Awareness(6..7),
                Inbound::Update(10..12),
                Inbound::QueryAwareness,
            ])
        );
    }

    #[test]
    fn truncated_or_unknown_sync_messages_are_malformed() {
        // An update announcing 5 bytes and carrying 2.
        assert!(parse(&[0, 2, 5, 0, 0]).is_err());
        // A sync message of sub-type 7.
        assert!(parse(&[0, 7, 0]).is_err());
        // A tag that is not a varint.
        assert!(parse(&[0xff, 0xff, 0xff]).is_err());
        // A second message cut short after a good one.
        let mut frame = ysync::update(&[0, 0]).to_vec();
        frame.push(MSG_SYNC);
        assert!(parse(&frame).is_err());
    }

    #[test]
    fn auth_and_unknown_types_end_the_frame() {
        assert_eq!(
            parse(&[MSG_AUTH, 1, 0xff, 0xff]),
            Ok(vec![Inbound::Skip(2)])
        );
        assert_eq!(parse(&[42, 0xff]), Ok(vec![Inbound::Skip(42)]));
    }

    #[test]
    fn the_keepalive_is_an_awareness_message_about_nobody() {
        let msg =
            yrs::sync::Message::decode_v1(&ysync::awareness(EMPTY_AWARENESS)).expect("decodes");
        assert!(matches!(msg, yrs::sync::Message::Awareness(u) if u.clients.is_empty()));
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let Flow::Close(_, reason) = close_with(1007, "é".repeat(100)) else {
            panic!("not a close");
        };
        assert!(reason.len() <= MAX_CLOSE_REASON_BYTES);
        assert!(reason.chars().all(|c| c == 'é'));
    }
}
