//! [`Session`]: one WebSocket client's protocol state machine.
//!
//! It takes decoded frames and durability completions, talks to shards, and
//! queues replies on its [`Peer`]; it never touches the socket, so the
//! transport around it (`http::ws`) stays a thin loop. A bad message ends at
//! most this session, never a shard or another client.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use prost::Message;

use crate::doc::{
    DocId, DocRegistry, DocShard, DropReason, Outbound, Peer, RegistryError, ShardError,
};
use crate::protocol::{
    self, client_message, server_message::Kind, v1, ClientMessage, ErrorCode, PROTOCOL_VERSION,
};
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
}

/// Longest client name kept, in bytes; longer names are cut.
const MAX_CLIENT_NAME_BYTES: usize = 128;

/// Limits one session enforces, announced in `Welcome`.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_message_bytes: u32,
    pub max_docs_per_connection: u32,
    pub max_unacked_updates: u32,
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

/// One client's session. See the module docs.
pub struct Session {
    peer: Arc<Peer>,
    registry: Arc<DocRegistry>,
    limits: SessionLimits,
    /// The author recorded for this session's updates; `None` until `Hello`.
    author: Option<String>,
    subs: HashMap<DocId, Arc<DocShard>>,
    /// Updates applied but not yet durable. At most `max_unacked_updates`.
    acks: FuturesOrdered<AckFuture>,
}

impl Session {
    /// A session that has not said `Hello` yet.
    pub fn new(peer: Arc<Peer>, registry: Arc<DocRegistry>, limits: SessionLimits) -> Self {
        Self {
            peer,
            registry,
            limits,
            author: None,
            subs: HashMap::new(),
            acks: FuturesOrdered::new(),
        }
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

    /// Handles the documents whose shards dropped this session (it fell
    /// behind, or the document is being reloaded): the subscription ends and
    /// the client is told to resubscribe, once its queue has room again.
    pub async fn on_lagged(&mut self) -> Flow {
        for (doc, reason) in self.peer.take_dropped() {
            if self.subs.remove(&doc).is_some() {
                let (code, message) = match reason {
                    DropReason::SlowConsumer => (
                        ErrorCode::SlowConsumer,
                        "you fell behind this document; subscribe again with your state vector",
                    ),
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
            return Flow::Close(close::MESSAGE_TOO_BIG, "message too big".into());
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
        for (_, shard) in self.subs.drain() {
            shard.unsubscribe(self.peer.id());
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
        let welcome = v1::Welcome {
            protocol_version: PROTOCOL_VERSION,
            connection_id: self.peer.id(),
            limits: Some(v1::Limits {
                max_message_bytes: self.limits.max_message_bytes,
                max_docs_per_connection: self.limits.max_docs_per_connection,
                max_unacked_updates: self.limits.max_unacked_updates,
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
        for _ in 0..3 {
            let shard = match self.registry.get(&doc, true).await {
                Ok(shard) => shard,
                Err(e) => return self.registry_error(&doc, e).await,
            };
            let author = self.author.as_deref().unwrap_or_default();
            match shard.subscribe(&self.peer, author, &sub.state_vector) {
                Ok(()) => {
                    self.subs.insert(doc, shard);
                    return Flow::Continue;
                }
                Err(ShardError::Closed) => continue,
                Err(e) => return self.error(&sub.doc, e.code(), e.to_string(), 0).await,
            }
        }
        self.error(&sub.doc, ErrorCode::Internal, "document kept closing", 0)
            .await
    }

    async fn on_unsubscribe(&mut self, unsub: v1::Unsubscribe) -> Flow {
        let shard = DocId::parse(&unsub.doc)
            .ok()
            .and_then(|doc| self.subs.remove(&doc));
        match shard {
            Some(shard) => {
                shard.unsubscribe(self.peer.id());
                self.reply(protocol::encode(Kind::Unsubscribed(v1::Unsubscribed {
                    doc: unsub.doc,
                })))
                .await
            }
            None => {
                self.error(&unsub.doc, ErrorCode::NotSubscribed, "not subscribed", 0)
                    .await
            }
        }
    }

    async fn on_update(&mut self, update: v1::Update) -> Flow {
        let Some((doc, shard)) = self.subscribed(&update.doc) else {
            return self
                .error(
                    &update.doc,
                    ErrorCode::NotSubscribed,
                    "subscribe before sending updates",
                    update.seq,
                )
                .await;
        };
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
        let Some((doc, shard)) = self.subscribed(&awareness.doc) else {
            return self
                .error(
                    &awareness.doc,
                    ErrorCode::NotSubscribed,
                    "subscribe before sending awareness",
                    0,
                )
                .await;
        };
        match shard.apply_awareness(awareness.update, self.peer.id()) {
            Ok(()) => Flow::Continue,
            Err(e) => {
                self.on_shard_error(&doc, &shard, &e);
                self.error(&awareness.doc, e.code(), e.to_string(), 0).await
            }
        }
    }

    fn subscribed(&self, doc: &str) -> Option<(DocId, Arc<DocShard>)> {
        let doc = DocId::parse(doc).ok()?;
        let shard = self.subs.get(&doc)?.clone();
        Some((doc, shard))
    }

    /// A closed shard (poisoned) or one that no longer lists us ends the subscription.
    fn on_shard_error(&mut self, doc: &DocId, shard: &DocShard, e: &ShardError) {
        if shard.is_closed() {
            self.registry.forget(shard);
        }
        if matches!(e, ShardError::Closed | ShardError::NotSubscribed) || shard.is_closed() {
            self.subs.remove(doc);
        }
    }

    async fn registry_error(&mut self, doc: &DocId, e: RegistryError) -> Flow {
        tracing::warn!(%doc, error = %e, "could not open document");
        let code = match &e {
            RegistryError::Shard(shard) => shard.code(),
            RegistryError::Store(_) | RegistryError::Write(_) => ErrorCode::StorageFailure,
            RegistryError::Deleting(_) => ErrorCode::DocDeleted,
            RegistryError::NotFound(_)
            | RegistryError::Join(_)
            | RegistryError::AlreadyExists(_)
            | RegistryError::History(_) => ErrorCode::Internal,
        };
        self.error(doc.as_str(), code, e.to_string(), 0).await
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
