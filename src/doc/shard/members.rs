//! Membership and fan-out: subscribing (the first sync), presence
//! (awareness) owned by the member that set it, one encoding per wire sent
//! to every member, and the resync of a member that fell behind.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use yrs::sync::{Awareness, AwarenessUpdate};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, ReadTxn, StateVector, StickyIndex, Transact, Update};

use super::{
    decode_guarded, full_state_locked, Behind, DocShard, Member, ShardError, ShardState,
    MAX_REMOVALS_WHILE_BEHIND,
};
use crate::doc::peer::{Peer, SendError, Wire};
use crate::doc::{update_check, DocId};
use crate::feed::Presence;
use crate::protocol::{self, server_message::Kind, v1, ysync};

impl DocShard {
    /// Subscribes `peer`: queues a `Synced` with what the peer lacks given its
    /// state vector, then every later update and awareness change.
    ///
    /// # Errors
    /// An undecodable state vector, a duplicate subscription, a full queue, or
    /// [`ShardError::Closed`].
    pub fn subscribe(
        &self,
        peer: &Arc<Peer>,
        author: &str,
        state_vector: &[u8],
    ) -> Result<(), ShardError> {
        let client_sv = if state_vector.is_empty() {
            None
        } else {
            Some(
                decode_guarded(|| StateVector::decode_v1(state_vector))
                    .map_err(ShardError::InvalidStateVector)?,
            )
        };
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        if st.members.iter().any(|m| m.peer.id() == peer.id()) {
            return Err(ShardError::AlreadySubscribed);
        }
        let update = match &client_sv {
            Some(sv) if !sv.is_empty() => {
                Bytes::from(st.awareness.doc().transact().encode_diff_v1(sv))
            }
            _ => full_state_locked(&mut st),
        };
        let server_sv = Bytes::from(st.awareness.doc().transact().state_vector().encode_v1());
        let awareness = encode_awareness(&st.awareness);
        let frames = match peer.wire() {
            Wire::Folio => vec![protocol::encode(Kind::Synced(v1::Synced {
                doc: self.id.to_string(),
                update,
                state_vector: server_sv,
                awareness,
            }))],
            // y-websocket: answer the client's step 1 with step 2, then ask
            // for what it has with our own step 1, then everyone's presence.
            Wire::YSync => {
                let mut frames = vec![ysync::step2(&update), ysync::step1(&server_sv)];
                if !awareness.is_empty() {
                    frames.push(ysync::awareness(&awareness));
                }
                frames
            }
        };
        // An answer to the peer's own request: queued whatever the room,
        // and its connection waits for room before reading more.
        for frame in frames {
            peer.force_send(frame).map_err(|_| ShardError::Closed)?;
        }
        st.members.push(Member {
            peer: peer.clone(),
            author: author.into(),
            awareness_clients: Vec::new(),
            behind: None,
        });
        st.idle_since = None;
        Ok(())
    }

    /// Removes `peer_id`'s subscription and its awareness entries, telling the
    /// others. Returns whether it was subscribed.
    pub fn unsubscribe(&self, peer_id: u64) -> bool {
        let mut st = self.state.lock();
        let Some(at) = st.members.iter().position(|m| m.peer.id() == peer_id) else {
            return false;
        };
        let member = st.members.swap_remove(at);
        self.drop_members(&mut st, vec![member]);
        true
    }

