//! A Rust client for Folio's protobuf WebSocket protocol, built on yrs and
//! tokio-tungstenite. The integration tests, the benchmarks and the load tool
//! drive the real server through it; it is also the reference for writing a
//! client in another language (see `docs/protocol.md`).
//!
//! [`Connection`] is the framing and the `Hello` handshake; [`Editor`] binds
//! one Yrs doc to one document on a connection.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef, Transact};

use crate::doc::TEXT_NAME;
use crate::protocol::{client_message, server_message, v1, ClientMessage, ServerMessage};

/// The raw WebSocket a [`Connection`] wraps.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("server closed the socket: {code} {reason}")]
    Closed { code: u16, reason: String },
    #[error("undecodable server message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("server refused: {0:?}")]
    Refused(v1::Error),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("yrs: {0}")]
    Yrs(String),
}

/// How long a client waits for one expected message before giving up.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// One WebSocket speaking the Folio protocol, after `Hello`/`Welcome`.
pub struct Connection {
    ws: WsStream,
    /// The connection id the server assigned.
    pub connection_id: u64,
    /// The limits the server announced.
    pub limits: v1::Limits,
}

impl Connection {
    /// Connects to `url` (for example `ws://127.0.0.1:4700/ws`) and says `Hello`.
    ///
    /// # Errors
    /// Connection failures or a refused `Hello`.
    pub async fn connect(url: &str, client_name: &str) -> Result<Self, ClientError> {
        Self::connect_with_token(url, client_name, "").await
    }

    /// As [`Connection::connect`], presenting `token` (a JWT; empty for
    /// none) in `Hello` for the whole connection.
    ///
    /// # Errors
    /// Connection failures or a refused `Hello` (a bad token included).
    pub async fn connect_with_token(
        url: &str,
        client_name: &str,
        token: &str,
    ) -> Result<Self, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut conn = Self {
            ws,
            connection_id: 0,
            limits: v1::Limits::default(),
        };
        conn.send(client_message::Kind::Hello(v1::Hello {
            protocol_version: crate::protocol::PROTOCOL_VERSION,
            client_name: client_name.to_owned(),
            token: token.to_owned(),
        }))
        .await?;
        match conn.recv().await? {
            server_message::Kind::Welcome(w) => {
                conn.connection_id = w.connection_id;
                conn.limits = w.limits.unwrap_or_default();
                Ok(conn)
            }
            server_message::Kind::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends one message.
    ///
    /// # Errors
    /// The socket failed.
    pub async fn send(&mut self, kind: client_message::Kind) -> Result<(), ClientError> {
        let frame = ClientMessage { kind: Some(kind) }.encode_to_vec();
        self.ws.send(Message::Binary(frame.into())).await?;
        Ok(())
    }

    /// Sends raw bytes as one binary frame (for tests of hostile input).
    ///
    /// # Errors
    /// The socket failed.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// The next server message, waiting at most [`RECV_TIMEOUT`].
    ///
    /// # Errors
    /// A close ([`ClientError::Closed`] with its code), a timeout, or an
    /// undecodable frame.
    pub async fn recv(&mut self) -> Result<server_message::Kind, ClientError> {
        self.recv_within(RECV_TIMEOUT)
            .await?
            .ok_or(ClientError::Timeout)
    }

    /// The next server message, or `None` if none arrives within `wait`.
    ///
    /// # Errors
    /// As [`Connection::recv`], except that a timeout is `Ok(None)`.
    pub async fn recv_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<server_message::Kind>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => return Ok(None),
            };
            match next {
                Some(Ok(Message::Binary(frame))) => {
                    let msg = ServerMessage::decode(frame)?;
                    return msg
                        .kind
                        .map(Some)
                        .ok_or_else(|| ClientError::Unexpected("empty ServerMessage".into()));
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    return Err(ClientError::Closed { code, reason });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(ClientError::Closed {
                        code: u16::from(CloseCode::Abnormal),
                        reason: "eof".into(),
                    })
                }
            }
        }
    }

    /// The raw WebSocket, for tests that go on speaking frames by hand.
    pub fn into_ws(self) -> WsStream {
        self.ws
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A Yrs doc with UTF-16 offsets, as Folio's server and browsers use.
pub fn new_doc() -> Doc {
    Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    })
}

