//! `/yjs/{doc}`: the y-websocket endpoint, driven by a y-protocols client
//! built on tokio-tungstenite and yrs that behaves like the `y-websocket`
//! provider (step 1 on open, step 2 in answer to the server's step 1,
//! updates as it types), next to Folio-protocol editors on `/ws`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use folio::client::{new_doc, Editor, Event, WsStream};
use folio::protocol::ysync;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, GetString, ReadTxn, Text, TextRef, Transact, Update};

use crate::support::{eventually, ChildServer, TestServer, PATIENCE};
use crate::sync::{converge, presence};

/// How long `YClient::settle` waits for silence.
const QUIET: Duration = Duration::from_millis(50);

/// Bytes that decode as no y-protocols message (an unterminated varint).
const GARBAGE: &[u8] = b"\xff\xff\xff";

/// A close seen by a client: code and reason.
pub(crate) type Closed = (u16, String);

/// What a client saw in one frame.
#[derive(Debug)]
pub(crate) enum Seen {
    Step1,
    Step2,
    Update,
    Awareness(HashMap<ClientID, String>),
}

/// A y-websocket client: one Yrs doc bound to one document over `/yjs`.
pub(crate) struct YClient {
    pub(crate) ws: WsStream,
    pub(crate) doc: Doc,
    pub(crate) text: TextRef,
    /// The last awareness state seen per client ("null" once removed).
    pub(crate) presence: HashMap<ClientID, String>,
    /// Step 1 frames received (each answered with a step 2).
    pub(crate) step1s: usize,
    /// Step 2 frames received (the first one means synced).
    pub(crate) step2s: usize,
    /// Update frames received.
    pub(crate) updates: usize,
}

impl YClient {
    /// Connects to `url` as the provider does: sends step 1 with the state
    /// vector of a fresh doc, then waits for the server's step 2 and answers
    /// its step 1.
    pub(crate) async fn join(url: &str) -> Self {
        Self::join_with(url, new_doc()).await
    }

    /// Connects with an existing doc (a reconnect).
    pub(crate) async fn join_with(url: &str, doc: Doc) -> Self {
        let mut client = Self::open(url, doc).await;
        client.send_step1().await;
        client
            .pump_until("the server's step 2 and step 1", |c| {
                c.step2s > 0 && c.step1s > 0
            })
            .await;
        client
    }

