//! The reversed-origins check in `Update::missing_dependency` (Folio's patch): an item whose
//! right origin does not lie to the right of its left origin is refused, because replicas would
//! each place it somewhere else; items whose origins are in order are still accepted.

use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, GetString, Options, ReadTxn, Text, Transact, Update};

/// One item 'X' of client 2 at clock 0 with the given left and right origins (client, clock),
/// as a v1 update.
fn insert_x(left: (u8, u8), right: (u8, u8)) -> Vec<u8> {
    vec![
        1, 1, 2, 0, 0xc4, left.0, left.1, right.0, right.1, 1, b'X', 0,
    ]
}

fn text_of(doc: &Doc) -> String {
    doc.get_or_insert_text("content")
        .get_string(&doc.transact())
}

fn apply_ok(doc: &Doc, update: &[u8]) {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).unwrap())
        .unwrap();
}

/// Client 1's "abc" in one block; with `second`, client 3's "de" appended (a second block);
/// with `delete`, all of "abc" deleted.
fn base(second: bool, delete: bool) -> Doc {
    let doc = Doc::with_options(Options::with_client_id(ClientID::new(1)));
    let text = doc.get_or_insert_text("content");
    text.insert(&mut doc.transact_mut(), 0, "abc");
    if second {
        let other = Doc::with_options(Options::with_client_id(ClientID::new(3)));
        apply_ok(
            &other,
            &doc.transact()
                .encode_state_as_update_v1(&Default::default()),
        );
        let other_text = other.get_or_insert_text("content");
        other_text.insert(&mut other.transact_mut(), 3, "de");
        let diff = other
            .transact()
            .encode_diff_v1(&doc.transact().state_vector());
        apply_ok(&doc, &diff);
    }
    if delete {
        text.remove_range(&mut doc.transact_mut(), 0, 3);
    }
    doc
}

/// Applies the update and checks that a doc joining from the full state reads the same text
/// (the divergence the check prevents). Returns whether the update was accepted.
fn apply(doc: &Doc, update: &[u8]) -> bool {
    let result = doc
        .transact_mut()
        .apply_update(Update::decode_v1(update).unwrap());
    let joiner = Doc::new();
    apply_ok(
        &joiner,
        &doc.transact()
            .encode_state_as_update_v1(&Default::default()),
    );
    assert_eq!(text_of(doc), text_of(&joiner), "replicas agree");
    match result {
        Ok(()) => true,
        Err(e) => {
            assert!(e.to_string().contains("right origin"), "{e}");
            false
        }
    }
}

/// A one-item update that must be refused and leave the text as it was.
fn refused_unchanged(doc: Doc, update: &[u8]) {
    let before = text_of(&doc);
    assert!(!apply(&doc, update));
    assert_eq!(text_of(&doc), before, "a refused update changes nothing");
}

#[test]
fn origins_in_order_are_accepted_within_and_across_blocks() {
    let doc = base(false, false);
    assert!(apply(&doc, &insert_x((1, 0), (1, 1))));
    assert_eq!(text_of(&doc), "aXbc");
    // The right origin at a block start: client 3's block follows "abc".
    let doc = base(true, false);
    assert!(apply(&doc, &insert_x((1, 2), (3, 0))));
    assert_eq!(text_of(&doc), "abcXde");
}

#[test]
fn reversed_or_equal_origins_are_refused() {
    // Within one block: reversed, then equal.
    refused_unchanged(base(false, false), &insert_x((1, 2), (1, 1)));
    refused_unchanged(base(false, false), &insert_x((1, 1), (1, 1)));
    // Across blocks: the left origin in client 3's block, the right origin in client 1's.
    refused_unchanged(base(true, false), &insert_x((3, 0), (1, 0)));
    // Inside a deleted run, where no visible text tells the two apart.
    refused_unchanged(base(false, true), &insert_x((1, 2), (1, 1)));
}

#[test]
fn a_reversal_among_items_of_the_same_update_is_refused() {
    // Client 2 writes "PQ" after 'a' (origins in order); client 4 then puts 'X' with left
    // origin Q and right origin P. Both arrive in one merged update.
    let pq: Vec<u8> = vec![1, 1, 2, 0, 0xc4, 1, 0, 1, 1, 2, b'P', b'Q', 0];
    let x: Vec<u8> = vec![1, 1, 4, 0, 0xc4, 2, 1, 2, 0, 1, b'X', 0];
    let merged = yrs::merge_updates_v1([pq.as_slice(), x.as_slice()]).unwrap();
    let doc = base(false, false);
    assert!(!apply(&doc, &merged));
    // yrs integrates block by block: "PQ" came first in the update and stays; 'X' is refused.
    assert_eq!(text_of(&doc), "aPQbc");
}
