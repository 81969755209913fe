//! Writes the seed corpora of the fuzz targets from the editing traces:
//! real Folio and y-websocket sessions and real typed updates, a few dozen
//! small files in all. `cargo run --manifest-path fuzz/Cargo.toml --example
//! seed-corpus [DIR]` (default `fuzz/corpus`); the fuzzers grow them.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use folio::protocol::{client_message::Kind, v1, ysync, ClientMessage, PROTOCOL_VERSION};
use folio_fuzz::frames::join;
use folio_fuzz::seeds::Pool;
use folio_fuzz::session::DOC;
use prost::Message as _;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::protocol::MSG_QUERY_AWARENESS;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact, Update};

fn main() {
    let root = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"),
        PathBuf::from,
    );
    let pool = Pool::load();
    let mut total = 0;
    total += write(&root.join("session"), &folio_sessions(&pool));
    total += write(&root.join("ysession"), &ysync_sessions(&pool));
    total += write(&root.join("shard_update"), &shard_inputs(&pool));
    total += write(&root.join("shard_mutate"), &noise());
    println!("wrote {total} seed files under {}", root.display());
}

/// Longest seed written: the fuzzers run with `-max_len=8192`, and one
/// trace starts with a paste of 40 KiB.
const MAX_SEED_BYTES: usize = 8192;

fn write(dir: &Path, inputs: &[Vec<u8>]) -> usize {
    std::fs::create_dir_all(dir).expect("create the corpus dir");
    let mut written = 0;
    for input in inputs.iter().filter(|i| i.len() <= MAX_SEED_BYTES) {
        let path = dir.join(format!("seed-{written:02}"));
        std::fs::write(path, input).expect("write a seed");
        written += 1;
    }
    written
}

fn frame(kind: Kind) -> Vec<u8> {
    ClientMessage { kind: Some(kind) }.encode_to_vec()
}

fn hello(version: u32) -> Vec<u8> {
    frame(Kind::Hello(v1::Hello {
        protocol_version: version,
        client_name: "seed".into(),
        token: String::new(),
    }))
}

fn subscribe(doc: &str, state_vector: Bytes) -> Vec<u8> {
    frame(Kind::Subscribe(v1::Subscribe {
        doc: doc.into(),
        state_vector,
        token: String::new(),
    }))
}

fn update(doc: &str, update: Bytes, seq: u64) -> Vec<u8> {
    frame(Kind::Update(v1::Update {
        doc: doc.into(),
        update,
        seq,
    }))
}

/// A presence such as the web client sends.
fn presence(client: u64) -> Bytes {
    let entry = AwarenessUpdateEntry {
        clock: 1,
        json: r##"{"user":{"name":"seed","color":"#f80"},"cursor":{"anchor":2,"head":3}}"##.into(),
    };
    let update = AwarenessUpdate {
        clients: [(yrs::ClientID::new(client), entry)].into(),
    };
    Bytes::from(update.encode_v1())
}

/// The state vector of a document made of the first `n` updates of trace `t`.
fn state_vector(pool: &Pool, t: usize, n: usize) -> Bytes {
    let doc = yrs::Doc::new();
    let state = Update::decode_v1(&pool.prefix_state(t, n)).expect("a state decodes");
    doc.transact_mut()
        .apply_update(state)
        .expect("a state applies");
    let sv = doc.transact().state_vector().encode_v1();
    Bytes::from(sv)
}

