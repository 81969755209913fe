//! Folio's history: every past state of a document, rebuilt from the
//! nearest snapshot plus the update log, and what is built on that —
//! versions, the text at any point, attributed diffs, replay, and retention.
//!
//! Everything here is synchronous and reads a [`DocStore`] directly: call it
//! from a blocking thread (the HTTP handlers use `spawn_blocking`; the
//! offline CLI calls it as is). Writes (compaction) are returned as
//! [`WriteOp`]s, so the server can queue them behind live updates.
//!
//! Points are sequence numbers: the state after update `seq` (0 is the
//! empty document). Versions are points with a snapshot and a summary. Once
//! compaction has merged old log entries, points inside a merged run no
//! longer exist; asking for one gives the latest point before it.

mod changes;
mod check;
pub mod last_pass;
pub mod retention;

use std::sync::Arc;

use parking_lot::Mutex;
use yrs::types::text::TextEvent;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Observable, ReadTxn, StateVector, TextRef, Transact, Update};

pub use changes::{diff, Change, ChangeOp, Changes, MAX_ATTRIBUTED_ENTRIES};
pub use check::{check, DocCheck};

use crate::doc::{decode_guarded, new_doc, DocId, TEXT_NAME};
use crate::feed::delta::{self, Op};
use crate::store::{DocMeta, DocStore, LogEntry, StoreError, Version, VersionKind};

/// Log entries read from the store at a time while rebuilding or replaying.
const READ_CHUNK: usize = 1024;

/// Why a history request failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("document {0} does not exist")]
    DocNotFound(DocId),
    #[error("document {doc} has no version {version}")]
    VersionNotFound { doc: DocId, version: u64 },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("stored history of {doc} does not apply at seq {seq}: {detail}")]
    Corrupt {
        doc: DocId,
        seq: u64,
        detail: String,
    },
}

/// A document rebuilt at a point of its history.
pub struct Rebuilt {
    pub doc: Doc,
    pub text: TextRef,
    /// The point reached: the one asked for, or the latest before it when
    /// that one was merged away by compaction.
    pub seq: u64,
    /// When that point was made (0 for the empty document).
    pub time_ms: i64,
}

impl Rebuilt {
    /// The text at this point.
    pub fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    /// Length of the text at this point, in UTF-16 units.
    pub fn text_len(&self) -> u32 {
        yrs::Text::len(&self.text, &self.doc.transact())
    }

    /// The whole state at this point, as one Yjs v1 update.
    pub fn state(&self) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(&StateVector::default())
    }

    /// Applies the log entry `seq` on top.
    ///
    /// # Errors
    /// [`HistoryError::Corrupt`] if it does not decode or apply.
    pub fn apply(&mut self, doc: &DocId, seq: u64, entry: &LogEntry) -> Result<(), HistoryError> {
        apply_bytes(&self.doc, doc, seq, &entry.update)?;
        self.seq = seq;
        self.time_ms = entry.time_ms;
        Ok(())
    }
}

fn apply_bytes(target: &Doc, doc: &DocId, seq: u64, bytes: &[u8]) -> Result<(), HistoryError> {
    let corrupt = |detail: String| HistoryError::Corrupt {
        doc: doc.clone(),
        seq,
        detail,
    };
    let update = decode_guarded(|| Update::decode_v1(bytes)).map_err(corrupt)?;
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        target.transact_mut().apply_update(update)
    }));
    match applied {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(corrupt(e.to_string())),
        Err(_) => Err(corrupt("panic while applying".to_owned())),
    }
}

/// Applies log entries in order, in one transaction: several times faster
/// than a transaction each, and much faster than merging them first
/// (`merge_updates_v1` grows worse than linearly with the count).
fn apply_chunk(target: &Doc, doc: &DocId, entries: &[(u64, LogEntry)]) -> Result<(), HistoryError> {
    let mut txn = target.transact_mut();
    for (seq, entry) in entries {
        let corrupt = |detail: String| HistoryError::Corrupt {
            doc: doc.clone(),
            seq: *seq,
            detail,
        };
        let update = decode_guarded(|| Update::decode_v1(&entry.update)).map_err(corrupt)?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| txn.apply_update(update))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(corrupt(e.to_string())),
            Err(_) => return Err(corrupt("panic while applying".to_owned())),
        }
    }
    Ok(())
}

