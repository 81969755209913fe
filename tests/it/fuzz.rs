//! Property tests of hostile frames against the real server (issue 5's
//! bounded fuzzing in CI; the long runs are the cargo-fuzz targets in
//! `fuzz/`). Each case sends one random frame over a real WebSocket: random
//! bytes, or a real Yjs update from a trace with random edits, in every
//! message that carries one. Whatever the frame, the sender gets an `Error`
//! with a code a client's mistake can earn, a close with a code for bad
//! input, or its update is acknowledged; a refused frame changes neither the
//! document's text nor its log; and another editor of the document is
//! never disturbed and ends with the server's text.
//!
//! Cases per test: `PROPTEST_CASES` (default [`CASES`]); the run is seeded
//! by `TEST_SEED`, printed, so a failure replays.

use std::sync::Arc;

use bytes::Bytes;
use folio::client::{ClientError, Connection, Editor};
use folio::protocol::{client_message, server_message, v1, ClientMessage, ErrorCode};
use folio::trace::{shared_trace, Trace};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use crate::http_api::doc_info;
use crate::support::{seed, TestServer, PATIENCE};

/// Cases per test unless `PROPTEST_CASES` says otherwise: a few seconds
/// each in a debug build.
const CASES: u32 = 128;

/// Real keystroke updates typed into the test document (client 41).
const TYPED: usize = 24;

/// Error codes that mean the server failed, which no client input may cause.
const SERVER_FAULTS: [ErrorCode; 6] = [
    ErrorCode::Unspecified,
    ErrorCode::Internal,
    ErrorCode::StorageFailure,
    ErrorCode::DocReloaded,
    ErrorCode::SlowConsumer,
    ErrorCode::ShuttingDown,
];

/// An edit of an update's bytes; positions are taken modulo the length.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize, usize),
    Truncate(usize),
    /// Puts a lib0 varint with this value at this position in place of the
    /// byte there.
    Varint(usize, u64),
}

/// What one frame carries.
#[derive(Debug, Clone)]
enum Payload {
    /// These bytes.
    Raw(Vec<u8>),
    /// Typed update `index` of the trace, with `edits`.
    Mutated { index: usize, edits: Vec<Edit> },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<usize>(), 1..8usize).prop_map(|(at, n)| Edit::Remove(at, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                Just(0u64),
                Just(u64::from(u32::MAX)),
                Just(u64::MAX),
                any::<u64>()
            ]
        )
            .prop_map(|(at, v)| Edit::Varint(at, v)),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Raw),
        3 => (0..TYPED * 2, proptest::collection::vec(edit(), 0..4))
            .prop_map(|(index, edits)| Payload::Mutated { index, edits }),
    ]
}

impl Payload {
    /// The bytes, from `typed` (real updates, some not yet applied).
    fn bytes(&self, typed: &[Bytes]) -> Vec<u8> {
        let (index, edits) = match self {
            Self::Raw(bytes) => return bytes.clone(),
            Self::Mutated { index, edits } => (index, edits),
        };
        let mut bytes = typed[index % typed.len()].to_vec();
        for edit in edits {
            if bytes.is_empty() {
                break;
            }
            let at = |i: &usize| i % bytes.len();
            match edit {
                Edit::Flip(i, bit) => {
                    let i = at(i);
                    bytes[i] ^= 1 << bit;
                }
                Edit::Insert(i, b) => bytes.insert(at(i), *b),
                Edit::Remove(i, n) => {
                    let i = at(i);
                    let end = (i + n).min(bytes.len());
                    bytes.drain(i..end);
                }
                Edit::Truncate(i) => bytes.truncate(at(i)),
                Edit::Varint(i, v) => {
                    let i = at(i);
                    bytes.splice(i..=i, varint(*v));
                }
            }
        }
        bytes
    }
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// One frame on `/ws`: an `Update`, `Awareness` or `Subscribe` carrying the
/// payload, or the payload as the whole frame.
#[derive(Debug, Clone)]
enum FolioFrame {
    Whole(Payload),
    Update(Payload),
    Awareness(Payload),
    Subscribe(Payload),
}

fn folio_frame() -> impl Strategy<Value = FolioFrame> {
    prop_oneof![
        1 => payload().prop_map(FolioFrame::Whole),
        6 => payload().prop_map(FolioFrame::Update),
        1 => payload().prop_map(FolioFrame::Awareness),
        1 => payload().prop_map(FolioFrame::Subscribe),
    ]
}

/// Real updates: the first `2 * TYPED` keystrokes of a trace by client 41.
fn typed_updates() -> Arc<Vec<Bytes>> {
    let trace = Trace::load(shared_trace("sequential/sveltecomponent.json.gz")).expect("trace");
    let doc = folio::client::new_doc_with_client_id(41);
    Arc::new(trace.typed_updates(&doc, TYPED * 2))
}

/// A runner with `CASES` cases (or `PROPTEST_CASES`), seeded by `TEST_SEED`.
fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed().to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

/// The document's text and seq, from the server.
async fn doc_state(server: &TestServer, doc: &str) -> (String, u64) {
    let info = doc_info(server, doc).await.expect("the document is listed");
    let seq = info["last_seq"].as_u64().expect("last_seq");
    (server.text(doc).await, seq)
}

/// A document typed by `alice` from the first `TYPED` updates; she stays
/// subscribed for the whole test and must never notice the fuzzing.
async fn typed_doc(server: &TestServer, doc: &str, typed: &[Bytes]) -> Editor {
    let mut alice = Editor::join(&server.ws_url(), doc, "alice")
        .await
        .expect("alice joins");
    for update in &typed[..TYPED] {
        alice.apply_remote(update).expect("typed update");
        alice.send_update(update.clone()).await.expect("send");
    }
    alice.wait_acked().await.expect("acked");
    alice
}

/// `alice` still works and ends with the server's text.
async fn assert_undisturbed(server: &TestServer, alice: &mut Editor, doc: &str) {
    let want = server.text(doc).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while alice.text() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never got the server's text"
        );
        alice
            .drain(std::time::Duration::from_millis(20))
            .await
            .expect("alice is still connected");
    }
    let edit = alice.edit(&[(0, 0, "+")]);
    alice.send_update(edit).await.expect("alice can still edit");
    alice
        .wait_acked()
        .await
        .expect("alice's edit is acknowledged");
}

