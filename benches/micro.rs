//! criterion micro-benchmarks of the server's unit costs, on seph-blog1:
//! applying updates, encoding a broadcast once, the state-vector diff a
//! reconnecting client is sent, appending to the log with its flush, and
//! compacting a snapshot (encoding a whole document).
//!
//! ```text
//! cargo bench --bench micro                 # all
//! cargo bench --bench micro -- diff         # those whose name contains "diff"
//! ```

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use folio::client::new_doc_with_client_id;
use folio::doc::DocId;
use folio::protocol::{self, server_message::Kind, v1};
use folio::store::{DocStore, LogEntry, SledStore, WriteOp};
use folio::trace::{shared_trace, Trace};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact};

/// Updates applied per iteration of the apply benchmark.
const APPLY_BATCH: usize = 1000;
/// Log entries per flush in the append benchmark (a busy group commit).
const APPEND_BATCH: usize = 64;

/// seph-blog1 typed into a doc: every txn's update, and the final doc.
struct Fixture {
    updates: Vec<Bytes>,
    doc: Doc,
}

fn fixture() -> Fixture {
    let path = shared_trace("sequential/seph-blog1.json.gz");
    let trace = match Trace::load(&path) {
        Ok(trace) => trace,
        Err(e) => panic!("the micro benchmarks need {}: {e}", path.display()),
    };
    let doc = new_doc_with_client_id(1);
    let updates = trace.typed_updates(&doc, trace.txns.len());
    Fixture { updates, doc }
}

fn apply(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(APPLY_BATCH as u64));
    group.bench_function("decode+apply 1000 keystroke updates", |b| {
        b.iter_batched(
            || new_doc_with_client_id(2),
            |doc| {
                for u in &f.updates[..APPLY_BATCH] {
                    let update = yrs::Update::decode_v1(u).expect("valid update");
                    doc.transact_mut().apply_update(update).expect("applies");
                }
                doc
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn broadcast(c: &mut Criterion, f: &Fixture) {
    let update = f.updates[f.updates.len() / 2].clone();
    c.bench_function("encode broadcast once (Update frame)", |b| {
        b.iter(|| {
            protocol::encode(Kind::Update(v1::Update {
                doc: black_box("bench-doc").to_owned(),
                update: update.clone(),
                seq: 123_456,
            }))
        });
    });
}

fn diff(c: &mut Criterion, f: &Fixture) {
    // A client that has the first half of the trace and reconnects.
    let half = new_doc_with_client_id(3);
    for u in &f.updates[..f.updates.len() / 2] {
        let update = yrs::Update::decode_v1(u).expect("valid update");
        half.transact_mut().apply_update(update).expect("applies");
    }
    let half_sv = half.transact().state_vector();
    let sv_bytes = half_sv.encode_v1();
    let mut group = c.benchmark_group("state vector diff");
    group.bench_function("decode sv + encode_diff_v1, client has half", |b| {
        b.iter(|| {
            let sv = StateVector::decode_v1(black_box(&sv_bytes)).expect("valid sv");
            f.doc.transact().encode_diff_v1(&sv)
        });
    });
    group.bench_function("encode_diff_v1, empty client", |b| {
        b.iter(|| f.doc.transact().encode_diff_v1(&StateVector::default()));
    });
    group.finish();
}

fn append(c: &mut Criterion, f: &Fixture) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir.path()).expect("open sled"));
    let doc = DocId::parse("bench-doc").expect("valid id");
    store
        .write(&[WriteOp::Create {
            doc: doc.clone(),
            time_ms: 0,
        }])
        .expect("create");
    let mut seq = 0u64;
    let mut batch = |n: usize| -> Vec<WriteOp> {
        (0..n)
            .map(|i| {
                seq += 1;
                WriteOp::Append {
                    doc: doc.clone(),
                    seq,
                    entry: LogEntry {
                        time_ms: 0,
                        author: "bench".into(),
                        update: f.updates[i % f.updates.len()].clone(),
                        first_seq: 0,
                    },
                    text_len: seq,
                }
            })
            .collect()
    };
    let mut group = c.benchmark_group("log append + flush");
    group.sample_size(20);
    for n in [1, APPEND_BATCH] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{n} entries, one fsync"), |b| {
            b.iter_batched(
                || batch(n),
                |ops| store.write(&ops).expect("write"),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn snapshot(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(20);
    group.bench_function("encode seph-blog1 full state", |b| {
        b.iter(|| {
            f.doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default())
        });
    });
    let state = f
        .doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    group.bench_function("decode+apply seph-blog1 full state (cold load)", |b| {
        b.iter(|| {
            let doc = new_doc_with_client_id(4);
            let update = yrs::Update::decode_v1(black_box(&state)).expect("valid state");
            doc.transact_mut().apply_update(update).expect("applies");
            doc
        });
    });
    group.finish();
}

fn all(c: &mut Criterion) {
    let f = fixture();
    apply(c, &f);
    broadcast(c, &f);
    diff(c, &f);
    append(c, &f);
    snapshot(c, &f);
}

criterion_group!(benches, all);
criterion_main!(benches);