    /// Connects without sending anything.
    pub(crate) async fn open(url: &str, doc: Doc) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect /yjs");
        let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
        Self {
            ws,
            doc,
            text,
            presence: HashMap::new(),
            step1s: 0,
            step2s: 0,
            updates: 0,
        }
    }

    pub(crate) fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    pub(crate) fn client_id(&self) -> ClientID {
        self.doc.client_id()
    }

    pub(crate) async fn send(&mut self, frame: impl Into<Bytes>) {
        self.ws
            .send(Message::Binary(frame.into()))
            .await
            .expect("send frame");
    }

    pub(crate) async fn send_step1(&mut self) {
        let sv = self.doc.transact().state_vector().encode_v1();
        self.send(ysync::step1(&sv)).await;
    }

    /// Inserts `text` at `pos` locally and sends the update.
    pub(crate) async fn type_at(&mut self, pos: u32, text: &str) {
        let update = self.edit(pos, text);
        self.send(ysync::update(&update)).await;
    }

    /// Inserts `text` at `pos` locally only; returns the update.
    pub(crate) fn edit(&mut self, pos: u32, text: &str) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        self.text.insert(&mut txn, pos, text);
        txn.encode_update_v1()
    }

    /// Sends this client's presence.
    pub(crate) async fn set_presence(&mut self, clock: u32, json: &str) {
        let update = AwarenessUpdate {
            clients: HashMap::from([(
                self.client_id(),
                AwarenessUpdateEntry {
                    clock,
                    json: json.into(),
                },
            )]),
        };
        self.send(ysync::awareness(&update.encode_v1())).await;
    }

    /// Handles the next frame, waiting at most `wait`: applies updates,
    /// answers step 1, records presence. `Err` is the server's close.
    pub(crate) async fn next(&mut self, wait: Duration) -> Result<Option<Seen>, Closed> {
        let msg = match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err((1006, "eof".into())),
            Ok(Some(Err(e))) => return Err((1006, e.to_string())),
            Ok(Some(Ok(msg))) => msg,
        };
        let frame = match msg {
            Message::Binary(frame) => frame,
            Message::Close(frame) => {
                return Err(frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                }))
            }
            _ => return Ok(None),
        };
        // The provider reads one message per frame: the server must send so.
        let msg = YMessage::decode_v1(&frame).expect("one y-protocols message per frame");
        Ok(Some(match msg {
            YMessage::Sync(SyncMessage::SyncStep1(sv)) => {
                let diff = self.doc.transact().encode_diff_v1(&sv);
                self.send(ysync::step2(&diff)).await;
                self.step1s += 1;
                Seen::Step1
            }
            YMessage::Sync(SyncMessage::SyncStep2(update)) => {
                self.apply(&update);
                self.step2s += 1;
                Seen::Step2
            }
            YMessage::Sync(SyncMessage::Update(update)) => {
                self.apply(&update);
                self.updates += 1;
                Seen::Update
            }
            YMessage::Awareness(update) => {
                let states: HashMap<ClientID, String> = update
                    .clients
                    .into_iter()
                    .map(|(id, e)| (id, e.json.to_string()))
                    .collect();
                self.presence.extend(states.clone());
                Seen::Awareness(states)
            }
            other => panic!("the server sent {other:?}"),
        }))
    }

    pub(crate) fn apply(&mut self, update: &[u8]) {
        let update = Update::decode_v1(update).expect("server update decodes");
        self.doc
            .transact_mut()
            .apply_update(update)
            .expect("server update applies");
    }

    /// Handles frames until `done` holds, failing after [`PATIENCE`].
    pub(crate) async fn pump_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}"
            );
            if let Err(closed) = self.next(Duration::from_millis(100)).await {
                panic!("closed while waiting for {what}: {closed:?}");
            }
        }
    }

    /// Handles frames until none arrives for [`QUIET`].
    pub(crate) async fn settle(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some(s) = self.next(QUIET).await.expect("socket open") {
            seen.push(s);
        }
        seen
    }

    /// Reads until the server closes; returns the close.
    pub(crate) async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never closed"
            );
            if let Err(closed) = self.next(Duration::from_millis(100)).await {
                return closed;
            }
        }
    }

    pub(crate) async fn leave(mut self) {
        let _ = self.ws.close(None).await;
    }
}

pub(crate) fn yjs_url(addr: std::net::SocketAddr, doc: &str) -> String {
    format!("ws://{addr}/yjs/{doc}")
}

/// The server's text of `doc`, with `/` in the id encoded for the REST path.
pub(crate) async fn server_text(server: &TestServer, doc: &str) -> String {
    server.text(&doc.replace('/', "%2F")).await
}

/// Waits until the server's text of `doc` is `want`.
async fn server_has(server: &TestServer, doc: &str, want: &str) {
    eventually(&format!("server text {want:?}"), || async {
        (server_text(server, doc).await == want).then_some(())
    })
    .await;
}

fn decode_presence(bytes: &[u8]) -> HashMap<ClientID, String> {
    AwarenessUpdate::decode_v1(bytes)
        .expect("valid awareness")
        .clients
        .into_iter()
        .map(|(id, e)| (id, e.json.to_string()))
        .collect()
}