/// How the server answered one fuzzed frame on `/ws`.
#[derive(Debug, PartialEq)]
enum Outcome {
    Refused(ErrorCode),
    Closed(u16),
    Acked,
    Nothing,
}

/// Sends `frame`, then a `Ping`, and reads until the `Pong` or a close.
async fn exchange(conn: &mut Connection, frame: Vec<u8>) -> Result<Outcome, TestCaseError> {
    conn.send_raw(Message::Binary(frame.into()))
        .await
        .map_err(|e| TestCaseError::fail(format!("send: {e}")))?;
    if let Err(e) = conn
        .send(client_message::Kind::Ping(v1::Ping { nonce: 9 }))
        .await
    {
        // The server may have closed already; the read below tells.
        let _ = e;
    }
    let mut outcome = Outcome::Nothing;
    loop {
        match conn.recv().await {
            Ok(server_message::Kind::Pong(_)) => return Ok(outcome),
            Ok(server_message::Kind::Error(e)) => {
                prop_assert!(
                    !SERVER_FAULTS.contains(&e.code()),
                    "server fault {:?}: {}",
                    e.code(),
                    e.message
                );
                outcome = Outcome::Refused(e.code());
            }
            Ok(server_message::Kind::Ack(_)) => outcome = Outcome::Acked,
            Ok(_) => {}
            Err(ClientError::Closed { code, reason }) => {
                prop_assert!(
                    [1002, 1007, 1008, 1009].contains(&code),
                    "closed with {code} ({reason})"
                );
                return Ok(Outcome::Closed(code));
            }
            Err(e) => return Err(TestCaseError::fail(format!("no error and no close: {e}"))),
        }
    }
}

