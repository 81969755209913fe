//! Compaction passes over the registry: [`DocRegistry::compact`] applies the
//! retention policy to one document, [`DocRegistry::compact_all`] to every
//! stored one, skipping those whose last pass is still good.
//!
//! A pass only reads what changed or aged: planning reads a document's
//! whole log, so an hourly pass over thousands of idle documents would read
//! every one of them to find nothing to do. What `plan` decides depends only
//! on the records (which change only by a write) and on which tier and
//! bucket each record's age puts it in (which changes only at the times
//! [`RetentionPolicy::next_move_ms`] gives). So a document is read again
//! only if its [`DocMeta`] changed since its last pass, or one of its
//! records has moved since. A label put on an existing version changes no
//! meta, but a label only ever makes a pass keep more, never remove more,
//! so a skipped pass stays right.

use tracing::Instrument as _;

use super::registry::{blocking, DocRegistry, RegistryError};
use super::shard::ShardError;
use super::DocId;
use crate::history::last_pass::LastPass;
use crate::history::retention::{self, CompactStats, RetentionPolicy};
use crate::store::now_ms;

/// What one [`DocRegistry::compact_all`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PassCounts {
    /// Documents read and compacted (whether or not anything was left to do).
    pub compacted: usize,
    /// Documents not read: unchanged, and no record moved, since their last pass.
    pub skipped: usize,
    /// Documents whose compaction failed (logged; retried next pass).
    pub failed: usize,
}

impl DocRegistry {
    /// Applies the retention policy to `id`'s history. The writes queue
    /// behind live updates; answers once they are durable.
    ///
    /// # Errors
    /// Storage failures; a stored update that does not merge.
    pub async fn compact(
        &self,
        id: &DocId,
        policy: RetentionPolicy,
    ) -> Result<CompactStats, RegistryError> {
        self.compact_at(id, policy, now_ms()).await
    }

    async fn compact_at(
        &self,
        id: &DocId,
        policy: RetentionPolicy,
        now_ms: i64,
    ) -> Result<CompactStats, RegistryError> {
        // Whatever was acknowledged is readable before planning.
        self.writer()
            .barrier()
            .await
            .map_err(|_| ShardError::ShuttingDown)?;
        let (store, key) = (self.store().clone(), id.clone());
        let (ops, stats) =
            blocking(move || retention::plan(store.as_ref(), &key, &policy, now_ms)).await?;
        let mut last = None;
        for op in ops {
            let permit = self
                .writer()
                .reserve()
                .await
                .map_err(|_| ShardError::ShuttingDown)?;
            last = Some(permit.send(op));
        }
        if let Some(durable) = last {
            durable.await.map_err(|_| ShardError::ShuttingDown)??;
        }
        Ok(stats)
    }

    /// Compacts every stored document that is due (see the module docs),
    /// one at a time, and counts what it did.
    ///
    /// What each document's last pass saw is kept in memory only, one entry
    /// per stored document (dropped on delete, and at the end of a full
    /// pass for documents no longer listed). After a restart it is empty,
    /// so the first pass reads every document.
    ///
    /// # Errors
    /// Listing failed; a document that fails is logged, counted and retried
    /// next pass.
    pub async fn compact_all(&self, policy: RetentionPolicy) -> Result<PassCounts, RegistryError> {
        self.compact_all_at(policy, now_ms()).await
    }

