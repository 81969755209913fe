//! The session harnesses: fuzzer frames through the real [`Session`] (Folio's
//! protobuf protocol) and [`YSession`] (y-websocket), over a real registry
//! and sled store, the way `src/http/ws.rs` and `src/http/yws.rs` drive them
//! (minus the socket), with the server's default limits and open access
//! (no auth secret). Checks, for every input:
//! - nothing panics and nothing hangs (the session's queue is drained while
//!   it works, as the socket writer does);
//! - every frame the server sends decodes;
//! - a refusal is an `Error` with a code a client's mistake can earn, or a
//!   close with a code for bad input, never an internal, storage or
//!   reloaded-document failure;
//! - a refused `Update` leaves the document's text and seq unchanged, and
//!   every accepted one is acknowledged as durable;
//! - another client subscribed to the same document (the observer) gets no
//!   error, is not dropped, and ends with the document's text;
//! - the document loaded back from the store has the same text.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use folio::auth::Auth;
use folio::config::ServeConfig;
use folio::doc::{DocId, DocRegistry, DocShard, Outbound, OutboundRx, Peer, Wire, TEXT_NAME};
use folio::protocol::{
    client_message, server_message, v1, ClientMessage, ErrorCode, ServerMessage, PROTOCOL_VERSION,
};
use folio::server::Storage;
use folio::session::{close, Flow, Session, SessionLimits};
use folio::store::WriteOp;
use folio::ysession::YSession;
use prost::Message as _;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Transact, Update};

/// The document the seeds use and the observer follows.
pub const DOC: &str = "fuzz";

/// Frames the harness takes off a queue at once, as the socket writer does.
const BATCH_FRAMES: usize = 256;

/// A registry over a sled store, made once per process.
pub struct Server {
    rt: tokio::runtime::Runtime,
    registry: Arc<DocRegistry>,
    config: ServeConfig,
    /// Open access, as a server without an auth secret on loopback.
    auth: Arc<Auth>,
    next_peer: AtomicU64,
    _dir: tempfile::TempDir,
}

/// The process's server.
///
/// # Panics
/// If the store cannot be opened.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        crate::panics::install();
        let dir = crate::temp_dir();
        let addr = "127.0.0.1:0".parse().expect("an address");
        let mut config = ServeConfig::new(addr, dir.path().to_owned());
        config.snapshot_every_updates = 3;
        // Feeds outlive their documents for this long; the harness drops
        // them after every input (see `finish`), or memory grows per doc id.
        config.feed_history_secs = 0;
        let storage = Storage::open(dir.path(), &config).expect("open the store");
        Server {
            rt: crate::runtime(),
            registry: storage.registry,
            config,
            auth: Arc::new(Auth::open()),
            next_peer: AtomicU64::new(1),
            _dir: dir,
        }
    })
}

/// Error codes no client input may cause here: they mean the server failed.
/// `SlowConsumer` is no longer sent at all (a slow connection is resynced);
/// `ServerBusy` needs more resident documents than the inputs can open, and
/// `DocDeleted` a deletion, which only happens between inputs. The codes of
/// client mistakes and limits (`RateLimited`, `DocTooLarge`, `TooManyDocs`,
/// the auth codes) are not faults.
const SERVER_FAULTS: [ErrorCode; 8] = [
    ErrorCode::Unspecified,
    ErrorCode::Internal,
    ErrorCode::StorageFailure,
    ErrorCode::DocReloaded,
    ErrorCode::SlowConsumer,
    ErrorCode::ShuttingDown,
    ErrorCode::ServerBusy,
    ErrorCode::DocDeleted,
];

/// Close codes bad input may earn on `/ws`.
const FOLIO_CLOSES: [u16; 4] = [
    close::PROTOCOL_ERROR,
    close::INVALID_PAYLOAD,
    close::POLICY_VIOLATION,
    close::MESSAGE_TOO_BIG,
];

/// Close codes bad input may earn on `/yjs`.
const YSYNC_CLOSES: [u16; 2] = [close::INVALID_PAYLOAD, close::MESSAGE_TOO_BIG];