/// As [`new_doc`], with a fixed client id.
pub fn new_doc_with_client_id(client_id: u64) -> Doc {
    Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::with_client_id(yrs::ClientID::new(client_id))
    })
}

/// What [`Editor::pump`] saw.
#[derive(Debug)]
pub enum Event {
    /// A remote update, applied to the local doc.
    Remote { doc_seq: u64 },
    /// The update with this seq is durable.
    Acked { seq: u64, doc_seq: u64 },
    /// A remote awareness update (raw bytes).
    Awareness(Bytes),
    /// The server skipped relaying some updates (this connection fell
    /// behind) and sent what they held instead, now applied; `awareness`
    /// is everyone's presence (raw bytes, possibly empty).
    Resynced { doc_seq: u64, awareness: Bytes },
    /// A refusal.
    Error(v1::Error),
    /// Anything else (Pong, Unsubscribed, …).
    Other(server_message::Kind),
}

/// One Yrs doc bound to one Folio document over its own connection.
pub struct Editor {
    conn: Option<Connection>,
    doc_id: String,
    name: String,
    /// The token presented in `Hello` (empty: none).
    token: String,
    doc: Doc,
    text: TextRef,
    next_seq: u64,
    /// Updates sent and not yet acknowledged, by seq.
    unacked: BTreeMap<u64, Bytes>,
    /// The awareness bytes received with the last `Synced`.
    pub synced_awareness: Bytes,
    /// Bytes of the update received with the last `Synced`.
    pub synced_update_bytes: usize,
}

impl Editor {
    /// Connects, subscribes to `doc_id` and syncs both ways.
    ///
    /// # Errors
    /// Connection, subscription or sync failures.
    pub async fn join(url: &str, doc_id: &str, name: &str) -> Result<Self, ClientError> {
        Self::join_with(url, doc_id, name, new_doc()).await
    }

    /// As [`Editor::join`], with a given Yrs doc (for a fixed client id:
    /// concurrent inserts at one position are ordered by client id, and
    /// replaying a recorded trace needs the recorded order).
    ///
    /// # Errors
    /// Connection, subscription or sync failures.
    pub async fn join_with(
        url: &str,
        doc_id: &str,
        name: &str,
        doc: Doc,
    ) -> Result<Self, ClientError> {
        let mut editor = Self::detached(doc_id, name, doc);
        editor.reconnect(url).await?;
        Ok(editor)
    }

    /// An editor that has not connected yet.
    fn detached(doc_id: &str, name: &str, doc: Doc) -> Self {
        let text = doc.get_or_insert_text(TEXT_NAME);
        Self {
            conn: None,
            doc_id: doc_id.to_owned(),
            name: name.to_owned(),
            token: String::new(),
            doc,
            text,
            next_seq: 1,
            unacked: BTreeMap::new(),
            synced_awareness: Bytes::new(),
            synced_update_bytes: 0,
        }
    }

    /// As [`Editor::join`], presenting `token` in `Hello` (and again on
    /// every reconnect).
    ///
    /// # Errors
    /// Connection, authorization, subscription or sync failures.
    pub async fn join_with_token(
        url: &str,
        doc_id: &str,
        name: &str,
        token: &str,
    ) -> Result<Self, ClientError> {
        let mut editor = Self::detached(doc_id, name, new_doc());
        editor.token = token.to_owned();
        editor.reconnect(url).await?;
        Ok(editor)
    }

    /// Drops the connection (the doc stays; edits go on locally).
    pub async fn go_offline(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
        self.unacked.clear();
    }

    /// Whether the editor has a connection.
    pub fn is_online(&self) -> bool {
        self.conn.is_some()
    }

    /// Connects again and exchanges exactly what each side lacks: subscribe
    /// with our state vector, apply the server's answer, send back the diff
    /// against the server's state vector.
    ///
    /// # Errors
    /// Connection or sync failures.
    pub async fn reconnect(&mut self, url: &str) -> Result<(), ClientError> {
        let conn = Connection::connect_with_token(url, &self.name, &self.token).await?;
        self.conn = Some(conn);
        if let Err(e) = self.resubscribe().await {
            self.conn = None;
            return Err(e);
        }
        Ok(())
    }

