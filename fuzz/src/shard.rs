//! The shard harness: Yjs updates through [`DocShard::apply_update`] on a
//! real sled store, then the checks every input must pass:
//! - a refused update changes nothing and leaves the shard open;
//! - an accepted one is acknowledged as durable, with the next `doc_seq`
//!   (or the same one, for a resend that adds nothing, which must not change
//!   the text);
//! - afterwards a client that syncs from the shard's state has its text, and
//!   a valid edit of that client applies and shows up in the shard's text;
//! - the document loaded back from the store has the same text.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Unstructured;
use bytes::Bytes;
use folio::client::new_doc_with_client_id;
use folio::doc::{DocId, DocShard, ShardSettings, TEXT_NAME};
use folio::feed::{FeedHub, FeedSettings};
use folio::store::{DocStore, SledStore, StoreWriter, WriteOp};
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact, Update};

use crate::seeds::Pool;

/// Most fuzzed updates one input applies.
pub const MAX_UPDATES: usize = 8;

/// The client id of the checking edit: far from the trace clients, and
/// under 2^53 like every client id Yjs makes.
const CHECK_CLIENT: u64 = (1 << 52) + 7;

/// A store, its writer and the traces, made once per process.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn DocStore>,
    writer: StoreWriter,
    feeds: FeedHub,
    settings: ShardSettings,
    id: DocId,
    /// Real updates to build documents from.
    pub pool: Pool,
    _dir: tempfile::TempDir,
}

/// The process's harness.
///
/// # Panics
/// If the store cannot be opened or the traces are missing.
pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        crate::panics::install();
        let dir = crate::temp_dir();
        let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open sled"));
        let (writer, _thread) = StoreWriter::start(store.clone(), 1024).expect("writer");
        let feeds = FeedHub::new(
            1,
            FeedSettings {
                activity_window: Duration::from_millis(250),
                history_events: 16,
                history_age: Duration::from_secs(1),
            },
        );
        Harness {
            rt: crate::runtime(),
            store,
            writer,
            feeds,
            // A snapshot every few updates, so reloads start from one.
            settings: ShardSettings {
                snapshot_every_updates: 3,
                snapshot_interval: Duration::from_secs(3600),
                version_idle: Duration::from_secs(3600),
                // The server's default (16 MiB): out of the inputs' reach.
                max_doc_bytes: folio::config::LimitArgs::default().max_doc_bytes,
            },
            id: DocId::parse("fuzz").expect("a valid doc id"),
            pool: Pool::load(),
            _dir: dir,
        }
    })
}

/// The `shard_update` input: a base byte (which trace the document is
/// typed from), a length byte (how many of its updates), then frames
/// ([`crate::frames`]), each one update as raw bytes.
pub fn run_raw(data: &[u8]) {
    let h = harness();
    let [base, len, rest @ ..] = data else {
        return;
    };
    let updates: Vec<Bytes> = crate::frames::split(rest)
        .into_iter()
        .take(MAX_UPDATES)
        .map(Bytes::copy_from_slice)
        .collect();
    h.run(usize::from(*base), usize::from(*len), &updates);
}

/// The `shard_mutate` input: choices for [`crate::mutate::update`].
pub fn run_structured(data: &[u8]) {
    if let Some((base, len, updates)) = plan(data) {
        harness().run(base, len, &updates);
    }
}

/// What a `shard_mutate` input does: the base trace, how many of its
/// updates, then the mutated updates; `None` if the input runs out first.
pub fn plan(data: &[u8]) -> Option<(usize, usize, Vec<Bytes>)> {
    let pool = &harness().pool;
    let mut u = Unstructured::new(data);
    let mut plan = || -> arbitrary::Result<(usize, usize, Vec<Bytes>)> {
        let base = u.choose_index(pool.typed.len())?;
        let len = u.int_in_range(0..=pool.typed[base].len())?;
        let mut updates = Vec::new();
        for _ in 0..u.int_in_range(1..=4u8)? {
            updates.push(crate::mutate::update(&mut u, pool, len)?);
        }
        Ok((base, len, updates))
    };
    plan().ok()
}

