//! [`SledStore`]: the embedded backend, one sled database in the data dir.
//!
//! Trees: `docs` (id → [`DocMeta`]), `log` (id 0x00 seq → [`LogEntry`]) and
//! `snapshots` (id 0x00 seq → [`Snapshot`]), with `seq` big-endian so a prefix
//! scan returns a document's records in order. Doc ids never contain NUL, so
//! no id's keys can run into another's.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs2::FileExt;
use prost::Message;

use super::{DocMeta, DocStore, LogEntry, Snapshot, StoreError, StoredDoc, WriteOp};
use crate::doc::DocId;

/// The embedded sled backend. Holds an exclusive lock on `<data dir>/folio.lock`
/// for its lifetime, so a second process on the same dir fails at once.
pub struct SledStore {
    db: sled::Db,
    docs: sled::Tree,
    log: sled::Tree,
    snapshots: sled::Tree,
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

fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
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
        let lock_path = dir.join("folio.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if lock.try_lock_exclusive().is_err() {
            return Err(StoreError::Locked {
                path: dir.to_owned(),
            });
        }
        let db = open_sled(&dir.join("sled"))?;
        Ok(Self {
            docs: db.open_tree("docs")?,
            log: db.open_tree("log")?,
            snapshots: db.open_tree("snapshots")?,
            db,
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    fn read_meta(&self, doc: &DocId) -> Result<Option<DocMeta>, StoreError> {
        self.docs
            .get(doc.as_str())?
            .map(|v| decode(doc.as_str().as_bytes(), &v))
            .transpose()
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
        let from = snapshot.as_ref().map_or(0, |(seq, _)| seq + 1);
        let mut end = prefix(doc);
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        let mut log = Vec::new();
        for kv in self.log.range(key(doc, from)..end) {
            let (k, v) = kv?;
            log.push((seq_of(&k)?, decode::<LogEntry>(&k, &v)?));
        }
        if meta.is_none() && snapshot.is_none() && log.is_empty() {
            return Ok(None);
        }
        Ok(Some(StoredDoc {
            meta: meta.unwrap_or_default(),
            snapshot,
            log,
        }))
    }

    fn write(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let mut log = sled::Batch::default();
        let mut snapshots = sled::Batch::default();
        // Metas touched by this batch, read once and written once.
        let mut metas: HashMap<&DocId, DocMeta> = HashMap::new();
        for op in ops {
            let doc = match op {
                WriteOp::Create { doc, .. }
                | WriteOp::Append { doc, .. }
                | WriteOp::Snapshot { doc, .. } => doc,
                WriteOp::Barrier => continue,
            };
            if !metas.contains_key(doc) {
                let meta = self.read_meta(doc)?.unwrap_or_default();
                metas.insert(doc, meta);
            }
            let Some(meta) = metas.get_mut(doc) else {
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
                    log.insert(key(doc, *seq), entry.encode_to_vec());
                    if meta.created_ms == 0 {
                        meta.created_ms = entry.time_ms;
                    }
                    meta.updated_ms = entry.time_ms;
                    meta.last_seq = meta.last_seq.max(*seq);
                    meta.text_len = *text_len;
                }
                WriteOp::Snapshot { seq, snapshot, .. } => {
                    snapshots.insert(key(doc, *seq), snapshot.encode_to_vec());
                    meta.snapshot_seq = meta.snapshot_seq.max(*seq);
                }
                WriteOp::Barrier => {}
            }
        }
        let mut docs = sled::Batch::default();
        for (doc, meta) in metas {
            docs.insert(doc.as_str(), meta.encode_to_vec());
        }
        self.log.apply_batch(log)?;
        self.snapshots.apply_batch(snapshots)?;
        self.docs.apply_batch(docs)?;
        self.db.flush()?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<(DocId, DocMeta)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.docs.iter() {
            let (k, v) = kv?;
            let id = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| DocId::parse(s).ok())
                .ok_or_else(|| corrupt(&k, "invalid doc id"))?;
            out.push((id, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn meta(&self, doc: &DocId) -> Result<Option<DocMeta>, StoreError> {
        self.read_meta(doc)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
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
