//! Access control on every transport: tokens (missing, invalid, expired,
//! for another document), the read role, authorship taken from the token,
//! expiry on open sockets and `Reauth`, `--allowed-origins`, open dev mode,
//! and the start-up refusal to run open on a public address.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use folio::auth::{Auth, AuthSecret, Claims, Role};
use folio::client::{ClientError, Connection, Editor, Event};
use folio::protocol::ysync;
use folio::protocol::{client_message, server_message, v1, ErrorCode};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use reqwest::Method;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact};

use crate::sse::Watcher;
use crate::support::{ChildServer, TestServer, PATIENCE};
use crate::sync::presence;

/// The secret every server in these tests signs with.
pub(crate) const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// How far ahead a short-lived token expires. JWT expiry has whole-second
/// resolution, so this is 2 to 3 s from now: long enough to connect and
/// edit on a loaded machine, short enough to wait for.
const SHORT_TTL_SECS: u64 = 3;

pub(crate) fn secret() -> AuthSecret {
    SECRET.parse().expect("any string is a secret")
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A token signed with the test secret, valid for `ttl_secs` (negative: expired).
fn token(docs: &[&str], role: Role, sub: Option<&str>, ttl_secs: i64) -> String {
    token_signed(&secret(), docs, role, sub, ttl_secs)
}

fn token_signed(
    secret: &AuthSecret,
    docs: &[&str],
    role: Role,
    sub: Option<&str>,
    ttl_secs: i64,
) -> String {
    let claims = Claims {
        docs: docs.iter().map(|d| (*d).to_owned()).collect(),
        role,
        exp: now_secs().saturating_add_signed(ttl_secs),
        sub: sub.map(str::to_owned),
        jti: None,
        iat: None,
    };
    Auth::with_secret(secret)
        .expect("long enough")
        .mint(&claims)
        .expect("mint")
}

/// A long-lived token.
fn valid(docs: &[&str], role: Role, sub: &str) -> String {
    token(docs, role, Some(sub), 3600)
}

pub(crate) async fn start(dir: &std::path::Path) -> TestServer {
    TestServer::start_with(dir, |c| c.auth_secret = Some(secret())).await
}

/// The next `Error` on `conn`, skipping anything else.
async fn next_error(conn: &mut Connection) -> v1::Error {
    loop {
        match conn.recv().await.expect("a message") {
            server_message::Kind::Error(e) => return e,
            _ => continue,
        }
    }
}

/// The next `Error` an editor receives, applying anything else.
pub(crate) async fn editor_error(editor: &mut Editor) -> v1::Error {
    loop {
        if let Event::Error(e) = editor.pump().await.expect("pump") {
            return e;
        }
    }
}

pub(crate) fn code(e: &v1::Error) -> ErrorCode {
    ErrorCode::try_from(e.code).expect("a known code")
}

pub(crate) fn refused_code(result: Result<impl Sized, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Refused(e)) => code(&e),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got success"),
    }
}

async fn subscribe(conn: &mut Connection, doc: &str, token: &str) {
    conn.send(client_message::Kind::Subscribe(v1::Subscribe {
        doc: doc.into(),
        token: token.into(),
        ..Default::default()
    }))
    .await
    .expect("send subscribe");
}