impl Server {
    /// A connection's peer, its queue bounded in bytes as the server's.
    fn peer(&self, wire: Wire) -> (Arc<Peer>, OutboundRx) {
        let id = self.next_peer.fetch_add(1, Ordering::Relaxed);
        Peer::channel(id, wire, self.config.limits.outbound_queue_bytes)
    }

    /// A Folio session with the server's limits and access.
    fn session(&self, peer: &Arc<Peer>) -> Session {
        let limits = SessionLimits::from_config(&self.config, self.config.max_docs_per_connection);
        Session::new(
            peer.clone(),
            self.registry.clone(),
            limits,
            self.auth.clone(),
        )
    }

    fn doc(&self) -> DocId {
        DocId::parse(DOC).expect("a valid doc id")
    }

    /// The document's text and seq, if it is in memory.
    fn state(&self, doc: &str) -> Option<(String, u64)> {
        let shard = self.registry.resident_shard(&DocId::parse(doc).ok()?)?;
        Some((shard.text(), shard.info().last_seq))
    }

    /// Runs `frames` through a Folio [`Session`].
    pub fn run_folio(&self, data: &[u8]) {
        let frames = crate::frames::split(data);
        self.rt.block_on(async {
            let mut observer = Observer::join(self).await;
            let (peer, mut rx) = self.peer(Wire::Folio);
            let mut session = self.session(&peer);
            for frame in frames {
                let target = ClientMessage::decode(frame)
                    .ok()
                    .and_then(|m| match m.kind {
                        Some(client_message::Kind::Update(u)) => Some(u.doc),
                        _ => None,
                    });
                let before = target.as_deref().and_then(|doc| self.state(doc));
                let bytes = Bytes::copy_from_slice(frame);
                let mut sent = Vec::new();
                let mut flow = drive(session.on_frame(bytes), &mut rx, &mut sent).await;
                while flow == Flow::Continue && session.has_pending_acks() {
                    let outcome = session.next_ack().await;
                    flow = drive(session.on_ack(outcome), &mut rx, &mut sent).await;
                }
                // What the shards told the peer (it fell behind, or was
                // dropped), then the resync once the queue has drained,
                // which it has: `drive` takes everything queued.
                if flow == Flow::Continue {
                    flow = drive(session.on_peer_notice(), &mut rx, &mut sent).await;
                }
                if flow == Flow::Continue && session.has_pending_resync() {
                    flow = session.on_drained();
                    take_queued(&mut rx, &mut sent);
                }
                let refused = check_folio_replies(&sent);
                if let (Some(doc), Some(before), true) = (&target, before, refused) {
                    assert_eq!(
                        self.state(doc),
                        Some(before),
                        "a refused update changed {doc}"
                    );
                }
                observer.drain().await;
                if let Flow::Close(code, reason) = flow {
                    assert!(
                        FOLIO_CLOSES.contains(&code),
                        "closed with {code} ({reason})"
                    );
                    break;
                }
            }
            session.close();
            drop(rx);
            self.finish(observer).await;
        });
    }

