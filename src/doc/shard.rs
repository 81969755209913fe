//! [`DocShard`]: one document in memory.
//!
//! A shard owns the document's Yrs doc and awareness behind one short-lived
//! mutex. Every operation takes the lock, does CPU work only (no `.await`,
//! no disk I/O), queues what must be written and sent, and lets go. Because
//! applying an update, queuing its log entry and queuing its broadcast happen
//! under the same lock, the log order, the apply order and the order every
//! subscriber receives updates in are one and the same.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use yrs::sync::{Awareness, AwarenessUpdate};
use yrs::types::text::TextEvent;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    ClientID, Doc, GetString, Observable, OffsetKind, Options, ReadTxn, StateVector, StickyIndex,
    Text, TextRef, Transact, TransactionMut, Update, WriteTxn,
};

use super::peer::{DropReason, Peer, SendError, Wire};
use super::update_check;
use super::DocId;
use crate::feed::delta::{self, Op};
use crate::feed::{DocFeed, Edit, Presence};
use crate::protocol::{self, server_message::Kind, v1, ysync, ErrorCode};
use crate::store::{
    now_ms, Durable, LogEntry, Snapshot, StoreWriter, StoredDoc, Version, VersionKind, WriteFailed,
    WriteOp, WritePermit,
};

/// The root `Y.Text` every Folio client uses for a document's text.
pub const TEXT_NAME: &str = "content";

/// When a shard writes a full-state snapshot of its document.
#[derive(Debug, Clone, Copy)]
pub struct ShardSettings {
    /// After this many updates since the last snapshot.
    pub snapshot_every_updates: u64,
    /// Or after this long with updates since the last snapshot.
    pub snapshot_interval: Duration,
    /// Or once the document has had no edit for this long (an "idle" version).
    pub version_idle: Duration,
    /// Refuse updates that would make the encoded state larger than this
    /// (0: no limit). See [`ShardError::TooLarge`].
    pub max_doc_bytes: u64,
}

/// Most awareness removals remembered for one member that fell behind;
/// presences that left beyond that time out on the client (y-protocols
/// drops a presence not renewed for 30 s).
const MAX_REMOVALS_WHILE_BEHIND: usize = 1024;

/// Most authors a version lists; later ones are left out (the log still
/// attributes every update).
pub const MAX_VERSION_AUTHORS: usize = 32;

/// Why a shard refused an operation. The operation changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    #[error("update depends on changes this document does not have; resubscribe to resync")]
    MissingDependencies,
    #[error("invalid awareness update: {0}")]
    InvalidAwareness(String),
    #[error("invalid state vector: {0}")]
    InvalidStateVector(String),
    #[error("not subscribed")]
    NotSubscribed,
    #[error("already subscribed")]
    AlreadySubscribed,
    #[error("outbound queue full")]
    SlowConsumer,
    /// The update would make the document's encoded state larger than
    /// `max_doc_bytes` (as estimated; see `DocShard::apply_update`).
    #[error("the document would pass its size limit of {max} bytes (about {now} now)")]
    TooLarge { now: u64, max: u64 },
    /// The shard was evicted or poisoned: look it up again in the registry.
    #[error("document closed")]
    Closed,
    #[error("server shutting down")]
    ShuttingDown,
    #[error("stored document is corrupt: {0}")]
    Corrupt(String),
    /// The document is not new: it already has updates.
    #[error("document already has content")]
    NotEmpty,
    /// The document changed under a server-side edit too often to apply it.
    #[error("document keeps changing; try again")]
    Busy,
}

impl ShardError {
    /// The wire error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidUpdate(_) | Self::MissingDependencies => ErrorCode::InvalidUpdate,
            Self::InvalidAwareness(_) => ErrorCode::InvalidAwareness,
            Self::InvalidStateVector(_) => ErrorCode::InvalidStateVector,
            Self::NotSubscribed => ErrorCode::NotSubscribed,
            Self::AlreadySubscribed => ErrorCode::AlreadySubscribed,
            Self::SlowConsumer => ErrorCode::SlowConsumer,
            Self::TooLarge { .. } => ErrorCode::DocTooLarge,
            Self::Closed => ErrorCode::DocReloaded,
            Self::ShuttingDown => ErrorCode::ShuttingDown,
            Self::Corrupt(_) | Self::NotEmpty | Self::Busy => ErrorCode::Internal,
        }
    }
}

/// An update that was applied and queued for disk.
#[derive(Debug)]
pub struct Applied {
    /// The document's sequence number for the update.
    pub doc_seq: u64,
    /// Completes once the update is durable.
    pub durable: Durable,
}

/// What applying an update did to the doc.
enum Integrated {
    /// All of it.
    All,
    /// Nothing new: the doc had all of it already.
    Nothing,
    /// Only `part`; the rest depends on changes the doc lacks, or yrs
    /// `refused` it (then nothing after it was applied either).
    Partly {
        part: Update,
        refused: Option<String>,
    },
    /// yrs panicked before changing anything; the doc is as it was.
    Untouched,
}

/// A peer subscribed to this document, and the awareness client ids it set.
struct Member {
    peer: Arc<Peer>,
    /// The name the peer gave; shown with its presence.
    author: Arc<str>,
    /// Awareness clients this peer introduced, removed when it leaves.
    /// Bounded in practice by what one client sends; cleared on leave.
    awareness_clients: Vec<ClientID>,
    /// Set while the peer misses this document's broadcasts for lack of
    /// room in its queue: nothing more is queued for it until a resync.
    behind: Option<Behind>,
}

/// What a member that fell behind needs to catch up.
struct Behind {
    /// A state vector the member has everything up to: the resync sends
    /// the diff against it.
    state_vector: StateVector,
    /// Awareness clients removed since, so the resync can remove them too.
    /// At most [`MAX_REMOVALS_WHILE_BEHIND`].
    left: Vec<ClientID>,
}

struct ShardState {
    awareness: Awareness,
    text: TextRef,
    last_seq: u64,
    updates_since_snapshot: u64,
    last_snapshot_at: Instant,
    last_change_ms: i64,
    last_change_at: Instant,
    /// Authors since the last version, in order of first edit, at most
    /// [`MAX_VERSION_AUTHORS`].
    authors_since_version: Vec<Arc<str>>,
    /// The newest version and its seq, so a label on it keeps its summary.
    last_version: Option<(u64, Version)>,
    members: Vec<Member>,
    /// When the last member left; `None` while anyone is subscribed.
    idle_since: Option<Instant>,
    /// The whole state encoded once, served to every joiner with an empty
    /// state vector until the next update.
    full_state: Option<Bytes>,
    /// Set when evicted or poisoned; callers then look the doc up again.
    closed: bool,
    /// The encoded state's size when last measured exactly (0 before the
    /// first measurement).
    size_measured: u64,
    /// Bytes of updates applied since that measurement: `size_measured +
    /// size_since` bounds the encoded size from above in practice (merging
    /// updates never takes more room than their sum, bar a few bytes per
    /// split item), and is cheap to keep.
    size_since: u64,
    /// The text delta of the last transaction, left by the text observer
    /// when `want_delta` is set.
    last_delta: Arc<Mutex<Vec<Op>>>,
    /// Whether the observer should compute deltas: yrs walks the text from
    /// its start to make one, so only while someone watches.
    want_delta: Arc<AtomicBool>,
}

/// One document in memory. See the module docs.
pub struct DocShard {
    id: DocId,
    state: Mutex<ShardState>,
    feed: Arc<DocFeed>,
    writer: StoreWriter,
    settings: ShardSettings,
}

/// What `GET /docs` shows of a resident document.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    pub text_len: u64,
    pub subscribers: usize,
    pub last_seq: u64,
    pub last_change_ms: i64,
}

pub(crate) fn new_doc() -> Doc {
    // UTF-16 offsets, like Yjs in the browser, so lengths and positions match
    // what JavaScript clients see.
    Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    })
}

/// Decodes an update a client sent, refusing first what yrs would accept
/// but mishandle (see [`update_check`]).
fn decode_incoming(update: &[u8]) -> Result<Update, ShardError> {
    decode_guarded(|| update_check::check(update)).map_err(ShardError::InvalidUpdate)?;
    decode_guarded(|| Update::decode_v1(update)).map_err(ShardError::InvalidUpdate)
}

