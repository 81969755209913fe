//! Hostile and mistaken input: every kind gets a clear error code or the
//! fitting close code, changes nothing in the document, and leaves the other
//! clients of the server unaffected.

use bytes::Bytes;
use folio::client::{ClientError, Connection, Editor, Event, WsStream, RECV_TIMEOUT};
use folio::protocol::{
    client_message, server_message, v1, ClientMessage, ErrorCode, ServerMessage,
};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Text, Transact};

use crate::http_api::{doc_info, post};
use crate::support::TestServer;
use crate::sync::presence;

/// Bytes that decode as neither a Yjs update, a state vector nor an
/// awareness update (an unterminated varint).
const GARBAGE: &[u8] = b"\xff\xff\xff";

/// Asserts that `got` is an `Error` with `code` and returns it.
#[track_caller]
fn assert_error(got: Result<server_message::Kind, ClientError>, code: ErrorCode) -> v1::Error {
    match got {
        Ok(server_message::Kind::Error(e)) => {
            assert_eq!(
                e.code(),
                code,
                "expected {code:?}, got {:?}: {}",
                e.code(),
                e.message
            );
            e
        }
        other => panic!("expected an Error {code:?}, got {other:?}"),
    }
}

/// Asserts that `got` is the server closing the socket with `code`.
#[track_caller]
fn assert_closed(got: Result<server_message::Kind, ClientError>, code: u16) {
    match got {
        Err(ClientError::Closed { code: got, reason }) => {
            assert_eq!(got, code, "closed with {got} ({reason}), expected {code}");
        }
        other => panic!("expected a close with {code}, got {other:?}"),
    }
}

/// Asserts that a socket is still served: a `Ping` gets its `Pong`.
async fn assert_usable(conn: &mut Connection, nonce: u64) {
    conn.send(client_message::Kind::Ping(v1::Ping { nonce }))
        .await
        .expect("send ping");
    match conn.recv().await {
        Ok(server_message::Kind::Pong(p)) => assert_eq!(p.nonce, nonce),
        other => panic!("expected Pong {nonce}, got {other:?}"),
    }
}

/// Subscribes `conn` to `doc` and waits for its `Synced`.
async fn subscribe(conn: &mut Connection, doc: &str) -> v1::Synced {
    conn.send(client_message::Kind::Subscribe(v1::Subscribe {
        doc: doc.into(),
        state_vector: Bytes::new(),
        ..Default::default()
    }))
    .await
    .expect("send subscribe");
    match conn.recv().await {
        Ok(server_message::Kind::Synced(s)) => s,
        other => panic!("expected Synced for {doc}, got {other:?}"),
    }
}

/// A Yjs update inserting `text` into a fresh doc with client id `client`.
fn insert_update(client: u64, text: &str) -> Bytes {
    let doc = Doc::with_client_id(client);
    let content = doc.get_or_insert_text(folio::doc::TEXT_NAME);
    let mut txn = doc.transact_mut();
    content.insert(&mut txn, 0, text);
    Bytes::from(txn.encode_update_v1())
}

/// A socket that has not said `Hello`: [`Connection`] always says it, so the
/// handshake tests speak through the raw WebSocket.
async fn connect_without_hello(server: &TestServer) -> WsStream {
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("websocket connects");
    ws
}

async fn send_on(ws: &mut WsStream, kind: client_message::Kind) {
    let frame = ClientMessage { kind: Some(kind) }.encode_to_vec();
    ws.send(Message::Binary(frame.into()))
        .await
        .expect("send frame");
}

/// [`Connection::recv`] for a raw socket: the next message, or the close.
async fn recv_on(ws: &mut WsStream) -> Result<server_message::Kind, ClientError> {
    loop {
        let next = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .map_err(|_| ClientError::Timeout)?;
        match next {
            Some(Ok(Message::Binary(frame))) => {
                let msg = ServerMessage::decode(frame)?;
                return msg
                    .kind
                    .ok_or_else(|| ClientError::Unexpected("empty ServerMessage".into()));
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                return Err(ClientError::Closed { code, reason });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Unexpected("eof without a close".into())),
        }
    }
}