    /// Runs `frames` through a y-websocket [`YSession`] on [`DOC`].
    pub fn run_ysync(&self, data: &[u8]) {
        let frames = crate::frames::split(data);
        self.rt.block_on(async {
            let mut observer = Observer::join(self).await;
            let (peer, mut rx) = self.peer(Wire::YSync);
            let limits = SessionLimits::from_config(&self.config, 1);
            let mut session =
                YSession::new(peer.clone(), self.registry.clone(), self.doc(), limits);
            for frame in frames {
                let mut sent = Vec::new();
                let flow = drive(
                    session.on_frame(Bytes::copy_from_slice(frame)),
                    &mut rx,
                    &mut sent,
                )
                .await;
                while session.has_pending_writes() {
                    let outcome = session.next_write().await;
                    assert_eq!(session.on_write(outcome), Flow::Continue, "a write failed");
                }
                let notice = session.on_peer_notice();
                assert_eq!(notice, Flow::Continue, "the session was dropped");
                if session.has_pending_resync() {
                    assert_eq!(session.on_drained(), Flow::Continue, "the resync failed");
                }
                // Updates the rate limit dropped: the transport sends our
                // step 1 once the bucket has refilled (a millisecond or so).
                if let Some(at) = session.rate_resync_at() {
                    tokio::time::sleep_until(at).await;
                    let resync = drive(session.on_rate_resync(), &mut rx, &mut sent).await;
                    assert_eq!(resync, Flow::Continue, "the rate resync failed");
                }
                take_queued(&mut rx, &mut sent);
                for out in sent {
                    let Outbound::Frame(frame) = out else {
                        panic!("the session queued a close")
                    };
                    yrs::sync::Message::decode_v1(&frame).expect("a server frame decodes");
                }
                observer.drain().await;
                if let Flow::Close(code, reason) = flow {
                    assert!(
                        YSYNC_CLOSES.contains(&code),
                        "closed with {code} ({reason})"
                    );
                    break;
                }
            }
            session.close();
            drop(rx);
            self.finish(observer).await;
        });
    }

    /// The observer's last checks, a reload check, then every document is
    /// deleted so that the next input starts afresh.
    async fn finish(&self, observer: Observer) {
        let doc = self.doc();
        let shard = self.registry.resident_shard(&doc);
        observer.finish(shard.as_deref()).await;
        if let Some(shard) = shard {
            self.check_reload(&shard).await;
        }
        let (docs, _) = self
            .registry
            .list_page("", None, 1000)
            .await
            .expect("list documents");
        for info in docs {
            let id = DocId::parse(&info.id).expect("a listed id parses");
            self.registry
                .delete(&id, "fuzz")
                .await
                .expect("delete a document");
            // The next input starts from nothing, not from a tombstone.
            let permit = self
                .registry
                .writer()
                .reserve()
                .await
                .expect("writer running");
            permit
                .send(WriteOp::Revive { doc: id })
                .await
                .expect("writer running")
                .expect("tombstone removed");
        }
        self.registry.feeds().maintain();
    }

    async fn check_reload(&self, shard: &DocShard) {
        let registry = &self.registry;
        registry
            .writer()
            .barrier()
            .await
            .expect("everything durable");
        let (store, id) = (registry.store().clone(), shard.id().clone());
        let stored = store.load(&id).expect("the store loads the doc");
        let again = DocShard::load(
            id.clone(),
            stored,
            registry.writer().clone(),
            self.config.shard_settings(),
            registry.feeds().feed(&id, || 0),
        )
        .expect("the stored document loads");
        assert_eq!(again.text(), shard.text(), "the reloaded text differs");
    }
}

/// Runs `work` while moving what it queues into `sent`, as the socket writer
/// would (releasing each frame's bytes, so replies waiting for room go in);
/// then takes what is left.
async fn drive<T>(
    work: impl Future<Output = T>,
    rx: &mut OutboundRx,
    sent: &mut Vec<Outbound>,
) -> T {
    tokio::pin!(work);
    let mut batch = Vec::with_capacity(BATCH_FRAMES);
    let mut open = true;
    let out = loop {
        tokio::select! {
            biased;
            out = &mut work => break out,
            n = rx.recv_many(&mut batch, BATCH_FRAMES), if open => {
                // 0: every sender is gone; the work then ends by itself.
                open = n > 0;
                for out in batch.drain(..) {
                    written(rx, &out);
                    sent.push(out);
                }
            }
        }
    };
    take_queued(rx, sent);
    out
}

/// Takes everything queued into `sent`, as written.
fn take_queued(rx: &mut OutboundRx, sent: &mut Vec<Outbound>) {
    while let Some(out) = rx.try_recv() {
        written(rx, &out);
        sent.push(out);
    }
}

/// Releases a frame's bytes from its queue, as the socket writer does once
/// the socket took it.
fn written(rx: &OutboundRx, out: &Outbound) {
    if let Outbound::Frame(frame) = out {
        rx.written(frame.len());
    }
}

