//! History benchmark: a document with seph-blog1's 137,154 updates written
//! as the server writes it (a log entry per update, with the trace's own
//! timestamps, and a snapshot and version every 5,000 updates), then:
//! - the time to rebuild arbitrary past points (nearest snapshot + log),
//!   before and after compaction, against the in-process decode of the
//!   final state (the floor);
//! - record and on-disk bytes per update before and after compaction with
//!   the default retention policy (all of it is years old: daily);
//! - `folio check` on that data dir, timed as a child process;
//! - and, apart, the cost of an hourly compaction pass over 10,000 idle
//!   documents (20 log entries each, 40 days old, already compact): a pass
//!   that reads every document (the first after a start) against the next
//!   one, which skips them all (`DocRegistry::compact_all`).
//!
//! Run: `cargo bench --bench history` (prints markdown tables and JSON);
//! `cargo bench --bench history -- idle` runs only the idle-documents case,
//! `-- blog` only the seph-blog1 one.

use std::time::{Duration, Instant};

use folio::doc::DocId;
use folio::history::{self, retention};
use folio::store::{
    now_ms, DocStore, LogEntry, SledStore, Snapshot, Version, VersionKind, WriteOp,
};
use folio::trace::{shared_trace, Trace};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Text, Transact};

/// Updates between snapshots, as `folio serve` defaults to.
const SNAPSHOT_EVERY: usize = 5_000;
/// Past points rebuilt per measurement.
const POINTS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn time_rebuilds(store: &SledStore, doc: &DocId, last: u64, seed: u64) -> (f64, f64, f64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut times: Vec<Duration> = (0..POINTS)
        .map(|_| {
            let seq = rng.random_range(0..=last);
            let started = Instant::now();
            let rebuilt = history::rebuild(store, doc, seq).expect("rebuild");
            std::hint::black_box(rebuilt.text());
            started.elapsed()
        })
        .collect();
    times.sort();
    (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
    )
}

fn parse_ms(iso: &str) -> i64 {
    history::parse_time(iso).unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; the first other argument filters.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wants = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if wants("seph-blog1") {
        blog();
    }
    if wants("idle-docs") {
        idle_docs();
    }
}

/// Idle documents in the compaction benchmark.
const IDLE_DOCS: usize = 10_000;
/// Log entries per idle document.
const IDLE_ENTRIES: usize = 20;
/// Passes timed of each kind.
const COLD_PASSES: usize = 3;
const WARM_PASSES: usize = 10;

/// A registry over `store`, as `folio serve` builds one (defaults).
fn registry(store: &std::sync::Arc<dyn DocStore>) -> folio::doc::DocRegistry {
    let (writer, _thread) = folio::store::StoreWriter::start(store.clone(), 8192).expect("writer");
    let settings = folio::doc::ShardSettings {
        snapshot_every_updates: 5_000,
        snapshot_interval: Duration::from_secs(60),
        version_idle: Duration::from_secs(60),
        max_doc_bytes: 0,
    };
    let feeds = folio::feed::FeedHub::new(
        1,
        folio::feed::FeedSettings {
            activity_window: Duration::from_millis(100),
            history_events: 100,
            history_age: Duration::from_secs(60),
        },
    );
    folio::doc::DocRegistry::new(store.clone(), writer, settings, feeds)
}

