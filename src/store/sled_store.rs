//! [`SledStore`]: the embedded backend, one sled database in the data dir.
//!
//! Trees: `docs` (id → [`DocMeta`]), `log` (id 0x00 seq → [`LogEntry`]),
//! `snapshots` (id 0x00 seq → [`Snapshot`]) and `versions` (id 0x00 seq →
//! [`Version`]), with `seq` big-endian so a prefix scan returns a document's
//! records in order; `tombstones` (id → [`Tombstone`]) for deleted documents. Doc ids never contain NUL, so
//! no id's keys can run into another's. `revocations` (`jti:<id>` or
//! `sub:<name>` → [`crate::auth::revocation`]'s record) holds revoked tokens.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs2::FileExt;
use prost::Message;
use sled::Transactional;

use super::{
    DocMeta, DocSize, DocStore, LogEntry, RevocationStore, Snapshot, StoreError, StoredDoc,
    Tombstone, Version, WriteOp,
};
use crate::doc::DocId;

/// The embedded sled backend. Holds an exclusive lock on `<data dir>/folio.lock`
/// for its lifetime, so a second process on the same dir fails at once.
pub struct SledStore {
    db: sled::Db,
    docs: sled::Tree,
    log: sled::Tree,
    snapshots: sled::Tree,
    versions: sled::Tree,
    tombstones: sled::Tree,
    revocations: sled::Tree,
    dir: PathBuf,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn key(doc: &DocId, seq: u64) -> Vec<u8> {
    let mut k = prefix(doc);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix(doc: &DocId) -> Vec<u8> {
    let mut k = Vec::with_capacity(doc.as_str().len() + 9);
    k.extend_from_slice(doc.as_str().as_bytes());
    k.push(0);
    k
}

/// The first key after every key of `doc` (its prefix with 0x00 → 0x01).
fn end_of(doc: &DocId) -> Vec<u8> {
    let mut k = prefix(doc);
    if let Some(last) = k.last_mut() {
        *last = 1;
    }
    k
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "key too short"))
}

fn corrupt(key: &[u8], detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.into(),
    }
}

fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M, StoreError> {
    M::decode(value).map_err(|e| corrupt(key, e.to_string()))
}