impl Harness {
    /// Types the first `len` updates of trace `base` into a fresh document,
    /// applies `updates` with the checks, then checks the shard still
    /// works and reloads the same, and deletes the document.
    pub fn run(&self, base: usize, len: usize, updates: &[Bytes]) {
        let typed = &self.pool.typed[base % self.pool.typed.len()];
        let prefix = &typed[..len.min(typed.len())];
        self.rt.block_on(async {
            let shard = self.load();
            // Not waited for one by one: the reload check waits for all.
            for update in prefix {
                shard
                    .apply_update(update.clone(), "base", None)
                    .await
                    .expect("a typed update applies");
            }
            for update in updates {
                self.check_update(&shard, update.clone()).await;
            }
            check_still_works(&shard).await;
            self.check_reload(&shard).await;
            self.delete().await;
        });
    }

    fn load(&self) -> DocShard {
        DocShard::load(
            self.id.clone(),
            None,
            self.writer.clone(),
            self.settings,
            self.feeds.feed(&self.id, || 0),
        )
        .expect("a new document loads")
    }

    async fn check_update(&self, shard: &DocShard, update: Bytes) {
        let before = (shard.text(), shard.info().last_seq);
        match shard.apply_update(update, "fuzz", None).await {
            Ok(applied) => {
                let seq = applied.doc_seq;
                durable(applied.durable).await;
                assert!(
                    seq == before.1 + 1 || seq == before.1,
                    "doc_seq {seq} after {}",
                    before.1
                );
                if seq == before.1 {
                    assert_eq!(shard.text(), before.0, "a resend changed the text");
                }
            }
            Err(e) => {
                assert!(!shard.is_closed(), "a refused update closed the shard: {e}");
                let after = (shard.text(), shard.info().last_seq);
                assert_eq!(after, before, "a refused update changed the document: {e}");
            }
        }
    }

    async fn check_reload(&self, shard: &DocShard) {
        self.writer.barrier().await.expect("everything durable");
        let stored = self.store.load(&self.id).expect("the store loads the doc");
        let again = DocShard::load(
            self.id.clone(),
            stored,
            self.writer.clone(),
            self.settings,
            self.feeds.feed(&self.id, || 0),
        )
        .expect("the stored document loads");
        assert_eq!(again.text(), shard.text(), "the reloaded text differs");
    }

    async fn delete(&self) {
        let permit = self.writer.reserve().await.expect("writer running");
        durable(permit.send(WriteOp::Delete {
            doc: self.id.clone(),
            by: "fuzz".to_owned(),
            time_ms: 0,
        }))
        .await;
        // The next input starts from nothing, not from a tombstone.
        let permit = self.writer.reserve().await.expect("writer running");
        durable(permit.send(WriteOp::Revive {
            doc: self.id.clone(),
        }))
        .await;
    }
}

/// A client that syncs from the shard's whole state has the shard's text,
/// and its edit applies and shows up.
async fn check_still_works(shard: &DocShard) {
    let client = new_doc_with_client_id(CHECK_CLIENT);
    let text = client.get_or_insert_text(TEXT_NAME);
    let state = Update::decode_v1(&shard.full_state()).expect("the shard's state decodes");
    client
        .transact_mut()
        .apply_update(state)
        .expect("the shard's state applies");
    assert_eq!(
        text.get_string(&client.transact()),
        shard.text(),
        "a client synced from the shard has another text"
    );
    let edit = {
        let mut txn = client.transact_mut();
        text.insert(&mut txn, 0, "[ok]");
        Bytes::from(txn.encode_update_v1())
    };
    let applied = shard
        .apply_update(edit, "check", None)
        .await
        .expect("a valid update applies after the input");
    durable(applied.durable).await;
    assert_eq!(shard.text(), text.get_string(&client.transact()));
}

async fn durable(d: folio::store::Durable) {
    d.await
        .expect("the writer answered")
        .expect("the write is durable");
}