/// 10,000 idle documents: the time of a compaction pass that reads every
/// one against one that skips them all.
fn idle_docs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let started_ms = now_ms() - 40 * 24 * 3_600_000;
    let started = Instant::now();
    let mut ops = Vec::new();
    for d in 0..IDLE_DOCS {
        let doc = DocId::parse(&format!("idle-{d:05}")).expect("id");
        let ydoc = folio::client::new_doc();
        let text = ydoc.get_or_insert_text(folio::doc::TEXT_NAME);
        ops.push(WriteOp::Create {
            doc: doc.clone(),
            time_ms: started_ms,
        });
        for i in 0..IDLE_ENTRIES {
            let update = {
                let mut txn = ydoc.transact_mut();
                let len = text.len(&txn);
                text.insert(&mut txn, len, "word ");
                txn.encode_update_v1()
            };
            ops.push(WriteOp::Append {
                doc: doc.clone(),
                seq: i as u64 + 1,
                entry: LogEntry {
                    time_ms: started_ms + i as i64 * 60_000,
                    // Alternating authors: nothing to merge, already compact.
                    author: ["ann", "bob"][i % 2].into(),
                    update: update.into(),
                    first_seq: 0,
                },
                text_len: (i as u64 + 1) * 5,
            });
        }
        let last_ms = started_ms + (IDLE_ENTRIES as i64 - 1) * 60_000;
        ops.push(WriteOp::Snapshot {
            doc: doc.clone(),
            seq: IDLE_ENTRIES as u64,
            snapshot: Snapshot {
                time_ms: last_ms,
                state: ydoc
                    .transact()
                    .encode_diff_v1(&StateVector::default())
                    .into(),
            },
            version: Version {
                time_ms: last_ms,
                kind: VersionKind::Auto as i32,
                label: String::new(),
                text_len: IDLE_ENTRIES as u64 * 5,
                authors: vec!["ann".into(), "bob".into()],
            },
        });
        if ops.len() >= 8192 {
            store.write(&ops).expect("write");
            ops.clear();
        }
    }
    store.write(&ops).expect("write");
    let write_s = started.elapsed().as_secs_f64();
    let store: std::sync::Arc<dyn DocStore> = std::sync::Arc::new(store);
    let policy = retention::RetentionPolicy::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (cold, warm) = runtime.block_on(async {
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..COLD_PASSES {
            // A fresh registry knows no pass: it reads every document.
            let registry = registry(&store);
            let started = Instant::now();
            let counts = registry.compact_all(policy).await.expect("pass");
            cold.push(started.elapsed());
            assert_eq!((counts.compacted, counts.skipped), (IDLE_DOCS, 0));
            if warm.is_empty() {
                for _ in 0..WARM_PASSES {
                    let started = Instant::now();
                    let counts = registry.compact_all(policy).await.expect("pass");
                    warm.push(started.elapsed());
                    assert_eq!((counts.compacted, counts.skipped), (0, IDLE_DOCS));
                }
            }
        }
        cold.sort();
        warm.sort();
        (cold, warm)
    });
    let (cold_ms, warm_ms) = (percentile(&cold, 0.5), percentile(&warm, 0.5));
    println!("| measure ({IDLE_DOCS} idle documents, {IDLE_ENTRIES} log entries each) | value |");
    println!("| --- | --- |");
    println!("| write them | {write_s:.2} s |");
    println!("| compaction pass that reads every document (first after a start), median of {COLD_PASSES} | {cold_ms:.0} ms |");
    println!("| compaction pass that skips them all (the next one), median of {WARM_PASSES} | {warm_ms:.1} ms |");
    println!(
        "{}",
        serde_json::json!({
            "idle_docs": IDLE_DOCS,
            "entries_per_doc": IDLE_ENTRIES,
            "pass_reading_all_ms": cold_ms,
            "pass_skipping_all_ms": warm_ms,
        })
    );
}

