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
mod writer;

pub use sled_store::SledStore;
pub use writer::{Durable, StoreWriter, WriteFailed, WritePermit, WriterClosed, WriterThread};

use crate::doc::DocId;
pub use crate::protocol::store::{DocMeta, LogEntry, Snapshot};

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
    /// Keep the full state after `seq`.
    Snapshot {
        doc: DocId,
        seq: u64,
        snapshot: Snapshot,
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
    fn list(&self) -> Result<Vec<(DocId, DocMeta)>, StoreError>;

    /// The summary of one document.
    ///
    /// # Errors
    /// I/O or decoding failures.
    fn meta(&self, doc: &DocId) -> Result<Option<DocMeta>, StoreError>;

    /// Bytes the backend occupies on disk, for metrics and benchmarks.
    ///
    /// # Errors
    /// I/O failures.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// Milliseconds since the Unix epoch, for timestamps in records.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
