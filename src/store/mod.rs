//! The storage seam. [`DocStore`] is what a backend implements (sled now, Redis
//! later); [`StoreWriter`] is the single group-commit queue in front of it that
//! makes updates durable before they are acknowledged.
//!
//! Layout of a document's history (kept by every backend):
//! - a log: one [`LogEntry`] per accepted update, numbered 1, 2, 3… per document;
//! - snapshots: the full state after some `seq`, each kept (never overwritten),
//!   so any past version can be rebuilt from the nearest snapshot plus the log;
//! - a [`DocMeta`] summary for listing documents without loading them.

mod sled_store;
pub mod vacuum;
mod writer;

pub use sled_store::SledStore;
pub use writer::{Durable, StoreWriter, WriteFailed, WritePermit, WriterClosed, WriterThread};

use crate::doc::DocId;
pub use crate::protocol::store::{DocMeta, LogEntry, Snapshot, Version, VersionKind};

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path} is in use by another folio process (lock file held)")]
    Locked { path: std::path::PathBuf },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("a `folio vacuum` of {path} was interrupted (or is running): {path}.vacuum-tmp or {path}.vacuum-old exists; run `folio vacuum --data-dir {path}` to finish or undo it")]
    VacuumLeftover { path: std::path::PathBuf },
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record {key}: {detail}")]
    Corrupt { key: String, detail: String },
}

/// A document as stored: its newest snapshot and every log entry after it.
#[derive(Debug, Default)]
pub struct StoredDoc {
    pub meta: DocMeta,
    /// `(seq, snapshot)` of the newest snapshot, if any.
    pub snapshot: Option<(u64, Snapshot)>,
    /// The version of that snapshot, if it has one.
    pub version: Option<Version>,
    /// Log entries with `seq` greater than the snapshot's, in order.
    pub log: Vec<(u64, LogEntry)>,
}

impl StoredDoc {
    /// The highest sequence number stored for this document.
    pub fn last_seq(&self) -> u64 {
        let snap = self.snapshot.as_ref().map_or(0, |(seq, _)| *seq);
        let log = self.log.last().map_or(0, |(seq, _)| *seq);
        snap.max(log).max(self.meta.last_seq)
    }
}

/// One write, as queued to the [`StoreWriter`].
#[derive(Debug)]
pub enum WriteOp {
    /// Record that a document exists (no-op if it already does).
    Create { doc: DocId, time_ms: i64 },
    /// Append an accepted update as log entry `seq`.
    Append {
        doc: DocId,
        seq: u64,
        entry: LogEntry,
        /// Text length after this update, for [`DocMeta::text_len`].
        text_len: u64,
    },
    /// Keep the full state after `seq`, and list it as a version. Writing
    /// the same `seq` again replaces both (how a version gets its label).
    Snapshot {
        doc: DocId,
        seq: u64,
        snapshot: Snapshot,
        version: Version,
    },
    /// Remove every record of a document and leave a [`Tombstone`] in
    /// their place, in one transaction.
    Delete {
        doc: DocId,
        /// Who deleted it: the token's `sub`, or `anonymous`.
        by: String,
        time_ms: i64,
    },
    /// Remove a document's [`Tombstone`], so that it can be created again
    /// (an explicit re-creation by someone allowed to write it).
    Revive { doc: DocId },
    /// Retention: replace runs of log entries by merged ones and drop
    /// versions (with their snapshots). See [`crate::history::retention`].
    Compact {
        doc: DocId,
        /// Log keys to remove.
        remove_log: Vec<u64>,
        /// Merged entries, each under the last `seq` it covers.
        put_log: Vec<(u64, LogEntry)>,
        /// Version records to remove.
        remove_versions: Vec<u64>,
        /// Snapshots to remove (a removed version's, unless kept to bound
        /// the distance between snapshots).
        remove_snapshots: Vec<u64>,
    },
    /// Nothing to write: completes once everything queued before it is durable.
    Barrier,
}