/// Runs a decoder that may panic on hostile bytes (yrs asserts on some
/// malformed input), turning a panic into an error. Shared with the
/// y-websocket session, which parses y-protocols frames with yrs's readers.
pub(crate) fn decode_guarded<T, E: std::fmt::Display>(
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("decoder rejected the bytes".to_owned()),
    }
}

impl DocShard {
    /// Builds a shard from what the store holds (`None`: a new, empty document).
    ///
    /// # Errors
    /// [`ShardError::Corrupt`] if a stored snapshot or log entry does not apply.
    pub fn load(
        id: DocId,
        stored: Option<StoredDoc>,
        writer: StoreWriter,
        settings: ShardSettings,
        feed: Arc<DocFeed>,
    ) -> Result<Self, ShardError> {
        let doc = new_doc();
        let text = doc.get_or_insert_text(TEXT_NAME);
        let mut stored_bytes = 0u64;
        // Loaded from a snapshot alone, the snapshot's bytes are the full
        // state: the first joiners need not wait for an encode.
        let mut full_state = None;
        let (last_seq, last_change_ms, updates_since_snapshot, last_version) = match stored {
            None => (0, now_ms(), 0, None),
            Some(stored) => {
                if stored.log.is_empty() {
                    full_state = stored.snapshot.as_ref().map(|(_, s)| s.state.clone());
                }
                let last_seq = stored.last_seq();
                let pending = stored.log.len() as u64;
                let last_version = stored
                    .snapshot
                    .as_ref()
                    .zip(stored.version.clone())
                    .map(|((seq, _), v)| (*seq, v));
                let states = stored
                    .snapshot
                    .iter()
                    .map(|(seq, s)| (*seq, &s.state))
                    .chain(stored.log.iter().map(|(seq, e)| (*seq, &e.update)));
                for (seq, bytes) in states {
                    stored_bytes += bytes.len() as u64;
                    let update = decode_guarded(|| Update::decode_v1(bytes))
                        .map_err(|e| ShardError::Corrupt(format!("{id} seq {seq}: {e}")))?;
                    let applied =
                        catch_unwind(AssertUnwindSafe(|| doc.transact_mut().apply_update(update)));
                    match applied {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            return Err(ShardError::Corrupt(format!("{id} seq {seq}: {e}")))
                        }
                        Err(_) => {
                            return Err(ShardError::Corrupt(format!("{id} seq {seq}: panic")))
                        }
                    }
                }
                (last_seq, stored.meta.updated_ms, pending, last_version)
            }
        };
        // Observed after loading, so replaying the log costs no deltas.
        let last_delta = Arc::new(Mutex::new(Vec::new()));
        let want_delta = Arc::new(AtomicBool::new(false));
        let (slot, wanted) = (last_delta.clone(), want_delta.clone());
        text.observe(
            "folio-feed",
            move |txn: &TransactionMut, event: &TextEvent| {
                if wanted.load(Ordering::Relaxed) {
                    *slot.lock() = event.delta(txn).iter().map(delta::from_yrs).collect();
                }
            },
        );
        Ok(Self {
            id,
            state: Mutex::new(ShardState {
                awareness: Awareness::new(doc),
                text,
                last_seq,
                updates_since_snapshot,
                last_snapshot_at: Instant::now(),
                last_change_ms,
                last_change_at: Instant::now(),
                authors_since_version: Vec::new(),
                last_version,
                members: Vec::new(),
                idle_since: Some(Instant::now()),
                full_state,
                closed: false,
                size_measured: 0,
                size_since: stored_bytes,
                last_delta,
                want_delta,
            }),
            feed,
            writer,
            settings,
        })
    }

    /// A place in the writer's queue, taken before the lock: the lock is
    /// never held while waiting for the writer.
    async fn permit(&self) -> Result<WritePermit<'_>, ShardError> {
        self.writer
            .reserve()
            .await
            .map_err(|_| ShardError::ShuttingDown)
    }

    /// The document's id.
    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// Whether the shard was evicted or poisoned.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Subscribes `peer`: queues a `Synced` with what the peer lacks given its
    /// state vector, then every later update and awareness change.
    ///
    /// # Errors
    /// An undecodable state vector, a duplicate subscription, a full queue, or
    /// [`ShardError::Closed`].
    pub fn subscribe(
        &self,
        peer: &Arc<Peer>,
        author: &str,
        state_vector: &[u8],
    ) -> Result<(), ShardError> {
        let client_sv = if state_vector.is_empty() {
            None
        } else {
            Some(
                decode_guarded(|| StateVector::decode_v1(state_vector))
                    .map_err(ShardError::InvalidStateVector)?,
            )
        };
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        if st.members.iter().any(|m| m.peer.id() == peer.id()) {
            return Err(ShardError::AlreadySubscribed);
        }
        let update = match &client_sv {
            Some(sv) if !sv.is_empty() => {
                Bytes::from(st.awareness.doc().transact().encode_diff_v1(sv))
            }
            _ => full_state_locked(&mut st),
        };
        let server_sv = Bytes::from(st.awareness.doc().transact().state_vector().encode_v1());
        let awareness = encode_awareness(&st.awareness);
        let frames = match peer.wire() {
            Wire::Folio => vec![protocol::encode(Kind::Synced(v1::Synced {
                doc: self.id.to_string(),
                update,
                state_vector: server_sv,
                awareness,
            }))],
            // y-websocket: answer the client's step 1 with step 2, then ask
            // for what it has with our own step 1, then everyone's presence.
            Wire::YSync => {
                let mut frames = vec![ysync::step2(&update), ysync::step1(&server_sv)];
                if !awareness.is_empty() {
                    frames.push(ysync::awareness(&awareness));
                }
                frames
            }
        };
        // An answer to the peer's own request: queued whatever the room,
        // and its connection waits for room before reading more.
        for frame in frames {
            peer.force_send(frame).map_err(|_| ShardError::Closed)?;
        }
        st.members.push(Member {
            peer: peer.clone(),
            author: author.into(),
            awareness_clients: Vec::new(),
            behind: None,
        });
        st.idle_since = None;
        Ok(())
    }

    /// Removes `peer_id`'s subscription and its awareness entries, telling the
    /// others. Returns whether it was subscribed.
    pub fn unsubscribe(&self, peer_id: u64) -> bool {
        let mut st = self.state.lock();
        let Some(at) = st.members.iter().position(|m| m.peer.id() == peer_id) else {
            return false;
        };
        let member = st.members.swap_remove(at);
        self.drop_members(&mut st, vec![member]);
        true
    }

    /// Applies a Yjs v1 update from `author` (the peer `from`, if any, does
    /// not get it back), queues it for disk and broadcasts it.
    ///
    /// # Errors
    /// An invalid update or one with missing dependencies changes nothing.
    /// [`ShardError::Closed`] if the shard was evicted or poisoned meanwhile;
    /// [`ShardError::ShuttingDown`] if the writer has stopped.
    pub async fn apply_update(
        &self,
        update: Bytes,
        author: &str,
        from: Option<u64>,
    ) -> Result<Applied, ShardError> {
        let decoded = decode_incoming(&update)?;
        // Reserve the log slot before locking: the lock is never held while
        // waiting for the writer.
        let permit = self.permit().await?;
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        if let Some(sub) = from {
            if !st.members.iter().any(|m| m.peer.id() == sub) {
                return Err(ShardError::NotSubscribed);
            }
        }
        let all_blocks_known = {
            let txn = st.awareness.doc().transact();
            let have = txn.state_vector();
            // An update whose first block of some client starts past what we
            // have would sit as "pending" forever: refuse it instead.
            let missing = decoded
                .state_vector_lower()
                .iter()
                .any(|(client, clock)| *clock > have.get(client));
            if missing {
                return Err(ShardError::MissingDependencies);
            }
            // Every block it carries ends at or below our clock for its
            // client: nothing new to integrate. (`Update::state_vector`
            // leaves out clients whose blocks do not start at 0, so ask the
            // insertion set instead.)
            decoded
                .insertions(true)
                .iter()
                .all(|(client, ranges)| ranges.iter().all(|r| r.end <= have.get(client)))
        };
        if !all_blocks_known {
            self.check_size(&mut st, update.len() as u64)?;
        }
        let mut counts = (
            id_set_len(&decoded.insertions(false)),
            id_set_len(decoded.delete_set()),
        );
        let want_delta = self.feed.wants_deltas();
        st.want_delta.store(want_delta, Ordering::Relaxed);
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = st.awareness.doc().transact_mut();
            // yrs stops at the first block it cannot integrate (one whose
            // parent is not a type), keeping the blocks before it.
            let refused = match catch_unwind(AssertUnwindSafe(|| txn.apply_update(decoded))) {
                Ok(result) => result.err().map(|e| e.to_string()),
                // Some malformed block lists make yrs panic while it sorts
                // them, before it integrates or deletes anything. Nothing
                // changed then, so there is nothing to reload.
                Err(_) if txn.insert_set().is_empty() && txn.delete_set().is_empty() => {
                    txn.prune_pending();
                    return Ok(Integrated::Untouched);
                }
                Err(_) => return Err("panic while applying".to_owned()),
            };
            // Parts that build on or delete items this document lacks would
            // wait in yrs as "pending" state, which snapshots, joiners and
            // the log never see, and which a later update could bring to
            // life in memory only. Drop them, and keep what did integrate.
            if txn.prune_pending().is_some() || refused.is_some() {
                let part = Update::decode_v1(&txn.encode_update_v1()).map_err(|e| e.to_string())?;
                return Ok(Integrated::Partly { part, refused });
            }
            // A resend of what we already have (a reconnecting client's
            // unacked updates, an empty update): nothing to log or send.
            if all_blocks_known && txn.delete_set().is_empty() {
                return Ok(Integrated::Nothing);
            }
            Ok::<_, String>(Integrated::All)
        }));
        let (failure, integrated) = match applied {
            Ok(Ok(integrated)) => (None, integrated),
            Ok(Err(e)) => (Some(e), Integrated::Nothing),
            Err(_) => (Some("panic while applying".to_owned()), Integrated::Nothing),
        };
        if let Some(reason) = failure {
            // The doc may be half-changed: drop it, so the next use reloads
            // it from disk, where this update never went.
            tracing::error!(doc = %self.id, %reason, "update broke the document; reloading it");
            self.poison(&mut st);
            return Err(ShardError::InvalidUpdate(reason));
        }
        let update = match integrated {
            Integrated::All => update,
            Integrated::Nothing => {
                // Durable once whatever is queued before it is: that includes
                // the update this one repeats, if it is still on its way.
                return Ok(Applied {
                    doc_seq: st.last_seq,
                    durable: permit.send(WriteOp::Barrier),
                });
            }
            Integrated::Untouched => {
                tracing::warn!(doc = %self.id, "yrs panicked on an update before applying it");
                return Err(ShardError::InvalidUpdate(
                    "the update's blocks are inconsistent".to_owned(),
                ));
            }
            // Nothing integrated: the doc is as it was.
            Integrated::Partly { part, refused } if part.is_empty() => {
                return Err(refused.map_or(ShardError::MissingDependencies, |reason| {
                    ShardError::InvalidUpdate(reason)
                }));
            }
            // Log and send what the doc now holds, so that the log, the
            // other clients and memory agree.
            Integrated::Partly { part, .. } => {
                counts = (
                    id_set_len(&part.insertions(false)),
                    id_set_len(part.delete_set()),
                );
                Bytes::from(part.encode_v1())
            }
        };
        Ok(self.commit(&mut st, permit, update, author, counts, want_delta, from))
    }

    /// Refuses an update of `len` bytes that would take the document past
    /// `max_doc_bytes`. The size is estimated as the last exact measurement
    /// plus the bytes of every update since. When that estimate would pass
    /// the limit, the state is encoded to measure it exactly (and kept for
    /// joiners), but at most once per `max / 1024` bytes of updates accepted,
    /// so a document at its limit is not re-encoded on every keystroke: the
    /// limit may bite up to that much early.
    ///
    /// # Errors
    /// [`ShardError::TooLarge`].
    fn check_size(&self, st: &mut ShardState, len: u64) -> Result<(), ShardError> {
        let max = self.settings.max_doc_bytes;
        if max == 0 || st.size_measured + st.size_since + len <= max {
            return Ok(());
        }
        if st.size_since >= (max / 1024).max(1) {
            st.full_state = None;
            full_state_locked(st);
        }
        let now = st.size_measured + st.size_since;
        if now + len > max {
            return Err(ShardError::TooLarge { now, max });
        }
        Ok(())
    }

    /// Logs, publishes and broadcasts an update just applied to the doc.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        st: &mut ShardState,
        permit: WritePermit<'_>,
        update: Bytes,
        author: &str,
        counts: (u32, u32),
        want_delta: bool,
        from: Option<u64>,
    ) -> Applied {
        let text_len = {
            let txn = st.awareness.doc().transact();
            u64::from(st.text.len(&txn))
        };
        st.last_seq += 1;
        crate::metrics::update_applied();
        let seq = st.last_seq;
        let delta = want_delta.then(|| std::mem::take(&mut *st.last_delta.lock()));
        self.feed.edit(author, delta, counts, text_len, seq);
        let time_ms = now_ms();
        st.last_change_ms = time_ms;
        st.last_change_at = Instant::now();
        if st.authors_since_version.len() < MAX_VERSION_AUTHORS
            && !st.authors_since_version.iter().any(|a| &**a == author)
        {
            st.authors_since_version.push(author.into());
        }
        st.full_state = None;
        st.size_since += update.len() as u64;
        st.updates_since_snapshot += 1;
        let durable = permit.send(WriteOp::Append {
            doc: self.id.clone(),
            seq,
            entry: LogEntry {
                time_ms,
                author: author.to_owned(),
                update: update.clone(),
                first_seq: 0,
            },
            text_len,
        });
        self.broadcast(st, &Broadcast::Update { update, seq }, from);
        if st.updates_since_snapshot >= self.settings.snapshot_every_updates {
            self.snapshot_locked(st, VersionKind::Auto);
        }
        Applied {
            doc_seq: seq,
            durable,
        }
    }

    /// Turns the text into `target` with one update authored `author` (a
    /// restore, or a document's initial text), live for every subscriber.
    /// The edits are a character diff of the two texts, so concurrent
    /// editors' cursors outside the changed ranges stay put. With `version`,
    /// a version of that kind and label is taken right after. Returns `None`
    /// if the text already was `target`.
    ///
    /// # Errors
    /// [`ShardError::Busy`] if the document kept changing while the diff was
    /// computed; [`ShardError::NotEmpty`] with `only_if_new` on a document
    /// that has updates; closed or shutting down.
    pub async fn set_text(
        &self,
        target: &str,
        author: &str,
        version: Option<(VersionKind, String)>,
        only_if_new: bool,
    ) -> Result<Option<(Applied, Option<Durable>)>, ShardError> {
        /// Attempts before giving up on a document that changes under us.
        const ATTEMPTS: usize = 4;
        let max = self.settings.max_doc_bytes;
        if max > 0 && target.len() as u64 > max {
            return Err(ShardError::TooLarge {
                now: self.state.lock().size_measured,
                max,
            });
        }
        for _ in 0..ATTEMPTS {
            let (current, seen_seq) = {
                let st = self.state.lock();
                if st.closed {
                    return Err(ShardError::Closed);
                }
                if only_if_new && st.last_seq > 0 {
                    return Err(ShardError::NotEmpty);
                }
                let txn = st.awareness.doc().transact();
                (st.text.get_string(&txn), st.last_seq)
            };
            // The diff can take a while on a long text: not under the lock.
            let ops = delta::between(&current, target);
            if ops.is_empty() {
                return Ok(None);
            }
            let permit = self.permit().await?;
            let version_permit = match &version {
                Some(_) => Some(self.permit().await?),
                None => None,
            };
            let mut st = self.state.lock();
            if st.closed {
                return Err(ShardError::Closed);
            }
            if st.last_seq != seen_seq {
                continue;
            }
            let want_delta = self.feed.wants_deltas();
            st.want_delta.store(want_delta, Ordering::Relaxed);
            let (update, counts) = {
                let text = st.text.clone();
                let mut txn = st.awareness.doc().transact_mut();
                let counts = delta::apply_to_text(&ops, &text, &mut txn);
                (Bytes::from(txn.encode_update_v1()), counts)
            };
            let applied = self.commit(&mut st, permit, update, author, counts, want_delta, None);
            let saved = version_permit
                .zip(version)
                .map(|(permit, (kind, label))| self.snapshot_with(&mut st, permit, kind, label));
            return Ok(Some((applied, saved)));
        }
        Err(ShardError::Busy)
    }

    /// Applies `update` as the first content of a new document, then takes
    /// a version of `kind` labelled `label` (a copy of another document).
    ///
    /// # Errors
    /// [`ShardError::NotEmpty`] if the document already has updates; an
    /// invalid update; closed or shutting down.
    pub async fn apply_initial(
        &self,
        update: Bytes,
        author: &str,
        kind: VersionKind,
        label: String,
    ) -> Result<(Applied, Option<Durable>), ShardError> {
        let decoded = decode_incoming(&update)?;
        let permit = self.permit().await?;
        let version_permit = self.permit().await?;
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        if st.last_seq > 0 {
            return Err(ShardError::NotEmpty);
        }
        let counts = (
            id_set_len(&decoded.insertions(false)),
            id_set_len(decoded.delete_set()),
        );
        let want_delta = self.feed.wants_deltas();
        st.want_delta.store(want_delta, Ordering::Relaxed);
        let applied = catch_unwind(AssertUnwindSafe(|| {
            st.awareness.doc().transact_mut().apply_update(decoded)
        }));
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.poison(&mut st);
                return Err(ShardError::InvalidUpdate(e.to_string()));
            }
            Err(_) => {
                self.poison(&mut st);
                return Err(ShardError::InvalidUpdate("panic while applying".to_owned()));
            }
        }
        let applied = self.commit(&mut st, permit, update, author, counts, want_delta, None);
        let saved = self.snapshot_with(&mut st, version_permit, kind, label);
        Ok((applied, Some(saved)))
    }

    /// Takes a version of the document as it is now, labelled `label` (empty:
    /// none). If the newest version is at the current seq already, labels
    /// that one instead of taking another. Returns its seq, its summary and
    /// when it is durable.
    ///
    /// # Errors
    /// Closed or shutting down.
    pub async fn save_version(
        &self,
        kind: VersionKind,
        label: String,
    ) -> Result<(u64, Version, Durable), ShardError> {
        let permit = self.permit().await?;
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        let durable = self.snapshot_with(&mut st, permit, kind, label);
        let (seq, version) = st.last_version.clone().unwrap_or_default();
        Ok((seq, version, durable))
    }

    /// Closes the shard because its document is being deleted: every
    /// subscriber is dropped with [`DropReason::Deleted`].
    pub fn close_deleted(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        for member in std::mem::take(&mut st.members) {
            for client in &member.awareness_clients {
                st.awareness.remove_state(*client);
                // Watchers see everyone leave.
                self.feed.presence(client.get(), None);
            }
            member
                .peer
                .mark_dropped(self.id.clone(), DropReason::Deleted);
        }
    }

    /// Applies a y-protocols awareness update from subscriber `from` and
    /// relays it to the other subscribers.
    ///
    /// # Errors
    /// An undecodable update, or a state that is not JSON, changes nothing.
    pub fn apply_awareness(&self, update: Bytes, from: u64) -> Result<(), ShardError> {
        let decoded = decode_guarded(|| AwarenessUpdate::decode_v1(&update))
            .map_err(ShardError::InvalidAwareness)?;
        if let Some(client) = decoded
            .clients
            .keys()
            .find(|c| c.get() > update_check::MAX_CLIENT_ID)
        {
            return Err(ShardError::InvalidAwareness(format!(
                "client id {client} is past 2^53 - 1, which JavaScript clients cannot read"
            )));
        }
        for entry in decoded.clients.values() {
            serde_json::from_str::<serde::de::IgnoredAny>(&entry.json)
                .map_err(|e| ShardError::InvalidAwareness(format!("state is not JSON: {e}")))?;
        }
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        // Clients such as the y-websocket provider relay every presence they
        // hear, others' included: a presence belongs to the member that
        // introduced it, so that it leaves with that member and no other.
        let present: Vec<ClientID> = decoded
            .clients
            .keys()
            .copied()
            .filter(|c| st.awareness.state::<serde::de::IgnoredAny>(*c).is_some())
            .collect();
        let Some(member) = st.members.iter_mut().find(|m| m.peer.id() == from) else {
            return Err(ShardError::NotSubscribed);
        };
        for (client, entry) in &decoded.clients {
            let owned = member.awareness_clients.iter().position(|c| c == client);
            match (&*entry.json == "null", owned) {
                (false, None) if !present.contains(client) => {
                    member.awareness_clients.push(*client);
                }
                (true, Some(at)) => {
                    member.awareness_clients.swap_remove(at);
                }
                _ => {}
            }
        }
        let author = member.author.clone();
        let changed = st
            .awareness
            .apply_update_summary(decoded)
            .map_err(|e| ShardError::InvalidAwareness(e.to_string()))?;
        if let Some(changed) = changed {
            for client in changed.all_changes() {
                let now = presence_of(&st, client, &author);
                self.feed.presence(client.get(), now);
            }
            self.broadcast(&mut st, &Broadcast::Awareness(update), Some(from));
        }
        Ok(())
    }

    /// The document's watcher feed.
    pub fn feed(&self) -> &Arc<DocFeed> {
        &self.feed
    }

    /// The text now, and every edit after it: taken under the lock that
    /// orders edits, so applying the edits to the text never skips or repeats one.
    pub fn watch_text(&self) -> (String, tokio::sync::broadcast::Receiver<Arc<Edit>>) {
        let st = self.state.lock();
        let rx = self.feed.subscribe_edits();
        let txn = st.awareness.doc().transact();
        (st.text.get_string(&txn), rx)
    }

    /// The document's text.
    pub fn text(&self) -> String {
        let st = self.state.lock();
        let txn = st.awareness.doc().transact();
        st.text.get_string(&txn)
    }

    /// The whole document as one Yjs v1 update.
    pub fn full_state(&self) -> Bytes {
        full_state_locked(&mut self.state.lock())
    }

    /// A summary for listings.
    pub fn info(&self) -> ShardInfo {
        let st = self.state.lock();
        let txn = st.awareness.doc().transact();
        ShardInfo {
            text_len: u64::from(st.text.len(&txn)),
            subscribers: st.members.len(),
            last_seq: st.last_seq,
            last_change_ms: st.last_change_ms,
        }
    }

    /// Periodic upkeep: snapshots a document that changed more than
    /// `snapshot_interval` ago. Returns `true` if the shard closed itself
    /// because nobody used it for `evict_after` (the caller then drops it).
    pub fn maintain(&self, evict_after: Duration) -> bool {
        let mut st = self.state.lock();
        if st.closed {
            return true;
        }
        let idle = st.idle_since.is_some_and(|t| t.elapsed() >= evict_after);
        let dirty = st.updates_since_snapshot > 0;
        if dirty {
            if idle || st.last_change_at.elapsed() >= self.settings.version_idle {
                self.snapshot_locked(&mut st, VersionKind::Idle);
            } else if st.last_snapshot_at.elapsed() >= self.settings.snapshot_interval {
                self.snapshot_locked(&mut st, VersionKind::Auto);
            }
        }
        if idle && st.updates_since_snapshot == 0 {
            // Everything queued for this doc reaches disk before any reload:
            // the registry puts a writer barrier in front of every load.
            st.closed = true;
            return true;
        }
        false
    }

    /// When the last subscriber left, or `None` while anyone is subscribed.
    pub fn idle_since(&self) -> Option<Instant> {
        self.state.lock().idle_since
    }

    /// Closes the shard now if nobody is subscribed, snapshotting unsaved
    /// changes first (the least-recently-used eviction). Returns whether it
    /// closed; it does not if the disk queue has no room for the snapshot.
    pub fn evict_if_idle(&self) -> bool {
        let mut st = self.state.lock();
        if st.closed {
            return true;
        }
        if !st.members.is_empty() {
            return false;
        }
        if st.updates_since_snapshot > 0 {
            self.snapshot_locked(&mut st, VersionKind::Idle);
            if st.updates_since_snapshot > 0 {
                return false;
            }
        }
        // As in `maintain`: the registry puts a writer barrier in front of
        // every load, so the snapshot is on disk before any reload.
        st.closed = true;
        true
    }

    /// Queues a snapshot if the document changed since the last one. Used at
    /// shutdown; waits for queue space, so call it without holding anything.
    pub async fn flush_snapshot(&self) {
        if self.state.lock().updates_since_snapshot == 0 {
            return;
        }
        let Ok(permit) = self.writer.reserve().await else {
            return;
        };
        let mut st = self.state.lock();
        if st.updates_since_snapshot > 0 {
            drop(self.snapshot_with(&mut st, permit, VersionKind::Shutdown, String::new()));
        }
    }

    fn snapshot_locked(&self, st: &mut ShardState, kind: VersionKind) {
        // Never wait under the lock: if the queue is full, try again on the
        // next update or the next maintenance pass.
        if let Some(permit) = self.writer.try_reserve() {
            drop(self.snapshot_with(st, permit, kind, String::new()));
        }
    }

    /// Queues a snapshot and its version. At the seq of the newest version,
    /// rewrites that version with `label` (if one is given) instead.
    fn snapshot_with(
        &self,
        st: &mut ShardState,
        permit: WritePermit<'_>,
        kind: VersionKind,
        label: String,
    ) -> Durable {
        let state = full_state_locked(st);
        let seq = st.last_seq;
        let time_ms = now_ms();
        let version = match st.last_version.take() {
            Some((at, mut v)) if at == seq => {
                if !label.is_empty() {
                    v.label = label;
                }
                v
            }
            _ => {
                let text_len = {
                    let txn = st.awareness.doc().transact();
                    u64::from(st.text.len(&txn))
                };
                Version {
                    time_ms,
                    kind: kind as i32,
                    label,
                    text_len,
                    authors: st
                        .authors_since_version
                        .drain(..)
                        .map(|a| a.to_string())
                        .collect(),
                }
            }
        };
        st.last_version = Some((seq, version.clone()));
        let durable = permit.send(WriteOp::Snapshot {
            doc: self.id.clone(),
            seq,
            snapshot: Snapshot { time_ms, state },
            version,
        });
        st.updates_since_snapshot = 0;
        st.last_snapshot_at = Instant::now();
        // If the snapshot fails, the log still holds every update and the
        // next snapshot tries again; watchers hear of the ones that land.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return durable;
        };
        let (done, relayed) = tokio::sync::oneshot::channel();
        let feed = self.feed.clone();
        rt.spawn(async move {
            let result = durable
                .await
                .unwrap_or_else(|_| Err(WriteFailed(Arc::from("the store writer stopped"))));
            if result.is_ok() {
                feed.saved(seq);
            }
            let _ = done.send(result);
        });
        relayed
    }

    /// Sends `msg` to every member but `except`, encoded once per wire.
    ///
    /// A member whose queue has no room falls behind: it stays subscribed
    /// (its presence is untouched), nothing more is queued for it, and its
    /// connection is asked to call [`DocShard::resync`] once its queue
    /// drains. That way a slow consumer costs the server a state vector, not
    /// a backlog, and the CRDT makes the catch-up lossless. A member whose
    /// connection is gone is removed.
    fn broadcast(&self, st: &mut ShardState, msg: &Broadcast, except: Option<u64>) {
        let started = Instant::now();
        let mut frames = FrameCache::default();
        let mut resync_point: Option<StateVector> = None;
        let mut gone = Vec::new();
        for i in 0..st.members.len() {
            let member = &st.members[i];
            if Some(member.peer.id()) == except || member.behind.is_some() {
                continue;
            }
            let wire = member.peer.wire();
            let frame = frames.get(wire, || msg.encode(&self.id, wire));
            match member.peer.try_send(frame) {
                Ok(()) => {}
                Err(SendError::Full) => {
                    let state_vector = resync_point
                        .get_or_insert_with(|| msg.resync_point(&st.awareness))
                        .clone();
                    let member = &mut st.members[i];
                    tracing::debug!(doc = %self.id, peer = member.peer.id(), "fell behind; resync once drained");
                    crate::metrics::fell_behind();
                    member.behind = Some(Behind {
                        state_vector,
                        left: Vec::new(),
                    });
                    member.peer.mark_behind(self.id.clone());
                }
                Err(SendError::Closed) => gone.push(i),
            }
        }
        crate::metrics::fanned_out(started.elapsed());
        if !gone.is_empty() {
            // Highest index first, so each swap_remove leaves the rest in place.
            let gone = gone
                .into_iter()
                .rev()
                .map(|i| st.members.swap_remove(i))
                .collect();
            self.drop_members(st, gone);
        }
    }

    /// Catches up the member `peer_id` if it fell behind (see
    /// [`DocShard::broadcast`]): queues everything it may lack since then as
    /// one message (`Resynced`; on `/yjs`, a sync step 2 and the presence),
    /// without waiting. Returns whether it was behind.
    ///
    /// # Errors
    /// [`ShardError::SlowConsumer`] if the queue has no room yet (the member
    /// stays behind: call again once it drains); not subscribed; closed.
    pub fn resync(&self, peer_id: u64) -> Result<bool, ShardError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        let at = st
            .members
            .iter()
            .position(|m| m.peer.id() == peer_id)
            .ok_or(ShardError::NotSubscribed)?;
        let Some(behind) = &st.members[at].behind else {
            return Ok(false);
        };
        let peer = st.members[at].peer.clone();
        if !peer.is_drained() {
            return Err(ShardError::SlowConsumer);
        }
        let update = Bytes::from(
            st.awareness
                .doc()
                .transact()
                .encode_diff_v1(&behind.state_vector),
        );
        let awareness = awareness_with_removals(&st.awareness, &behind.left);
        // Into a drained queue, whatever its size: at most one resync per
        // document waits in the queue.
        let frames = match peer.wire() {
            Wire::Folio => vec![protocol::encode(Kind::Resynced(v1::Resynced {
                doc: self.id.to_string(),
                update,
                awareness,
                seq: st.last_seq,
            }))],
            Wire::YSync => {
                let mut frames = vec![ysync::step2(&update)];
                if !awareness.is_empty() {
                    frames.push(ysync::awareness(&awareness));
                }
                frames
            }
        };
        for frame in frames {
            peer.force_send(frame).map_err(|_| ShardError::Closed)?;
        }
        st.members[at].behind = None;
        crate::metrics::resynced();
        Ok(true)
    }

    /// Removes the awareness of members that left and tells the others.
    fn drop_members(&self, st: &mut ShardState, gone: Vec<Member>) {
        let clients: Vec<ClientID> = gone.into_iter().flat_map(|m| m.awareness_clients).collect();
        if st.members.is_empty() && st.idle_since.is_none() {
            st.idle_since = Some(Instant::now());
        }
        if clients.is_empty() {
            return;
        }
        for client in &clients {
            st.awareness.remove_state(*client);
            self.feed.presence(client.get(), None);
        }
        // Members that are behind hear of it in their resync.
        for behind in st.members.iter_mut().filter_map(|m| m.behind.as_mut()) {
            let room = MAX_REMOVALS_WHILE_BEHIND.saturating_sub(behind.left.len());
            behind.left.extend(clients.iter().take(room));
        }
        let Ok(update) = st.awareness.update_with_clients(clients) else {
            return;
        };
        let update = Bytes::from(update.encode_v1());
        // Recursion is bounded: each round only removes members.
        self.broadcast(st, &Broadcast::Awareness(update), None);
    }

    fn poison(&self, st: &mut ShardState) {
        st.closed = true;
        for member in st.members.drain(..) {
            match member.peer.wire() {
                // The session ends its subscription and sends the error
                // once its queue has room.
                Wire::Folio => member
                    .peer
                    .mark_dropped(self.id.clone(), DropReason::Reloaded),
                // y-websocket has no error message: close, and its provider
                // reconnects and resyncs by itself.
                Wire::YSync => member
                    .peer
                    .try_close(CLOSE_DOC_RELOADED, "document reloaded"),
            }
        }
    }
}