    /// Subscribes (again) on the current connection, after the server ended
    /// the subscription (`SLOW_CONSUMER`, `TOKEN_EXPIRED` and a `Reauth`, …),
    /// and exchanges what each side lacks, as [`Editor::reconnect`] does.
    /// Messages that arrive before `Synced` are handled as by [`Editor::pump`].
    ///
    /// # Errors
    /// Offline, a refused `Subscribe`, or sync failures.
    pub async fn resubscribe(&mut self) -> Result<(), ClientError> {
        let sv = self.doc.transact().state_vector().encode_v1();
        let doc = self.doc_id.clone();
        self.conn_mut()?
            .send(client_message::Kind::Subscribe(v1::Subscribe {
                doc: doc.clone(),
                state_vector: sv.into(),
                ..Default::default()
            }))
            .await?;
        let synced = loop {
            match self.recv_raw().await? {
                server_message::Kind::Synced(s) if s.doc == doc => break s,
                server_message::Kind::Error(e) if e.doc == doc && e.seq == 0 => {
                    return Err(ClientError::Refused(e))
                }
                other => {
                    self.handle(other)?;
                }
            }
        };
        self.apply_remote(&synced.update)?;
        self.synced_awareness = synced.awareness;
        self.synced_update_bytes = synced.update.len();
        let server_sv = StateVector::decode_v1(&synced.state_vector)
            .map_err(|e| ClientError::Yrs(e.to_string()))?;
        let missing = self.doc.transact().encode_diff_v1(&server_sv);
        if update_has_content(&missing) {
            self.send_update(Bytes::from(missing)).await?;
        }
        Ok(())
    }

    /// Replaces the connection's token (`Reauth`) and waits for `Reauthed`;
    /// later reconnects present the new token. Messages that arrive in
    /// between are handled as by [`Editor::pump`]. Returns the new expiry
    /// (ms since the epoch; 0 for a server without access control).
    ///
    /// # Errors
    /// Offline, or the token was refused ([`ClientError::Refused`]).
    pub async fn reauth(&mut self, token: &str) -> Result<u64, ClientError> {
        self.conn_mut()?
            .send(client_message::Kind::Reauth(v1::Reauth {
                token: token.to_owned(),
            }))
            .await?;
        loop {
            match self.recv_raw().await? {
                server_message::Kind::Reauthed(r) => {
                    self.token = token.to_owned();
                    return Ok(r.expires_at_ms);
                }
                server_message::Kind::Error(e) if e.doc.is_empty() && e.seq == 0 => {
                    return Err(ClientError::Refused(e))
                }
                other => {
                    self.handle(other)?;
                }
            }
        }
    }

    /// The document id.
    pub fn doc_id(&self) -> &str {
        &self.doc_id
    }

    /// The local text.
    pub fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    /// The local text length in UTF-16 code units.
    pub fn len(&self) -> u32 {
        self.text.len(&self.doc.transact())
    }

    /// Whether the local text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The local Yrs doc.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Applies `patches` (`(pos, delete, insert)`, JavaScript splice
    /// semantics) in one local transaction and returns its update.
    pub fn edit(&mut self, patches: &[(u32, u32, &str)]) -> Bytes {
        let mut txn = self.doc.transact_mut();
        for &(pos, del, ins) in patches {
            if del > 0 {
                self.text.remove_range(&mut txn, pos, del);
            }
            if !ins.is_empty() {
                self.text.insert(&mut txn, pos, ins);
            }
        }
        Bytes::from(txn.encode_update_v1())
    }