/// seph-blog1: rebuilds, bytes per update, compaction and `folio check`.
fn blog() {
    let trace = Trace::load(shared_trace("sequential/seph-blog1.json.gz")).expect("trace");
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = DocId::parse("seph-blog1").expect("id");
    let ydoc = folio::client::new_doc();
    let updates = trace.typed_updates(&ydoc, trace.txns.len());
    let store = SledStore::open(dir.path()).expect("open");
    let started = Instant::now();
    // Replay the typing into a second doc to take snapshots along the way.
    let replica = folio::client::new_doc();
    let replica_text = replica.get_or_insert_text(folio::doc::TEXT_NAME);
    let mut ops = vec![WriteOp::Create {
        doc: doc.clone(),
        time_ms: parse_ms(&trace.txns[0].time),
    }];
    let mut seq = 0u64;
    for (txn, update) in trace.txns.iter().zip(&updates) {
        if !folio::client::update_has_content(update) {
            continue;
        }
        seq += 1;
        let time_ms = parse_ms(&txn.time);
        replica
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(update).expect("decode"))
            .expect("apply");
        let text_len = u64::from(replica_text.len(&replica.transact()));
        ops.push(WriteOp::Append {
            doc: doc.clone(),
            seq,
            entry: LogEntry {
                time_ms,
                author: "seph".into(),
                update: update.clone(),
                first_seq: 0,
            },
            text_len,
        });
        if seq as usize % SNAPSHOT_EVERY == 0 {
            ops.push(WriteOp::Snapshot {
                doc: doc.clone(),
                seq,
                snapshot: Snapshot {
                    time_ms,
                    state: replica
                        .transact()
                        .encode_diff_v1(&StateVector::default())
                        .into(),
                },
                version: Version {
                    time_ms,
                    kind: VersionKind::Auto as i32,
                    label: String::new(),
                    text_len,
                    authors: vec!["seph".into()],
                },
            });
        }
        if ops.len() >= 8192 {
            store.write(&ops).expect("write");
            ops.clear();
        }
    }
    store.write(&ops).expect("write");
    let last = seq;
    let write_time = started.elapsed();

    // The floor: decoding the final state in process.
    let final_state = replica.transact().encode_diff_v1(&StateVector::default());
    let mut decodes: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            let d = folio::client::new_doc();
            d.transact_mut()
                .apply_update(yrs::Update::decode_v1(&final_state).expect("decode"))
                .expect("apply");
            started.elapsed()
        })
        .collect();
    decodes.sort();
    let decode_ms = percentile(&decodes, 0.5);

    let before_size = store.doc_size(&doc).expect("size");
    let before_disk = store.size_on_disk().expect("disk");
    let (b50, b99, bmax) = time_rebuilds(&store, &doc, last, 1);

    let compact_started = Instant::now();
    let (plan_ops, stats) = retention::plan(
        &store,
        &doc,
        &retention::RetentionPolicy::default(),
        now_ms(),
    )
    .expect("plan");
    store.write(&plan_ops).expect("compact");
    let compact_time = compact_started.elapsed();
    let after_size = store.doc_size(&doc).expect("size");
    let (a50, a99, amax) = time_rebuilds(&store, &doc, last, 2);
    drop(store);
    // sled reclaims space lazily; reopening shows what a restarted server holds.
    let after_disk = SledStore::open(dir.path())
        .and_then(|s| s.size_on_disk())
        .expect("reopen");

    let check_started = Instant::now();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_folio"))
        .args(["check", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run folio check");
    let check_time = check_started.elapsed();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let per = |bytes: u64| bytes as f64 / last as f64;
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| updates | {last} |");
    println!(
        "| write the log (batches of 8,192) | {:.2} s |",
        write_time.as_secs_f64()
    );
    println!("| in-process decode of the final state (floor) | {decode_ms:.2} ms |");
    println!("| rebuild a random point, before compaction: p50 / p99 / max | {b50:.2} / {b99:.2} / {bmax:.2} ms |");
    println!("| rebuild a random point, after compaction: p50 / p99 / max | {a50:.2} / {a99:.2} / {amax:.2} ms |");
    println!(
        "| record bytes per update, before / after compaction | {:.1} / {:.1} |",
        per(before_size.log_bytes + before_size.snapshot_bytes),
        per(after_size.log_bytes + after_size.snapshot_bytes)
    );
    println!(
        "| sled on-disk bytes per update, before / after (reopened) | {:.1} / {:.1} |",
        per(before_disk),
        per(after_disk)
    );
    println!(
        "| log entries before / after | {} / {} |",
        stats.log_entries_before, stats.log_entries_after
    );
    println!(
        "| versions kept / removed (their snapshots kept to bound gaps) | {} / {} ({}) |",
        stats.versions_kept, stats.versions_removed, stats.snapshots_kept
    );
    println!("| compaction time | {:.2} s |", compact_time.as_secs_f64());
    println!(
        "| `folio check` (child process) | {:.2} s |",
        check_time.as_secs_f64()
    );
    let json = serde_json::json!({
        "updates": last,
        "decode_final_ms": decode_ms,
        "rebuild_before_ms": { "p50": b50, "p99": b99, "max": bmax },
        "rebuild_after_ms": { "p50": a50, "p99": a99, "max": amax },
        "record_bytes_per_update": { "before": per(before_size.log_bytes + before_size.snapshot_bytes), "after": per(after_size.log_bytes + after_size.snapshot_bytes) },
        "disk_bytes_per_update": { "before": per(before_disk), "after": per(after_disk) },
        "compaction": stats,
        "compaction_s": compact_time.as_secs_f64(),
        "check_s": check_time.as_secs_f64(),
    });
    println!("{json}");
}