/// Close code for y-websocket peers of a document reloaded after a fault
/// (application range 4000-4999).
pub const CLOSE_DOC_RELOADED: u16 = 4014;

/// What a shard sends to its members.
enum Broadcast {
    Update { update: Bytes, seq: u64 },
    Awareness(Bytes),
}

impl Broadcast {
    /// A state vector that a member who missed this broadcast (and nothing
    /// before it) has everything up to: the document's state now, lowered
    /// to where this update's blocks start. Computed once per broadcast, and
    /// only when some member falls behind.
    fn resync_point(&self, awareness: &Awareness) -> StateVector {
        let mut sv = awareness.doc().transact().state_vector();
        if let Self::Update { update, .. } = self {
            if let Ok(decoded) = decode_guarded(|| Update::decode_v1(update)) {
                for (client, clock) in decoded.state_vector_lower().iter() {
                    sv.set_min(*client, *clock);
                }
            } else {
                // Cannot happen (the update was applied), but if it did the
                // whole state is a safe answer.
                sv = StateVector::default();
            }
        }
        sv
    }

    fn encode(&self, doc: &DocId, wire: Wire) -> Bytes {
        match (self, wire) {
            (Self::Update { update, seq }, Wire::Folio) => {
                protocol::encode(Kind::Update(v1::Update {
                    doc: doc.to_string(),
                    update: update.clone(),
                    seq: *seq,
                }))
            }
            (Self::Update { update, .. }, Wire::YSync) => ysync::update(update),
            (Self::Awareness(update), Wire::Folio) => {
                protocol::encode(Kind::Awareness(v1::Awareness {
                    doc: doc.to_string(),
                    update: update.clone(),
                }))
            }
            (Self::Awareness(update), Wire::YSync) => ysync::awareness(update),
        }
    }
}