fn folio_sessions(pool: &Pool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Each trace typed a few keystrokes, with presence, a ping and a goodbye.
    for (t, typed) in pool.typed.iter().enumerate() {
        let mut frames = vec![hello(PROTOCOL_VERSION), subscribe(DOC, Bytes::new())];
        for (i, u) in typed.iter().take(6).enumerate() {
            frames.push(update(DOC, u.clone(), i as u64 + 1));
        }
        frames.push(frame(Kind::Awareness(v1::Awareness {
            doc: DOC.into(),
            update: presence(t as u64 + 1),
        })));
        frames.push(frame(Kind::Ping(v1::Ping { nonce: 7 })));
        frames.push(frame(Kind::Unsubscribe(v1::Unsubscribe {
            doc: DOC.into(),
        })));
        out.push(join(&frames));
    }
    // A reconnect: subscribe with a state vector, then a merged catch-up
    // update and another client's deletion.
    let merged = yrs::merge_updates_v1(pool.typed[0][..20].iter().map(|u| &u[..]))
        .expect("typed updates merge");
    out.push(join(&[
        hello(PROTOCOL_VERSION),
        subscribe(DOC, state_vector(pool, 0, 10)),
        update(DOC, Bytes::from(merged), 1),
        update(DOC, pool.deletes[0].clone(), 2),
        update(DOC, pool.typed[0][20].clone(), 3),
    ]));
    // Two documents, updates out of order, a resend.
    out.push(join(&[
        hello(PROTOCOL_VERSION),
        subscribe(DOC, Bytes::new()),
        subscribe("notes/a", Bytes::new()),
        update("notes/a", pool.typed[1][0].clone(), 1),
        update(DOC, pool.typed[2][1].clone(), 2),
        update(DOC, pool.typed[2][0].clone(), 3),
        update(DOC, pool.typed[2][0].clone(), 4),
        update(DOC, pool.typed[2][1].clone(), 5),
    ]));
    // Mistakes: no Hello, a wrong version, an update before subscribing.
    out.push(join(&[subscribe(DOC, Bytes::new())]));
    out.push(join(&[hello(PROTOCOL_VERSION + 1)]));
    out.push(join(&[
        hello(PROTOCOL_VERSION),
        update(DOC, pool.typed[0][0].clone(), 1),
        subscribe("", Bytes::new()),
        subscribe(DOC, Bytes::from_static(b"\xff\xff")),
    ]));
    out
}

fn ysync_sessions(pool: &Pool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // What the y-websocket provider sends: step 1, presence, step 2, typing.
    for (t, typed) in pool.typed.iter().enumerate() {
        let mut frames = vec![
            ysync::step1(&[0]).to_vec(),
            ysync::awareness(&presence(t as u64 + 1)).to_vec(),
            ysync::step2(&[0, 0]).to_vec(),
        ];
        for u in typed.iter().take(6) {
            frames.push(ysync::update(u).to_vec());
        }
        frames.push(vec![MSG_QUERY_AWARENESS]);
        out.push(join(&frames));
    }
    // A reconnect: step 1 with a state vector, a step 2 with what it has, a
    // deletion, and several messages in one frame.
    let mut batch = ysync::update(&pool.typed[1][0]).to_vec();
    batch.extend_from_slice(&ysync::step1(&state_vector(pool, 1, 1)));
    batch.extend_from_slice(&ysync::update(&pool.typed[1][1]));
    batch.push(MSG_QUERY_AWARENESS);
    out.push(join(&[
        ysync::step1(&state_vector(pool, 0, 10)).to_vec(),
        ysync::step2(&pool.prefix_state(0, 24)).to_vec(),
        ysync::update(&pool.deletes[0]).to_vec(),
        batch,
    ]));
    // Updates before step 1, out of order.
    out.push(join(&[
        ysync::update(&pool.typed[3][1]).to_vec(),
        ysync::update(&pool.typed[3][0]).to_vec(),
        ysync::step2(&pool.prefix_state(3, 2)).to_vec(),
    ]));
    out
}

fn shard_inputs(pool: &Pool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let byte = |n: usize| u8::try_from(n).expect("small");
    for t in 0..pool.typed.len() {
        let other = (t + 1) % pool.typed.len();
        // The next keystrokes, as sent.
        let mut input = vec![byte(t), 8];
        input.extend(join(&pool.typed[t][8..12]));
        out.push(input);
        // Another client's text, concurrent with this one.
        let mut input = vec![byte(t), 16];
        input.extend(join(&pool.typed[other][..3]));
        out.push(input);
        // A deletion of text the document has, and one of text it lacks.
        let mut input = vec![byte(t), 30];
        input.extend(join(&[
            pool.deletes[t].clone(),
            pool.deletes[other].clone(),
        ]));
        out.push(input);
        // Out of order and resent.
        let mut input = vec![byte(t), 2];
        let u = &pool.typed[t];
        input.extend(join(&[
            u[3].clone(),
            u[2].clone(),
            u[2].clone(),
            u[1].clone(),
        ]));
        out.push(input);
        // A merged catch-up from scratch.
        let merged =
            yrs::merge_updates_v1(u[..16].iter().map(|u| &u[..])).expect("typed updates merge");
        let mut input = vec![byte(t), 0];
        input.extend(join(&[merged]));
        out.push(input);
    }
    out
}

/// A few deterministic pseudo-random inputs: every input is a valid plan for
/// `shard_mutate`, so these only give it different starting points.
fn noise() -> Vec<Vec<u8>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..8)
        .map(|_| {
            (0..96)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect()
        })
        .collect()
}
