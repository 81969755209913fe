//! Replays two findings of `fuzz/known/` with the yrs Folio builds against
//! (the patched copy in `patches/yrs`; no Folio code), from their raw Yjs v1
//! updates: `cargo run --manifest-path fuzz/Cargo.toml --example known`.
//! Prints what happens and each finding's state; exits with 1 if either
//! state changes (say, after a yrs upgrade or dropping the patch), so that
//! the note in `fuzz/known/README.md` gets updated.
//!
//! - `panic-base.bin` then `panic-update.bin` (finding 5, refused by Folio's
//!   `update_check` before yrs sees it): `apply_update` panics
//!   (`unreachable!()` in `BlockSet::exclude`); the same update on an empty
//!   document applies. Expected: reproduces.
//! - `origins-base.bin` then `origins-update.bin` (finding 4): published
//!   yrs 0.28.1 accepts it, and the document that applied it and a client
//!   that joins from its state have different texts. The patched yrs
//!   refuses it with `UpdateError::ReversedOrigins`. Expected: fixed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Transact, Update};

/// The root text every Folio document uses (`folio::doc::TEXT_NAME`).
const TEXT: &str = "content";

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("known");
    // yrs's panic is expected here: keep its message to one line.
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(ToString::to_string).unwrap_or_default();
        eprintln!("  (panic caught, at {at})");
    }));
    let panic = yrs_panic(&dir);
    let origins = origins(&dir);
    println!(
        "\npanic finding (5, refused in Folio): {}\norigins finding (4, fixed in patches/yrs): {}",
        verdict(panic),
        verdict(origins)
    );
    if !panic || origins {
        std::process::exit(1);
    }
}

fn verdict(reproduced: bool) -> &'static str {
    if reproduced {
        "reproduces"
    } else {
        "does not reproduce (fixed)"
    }
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes and applies `update` to `doc`: `Ok(Ok(()))`, `Ok(Err(..))` for a
/// refusal, `Err(())` for a panic.
fn apply(doc: &Doc, update: &[u8]) -> Result<Result<(), String>, ()> {
    catch_unwind(AssertUnwindSafe(|| {
        let update = Update::decode_v1(update).map_err(|e| format!("decode: {e}"))?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| format!("apply: {e}"))
    }))
    .map_err(|_| ())
}

fn text(doc: &Doc) -> String {
    let text = doc.get_or_insert_text(TEXT);
    let txn = doc.transact();
    text.get_string(&txn)
}

/// A document made from `doc`'s whole state, as a joining client (or a
/// reload from a snapshot) has it.
fn copy(doc: &Doc) -> Doc {
    let state = doc.transact().encode_diff_v1(&StateVector::default());
    let copy = Doc::new();
    apply(&copy, &state)
        .expect("a document's own state applies without panicking")
        .expect("a document's own state applies");
    copy
}

fn yrs_panic(dir: &Path) -> bool {
    let (base, update) = (read(dir, "panic-base.bin"), read(dir, "panic-update.bin"));
    println!("panic-base.bin    {}", hex(&base));
    println!(
        "  {:?}",
        Update::decode_v1(&base).expect("the base decodes")
    );
    println!("panic-update.bin  {}", hex(&update));
    println!(
        "  {:?}",
        Update::decode_v1(&update).expect("the update decodes")
    );
    let empty = Doc::new();
    let on_empty = apply(&empty, &update);
    println!("on an empty document: {on_empty:?}");
    let doc = Doc::new();
    assert_eq!(apply(&doc, &base), Ok(Ok(())), "the base applies");
    let on_base = apply(&doc, &update);
    println!(
        "after the base: {}",
        match &on_base {
            Err(()) => "PANIC".to_owned(),
            Ok(r) => format!("{r:?}"),
        }
    );
    on_base.is_err()
}

fn origins(dir: &Path) -> bool {
    let (base, update) = (
        read(dir, "origins-base.bin"),
        read(dir, "origins-update.bin"),
    );
    println!("\norigins-base.bin    {}", hex(&base));
    println!(
        "  {:?}",
        Update::decode_v1(&base).expect("the base decodes")
    );
    println!("origins-update.bin  {}", hex(&update));
    println!(
        "  {:?}",
        Update::decode_v1(&update).expect("the update decodes")
    );
    let live = Doc::new();
    assert_eq!(apply(&live, &base), Ok(Ok(())), "the base applies");
    let applied = apply(&live, &update);
    println!("after the base: {applied:?}");
    // A client joining from the document's state; a reload from a snapshot
    // taken after the update is the same. (A reload that replays the update
    // from the log onto a snapshot of the base is like the live document.)
    let joiner = copy(&live);
    let (live, joiner) = (text(&live), text(&joiner));
    println!("text of the document that applied it: {live:?}");
    println!("text of a client joining from its state: {joiner:?}");
    applied == Ok(Ok(())) && live != joiner
}