    /// Applies a y-protocols awareness update from subscriber `from` and
    /// relays it to the other subscribers.
    ///
    /// # Errors
    /// An undecodable update, or a state that is not JSON, changes nothing.
    pub fn apply_awareness(&self, update: Bytes, from: u64) -> Result<(), ShardError> {
        let decoded = decode_guarded(|| AwarenessUpdate::decode_v1(&update))
            .map_err(ShardError::InvalidAwareness)?;
        if let Some(client) = decoded
            .clients
            .keys()
            .find(|c| c.get() > update_check::MAX_CLIENT_ID)
        {
            return Err(ShardError::InvalidAwareness(format!(
                "client id {client} is past 2^53 - 1, which JavaScript clients cannot read"
            )));
        }
        for entry in decoded.clients.values() {
            serde_json::from_str::<serde::de::IgnoredAny>(&entry.json)
                .map_err(|e| ShardError::InvalidAwareness(format!("state is not JSON: {e}")))?;
        }
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        // Clients such as the y-websocket provider relay every presence they
        // hear, others' included: a presence belongs to the member that
        // introduced it, so that it leaves with that member and no other.
        let present: Vec<ClientID> = decoded
            .clients
            .keys()
            .copied()
            .filter(|c| st.awareness.state::<serde::de::IgnoredAny>(*c).is_some())
            .collect();
        let Some(member) = st.members.iter_mut().find(|m| m.peer.id() == from) else {
            return Err(ShardError::NotSubscribed);
        };
        for (client, entry) in &decoded.clients {
            let owned = member.awareness_clients.iter().position(|c| c == client);
            match (&*entry.json == "null", owned) {
                (false, None) if !present.contains(client) => {
                    member.awareness_clients.push(*client);
                }
                (true, Some(at)) => {
                    member.awareness_clients.swap_remove(at);
                }
                _ => {}
            }
        }
        let author = member.author.clone();
        let changed = st
            .awareness
            .apply_update_summary(decoded)
            .map_err(|e| ShardError::InvalidAwareness(e.to_string()))?;
        if let Some(changed) = changed {
            for client in changed.all_changes() {
                let now = presence_of(&st, client, &author);
                self.feed.presence(client.get(), now);
            }
            self.broadcast(&mut st, &Broadcast::Awareness(update), Some(from));
        }
        Ok(())
    }

    /// Sends `msg` to every member but `except`, encoded once per wire.
    ///
    /// A member whose queue has no room falls behind: it stays subscribed
    /// (its presence is untouched), nothing more is queued for it, and its
    /// connection is asked to call [`DocShard::resync`] once its queue
    /// drains. That way a slow consumer costs the server a state vector, not
    /// a backlog, and the CRDT makes the catch-up lossless. A member whose
    /// connection is gone is removed.
    pub(super) fn broadcast(&self, st: &mut ShardState, msg: &Broadcast, except: Option<u64>) {
        let started = Instant::now();
        let mut frames = FrameCache::default();
        let mut resync_point: Option<StateVector> = None;
        let mut gone = Vec::new();
        for i in 0..st.members.len() {
            let member = &st.members[i];
            if Some(member.peer.id()) == except || member.behind.is_some() {
                continue;
            }
            let wire = member.peer.wire();
            let frame = frames.get(wire, || msg.encode(&self.id, wire));
            match member.peer.try_send(frame) {
                Ok(()) => {}
                Err(SendError::Full) => {
                    let state_vector = resync_point
                        .get_or_insert_with(|| msg.resync_point(&st.awareness))
                        .clone();
                    let member = &mut st.members[i];
                    tracing::debug!(doc = %self.id, peer = member.peer.id(), "fell behind; resync once drained");
                    crate::metrics::fell_behind();
                    member.behind = Some(Behind {
                        state_vector,
                        left: Vec::new(),
                    });
                    member.peer.mark_behind(self.id.clone());
                }
                Err(SendError::Closed) => gone.push(i),
            }
        }
        crate::metrics::fanned_out(started.elapsed());
        if !gone.is_empty() {
            // Highest index first, so each swap_remove leaves the rest in place.
            let gone = gone
                .into_iter()
                .rev()
                .map(|i| st.members.swap_remove(i))
                .collect();
            self.drop_members(st, gone);
        }
    }

