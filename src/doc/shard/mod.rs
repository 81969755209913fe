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
use yrs::sync::Awareness;
use yrs::types::text::TextEvent;
use yrs::updates::decoder::Decode;
use yrs::{
    ClientID, Doc, GetString, Observable, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef,
    Transact, TransactionMut, Update,
};

use super::peer::Peer;
use super::DocId;
use crate::feed::delta::{self, Op};
use crate::feed::{DocFeed, Edit};
use crate::protocol::ErrorCode;
use crate::store::{now_ms, Durable, StoreWriter, StoredDoc, Version, WritePermit};

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

mod apply;
mod lifecycle;
mod members;
#[cfg(test)]
mod test_support;
mod versions;

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
}

/// Close code for y-websocket peers of a document reloaded after a fault
/// (application range 4000-4999).
pub const CLOSE_DOC_RELOADED: u16 = 4014;

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