/// One encoding per wire, made on first use.
#[derive(Default)]
struct FrameCache {
    folio: Option<Bytes>,
    ysync: Option<Bytes>,
}

impl FrameCache {
    fn get(&mut self, wire: Wire, encode: impl FnOnce() -> Bytes) -> Bytes {
        let slot = match wire {
            Wire::Folio => &mut self.folio,
            Wire::YSync => &mut self.ysync,
        };
        slot.get_or_insert_with(encode).clone()
    }
}

/// How many clock units an id set covers.
/// Saturates: a hostile update can claim ranges that add up past `u32::MAX`
/// (or, wrapped in decoding, end before they start).
fn id_set_len(set: &yrs::IdSet) -> u32 {
    set.iter()
        .flat_map(|(_, ranges)| ranges.iter())
        .fold(0u32, |n, r| n.saturating_add(r.end.saturating_sub(r.start)))
}

/// The `user` part of `client`'s awareness state, or `None` if it has none.
/// The cursor is the selection head, as a number or a Yjs relative position
/// (as y-codemirror and y-prosemirror send), turned into a text index.
fn presence_of(st: &ShardState, client: ClientID, author: &str) -> Option<Presence> {
    let state: serde_json::Value = st.awareness.state(client)?;
    if state.is_null() {
        return None;
    }
    let user = &state["user"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let cursor = match &state["cursor"] {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        v @ serde_json::Value::Object(_) => {
            let head = if v.get("head").is_some() {
                &v["head"]
            } else {
                v
            };
            match head {
                serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                rel => serde_json::from_value::<StickyIndex>(rel.clone())
                    .ok()
                    .and_then(|sticky| {
                        let txn = st.awareness.doc().transact();
                        sticky.get_offset(&txn).map(|o| o.index)
                    }),
            }
        }
        _ => None,
    };
    Some(Presence {
        client: client.get(),
        author: author.to_owned(),
        name: text(&user["name"]),
        color: text(&user["color"]),
        cursor,
    })
}

/// The whole state as one update, encoded once per change and kept; each
/// encoding is also an exact measurement of the document's size.
fn full_state_locked(st: &mut ShardState) -> Bytes {
    if let Some(full) = &st.full_state {
        return full.clone();
    }
    let full = Bytes::from(
        st.awareness
            .doc()
            .transact()
            .encode_diff_v1(&StateVector::default()),
    );
    st.size_measured = full.len() as u64;
    st.size_since = 0;
    st.full_state = Some(full.clone());
    full
}

/// Everyone's presence plus the removal of `left` (those still gone), or
/// empty bytes if that is nobody.
fn awareness_with_removals(awareness: &Awareness, left: &[ClientID]) -> Bytes {
    let Ok(mut update) = awareness.update() else {
        return Bytes::new();
    };
    let known: Vec<ClientID> = left
        .iter()
        .copied()
        .filter(|c| !update.clients.contains_key(c))
        .collect();
    if let Ok(removed) = awareness.update_with_clients(known) {
        update.clients.extend(removed.clients);
    }
    if update.clients.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(update.encode_v1())
    }
}