#[test]
fn random_frames_on_ws_are_refused_cleanly_and_change_nothing() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let typed = typed_updates();
    let server = rt.block_on(TestServer::start(dir.path()));
    let doc = "fuzzed";
    let mut alice = rt.block_on(typed_doc(&server, doc, &typed));
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    runner()
        .run(&folio_frame(), |frame| {
            rt.block_on(async {
                let mut conn = Connection::connect(&server.ws_url(), "fuzzer")
                    .await
                    .expect("connect");
                conn.send(client_message::Kind::Subscribe(v1::Subscribe {
                    doc: doc.into(),
                    state_vector: Bytes::new(),
                    ..Default::default()
                }))
                .await
                .expect("subscribe");
                let synced = conn.recv().await;
                prop_assert!(
                    matches!(synced, Ok(server_message::Kind::Synced(_))),
                    "{synced:?}"
                );
                let kind = |p: &Payload| Bytes::from(p.bytes(&typed));
                let bytes = match &frame {
                    FolioFrame::Whole(p) => p.bytes(&typed),
                    FolioFrame::Update(p) => encode(client_message::Kind::Update(v1::Update {
                        doc: doc.into(),
                        update: kind(p),
                        seq: 1,
                    })),
                    FolioFrame::Awareness(p) => {
                        encode(client_message::Kind::Awareness(v1::Awareness {
                            doc: doc.into(),
                            update: kind(p),
                        }))
                    }
                    FolioFrame::Subscribe(p) => {
                        encode(client_message::Kind::Subscribe(v1::Subscribe {
                            doc: "fuzzed-2".into(),
                            state_vector: kind(p),
                            ..Default::default()
                        }))
                    }
                };
                let before = doc_state(&server, doc).await;
                let outcome = exchange(&mut conn, bytes).await?;
                *outcomes
                    .borrow_mut()
                    .entry(format!("{outcome:?}"))
                    .or_default() += 1;
                if matches!(outcome, Outcome::Refused(_) | Outcome::Closed(_)) {
                    prop_assert_eq!(doc_state(&server, doc).await, before);
                }
                conn.close().await;
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("outcomes: {:?}", outcomes.borrow());
    rt.block_on(async {
        assert_undisturbed(&server, &mut alice, doc).await;
        server.stop().await;
    });
}

fn encode(kind: client_message::Kind) -> Vec<u8> {
    ClientMessage { kind: Some(kind) }.encode_to_vec()
}

/// One frame on `/yjs/{doc}`: a y-protocols message carrying the payload,
/// or the payload as the whole frame.
#[derive(Debug, Clone)]
enum YFrame {
    Whole(Payload),
    Step1(Payload),
    Step2(Payload),
    Update(Payload),
    Awareness(Payload),
}

fn y_frame() -> impl Strategy<Value = YFrame> {
    prop_oneof![
        1 => payload().prop_map(YFrame::Whole),
        1 => payload().prop_map(YFrame::Step1),
        2 => payload().prop_map(YFrame::Step2),
        4 => payload().prop_map(YFrame::Update),
        1 => payload().prop_map(YFrame::Awareness),
    ]
}

#[test]
fn random_frames_on_yjs_close_with_a_code_and_change_nothing() {
    use folio::protocol::ysync;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let typed = typed_updates();
    let server = rt.block_on(TestServer::start(dir.path()));
    let doc = "yfuzzed";
    let mut alice = rt.block_on(typed_doc(&server, doc, &typed));
    let url = format!("ws://{}/yjs/{doc}", server.addr);
    let closes = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u32>::new());
    runner()
        .run(&y_frame(), |frame| {
            rt.block_on(async {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                    .await
                    .expect("connect");
                let bytes = match &frame {
                    YFrame::Whole(p) => p.bytes(&typed),
                    YFrame::Step1(p) => ysync::step1(&p.bytes(&typed)).to_vec(),
                    YFrame::Step2(p) => ysync::step2(&p.bytes(&typed)).to_vec(),
                    YFrame::Update(p) => ysync::update(&p.bytes(&typed)).to_vec(),
                    YFrame::Awareness(p) => ysync::awareness(&p.bytes(&typed)).to_vec(),
                };
                let before = doc_state(&server, doc).await;
                // The frame, then an awareness query: its answer (an
                // awareness message) shows the frame was taken.
                ws.send(Message::Binary(bytes.into())).await.expect("send");
                let _ = ws.send(Message::Binary(vec![3u8].into())).await;
                let closed = loop {
                    let next = tokio::time::timeout(folio::client::RECV_TIMEOUT, ws.next())
                        .await
                        .map_err(|_| TestCaseError::fail("no answer and no close"))?;
                    match next {
                        Some(Ok(Message::Binary(f))) if f.first() == Some(&1) => break None,
                        Some(Ok(Message::Close(f))) => {
                            break Some(f.map_or(1005, |f| u16::from(f.code)))
                        }
                        Some(Ok(_)) => {}
                        other => {
                            return Err(TestCaseError::fail(format!(
                                "no answer and no close: {other:?}"
                            )))
                        }
                    }
                };
                if let Some(code) = closed {
                    *closes.borrow_mut().entry(code).or_default() += 1;
                    prop_assert!([1007, 1009].contains(&code), "closed with {code}");
                    prop_assert_eq!(doc_state(&server, doc).await, before);
                } else {
                    *closes.borrow_mut().entry(0).or_default() += 1;
                    let _ = ws.close(None).await;
                }
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("close codes (0: still open): {:?}", closes.borrow());
    rt.block_on(async {
        assert_undisturbed(&server, &mut alice, doc).await;
        server.stop().await;
    });
}