/// A storage backend. Every method blocks; call them from a blocking thread
/// (the [`StoreWriter`] thread or `spawn_blocking`), never from an async task.
pub trait DocStore: Send + Sync + 'static {
    /// Loads a document, or `None` if it was never created.
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn load(&self, doc: &DocId) -> Result<Option<StoredDoc>, StoreError>;

    /// Writes `ops` and makes them durable before returning.
    ///
    /// # Errors
    /// I/O failures; then none of `ops` may be considered durable.
    fn write(&self, ops: &[WriteOp]) -> Result<(), StoreError>;

    /// Every document with its summary, ordered by id.
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn list(&self) -> Result<Vec<(DocId, DocMeta)>, StoreError> {
        self.list_page("", None, usize::MAX)
    }

    /// Up to `limit` documents whose id starts with `prefix` and sorts after
    /// `after`, ordered by id.
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(DocId, DocMeta)>, StoreError>;

    /// Up to `limit` log entries with `after < seq <= through`, in order.
    /// After compaction, keys are sparse: an entry may stand for several
    /// updates (`first_seq..=seq`).
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn log_range(
        &self,
        doc: &DocId,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogEntry)>, StoreError>;

    /// The newest snapshot taken at or before `seq`.
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn snapshot_at_or_before(
        &self,
        doc: &DocId,
        seq: u64,
    ) -> Result<Option<(u64, Snapshot)>, StoreError>;

    /// Every version of a document, oldest first.
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn versions(&self, doc: &DocId) -> Result<Vec<(u64, Version)>, StoreError>;

    /// Record counts and bytes of one document, for `folio check` and benchmarks.
    ///
    /// # Errors
    /// I/O failures.
    fn doc_size(&self, doc: &DocId) -> Result<DocSize, StoreError>;

    /// The summary of one document.
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn meta(&self, doc: &DocId) -> Result<Option<DocMeta>, StoreError>;

    /// The tombstone of a deleted document, if it has one.
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn tombstone(&self, doc: &DocId) -> Result<Option<Tombstone>, StoreError>;

    /// Bytes the backend occupies on disk, for metrics and benchmarks.
    ///
    /// # Errors
    /// I/O failures.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// One stored revocation record: key and value, as [`crate::auth::revocation`] encodes them.
pub type RevocationRecord = (Vec<u8>, Vec<u8>);

/// Where token revocations ([`crate::auth::revocation`]) are kept: a small keyed
/// set beside the documents. Every method blocks (call it from a blocking
/// thread); writes are durable before they return, because a revocation
/// acknowledged to an admin must survive a crash.
pub trait RevocationStore: Send + Sync + 'static {
    /// Every stored `(key, value)` pair, in key order.
    ///
    /// # Errors
    /// I/O failures.
    fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError>;

    /// Stores `value` under `key` (replacing any) and removes `remove`, in
    /// one durable batch.
    ///
    /// # Errors
    /// I/O failures; then nothing may be considered written.
    fn write_revocations(
        &self,
        put: Option<(&[u8], &[u8])>,
        remove: &[Vec<u8>],
    ) -> Result<(), StoreError>;
}

/// What a deleted document leaves behind: while it exists, the id stays
/// deleted (no client can bring the document back by pushing its copy);
/// only [`WriteOp::Revive`] removes it. Retention never touches it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tombstone {
    /// When the document was deleted, in milliseconds since the Unix epoch.
    pub deleted_ms: i64,
    /// Who deleted it: the token's `sub`, or `anonymous`.
    pub by: String,
}

impl Tombstone {
    /// The stored form: `deleted_ms` as 8 big-endian bytes, then `by` in UTF-8.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.by.len());
        v.extend_from_slice(&self.deleted_ms.to_be_bytes());
        v.extend_from_slice(self.by.as_bytes());
        v
    }

    /// Parses [`Tombstone::encode`]'s form; `None` if it is not that.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (ms, by) = bytes.split_at_checked(8)?;
        Some(Self {
            deleted_ms: i64::from_be_bytes(ms.try_into().ok()?),
            by: String::from_utf8(by.to_vec()).ok()?,
        })
    }
}

/// How much of the store one document takes (keys and values, before
/// the backend's own overhead).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DocSize {
    pub log_entries: u64,
    pub log_bytes: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub versions: u64,
}

/// Milliseconds since the Unix epoch, for timestamps in records.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