    /// Catches up the member `peer_id` if it fell behind (see
    /// [`DocShard::broadcast`]): queues everything it may lack since then as
    /// one message (`Resynced`; on `/yjs`, a sync step 2 and the presence),
    /// without waiting. Returns whether it was behind.
    ///
    /// # Errors
    /// [`ShardError::SlowConsumer`] if the queue has no room yet (the member
    /// stays behind: call again once it drains); not subscribed; closed.
    pub fn resync(&self, peer_id: u64) -> Result<bool, ShardError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(ShardError::Closed);
        }
        let at = st
            .members
            .iter()
            .position(|m| m.peer.id() == peer_id)
            .ok_or(ShardError::NotSubscribed)?;
        let Some(behind) = &st.members[at].behind else {
            return Ok(false);
        };
        let peer = st.members[at].peer.clone();
        if !peer.is_drained() {
            return Err(ShardError::SlowConsumer);
        }
        let update = Bytes::from(
            st.awareness
                .doc()
                .transact()
                .encode_diff_v1(&behind.state_vector),
        );
        let awareness = awareness_with_removals(&st.awareness, &behind.left);
        // Into a drained queue, whatever its size: at most one resync per
        // document waits in the queue.
        let frames = match peer.wire() {
            Wire::Folio => vec![protocol::encode(Kind::Resynced(v1::Resynced {
                doc: self.id.to_string(),
                update,
                awareness,
                seq: st.last_seq,
            }))],
            Wire::YSync => {
                let mut frames = vec![ysync::step2(&update)];
                if !awareness.is_empty() {
                    frames.push(ysync::awareness(&awareness));
                }
                frames
            }
        };
        for frame in frames {
            peer.force_send(frame).map_err(|_| ShardError::Closed)?;
        }
        st.members[at].behind = None;
        crate::metrics::resynced();
        Ok(true)
    }

    /// Removes the awareness of members that left and tells the others.
    fn drop_members(&self, st: &mut ShardState, gone: Vec<Member>) {
        let clients: Vec<ClientID> = gone.into_iter().flat_map(|m| m.awareness_clients).collect();
        if st.members.is_empty() && st.idle_since.is_none() {
            st.idle_since = Some(Instant::now());
        }
        if clients.is_empty() {
            return;
        }
        for client in &clients {
            st.awareness.remove_state(*client);
            self.feed.presence(client.get(), None);
        }
        // Members that are behind hear of it in their resync.
        for behind in st.members.iter_mut().filter_map(|m| m.behind.as_mut()) {
            let room = MAX_REMOVALS_WHILE_BEHIND.saturating_sub(behind.left.len());
            behind.left.extend(clients.iter().take(room));
        }
        let Ok(update) = st.awareness.update_with_clients(clients) else {
            return;
        };
        let update = Bytes::from(update.encode_v1());
        // Recursion is bounded: each round only removes members.
        self.broadcast(st, &Broadcast::Awareness(update), None);
    }
}

/// What a shard sends to its members.
pub(super) enum Broadcast {
    Update { update: Bytes, seq: u64 },
    Awareness(Bytes),
}

impl Broadcast {
    /// A state vector that a member who missed this broadcast (and nothing
    /// before it) has everything up to: the document's state now, lowered
    /// to where this update's blocks start. Computed once per broadcast, and
    /// only when some member falls behind.
    fn resync_point(&self, awareness: &Awareness) -> StateVector {
        let mut sv = awareness.doc().transact().state_vector();
        if let Self::Update { update, .. } = self {
            if let Ok(decoded) = decode_guarded(|| Update::decode_v1(update)) {
                for (client, clock) in decoded.state_vector_lower().iter() {
                    sv.set_min(*client, *clock);
                }
            } else {
                // Cannot happen (the update was applied), but if it did the
                // whole state is a safe answer.
                sv = StateVector::default();
            }
        }
        sv
    }

    fn encode(&self, doc: &DocId, wire: Wire) -> Bytes {
        match (self, wire) {
            (Self::Update { update, seq }, Wire::Folio) => {
                protocol::encode(Kind::Update(v1::Update {
                    doc: doc.to_string(),
                    update: update.clone(),
                    seq: *seq,
                }))
            }
            (Self::Update { update, .. }, Wire::YSync) => ysync::update(update),
            (Self::Awareness(update), Wire::Folio) => {
                protocol::encode(Kind::Awareness(v1::Awareness {
                    doc: doc.to_string(),
                    update: update.clone(),
                }))
            }
            (Self::Awareness(update), Wire::YSync) => ysync::awareness(update),
        }
    }
}

/// One encoding per wire, made on first use.
#[derive(Default)]
struct FrameCache {
    folio: Option<Bytes>,
    ysync: Option<Bytes>,
}

impl FrameCache {
    fn get(&mut self, wire: Wire, encode: impl FnOnce() -> Bytes) -> Bytes {
        let slot = match wire {
            Wire::Folio => &mut self.folio,
            Wire::YSync => &mut self.ysync,
        };
        slot.get_or_insert_with(encode).clone()
    }
}

