//! The apply path's refusals: each update here was once accepted, or broke
//! the document or its subscribers; now it is refused and nothing changes.

use super::*;
use crate::doc::peer::{Peer, Wire};
use crate::doc::shard::test_support::*;
use crate::doc::shard::*;
use crate::protocol::{self, server_message::Kind, ErrorCode};
use crate::store::{DocStore, SledStore, StoreWriter};

#[tokio::test]
async fn invalid_and_disconnected_updates_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = new_shard(dir.path());
    let ok = shard
        .apply_update(insert_update(1, "hi"), "t", None)
        .await
        .expect("valid update");
    assert_eq!(ok.doc_seq, 1);
    assert!(ok.durable.await.expect("completed").is_ok());
    for junk in [&b"\xff\xff\xff"[..], b"", b"\x01\x01\x80"] {
        let err = shard
            .apply_update(Bytes::copy_from_slice(junk), "t", None)
            .await;
        assert!(
            matches!(err, Err(ShardError::InvalidUpdate(_))),
            "{junk:?}: {err:?}"
        );
    }
    // Client 2's second edit without its first: missing dependencies.
    let d2 = Doc::with_client_id(2);
    let t2 = d2.get_or_insert_text(TEXT_NAME);
    t2.insert(&mut d2.transact_mut(), 0, "a");
    let sv = d2.transact().state_vector();
    t2.insert(&mut d2.transact_mut(), 1, "b");
    let second = Bytes::from(d2.transact().encode_diff_v1(&sv));
    let err = shard.apply_update(second, "t", None).await;
    assert!(
        matches!(err, Err(ShardError::MissingDependencies)),
        "{err:?}"
    );
    assert_eq!(shard.text(), "hi");
    assert_eq!(shard.info().last_seq, 1);
    assert!(!shard.is_closed());
}

#[tokio::test]
async fn resends_are_acknowledged_but_not_logged_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = new_shard(dir.path());
    // Two keystrokes of one client: the second starts past clock 0.
    let typist = Doc::with_client_id(5);
    let text = typist.get_or_insert_text(TEXT_NAME);
    let first = {
        let mut txn = typist.transact_mut();
        text.insert(&mut txn, 0, "a");
        Bytes::from(txn.encode_update_v1())
    };
    let second = {
        let mut txn = typist.transact_mut();
        text.insert(&mut txn, 1, "b");
        Bytes::from(txn.encode_update_v1())
    };
    for (update, seq) in [(first, 1), (second.clone(), 2), (second, 2)] {
        let applied = shard.apply_update(update, "t", None).await.expect("apply");
        assert_eq!(applied.doc_seq, seq);
        assert!(applied.durable.await.expect("completed").is_ok());
    }
    assert_eq!(shard.text(), "ab");
    assert_eq!(shard.info().last_seq, 2);
}

#[tokio::test]
async fn updates_past_the_size_limit_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let (writer, _thread) = StoreWriter::start(store, 16).expect("writer");
    let shard = DocShard::load(
        DocId::parse("d").expect("id"),
        None,
        writer,
        ShardSettings {
            max_doc_bytes: 4096,
            ..settings()
        },
        feed(),
    )
    .expect("load");
    let mut accepted = 0;
    let refused = loop {
        match shard
            .apply_update(insert_update(100 + accepted, &"a".repeat(500)), "t", None)
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "never refused");
    };
    assert!(
        matches!(refused, ShardError::TooLarge { max: 4096, .. }),
        "{refused:?}"
    );
    assert_eq!(refused.code(), ErrorCode::DocTooLarge);
    assert_eq!(shard.info().last_seq, accepted);
    assert_eq!(shard.text().len(), 500 * accepted as usize);
    assert!(shard.full_state().len() <= 4096);
    // Small edits that fit still go in; a huge text is refused up front.
    assert!(shard
        .apply_update(insert_update(1, "b"), "t", None)
        .await
        .is_ok());
    let big = "z".repeat(5000);
    assert!(matches!(
        shard.set_text(&big, "t", None, false).await,
        Err(ShardError::TooLarge { .. })
    ));
}

/// Found while writing the shard fuzz harness (its reload check): a
/// deletion of text the document did not have yet was acknowledged as a resend but kept
/// pending in memory, unlogged and unsent; once the text arrived, memory
/// said "ho" while the log, a reload and every other client said "hello".
#[tokio::test]
async fn deletions_of_text_the_document_lacks_are_refused_and_leave_nothing_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let (writer, _thread) = StoreWriter::start(store.clone(), 16).expect("writer");
    let shard = load_shard(&store, &writer);
    let (insert, deletion) = hello_and_deletion();
    let refused = shard.apply_update(deletion, "mallory", None).await;
    assert!(
        matches!(refused, Err(ShardError::MissingDependencies)),
        "{refused:?}"
    );
    assert_eq!(shard.info().last_seq, 0);
    let applied = shard.apply_update(insert, "t", None).await.expect("insert");
    assert!(applied.durable.await.expect("completed").is_ok());
    assert_eq!(shard.text(), "hello");
    assert_eq!(load_shard(&store, &writer).text(), "hello");
}