/// GET `path` with an optional bearer token: status and JSON error code (if any).
pub(crate) async fn get(server: &TestServer, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(server.url(path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The ids `GET /docs` lists for `token`.
async fn doc_ids(server: &TestServer, token: &str) -> Vec<String> {
    let (status, body) = get(server, "/docs", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("JSON listing");
    page["docs"]
        .as_array()
        .expect("a docs array")
        .iter()
        .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub(crate) fn error_code_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).expect("JSON error");
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn read_token_receives_and_sends_presence_but_its_updates_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let url = server.ws_url();
    let mut alice = Editor::join_with_token(
        &url,
        "memo",
        "alice",
        &valid(&["memo"], Role::Write, "alice"),
    )
    .await
    .expect("writer joins");
    let mut reader =
        Editor::join_with_token(&url, "memo", "rita", &valid(&["memo"], Role::Read, "rita"))
            .await
            .expect("a read token subscribes");

    alice.type_patches(&[(0, 0, "hello")]).await.expect("type");
    alice.wait_acked().await.expect("writer acked");
    loop {
        if let Event::Remote { .. } = reader.pump().await.expect("pump") {
            break;
        }
    }
    assert_eq!(reader.text(), "hello", "the reader receives updates");

    // Its update is refused with its seq, and nothing is applied anywhere.
    let update = reader.edit(&[(5, 0, " from rita")]);
    let seq = reader.send_update(update).await.expect("send");
    let e = editor_error(&mut reader).await;
    assert_eq!(
        (code(&e), e.doc.as_str(), e.seq),
        (ErrorCode::ReadOnly, "memo", seq)
    );

    // Awareness is allowed and relayed.
    reader
        .send_awareness(presence(&reader, 1, r#"{"user":{"name":"Rita"}}"#))
        .await
        .expect("awareness");
    loop {
        if let Event::Awareness(bytes) = alice.pump().await.expect("pump") {
            assert!(String::from_utf8_lossy(&bytes).contains("Rita"));
            break;
        }
    }
    // The writer is unaffected, and the text has only the writer's edits.
    alice.type_patches(&[(5, 0, "!")]).await.expect("type");
    alice.wait_acked().await.expect("still acked");
    let admin = valid(&["*"], Role::Admin, "root");
    assert_eq!(text_with(&server, "memo", &admin).await, "hello!");
    server.stop().await;
}

/// Only a writer brings a document into being: a read token's `Subscribe`
/// (or `/yjs` socket) for a missing document is refused and creates
/// nothing; once a writer has created it, the same token subscribes.
#[tokio::test]
async fn a_read_token_cannot_create_a_document_by_subscribing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let url = server.ws_url();
    let read = valid(&["ghost"], Role::Read, "rita");
    let admin = valid(&["*"], Role::Admin, "root");

    let mut conn = Connection::connect(&url, "rita").await.expect("hello");
    subscribe(&mut conn, "ghost", &read).await;
    let e = next_error(&mut conn).await;
    assert_eq!(
        (code(&e), e.doc.as_str()),
        (ErrorCode::DocNotFound, "ghost")
    );
    let mut yreader = YConn::open(&server, "ghost", Some(&read)).await;
    yreader.send(ysync::step1(&[0])).await;
    assert_eq!(yreader.close_code().await, 4404);
    let (status, _) = get(&server, "/docs/ghost/text", Some(&admin)).await;
    assert_eq!(status, 404, "nothing was created");

    let mut writer =
        Editor::join_with_token(&url, "ghost", "w", &valid(&["ghost"], Role::Write, "w"))
            .await
            .expect("a writer creates it");
    writer.type_patches(&[(0, 0, "boo")]).await.expect("type");
    writer.wait_acked().await.expect("acked");
    let reader = Editor::join_with_token(&url, "ghost", "rita", &read)
        .await
        .expect("now the reader subscribes");
    assert_eq!(reader.text(), "boo");
    server.stop().await;
}

#[tokio::test]
async fn websocket_tokens_missing_invalid_expired_or_for_other_docs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let url = server.ws_url();

    // No token in Hello: welcome, but every Subscribe needs one.
    let mut conn = Connection::connect(&url, "anon")
        .await
        .expect("hello without token");
    subscribe(&mut conn, "plans", "").await;
    assert_eq!(code(&next_error(&mut conn).await), ErrorCode::Unauthorized);
    subscribe(&mut conn, "plans", "not-a-jwt").await;
    assert_eq!(code(&next_error(&mut conn).await), ErrorCode::Unauthorized);
    let forged = token_signed(
        &"another-secret-of-forty-bytes-0123456789"
            .parse()
            .expect("secret"),
        &["*"],
        Role::Admin,
        Some("mallory"),
        3600,
    );
    subscribe(&mut conn, "plans", &forged).await;
    assert_eq!(code(&next_error(&mut conn).await), ErrorCode::Unauthorized);
    subscribe(
        &mut conn,
        "plans",
        &token(&["plans"], Role::Write, Some("al"), -10),
    )
    .await;
    assert_eq!(code(&next_error(&mut conn).await), ErrorCode::TokenExpired);
    // Prefix patterns: team-a/* covers team-a/x, not team-b/x or team-a.
    let team = valid(&["team-a/*"], Role::Write, "al");
    for doc in ["team-b/x", "team-a"] {
        subscribe(&mut conn, doc, &team).await;
        let e = next_error(&mut conn).await;
        assert_eq!((code(&e), e.doc.as_str()), (ErrorCode::Forbidden, doc));
    }
    subscribe(&mut conn, "team-a/x", &team).await;
    assert!(matches!(
        conn.recv().await,
        Ok(server_message::Kind::Synced(_))
    ));
    // A later token naming another user is refused: one socket, one author.
    subscribe(
        &mut conn,
        "team-a/y",
        &valid(&["team-a/*"], Role::Write, "bob"),
    )
    .await;
    assert_eq!(code(&next_error(&mut conn).await), ErrorCode::Forbidden);

    // A bad token in Hello refuses the handshake and closes with 1008.
    for (bad, expected) in [
        ("garbage".to_owned(), ErrorCode::Unauthorized),
        (
            token(&["plans"], Role::Write, None, -10),
            ErrorCode::TokenExpired,
        ),
    ] {
        match Connection::connect_with_token(&url, "x", &bad).await {
            Err(ClientError::Refused(e)) => assert_eq!(code(&e), expected),
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("a bad Hello token was accepted"),
        }
    }
    // A token in Hello covering one document only.
    let mut conn =
        Connection::connect_with_token(&url, "al", &valid(&["plans"], Role::Write, "al"))
            .await
            .expect("hello with token");
    subscribe(&mut conn, "secrets", "").await;
    assert_eq!(code(&next_error(&mut conn).await), ErrorCode::Forbidden);

    // Nothing refused created a document.
    let admin = valid(&["*"], Role::Admin, "root");
    assert_eq!(doc_ids(&server, &admin).await, ["team-a/x"]);
    server.stop().await;
}

#[tokio::test]
async fn the_token_sub_is_the_author_of_updates_presence_and_activity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.auth_secret = Some(secret());
        c.activity_window_ms = 0;
    })
    .await;
    let watch = valid(&["notes"], Role::Read, "watcher");
    // The editor calls itself "mallory"; its token says "alice".
    let mut editor = Editor::join_with_token(
        &server.ws_url(),
        "notes",
        "mallory",
        &valid(&["notes"], Role::Write, "alice"),
    )
    .await
    .expect("join");
    let mut w = Watcher::connect(
        &server.url(&format!("/docs/notes/events?token={watch}")),
        None,
    )
    .await;
    w.next_of("reset").await;
    editor
        .send_awareness(presence(&editor, 1, r#"{"user":{"name":"Mallory"}}"#))
        .await
        .expect("awareness");
    let (_, joined) = w.next_of("presence").await;
    assert_eq!(joined["user"]["author"], "alice");
    editor.type_patches(&[(0, 0, "hi")]).await.expect("type");
    editor.wait_acked().await.expect("acked");
    let (_, activity) = w.next_of("activity").await;
    assert_eq!(activity["author"], "alice");

    // Over HTTP the author is the token's sub too.
    let update = {
        let doc = folio::client::new_doc();
        let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "x");
        txn.encode_update_v1()
    };
    let resp = reqwest::Client::new()
        .post(server.url("/docs/notes/update"))
        .bearer_auth(valid(&["notes"], Role::Write, "carol"))
        .body(update)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let (_, activity) = w.next_of("activity").await;
    assert_eq!(activity["author"], "carol");
    drop(w);
    editor.go_offline().await;
    server.stop().await;

    // The update log records the same authors.
    let mut authors = log_authors(dir.path(), "notes").await;
    authors.dedup();
    assert_eq!(authors, ["alice", "carol"]);
}

/// Every log entry's author for `doc`, read from sled after the server stopped.
async fn log_authors(dir: &std::path::Path, doc: &str) -> Vec<String> {
    let path = dir.join("sled");
    // sled releases its lock from a background thread after close.
    let db = crate::support::eventually("sled to be free", || {
        let path = path.clone();
        async move { sled::open(path).ok() }
    })
    .await;
    let log = db.open_tree("log").expect("log tree");
    let mut prefix = doc.as_bytes().to_vec();
    prefix.push(0);
    log.scan_prefix(prefix)
        .map(|kv| {
            let (_, value) = kv.expect("read log");
            folio::protocol::store::LogEntry::decode(value.as_ref())
                .expect("log entry")
                .author
        })
        .collect()
}

#[tokio::test]
async fn an_expired_token_loses_its_rights_on_the_open_socket_until_reauth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let url = server.ws_url();
    let short = token(&["pad"], Role::Write, Some("alice"), SHORT_TTL_SECS as i64);
    // Alice keeps the short token; Bob had the same one but refreshed it
    // early; Carol has a long one all along.
    let mut alice = Editor::join_with_token(&url, "pad", "alice", &short)
        .await
        .expect("alice");
    let mut bob = Editor::join_with_token(
        &url,
        "pad",
        "bob",
        &token(&["pad"], Role::Write, Some("bob"), SHORT_TTL_SECS as i64),
    )
    .await
    .expect("bob");
    let mut carol =
        Editor::join_with_token(&url, "pad", "carol", &valid(&["pad"], Role::Write, "carol"))
            .await
            .expect("carol");
    let expires = bob
        .reauth(&valid(&["pad"], Role::Write, "bob"))
        .await
        .expect("early reauth");
    assert!(
        expires > now_secs() * 1000 + 600_000,
        "the new expiry is announced"
    );
    alice.type_patches(&[(0, 0, "a")]).await.expect("type");
    alice.wait_acked().await.expect("acked before expiry");

    // At expiry: one error for the connection, one for the subscription.
    let mut seen = [
        editor_error(&mut alice).await,
        editor_error(&mut alice).await,
    ];
    seen.sort_by(|a, b| a.doc.cmp(&b.doc));
    let seen: Vec<_> = seen.iter().map(|e| (e.doc.as_str(), code(e))).collect();
    assert_eq!(
        seen,
        [
            ("", ErrorCode::TokenExpired),
            ("pad", ErrorCode::TokenExpired)
        ]
    );
    // Updates after it are refused and not applied; so is a new Subscribe.
    let update = alice.edit(&[(1, 0, "LOST")]);
    let seq = alice.send_update(update).await.expect("send");
    let e = editor_error(&mut alice).await;
    assert_eq!((code(&e), e.seq), (ErrorCode::TokenExpired, seq));
    assert_eq!(
        refused_code(alice.resubscribe().await),
        ErrorCode::TokenExpired
    );

    // Bob refreshed in time and Carol never expired: both still edit.
    bob.type_patches(&[(0, 0, "b")]).await.expect("type");
    bob.wait_acked()
        .await
        .expect("bob acked after alice's expiry");
    carol.type_patches(&[(0, 0, "c")]).await.expect("type");
    carol.wait_acked().await.expect("carol acked");
    let admin = valid(&["*"], Role::Admin, "root");
    let text = text_with(&server, "pad", &admin).await;
    assert!(!text.contains("LOST"), "{text}");

    // Reauth on the same socket, subscribe again: the refused edit is in the
    // diff after Synced, and is acknowledged now.
    alice
        .reauth(&valid(&["pad"], Role::Write, "alice"))
        .await
        .expect("reauth");
    alice.resubscribe().await.expect("subscribed again");
    alice.wait_acked().await.expect("the diff is acknowledged");
    let text = text_with(&server, "pad", &admin).await;
    assert!(
        text.contains("LOST") && text.contains('b') && text.contains('c'),
        "{text}"
    );

    // A Reauth can lower the role: then updates are read-only.
    alice
        .reauth(&valid(&["pad"], Role::Read, "alice"))
        .await
        .expect("reauth");
    let update = alice.edit(&[(0, 0, "no")]);
    let seq = alice.send_update(update).await.expect("send");
    let e = editor_error(&mut alice).await;
    assert_eq!((code(&e), e.seq), (ErrorCode::ReadOnly, seq));
    // And a Reauth with a bad token is refused, changing nothing.
    assert_eq!(
        refused_code(alice.reauth("nope").await),
        ErrorCode::Unauthorized
    );
    server.stop().await;
}