    /// Sends an update; returns its seq.
    ///
    /// # Errors
    /// Offline, or the socket failed.
    pub async fn send_update(&mut self, update: Bytes) -> Result<u64, ClientError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| ClientError::Unexpected("offline".into()))?;
        conn.send(client_message::Kind::Update(v1::Update {
            doc: self.doc_id.clone(),
            update: update.clone(),
            seq,
        }))
        .await?;
        self.unacked.insert(seq, update);
        Ok(seq)
    }

    /// Edits locally and, when online, sends the update.
    ///
    /// # Errors
    /// The socket failed.
    pub async fn type_patches(&mut self, patches: &[(u32, u32, &str)]) -> Result<(), ClientError> {
        let update = self.edit(patches);
        if self.conn.is_some() {
            self.send_update(update).await?;
        }
        Ok(())
    }

    /// Sends an awareness update for this document.
    ///
    /// # Errors
    /// Offline, or the socket failed.
    pub async fn send_awareness(&mut self, update: Bytes) -> Result<(), ClientError> {
        let doc = self.doc_id.clone();
        self.conn_mut()?
            .send(client_message::Kind::Awareness(v1::Awareness {
                doc,
                update,
            }))
            .await
    }

    /// Updates sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Applies a Yjs update from elsewhere to the local doc.
    ///
    /// # Errors
    /// The update does not decode or apply.
    pub fn apply_remote(&mut self, update: &[u8]) -> Result<(), ClientError> {
        let update = yrs::Update::decode_v1(update).map_err(|e| ClientError::Yrs(e.to_string()))?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .map_err(|e| ClientError::Yrs(e.to_string()))
    }

    /// The connection, for sending raw messages.
    ///
    /// # Errors
    /// Offline.
    pub fn conn_mut(&mut self) -> Result<&mut Connection, ClientError> {
        self.conn
            .as_mut()
            .ok_or_else(|| ClientError::Unexpected("offline".into()))
    }

    /// Receives one message without applying it.
    ///
    /// # Errors
    /// Offline, closed, or timed out.
    pub async fn recv_raw(&mut self) -> Result<server_message::Kind, ClientError> {
        self.conn_mut()?.recv().await
    }

    /// Receives one message and applies it: remote updates go into the doc,
    /// acks clear the unacked set.
    ///
    /// # Errors
    /// Offline, closed, timed out, or a remote update that does not apply.
    pub async fn pump(&mut self) -> Result<Event, ClientError> {
        let msg = self.recv_raw().await?;
        self.handle(msg)
    }

    /// Applies one received message (see [`Editor::pump`]).
    ///
    /// # Errors
    /// A remote update that does not apply.
    pub fn handle(&mut self, msg: server_message::Kind) -> Result<Event, ClientError> {
        Ok(match msg {
            server_message::Kind::Update(u) => {
                self.apply_remote(&u.update)?;
                Event::Remote { doc_seq: u.seq }
            }
            server_message::Kind::Ack(a) => {
                self.unacked.remove(&a.seq);
                Event::Acked {
                    seq: a.seq,
                    doc_seq: a.doc_seq,
                }
            }
            server_message::Kind::Awareness(a) => Event::Awareness(a.update),
            server_message::Kind::Resynced(r) => {
                self.apply_remote(&r.update)?;
                Event::Resynced {
                    doc_seq: r.seq,
                    awareness: r.awareness,
                }
            }
            server_message::Kind::Error(e) => {
                // A refused update will never be acknowledged (a storage
                // failure may still be, once resent); the diff after the
                // next Synced carries its changes.
                if e.seq != 0 && e.code != crate::protocol::ErrorCode::StorageFailure as i32 {
                    self.unacked.remove(&e.seq);
                }
                Event::Error(e)
            }
            other => Event::Other(other),
        })
    }

    /// Pumps until at most `limit` updates are unacknowledged. A client that
    /// streams updates must keep reading, or the server's acks back up
    /// behind it and TCP flow control stops both sides.
    ///
    /// # Errors
    /// As [`Editor::pump`]; a refusal is returned as [`ClientError::Refused`].
    pub async fn wait_acked_below(&mut self, limit: usize) -> Result<(), ClientError> {
        while self.unacked.len() > limit {
            if let Event::Error(e) = self.pump().await? {
                return Err(ClientError::Refused(e));
            }
        }
        Ok(())
    }

    /// Pumps until every sent update is acknowledged.
    ///
    /// # Errors
    /// As [`Editor::pump`]; a refusal is returned as [`ClientError::Refused`].
    pub async fn wait_acked(&mut self) -> Result<(), ClientError> {
        self.wait_acked_below(0).await
    }

    /// Pumps whatever arrives within `quiet`, until nothing does.
    ///
    /// # Errors
    /// As [`Editor::pump`].
    pub async fn drain(&mut self, quiet: Duration) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        while let Some(msg) = self.conn_mut()?.recv_within(quiet).await? {
            events.push(self.handle(msg)?);
        }
        Ok(events)
    }
}

/// Whether an encoded v1 update carries any change (an empty one is `[0, 0]`).
pub fn update_has_content(update: &[u8]) -> bool {
    update.len() > 2
}