/// How long to wait for sled's own lock. Our lock file already guarantees no
/// other process has the dir; sled 0.34 releases its lock from a background
/// thread after close (spacejam/sled#1289), so a reopen in the same process
/// right after a close can find it busy for a moment.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Locks `<dir>/folio.lock` exclusively (creating it), for as long as the
/// returned file is open.
///
/// # Errors
/// [`StoreError::Locked`] if another process (or another open of it in
/// this one) holds it; I/O failures.
pub(super) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let lock_path = dir.join("folio.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    // As for sled's own lock (see `SLED_LOCK_WAIT`): a store closed in this
    // process a moment ago (its writer thread still dropping it) lets go
    // soon; a server that holds the dir does not, and is refused.
    let deadline = Instant::now() + SLED_LOCK_WAIT;
    while lock.try_lock_exclusive().is_err() {
        if Instant::now() >= deadline {
            return Err(StoreError::Locked {
                path: dir.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(lock)
}

pub(super) fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + SLED_LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process holds the dir; I/O and sled errors.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        let db = open_sled(&dir.join("sled"))?;
        Ok(Self {
            docs: db.open_tree("docs")?,
            log: db.open_tree("log")?,
            snapshots: db.open_tree("snapshots")?,
            versions: db.open_tree("versions")?,
            tombstones: db.open_tree("tombstones")?,
            revocations: db.open_tree("revocations")?,
            db,
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Removes every record of `doc` and leaves `tombstone` in one sled
    /// transaction (not yet flushed), so a crash leaves the document whole
    /// or gone with its tombstone, never a history without its summary, or
    /// a deleted document without the tombstone that keeps it deleted.
    fn delete_records(&self, doc: &DocId, tombstone: &Tombstone) -> Result<(), StoreError> {
        let keys = |tree: &sled::Tree| -> Result<Vec<sled::IVec>, StoreError> {
            Ok(tree
                .range(prefix(doc)..end_of(doc))
                .keys()
                .collect::<Result<_, _>>()?)
        };
        let (log, snapshots, versions) = (
            keys(&self.log)?,
            keys(&self.snapshots)?,
            keys(&self.versions)?,
        );
        let tombstone = tombstone.encode();
        (
            &self.log,
            &self.snapshots,
            &self.versions,
            &self.docs,
            &self.tombstones,
        )
            .transaction(|(log_tx, snap_tx, ver_tx, docs_tx, tomb_tx)| {
                for k in &log {
                    log_tx.remove(k)?;
                }
                for k in &snapshots {
                    snap_tx.remove(k)?;
                }
                for k in &versions {
                    ver_tx.remove(k)?;
                }
                docs_tx.remove(doc.as_str())?;
                tomb_tx.insert(doc.as_str(), tombstone.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt {
                    key: doc.to_string(),
                    detail: "delete aborted".to_owned(),
                },
            })
    }

    fn read_meta(&self, doc: &DocId) -> Result<Option<DocMeta>, StoreError> {
        self.docs
            .get(doc.as_str())?
            .map(|v| decode(doc.as_str().as_bytes(), &v))
            .transpose()
    }
}

/// Writes gathered from a run of ops, one batch per tree. Whatever a crash
/// between two batches leaves, a version never lacks its state: removed
/// versions go before their snapshots, new snapshots before their versions.
/// Metas go last, so a listed document has its records. Revived documents'
/// tombstones go first: a crash after them leaves the id simply absent.
#[derive(Default)]
struct Pending {
    revive: sled::Batch,
    log: sled::Batch,
    drop_versions: sled::Batch,
    snapshots: sled::Batch,
    versions: sled::Batch,
    metas: HashMap<DocId, DocMeta>,
}

impl Pending {
    fn apply(self, store: &SledStore) -> Result<(), StoreError> {
        store.tombstones.apply_batch(self.revive)?;
        store.log.apply_batch(self.log)?;
        store.versions.apply_batch(self.drop_versions)?;
        store.snapshots.apply_batch(self.snapshots)?;
        store.versions.apply_batch(self.versions)?;
        let mut docs = sled::Batch::default();
        for (doc, meta) in self.metas {
            docs.insert(doc.as_str(), meta.encode_to_vec());
        }
        store.docs.apply_batch(docs)?;
        Ok(())
    }
}

impl DocStore for SledStore {
    fn load(&self, doc: &DocId) -> Result<Option<StoredDoc>, StoreError> {
        let meta = self.read_meta(doc)?;
        let snapshot = match self.snapshots.scan_prefix(prefix(doc)).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                Some((seq_of(&k)?, decode::<Snapshot>(&k, &v)?))
            }
            None => None,
        };
        let version = match &snapshot {
            Some((seq, _)) => self
                .versions
                .get(key(doc, *seq))?
                .map(|v| decode::<Version>(&key(doc, *seq), &v))
                .transpose()?,
            None => None,
        };
        let from = snapshot.as_ref().map_or(0, |(seq, _)| seq + 1);
        let mut log = Vec::new();
        for kv in self.log.range(key(doc, from)..end_of(doc)) {
            let (k, v) = kv?;
            log.push((seq_of(&k)?, decode::<LogEntry>(&k, &v)?));
        }
        if meta.is_none() && snapshot.is_none() && log.is_empty() {
            return Ok(None);
        }
        Ok(Some(StoredDoc {
            meta: meta.unwrap_or_default(),
            snapshot,
            version,
            log,
        }))
    }

    fn write(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let mut batch = Pending::default();
        for op in ops {
            let doc = match op {
                WriteOp::Create { doc, .. }
                | WriteOp::Append { doc, .. }
                | WriteOp::Snapshot { doc, .. }
                | WriteOp::Compact { doc, .. } => doc,
                WriteOp::Delete { doc, by, time_ms } => {
                    // Apply what came before, so the prefix scans below
                    // see (and remove) it too.
                    std::mem::take(&mut batch).apply(self)?;
                    let tombstone = Tombstone {
                        deleted_ms: *time_ms,
                        by: by.clone(),
                    };
                    self.delete_records(doc, &tombstone)?;
                    continue;
                }
                WriteOp::Revive { doc } => {
                    batch.revive.remove(doc.as_str());
                    continue;
                }
                WriteOp::Barrier => continue,
            };
            if !batch.metas.contains_key(doc) {
                let meta = self.read_meta(doc)?.unwrap_or_default();
                batch.metas.insert(doc.clone(), meta);
            }
            let Some(meta) = batch.metas.get_mut(doc) else {
                continue;
            };
            match op {
                WriteOp::Create { time_ms, .. } => {
                    if meta.created_ms == 0 {
                        meta.created_ms = *time_ms;
                        meta.updated_ms = *time_ms;
                    }
                }
                WriteOp::Append {
                    seq,
                    entry,
                    text_len,
                    ..
                } => {
                    batch.log.insert(key(doc, *seq), entry.encode_to_vec());
                    if meta.created_ms == 0 {
                        meta.created_ms = entry.time_ms;
                    }
                    meta.updated_ms = entry.time_ms;
                    meta.last_seq = meta.last_seq.max(*seq);
                    meta.text_len = *text_len;
                }
                WriteOp::Snapshot {
                    seq,
                    snapshot,
                    version,
                    ..
                } => {
                    batch
                        .snapshots
                        .insert(key(doc, *seq), snapshot.encode_to_vec());
                    batch
                        .versions
                        .insert(key(doc, *seq), version.encode_to_vec());
                    meta.snapshot_seq = meta.snapshot_seq.max(*seq);
                }
                WriteOp::Compact {
                    remove_log,
                    put_log,
                    remove_versions,
                    remove_snapshots,
                    ..
                } => {
                    for seq in remove_log {
                        batch.log.remove(key(doc, *seq));
                    }
                    for (seq, entry) in put_log {
                        batch.log.insert(key(doc, *seq), entry.encode_to_vec());
                    }
                    for seq in remove_versions {
                        batch.drop_versions.remove(key(doc, *seq));
                    }
                    for seq in remove_snapshots {
                        batch.snapshots.remove(key(doc, *seq));
                    }
                }
                WriteOp::Delete { .. } | WriteOp::Revive { .. } | WriteOp::Barrier => {}
            }
        }
        batch.apply(self)?;
        self.db.flush()?;
        Ok(())
    }

    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(DocId, DocMeta)>, StoreError> {
        let start = match after {
            // The smallest key greater than `after`.
            Some(after) if after >= prefix => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        for kv in self.docs.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let id = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| DocId::parse(s).ok())
                .ok_or_else(|| corrupt(&k, "invalid doc id"))?;
            out.push((id, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn log_range(
        &self,
        doc: &DocId,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogEntry)>, StoreError> {
        let mut out = Vec::new();
        let Some(from) = after.checked_add(1) else {
            return Ok(out);
        };
        if from > through {
            return Ok(out);
        }
        let end = match through.checked_add(1) {
            Some(next) => key(doc, next),
            None => end_of(doc),
        };
        for kv in self.log.range(key(doc, from)..end).take(limit) {
            let (k, v) = kv?;
            out.push((seq_of(&k)?, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn snapshot_at_or_before(
        &self,
        doc: &DocId,
        seq: u64,
    ) -> Result<Option<(u64, Snapshot)>, StoreError> {
        let end = match seq.checked_add(1) {
            Some(next) => key(doc, next),
            None => end_of(doc),
        };
        match self.snapshots.range(prefix(doc)..end).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some((seq_of(&k)?, decode(&k, &v)?)))
            }
            None => Ok(None),
        }
    }

    fn versions(&self, doc: &DocId) -> Result<Vec<(u64, Version)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.versions.scan_prefix(prefix(doc)) {
            let (k, v) = kv?;
            out.push((seq_of(&k)?, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn doc_size(&self, doc: &DocId) -> Result<DocSize, StoreError> {
        let mut size = DocSize::default();
        for kv in self.log.scan_prefix(prefix(doc)) {
            let (k, v) = kv?;
            size.log_entries += 1;
            size.log_bytes += (k.len() + v.len()) as u64;
        }
        for kv in self.snapshots.scan_prefix(prefix(doc)) {
            let (k, v) = kv?;
            size.snapshots += 1;
            size.snapshot_bytes += (k.len() + v.len()) as u64;
        }
        size.versions = self.versions.scan_prefix(prefix(doc)).count() as u64;
        Ok(size)
    }

    fn meta(&self, doc: &DocId) -> Result<Option<DocMeta>, StoreError> {
        self.read_meta(doc)
    }

    fn tombstone(&self, doc: &DocId) -> Result<Option<Tombstone>, StoreError> {
        self.tombstones
            .get(doc.as_str())?
            .map(|v| {
                Tombstone::decode(&v)
                    .ok_or_else(|| corrupt(doc.as_str().as_bytes(), "bad tombstone"))
            })
            .transpose()
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

impl RevocationStore for SledStore {
    fn revocations(&self) -> Result<Vec<super::RevocationRecord>, StoreError> {
        self.revocations
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn write_revocations(
        &self,
        put: Option<(&[u8], &[u8])>,
        remove: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in remove {
            batch.remove(key.as_slice());
        }
        if let Some((key, value)) = put {
            batch.insert(key, value);
        }
        self.revocations.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> DocId {
        DocId::parse(s).expect("valid id")
    }

    fn append(d: &DocId, seq: u64, byte: u8) -> WriteOp {
        WriteOp::Append {
            doc: d.clone(),
            seq,
            entry: LogEntry {
                time_ms: 1,
                author: "t".into(),
                update: vec![byte].into(),
                first_seq: 0,
            },
            text_len: seq,
        }
    }

    #[test]
    fn load_returns_log_after_newest_snapshot_and_ids_do_not_collide() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let (a, ab) = (doc("a"), doc("a.b"));
        let snap = |seq| WriteOp::Snapshot {
            doc: a.clone(),
            seq,
            snapshot: Snapshot {
                time_ms: 1,
                state: vec![seq as u8].into(),
            },
            version: Version::default(),
        };
        store
            .write(&[
                append(&a, 1, 1),
                append(&a, 2, 2),
                snap(2),
                append(&a, 3, 3),
            ])
            .expect("write");
        store.write(&[append(&ab, 1, 9)]).expect("write");
        let loaded = store.load(&a).expect("load").expect("exists");
        assert_eq!(loaded.snapshot.as_ref().map(|(s, _)| *s), Some(2));
        let seqs: Vec<u64> = loaded.log.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![3]);
        assert_eq!(loaded.last_seq(), 3);
        assert_eq!(loaded.meta.text_len, 3);
        assert!(store.load(&doc("nope")).expect("load").is_none());
        let ids: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|(d, _)| d.to_string())
            .collect();
        assert_eq!(ids, vec!["a", "a.b"]);
    }

    #[test]
    fn second_open_of_a_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = SledStore::open(dir.path()).expect("open");
        match SledStore::open(dir.path()) {
            Err(StoreError::Locked { .. }) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
