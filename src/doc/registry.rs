//! [`DocRegistry`]: every resident [`DocShard`], by id.
//!
//! Each id maps to a slot holding a once-cell, so two first users of a
//! document share one load instead of racing two (the map guard is dropped
//! before the load is awaited). A shard leaves the map when it closes itself
//! (idle eviction) or is poisoned; the next user loads it again from disk.
//!
//! With a bound on resident documents, loading one more first evicts the
//! least recently used documents that nobody is subscribed to; if every
//! resident document has subscribers, the load is refused
//! ([`RegistryError::Busy`]) rather than letting memory grow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OnceCell;
use tracing::Instrument as _;

use super::shard::{DocShard, ShardError, ShardInfo, ShardSettings};
use super::DocId;
use crate::feed::FeedHub;
use crate::history::last_pass::LastPass;
use crate::history::HistoryError;
use crate::store::{
    now_ms, DocMeta, DocStore, StoreError, StoreWriter, Tombstone, Version, VersionKind,
    WriteFailed, WriteOp,
};

/// Times a lookup retries when it finds a shard that just closed. Closing
/// needs an idle period, so a second retry is already unlikely; the bound
/// only guards against a livelock.
const MAX_LOOKUP_RETRIES: usize = 8;

/// Why a document could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("document {0} does not exist")]
    NotFound(DocId),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("storage task failed: {0}")]
    Join(String),
    #[error("document {0} already exists")]
    AlreadyExists(DocId),
    #[error("document {0} is being deleted; try again")]
    Deleting(DocId),
    /// The document was deleted and its tombstone keeps it so.
    #[error("document {0} was deleted")]
    Deleted(DocId),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("write failed: {0}")]
    Write(#[from] WriteFailed),
    /// The resident-document bound is reached and every resident document
    /// is in use.
    #[error("{0} documents are in memory, the most allowed, and all are in use; try again later")]
    Busy(usize),
}

/// What a new document starts with.
#[derive(Debug, Clone)]
pub enum Initial {
    /// Nothing.
    Empty,
    /// This text, typed by the creator.
    Text(String),
    /// This Yjs v1 update (a copy of another document's state).
    State(bytes::Bytes),
}

#[derive(Default)]
struct Slot {
    shard: OnceCell<Arc<DocShard>>,
    /// When the document was last looked up, in milliseconds since the
    /// registry started: with the shard's idle time, its recency for LRU
    /// eviction.
    last_used_ms: AtomicU64,
}

/// What [`DocRegistry::create`] does with a deleted document's tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfDeleted {
    /// Refuse with [`RegistryError::Deleted`] (a copy onto the id, say).
    Refuse,
    /// Remove the tombstone and create the document afresh (an explicit
    /// `PUT /docs/{id}` by someone with write rights on the id).
    Revive,
}

/// A document as listed by `GET /docs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DocInfo {
    pub id: String,
    /// Length of the text in UTF-16 code units.
    pub text_len: u64,
    pub subscribers: usize,
    pub last_seq: u64,
    /// Milliseconds since the Unix epoch of the last change.
    pub last_change_ms: i64,
    pub resident: bool,
    /// SSE watchers of the document right now.
    pub watchers: usize,
}

/// Every resident document. See the module docs.
pub struct DocRegistry {
    slots: DashMap<DocId, Arc<Slot>>,
    store: Arc<dyn DocStore>,
    writer: StoreWriter,
    settings: ShardSettings,
    feeds: FeedHub,
    /// Documents being deleted: no load may start or finish meanwhile.
    deleting: DashMap<DocId, ()>,
    /// Most resident documents (0: no bound); see the module docs.
    max_resident: usize,
    /// The zero of `Slot::last_used_ms`.
    started: Instant,
    /// What each document's last compaction pass saw, so that the next
    /// pass skips it if nothing can have changed (see `compaction.rs`).
    pub(super) passes: DashMap<DocId, LastPass>,
}

impl DocRegistry {
    /// An empty registry over `store`, writing through `writer`, publishing
    /// to `feeds`.
    pub fn new(
        store: Arc<dyn DocStore>,
        writer: StoreWriter,
        settings: ShardSettings,
        feeds: FeedHub,
    ) -> Self {
        Self {
            slots: DashMap::new(),
            store,
            writer,
            settings,
            feeds,
            deleting: DashMap::new(),
            max_resident: 0,
            started: Instant::now(),
            passes: DashMap::new(),
        }
    }