/// A y-websocket client reduced to what these tests need.
pub(crate) struct YConn {
    ws: folio::client::WsStream,
}

impl YConn {
    pub(crate) async fn open(server: &TestServer, doc: &str, token: Option<&str>) -> Self {
        let mut url = format!("ws://{}/yjs/{doc}", server.addr);
        if let Some(t) = token {
            url.push_str(&format!("?token={t}"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        Self { ws }
    }

    pub(crate) async fn send(&mut self, frame: Bytes) {
        self.ws.send(Message::Binary(frame)).await.expect("send");
    }

    /// The next y-protocols message, or the close code.
    async fn next(&mut self) -> Result<YMessage, u16> {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    return Ok(YMessage::decode_v1(&b).expect("y-protocols message"))
                }
                Some(Ok(Message::Close(f))) => return Err(f.map_or(1005, |f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(1006),
            }
        }
    }

    pub(crate) async fn close_code(&mut self) -> u16 {
        loop {
            if let Err(code) = self.next().await {
                return code;
            }
        }
    }
}

#[tokio::test]
async fn yjs_checks_the_token_at_upgrade_drops_read_only_updates_and_closes_at_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let url = server.ws_url();
    // Refused at the upgrade with a close code the provider does not retry.
    let expired = token(&["y"], Role::Write, None, -5);
    let other = valid(&["other"], Role::Write, "al");
    for (token, close) in [
        (None, 4401),
        (Some("junk"), 4401),
        (Some(expired.as_str()), 4440),
        (Some(other.as_str()), 4403),
    ] {
        let mut refused = YConn::open(&server, "y", token).await;
        assert_eq!(refused.close_code().await, close, "{token:?}");
    }

    let mut writer = Editor::join_with_token(&url, "y", "w", &valid(&["y"], Role::Write, "w"))
        .await
        .expect("writer");
    writer.type_patches(&[(0, 0, "base")]).await.expect("type");
    writer.wait_acked().await.expect("acked");

    // A read-only provider syncs, and its update is dropped with a
    // "permission denied" auth message; the socket stays open.
    let mut reader = YConn::open(&server, "y", Some(&valid(&["y"], Role::Read, "r"))).await;
    reader.send(ysync::step1(&[0])).await;
    let doc = folio::client::new_doc();
    let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
    loop {
        if let YMessage::Sync(SyncMessage::SyncStep2(u)) = reader.next().await.expect("open") {
            let update = yrs::Update::decode_v1(&u).expect("update");
            doc.transact_mut().apply_update(update).expect("apply");
            break;
        }
    }
    assert_eq!(text.get_string(&doc.transact()), "base");
    let edit = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "READER ");
        txn.encode_update_v1()
    };
    reader.send(ysync::update(&edit)).await;
    loop {
        if let YMessage::Auth(Some(reason)) = reader.next().await.expect("still open") {
            assert!(reason.contains("read-only"), "{reason}");
            break;
        }
    }
    // It still receives updates, and the document never got its edit.
    writer.type_patches(&[(4, 0, "!")]).await.expect("type");
    writer.wait_acked().await.expect("acked");
    loop {
        if let YMessage::Sync(SyncMessage::Update(_)) = reader.next().await.expect("open") {
            break;
        }
    }
    assert_eq!(
        text_with(&server, "y", &valid(&["y"], Role::Read, "x")).await,
        "base!"
    );

    // At expiry the socket closes with 4440.
    let short = token(&["y"], Role::Write, Some("s"), SHORT_TTL_SECS as i64);
    let mut expiring = YConn::open(&server, "y", Some(&short)).await;
    expiring.send(ysync::step1(&[0])).await;
    assert_eq!(expiring.close_code().await, 4440);
    // The writer never noticed.
    writer.type_patches(&[(0, 0, ">")]).await.expect("type");
    writer.wait_acked().await.expect("acked");
    server.stop().await;
}