    /// [`DocRegistry::compact_all`] as of `now_ms`, the time the whole
    /// pass plans with (and tests set).
    ///
    /// # Errors
    /// As [`DocRegistry::compact_all`].
    pub async fn compact_all_at(
        &self,
        policy: RetentionPolicy,
        now_ms: i64,
    ) -> Result<PassCounts, RegistryError> {
        /// Documents listed at a time.
        const PAGE: usize = 256;
        let mut after: Option<String> = None;
        let mut counts = PassCounts::default();
        loop {
            let (store, from) = (self.store().clone(), after.clone());
            let page = blocking(move || store.list_page("", from.as_deref(), PAGE)).await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.to_string());
            for (id, meta) in page {
                // The guard is dropped at the end of this statement, before
                // any await.
                let skip = self.passes.get_mut(&id).is_some_and(|mut pass| {
                    pass.listed_ms = now_ms;
                    !pass.due(&meta, now_ms)
                });
                if skip {
                    counts.skipped += 1;
                    continue;
                }
                let span = tracing::debug_span!("compact", doc = %id);
                match self.compact_at(&id, policy, now_ms).instrument(span).await {
                    Ok(stats) => {
                        counts.compacted += 1;
                        tracing::debug!(doc = %id, ?stats, "compacted");
                        self.passes.insert(id, LastPass::new(meta, now_ms, &stats));
                    }
                    Err(RegistryError::Shard(ShardError::ShuttingDown)) => return Ok(counts),
                    Err(e) => {
                        counts.failed += 1;
                        self.passes.remove(&id);
                        tracing::warn!(doc = %id, error = %e, "compaction failed");
                    }
                }
            }
        }
        // Documents not listed in this whole pass are gone.
        self.passes.retain(|_, pass| pass.listed_ms == now_ms);
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::doc::registry::tests::test_registry;
    use crate::store::VersionKind;

    const MIN_MS: i64 = 60_000;

    fn policy() -> RetentionPolicy {
        RetentionPolicy {
            keep_all: Duration::from_secs(3600),
            hourly_for: Duration::from_secs(48 * 3600),
            max_snapshot_gap: u64::MAX,
        }
    }

    #[tokio::test]
    async fn a_second_pass_skips_a_document_until_it_is_written_to_or_its_history_moves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = test_registry(dir.path());
        let id = DocId::parse("idle").expect("id");
        let shard = registry.get(&id, true).await.expect("create");
        let typed = |text: &'static str| {
            let shard = shard.clone();
            async move {
                let (applied, _) = shard
                    .set_text(text, "ann", None, false)
                    .await
                    .expect("type")
                    .expect("changed");
                applied.durable.await.expect("queued").expect("durable");
            }
        };
        typed("one").await;
        let (_, version, durable) = shard
            .save_version(VersionKind::Manual, String::new())
            .await
            .expect("version");
        durable.await.expect("queued").expect("durable");
        let written_ms = version.time_ms;
        typed("one two").await;
        let policy = policy();
        let counts = |compacted, skipped| PassCounts {
            compacted,
            skipped,
            failed: 0,
        };

        // The first pass reads it (nothing known yet); the second, a
        // minute later with nothing written and nothing aged, skips it.
        let t = written_ms + MIN_MS;
        assert_eq!(
            registry.compact_all_at(policy, t).await.expect("pass"),
            counts(1, 0)
        );
        assert_eq!(
            registry
                .compact_all_at(policy, t + MIN_MS)
                .await
                .expect("pass"),
            counts(0, 1)
        );

        // A write makes it due.
        typed("one two three").await;
        assert_eq!(
            registry
                .compact_all_at(policy, t + 2 * MIN_MS)
                .await
                .expect("pass"),
            counts(1, 0)
        );
        assert_eq!(
            registry
                .compact_all_at(policy, t + 3 * MIN_MS)
                .await
                .expect("pass"),
            counts(0, 1)
        );

        // Its oldest record turning keep_all old makes it due.
        let store = registry.store();
        let oldest_ms = store
            .log_range(&id, 0, u64::MAX, 100)
            .expect("log")
            .iter()
            .map(|(_, e)| e.time_ms)
            .chain(
                store
                    .versions(&id)
                    .expect("versions")
                    .iter()
                    .map(|(_, v)| v.time_ms),
            )
            .min()
            .expect("records");
        let moved = oldest_ms + 3_600_000;
        assert_eq!(
            registry
                .compact_all_at(policy, moved - 1)
                .await
                .expect("pass"),
            counts(0, 1)
        );
        assert_eq!(
            registry.compact_all_at(policy, moved).await.expect("pass"),
            counts(1, 0)
        );

        // A deleted document leaves nothing behind.
        registry.delete(&id, "ann").await.expect("delete");
        assert!(registry.passes.is_empty());
    }
}