/// Pumps `editor` until the next remote update or awareness, skipping acks.
async fn next_broadcast(editor: &mut Editor) -> Event {
    loop {
        match editor.pump().await.expect("pump") {
            Event::Acked { .. } => continue,
            e @ (Event::Remote { .. } | Event::Awareness(_)) => return e,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn text_frame_closes_with_1003() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut conn = Connection::connect(&server.ws_url(), "mallory")
        .await
        .expect("connect");
    conn.send_raw(Message::Text("hello".into()))
        .await
        .expect("send text");
    assert_closed(conn.recv().await, 1003);
    server.stop().await;
}

#[tokio::test]
async fn undecodable_frame_is_malformed_and_closes_with_1007() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    // Field 1 announces 5 bytes and carries one; and an invalid wire type.
    for frame in [&b"\x0a\x05\x01"[..], b"\xff\xff\xff\xff"] {
        let mut conn = Connection::connect(&url, "mallory").await.expect("connect");
        conn.send_raw(Message::Binary(Bytes::from_static(frame)))
            .await
            .expect("send");
        let err = assert_error(conn.recv().await, ErrorCode::MalformedMessage);
        assert_eq!(err.doc, "");
        assert_closed(conn.recv().await, 1007);
    }
    server.stop().await;
}

#[tokio::test]
async fn message_without_a_known_kind_is_unknown_and_the_socket_stays_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut conn = Connection::connect(&server.ws_url(), "future-client")
        .await
        .expect("connect");
    // An empty frame (no field set) and field 99 = varint 1 (a kind from
    // some later protocol): both decode, neither has a kind we know.
    for (i, frame) in [&b""[..], b"\x98\x06\x01"].into_iter().enumerate() {
        conn.send_raw(Message::Binary(Bytes::from_static(frame)))
            .await
            .expect("send");
        assert_error(conn.recv().await, ErrorCode::UnknownMessage);
        assert_usable(&mut conn, i as u64 + 1).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn message_before_hello_is_refused_and_closes_with_1008() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let before_hello = [
        client_message::Kind::Ping(v1::Ping { nonce: 1 }),
        client_message::Kind::Subscribe(v1::Subscribe {
            doc: "early".into(),
            state_vector: Bytes::new(),
            ..Default::default()
        }),
    ];
    for kind in before_hello {
        let mut ws = connect_without_hello(&server).await;
        send_on(&mut ws, kind).await;
        assert_error(recv_on(&mut ws).await, ErrorCode::HelloRequired);
        assert_closed(recv_on(&mut ws).await, 1008);
    }
    // The refused Subscribe created nothing.
    assert_eq!(doc_info(&server, "early").await, None);
    server.stop().await;
}

#[tokio::test]
async fn second_hello_is_refused_and_closes_with_1008() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut conn = Connection::connect(&server.ws_url(), "twice")
        .await
        .expect("connect");
    conn.send(client_message::Kind::Hello(v1::Hello {
        protocol_version: folio::protocol::PROTOCOL_VERSION,
        client_name: "twice again".into(),
        ..Default::default()
    }))
    .await
    .expect("send hello");
    assert_error(conn.recv().await, ErrorCode::HelloRequired);
    assert_closed(conn.recv().await, 1008);
    server.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_version_is_refused_and_closes_with_1002() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut ws = connect_without_hello(&server).await;
    send_on(
        &mut ws,
        client_message::Kind::Hello(v1::Hello {
            protocol_version: 2,
            client_name: "from-the-future".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_error(recv_on(&mut ws).await, ErrorCode::UnsupportedVersion);
    assert_closed(recv_on(&mut ws).await, 1002);
    server.stop().await;
}

#[tokio::test]
async fn invalid_update_is_refused_with_its_seq_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut alice = Editor::join(&url, "guarded", "alice").await.expect("join");
    let mut bob = Editor::join(&url, "guarded", "bob").await.expect("join");
    alice.type_patches(&[(0, 0, "hello")]).await.expect("type");
    alice.wait_acked().await.expect("acked");
    assert!(matches!(
        next_broadcast(&mut bob).await,
        Event::Remote { doc_seq: 1 }
    ));

    let mut mallory = Connection::connect(&url, "mallory").await.expect("connect");
    subscribe(&mut mallory, "guarded").await;

    // Client 4242's second edit without its first: its dependencies are missing.
    let d = Doc::with_client_id(4242);
    let content = d.get_or_insert_text(folio::doc::TEXT_NAME);
    content.insert(&mut d.transact_mut(), 0, "first ");
    let after_first = d.transact().state_vector();
    content.insert(&mut d.transact_mut(), 6, "second");
    let second_only = Bytes::from(d.transact().encode_diff_v1(&after_first));

    for (seq, update) in [(41, Bytes::from_static(GARBAGE)), (42, second_only)] {
        mallory
            .send(client_message::Kind::Update(v1::Update {
                doc: "guarded".into(),
                update,
                seq,
            }))
            .await
            .expect("send update");
        let err = assert_error(mallory.recv().await, ErrorCode::InvalidUpdate);
        assert_eq!((err.doc.as_str(), err.seq), ("guarded", seq));
        assert_eq!(server.text("guarded").await, "hello");
    }
    let info = doc_info(&server, "guarded").await.expect("listed");
    assert_eq!(info["last_seq"], 1, "{info}");
    assert_eq!(info["subscribers"], 3, "{info}");

    // The document and every socket on it keep working, mallory's included.
    alice.type_patches(&[(5, 0, " world")]).await.expect("type");
    alice.wait_acked().await.expect("acked");
    assert!(matches!(
        next_broadcast(&mut bob).await,
        Event::Remote { doc_seq: 2 }
    ));
    assert_eq!(bob.text(), "hello world");
    mallory
        .send(client_message::Kind::Update(v1::Update {
            doc: "guarded".into(),
            update: insert_update(4343, "!"),
            seq: 43,
        }))
        .await
        .expect("send update");
    let acked = loop {
        match mallory.recv().await.expect("recv") {
            server_message::Kind::Ack(a) => break a,
            server_message::Kind::Update(_) => continue,
            other => panic!("expected an Ack, got {other:?}"),
        }
    };
    assert_eq!((acked.seq, acked.doc_seq), (43, 3));
    assert!(matches!(
        next_broadcast(&mut bob).await,
        Event::Remote { doc_seq: 3 }
    ));
    assert_eq!(server.text("guarded").await, bob.text());
    server.stop().await;
}

#[tokio::test]
async fn messages_for_an_unsubscribed_doc_are_refused_and_change_nothing() {
    const INTRUDER: u64 = 666;
    let intruder = yrs::ClientID::new(INTRUDER);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut alice = Editor::join(&url, "private", "alice").await.expect("join");
    alice.type_patches(&[(0, 0, "mine")]).await.expect("type");
    alice.wait_acked().await.expect("acked");

    let mut mallory = Connection::connect(&url, "mallory").await.expect("connect");
    mallory
        .send(client_message::Kind::Update(v1::Update {
            doc: "private".into(),
            update: insert_update(INTRUDER, "intruder "),
            seq: 7,
        }))
        .await
        .expect("send update");
    let err = assert_error(mallory.recv().await, ErrorCode::NotSubscribed);
    assert_eq!((err.doc.as_str(), err.seq), ("private", 7));

    let intruder_presence = AwarenessUpdate {
        clients: [(
            intruder,
            AwarenessUpdateEntry {
                clock: 1,
                json: r#"{"user":"mallory"}"#.into(),
            },
        )]
        .into(),
    };
    mallory
        .send(client_message::Kind::Awareness(v1::Awareness {
            doc: "private".into(),
            update: Bytes::from(intruder_presence.encode_v1()),
        }))
        .await
        .expect("send awareness");
    let err = assert_error(mallory.recv().await, ErrorCode::NotSubscribed);
    assert_eq!(err.doc, "private");

    mallory
        .send(client_message::Kind::Unsubscribe(v1::Unsubscribe {
            doc: "private".into(),
        }))
        .await
        .expect("send unsubscribe");
    let err = assert_error(mallory.recv().await, ErrorCode::NotSubscribed);
    assert_eq!(err.doc, "private");

    assert_usable(&mut mallory, 1).await;
    assert_eq!(server.text("private").await, "mine");
    let info = doc_info(&server, "private").await.expect("listed");
    assert_eq!(info["last_seq"], 1, "{info}");
    assert_eq!(info["subscribers"], 1, "{info}");
    // Neither the update nor the presence was kept or relayed: a joiner sees
    // no presence, and bob's presence is the first thing alice receives.
    let mut bob = Editor::join(&url, "private", "bob").await.expect("join");
    assert!(
        bob.synced_awareness.is_empty(),
        "mallory's presence was kept"
    );
    bob.send_awareness(presence(&bob, 1, r#"{"user":"bob"}"#))
        .await
        .expect("awareness");
    match next_broadcast(&mut alice).await {
        Event::Awareness(bytes) => {
            let seen = yrs::updates::decoder::Decode::decode_v1(&bytes);
            let seen: AwarenessUpdate = seen.expect("valid awareness");
            assert!(seen.clients.contains_key(&bob.doc().client_id()));
            assert!(!seen.clients.contains_key(&intruder));
        }
        other => panic!("alice got {other:?} before bob's presence"),
    }
    assert_eq!(alice.text(), "mine");
    server.stop().await;
}

#[tokio::test]
async fn frame_over_the_size_limit_closes_with_1009_and_spares_the_others() {
    const LIMIT: u32 = 64 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.max_message_bytes = LIMIT).await;
    let url = server.ws_url();
    let mut alice = Editor::join(&url, "roomy", "alice").await.expect("join");
    let mut bob = Editor::join(&url, "roomy", "bob").await.expect("join");

    let big_text = "x".repeat(LIMIT as usize);
    let big = ClientMessage {
        kind: Some(client_message::Kind::Update(v1::Update {
            doc: "roomy".into(),
            update: insert_update(777, &big_text),
            seq: 1,
        })),
    }
    .encode_to_vec();
    assert!(big.len() > LIMIT as usize);
    // One frame just over the limit, and one far over it (refused while
    // still being read).
    for frame in [big, vec![0; 4 * LIMIT as usize]] {
        let mut mallory = Connection::connect(&url, "mallory").await.expect("connect");
        assert_eq!(mallory.limits.max_message_bytes, LIMIT);
        subscribe(&mut mallory, "roomy").await;
        mallory
            .send_raw(Message::Binary(frame.into()))
            .await
            .expect("send big frame");
        assert_closed(mallory.recv().await, 1009);
    }

    alice
        .type_patches(&[(0, 0, "still here")])
        .await
        .expect("type");
    alice.wait_acked().await.expect("acked");
    assert!(matches!(
        next_broadcast(&mut bob).await,
        Event::Remote { doc_seq: 1 }
    ));
    assert_eq!(bob.text(), "still here");
    assert_eq!(server.text("roomy").await, "still here");
    server.stop().await;
}

#[tokio::test]
async fn invalid_doc_ids_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut conn = Connection::connect(&server.ws_url(), "typo")
        .await
        .expect("connect");
    let long = "a".repeat(200);
    for bad in ["", "a//b", "../x", long.as_str(), "a b", "/a", "a/"] {
        conn.send(client_message::Kind::Subscribe(v1::Subscribe {
            doc: bad.into(),
            state_vector: Bytes::new(),
            ..Default::default()
        }))
        .await
        .expect("send subscribe");
        let err = assert_error(conn.recv().await, ErrorCode::InvalidDocId);
        assert_eq!(err.doc, bad);
    }
    assert_usable(&mut conn, 1).await;
    let (status, body) = server.get_text("/docs").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"docs":[],"next_cursor":null}"#)
    );
    server.stop().await;
}

