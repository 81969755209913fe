//! The apply path: a client's update checked, integrated into the Yrs doc,
//! numbered, queued for disk and fanned out, all under the shard's lock; and
//! the server-side edits (a restore's text, a copy's first content).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact, Update, WriteTxn};

use super::members::Broadcast;
use super::{
    decode_guarded, full_state_locked, Applied, DocShard, ShardError, ShardState,
    MAX_VERSION_AUTHORS,
};
use crate::doc::update_check;
use crate::feed::delta;
use crate::store::{now_ms, Durable, LogEntry, VersionKind, WriteOp, WritePermit};

/// What applying an update did to the doc.
enum Integrated {
    /// All of it.
    All,
    /// Nothing new: the doc had all of it already.
    Nothing,
    /// Only `part`; the rest depends on changes the doc lacks, or yrs
    /// `refused` it (then nothing after it was applied either).
    Partly {
        part: Update,
        refused: Option<String>,
    },
    /// yrs panicked before changing anything; the doc is as it was.
    Untouched,
}

/// Decodes an update a client sent, refusing first what yrs would accept
/// but mishandle (see [`update_check`]).
fn decode_incoming(update: &[u8]) -> Result<Update, ShardError> {
    decode_guarded(|| update_check::check(update)).map_err(ShardError::InvalidUpdate)?;
    decode_guarded(|| Update::decode_v1(update)).map_err(ShardError::InvalidUpdate)
}

/// How many clock units an id set covers.
/// Saturates: a hostile update can claim ranges that add up past `u32::MAX`
/// (or, wrapped in decoding, end before they start).
fn id_set_len(set: &yrs::IdSet) -> u32 {
    set.iter()
        .flat_map(|(_, ranges)| ranges.iter())
        .fold(0u32, |n, r| n.saturating_add(r.end.saturating_sub(r.start)))
}