/// An update of which only a part integrates is logged and sent as
/// that part, so memory, the log and the other clients agree. (Before,
/// the rest stayed pending in memory, but not in the next snapshot: once
/// the missing text came, memory deleted it and a reload did not.)
#[tokio::test]
async fn an_update_that_partly_integrates_is_logged_and_sent_as_that_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let (writer, _thread) = StoreWriter::start(store.clone(), 16).expect("writer");
    let shard = load_shard(&store, &writer);
    let (watcher, mut rx) = Peer::channel(3, Wire::Folio, 1 << 20);
    shard.subscribe(&watcher, "w", &[]).expect("subscribe");
    let (insert, deletion) = hello_and_deletion();
    let mixed =
        yrs::merge_updates_v1([&insert_update(10, "X")[..], &deletion[..]]).expect("merges");
    let applied = shard
        .apply_update(Bytes::from(mixed), "mallory", None)
        .await
        .expect("the part that integrates applies");
    assert_eq!(applied.doc_seq, 1);
    assert_eq!(shard.text(), "X");
    // Two more updates: a snapshot after the third (`settings`), which
    // holds no pending state, so a reload starts from there.
    for (client, text) in [(11, "Y"), (12, "Z")] {
        let update = insert_update(client, text);
        shard.apply_update(update, "t", None).await.expect("apply");
    }
    let applied = shard.apply_update(insert, "t", None).await.expect("insert");
    assert!(applied.durable.await.expect("completed").is_ok());
    let text = shard.text();
    assert_eq!(text.replace(['X', 'Y', 'Z'], ""), "hello", "{text}");
    assert_eq!(load_shard(&store, &writer).text(), text);
    // The watcher, from what it was sent, has the same text.
    let copy = Doc::new();
    while let Some(crate::doc::Outbound::Frame(frame)) = rx.try_recv() {
        let msg = <protocol::ServerMessage as prost::Message>::decode(frame).expect("frame");
        let update = match msg.kind {
            Some(Kind::Synced(s)) => s.update,
            Some(Kind::Update(u)) => u.update,
            _ => continue,
        };
        let update = Update::decode_v1(&update).expect("decodes");
        copy.transact_mut().apply_update(update).expect("applies");
    }
    let copy_text = copy.get_or_insert_text(TEXT_NAME);
    assert_eq!(copy_text.get_string(&copy.transact()), text);
}

/// Found by the `session` fuzz target: an update whose block names a
/// piece of text as its parent made yrs fail mid-apply, and the shard
/// closed itself, dropping every subscriber of the document; any client
/// could repeat it at will. Nothing of it integrates, so it is refused
/// and the document and its subscribers carry on.
#[tokio::test]
async fn an_update_with_a_text_item_as_parent_is_refused_without_closing_the_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = new_shard(dir.path());
    let (watcher, _rx) = Peer::channel(3, Wire::Folio, 1 << 20);
    shard.subscribe(&watcher, "w", &[]).expect("subscribe");
    let applied = shard
        .apply_update(insert_update(1, "hello"), "t", None)
        .await
        .expect("apply");
    assert!(applied.durable.await.expect("completed").is_ok());
    // lib0 v1: one client (2) with one struct at clock 0: a string item
    // (info 4) with no origins, whose parent is the id <1#0> (the "h"),
    // holding "x"; then an empty delete set.
    let hostile = Bytes::from_static(&[1, 1, 2, 0, 4, 0, 1, 0, 1, b'x', 0]);
    assert!(Update::decode_v1(&hostile).is_ok(), "the update decodes");
    let refused = shard.apply_update(hostile, "mallory", None).await;
    assert!(
        matches!(&refused, Err(ShardError::InvalidUpdate(r)) if r.contains("parent")),
        "{refused:?}"
    );
    assert_undisturbed(&shard, &watcher, "hello", 1);
}

/// Found by the `shard_mutate` fuzz target: an update listing the same
/// client twice, with overlapping runs, made yrs panic while applying
/// it, and the shard closed itself, dropping every subscriber; or, with
/// other clocks, yrs kept a character the sender's first run did not
/// hold there. It is refused before yrs sees it, and nothing changes.
#[tokio::test]
async fn an_update_listing_a_client_twice_is_refused_without_closing_the_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = new_shard(dir.path());
    let (watcher, _rx) = Peer::channel(3, Wire::Folio, 1 << 20);
    shard.subscribe(&watcher, "w", &[]).expect("subscribe");
    let applied = shard
        .apply_update(insert_update(7, "abcdef"), "t", None)
        .await
        .expect("apply");
    assert!(applied.durable.await.expect("completed").is_ok());
    // lib0 v1: two entries for client 7, "abcdefgh" from clock 0 and
    // "xy" from clock `second`, each a root string item of the text.
    for second in [5u8, 7] {
        let mut bytes = vec![2];
        for (clock, run) in [(0u8, &b"abcdefgh"[..]), (second, &b"xy"[..])] {
            bytes.extend([1, 7, clock, 4, 1, 7]);
            bytes.extend(TEXT_NAME.as_bytes());
            bytes.push(run.len() as u8);
            bytes.extend(run);
        }
        bytes.push(0);
        assert!(Update::decode_v1(&bytes).is_ok(), "the update decodes");
        let refused = shard
            .apply_update(Bytes::from(bytes), "mallory", None)
            .await;
        assert!(
            matches!(&refused, Err(ShardError::InvalidUpdate(r)) if r.contains("more than once")),
            "{refused:?}"
        );
    }
    assert_undisturbed(&shard, &watcher, "abcdef", 1);
}