#[tokio::test]
async fn subscribing_twice_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut conn = Connection::connect(&server.ws_url(), "eager")
        .await
        .expect("connect");
    subscribe(&mut conn, "once").await;
    conn.send(client_message::Kind::Subscribe(v1::Subscribe {
        doc: "once".into(),
        state_vector: Bytes::new(),
        ..Default::default()
    }))
    .await
    .expect("send subscribe");
    let err = assert_error(conn.recv().await, ErrorCode::AlreadySubscribed);
    assert_eq!(err.doc, "once");
    // Still subscribed once: one subscriber, and updates flow as before.
    let info = doc_info(&server, "once").await.expect("listed");
    assert_eq!(info["subscribers"], 1, "{info}");
    assert_usable(&mut conn, 1).await;
    server.stop().await;
}

#[tokio::test]
async fn more_docs_than_the_limit_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.max_docs_per_connection = 2).await;
    let mut conn = Connection::connect(&server.ws_url(), "collector")
        .await
        .expect("connect");
    assert_eq!(conn.limits.max_docs_per_connection, 2);
    subscribe(&mut conn, "one").await;
    subscribe(&mut conn, "two").await;
    conn.send(client_message::Kind::Subscribe(v1::Subscribe {
        doc: "three".into(),
        state_vector: Bytes::new(),
        ..Default::default()
    }))
    .await
    .expect("send subscribe");
    let err = assert_error(conn.recv().await, ErrorCode::TooManyDocs);
    assert_eq!(err.doc, "three");
    assert_eq!(
        doc_info(&server, "three").await,
        None,
        "refused doc was created"
    );

    // The limit counts current subscriptions: leaving one makes room.
    conn.send(client_message::Kind::Unsubscribe(v1::Unsubscribe {
        doc: "one".into(),
    }))
    .await
    .expect("send unsubscribe");
    match conn.recv().await {
        Ok(server_message::Kind::Unsubscribed(u)) => assert_eq!(u.doc, "one"),
        other => panic!("expected Unsubscribed, got {other:?}"),
    }
    subscribe(&mut conn, "three").await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_awareness_is_refused_and_not_relayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut alice = Editor::join(&url, "presence", "alice").await.expect("join");
    let mut bob = Editor::join(&url, "presence", "bob").await.expect("join");

    let not_json = presence(&alice, 1, "{bad");
    for update in [Bytes::from_static(GARBAGE), not_json] {
        alice.send_awareness(update).await.expect("send awareness");
        match alice.pump().await.expect("pump") {
            Event::Error(e) => {
                assert_eq!(e.code(), ErrorCode::InvalidAwareness, "{}", e.message);
                assert_eq!(e.doc, "presence");
            }
            other => panic!("expected INVALID_AWARENESS, got {other:?}"),
        }
    }

    // Awareness is relayed in the order it is applied, so if either refused
    // update had been relayed, bob would see it before this one.
    alice
        .send_awareness(presence(&alice, 1, r#"{"cursor":1}"#))
        .await
        .expect("send awareness");
    match next_broadcast(&mut bob).await {
        Event::Awareness(bytes) => {
            let seen: AwarenessUpdate =
                yrs::updates::decoder::Decode::decode_v1(&bytes).expect("valid awareness");
            let entry = seen
                .clients
                .get(&alice.doc().client_id())
                .expect("alice's presence");
            assert_eq!(&*entry.json, r#"{"cursor":1}"#);
        }
        other => panic!("bob got {other:?} first"),
    }
    // A late joiner sees only the valid presence.
    let carol = Editor::join(&url, "presence", "carol").await.expect("join");
    let seen: AwarenessUpdate =
        yrs::updates::decoder::Decode::decode_v1(&carol.synced_awareness).expect("valid awareness");
    assert_eq!(seen.clients.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn undecodable_state_vector_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut conn = Connection::connect(&server.ws_url(), "confused")
        .await
        .expect("connect");
    // An unterminated varint, and a count of 5 entries with none following.
    for sv in [GARBAGE, b"\x05"] {
        conn.send(client_message::Kind::Subscribe(v1::Subscribe {
            doc: "vectors".into(),
            state_vector: Bytes::from_static(sv),
            ..Default::default()
        }))
        .await
        .expect("send subscribe");
        let err = assert_error(conn.recv().await, ErrorCode::InvalidStateVector);
        assert_eq!(err.doc, "vectors");
    }
    // Not subscribed by the refusal: a proper Subscribe still works.
    subscribe(&mut conn, "vectors").await;
    server.stop().await;
}

/// Asserts an HTTP error response: `status`, and the stable JSON shape with `code`.
#[track_caller]
fn assert_api_error(status: u16, body: &str, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    let json: Value = serde_json::from_str(body).expect("error body is JSON");
    assert_eq!(json["error"]["code"], want_code, "{json}");
    assert!(json["error"]["message"].is_string(), "{json}");
}

#[tokio::test]
async fn http_garbage_update_is_422_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let (status, body) = post(
        server.url("/docs/notes/update"),
        insert_update(1, "kept").into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(server.url("/docs/notes/update"), GARBAGE.to_vec()).await;
    assert_api_error(status, &body, 422, "invalid_update");
    assert_eq!(server.text("notes").await, "kept");
    let info = doc_info(&server, "notes").await.expect("listed");
    assert_eq!(info["last_seq"], 1, "{info}");
    // Garbage sent to a document that does not exist does not create it.
    let (status, body) = post(server.url("/docs/fresh/update"), GARBAGE.to_vec()).await;
    assert_api_error(status, &body, 422, "invalid_update");
    let (status, body) = server.get_text("/docs/fresh/text").await;
    assert_api_error(status, &body, 404, "doc_not_found");
    assert!(doc_info(&server, "fresh").await.is_none());
    server.stop().await;
}

#[tokio::test]
async fn http_unknown_doc_is_404() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    for path in ["/docs/no-such-doc/text", "/docs/no-such-doc/state"] {
        let (status, body) = server.get_text(path).await;
        assert_api_error(status, &body, 404, "doc_not_found");
    }
    // Reading did not create it.
    assert_eq!(doc_info(&server, "no-such-doc").await, None);
    server.stop().await;
}

#[tokio::test]
async fn http_invalid_doc_id_is_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    for path in [
        "/docs/a%20b/text",
        "/docs/..%2Fx/state",
        "/docs/a%2F%2Fb/text",
    ] {
        let (status, body) = server.get_text(path).await;
        assert_api_error(status, &body, 400, "invalid_doc_id");
    }
    let (status, body) = post(
        server.url("/docs/a%20b/update"),
        insert_update(1, "x").into(),
    )
    .await;
    assert_api_error(status, &body, 400, "invalid_doc_id");
    server.stop().await;
}

#[tokio::test]
async fn http_unknown_route_is_404_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    for path in ["/nope", "/docs/a/b/text", "/docs/x/unknown"] {
        let (status, body) = server.get_text(path).await;
        assert_api_error(status, &body, 404, "not_found");
    }
    server.stop().await;
}

#[tokio::test]
async fn http_body_over_the_limit_is_413_json() {
    const LIMIT: u32 = 64 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.max_message_bytes = LIMIT).await;
    let update = insert_update(5, &"y".repeat(LIMIT as usize));
    assert!(update.len() > LIMIT as usize);
    let (status, body) = post(server.url("/docs/big/update"), update.into()).await;
    assert_api_error(status, &body, 413, "body_rejected");
    assert_eq!(
        doc_info(&server, "big").await,
        None,
        "refused body created the doc"
    );
    server.stop().await;
}