/// The stored summary of `doc`.
///
/// # Errors
/// [`HistoryError::DocNotFound`]; storage failures.
pub fn meta(store: &dyn DocStore, doc: &DocId) -> Result<DocMeta, HistoryError> {
    store
        .meta(doc)?
        .ok_or_else(|| HistoryError::DocNotFound(doc.clone()))
}

/// Rebuilds `doc` at point `seq` (clamped to its last): the newest snapshot
/// at or before it, then the log up to it.
///
/// # Errors
/// Unknown document, storage failures, or a stored record that does not apply.
pub fn rebuild(store: &dyn DocStore, doc: &DocId, seq: u64) -> Result<Rebuilt, HistoryError> {
    let target = seq.min(meta(store, doc)?.last_seq);
    rebuild_from_snapshot(store, doc, target, true)
}

/// [`rebuild`] without a snapshot: the whole log from the start (`folio check`).
///
/// # Errors
/// As [`rebuild`].
pub fn rebuild_from_log(
    store: &dyn DocStore,
    doc: &DocId,
    seq: u64,
) -> Result<Rebuilt, HistoryError> {
    let target = seq.min(meta(store, doc)?.last_seq);
    rebuild_from_snapshot(store, doc, target, false)
}

/// An empty document at point 0.
fn new_rebuilt() -> Rebuilt {
    let doc = new_doc();
    let text = doc.get_or_insert_text(TEXT_NAME);
    Rebuilt {
        doc,
        text,
        seq: 0,
        time_ms: 0,
    }
}

fn rebuild_from_snapshot(
    store: &dyn DocStore,
    doc: &DocId,
    target: u64,
    use_snapshot: bool,
) -> Result<Rebuilt, HistoryError> {
    let mut rebuilt = new_rebuilt();
    if use_snapshot {
        if let Some((at, snapshot)) = store.snapshot_at_or_before(doc, target)? {
            apply_bytes(&rebuilt.doc, doc, at, &snapshot.state)?;
            rebuilt.seq = at;
            // The point's time is its update's, not the (later) snapshot's.
            rebuilt.time_ms = match store.log_range(doc, at.saturating_sub(1), at, 1)?.pop() {
                Some((seq, entry)) if seq == at => entry.time_ms,
                _ => snapshot.time_ms,
            };
        }
    }
    let mut after = rebuilt.seq;
    loop {
        let entries = store.log_range(doc, after, target, READ_CHUNK)?;
        let Some((last, _)) = entries.last() else {
            break;
        };
        after = *last;
        apply_chunk(&rebuilt.doc, doc, &entries)?;
        if let Some((seq, entry)) = entries.last() {
            rebuilt.seq = *seq;
            rebuilt.time_ms = entry.time_ms;
        }
    }
    Ok(rebuilt)
}

/// A time as milliseconds since the epoch, or RFC 3339.
pub fn parse_time(t: &str) -> Option<i64> {
    if let Ok(ms) = t.parse::<i64>() {
        return Some(ms);
    }
    let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The latest point made at or before `time_ms` (0 if the document had no
/// update yet then). Assumes log times grow with seq, as the server stamps
/// them in order; after a backwards clock jump the answer is one of the
/// points around that time.
///
/// # Errors
/// Unknown document; storage failures.
pub fn seq_at_time(store: &dyn DocStore, doc: &DocId, time_ms: i64) -> Result<u64, HistoryError> {
    let (mut lo, mut hi) = (0u64, meta(store, doc)?.last_seq);
    // Invariant: point `lo` is at or before the time (0 always is), every
    // key above `hi` is after it. Each probe is one ordered lookup.
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match store.log_range(doc, mid - 1, hi, 1)?.pop() {
            Some((seq, entry)) if entry.time_ms <= time_ms => lo = seq,
            _ => hi = mid - 1,
        }
    }
    Ok(lo)
}

/// A version as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    /// The version id: its seq.
    pub id: u64,
    pub seq: u64,
    pub time_ms: i64,
    pub text_len: u64,
    pub authors: Vec<String>,
    pub label: Option<String>,
    pub kind: &'static str,
}