/// The server's text of `doc`, read with `token`.
async fn text_with(server: &TestServer, doc: &str, token: &str) -> String {
    let (status, body) = get(server, &format!("/docs/{doc}/text"), Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn http_and_sse_need_a_token_that_covers_the_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let write = valid(&["open/*"], Role::Write, "w");
    let read = valid(&["open/*"], Role::Read, "r");
    let body = {
        let doc = folio::client::new_doc();
        let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "v1");
        txn.encode_update_v1()
    };
    let post = |token: Option<String>, doc: &'static str| {
        let mut req = reqwest::Client::new()
            .post(server.url(&format!("/docs/{doc}/update")))
            .body(body.clone());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.expect("post");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        }
    };
    // Writes: none, read-only and uncovered are refused; nothing is created.
    for (token, doc, status, code) in [
        (None, "open%2Fa", 401, "unauthorized"),
        (Some(read.clone()), "open%2Fa", 403, "read_only"),
        (Some(write.clone()), "closed", 403, "forbidden"),
    ] {
        let (got, body) = post(token, doc).await;
        assert_eq!(
            (got, error_code_of(&body).as_str()),
            (status, code),
            "{doc}"
        );
    }
    let admin = valid(&["*"], Role::Admin, "root");
    assert!(doc_ids(&server, &admin).await.is_empty());
    assert_eq!(post(Some(write.clone()), "open%2Fa").await.0, 200);
    assert_eq!(post(Some(admin.clone()), "closed").await.0, 200);

    // Reads: header or query; 401 with a challenge, 403 outside the token.
    let resp = reqwest::get(server.url("/docs/open%2Fa/text"))
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let expired = token(&["*"], Role::Admin, None, -5);
    for (path, token, status, code) in [
        ("/docs/open%2Fa/text", Some("junk"), 401, "unauthorized"),
        (
            "/docs/open%2Fa/text",
            Some(expired.as_str()),
            401,
            "token_expired",
        ),
        ("/docs/closed/text", Some(read.as_str()), 403, "forbidden"),
        ("/docs/closed/state", Some(read.as_str()), 403, "forbidden"),
        ("/docs/closed/events", Some(read.as_str()), 403, "forbidden"),
        (
            "/docs/closed/text/stream",
            Some(read.as_str()),
            403,
            "forbidden",
        ),
        (
            "/events?docs=open%2Fa,closed",
            Some(read.as_str()),
            403,
            "forbidden",
        ),
        // The all-documents feed and the metrics are for admins over `*` only.
        ("/events", Some(read.as_str()), 403, "forbidden"),
        ("/metrics", None, 401, "unauthorized"),
        ("/metrics", Some(write.as_str()), 403, "forbidden"),
        (
            "/events",
            Some(valid(&["open/*"], Role::Admin, "a").as_str()),
            403,
            "forbidden",
        ),
    ] {
        let (got, body) = get(&server, path, token).await;
        assert_eq!(
            (got, error_code_of(&body).as_str()),
            (status, code),
            "{path}"
        );
    }
    let (status, text) = get(&server, &format!("/docs/open%2Fa/text?token={read}"), None).await;
    assert_eq!((status, text.as_str()), (200, "v1"));
    let (status, metrics) = get(&server, "/metrics", Some(&admin)).await;
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("folio_documents_resident"), "{metrics}");
    // The listing shows only what the token covers.
    assert_eq!(doc_ids(&server, &read).await, ["open/a"]);
    let mut all = Watcher::connect(&server.url(&format!("/events?token={admin}")), None).await;
    all.next_of("reset").await;

    // An SSE stream ends when its token expires.
    let short = token(&["open/*"], Role::Read, None, SHORT_TTL_SECS as i64);
    let resp = reqwest::get(server.url(&format!("/docs/open%2Fa/events?token={short}")))
        .await
        .expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended at expiry");
    server.stop().await;
}

