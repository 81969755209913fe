//! What happens to a connection at the transport level: an oversized frame
//! gets its 1009 close frame (not a reset that throws it away), and an SSE
//! watcher that stops reading is closed after the stall timeout, freeing its
//! connection slot.

use bytes::Bytes;
use folio::client::{Connection, WsStream};
use folio::protocol::{client_message, server_message, v1, ysync, ClientMessage};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use yrs::{Doc, Text, Transact};

use crate::http_api::post;
use crate::limits::metric;
use crate::support::{eventually, ChildServer, PATIENCE};

/// The message limit the size tests run with.
const LIMIT: usize = 64 * 1024;

/// Far over any buffer on the way: most of it is still unsent when the
/// server refuses the frame from its header.
const HUGE: usize = 20 * 1024 * 1024;

/// A Yjs update inserting `len` characters into a fresh doc.
fn insert_of(client: u64, len: usize) -> Vec<u8> {
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, &"x".repeat(len));
    txn.encode_update_v1()
}

/// The first frame `frame(n)` of exactly `size` bytes, for growing `n`
/// (the encoding grows by one byte per character, with an occasional
/// extra byte where a length varint gets longer), with its `n`.
fn frame_of_size(size: usize, frame: impl Fn(usize) -> Vec<u8>) -> (usize, Vec<u8>) {
    // frame(1) carries every byte of overhead but one character's.
    let overhead = frame(1).len() - 1;
    (size.saturating_sub(overhead + 16)..size)
        .map(|n| (n, frame(n)))
        .find(|(_, f)| f.len() == size)
        .unwrap_or_else(|| panic!("no frame of exactly {size} bytes"))
}

/// A `/ws` update message of exactly `size` bytes.
fn ws_update_of_size(size: usize, seq: u64) -> Vec<u8> {
    frame_of_size(size, |n| {
        ClientMessage {
            kind: Some(client_message::Kind::Update(v1::Update {
                doc: "sized".into(),
                update: Bytes::from(insert_of(seq, n)),
                seq,
            })),
        }
        .encode_to_vec()
    })
    .1
}

/// Sends `frame`, then reads the close frame the server answers with. The
/// client sends all of it before reading, as a simple client does: the
/// server must take the rest of a refused message rather than reset the
/// connection (the send fails with ECONNRESET, and browsers report 1006),
/// and a connection that ends without a close frame fails the test too.
async fn close_after_sending(mut ws: WsStream, frame: Vec<u8>) -> (u16, String) {
    let len = frame.len();
    ws.send(Message::Binary(frame.into()))
        .await
        .unwrap_or_else(|e| panic!("sending {len} bytes: the server reset the connection: {e}"));
    tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("the connection failed before its close frame: {e}"),
                None => panic!("the connection ended without a close frame"),
            }
        }
    })
    .await
    .expect("a close frame in time")
}

#[track_caller]
fn assert_too_big(what: &str, (code, reason): (u16, String)) {
    assert_eq!(code, 1009, "{what}: closed with {code} ({reason})");
    assert!(
        reason.contains("message too big") && reason.contains(&format!("limit {LIMIT} bytes")),
        "{what}: the reason names the limit: {reason:?}"
    );
}

/// A `/ws` connection that has said `Hello` and subscribed to `sized`,
/// as its raw socket.
async fn ws_subscribed(server: &ChildServer) -> Connection {
    let mut conn = Connection::connect(&server.ws_url(), "sizer")
        .await
        .expect("connect /ws");
    assert_eq!(conn.limits.max_message_bytes as usize, LIMIT);
    conn.send(client_message::Kind::Subscribe(v1::Subscribe {
        doc: "sized".into(),
        ..Default::default()
    }))
    .await
    .expect("subscribe");
    match conn.recv().await {
        Ok(server_message::Kind::Synced(_)) => conn,
        other => panic!("expected Synced, got {other:?}"),
    }
}

#[tokio::test]
async fn ws_messages_at_the_limit_are_served_and_larger_ones_get_1009_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = LIMIT.to_string();
    let server = ChildServer::spawn(dir.path(), &["--max-message-bytes", &limit]);

    // Exactly at the limit: applied and acknowledged, and the socket goes on.
    let mut conn = ws_subscribed(&server).await;
    conn.send_raw(Message::Binary(ws_update_of_size(LIMIT, 1).into()))
        .await
        .expect("send a frame at the limit");
    loop {
        match conn.recv().await {
            Ok(server_message::Kind::Ack(ack)) => {
                assert_eq!(ack.seq, 1);
                break;
            }
            Ok(server_message::Kind::Update(_) | server_message::Kind::Awareness(_)) => {}
            other => panic!("expected the ack of the frame at the limit, got {other:?}"),
        }
    }
    conn.send(client_message::Kind::Ping(v1::Ping { nonce: 9 }))
        .await
        .expect("ping");
    match conn.recv().await {
        Ok(server_message::Kind::Pong(p)) => assert_eq!(p.nonce, 9),
        other => panic!("expected a pong after the frame at the limit, got {other:?}"),
    }

    // One byte over, and 20 MiB over: each gets its close frame.
    let over = ws_update_of_size(LIMIT + 1, 2);
    for (what, frame) in [("limit + 1", over), ("20 MiB", vec![0u8; HUGE])] {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .expect("connect /ws");
        assert_too_big(what, close_after_sending(ws, frame).await);
    }
    // After a Hello too, on a socket that is following a document.
    let conn = ws_subscribed(&server).await;
    let ws = conn.into_ws();
    assert_too_big(
        "20 MiB after Hello",
        close_after_sending(ws, vec![0u8; HUGE]).await,
    );
    assert!(server.terminate().success());
}