/// Checks a Folio session's replies; returns whether one was an `Error`.
fn check_folio_replies(sent: &[Outbound]) -> bool {
    let mut refused = false;
    for out in sent {
        let Outbound::Frame(frame) = out else {
            panic!("the session queued a close")
        };
        let msg = ServerMessage::decode(frame.clone()).expect("a server frame decodes");
        if let Some(server_message::Kind::Error(e)) = msg.kind {
            assert!(
                !SERVER_FAULTS.contains(&e.code()),
                "server fault {:?}: {}",
                e.code(),
                e.message
            );
            refused = true;
        }
    }
    refused
}

/// Another client of [`DOC`], on Folio's protocol: it must never notice the
/// fuzzed client except through the updates the document accepted.
struct Observer {
    session: Session,
    peer: Arc<Peer>,
    rx: OutboundRx,
    doc: yrs::Doc,
}

impl Observer {
    async fn join(server: &Server) -> Self {
        let (peer, mut rx) = server.peer(Wire::Folio);
        let mut session = server.session(&peer);
        let hello = client_message::Kind::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "observer".into(),
            token: String::new(),
        });
        let subscribe = client_message::Kind::Subscribe(v1::Subscribe {
            doc: DOC.into(),
            state_vector: Bytes::new(),
            token: String::new(),
        });
        let mut sent = Vec::new();
        for kind in [hello, subscribe] {
            let frame = Bytes::from(ClientMessage { kind: Some(kind) }.encode_to_vec());
            let flow = drive(session.on_frame(frame), &mut rx, &mut sent).await;
            assert_eq!(flow, Flow::Continue, "the observer joins");
        }
        let mut observer = Self {
            session,
            peer,
            rx,
            doc: folio::client::new_doc(),
        };
        for out in sent {
            observer.handle(out);
        }
        observer
    }

    /// Takes what the observer's queue holds, as its socket writer would,
    /// then handles what the shard told its peer as `src/http/ws.rs` does:
    /// if the broadcasts of one fuzzed frame overflowed its queue, it fell
    /// behind and is resynced now that the queue has drained.
    async fn drain(&mut self) {
        self.take();
        let notice = self.session.on_peer_notice().await;
        assert_eq!(notice, Flow::Continue, "the observer was closed");
        if self.session.has_pending_resync() {
            let resync = self.session.on_drained();
            assert_eq!(resync, Flow::Continue, "the observer's resync failed");
        }
        // The resync, or the error for a drop (which fails the check).
        self.take();
    }

    fn take(&mut self) {
        while let Some(out) = self.rx.try_recv() {
            written(&self.rx, &out);
            self.handle(out);
        }
    }

    fn handle(&mut self, out: Outbound) {
        let Outbound::Frame(frame) = out else {
            panic!("the observer's session queued a close")
        };
        let msg = ServerMessage::decode(frame).expect("a server frame decodes");
        let update = match msg.kind {
            Some(server_message::Kind::Synced(s)) => s.update,
            Some(server_message::Kind::Update(u)) => u.update,
            Some(server_message::Kind::Resynced(r)) => r.update,
            Some(server_message::Kind::Error(e)) => {
                panic!("the observer got an error: {:?} {}", e.code(), e.message)
            }
            _ => return,
        };
        let update = Update::decode_v1(&update).expect("a broadcast update decodes");
        self.doc
            .transact_mut()
            .apply_update(update)
            .expect("a broadcast update applies");
    }

    async fn finish(mut self, shard: Option<&DocShard>) {
        self.drain().await;
        assert!(
            self.peer.take_dropped().is_empty(),
            "the observer was dropped from the document"
        );
        if let Some(shard) = shard {
            let text = self.doc.get_or_insert_text(TEXT_NAME);
            assert_eq!(
                text.get_string(&self.doc.transact()),
                shard.text(),
                "the observer's text differs from the document's"
            );
        }
        self.session.close();
    }
}
