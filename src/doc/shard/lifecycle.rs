//! A shard's life after loading: upkeep (timed snapshots), eviction when
//! idle, closing for a delete, and poisoning after a fault (every member is
//! dropped and the next use reloads from disk).

use std::time::{Duration, Instant};

use super::{DocShard, ShardState, CLOSE_DOC_RELOADED};
use crate::doc::peer::{DropReason, Wire};
use crate::store::VersionKind;

impl DocShard {
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

    pub(super) fn poison(&self, st: &mut ShardState) {
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