/// The current presence of everyone, or empty bytes if nobody has any.
fn encode_awareness(awareness: &Awareness) -> Bytes {
    match awareness.update() {
        Ok(update) if !update.clients.is_empty() => Bytes::from(update.encode_v1()),
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DocStore, SledStore};

    fn settings() -> ShardSettings {
        ShardSettings {
            snapshot_every_updates: 3,
            snapshot_interval: Duration::from_secs(60),
            version_idle: Duration::from_secs(60),
            max_doc_bytes: 0,
        }
    }

    fn feed() -> Arc<DocFeed> {
        let hub = crate::feed::FeedHub::new(
            1,
            crate::feed::FeedSettings {
                activity_window: Duration::from_millis(10),
                history_events: 100,
                history_age: Duration::from_secs(60),
            },
        );
        hub.feed(&DocId::parse("d").expect("id"), || 0)
    }

    /// A fresh, empty shard on a sled store in `dir`. The writer thread
    /// ends by itself once the shard is dropped.
    fn new_shard(dir: &std::path::Path) -> DocShard {
        let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir).expect("open"));
        let (writer, _thread) = StoreWriter::start(store, 16).expect("writer");
        DocShard::load(
            DocId::parse("d").expect("id"),
            None,
            writer,
            settings(),
            feed(),
        )
        .expect("load")
    }

    fn insert_update(client: u64, text: &str) -> Bytes {
        let doc = Doc::with_client_id(client);
        let t = doc.get_or_insert_text(TEXT_NAME);
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, text);
        Bytes::from(txn.encode_update_v1())
    }

    #[tokio::test]
    async fn invalid_and_disconnected_updates_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        let ok = shard
            .apply_update(insert_update(1, "hi"), "t", None)
            .await
            .expect("valid update");
        assert_eq!(ok.doc_seq, 1);
        assert!(ok.durable.await.expect("completed").is_ok());
        for junk in [&b"\xff\xff\xff"[..], b"", b"\x01\x01\x80"] {
            let err = shard
                .apply_update(Bytes::copy_from_slice(junk), "t", None)
                .await;
            assert!(
                matches!(err, Err(ShardError::InvalidUpdate(_))),
                "{junk:?}: {err:?}"
            );
        }
        // Client 2's second edit without its first: missing dependencies.
        let d2 = Doc::with_client_id(2);
        let t2 = d2.get_or_insert_text(TEXT_NAME);
        t2.insert(&mut d2.transact_mut(), 0, "a");
        let sv = d2.transact().state_vector();
        t2.insert(&mut d2.transact_mut(), 1, "b");
        let second = Bytes::from(d2.transact().encode_diff_v1(&sv));
        let err = shard.apply_update(second, "t", None).await;
        assert!(
            matches!(err, Err(ShardError::MissingDependencies)),
            "{err:?}"
        );
        assert_eq!(shard.text(), "hi");
        assert_eq!(shard.info().last_seq, 1);
        assert!(!shard.is_closed());
    }

    #[tokio::test]
    async fn resends_are_acknowledged_but_not_logged_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        // Two keystrokes of one client: the second starts past clock 0.
        let typist = Doc::with_client_id(5);
        let text = typist.get_or_insert_text(TEXT_NAME);
        let first = {
            let mut txn = typist.transact_mut();
            text.insert(&mut txn, 0, "a");
            Bytes::from(txn.encode_update_v1())
        };
        let second = {
            let mut txn = typist.transact_mut();
            text.insert(&mut txn, 1, "b");
            Bytes::from(txn.encode_update_v1())
        };
        for (update, seq) in [(first, 1), (second.clone(), 2), (second, 2)] {
            let applied = shard.apply_update(update, "t", None).await.expect("apply");
            assert_eq!(applied.doc_seq, seq);
            assert!(applied.durable.await.expect("completed").is_ok());
        }
        assert_eq!(shard.text(), "ab");
        assert_eq!(shard.info().last_seq, 2);
    }

    /// Applies every frame queued for a Folio peer to `doc`, as a client
    /// would; returns how many were relayed updates and resyncs.
    fn deliver(rx: &mut crate::doc::OutboundRx, doc: &Doc) -> (usize, usize) {
        use crate::doc::Outbound;
        use prost::Message as _;
        let (mut updates, mut resyncs) = (0, 0);
        while let Some(out) = rx.try_recv() {
            let Outbound::Frame(frame) = out else {
                continue;
            };
            rx.written(frame.len());
            let msg = v1::ServerMessage::decode(frame).expect("decodes");
            let update = match msg.kind {
                Some(Kind::Synced(s)) => s.update,
                Some(Kind::Update(u)) => {
                    updates += 1;
                    u.update
                }
                Some(Kind::Resynced(r)) => {
                    resyncs += 1;
                    r.update
                }
                _ => continue,
            };
            let update = Update::decode_v1(&update).expect("update");
            doc.transact_mut().apply_update(update).expect("applies");
        }
        (updates, resyncs)
    }

    #[tokio::test]
    async fn a_full_queue_leaves_the_member_behind_until_a_resync_catches_it_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        // Room for the Synced and about two relayed updates.
        let (slow, mut rx) = Peer::channel(7, Wire::Folio, 400);
        shard.subscribe(&slow, "slow", &[]).expect("subscribe");
        for i in 0..20 {
            shard
                .apply_update(insert_update(10 + i, "x"), "t", None)
                .await
                .expect("apply");
        }
        // Still a member, flagged once, and nothing more was queued.
        assert_eq!(shard.info().subscribers, 1);
        assert_eq!(slow.take_behind(), vec![shard.id().clone()]);
        let queued = slow.meter().queued();
        assert!(queued <= 400, "{queued} bytes queued");
        // Not drained yet: the resync waits.
        assert!(matches!(shard.resync(7), Err(ShardError::SlowConsumer)));
        let client = new_doc();
        let (relayed, _) = deliver(&mut rx, &client);
        assert!(relayed < 20, "{relayed} relayed");
        assert!(shard.resync(7).expect("resync"));
        assert_eq!(deliver(&mut rx, &client), (0, 1));
        let text = client.get_or_insert_text(TEXT_NAME);
        assert_eq!(text.get_string(&client.transact()), shard.text());
        // Caught up: relaying works again, and a second resync is a no-op.
        assert!(!shard.resync(7).expect("resync"));
        shard
            .apply_update(insert_update(99, "y"), "t", None)
            .await
            .expect("apply");
        assert_eq!(deliver(&mut rx, &client), (1, 0));
        assert_eq!(text.get_string(&client.transact()), shard.text());
    }

    #[tokio::test]
    async fn updates_past_the_size_limit_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let (writer, _thread) = StoreWriter::start(store, 16).expect("writer");
        let shard = DocShard::load(
            DocId::parse("d").expect("id"),
            None,
            writer,
            ShardSettings {
                max_doc_bytes: 4096,
                ..settings()
            },
            feed(),
        )
        .expect("load");
        let mut accepted = 0;
        let refused = loop {
            match shard
                .apply_update(insert_update(100 + accepted, &"a".repeat(500)), "t", None)
                .await
            {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 100, "never refused");
        };
        assert!(
            matches!(refused, ShardError::TooLarge { max: 4096, .. }),
            "{refused:?}"
        );
        assert_eq!(refused.code(), ErrorCode::DocTooLarge);
        assert_eq!(shard.info().last_seq, accepted);
        assert_eq!(shard.text().len(), 500 * accepted as usize);
        assert!(shard.full_state().len() <= 4096);
        // Small edits that fit still go in; a huge text is refused up front.
        assert!(shard
            .apply_update(insert_update(1, "b"), "t", None)
            .await
            .is_ok());
        let big = "z".repeat(5000);
        assert!(matches!(
            shard.set_text(&big, "t", None, false).await,
            Err(ShardError::TooLarge { .. })
        ));
    }

    /// A shard over `store`, as [`new_shard`] makes, loaded from what the
    /// store holds.
    fn load_shard(store: &Arc<dyn DocStore>, writer: &StoreWriter) -> DocShard {
        let id = DocId::parse("d").expect("id");
        let stored = store.load(&id).expect("load");
        DocShard::load(id, stored, writer.clone(), settings(), feed()).expect("loads")
    }

    /// Client 7's "hello", and client 8's deletion of its "ell".
    fn hello_and_deletion() -> (Bytes, Bytes) {
        let insert = insert_update(7, "hello");
        let other = Doc::with_client_id(8);
        let text = other.get_or_insert_text(TEXT_NAME);
        let update = Update::decode_v1(&insert).expect("decodes");
        other.transact_mut().apply_update(update).expect("applies");
        let mut txn = other.transact_mut();
        text.remove_range(&mut txn, 1, 3);
        (insert, Bytes::from(txn.encode_update_v1()))
    }

    /// Found while writing the shard fuzz harness (its reload check): a
    /// deletion of text the document did not have yet was acknowledged as a resend but kept
    /// pending in memory, unlogged and unsent; once the text arrived, memory
    /// said "ho" while the log, a reload and every other client said "hello".
    #[tokio::test]
    async fn deletions_of_text_the_document_lacks_are_refused_and_leave_nothing_pending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let (writer, _thread) = StoreWriter::start(store.clone(), 16).expect("writer");
        let shard = load_shard(&store, &writer);
        let (insert, deletion) = hello_and_deletion();
        let refused = shard.apply_update(deletion, "mallory", None).await;
        assert!(
            matches!(refused, Err(ShardError::MissingDependencies)),
            "{refused:?}"
        );
        assert_eq!(shard.info().last_seq, 0);
        let applied = shard.apply_update(insert, "t", None).await.expect("insert");
        assert!(applied.durable.await.expect("completed").is_ok());
        assert_eq!(shard.text(), "hello");
        assert_eq!(load_shard(&store, &writer).text(), "hello");
    }

    /// An update of which only a part integrates is logged and sent as
    /// that part, so memory, the log and the other clients agree. (Before,
    /// the rest stayed pending in memory, but not in the next snapshot: once
    /// the missing text came, memory deleted it and a reload did not.)
    #[tokio::test]
    async fn an_update_that_partly_integrates_is_logged_and_sent_as_that_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let (writer, _thread) = StoreWriter::start(store.clone(), 16).expect("writer");
        let shard = load_shard(&store, &writer);
        let (watcher, mut rx) = Peer::channel(3, Wire::Folio, 1 << 20);
        shard.subscribe(&watcher, "w", &[]).expect("subscribe");
        let (insert, deletion) = hello_and_deletion();
        let mixed =
            yrs::merge_updates_v1([&insert_update(10, "X")[..], &deletion[..]]).expect("merges");
        let applied = shard
            .apply_update(Bytes::from(mixed), "mallory", None)
            .await
            .expect("the part that integrates applies");
        assert_eq!(applied.doc_seq, 1);
        assert_eq!(shard.text(), "X");
        // Two more updates: a snapshot after the third (`settings`), which
        // holds no pending state, so a reload starts from there.
        for (client, text) in [(11, "Y"), (12, "Z")] {
            let update = insert_update(client, text);
            shard.apply_update(update, "t", None).await.expect("apply");
        }
        let applied = shard.apply_update(insert, "t", None).await.expect("insert");
        assert!(applied.durable.await.expect("completed").is_ok());
        let text = shard.text();
        assert_eq!(text.replace(['X', 'Y', 'Z'], ""), "hello", "{text}");
        assert_eq!(load_shard(&store, &writer).text(), text);
        // The watcher, from what it was sent, has the same text.
        let copy = Doc::new();
        while let Some(super::super::Outbound::Frame(frame)) = rx.try_recv() {
            let msg = <protocol::ServerMessage as prost::Message>::decode(frame).expect("frame");
            let update = match msg.kind {
                Some(Kind::Synced(s)) => s.update,
                Some(Kind::Update(u)) => u.update,
                _ => continue,
            };
            let update = Update::decode_v1(&update).expect("decodes");
            copy.transact_mut().apply_update(update).expect("applies");
        }
        let copy_text = copy.get_or_insert_text(TEXT_NAME);
        assert_eq!(copy_text.get_string(&copy.transact()), text);
    }

    /// After a refused update: the shard is open, `watcher` is its one
    /// subscriber and was not dropped, and the text and seq are as before.
    fn assert_undisturbed(shard: &DocShard, watcher: &Peer, text: &str, seq: u64) {
        assert!(!shard.is_closed());
        assert_eq!(shard.info().subscribers, 1);
        assert!(watcher.take_dropped().is_empty());
        assert_eq!(
            (shard.text(), shard.info().last_seq),
            (text.to_owned(), seq)
        );
    }

    /// Found by the `session` fuzz target: an update whose block names a
    /// piece of text as its parent made yrs fail mid-apply, and the shard
    /// closed itself, dropping every subscriber of the document; any client
    /// could repeat it at will. Nothing of it integrates, so it is refused
    /// and the document and its subscribers carry on.
    #[tokio::test]
    async fn an_update_with_a_text_item_as_parent_is_refused_without_closing_the_shard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        let (watcher, _rx) = Peer::channel(3, Wire::Folio, 1 << 20);
        shard.subscribe(&watcher, "w", &[]).expect("subscribe");
        let applied = shard
            .apply_update(insert_update(1, "hello"), "t", None)
            .await
            .expect("apply");
        assert!(applied.durable.await.expect("completed").is_ok());
        // lib0 v1: one client (2) with one struct at clock 0: a string item
        // (info 4) with no origins, whose parent is the id <1#0> (the "h"),
        // holding "x"; then an empty delete set.
        let hostile = Bytes::from_static(&[1, 1, 2, 0, 4, 0, 1, 0, 1, b'x', 0]);
        assert!(Update::decode_v1(&hostile).is_ok(), "the update decodes");
        let refused = shard.apply_update(hostile, "mallory", None).await;
        assert!(
            matches!(&refused, Err(ShardError::InvalidUpdate(r)) if r.contains("parent")),
            "{refused:?}"
        );
        assert_undisturbed(&shard, &watcher, "hello", 1);
    }

    /// Found by the `shard_mutate` fuzz target: an update listing the same
    /// client twice, with overlapping runs, made yrs panic while applying
    /// it, and the shard closed itself, dropping every subscriber; or, with
    /// other clocks, yrs kept a character the sender's first run did not
    /// hold there. It is refused before yrs sees it, and nothing changes.
    #[tokio::test]
    async fn an_update_listing_a_client_twice_is_refused_without_closing_the_shard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        let (watcher, _rx) = Peer::channel(3, Wire::Folio, 1 << 20);
        shard.subscribe(&watcher, "w", &[]).expect("subscribe");
        let applied = shard
            .apply_update(insert_update(7, "abcdef"), "t", None)
            .await
            .expect("apply");
        assert!(applied.durable.await.expect("completed").is_ok());
        // lib0 v1: two entries for client 7, "abcdefgh" from clock 0 and
        // "xy" from clock `second`, each a root string item of the text.
        for second in [5u8, 7] {
            let mut bytes = vec![2];
            for (clock, run) in [(0u8, &b"abcdefgh"[..]), (second, &b"xy"[..])] {
                bytes.extend([1, 7, clock, 4, 1, 7]);
                bytes.extend(TEXT_NAME.as_bytes());
                bytes.push(run.len() as u8);
                bytes.extend(run);
            }
            bytes.push(0);
            assert!(Update::decode_v1(&bytes).is_ok(), "the update decodes");
            let refused = shard
                .apply_update(Bytes::from(bytes), "mallory", None)
                .await;
            assert!(
                matches!(&refused, Err(ShardError::InvalidUpdate(r)) if r.contains("more than once")),
                "{refused:?}"
            );
        }
        assert_undisturbed(&shard, &watcher, "abcdef", 1);
    }

    /// Found by the `session` and `shard_update` fuzz targets: the
    /// structural check (`update_check`) ran outside the panic guard, and
    /// yrs's readers panic in debug builds on a client id of 2^53 or an
    /// integer varint of ten bytes, which unwound out of `apply_update`.
    #[tokio::test]
    async fn updates_that_make_the_structural_check_panic_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        let hex = [
            // client 2^53 types "A"
            "0101808080808080801000040107636f6e74656e74014100",
            // an Any integer as a varint of ten 0xff bytes
            "01010100080107636f6e74656e74017dffffffffffffffffffff0000",
        ];
        for h in hex {
            let bytes: Vec<u8> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                .collect();
            let refused = shard.apply_update(Bytes::from(bytes), "m", None).await;
            assert!(
                matches!(refused, Err(ShardError::InvalidUpdate(_))),
                "{h}: {refused:?}"
            );
        }
        assert!(!shard.is_closed());
        assert_eq!(shard.info().last_seq, 0);
    }

    /// Fuzz finding 4 (`fuzz/known/origins-*.bin`): client 2's "X" with
    /// left origin the "c" and right origin the "b" of client 1's "abc" was
    /// accepted; the shard then read "aXbc" and a client joining from its
    /// state "abcX", for good. The patched yrs (`patches/yrs`) refuses it
    /// before splitting any block, so nothing changes and nothing is sent.
    #[tokio::test]
    async fn an_update_whose_left_origin_follows_its_right_origin_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let (writer, _thread) = StoreWriter::start(store.clone(), 16).expect("writer");
        let shard = load_shard(&store, &writer);
        let (watcher, mut rx) = Peer::channel(3, Wire::Folio, 1 << 20);
        shard.subscribe(&watcher, "w", &[]).expect("subscribe");
        let base = include_bytes!("../../fuzz/known/origins-base.bin");
        let applied = shard
            .apply_update(Bytes::from_static(base), "t", None)
            .await
            .expect("the base applies");
        assert!(applied.durable.await.expect("completed").is_ok());
        let state_before = shard.full_state();
        while rx.try_recv().is_some() {}
        let reversed = include_bytes!("../../fuzz/known/origins-update.bin");
        let refused = shard
            .apply_update(Bytes::from_static(reversed), "mallory", None)
            .await;
        // A joiner from the full state reads what the shard reads.
        let joiner = Doc::new();
        let state = Update::decode_v1(&shard.full_state()).expect("decodes");
        joiner.transact_mut().apply_update(state).expect("applies");
        let joiner_text = joiner.get_or_insert_text(TEXT_NAME);
        assert_eq!(joiner_text.get_string(&joiner.transact()), shard.text());
        assert!(
            matches!(&refused, Err(ShardError::InvalidUpdate(r)) if r.contains("right origin")),
            "{refused:?}"
        );
        assert_eq!(
            ShardError::InvalidUpdate(String::new()).code(),
            ErrorCode::InvalidUpdate
        );
        assert_undisturbed(&shard, &watcher, "abc", 1);
        assert_eq!(shard.full_state(), state_before);
        assert!(rx.try_recv().is_none(), "nothing relayed");
        assert_eq!(load_shard(&store, &writer).text(), "abc");
    }

    /// A presence under a client id JavaScript cannot read would break
    /// every JS client it is relayed to; it is refused and not relayed.
    #[tokio::test]
    async fn awareness_with_a_client_id_past_2_pow_53_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        let (sender, _srx) = Peer::channel(1, Wire::Folio, 1 << 20);
        let (watcher, mut rx) = Peer::channel(2, Wire::Folio, 1 << 20);
        shard.subscribe(&sender, "s", &[]).expect("subscribe");
        shard.subscribe(&watcher, "w", &[]).expect("subscribe");
        while rx.try_recv().is_some() {}
        // y-protocols awareness: one entry, client 2^53, clock 1, state {}.
        let bytes = vec![1, 128, 128, 128, 128, 128, 128, 128, 16, 1, 2, b'{', b'}'];
        let refused = shard.apply_awareness(Bytes::from(bytes), sender.id());
        assert!(
            matches!(refused, Err(ShardError::InvalidAwareness(_))),
            "{refused:?}"
        );
        assert!(rx.try_recv().is_none(), "nothing relayed");
    }

    /// Found by replaying the `shard_update` corpus in a debug build: the
    /// sizes of a hostile update's delete set were summed with `+`, which
    /// overflowed (a panic outside any guard in debug builds, a wrong count
    /// in release ones) before the update was even applied.
    #[tokio::test]
    async fn deletions_claiming_more_than_u32_max_items_are_refused_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        // lib0 v1: no structs; a delete set of two clients, each deleting
        // 0xF000_0000 items from clock 0.
        let huge = [128, 128, 128, 128, 15];
        let mut bytes = vec![0, 2];
        for client in [1, 2] {
            bytes.extend([client, 1, 0]);
            bytes.extend(huge);
        }
        let refused = shard
            .apply_update(Bytes::from(bytes), "mallory", None)
            .await;
        assert!(
            matches!(refused, Err(ShardError::MissingDependencies)),
            "{refused:?}"
        );
        assert!(!shard.is_closed());
        assert_eq!(shard.info().last_seq, 0);
    }
}