/// The `user` part of `client`'s awareness state, or `None` if it has none.
/// The cursor is the selection head, as a number or a Yjs relative position
/// (as y-codemirror and y-prosemirror send), turned into a text index.
fn presence_of(st: &ShardState, client: ClientID, author: &str) -> Option<Presence> {
    let state: serde_json::Value = st.awareness.state(client)?;
    if state.is_null() {
        return None;
    }
    let user = &state["user"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let cursor = match &state["cursor"] {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        v @ serde_json::Value::Object(_) => {
            let head = if v.get("head").is_some() {
                &v["head"]
            } else {
                v
            };
            match head {
                serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                rel => serde_json::from_value::<StickyIndex>(rel.clone())
                    .ok()
                    .and_then(|sticky| {
                        let txn = st.awareness.doc().transact();
                        sticky.get_offset(&txn).map(|o| o.index)
                    }),
            }
        }
        _ => None,
    };
    Some(Presence {
        client: client.get(),
        author: author.to_owned(),
        name: text(&user["name"]),
        color: text(&user["color"]),
        cursor,
    })
}

/// Everyone's presence plus the removal of `left` (those still gone), or
/// empty bytes if that is nobody.
fn awareness_with_removals(awareness: &Awareness, left: &[ClientID]) -> Bytes {
    let Ok(mut update) = awareness.update() else {
        return Bytes::new();
    };
    let known: Vec<ClientID> = left
        .iter()
        .copied()
        .filter(|c| !update.clients.contains_key(c))
        .collect();
    if let Ok(removed) = awareness.update_with_clients(known) {
        update.clients.extend(removed.clients);
    }
    if update.clients.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(update.encode_v1())
    }
}

/// The current presence of everyone, or empty bytes if nobody has any.
fn encode_awareness(awareness: &Awareness) -> Bytes {
    match awareness.update() {
        Ok(update) if !update.clients.is_empty() => Bytes::from(update.encode_v1()),
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::shard::test_support::*;
    use crate::doc::shard::*;

    #[tokio::test]
    async fn a_full_queue_leaves_the_member_behind_until_a_resync_catches_it_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        // Room for the Synced and about two relayed updates.
        let (slow, mut rx) = Peer::channel(7, Wire::Folio, 400);
        shard.subscribe(&slow, "slow", &[]).expect("subscribe");
        for i in 0..20 {
            shard
                .apply_update(insert_update(10 + i, "x"), "t", None)
                .await
                .expect("apply");
        }
        // Still a member, flagged once, and nothing more was queued.
        assert_eq!(shard.info().subscribers, 1);
        assert_eq!(slow.take_behind(), vec![shard.id().clone()]);
        let queued = slow.meter().queued();
        assert!(queued <= 400, "{queued} bytes queued");
        // Not drained yet: the resync waits.
        assert!(matches!(shard.resync(7), Err(ShardError::SlowConsumer)));
        let client = new_doc();
        let (relayed, _) = deliver(&mut rx, &client);
        assert!(relayed < 20, "{relayed} relayed");
        assert!(shard.resync(7).expect("resync"));
        assert_eq!(deliver(&mut rx, &client), (0, 1));
        let text = client.get_or_insert_text(TEXT_NAME);
        assert_eq!(text.get_string(&client.transact()), shard.text());
        // Caught up: relaying works again, and a second resync is a no-op.
        assert!(!shard.resync(7).expect("resync"));
        shard
            .apply_update(insert_update(99, "y"), "t", None)
            .await
            .expect("apply");
        assert_eq!(deliver(&mut rx, &client), (1, 0));
        assert_eq!(text.get_string(&client.transact()), shard.text());
    }

    /// A presence under a client id JavaScript cannot read would break
    /// every JS client it is relayed to; it is refused and not relayed.
    #[tokio::test]
    async fn awareness_with_a_client_id_past_2_pow_53_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = new_shard(dir.path());
        let (sender, _srx) = Peer::channel(1, Wire::Folio, 1 << 20);
        let (watcher, mut rx) = Peer::channel(2, Wire::Folio, 1 << 20);
        shard.subscribe(&sender, "s", &[]).expect("subscribe");
        shard.subscribe(&watcher, "w", &[]).expect("subscribe");
        while rx.try_recv().is_some() {}
        // y-protocols awareness: one entry, client 2^53, clock 1, state {}.
        let bytes = vec![1, 128, 128, 128, 128, 128, 128, 128, 16, 1, 2, b'{', b'}'];
        let refused = shard.apply_awareness(Bytes::from(bytes), sender.id());
        assert!(
            matches!(refused, Err(ShardError::InvalidAwareness(_))),
            "{refused:?}"
        );
        assert!(rx.try_recv().is_none(), "nothing relayed");
    }
}