impl DocShard {
    /// Applies a Yjs v1 update from `author` (the peer `from`, if any, does
    /// not get it back), queues it for disk and broadcasts it.
    ///
    /// # Errors
    /// An invalid update or one with missing dependencies changes nothing.
    /// [`ShardError::Closed`] if the shard was evicted or poisoned meanwhile;
    /// [`ShardError::ShuttingDown`] if the writer has stopped.
    pub async fn apply_update(
        &self,
        update: Bytes,
        author: &str,
        from: Option<u64>,
    ) -> Result<Applied, ShardError> {
        let decoded = decode_incoming(&update)?;
        // Reserve the log slot before locking: the lock is never held while
        // waiting for the writer.
        let permit = self.permit().await?;
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        if let Some(sub) = from {
            if !st.members.iter().any(|m| m.peer.id() == sub) {
                return Err(ShardError::NotSubscribed);
            }
        }
        let all_blocks_known = {
            let txn = st.awareness.doc().transact();
            let have = txn.state_vector();
            // An update whose first block of some client starts past what we
            // have would sit as "pending" forever: refuse it instead.
            let missing = decoded
                .state_vector_lower()
                .iter()
                .any(|(client, clock)| *clock > have.get(client));
            if missing {
                return Err(ShardError::MissingDependencies);
            }
            // Every block it carries ends at or below our clock for its
            // client: nothing new to integrate. (`Update::state_vector`
            // leaves out clients whose blocks do not start at 0, so ask the
            // insertion set instead.)
            decoded
                .insertions(true)
                .iter()
                .all(|(client, ranges)| ranges.iter().all(|r| r.end <= have.get(client)))
        };
        if !all_blocks_known {
            self.check_size(&mut st, update.len() as u64)?;
        }
        let mut counts = (
            id_set_len(&decoded.insertions(false)),
            id_set_len(decoded.delete_set()),
        );
        let want_delta = self.feed.wants_deltas();
        st.want_delta.store(want_delta, Ordering::Relaxed);
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = st.awareness.doc().transact_mut();
            // yrs stops at the first block it cannot integrate (one whose
            // parent is not a type), keeping the blocks before it.
            let refused = match catch_unwind(AssertUnwindSafe(|| txn.apply_update(decoded))) {
                Ok(result) => result.err().map(|e| e.to_string()),
                // Some malformed block lists make yrs panic while it sorts
                // them, before it integrates or deletes anything. Nothing
                // changed then, so there is nothing to reload.
                Err(_) if txn.insert_set().is_empty() && txn.delete_set().is_empty() => {
                    txn.prune_pending();
                    return Ok(Integrated::Untouched);
                }
                Err(_) => return Err("panic while applying".to_owned()),
            };
            // Parts that build on or delete items this document lacks would
            // wait in yrs as "pending" state, which snapshots, joiners and
            // the log never see, and which a later update could bring to
            // life in memory only. Drop them, and keep what did integrate.
            if txn.prune_pending().is_some() || refused.is_some() {
                let part = Update::decode_v1(&txn.encode_update_v1()).map_err(|e| e.to_string())?;
                return Ok(Integrated::Partly { part, refused });
            }
            // A resend of what we already have (a reconnecting client's
            // unacked updates, an empty update): nothing to log or send.
            if all_blocks_known && txn.delete_set().is_empty() {
                return Ok(Integrated::Nothing);
            }
            Ok::<_, String>(Integrated::All)
        }));
        let (failure, integrated) = match applied {
            Ok(Ok(integrated)) => (None, integrated),
            Ok(Err(e)) => (Some(e), Integrated::Nothing),
            Err(_) => (Some("panic while applying".to_owned()), Integrated::Nothing),
        };
        if let Some(reason) = failure {
            // The doc may be half-changed: drop it, so the next use reloads
            // it from disk, where this update never went.
            tracing::error!(doc = %self.id, %reason, "update broke the document; reloading it");
            self.poison(&mut st);
            return Err(ShardError::InvalidUpdate(reason));
        }
        let update = match integrated {
            Integrated::All => update,
            Integrated::Nothing => {
                // Durable once whatever is queued before it is: that includes
                // the update this one repeats, if it is still on its way.
                return Ok(Applied {
                    doc_seq: st.last_seq,
                    durable: permit.send(WriteOp::Barrier),
                });
            }
            Integrated::Untouched => {
                tracing::warn!(doc = %self.id, "yrs panicked on an update before applying it");
                return Err(ShardError::InvalidUpdate(
                    "the update's blocks are inconsistent".to_owned(),
                ));
            }
            // Nothing integrated: the doc is as it was.
            Integrated::Partly { part, refused } if part.is_empty() => {
                return Err(refused.map_or(ShardError::MissingDependencies, |reason| {
                    ShardError::InvalidUpdate(reason)
                }));
            }
            // Log and send what the doc now holds, so that the log, the
            // other clients and memory agree.
            Integrated::Partly { part, .. } => {
                counts = (
                    id_set_len(&part.insertions(false)),
                    id_set_len(part.delete_set()),
                );
                Bytes::from(part.encode_v1())
            }
        };
        Ok(self.commit(&mut st, permit, update, author, counts, want_delta, from))
    }

    /// Refuses an update of `len` bytes that would take the document past
    /// `max_doc_bytes`. The size is estimated as the last exact measurement
    /// plus the bytes of every update since. When that estimate would pass
    /// the limit, the state is encoded to measure it exactly (and kept for
    /// joiners), but at most once per `max / 1024` bytes of updates accepted,
    /// so a document at its limit is not re-encoded on every keystroke: the
    /// limit may bite up to that much early.
    ///
    /// # Errors
    /// [`ShardError::TooLarge`].
    fn check_size(&self, st: &mut ShardState, len: u64) -> Result<(), ShardError> {
        let max = self.settings.max_doc_bytes;
        if max == 0 || st.size_measured + st.size_since + len <= max {
            return Ok(());
        }
        if st.size_since >= (max / 1024).max(1) {
            st.full_state = None;
            full_state_locked(st);
        }
        let now = st.size_measured + st.size_since;
        if now + len > max {
            return Err(ShardError::TooLarge { now, max });
        }
        Ok(())
    }

    /// Logs, publishes and broadcasts an update just applied to the doc.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        st: &mut ShardState,
        permit: WritePermit<'_>,
        update: Bytes,
        author: &str,
        counts: (u32, u32),
        want_delta: bool,
        from: Option<u64>,
    ) -> Applied {
        let text_len = {
            let txn = st.awareness.doc().transact();
            u64::from(st.text.len(&txn))
        };
        st.last_seq += 1;
        crate::metrics::update_applied();
        let seq = st.last_seq;
        let delta = want_delta.then(|| std::mem::take(&mut *st.last_delta.lock()));
        self.feed.edit(author, delta, counts, text_len, seq);
        let time_ms = now_ms();
        st.last_change_ms = time_ms;
        st.last_change_at = Instant::now();
        if st.authors_since_version.len() < MAX_VERSION_AUTHORS
            && !st.authors_since_version.iter().any(|a| &**a == author)
        {
            st.authors_since_version.push(author.into());
        }
        st.full_state = None;
        st.size_since += update.len() as u64;
        st.updates_since_snapshot += 1;
        let durable = permit.send(WriteOp::Append {
            doc: self.id.clone(),
            seq,
            entry: LogEntry {
                time_ms,
                author: author.to_owned(),
                update: update.clone(),
                first_seq: 0,
            },
            text_len,
        });
        self.broadcast(st, &Broadcast::Update { update, seq }, from);
        if st.updates_since_snapshot >= self.settings.snapshot_every_updates {
            self.snapshot_locked(st, VersionKind::Auto);
        }
        Applied {
            doc_seq: seq,
            durable,
        }
    }

    /// Turns the text into `target` with one update authored `author` (a
    /// restore, or a document's initial text), live for every subscriber.
    /// The edits are a character diff of the two texts, so concurrent
    /// editors' cursors outside the changed ranges stay put. With `version`,
    /// a version of that kind and label is taken right after. Returns `None`
    /// if the text already was `target`.
    ///
    /// # Errors
    /// [`ShardError::Busy`] if the document kept changing while the diff was
    /// computed; [`ShardError::NotEmpty`] with `only_if_new` on a document
    /// that has updates; closed or shutting down.
    pub async fn set_text(
        &self,
        target: &str,
        author: &str,
        version: Option<(VersionKind, String)>,
        only_if_new: bool,
    ) -> Result<Option<(Applied, Option<Durable>)>, ShardError> {
        /// Attempts before giving up on a document that changes under us.
        const ATTEMPTS: usize = 4;
        let max = self.settings.max_doc_bytes;
        if max > 0 && target.len() as u64 > max {
            return Err(ShardError::TooLarge {
                now: self.state.lock().size_measured,
                max,
            });
        }
        for _ in 0..ATTEMPTS {
            let (current, seen_seq) = {
                let st = self.state.lock();
                if st.closed {
                    return Err(ShardError::Closed);
                }
                if only_if_new && st.last_seq > 0 {
                    return Err(ShardError::NotEmpty);
                }
                let txn = st.awareness.doc().transact();
                (st.text.get_string(&txn), st.last_seq)
            };
            // The diff can take a while on a long text: not under the lock.
            let ops = delta::between(&current, target);
            if ops.is_empty() {
                return Ok(None);
            }
            let permit = self.permit().await?;
            let version_permit = match &version {
                Some(_) => Some(self.permit().await?),
                None => None,
            };
            let mut st = self.state.lock();
            if st.closed {
                return Err(ShardError::Closed);
            }
            if st.last_seq != seen_seq {
                continue;
            }
            let want_delta = self.feed.wants_deltas();
            st.want_delta.store(want_delta, Ordering::Relaxed);
            let (update, counts) = {
                let text = st.text.clone();
                let mut txn = st.awareness.doc().transact_mut();
                let counts = delta::apply_to_text(&ops, &text, &mut txn);
                (Bytes::from(txn.encode_update_v1()), counts)
            };
            let applied = self.commit(&mut st, permit, update, author, counts, want_delta, None);
            let saved = version_permit
                .zip(version)
                .map(|(permit, (kind, label))| self.snapshot_with(&mut st, permit, kind, label));
            return Ok(Some((applied, saved)));
        }
        Err(ShardError::Busy)
    }

    /// Applies `update` as the first content of a new document, then takes
    /// a version of `kind` labelled `label` (a copy of another document).
    ///
    /// # Errors
    /// [`ShardError::NotEmpty`] if the document already has updates; an
    /// invalid update; closed or shutting down.
    pub async fn apply_initial(
        &self,
        update: Bytes,
        author: &str,
        kind: VersionKind,
        label: String,
    ) -> Result<(Applied, Option<Durable>), ShardError> {
        let decoded = decode_incoming(&update)?;
        let permit = self.permit().await?;
        let version_permit = self.permit().await?;
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        if st.last_seq > 0 {
            return Err(ShardError::NotEmpty);
        }
        let counts = (
            id_set_len(&decoded.insertions(false)),
            id_set_len(decoded.delete_set()),
        );
        let want_delta = self.feed.wants_deltas();
        st.want_delta.store(want_delta, Ordering::Relaxed);
        let applied = catch_unwind(AssertUnwindSafe(|| {
            st.awareness.doc().transact_mut().apply_update(decoded)
        }));
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.poison(&mut st);
                return Err(ShardError::InvalidUpdate(e.to_string()));
            }
            Err(_) => {
                self.poison(&mut st);
                return Err(ShardError::InvalidUpdate("panic while applying".to_owned()));
            }
        }
        let applied = self.commit(&mut st, permit, update, author, counts, want_delta, None);
        let saved = self.snapshot_with(&mut st, version_permit, kind, label);
        Ok((applied, Some(saved)))
    }
}

#[cfg(test)]
mod tests;
