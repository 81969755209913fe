//! [`Session`]: one WebSocket client's protocol state machine.
//!
//! It takes decoded frames and durability completions, talks to shards, and
//! queues replies on its [`Peer`]; it never touches the socket, so the
//! transport around it (`http::ws`) stays a thin loop. A bad message ends at
//! most this session, never a shard or another client.
//!
//! Access control: each subscription keeps the `Grant` (verified token)
//! that opened it, from `Subscribe.token` or else the connection's token
//! (`Hello` or `Reauth`). Tokens are verified only when they arrive; an
//! `Update` costs one role comparison, and expiry is a deadline the
//! transport sleeps on ([`Session::expiry_deadline`], [`Session::on_expiry`]).
//! Revocation ends grants the same way, when the transport sees the
//! revocation epoch change ([`Session::on_revocation`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use prost::Message;
use tokio::time::Instant;

use crate::auth::{Action, Auth, AuthError, Principal, Role};
use crate::doc::{
    DocId, DocRegistry, DocShard, DropReason, Outbound, Peer, RegistryError, ShardError,
};
use crate::protocol::{
    self, client_message, server_message::Kind, v1, ClientMessage, ErrorCode, PROTOCOL_VERSION,
};
use crate::rate::{self, ConnectionRates, Rates};
use crate::store::WriteFailed;

/// WebSocket close codes the server uses.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Wrong protocol version.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame: only binary frames are accepted.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame that is not a decodable `ClientMessage`.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message before `Hello`, or a second `Hello`.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The reason sent with [`MESSAGE_TOO_BIG`], naming the limit.
    pub fn message_too_big(limit: u32) -> String {
        format!("message too big: limit {limit} bytes")
    }
    /// The socket took no bytes for the stall timeout while data waited.
    pub const STALLED: u16 = 4030;
    /// Nothing came back, not even a pong, within the ping timeout.
    pub const PING_TIMEOUT: u16 = 4031;
}

/// How a message says why a grant ended.
fn ended_word(code: ErrorCode) -> &'static str {
    if code == ErrorCode::TokenRevoked {
        "was revoked"
    } else {
        "expired"
    }
}

/// Longest client name kept, in bytes; longer names are cut.
const MAX_CLIENT_NAME_BYTES: usize = 128;

/// Limits one session enforces, announced in `Welcome`.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_message_bytes: u32,
    pub max_docs_per_connection: u32,
    pub max_unacked_updates: u32,
    /// Enforced by the shards; only announced here.
    pub max_doc_bytes: u64,
    pub rates: Rates,
}

impl SessionLimits {
    /// The limits a session on a server with `config` enforces, following
    /// at most `max_docs` documents (`/ws`: `max_docs_per_connection`;
    /// `/yjs`: 1).
    pub fn from_config(config: &crate::config::ServeConfig, max_docs: u32) -> Self {
        let limits = &config.limits;
        Self {
            max_message_bytes: config.max_message_bytes,
            max_docs_per_connection: max_docs,
            max_unacked_updates: config.max_unacked_updates,
            max_doc_bytes: limits.max_doc_bytes,
            rates: Rates {
                updates_per_sec: limits.updates_per_sec,
                update_burst: limits.update_burst,
                awareness_per_sec: limits.awareness_per_sec,
                awareness_burst: limits.awareness_burst,
            },
        }
    }
}

/// What the transport does after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Close the socket with this code and reason.
    Close(u16, String),
}

/// An update's durability outcome, in the order the updates were sent.
pub struct AckOutcome {
    doc: DocId,
    seq: u64,
    doc_seq: u64,
    result: Result<(), WriteFailed>,
}

type AckFuture = Pin<Box<dyn Future<Output = AckOutcome> + Send>>;

/// A verified token as a session holds it: what it allows, and the instant
/// it stops allowing it (on the runtime's clock, for the expiry timer).
#[derive(Clone)]
struct Grant {
    principal: Arc<Principal>,
    /// `None`: never expires (open mode).
    deadline: Option<Instant>,
}

impl Grant {
    fn new(principal: Principal) -> Self {
        // An expiry too far ahead for the clock to represent is "never".
        let deadline = principal
            .remaining()
            .and_then(|left| Instant::now().checked_add(left));
        Self {
            principal: Arc::new(principal),
            deadline,
        }
    }