#[tokio::test]
async fn yjs_and_folio_editors_converge_on_one_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut folio = Editor::join(&server.ws_url(), "mixed", "folio")
        .await
        .expect("join /ws");
    folio
        .type_patches(&[(0, 0, "from folio. ")])
        .await
        .expect("type");
    folio.wait_acked().await.expect("acked");

    // A y-websocket joiner gets the text in its step 2 ...
    let mut y = YClient::join(&yjs_url(server.addr, "mixed")).await;
    assert_eq!(y.text(), "from folio. ");
    // ... and a second one sees the first one's typing live.
    let mut y2 = YClient::join(&yjs_url(server.addr, "mixed")).await;
    y.type_at(0, "from yjs. ").await;
    y2.pump_until("y's update", |c| c.text().starts_with("from yjs. "))
        .await;

    // Concurrent typing on both protocols.
    for i in 0..20u32 {
        let len = folio.len();
        folio
            .type_patches(&[(len, 0, &format!("f{i} "))])
            .await
            .expect("type");
        y.type_at(0, &format!("y{i} ")).await;
        y2.type_at(y2.text().chars().count() as u32, &format!("z{i} "))
            .await;
    }
    let mut editors = [folio];
    let text = converge(&server, "mixed", &mut editors).await;
    for c in [&mut y, &mut y2] {
        c.pump_until("convergence", |c| c.text() == text).await;
    }
    for i in 0..20 {
        for tag in ["f", "y", "z"] {
            assert!(text.contains(&format!("{tag}{i} ")), "{tag}{i} in {text}");
        }
    }
    y.leave().await;
    y2.leave().await;
    server.stop().await;
}

#[tokio::test]
async fn doc_ids_with_slashes_and_a_query_string_reach_one_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = format!(
        "ws://{}/yjs/team-a/notes.md?token=ignored-for-now",
        server.addr
    );
    let mut y = YClient::join(&url).await;
    y.type_at(0, "nested").await;
    server_has(&server, "team-a/notes.md", "nested").await;
    let mut folio = Editor::join(&server.ws_url(), "team-a/notes.md", "folio")
        .await
        .expect("join");
    assert_eq!(folio.text(), "nested");
    folio.type_patches(&[(6, 0, "!")]).await.expect("type");
    y.pump_until("folio's update", |c| c.text() == "nested!")
        .await;
    server.stop().await;
}