#[tokio::test]
async fn history_and_document_management_check_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let read = valid(&["h/*"], Role::Read, "r");
    let write = valid(&["h/*"], Role::Write, "w");
    let admin = valid(&["h/*"], Role::Admin, "a");
    let send = |method: Method, path: &str, token: &str, body: &'static str| {
        let req = reqwest::Client::new()
            .request(method, server.url(path))
            .bearer_auth(token)
            .body(body);
        async move {
            let resp = req.send().await.expect("http");
            let status = resp.status().as_u16();
            let body = resp.text().await.expect("body");
            (status, error_code_of_or_empty(&body))
        }
    };
    // Creating needs write.
    let created = send(Method::PUT, "/docs/h%2Fa", &read, r#"{"text":"one"}"#).await;
    assert_eq!(created, (403, "read_only".into()));
    assert_eq!(
        send(Method::PUT, "/docs/h%2Fa", &write, r#"{"text":"one"}"#)
            .await
            .0,
        201
    );
    // Labelling a version needs write; reading history needs read.
    assert_eq!(
        send(
            Method::POST,
            "/docs/h%2Fa/versions",
            &read,
            r#"{"label":"x"}"#
        )
        .await
        .0,
        403
    );
    let (status, _) = send(
        Method::POST,
        "/docs/h%2Fa/versions",
        &write,
        r#"{"label":"v"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let (status, versions) = get(&server, "/docs/h%2Fa/versions", Some(&read)).await;
    assert_eq!(status, 200, "{versions}");
    let first: Value = serde_json::from_str(&versions).expect("versions");
    let v = first["versions"][0]["id"].as_u64().expect("a version id");
    for path in [
        format!("/docs/h%2Fa/versions/{v}/text"),
        format!("/docs/h%2Fa/at?seq={v}"),
        format!("/docs/h%2Fa/diff?from=0&to={v}"),
    ] {
        assert_eq!(get(&server, &path, Some(&read)).await.0, 200, "{path}");
        let outside = valid(&["other"], Role::Admin, "o");
        assert_eq!(get(&server, &path, Some(&outside)).await.0, 403, "{path}");
        assert_eq!(get(&server, &path, None).await.0, 401, "{path}");
    }
    // Copy: read on the source, write on the target.
    let (to_b, to_outside) = (r#"{"to":"h/b"}"#, r#"{"to":"elsewhere"}"#);
    assert_eq!(
        send(Method::POST, "/docs/h%2Fa/copy", &write, to_outside).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        send(Method::POST, "/docs/h%2Fa/copy", &read, to_b).await,
        (403, "read_only".into())
    );
    assert_eq!(
        send(Method::POST, "/docs/h%2Fa/copy", &write, to_b).await.0,
        201
    );
    // Restore and delete are admin-only, and a refusal changes nothing.
    let restore = r#"{"version":1}"#;
    assert_eq!(
        send(Method::POST, "/docs/h%2Fa/restore", &write, restore).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        send(Method::DELETE, "/docs/h%2Fa", &write, "").await,
        (403, "forbidden".into())
    );
    assert_eq!(text_with(&server, "h%2Fa", &read).await, "one");
    assert_eq!(send(Method::DELETE, "/docs/h%2Fa", &admin, "").await.0, 204);
    assert_eq!(doc_ids(&server, &admin).await, ["h/b"]);
    server.stop().await;
}

fn error_code_of_or_empty(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn other_origins_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let upgrade = |origin: Option<&'static str>, path: &'static str| {
        let mut req = format!("ws://{}{path}", server.addr)
            .into_client_request()
            .expect("request");
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", o.parse().expect("header"));
        }
        tokio_tungstenite::connect_async(req)
    };
    for path in ["/ws", "/yjs/doc"] {
        match upgrade(Some("https://evil.example"), path).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403, "{path}");
            }
            Err(e) => panic!("{path}: expected 403, got {e}"),
            Ok(_) => panic!("{path}: a foreign origin was upgraded"),
        }
        assert!(
            upgrade(Some("https://app.example"), path).await.is_ok(),
            "{path}"
        );
        assert!(
            upgrade(None, path).await.is_ok(),
            "{path} without an Origin"
        );
    }
    let resp = reqwest::Client::new()
        .get(server.url("/events"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(
        error_code_of(&resp.text().await.expect("body")),
        "origin_not_allowed"
    );
    server.stop().await;
}

#[tokio::test]
async fn open_dev_mode_ignores_tokens_and_answers_reauth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut editor = Editor::join_with_token(&server.ws_url(), "dev", "dev", "whatever")
        .await
        .expect("join in open mode");
    editor.type_patches(&[(0, 0, "ok")]).await.expect("type");
    editor.wait_acked().await.expect("acked");
    assert_eq!(editor.reauth("anything").await.expect("reauthed"), 0);
    assert_eq!(server.text("dev").await, "ok");
    // The all-documents feed, admin-only with tokens, is open too.
    let resp = reqwest::get(server.url("/events")).await.expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    drop(resp);
    server.stop().await;
}

