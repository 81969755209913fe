//! Snapshots and versions: the full state written beside the log, with the
//! version that names it (automatic, idle, shutdown or labelled).

use std::sync::Arc;
use std::time::Instant;

use yrs::{Text, Transact};

use super::{full_state_locked, DocShard, ShardError, ShardState};
use crate::store::{
    now_ms, Durable, Snapshot, Version, VersionKind, WriteFailed, WriteOp, WritePermit,
};

impl DocShard {
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

    pub(super) fn snapshot_locked(&self, st: &mut ShardState, kind: VersionKind) {
        // Never wait under the lock: if the queue is full, try again on the
        // next update or the next maintenance pass.
        if let Some(permit) = self.writer.try_reserve() {
            drop(self.snapshot_with(st, permit, kind, String::new()));
        }
    }

    /// Queues a snapshot and its version. At the seq of the newest version,
    /// rewrites that version with `label` (if one is given) instead.
    pub(super) fn snapshot_with(
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
}