#[tokio::test]
async fn awareness_crosses_between_the_protocols() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut folio = Editor::join(&server.ws_url(), "room", "folio")
        .await
        .expect("join");
    folio
        .send_awareness(presence(&folio, 1, r#"{"user":{"name":"folio"}}"#))
        .await
        .expect("awareness");
    // Wait until the shard has it: a late y-websocket joiner gets it on join.
    let folio_id = folio.doc().client_id();
    let mut y = YClient::join(&yjs_url(server.addr, "room")).await;
    y.pump_until("folio's presence", |c| c.presence.contains_key(&folio_id))
        .await;
    assert_eq!(y.presence[&folio_id], r#"{"user":{"name":"folio"}}"#);

    // y-websocket -> Folio.
    y.set_presence(1, r#"{"user":{"name":"yjs"}}"#).await;
    let y_id = y.client_id();
    let relayed = loop {
        if let Event::Awareness(bytes) = folio.pump().await.expect("pump") {
            break decode_presence(&bytes);
        }
    };
    assert_eq!(
        relayed.get(&y_id).map(String::as_str),
        Some(r#"{"user":{"name":"yjs"}}"#)
    );

    // Folio -> y-websocket, live.
    folio
        .send_awareness(presence(&folio, 2, r#"{"user":{"name":"folio2"}}"#))
        .await
        .expect("awareness");
    y.pump_until("folio's new presence", |c| {
        c.presence.get(&folio_id).map(String::as_str) == Some(r#"{"user":{"name":"folio2"}}"#)
    })
    .await;

    // A y-websocket client that goes away leaves no presence behind.
    y.leave().await;
    let removed = loop {
        if let Event::Awareness(bytes) = folio.pump().await.expect("pump") {
            break decode_presence(&bytes);
        }
    };
    assert_eq!(removed.get(&y_id).map(String::as_str), Some("null"));
    server.stop().await;
}

#[tokio::test]
async fn awareness_queries_and_repeated_step1_are_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = yjs_url(server.addr, "resync");
    let mut a = YClient::join(&url).await;
    a.set_presence(1, r#"{"user":{"name":"a"}}"#).await;
    a.type_at(0, "abc").await;
    let a_id = a.client_id();
    // Handled in order: once the text is there, so is the presence.
    server_has(&server, "resync", "abc").await;

    let mut b = YClient::join(&url).await;
    b.settle().await;
    b.presence.clear();
    // Query awareness (type 3): everyone's presence comes back, once for
    // any number of queries in one frame.
    b.send(vec![3u8, 3, 3]).await;
    let seen = b.settle().await;
    let answers: Vec<_> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Awareness(states) => Some(states),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "{seen:?}");
    assert_eq!(
        answers[0].get(&a_id).map(String::as_str),
        Some(r#"{"user":{"name":"a"}}"#)
    );

    // A later step 1 (the provider's resyncInterval) gets a step 2 with
    // exactly what the client lacks.
    let behind = new_doc();
    let mut c = YClient::open(&url, behind).await;
    c.send_step1().await;
    c.pump_until("first step 2", |c| c.step2s == 1).await;
    assert_eq!(c.text(), "abc");
    a.type_at(3, "def").await;
    c.pump_until("a's update", |c| c.text() == "abcdef").await;
    c.send_step1().await;
    c.pump_until("second step 2", |c| c.step2s == 2).await;
    assert_eq!(c.text(), "abcdef");
    // Answering did not disturb anyone's presence.
    for seen in b.settle().await {
        if let Seen::Awareness(states) = seen {
            assert_ne!(states.get(&a_id).map(String::as_str), Some("null"));
        }
    }
    assert_eq!(
        b.presence.get(&a_id).map(String::as_str),
        Some(r#"{"user":{"name":"a"}}"#)
    );
    server.stop().await;
}

#[tokio::test]
async fn updates_with_missing_dependencies_are_healed_by_a_resync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = yjs_url(server.addr, "gaps");

    // The provider's race: typed offline, reconnected, typed again before
    // the server's step 1 came back. The second edit builds on the first,
    // which the server does not have yet; the client's step 2 brings both.
    let doc = new_doc();
    let mut y = YClient::open(&url, doc).await;
    y.edit(0, "offline ");
    y.send_step1().await;
    y.type_at(8, "then online").await;
    y.pump_until("synced", |c| c.step2s > 0 && c.step1s > 0)
        .await;
    server_has(&server, "gaps", "offline then online").await;

    // After the sync, an update with a gap (a broken client) makes the
    // server ask again with its step 1, and the answer fills the gap.
    y.edit(0, "[lost] ");
    let before = y.doc.transact().state_vector();
    y.edit(0, "[found] ");
    let gap = y.doc.transact().encode_diff_v1(&before);
    y.send(ysync::update(&gap)).await;
    let want = y.text();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server_text(&server, "gaps").await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gap never filled"
        );
        // The client answers the server's step 1 as it reads.
        y.next(QUIET).await.expect("socket open");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_input_closes_only_that_socket_with_the_fitting_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.max_message_bytes = 64 * 1024).await;
    let url = yjs_url(server.addr, "target");
    let mut folio = Editor::join(&server.ws_url(), "target", "bystander")
        .await
        .expect("join");
    folio.type_patches(&[(0, 0, "intact")]).await.expect("type");
    folio.wait_acked().await.expect("acked");
    let mut bystander = YClient::join(&url).await;

    let cases: Vec<(&str, Message, u16)> = vec![
        ("a text frame", Message::Text("hello".into()), 1003),
        (
            "garbage",
            Message::Binary(Bytes::from_static(GARBAGE)),
            1007,
        ),
        ("an empty frame", Message::Binary(Bytes::new()), 1007),
        (
            "a truncated message",
            Message::Binary(Bytes::from_static(&[0, 2, 9, 1])),
            1007,
        ),
        (
            "an unknown sync message type",
            Message::Binary(Bytes::from_static(&[0, 7, 0])),
            1007,
        ),
        (
            "an invalid state vector",
            Message::Binary(ysync::step1(GARBAGE)),
            1007,
        ),
        (
            "an invalid awareness update",
            Message::Binary(ysync::awareness(GARBAGE)),
            1007,
        ),
        (
            "awareness that is not JSON",
            Message::Binary(ysync::awareness(
                &AwarenessUpdate {
                    clients: HashMap::from([(
                        ClientID::new(77),
                        AwarenessUpdateEntry {
                            clock: 1,
                            json: "{not json".into(),
                        },
                    )]),
                }
                .encode_v1(),
            )),
            1007,
        ),
        (
            "a frame over max_message_bytes",
            Message::Binary(ysync::update(&vec![0u8; 64 * 1024])),
            1009,
        ),
    ];
    for (what, msg, code) in cases {
        let mut y = YClient::join(&url).await;
        y.ws.send(msg).await.expect("send");
        let (got, reason) = y.closed().await;
        assert_eq!(got, code, "{what}: closed with {got} ({reason})");
        if code == 1007 {
            assert!(!reason.is_empty(), "{what}: a 1007 says why");
        }
    }
    // An invalid Yjs update: 1007 with a reason (y-protocols have no error
    // message), and the document is unchanged.
    let mut y = YClient::join(&url).await;
    y.send(ysync::update(GARBAGE)).await;
    let (code, reason) = y.closed().await;
    assert_eq!(code, 1007);
    assert!(reason.contains("invalid update"), "{reason}");

    // Auth and unknown message types are ignored; the socket goes on.
    let mut y = YClient::join(&url).await;
    y.send(vec![2u8, 0, 4, b'n', b'o', b'p', b'e']).await;
    y.send(vec![42u8, 1, 0]).await;
    y.type_at(0, "ok ").await;
    server_has(&server, "target", "ok intact").await;

    // Nothing changed the document but the one good edit, and everyone
    // else kept going.
    bystander
        .pump_until("the good edit", |c| c.text() == "ok intact")
        .await;
    folio.type_patches(&[(9, 0, "!")]).await.expect("type");
    let mut editors = [folio];
    assert_eq!(
        converge(&server, "target", &mut editors).await,
        "ok intact!"
    );
    bystander
        .pump_until("folio's edit", |c| c.text() == "ok intact!")
        .await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_doc_ids_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    for bad in ["a%20b", "a//b", "../x", "x/", &"x".repeat(129)] {
        let url = format!("ws://{}/yjs/{bad}", server.addr);
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 400, "{bad}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                        .expect("JSON error body");
                assert_eq!(body["error"]["code"], "invalid_doc_id", "{bad}: {body}");
            }
            other => panic!("{bad}: expected HTTP 400, got {other:?}"),
        }
    }
    // A plain GET (no upgrade) gets the JSON error shape too.
    let (status, body) = server.get_text("/yjs/fine").await;
    assert!((400..500).contains(&status), "{status} {body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["error"]["code"], "websocket_required");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_falls_behind_is_resynced_without_a_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.limits.outbound_queue_bytes = 64 * 1024;
        c.limits.max_doc_bytes = 0;
        // The slow client reads nothing for a while: no stall close or
        // ping timeout in this test.
        c.limits.stall_timeout_secs = 3600;
        c.limits.ping_interval_secs = 0;
    })
    .await;
    let url = yjs_url(server.addr, "flood");
    let mut slow = YClient::join(&url).await;
    slow.settle().await;
    let synced_step2s = slow.step2s;
    let mut folio = Editor::join(&server.ws_url(), "flood", "writer")
        .await
        .expect("join");
    // 16 MiB while `slow` reads nothing: far more than loopback's socket
    // buffers (about 4 MiB for a receiver that does not read) and its 64 KiB
    // queue can hold.
    const CHUNKS: usize = 256;
    let chunk = "x".repeat(64 * 1024);
    for _ in 0..CHUNKS {
        let len = folio.len();
        folio.type_patches(&[(len, 0, &chunk)]).await.expect("type");
        folio.wait_acked().await.expect("acked");
    }
    let want = server_text(&server, "flood").await;
    assert_eq!(want.len(), CHUNKS * chunk.len());
    // Reading again, it catches up on the same socket (pump_until fails on
    // a close): with fewer relayed updates than were made, and a resync
    // (a second step 2) in place of the rest.
    slow.pump_until("the whole text", |c| c.text().len() == want.len())
        .await;
    assert_eq!(slow.text(), want);
    assert!(slow.step2s > synced_step2s, "no resync arrived");
    assert!(slow.updates < CHUNKS, "{} updates relayed", slow.updates);
    // And it is a member as before: it hears the next edit.
    folio.type_patches(&[(0, 0, "end")]).await.expect("type");
    slow.pump_until("the next edit", |c| c.text().starts_with("end"))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn yjs_edits_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut y = YClient::join(&yjs_url(server.addr, "kept")).await;
    for word in ["one ", "two ", "three "] {
        let len = y.text().len() as u32;
        y.type_at(len, word).await;
    }
    server_has(&server, "kept", "one two three ").await;
    y.leave().await;
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    assert_eq!(server_text(&server, "kept").await, "one two three ");
    let fresh = YClient::join(&yjs_url(server.addr, "kept")).await;
    assert_eq!(fresh.text(), "one two three ");
    server.stop().await;
}

#[tokio::test]
async fn yjs_edits_the_server_has_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = ChildServer::spawn(dir.path(), &[]);
    let mut y = YClient::join(&yjs_url(child.addr, "crash")).await;
    for i in 0..50 {
        let len = y.text().len() as u32;
        y.type_at(len, &format!("{i} ")).await;
    }
    let want = y.text();
    let http = reqwest::Client::new();
    eventually("the server has every edit", || async {
        let got = http
            .get(child.url("/docs/crash/text"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (got == want).then_some(())
    })
    .await;
    // y-protocols have no acks. The writer commits in order, so once an
    // empty update posted over HTTP is durable, so is everything before it.
    let resp = http
        .post(child.url("/docs/crash/update"))
        .body(vec![0u8, 0])
        .send()
        .await
        .expect("post barrier");
    assert_eq!(resp.status().as_u16(), 200);
    child.kill9();

    let child = ChildServer::spawn(dir.path(), &[]);
    let fresh = YClient::join(&yjs_url(child.addr, "crash")).await;
    assert_eq!(fresh.text(), want);
    child.kill9();
}

#[tokio::test]
async fn relayed_presence_stays_with_the_client_that_owns_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = yjs_url(server.addr, "relay");
    let mut folio = Editor::join(&server.ws_url(), "relay", "folio")
        .await
        .expect("join");
    let folio_json = r#"{"user":{"name":"folio"}}"#;
    folio
        .send_awareness(presence(&folio, 1, folio_json))
        .await
        .expect("awareness");
    let folio_id = folio.doc().client_id();
    let mut relay = YClient::join(&url).await;
    relay
        .pump_until("folio's presence", |c| c.presence.contains_key(&folio_id))
        .await;
    let mut watcher = YClient::join(&url).await;
    watcher.settle().await;

    // The y-websocket provider sends back every awareness change it
    // applies, others' included.
    relay.set_presence(1, r#"{"user":{"name":"relay"}}"#).await;
    let relayed = AwarenessUpdate {
        clients: HashMap::from([(
            folio_id,
            AwarenessUpdateEntry {
                clock: 1,
                json: folio_json.into(),
            },
        )]),
    };
    relay.send(ysync::awareness(&relayed.encode_v1())).await;
    relay.settle().await;
    relay.leave().await;

    // Once the relay is gone, whatever reaches the watcher after folio's
    // next edit comes after what the server said about the relay leaving.
    eventually("the relay to be unsubscribed", || async {
        let docs: Value = serde_json::from_str(&server.get_text("/docs").await.1).ok()?;
        (docs["docs"][0]["subscribers"] == 2).then_some(())
    })
    .await;
    folio.type_patches(&[(0, 0, "marker")]).await.expect("type");
    watcher
        .pump_until("folio's marker", |c| c.text() == "marker")
        .await;
    assert_eq!(
        watcher.presence.get(&folio_id).map(String::as_str),
        Some(folio_json),
        "folio's presence left with the relay"
    );
    server.stop().await;
}