    fn expired_at(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

/// A document this session follows, and the grant that lets it.
struct Subscription {
    shard: Arc<DocShard>,
    grant: Grant,
}

/// One client's session. See the module docs.
pub struct Session {
    peer: Arc<Peer>,
    registry: Arc<DocRegistry>,
    limits: SessionLimits,
    auth: Arc<Auth>,
    /// The author recorded for this session's updates and presence: the
    /// client name from `Hello`, replaced by the token's `sub` if it has one.
    /// `None` until `Hello`.
    author: Option<String>,
    /// The `sub` of the first token this connection presented. Every later
    /// token must name the same user, so one socket has one author.
    identity: Option<Option<String>>,
    /// The connection's token (from `Hello` or `Reauth`); in open mode, the
    /// open principal.
    grant: Option<Grant>,
    /// The connection's token expired (`TOKEN_EXPIRED`) or was revoked
    /// (`TOKEN_REVOKED`) and no `Reauth` came since.
    grant_ended: Option<ErrorCode>,
    subs: HashMap<DocId, Subscription>,
    /// Documents whose subscription an expiry or a revocation ended, with
    /// that code, so that late messages for them get it rather than
    /// `NOT_SUBSCRIBED`. Cleared by `Reauth`; at most
    /// `max_docs_per_connection` entries (past that, late messages get
    /// `NOT_SUBSCRIBED`, which asks for the same fix).
    ended_docs: HashMap<DocId, ErrorCode>,
    /// The earliest deadline among the grants in use, recomputed whenever
    /// they change, so the transport's timer never scans them.
    next_expiry: Option<Instant>,
    /// Updates applied but not yet durable. At most `max_unacked_updates`.
    acks: FuturesOrdered<AckFuture>,
    rates: ConnectionRates,
    /// Documents this connection fell behind, to resync once its queue
    /// drains. At most one entry per subscription.
    resync: Vec<DocId>,
}

impl Session {
    /// A session that has not said `Hello` yet.
    pub fn new(
        peer: Arc<Peer>,
        registry: Arc<DocRegistry>,
        limits: SessionLimits,
        auth: Arc<Auth>,
    ) -> Self {
        Self {
            peer,
            registry,
            limits,
            auth,
            author: None,
            identity: None,
            grant: None,
            grant_ended: None,
            subs: HashMap::new(),
            ended_docs: HashMap::new(),
            next_expiry: None,
            acks: FuturesOrdered::new(),
            rates: ConnectionRates::new(&limits.rates),
            resync: Vec::new(),
        }
    }

    /// Whether some document waits for a resync (see [`Session::on_drained`]).
    pub fn has_pending_resync(&self) -> bool {
        !self.resync.is_empty()
    }

    /// The connection's queue has drained: catches up every document it
    /// fell behind with one `Resynced` each. A document whose resync does
    /// not fit yet waits for the next drain.
    pub fn on_drained(&mut self) -> Flow {
        let peer = self.peer.id();
        let mut i = 0;
        while i < self.resync.len() {
            let doc = &self.resync[i];
            let Some(shard) = self.subs.get(doc).map(|sub| sub.shard.clone()) else {
                self.resync.swap_remove(i);
                continue;
            };
            match shard.resync(peer) {
                Err(ShardError::SlowConsumer) => i += 1,
                Ok(_) => {
                    self.resync.swap_remove(i);
                }
                Err(e) => {
                    let doc = self.resync.swap_remove(i);
                    self.on_shard_error(&doc, &shard, &e);
                }
            }
        }
        Flow::Continue
    }

    /// Whether the transport may read another frame. While the session has
    /// `max_unacked_updates` updates in flight, it should only wait for acks.
    pub fn can_read(&self) -> bool {
        self.acks.len() < self.limits.max_unacked_updates as usize
    }

    /// Whether any update is waiting to become durable.
    pub fn has_pending_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    /// The next durability outcome; pending forever when there is none.
    pub async fn next_ack(&mut self) -> AckOutcome {
        match self.acks.next().await {
            Some(outcome) => outcome,
            None => std::future::pending().await,
        }
    }

    /// Sends the `Ack` (or a storage `Error`) for an outcome.
    pub async fn on_ack(&mut self, outcome: AckOutcome) -> Flow {
        if outcome.result.is_err() {
            crate::metrics::error(ErrorCode::StorageFailure);
        }
        let frame = match outcome.result {
            Ok(()) => protocol::encode(Kind::Ack(v1::Ack {
                doc: outcome.doc.to_string(),
                seq: outcome.seq,
                doc_seq: outcome.doc_seq,
            })),
            Err(e) => protocol::error_frame(
                outcome.doc.as_str(),
                ErrorCode::StorageFailure,
                e.to_string(),
                outcome.seq,
            ),
        };
        self.reply(frame).await
    }

    /// When the next token in use expires: the transport sleeps until then
    /// and calls [`Session::on_expiry`]. `None` while nothing can expire.
    pub fn expiry_deadline(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// A token expired: the subscriptions it opened end, each with
    /// `Error{doc, TOKEN_EXPIRED}` (its presence is removed, as on
    /// unsubscribe), and if it was the connection's token the client gets
    /// `Error{"", TOKEN_EXPIRED}` and may subscribe nothing more until a
    /// `Reauth` (unless a `Subscribe` brings its own token). Updates applied
    /// before the expiry still get their acks.
    pub async fn on_expiry(&mut self) -> Flow {
        let now = Instant::now();
        self.end_grants(|g| g.expired_at(now), ErrorCode::TokenExpired)
            .await
    }

    /// Some token was revoked (the transport saw the revocation epoch
    /// change): grants whose token is now revoked end exactly as at expiry
    /// ([`Session::on_expiry`]), with `TOKEN_REVOKED`.
    pub async fn on_revocation(&mut self) -> Flow {
        let auth = self.auth.clone();
        self.end_grants(|g| auth.is_revoked(&g.principal), ErrorCode::TokenRevoked)
            .await
    }

    /// Ends the connection's grant and the subscriptions whose grant
    /// `ended` picks, telling the client with `code` (`TOKEN_EXPIRED` or
    /// `TOKEN_REVOKED`).
    async fn end_grants(&mut self, ended: impl Fn(&Grant) -> bool, code: ErrorCode) -> Flow {
        let docs: Vec<DocId> = self
            .subs
            .iter()
            .filter(|(_, sub)| ended(&sub.grant))
            .map(|(doc, _)| doc.clone())
            .collect();
        let conn_ended = self.grant.as_ref().is_some_and(&ended);
        if conn_ended {
            self.grant = None;
            self.grant_ended = Some(code);
        }
        for doc in &docs {
            if let Some(sub) = self.subs.remove(doc) {
                sub.shard.unsubscribe(self.peer.id());
            }
            if self.ended_docs.len() < self.limits.max_docs_per_connection as usize {
                self.ended_docs.insert(doc.clone(), code);
            }
        }
        self.recompute_expiry();
        tracing::debug!(
            peer = self.peer.id(),
            docs = docs.len(),
            conn_ended,
            ?code,
            "token no longer valid"
        );
        let what = ended_word(code);
        if conn_ended {
            let message = format!("the connection's token {what}: send Reauth with a fresh one");
            let flow = self.error("", code, message, 0).await;
            if flow != Flow::Continue {
                return flow;
            }
        }
        for doc in docs {
            let message = format!(
                "the token for this document {what} and the subscription ended: \
                 Reauth (or Subscribe with a fresh token), then Subscribe again"
            );
            let flow = self.error(doc.as_str(), code, message, 0).await;
            if flow != Flow::Continue {
                return flow;
            }
        }
        Flow::Continue
    }

    fn recompute_expiry(&mut self) {
        self.next_expiry = self
            .subs
            .values()
            .map(|sub| &sub.grant)
            .chain(self.grant.as_ref())
            .filter_map(|g| g.deadline)
            .min();
    }

    /// Verifies a token presented on this connection and checks that it
    /// names the same user as the connection's first token. In open mode
    /// every token, even none, is the open principal.
    fn verify(&mut self, token: &str) -> Result<Grant, (ErrorCode, String)> {
        let principal = self
            .auth
            .verify(token)
            .map_err(|e: AuthError| (e.code(), e.to_string()))?;
        if self.auth.is_open() {
            return Ok(Grant::new(principal));
        }
        let sub = principal.sub().map(str::to_owned);
        match &self.identity {
            None => {
                if let Some(sub) = &sub {
                    self.author = Some(sub.clone());
                }
                self.identity = Some(sub);
            }
            Some(identity) if *identity != sub => {
                return Err((
                    ErrorCode::Forbidden,
                    "the token names a different user than this connection's first token".into(),
                ));
            }
            Some(_) => {}
        }
        Ok(Grant::new(principal))
    }

    /// Handles what the shards told this connection's peer: documents it
    /// fell behind (resynced once the queue drains, see
    /// [`Session::on_drained`]), and documents that dropped it (reloaded or
    /// deleted): that subscription ends and the client is told, once its
    /// queue has room again.
    pub async fn on_peer_notice(&mut self) -> Flow {
        for doc in self.peer.take_behind() {
            if self.subs.contains_key(&doc) && !self.resync.contains(&doc) {
                self.resync.push(doc);
            }
        }
        for (doc, reason) in self.peer.take_dropped() {
            self.resync.retain(|d| *d != doc);
            if self.subs.remove(&doc).is_some() {
                self.recompute_expiry();
                let (code, message) = match reason {
                    DropReason::Reloaded => (
                        ErrorCode::DocReloaded,
                        "document reloaded after an internal fault; subscribe again",
                    ),
                    DropReason::Deleted => (ErrorCode::DocDeleted, "document deleted"),
                };
                crate::metrics::error(code);
                let frame = protocol::error_frame(doc.as_str(), code, message, 0);
                if let Flow::Close(code, reason) = self.reply(frame).await {
                    return Flow::Close(code, reason);
                }
            }
        }
        Flow::Continue
    }

    /// Handles one binary frame.
    pub async fn on_frame(&mut self, frame: Bytes) -> Flow {
        if frame.len() > self.limits.max_message_bytes as usize {
            let reason = close::message_too_big(self.limits.max_message_bytes);
            return Flow::Close(close::MESSAGE_TOO_BIG, reason);
        }
        let msg = match ClientMessage::decode(frame) {
            Ok(msg) => msg,
            Err(e) => {
                return self
                    .refuse_and_close(
                        ErrorCode::MalformedMessage,
                        e.to_string(),
                        close::INVALID_PAYLOAD,
                        "malformed message",
                    )
                    .await
            }
        };
        use client_message::Kind as K;
        let hello_first = matches!(msg.kind, Some(K::Hello(_))) != self.author.is_some();
        if !hello_first {
            return self
                .refuse_and_close(
                    ErrorCode::HelloRequired,
                    "send exactly one Hello, first".into(),
                    close::POLICY_VIOLATION,
                    "hello required first",
                )
                .await;
        }
        let Some(kind) = msg.kind else {
            return self
                .error(
                    "",
                    ErrorCode::UnknownMessage,
                    "message kind not set or unknown",
                    0,
                )
                .await;
        };
        // Past the check above, a Hello only arrives before the session has one.
        match kind {
            K::Hello(hello) => self.on_hello(hello).await,
            K::Subscribe(sub) => self.on_subscribe(sub).await,
            K::Unsubscribe(unsub) => self.on_unsubscribe(unsub).await,
            K::Update(update) => self.on_update(update).await,
            K::Awareness(awareness) => self.on_awareness(awareness).await,
            K::Ping(ping) => {
                self.reply(protocol::encode(Kind::Pong(v1::Pong { nonce: ping.nonce })))
                    .await
            }
            K::Reauth(reauth) => self.on_reauth(reauth).await,
        }
    }

    /// Sends an error, then closes the socket with `close_code` (unless the
    /// socket is already gone).
    async fn refuse_and_close(
        &mut self,
        code: ErrorCode,
        message: String,
        close_code: u16,
        reason: &str,
    ) -> Flow {
        match self.error("", code, message, 0).await {
            Flow::Continue => Flow::Close(close_code, reason.into()),
            closed => closed,
        }
    }

    /// Ends every subscription (removing this client's presence). Call once
    /// when the socket closes.
    pub fn close(&mut self) {
        for (_, sub) in self.subs.drain() {
            sub.shard.unsubscribe(self.peer.id());
        }
    }

    async fn on_hello(&mut self, hello: v1::Hello) -> Flow {
        if hello.protocol_version != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            );
            return self
                .refuse_and_close(
                    ErrorCode::UnsupportedVersion,
                    msg,
                    close::PROTOCOL_ERROR,
                    "unsupported version",
                )
                .await;
        }
        let mut name = hello.client_name;
        if name.len() > MAX_CLIENT_NAME_BYTES {
            let mut cut = MAX_CLIENT_NAME_BYTES;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name.truncate(cut);
        }
        if name.is_empty() {
            name = format!("conn-{}", self.peer.id());
        }
        self.author = Some(name);
        // Open mode: the connection may do anything. With tokens: a token in
        // Hello is the connection's; none means each Subscribe brings one.
        if self.auth.is_open() || !hello.token.is_empty() {
            match self.verify(&hello.token) {
                Ok(grant) => {
                    self.grant = Some(grant);
                    self.recompute_expiry();
                }
                Err((code, message)) => {
                    return self
                        .refuse_and_close(code, message, close::POLICY_VIOLATION, "token refused")
                        .await
                }
            }
        }
        let welcome = v1::Welcome {
            protocol_version: PROTOCOL_VERSION,
            connection_id: self.peer.id(),
            limits: Some(v1::Limits {
                max_message_bytes: self.limits.max_message_bytes,
                max_docs_per_connection: self.limits.max_docs_per_connection,
                max_unacked_updates: self.limits.max_unacked_updates,
                max_doc_bytes: self.limits.max_doc_bytes,
                updates_per_sec: self.limits.rates.updates_per_sec,
                update_burst: self.limits.rates.update_burst,
                awareness_per_sec: self.limits.rates.awareness_per_sec,
                awareness_burst: self.limits.rates.awareness_burst,
            }),
        };
        self.reply(protocol::encode(Kind::Welcome(welcome))).await
    }

    async fn on_subscribe(&mut self, sub: v1::Subscribe) -> Flow {
        let doc = match DocId::parse(&sub.doc) {
            Ok(doc) => doc,
            Err(e) => {
                return self
                    .error(&sub.doc, ErrorCode::InvalidDocId, e.to_string(), 0)
                    .await
            }
        };
        let grant = match self.grant_for(&sub.token) {
            Ok(grant) => grant,
            Err((code, message)) => return self.error(&sub.doc, code, message, 0).await,
        };
        if let Err(denied) = grant.principal.require(Action::Read, &doc) {
            return self
                .error(&sub.doc, denied.code(), denied.to_string(), 0)
                .await;
        }
        if self.subs.contains_key(&doc) {
            return self
                .error(
                    &sub.doc,
                    ErrorCode::AlreadySubscribed,
                    "already subscribed",
                    0,
                )
                .await;
        }
        if self.subs.len() >= self.limits.max_docs_per_connection as usize {
            let msg = format!(
                "a connection may follow at most {} documents",
                self.limits.max_docs_per_connection
            );
            return self.error(&sub.doc, ErrorCode::TooManyDocs, msg, 0).await;
        }
        // A shard can close between lookup and subscribe (idle eviction):
        // look it up again; bounded because a fresh shard is not idle.
        // Only a writer brings a missing document into being; a read-only
        // grant on one gets `DOC_NOT_FOUND`.
        let create = grant.principal.can(Action::Write, &doc);
        for _ in 0..3 {
            let shard = match self.registry.get(&doc, create).await {
                Ok(shard) => shard,
                Err(e) => return self.registry_error(&doc, e).await,
            };
            let author = self.author.as_deref().unwrap_or_default();
            match shard.subscribe(&self.peer, author, &sub.state_vector) {
                Ok(()) => {
                    self.ended_docs.remove(&doc);
                    self.subs.insert(doc, Subscription { shard, grant });
                    self.recompute_expiry();
                    // The Synced went in whatever the room: like any reply,
                    // read nothing more until the queue is under its bound.
                    self.peer.room().await;
                    return Flow::Continue;
                }
                Err(ShardError::Closed) => continue,
                Err(e) => return self.error(&sub.doc, e.code(), e.to_string(), 0).await,
            }
        }
        self.error(&sub.doc, ErrorCode::Internal, "document kept closing", 0)
            .await
    }

    /// The grant a `Subscribe` carrying `token` (maybe empty) subscribes under.
    fn grant_for(&mut self, token: &str) -> Result<Grant, (ErrorCode, String)> {
        if !token.is_empty() && !self.auth.is_open() {
            return self.verify(token);
        }
        let ended = match &self.grant {
            Some(grant) if grant.expired_at(Instant::now()) => Some(ErrorCode::TokenExpired),
            // Cheap (a lookup), and closes the gap between a revocation and
            // the transport's next look at the epoch.
            Some(grant) if self.auth.is_revoked(&grant.principal) => Some(ErrorCode::TokenRevoked),
            Some(_) => None,
            None => self.grant_ended,
        };
        if let Some(code) = ended {
            let what = ended_word(code);
            return Err((
                code,
                format!("the connection's token {what}: send Reauth with a fresh one"),
            ));
        }
        match &self.grant {
            Some(grant) => Ok(grant.clone()),
            None => Err((
                ErrorCode::Unauthorized,
                "no token: send one in Hello, Reauth or this Subscribe".into(),
            )),
        }
    }

    /// Replaces the connection's token. Subscriptions the new token covers
    /// take its role and expiry (a role can go down as well as up); others
    /// keep the token they were opened with. Answered by `Reauthed`.
    async fn on_reauth(&mut self, reauth: v1::Reauth) -> Flow {
        let grant = match self.verify(&reauth.token) {
            Ok(grant) => grant,
            Err((code, message)) => return self.error("", code, message, 0).await,
        };
        for (doc, sub) in &mut self.subs {
            if grant.principal.covers(doc) {
                sub.grant = grant.clone();
            }
        }
        let expires_at_ms = grant.principal.expires_at_ms();
        self.grant = Some(grant);
        self.grant_ended = None;
        self.ended_docs.clear();
        self.recompute_expiry();
        self.reply(protocol::encode(Kind::Reauthed(v1::Reauthed {
            expires_at_ms,
        })))
        .await
    }

    async fn on_unsubscribe(&mut self, unsub: v1::Unsubscribe) -> Flow {
        let sub = DocId::parse(&unsub.doc)
            .ok()
            .and_then(|doc| self.subs.remove(&doc));
        match sub {
            Some(sub) => {
                self.recompute_expiry();
                self.resync.retain(|d| d != sub.shard.id());
                sub.shard.unsubscribe(self.peer.id());
                self.reply(protocol::encode(Kind::Unsubscribed(v1::Unsubscribed {
                    doc: unsub.doc,
                })))
                .await
            }
            None => self.not_subscribed(&unsub.doc, "not subscribed", 0).await,
        }
    }

    async fn on_update(&mut self, update: v1::Update) -> Flow {
        let Some((doc, shard, role)) = self.subscribed(&update.doc) else {
            return self
                .not_subscribed(&update.doc, "subscribe before sending updates", update.seq)
                .await;
        };
        if role < Role::Write {
            return self
                .error(
                    &update.doc,
                    ErrorCode::ReadOnly,
                    "the token for this document is read-only: update not applied",
                    update.seq,
                )
                .await;
        }
        if let Err(wait) = self.rates.check(rate::Kind::Update) {
            return self.rate_limited(&update.doc, update.seq, wait).await;
        }
        let author = self.author.as_deref().unwrap_or_default();
        match shard
            .apply_update(update.update, author, Some(self.peer.id()))
            .await
        {
            Ok(applied) => {
                let seq = update.seq;
                let doc_seq = applied.doc_seq;
                let durable = applied.durable;
                self.acks.push_back(Box::pin(async move {
                    let result = durable
                        .await
                        .unwrap_or_else(|_| Err(WriteFailed("the store writer stopped".into())));
                    AckOutcome {
                        doc,
                        seq,
                        doc_seq,
                        result,
                    }
                }));
                Flow::Continue
            }
            Err(e) => {
                self.on_shard_error(&doc, &shard, &e);
                self.error(&update.doc, e.code(), e.to_string(), update.seq)
                    .await
            }
        }
    }

    async fn on_awareness(&mut self, awareness: v1::Awareness) -> Flow {
        let Some((doc, shard, _)) = self.subscribed(&awareness.doc) else {
            return self
                .not_subscribed(&awareness.doc, "subscribe before sending awareness", 0)
                .await;
        };
        if let Err(wait) = self.rates.check(rate::Kind::Awareness) {
            return self.rate_limited(&awareness.doc, 0, wait).await;
        }
        match shard.apply_awareness(awareness.update, self.peer.id()) {
            Ok(()) => Flow::Continue,
            Err(e) => {
                self.on_shard_error(&doc, &shard, &e);
                self.error(&awareness.doc, e.code(), e.to_string(), 0).await
            }
        }
    }

    /// The subscription to `doc`, with the role its grant gives.
    fn subscribed(&self, doc: &str) -> Option<(DocId, Arc<DocShard>, Role)> {
        let doc = DocId::parse(doc).ok()?;
        let sub = self.subs.get(&doc)?;
        let (shard, role) = (sub.shard.clone(), sub.grant.principal.role());
        Some((doc, shard, role))
    }

    /// Refuses a message for a document the session does not follow:
    /// `TOKEN_EXPIRED` (or `TOKEN_REVOKED`) if an expiry (or a revocation)
    /// ended that subscription, else `NOT_SUBSCRIBED`.
    async fn not_subscribed(&mut self, doc: &str, message: &str, seq: u64) -> Flow {
        let ended = DocId::parse(doc)
            .ok()
            .and_then(|id| self.ended_docs.get(&id).copied());
        if let Some(code) = ended {
            let what = ended_word(code);
            let message =
                format!("the token for this document {what}: Reauth, then Subscribe again");
            return self.error(doc, code, message, seq).await;
        }
        self.error(doc, ErrorCode::NotSubscribed, message, seq)
            .await
    }

    /// A closed shard (poisoned) or one that no longer lists us ends the subscription.
    fn on_shard_error(&mut self, doc: &DocId, shard: &DocShard, e: &ShardError) {
        if shard.is_closed() {
            self.registry.forget(shard);
        }
        if matches!(e, ShardError::Closed | ShardError::NotSubscribed) || shard.is_closed() {
            self.subs.remove(doc);
            self.recompute_expiry();
        }
    }

    async fn registry_error(&mut self, doc: &DocId, e: RegistryError) -> Flow {
        tracing::warn!(%doc, error = %e, "could not open document");
        let code = match &e {
            RegistryError::Shard(shard) => shard.code(),
            RegistryError::Store(_) | RegistryError::Write(_) => ErrorCode::StorageFailure,
            RegistryError::Deleting(_) | RegistryError::Deleted(_) => ErrorCode::DocDeleted,
            RegistryError::Busy(_) => ErrorCode::ServerBusy,
            RegistryError::NotFound(_) => ErrorCode::DocNotFound,
            RegistryError::Join(_)
            | RegistryError::AlreadyExists(_)
            | RegistryError::History(_) => ErrorCode::Internal,
        };
        self.error(doc.as_str(), code, e.to_string(), 0).await
    }

    /// Refuses a message over the connection's rate: dropped, nothing applied.
    async fn rate_limited(&mut self, doc: &str, seq: u64, wait: std::time::Duration) -> Flow {
        crate::metrics::error(ErrorCode::RateLimited);
        let message = if seq == 0 {
            "awareness rate limit reached; send your current presence again later"
        } else {
            "update rate limit reached; this update was dropped: send it again later"
        };
        self.reply(protocol::rate_limited_frame(doc, message, seq, wait))
            .await
    }

    async fn error(
        &mut self,
        doc: &str,
        code: ErrorCode,
        message: impl Into<String>,
        seq: u64,
    ) -> Flow {
        let message = message.into();
        tracing::debug!(peer = self.peer.id(), doc, ?code, %message, "refused");
        crate::metrics::error(code);
        self.reply(protocol::error_frame(doc, code, message, seq))
            .await
    }

    async fn reply(&mut self, frame: Bytes) -> Flow {
        match self.peer.send(Outbound::Frame(frame)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close(close::GOING_AWAY, "connection closed".into()),
        }
    }
}