#[tokio::test]
async fn the_binary_refuses_to_run_open_on_a_public_address_and_mints_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_folio"))
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("FOLIO_AUTH_SECRET")
        .env_remove("FOLIO_INSECURE_OPEN")
        .output()
        .expect("run folio");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--insecure-open") && stderr.contains("--auth-secret"),
        "{stderr}"
    );

    // `folio token` signs with FOLIO_AUTH_SECRET; a server with that secret accepts it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_folio"))
        .args([
            "token", "--doc", "cli/*", "--role", "write", "--ttl", "1h", "--sub", "cli-user",
        ])
        .env("FOLIO_AUTH_SECRET", SECRET)
        .output()
        .expect("run folio token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let server = ChildServer::spawn(dir.path(), &["--auth-secret", SECRET]);
    let mut editor = Editor::join_with_token(&server.ws_url(), "cli/doc", "someone", &minted)
        .await
        .expect("the minted token works");
    editor.type_patches(&[(0, 0, "x")]).await.expect("type");
    editor.wait_acked().await.expect("acked");
    let uncovered =
        Editor::join_with_token(&server.ws_url(), "elsewhere", "someone", &minted).await;
    assert_eq!(refused_code(uncovered), ErrorCode::Forbidden);
    assert!(server.terminate().success());
}
