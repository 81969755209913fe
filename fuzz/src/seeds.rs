//! Real updates from the editing traces in `../shared/traces`: the pool the
//! shard harness builds documents from, and what the seed corpora are made of.

use std::path::PathBuf;

use bytes::Bytes;
use folio::client::new_doc_with_client_id;
use folio::doc::TEXT_NAME;
use folio::trace::Trace;
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, Text, Transact, Update};

/// The sequential traces used, each typed by its own client (ids 1, 2, ...),
/// so that updates of different traces are concurrent edits of one document.
pub const TRACES: [&str; 4] = [
    "sequential/seph-blog1.json.gz",
    "sequential/rustcode.json.gz",
    "sequential/sveltecomponent.json.gz",
    "sequential/friendsforever_flat.json.gz",
];

/// Updates typed per trace: enough for multi-keystroke documents, few enough
/// that building a document from a prefix stays cheap.
pub const UPDATES_PER_TRACE: usize = 48;

/// The client that deletes other clients' text in [`Pool::deletes`].
pub const DELETER: u64 = 9;

/// Where the traces are: `FOLIO_TRACES`, or `../shared/traces` beside the
/// repository.
pub fn traces_dir() -> PathBuf {
    std::env::var_os("FOLIO_TRACES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces"),
        PathBuf::from,
    )
}

/// Real updates, typed from the traces.
pub struct Pool {
    /// Per trace, the first [`UPDATES_PER_TRACE`] keystroke updates.
    pub typed: Vec<Vec<Bytes>>,
    /// Per trace, an update by [`DELETER`] that deletes a few characters of
    /// the text after half of `typed`: an edit of another client's text.
    pub deletes: Vec<Bytes>,
}

impl Pool {
    /// Loads the traces and types them.
    ///
    /// # Panics
    /// If a trace is missing or unreadable (see [`traces_dir`]).
    pub fn load() -> Self {
        let dir = traces_dir();
        let mut typed = Vec::new();
        let mut deletes = Vec::new();
        for (i, name) in TRACES.iter().enumerate() {
            let trace = Trace::load(dir.join(name))
                .unwrap_or_else(|e| panic!("{e} (set FOLIO_TRACES to the traces dir)"));
            let client = i as u64 + 1;
            let doc = new_doc_with_client_id(client);
            let updates = trace.typed_updates(&doc, UPDATES_PER_TRACE);
            // Another client that has the first half deletes some of it.
            let other = new_doc_with_client_id(DELETER);
            for update in &updates[..UPDATES_PER_TRACE / 2] {
                let update = Update::decode_v1(update).expect("a typed update decodes");
                other
                    .transact_mut()
                    .apply_update(update)
                    .expect("a typed update applies");
            }
            let text = other.get_or_insert_text(TEXT_NAME);
            let mut txn = other.transact_mut();
            let len = text.len(&txn);
            text.remove_range(&mut txn, len / 3, (len / 3).min(5));
            deletes.push(Bytes::from(txn.encode_update_v1()));
            typed.push(updates);
        }
        Self { typed, deletes }
    }

    /// The document after the first `n` updates of trace `t`, as one update.
    pub fn prefix_state(&self, t: usize, n: usize) -> Bytes {
        let doc = new_doc_with_client_id(DELETER + 1);
        for update in self.typed[t].iter().take(n) {
            if let Ok(update) = Update::decode_v1(update) {
                let _ = doc.transact_mut().apply_update(update);
            }
        }
        let state = doc.transact().encode_diff_v1(&yrs::StateVector::default());
        Bytes::from(state)
    }
}