    /// Bounds the documents in memory to `max` (0: no bound).
    #[must_use]
    pub fn with_max_resident(mut self, max: usize) -> Self {
        self.max_resident = max;
        self
    }

    /// The watcher feeds.
    pub fn feeds(&self) -> &FeedHub {
        &self.feeds
    }

    /// Whether `doc` exists, resident or on disk.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn exists(&self, doc: &DocId) -> Result<bool, RegistryError> {
        Ok(self.resident_shard(doc).is_some() || self.exists_on_disk(doc).await?)
    }

    /// The stored summary of `doc`, if any.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn meta(&self, doc: &DocId) -> Result<Option<DocMeta>, RegistryError> {
        let (store, key) = (self.store.clone(), doc.clone());
        blocking(move || store.meta(&key)).await
    }

    /// The store behind the registry.
    pub fn store(&self) -> &Arc<dyn DocStore> {
        &self.store
    }

    /// The writer every shard queues to.
    pub fn writer(&self) -> &StoreWriter {
        &self.writer
    }

    /// How many documents are in memory.
    pub fn resident(&self) -> usize {
        self.slots.len()
    }

    /// Subscriptions to resident documents, summed (for `/metrics`).
    pub fn subscriptions(&self) -> usize {
        let shards: Vec<Arc<DocShard>> = self
            .slots
            .iter()
            .filter_map(|e| e.value().shard.get().cloned())
            .collect();
        shards.iter().map(|s| s.info().subscribers).sum()
    }

    /// The shard for `id`, loading it if needed. With `create`, a document
    /// that does not exist is created; without, it is [`RegistryError::NotFound`].
    ///
    /// # Errors
    /// Not found, storage failures, or a corrupt stored document.
    pub async fn get(&self, id: &DocId, create: bool) -> Result<Arc<DocShard>, RegistryError> {
        if self.deleting.contains_key(id) {
            return Err(RegistryError::Deleting(id.clone()));
        }
        if !create && self.resident_shard(id).is_none() && !self.exists_on_disk(id).await? {
            return Err(self.missing(id).await?);
        }
        for _ in 0..MAX_LOOKUP_RETRIES {
            // Checked before the slot exists, so a refused load leaves
            // nothing behind. Loads racing here may pass the bound by as many
            // as run at once.
            if self.max_resident > 0
                && self.slots.len() >= self.max_resident
                && !self.slots.contains_key(id)
            {
                self.make_room()?;
            }
            let slot = self.slots.entry(id.clone()).or_default().clone();
            slot.last_used_ms
                .store(self.elapsed_ms(Instant::now()), Ordering::Relaxed);
            // A failed load leaves the cell empty and the slot in place, so
            // that a concurrent waiter on the same slot can retry it; a slot
            // is only removed once it holds a closed shard.
            let shard = slot
                .shard
                .get_or_try_init(|| {
                    // Once per load, so never on a hot path.
                    self.load(id)
                        .instrument(tracing::info_span!("doc_load", doc = %id))
                })
                .await?;
            if !shard.is_closed() {
                return Ok(shard.clone());
            }
            self.slots.remove_if(id, |_, s| Arc::ptr_eq(s, &slot));
        }
        Err(RegistryError::Shard(ShardError::Closed))
    }

    fn elapsed_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// Evicts the least recently used documents nobody is subscribed to,
    /// until a little under the bound (a sixty-fourth of it is freed at
    /// once, so that a stream of loads does not scan the map on each).
    ///
    /// # Errors
    /// [`RegistryError::Busy`] if the bound cannot be made: every resident
    /// document has subscribers (or unsaved changes the disk queue has no
    /// room to snapshot right now).
    fn make_room(&self) -> Result<(), RegistryError> {
        let target = self
            .max_resident
            .saturating_sub((self.max_resident / 64).max(1));
        let mut idle: Vec<(u64, Arc<DocShard>)> = self
            .slots
            .iter()
            .filter_map(|e| {
                let shard = e.value().shard.get()?.clone();
                let idle_since = shard.idle_since()?;
                let used = e.value().last_used_ms.load(Ordering::Relaxed);
                Some((used.max(self.elapsed_ms(idle_since)), shard))
            })
            .collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        for (_, shard) in idle {
            if self.slots.len() <= target {
                break;
            }
            if shard.evict_if_idle() {
                self.forget(&shard);
                crate::metrics::evicted();
                tracing::debug!(doc = %shard.id(), "least recently used document evicted");
            }
        }
        if self.slots.len() >= self.max_resident {
            return Err(RegistryError::Busy(self.slots.len()));
        }
        Ok(())
    }

    /// The error for `id` not existing: [`RegistryError::Deleted`] if a
    /// tombstone keeps it deleted, else [`RegistryError::NotFound`].
    ///
    /// # Errors
    /// Storage failures.
    pub async fn missing(&self, id: &DocId) -> Result<RegistryError, RegistryError> {
        Ok(match self.tombstone(id).await? {
            Some(_) => RegistryError::Deleted(id.clone()),
            None => RegistryError::NotFound(id.clone()),
        })
    }

    /// The tombstone of `id`, if it was deleted.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn tombstone(&self, id: &DocId) -> Result<Option<Tombstone>, RegistryError> {
        let (store, key) = (self.store.clone(), id.clone());
        blocking(move || store.tombstone(&key)).await
    }

    async fn exists_on_disk(&self, id: &DocId) -> Result<bool, RegistryError> {
        Ok(self.meta(id).await?.is_some())
    }

    /// The shard for `id` if it is in memory now.
    pub fn resident_shard(&self, id: &DocId) -> Option<Arc<DocShard>> {
        let slot = self.slots.get(id)?.clone();
        slot.shard.get().filter(|s| !s.is_closed()).cloned()
    }

    /// Forgets a shard that reported itself closed (poisoned).
    pub fn forget(&self, shard: &DocShard) {
        self.slots.remove_if(shard.id(), |_, slot| {
            slot.shard.get().is_some_and(|s| std::ptr::eq(&**s, shard))
        });
    }

    async fn load(&self, id: &DocId) -> Result<Arc<DocShard>, RegistryError> {
        // Whatever an earlier incarnation of this shard queued must be on
        // disk before we read, or the reload would miss it.
        self.writer
            .barrier()
            .await
            .map_err(|_| ShardError::ShuttingDown)?;
        let store = self.store.clone();
        let key = id.clone();
        let (tombstone, stored) =
            blocking(move || Ok::<_, StoreError>((store.tombstone(&key)?, store.load(&key)?)))
                .await?;
        // A deleted document stays deleted: no client brings it back by
        // subscribing or pushing its copy. Only `create` with
        // `IfDeleted::Revive` removes the tombstone (before this load).
        if tombstone.is_some() {
            return Err(RegistryError::Deleted(id.clone()));
        }
        // A delete that started while we read: what we read is going away.
        if self.deleting.contains_key(id) {
            return Err(RegistryError::Deleting(id.clone()));
        }
        let created = stored.is_none();
        let text_len = stored.as_ref().map_or(0, |s| s.meta.text_len);
        let feed = self.feeds.feed(id, || text_len);
        if created {
            let permit = self
                .writer
                .reserve()
                .await
                .map_err(|_| ShardError::ShuttingDown)?;
            drop(permit.send(WriteOp::Create {
                doc: id.clone(),
                time_ms: now_ms(),
            }));
        }
        let (writer, settings, key) = (self.writer.clone(), self.settings, id.clone());
        let shard_feed = feed.clone();
        let shard =
            blocking(move || DocShard::load(key, stored, writer, settings, shard_feed)).await?;
        if created {
            feed.lifecycle("created");
        }
        tracing::debug!("document loaded");
        Ok(Arc::new(shard))
    }

    /// Creates `id` with `initial` content authored by `author`, and a first
    /// version of `kind` labelled `label`. Answers once all of it is durable.
    /// A deleted id is refused or revived as `if_deleted` says.
    ///
    /// # Errors
    /// [`RegistryError::AlreadyExists`] if the document exists (or got
    /// content meanwhile); [`RegistryError::Deleted`]; storage failures.
    pub async fn create(
        &self,
        id: &DocId,
        initial: Initial,
        author: &str,
        kind: VersionKind,
        label: String,
        if_deleted: IfDeleted,
    ) -> Result<Arc<DocShard>, RegistryError> {
        if self.exists(id).await? {
            return Err(RegistryError::AlreadyExists(id.clone()));
        }
        if self.tombstone(id).await?.is_some() {
            if if_deleted == IfDeleted::Refuse {
                return Err(RegistryError::Deleted(id.clone()));
            }
            let permit = self
                .writer
                .reserve()
                .await
                .map_err(|_| ShardError::ShuttingDown)?;
            permit
                .send(WriteOp::Revive { doc: id.clone() })
                .await
                .map_err(|_| ShardError::ShuttingDown)??;
            tracing::info!(doc = %id, "deleted document re-created");
        }
        let shard = self.get(id, true).await?;
        let exists = |e: ShardError| match e {
            ShardError::NotEmpty => RegistryError::AlreadyExists(id.clone()),
            e => e.into(),
        };
        let durable = match initial {
            Initial::Empty => None,
            Initial::Text(text) => shard
                .set_text(&text, author, Some((kind, label)), true)
                .await
                .map_err(exists)?,
            Initial::State(update) => Some(
                shard
                    .apply_initial(update, author, kind, label)
                    .await
                    .map_err(exists)?,
            ),
        };
        if let Some((applied, version)) = durable {
            applied
                .durable
                .await
                .map_err(|_| ShardError::ShuttingDown)??;
            if let Some(version) = version {
                version.await.map_err(|_| ShardError::ShuttingDown)??;
            }
        }
        // The creation record itself.
        self.writer
            .barrier()
            .await
            .map_err(|_| ShardError::ShuttingDown)?;
        Ok(shard)
    }

    /// Deletes `id`: closes its shard (subscribers are told), removes every
    /// record, leaves a tombstone naming `by` (who deleted it), and answers
    /// once that is durable. Loads of `id` fail with
    /// [`RegistryError::Deleting`] meanwhile, and with
    /// [`RegistryError::Deleted`] after.
    ///
    /// # Errors
    /// Not found, already deleted, a delete already running, storage failures.
    pub async fn delete(&self, id: &DocId, by: &str) -> Result<(), RegistryError> {
        if !self.exists(id).await? {
            return Err(self.missing(id).await?);
        }
        if self.deleting.insert(id.clone(), ()).is_some() {
            return Err(RegistryError::Deleting(id.clone()));
        }
        let result = async {
            self.close_deleted(id);
            let permit = self
                .writer
                .reserve()
                .await
                .map_err(|_| ShardError::ShuttingDown)?;
            // Queued after every update the closed shard accepted.
            permit
                .send(WriteOp::Delete {
                    doc: id.clone(),
                    by: by.to_owned(),
                    time_ms: now_ms(),
                })
                .await
                .map_err(|_| ShardError::ShuttingDown)??;
            // A load that raced the first close.
            self.close_deleted(id);
            Ok::<(), RegistryError>(())
        }
        .await;
        self.deleting.remove(id);
        if result.is_ok() {
            self.passes.remove(id);
            self.feeds.feed(id, || 0).lifecycle("deleted");
            tracing::info!(doc = %id, "document deleted");
        }
        result
    }

    fn close_deleted(&self, id: &DocId) {
        if let Some((_, slot)) = self.slots.remove(id) {
            if let Some(shard) = slot.shard.get() {
                shard.close_deleted();
            }
        }
    }

    /// Takes a version of `id` now, labelled `label`.
    ///
    /// # Errors
    /// Not found, storage failures.
    pub async fn save_version(
        &self,
        id: &DocId,
        label: String,
    ) -> Result<(u64, Version), RegistryError> {
        let shard = self.get(id, false).await?;
        let (seq, version, durable) = shard.save_version(VersionKind::Manual, label).await?;
        durable.await.map_err(|_| ShardError::ShuttingDown)??;
        Ok((seq, version))
    }

    /// One upkeep pass over every resident shard: time-based snapshots and
    /// eviction of shards idle for `evict_after`. Returns how many it evicted.
    pub fn maintain(&self, evict_after: Duration) -> usize {
        let shards: Vec<Arc<DocShard>> = self
            .slots
            .iter()
            .filter_map(|e| e.value().shard.get().cloned())
            .collect();
        self.feeds.maintain();
        let mut evicted = 0;
        for shard in shards {
            if shard.maintain(evict_after) {
                self.forget(&shard);
                evicted += 1;
                crate::metrics::evicted();
                tracing::debug!(doc = %shard.id(), "document evicted");
            }
        }
        evicted
    }

    /// Queues a snapshot of every changed resident document and waits until
    /// everything queued so far is durable. Used at shutdown.
    ///
    /// # Errors
    /// The final flush failed.
    pub async fn flush_all(&self) -> Result<(), crate::store::WriteFailed> {
        let shards: Vec<Arc<DocShard>> = self
            .slots
            .iter()
            .filter_map(|e| e.value().shard.get().cloned())
            .collect();
        for shard in shards {
            shard.flush_snapshot().await;
        }
        self.writer.barrier().await
    }

    /// Up to `limit` documents whose id starts with `prefix`, after the id
    /// `after`, in id order, with live figures where resident; and the
    /// cursor for the next page (`None` on the last).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn list_page(
        &self,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<DocInfo>, Option<String>), RegistryError> {
        // Resident documents whose creation is still queued show up too.
        self.writer
            .barrier()
            .await
            .map_err(|_| ShardError::ShuttingDown)?;
        let (store, prefix) = (self.store.clone(), prefix.to_owned());
        let mut page =
            blocking(move || store.list_page(&prefix, after.as_deref(), limit.saturating_add(1)))
                .await?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more
            .then(|| page.last().map(|(id, _)| id.to_string()))
            .flatten();
        let docs = page
            .iter()
            .map(|(id, meta)| self.describe(id, meta))
            .collect();
        Ok((docs, next))
    }

    fn describe(&self, id: &DocId, meta: &DocMeta) -> DocInfo {
        match self.resident_shard(id) {
            Some(shard) => describe_resident(id, &shard.info(), self.feeds.watchers(id)),
            None => DocInfo {
                id: id.to_string(),
                text_len: meta.text_len,
                subscribers: 0,
                last_seq: meta.last_seq,
                last_change_ms: meta.updated_ms,
                resident: false,
                watchers: self.feeds.watchers(id),
            },
        }
    }
}