#[tokio::test]
async fn yjs_messages_at_the_limit_are_served_and_larger_ones_get_1009_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = LIMIT.to_string();
    let server = ChildServer::spawn(dir.path(), &["--max-message-bytes", &limit]);
    let url = format!("ws://{}/yjs/sized", server.addr);

    // Exactly at the limit: applied, and the socket goes on.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect /yjs");
    let (chars, at_limit) = frame_of_size(LIMIT, |n| ysync::update(&insert_of(1, n)).to_vec());
    ws.send(Message::Binary(at_limit.into()))
        .await
        .expect("send a frame at the limit");
    server_text_is(&server, "sized", "x".repeat(chars)).await;
    ws.send(Message::Binary(
        ysync::update(&insert_of(2, 3)).to_vec().into(),
    ))
    .await
    .expect("the socket is still open");
    server_text_is(&server, "sized", "x".repeat(chars + 3)).await;

    let (_, over) = frame_of_size(LIMIT + 1, |n| ysync::update(&insert_of(3, n)).to_vec());
    for (what, frame) in [("limit + 1", over), ("20 MiB", vec![0u8; HUGE])] {
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect /yjs");
        assert_too_big(what, close_after_sending(ws, frame).await);
    }
    assert!(server.terminate().success());
}

/// Waits until the server's text of `doc` is `want`.
async fn server_text_is(server: &ChildServer, doc: &str, want: String) {
    let url = server.url(&format!("/docs/{doc}/text"));
    eventually(&format!("{doc} holds {} characters", want.len()), || {
        let (url, want) = (url.clone(), want.clone());
        async move {
            let resp = reqwest::get(url).await.ok()?;
            let text = resp.text().await.ok()?;
            (text == want).then_some(())
        }
    })
    .await;
}

/// `GET path` written by hand on a socket with a small receive buffer,
/// which the test then never reads.
async fn silent_watcher(server: &ChildServer, path: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut tcp = socket.connect(server.addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    tcp.write_all(request.as_bytes()).await.expect("send GET");
    tcp
}

#[tokio::test]
async fn an_sse_watcher_that_stops_reading_is_closed_after_the_stall_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One long-lived connection in all: the watcher's slot is the only one.
    let server = ChildServer::spawn(
        dir.path(),
        &[
            "--stall-timeout-secs",
            "1",
            "--max-connections",
            "1",
            "--max-doc-bytes",
            "0",
        ],
    );
    let update_url = server.url("/docs/watched/update");
    let metrics_url = server.url("/metrics");
    const STALLED: &str = "folio_connections_closed_total{reason=\"sse_stalled\"}";
    let writer = Doc::with_client_id(7);
    let text = writer.get_or_insert_text(folio::doc::TEXT_NAME);
    let edit = move || {
        let mut txn = writer.transact_mut();
        text.insert(&mut txn, 0, &"y".repeat(16 * 1024));
        txn.encode_update_v1()
    };
    let (status, body) = post(update_url.clone(), edit()).await;
    assert_eq!(status, 200, "first edit: {body}");

    let _watcher = silent_watcher(&server, "/docs/watched/text/stream").await;
    let stream_url = server.url("/docs/watched/text/stream");
    eventually("the watcher holds the only slot", || {
        let url = stream_url.clone();
        async move {
            let resp = reqwest::get(url).await.ok()?;
            (resp.status() == 503).then_some(())
        }
    })
    .await;

    // Edits until the server's buffers for the watcher are full and it
    // has been closed for taking nothing.
    let before = metric(&metrics_url, STALLED).await;
    eventually("the stalled watcher closed and counted", || {
        let body = edit();
        let (update_url, metrics_url) = (update_url.clone(), metrics_url.clone());
        async move {
            let (status, answer) = post(update_url, body).await;
            assert_eq!(status, 200, "edit: {answer}");
            (metric(&metrics_url, STALLED).await > before).then_some(())
        }
    })
    .await;

    // Its slot is free: a new watcher is admitted and gets the text.
    let resp = eventually("a new watcher admitted", || {
        let url = stream_url.clone();
        async move {
            let resp = reqwest::get(url).await.ok()?;
            (resp.status() == 200).then_some(resp)
        }
    })
    .await;
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(PATIENCE, body.next())
        .await
        .expect("the new watcher hears something")
        .expect("a chunk")
        .expect("readable");
    assert!(!first.is_empty());
    assert!(server.terminate().success());
}
