//! The REST API: health, listing, text and state reads, and update writes
//! that are durable when answered and reach WebSocket subscribers.

use folio::client::{new_doc, Editor, Event};
use folio::doc::TEXT_NAME;
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

use crate::support::{eventually, ChildServer, TestServer};

/// POSTs `body` to `url`; the status and the body as text.
pub async fn post(url: String, body: Vec<u8>) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .expect("http post");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// Every document as listed by `GET /docs`.
pub async fn list_docs(server: &TestServer) -> Vec<Value> {
    let (status, body) = server.get_text("/docs").await;
    assert_eq!(status, 200, "GET /docs: {body}");
    let page: Value = serde_json::from_str(&body).expect("GET /docs answers JSON");
    page["docs"].as_array().expect("a docs array").clone()
}

/// The `GET /docs` entry of `doc`, if it is listed.
pub async fn doc_info(server: &TestServer, doc: &str) -> Option<Value> {
    list_docs(server).await.into_iter().find(|d| d["id"] == doc)
}

/// Inserts `text` at `pos` of `doc`'s content; returns that edit's update.
fn insert(doc: &Doc, pos: u32, text: &str) -> Vec<u8> {
    let content = doc.get_or_insert_text(TEXT_NAME);
    let mut txn = doc.transact_mut();
    content.insert(&mut txn, pos, text);
    txn.encode_update_v1()
}

/// Asserts a 200 answer of exactly `{"doc_seq": n}` to an update POST; returns n.
#[track_caller]
fn expect_doc_seq(answer: (u16, String)) -> u64 {
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON answer");
    let seq = json["doc_seq"].as_u64().expect("doc_seq is a number");
    assert_eq!(
        json,
        json!({ "doc_seq": seq }),
        "nothing else in the answer"
    );
    seq
}

/// Pumps `editor` until the remote update with `doc_seq` has been applied.
async fn await_remote(editor: &mut Editor, doc_seq: u64) {
    loop {
        match editor.pump().await.expect("pump") {
            Event::Remote { doc_seq: got } if got == doc_seq => return,
            Event::Remote { doc_seq: got } => assert!(got < doc_seq, "skipped past {doc_seq}"),
            Event::Error(e) => panic!("refused: {e:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let (status, body) = server.get_text("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json, json!({ "status": "ok" }));
    server.stop().await;
}

#[tokio::test]
async fn docs_lists_every_doc_with_live_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    assert_eq!(list_docs(&server).await, Vec::<Value>::new());

    let url = server.ws_url();
    let mut alice = Editor::join(&url, "alpha", "alice").await.expect("join");
    // text_len counts UTF-16 code units, as browsers do: the emoji is two.
    alice
        .type_patches(&[(0, 0, "naïve 😀")])
        .await
        .expect("type");
    alice.type_patches(&[(0, 0, ">")]).await.expect("type");
    alice.wait_acked().await.expect("acked");
    let seq =
        expect_doc_seq(post(server.url("/docs/beta/update"), insert(&new_doc(), 0, "b")).await);
    assert_eq!(seq, 1);

    let docs = list_docs(&server).await;
    let ids: Vec<&str> = docs.iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let alpha = &docs[0];
    let units = alice.text().encode_utf16().count();
    assert_eq!(units, 9);
    assert_eq!(alpha["text_len"], units, "{alpha}");
    assert_eq!(alpha["subscribers"], 1, "{alpha}");
    assert_eq!(alpha["last_seq"], 2, "{alpha}");
    let beta = &docs[1];
    assert_eq!(beta["text_len"], 1, "{beta}");
    assert_eq!(beta["subscribers"], 0, "{beta}");
    assert_eq!(beta["last_seq"], 1, "{beta}");

    // Subscribers are live: a joiner counts once synced, a leaver goes.
    let bob = Editor::join(&url, "alpha", "bob").await.expect("join");
    let alpha = doc_info(&server, "alpha").await.expect("listed");
    assert_eq!(alpha["subscribers"], 2, "{alpha}");
    alice.go_offline().await;
    eventually("alice's departure to be counted", || async {
        let alpha = doc_info(&server, "alpha").await.expect("listed");
        (alpha["subscribers"] == 1).then_some(())
    })
    .await;
    assert_eq!(bob.text(), ">naïve 😀");
    server.stop().await;
}

#[tokio::test]
async fn text_returns_the_document_as_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut alice = Editor::join(&server.ws_url(), "prose", "alice")
        .await
        .expect("join");
    alice
        .type_patches(&[(0, 0, "Grüße, 世界 🌍")])
        .await
        .expect("type");
    alice.type_patches(&[(0, 6, "Hi")]).await.expect("type");
    alice.wait_acked().await.expect("acked");
    let resp = reqwest::get(server.url("/docs/prose/text"))
        .await
        .expect("http get");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(resp.text().await.expect("body"), "Hi 世界 🌍");
    assert_eq!(alice.text(), "Hi 世界 🌍");
    server.stop().await;
}