/// Found by the `session` and `shard_update` fuzz targets: the
/// structural check (`update_check`) ran outside the panic guard, and
/// yrs's readers panic in debug builds on a client id of 2^53 or an
/// integer varint of ten bytes, which unwound out of `apply_update`.
#[tokio::test]
async fn updates_that_make_the_structural_check_panic_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = new_shard(dir.path());
    let hex = [
        // client 2^53 types "A"
        "0101808080808080801000040107636f6e74656e74014100",
        // an Any integer as a varint of ten 0xff bytes
        "01010100080107636f6e74656e74017dffffffffffffffffffff0000",
    ];
    for h in hex {
        let bytes: Vec<u8> = (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
            .collect();
        let refused = shard.apply_update(Bytes::from(bytes), "m", None).await;
        assert!(
            matches!(refused, Err(ShardError::InvalidUpdate(_))),
            "{h}: {refused:?}"
        );
    }
    assert!(!shard.is_closed());
    assert_eq!(shard.info().last_seq, 0);
}

/// Fuzz finding 4 (`fuzz/known/origins-*.bin`): client 2's "X" with
/// left origin the "c" and right origin the "b" of client 1's "abc" was
/// accepted; the shard then read "aXbc" and a client joining from its
/// state "abcX", for good. The patched yrs (`patches/yrs`) refuses it
/// before splitting any block, so nothing changes and nothing is sent.
#[tokio::test]
async fn an_update_whose_left_origin_follows_its_right_origin_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let (writer, _thread) = StoreWriter::start(store.clone(), 16).expect("writer");
    let shard = load_shard(&store, &writer);
    let (watcher, mut rx) = Peer::channel(3, Wire::Folio, 1 << 20);
    shard.subscribe(&watcher, "w", &[]).expect("subscribe");
    let base = include_bytes!("../../../../fuzz/known/origins-base.bin");
    let applied = shard
        .apply_update(Bytes::from_static(base), "t", None)
        .await
        .expect("the base applies");
    assert!(applied.durable.await.expect("completed").is_ok());
    let state_before = shard.full_state();
    while rx.try_recv().is_some() {}
    let reversed = include_bytes!("../../../../fuzz/known/origins-update.bin");
    let refused = shard
        .apply_update(Bytes::from_static(reversed), "mallory", None)
        .await;
    // A joiner from the full state reads what the shard reads.
    let joiner = Doc::new();
    let state = Update::decode_v1(&shard.full_state()).expect("decodes");
    joiner.transact_mut().apply_update(state).expect("applies");
    let joiner_text = joiner.get_or_insert_text(TEXT_NAME);
    assert_eq!(joiner_text.get_string(&joiner.transact()), shard.text());
    assert!(
        matches!(&refused, Err(ShardError::InvalidUpdate(r)) if r.contains("right origin")),
        "{refused:?}"
    );
    assert_eq!(
        ShardError::InvalidUpdate(String::new()).code(),
        ErrorCode::InvalidUpdate
    );
    assert_undisturbed(&shard, &watcher, "abc", 1);
    assert_eq!(shard.full_state(), state_before);
    assert!(rx.try_recv().is_none(), "nothing relayed");
    assert_eq!(load_shard(&store, &writer).text(), "abc");
}

/// Found by replaying the `shard_update` corpus in a debug build: the
/// sizes of a hostile update's delete set were summed with `+`, which
/// overflowed (a panic outside any guard in debug builds, a wrong count
/// in release ones) before the update was even applied.
#[tokio::test]
async fn deletions_claiming_more_than_u32_max_items_are_refused_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = new_shard(dir.path());
    // lib0 v1: no structs; a delete set of two clients, each deleting
    // 0xF000_0000 items from clock 0.
    let huge = [128, 128, 128, 128, 15];
    let mut bytes = vec![0, 2];
    for client in [1, 2] {
        bytes.extend([client, 1, 0]);
        bytes.extend(huge);
    }
    let refused = shard
        .apply_update(Bytes::from(bytes), "mallory", None)
        .await;
    assert!(
        matches!(refused, Err(ShardError::MissingDependencies)),
        "{refused:?}"
    );
    assert!(!shard.is_closed());
    assert_eq!(shard.info().last_seq, 0);
}