fn describe_resident(id: &DocId, info: &ShardInfo, watchers: usize) -> DocInfo {
    DocInfo {
        id: id.to_string(),
        text_len: info.text_len,
        subscribers: info.subscribers,
        last_seq: info.last_seq,
        last_change_ms: info.last_change_ms,
        resident: true,
        watchers,
    }
}

/// Runs `work` (a store call, or CPU work such as a load) on a blocking
/// thread, so that no async worker waits on the disk.
pub(super) async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, RegistryError>
where
    T: Send + 'static,
    E: Into<RegistryError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RegistryError::Join(e.to_string()))?
        .map_err(Into::into)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::feed::FeedSettings;
    use crate::store::SledStore;

    /// A registry over a sled store in `dir`.
    pub(crate) fn test_registry(dir: &std::path::Path) -> DocRegistry {
        let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir).expect("open"));
        let (writer, _thread) = StoreWriter::start(store.clone(), 64).expect("writer");
        let settings = ShardSettings {
            snapshot_every_updates: 100,
            snapshot_interval: Duration::from_secs(60),
            version_idle: Duration::from_secs(60),
            max_doc_bytes: 0,
        };
        let feeds = FeedHub::new(
            1,
            FeedSettings {
                activity_window: Duration::from_millis(10),
                history_events: 100,
                history_age: Duration::from_secs(60),
            },
        );
        DocRegistry::new(store, writer, settings, feeds)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn simultaneous_first_users_share_one_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Arc::new(test_registry(dir.path()));
        let id = DocId::parse("shared").expect("id");
        let loads: Vec<_> = (0..16)
            .map(|_| {
                let (registry, id) = (registry.clone(), id.clone());
                tokio::spawn(async move { registry.get(&id, true).await })
            })
            .collect();
        let mut shards = Vec::new();
        for load in loads {
            shards.push(load.await.expect("task").expect("loaded"));
        }
        assert!(shards.iter().all(|s| Arc::ptr_eq(s, &shards[0])));
        assert_eq!(registry.resident(), 1);
    }

    #[tokio::test]
    async fn unknown_documents_are_not_found_without_create() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = test_registry(dir.path());
        let id = DocId::parse("ghost").expect("id");
        assert!(matches!(
            registry.get(&id, false).await,
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(registry.resident(), 0);
    }
}