#[tokio::test]
async fn state_rebuilds_the_same_text_in_a_fresh_doc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut alice = Editor::join(&url, "stateful", "alice").await.expect("join");
    let mut bob = Editor::join(&url, "stateful", "bob").await.expect("join");
    alice
        .type_patches(&[(0, 0, "the quick fox")])
        .await
        .expect("type");
    alice.wait_acked().await.expect("acked");
    await_remote(&mut bob, 1).await;
    bob.type_patches(&[(4, 6, "lazy "), (12, 0, " jumps")])
        .await
        .expect("type");
    bob.wait_acked().await.expect("acked");
    let text = server.text("stateful").await;
    assert_eq!(text, "the lazy fox jumps");

    let state = server.get_bytes("/docs/stateful/state").await;
    let fresh = new_doc();
    let content = fresh.get_or_insert_text(TEXT_NAME);
    let update = Update::decode_v1(&state).expect("state is a Yjs v1 update");
    fresh
        .transact_mut()
        .apply_update(update)
        .expect("state applies");
    assert_eq!(content.get_string(&fresh.transact()), text);
    server.stop().await;
}

#[tokio::test]
async fn posted_update_is_acked_broadcast_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut alice = Editor::join(&server.ws_url(), "posted", "alice")
        .await
        .expect("join");

    let writer = new_doc();
    let seq = expect_doc_seq(
        post(
            server.url("/docs/posted/update"),
            insert(&writer, 0, "from http"),
        )
        .await,
    );
    assert_eq!(seq, 1);
    await_remote(&mut alice, 1).await;
    assert_eq!(alice.text(), "from http");
    let seq = expect_doc_seq(
        post(
            server.url("/docs/posted/update"),
            insert(&writer, 9, ", twice"),
        )
        .await,
    );
    assert_eq!(seq, 2);
    await_remote(&mut alice, 2).await;
    assert_eq!(alice.text(), "from http, twice");

    alice.go_offline().await;
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    assert_eq!(server.text("posted").await, "from http, twice");
    let info = doc_info(&server, "posted").await.expect("listed");
    assert_eq!(info["last_seq"], 2, "{info}");
    // The restarted server holds the state the next edit depends on, and
    // numbers on from where it stopped.
    let seq =
        expect_doc_seq(post(server.url("/docs/posted/update"), insert(&writer, 0, "> ")).await);
    assert_eq!(seq, 3);
    assert_eq!(server.text("posted").await, "> from http, twice");
    server.stop().await;
}

#[tokio::test]
async fn posted_update_is_durable_when_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = ChildServer::spawn(dir.path(), &[]);
    let writer = new_doc();
    let seq = expect_doc_seq(
        post(
            child.url("/docs/crashy/update"),
            insert(&writer, 0, "acked before the crash"),
        )
        .await,
    );
    assert_eq!(seq, 1);
    // No graceful shutdown: only what was durable when answered survives.
    child.kill9();
    let server = TestServer::start(dir.path()).await;
    assert_eq!(server.text("crashy").await, "acked before the crash");
    server.stop().await;
}

#[tokio::test]
async fn doc_ids_with_slashes_are_percent_encoded_in_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut alice = Editor::join(&server.ws_url(), "team/notes", "alice")
        .await
        .expect("join");
    let writer = new_doc();
    let seq = expect_doc_seq(
        post(
            server.url("/docs/team%2Fnotes/update"),
            insert(&writer, 0, "agenda"),
        )
        .await,
    );
    assert_eq!(seq, 1);
    await_remote(&mut alice, 1).await;
    assert_eq!(alice.text(), "agenda");

    // Either case of the escape names the same document.
    for path in ["/docs/team%2Fnotes/text", "/docs/team%2fnotes/text"] {
        assert_eq!(server.get_text(path).await, (200, "agenda".to_owned()));
    }
    let state = server.get_bytes("/docs/team%2Fnotes/state").await;
    assert!(!state.is_empty());
    let ids: Vec<Value> = list_docs(&server)
        .await
        .into_iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, [json!("team/notes")]);
    // Unencoded, the slash splits the path: no such route.
    let (status, body) = server.get_text("/docs/team/notes/text").await;
    assert_eq!(status, 404, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(json["error"]["code"], "not_found");
    server.stop().await;
}
