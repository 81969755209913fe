//! Helpers shared by the shard's unit tests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Text, Transact, Update};

use super::*;
use crate::doc::peer::Peer;
use crate::protocol::{server_message::Kind, v1};
use crate::store::{DocStore, SledStore};

pub(super) fn settings() -> ShardSettings {
    ShardSettings {
        snapshot_every_updates: 3,
        snapshot_interval: Duration::from_secs(60),
        version_idle: Duration::from_secs(60),
        max_doc_bytes: 0,
    }
}

pub(super) fn feed() -> Arc<DocFeed> {
    let hub = crate::feed::FeedHub::new(
        1,
        crate::feed::FeedSettings {
            activity_window: Duration::from_millis(10),
            history_events: 100,
            history_age: Duration::from_secs(60),
        },
    );
    hub.feed(&DocId::parse("d").expect("id"), || 0)
}

/// A fresh, empty shard on a sled store in `dir`. The writer thread
/// ends by itself once the shard is dropped.
pub(super) fn new_shard(dir: &std::path::Path) -> DocShard {
    let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir).expect("open"));
    let (writer, _thread) = StoreWriter::start(store, 16).expect("writer");
    DocShard::load(
        DocId::parse("d").expect("id"),
        None,
        writer,
        settings(),
        feed(),
    )
    .expect("load")
}

pub(super) fn insert_update(client: u64, text: &str) -> Bytes {
    let doc = Doc::with_client_id(client);
    let t = doc.get_or_insert_text(TEXT_NAME);
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    Bytes::from(txn.encode_update_v1())
}

/// Applies every frame queued for a Folio peer to `doc`, as a client
/// would; returns how many were relayed updates and resyncs.
pub(super) fn deliver(rx: &mut crate::doc::OutboundRx, doc: &Doc) -> (usize, usize) {
    use crate::doc::Outbound;
    use prost::Message as _;
    let (mut updates, mut resyncs) = (0, 0);
    while let Some(out) = rx.try_recv() {
        let Outbound::Frame(frame) = out else {
            continue;
        };
        rx.written(frame.len());
        let msg = v1::ServerMessage::decode(frame).expect("decodes");
        let update = match msg.kind {
            Some(Kind::Synced(s)) => s.update,
            Some(Kind::Update(u)) => {
                updates += 1;
                u.update
            }
            Some(Kind::Resynced(r)) => {
                resyncs += 1;
                r.update
            }
            _ => continue,
        };
        let update = Update::decode_v1(&update).expect("update");
        doc.transact_mut().apply_update(update).expect("applies");
    }
    (updates, resyncs)
}

/// A shard over `store`, as [`new_shard`] makes, loaded from what the
/// store holds.
pub(super) fn load_shard(store: &Arc<dyn DocStore>, writer: &StoreWriter) -> DocShard {
    let id = DocId::parse("d").expect("id");
    let stored = store.load(&id).expect("load");
    DocShard::load(id, stored, writer.clone(), settings(), feed()).expect("loads")
}

/// Client 7's "hello", and client 8's deletion of its "ell".
pub(super) fn hello_and_deletion() -> (Bytes, Bytes) {
    let insert = insert_update(7, "hello");
    let other = Doc::with_client_id(8);
    let text = other.get_or_insert_text(TEXT_NAME);
    let update = Update::decode_v1(&insert).expect("decodes");
    other.transact_mut().apply_update(update).expect("applies");
    let mut txn = other.transact_mut();
    text.remove_range(&mut txn, 1, 3);
    (insert, Bytes::from(txn.encode_update_v1()))
}

/// After a refused update: the shard is open, `watcher` is its one
/// subscriber and was not dropped, and the text and seq are as before.
pub(super) fn assert_undisturbed(shard: &DocShard, watcher: &Peer, text: &str, seq: u64) {
    assert!(!shard.is_closed());
    assert_eq!(shard.info().subscribers, 1);
    assert!(watcher.take_dropped().is_empty());
    assert_eq!(
        (shard.text(), shard.info().last_seq),
        (text.to_owned(), seq)
    );
}