impl VersionInfo {
    /// The API view of version `seq`.
    pub fn new(seq: u64, v: &Version) -> Self {
        Self {
            id: seq,
            seq,
            time_ms: v.time_ms,
            text_len: v.text_len,
            authors: v.authors.clone(),
            label: (!v.label.is_empty()).then(|| v.label.clone()),
            kind: kind_name(v.kind()),
        }
    }
}

/// The API name of a version kind.
pub fn kind_name(kind: VersionKind) -> &'static str {
    match kind {
        VersionKind::Auto => "auto",
        VersionKind::Idle => "idle",
        VersionKind::Manual => "manual",
        VersionKind::Restore => "restore",
        VersionKind::Import => "import",
        VersionKind::Copy => "copy",
        VersionKind::Shutdown => "shutdown",
    }
}

/// Every version of `doc`, oldest first.
///
/// # Errors
/// Unknown document; storage failures.
pub fn versions(store: &dyn DocStore, doc: &DocId) -> Result<Vec<VersionInfo>, HistoryError> {
    meta(store, doc)?;
    Ok(store
        .versions(doc)?
        .iter()
        .map(|(seq, v)| VersionInfo::new(*seq, v))
        .collect())
}

/// Version `seq` of `doc`.
///
/// # Errors
/// [`HistoryError::VersionNotFound`]; unknown document; storage failures.
pub fn version(store: &dyn DocStore, doc: &DocId, seq: u64) -> Result<VersionInfo, HistoryError> {
    versions(store, doc)?
        .into_iter()
        .find(|v| v.seq == seq)
        .ok_or_else(|| HistoryError::VersionNotFound {
            doc: doc.clone(),
            version: seq,
        })
}

/// One step of a replay: what update `seq` did to the text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub seq: u64,
    pub time_ms: i64,
    pub author: String,
    pub delta: Vec<Op>,
}

/// Walks a document's history forward from a point, one text delta per log
/// entry. Reads the log [`READ_CHUNK`] entries at a time.
pub struct Replayer {
    doc: DocId,
    rebuilt: Rebuilt,
    to: u64,
    /// The delta of the last applied entry, left by the text observer.
    last_delta: Arc<Mutex<Vec<Op>>>,
    pending: std::collections::VecDeque<(u64, LogEntry)>,
}

impl Replayer {
    /// Starts at point `from` (see [`rebuild`]), to end at point `to`.
    ///
    /// # Errors
    /// As [`rebuild`].
    pub fn start(
        store: &dyn DocStore,
        doc: &DocId,
        from: u64,
        to: u64,
    ) -> Result<Self, HistoryError> {
        let rebuilt = rebuild(store, doc, from)?;
        let last_delta = Arc::new(Mutex::new(Vec::new()));
        let slot = last_delta.clone();
        // Attached after the rebuild, so only the replayed entries make deltas.
        rebuilt
            .text
            .observe("folio-replay", move |txn, event: &TextEvent| {
                *slot.lock() = event.delta(txn).iter().map(delta::from_yrs).collect();
            });
        Ok(Self {
            doc: doc.clone(),
            rebuilt,
            to,
            last_delta,
            pending: Default::default(),
        })
    }

    /// The document at the current point.
    pub fn current(&self) -> &Rebuilt {
        &self.rebuilt
    }

    /// The next step, or `None` at the end.
    ///
    /// # Errors
    /// Storage failures; a stored update that does not apply.
    pub fn next_step(&mut self, store: &dyn DocStore) -> Result<Option<Step>, HistoryError> {
        if self.pending.is_empty() {
            self.pending.extend(store.log_range(
                &self.doc,
                self.rebuilt.seq,
                self.to,
                READ_CHUNK,
            )?);
        }
        let Some((seq, entry)) = self.pending.pop_front() else {
            return Ok(None);
        };
        self.rebuilt.apply(&self.doc, seq, &entry)?;
        // One transaction per entry: one text event, one delta (none if
        // the update did not touch the text).
        let delta = std::mem::take(&mut *self.last_delta.lock());
        Ok(Some(Step {
            seq,
            time_ms: entry.time_ms,
            author: entry.author,
            delta,
        }))
    }
}
