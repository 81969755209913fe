//! Revocation: tokens revoked by id (`jti`) or by user (`sub`) through
//! `/admin/revocations` or `folio revoke`, reaching open `/ws`, `/yjs` and
//! SSE connections, refused on REST, admin-only, and durable across a crash.

use std::process::Command;

use folio::auth::{Auth, Claims, Role};
use folio::client::{Editor, Event};
use folio::protocol::{client_message, server_message, v1, ysync, ErrorCode};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::auth::{
    code, editor_error, error_code_of, get, now_secs, refused_code, secret, start, YConn, SECRET,
};
use crate::support::{eventually, ChildServer, PATIENCE};

/// An hour-long token with `iat` now and, if given, a `jti`.
fn minted(docs: &[&str], role: Role, sub: Option<&str>, jti: Option<&str>) -> String {
    let claims = Claims {
        docs: docs.iter().map(|d| (*d).to_owned()).collect(),
        role,
        exp: now_secs() + 3600,
        sub: sub.map(str::to_owned),
        jti: jti.map(str::to_owned),
        iat: Some(now_secs()),
    };
    Auth::with_secret(&secret())
        .expect("long enough")
        .mint(&claims)
        .expect("mint")
}

fn admin() -> String {
    minted(&["*"], Role::Admin, Some("root"), Some("root-token"))
}

/// `method` on `base + path` with a bearer token and a JSON body: status and JSON answer.
async fn call(
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn revoke(base: &str, bearer: &str, body: Value) -> (u16, Value) {
    let url = format!("{base}/admin/revocations");
    call(reqwest::Method::POST, url, Some(bearer), Some(body)).await
}

/// Status and error code of `GET base/docs` with `bearer`.
async fn list_docs(base: &str, bearer: &str) -> (u16, String) {
    let (status, v) = call(
        reqwest::Method::GET,
        format!("{base}/docs"),
        Some(bearer),
        None,
    )
    .await;
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn revoking_a_jti_ends_the_open_sockets_rights_until_reauth_and_spares_other_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let (url, base) = (server.ws_url(), server.url(""));
    let alice_token = minted(&["pad"], Role::Write, Some("alice"), Some("alice-1"));
    let mut alice = Editor::join_with_token(&url, "pad", "alice", &alice_token)
        .await
        .expect("alice");
    let bob_token = minted(&["pad"], Role::Write, Some("bob"), Some("bob-1"));
    let mut bob = Editor::join_with_token(&url, "pad", "bob", &bob_token)
        .await
        .expect("bob");
    alice.type_patches(&[(0, 0, "a")]).await.expect("type");
    alice
        .wait_acked()
        .await
        .expect("acked before the revocation");

    let (status, body) = revoke(&base, &admin(), json!({ "jti": "alice-1" })).await;
    assert_eq!((status, &body["jti"]), (201, &json!("alice-1")), "{body}");
    // The open socket is told at once: one error for the connection, one
    // for the subscription the revocation ended.
    let mut seen = [
        editor_error(&mut alice).await,
        editor_error(&mut alice).await,
    ];
    seen.sort_by(|a, b| a.doc.cmp(&b.doc));
    let seen: Vec<_> = seen.iter().map(|e| (e.doc.as_str(), code(e))).collect();
    assert_eq!(
        seen,
        [
            ("", ErrorCode::TokenRevoked),
            ("pad", ErrorCode::TokenRevoked)
        ]
    );

    // Bob's token is another: he still edits. Alice no longer receives his
    // updates: her Pong, queued after his update was relayed to every
    // subscriber, comes with no update before it.
    bob.type_patches(&[(0, 0, "B")]).await.expect("type");
    bob.wait_acked()
        .await
        .expect("bob acked after the revocation");
    alice
        .conn_mut()
        .expect("online")
        .send(client_message::Kind::Ping(v1::Ping { nonce: 7 }))
        .await
        .expect("ping");
    loop {
        match alice.pump().await.expect("pump") {
            Event::Remote { .. } | Event::Resynced { .. } => {
                panic!("a revoked subscription still receives updates")
            }
            Event::Other(server_message::Kind::Pong(_)) => break,
            _ => continue,
        }
    }
    // Her updates are refused and not applied; so are a new Subscribe,
    // REST with the revoked token, and a Reauth with it.
    let update = alice.edit(&[(0, 0, "LOST")]);
    let seq = alice.send_update(update).await.expect("send");
    let e = editor_error(&mut alice).await;
    assert_eq!((code(&e), e.seq), (ErrorCode::TokenRevoked, seq));
    assert_eq!(
        refused_code(alice.resubscribe().await),
        ErrorCode::TokenRevoked
    );
    let (status, body) = get(&server, "/docs/pad/text", Some(&alice_token)).await;
    assert_eq!(
        (status, error_code_of(&body).as_str()),
        (401, "token_revoked")
    );
    assert_eq!(
        refused_code(alice.reauth(&alice_token).await),
        ErrorCode::TokenRevoked
    );
    let (status, _) = get(&server, "/docs/pad/text", Some(&bob_token)).await;
    assert_eq!(status, 200);

    // A fresh token (another jti) restores her rights on the same socket.
    let fresh = minted(&["pad"], Role::Write, Some("alice"), Some("alice-2"));
    alice.reauth(&fresh).await.expect("reauth");
    alice.resubscribe().await.expect("subscribed again");
    alice
        .wait_acked()
        .await
        .expect("the refused edit is acked now");
    let (status, text) = get(&server, "/docs/pad/text", Some(&fresh)).await;
    assert_eq!(status, 200);
    assert!(text.contains("LOST") && text.contains('B'), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn revoking_a_sub_closes_its_yjs_socket_and_spares_tokens_minted_afterwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let writer_token = minted(&["y"], Role::Write, Some("w"), None);
    let mut writer = Editor::join_with_token(&server.ws_url(), "y", "w", &writer_token)
        .await
        .expect("writer");
    writer.type_patches(&[(0, 0, "base")]).await.expect("type");
    writer.wait_acked().await.expect("acked");
    let carol = minted(&["y"], Role::Write, Some("carol"), None);
    let mut provider = YConn::open(&server, "y", Some(&carol)).await;
    provider.send(ysync::step1(&[0])).await;

    let (status, body) = revoke(&server.url(""), &admin(), json!({ "sub": "carol" })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(provider.close_code().await, 4441);
    // Refused at the upgrade too; another user's socket never noticed.
    let mut again = YConn::open(&server, "y", Some(&carol)).await;
    assert_eq!(again.close_code().await, 4441);
    writer.type_patches(&[(0, 0, ">")]).await.expect("type");
    writer.wait_acked().await.expect("acked");

    // A token for carol issued after the revocation's second works.
    let fresh = eventually("a token for carol minted after the revocation", || async {
        let token = minted(&["y"], Role::Read, Some("carol"), None);
        let (status, _) = get(&server, "/docs/y/text", Some(&token)).await;
        (status == 200).then_some(token)
    })
    .await;
    let (status, body) = get(&server, "/docs/y/text", Some(&carol)).await;
    assert_eq!(
        (status, error_code_of(&body).as_str()),
        (401, "token_revoked")
    );
    let mut ok = YConn::open(&server, "y", Some(&fresh)).await;
    ok.send(ysync::step1(&[0])).await;
    writer.type_patches(&[(0, 0, "!")]).await.expect("type");
    writer.wait_acked().await.expect("acked");
    server.stop().await;
}

#[tokio::test]
async fn an_sse_stream_ends_when_its_token_is_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let watcher = minted(&["*"], Role::Admin, Some("watcher"), Some("watch-1"));
    let resp = reqwest::get(server.url(&format!("/events?token={watcher}")))
        .await
        .expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    // The stream is open: its first bytes (the retry hint) arrive.
    let first = tokio::time::timeout(PATIENCE, stream.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "the stream started");

    let (status, body) = revoke(&server.url(""), &admin(), json!({ "jti": "watch-1" })).await;
    assert_eq!(status, 201, "{body}");
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended at the revocation");
    let (status, body) = get(&server, "/events", Some(&watcher)).await;
    assert_eq!(
        (status, error_code_of(&body).as_str()),
        (401, "token_revoked")
    );
    server.stop().await;
}

#[tokio::test]
async fn only_an_admin_over_everything_manages_revocations_and_bad_requests_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let base = server.url("");
    let victim = minted(&["*"], Role::Read, Some("v"), Some("victim"));
    let writer = minted(&["*"], Role::Write, Some("w"), None);
    let doc_admin = minted(&["pad"], Role::Admin, Some("a"), None);
    let body = json!({ "jti": "victim" });
    for (bearer, status, code) in [
        (writer.as_str(), 403, "forbidden"),
        (doc_admin.as_str(), 403, "forbidden"),
        (victim.as_str(), 403, "forbidden"),
        ("junk", 401, "unauthorized"),
    ] {
        let (got, answer) = revoke(&base, bearer, body.clone()).await;
        assert_eq!((got, &answer["error"]["code"]), (status, &json!(code)));
    }
    let admin = admin();
    for (bad, code) in [
        (json!({}), "invalid_revocation"),
        (json!({ "jti": "a", "sub": "b" }), "invalid_revocation"),
        (json!({ "jti": "" }), "invalid_revocation"),
        (json!({ "sub": "x".repeat(129) }), "invalid_revocation"),
        (json!({ "jti": "a", "other": 1 }), "invalid_json"),
    ] {
        let (got, answer) = revoke(&base, &admin, bad.clone()).await;
        assert_eq!(
            (got, &answer["error"]["code"]),
            (400, &json!(code)),
            "{bad}"
        );
    }
    let list = format!("{base}/admin/revocations");
    let (status, all) = call(reqwest::Method::GET, list.clone(), Some(&admin), None).await;
    assert_eq!((status, &all["revocations"]), (200, &json!([])), "{all}");
    let (status, _) = call(reqwest::Method::GET, list.clone(), Some(&writer), None).await;
    assert_eq!(status, 403);
    assert_eq!(list_docs(&base, &victim).await.0, 200);

    // Revoke, list, remove: the token works again.
    assert_eq!(revoke(&base, &admin, body).await.0, 201);
    assert_eq!(
        list_docs(&base, &victim).await,
        (401, "token_revoked".into())
    );
    let (_, all) = call(reqwest::Method::GET, list.clone(), Some(&admin), None).await;
    assert_eq!(all["revocations"][0]["jti"], "victim", "{all}");
    let one = format!("{list}/jti/victim");
    let (status, _) = call(reqwest::Method::DELETE, one.clone(), Some(&writer), None).await;
    assert_eq!(status, 403);
    let (status, _) = call(reqwest::Method::DELETE, one.clone(), Some(&admin), None).await;
    assert_eq!(status, 200);
    let (status, answer) = call(reqwest::Method::DELETE, one, Some(&admin), None).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("revocation_not_found"))
    );
    assert_eq!(list_docs(&base, &victim).await.0, 200);
    server.stop().await;
}

/// Runs the `folio` binary: success, stdout, stderr.
fn folio(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_folio"))
        .args(args)
        .env("FOLIO_AUTH_SECRET", SECRET)
        .env_remove("FOLIO_ADMIN_TOKEN")
        .env_remove("FOLIO_URL")
        .output()
        .expect("run folio");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn folio_revoke_reaches_a_running_server_and_the_revocation_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::spawn(dir.path(), &["--auth-secret", SECRET]);
    let base = server.url("");
    // `folio token` prints the token on stdout and its jti on stderr.
    let (ok, token, stderr) = folio(&["token", "--doc", "*", "--sub", "dave"]);
    assert!(ok, "{stderr}");
    let token = token.trim().to_owned();
    let jti = stderr
        .lines()
        .find_map(|l| l.strip_prefix("jti: "))
        .expect("the jti on stderr")
        .trim()
        .to_owned();
    assert_eq!(jti.len(), 16, "{jti}");
    let erin = minted(&["*"], Role::Read, Some("erin"), None);
    assert_eq!(list_docs(&base, &token).await.0, 200);

    // A non-admin token is refused, and the CLI says why.
    let (ok, _, stderr) = folio(&["revoke", "--url", &base, "--token", &erin, "--jti", &jti]);
    assert!(!ok && stderr.contains("403 forbidden"), "{stderr}");
    assert_eq!(list_docs(&base, &token).await.0, 200);

    let admin = admin();
    let (ok, out, stderr) = folio(&["revoke", "--url", &base, "--token", &admin, "--jti", &jti]);
    assert!(ok, "{stderr}");
    let answer: Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(answer["jti"], jti.as_str());
    let (ok, _, stderr) = folio(&[
        "revoke",
        "--url",
        &base,
        "--token",
        &admin,
        "--sub",
        "erin",
        "--forget-after",
        "30d",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        list_docs(&base, &token).await,
        (401, "token_revoked".into())
    );
    assert_eq!(list_docs(&base, &erin).await, (401, "token_revoked".into()));

    // Acknowledged means durable: both survive a kill -9.
    server.kill9();
    let server = ChildServer::spawn(dir.path(), &["--auth-secret", SECRET]);
    let base = server.url("");
    assert_eq!(
        list_docs(&base, &token).await,
        (401, "token_revoked".into())
    );
    assert_eq!(list_docs(&base, &erin).await, (401, "token_revoked".into()));
    let (status, all) = call(
        reqwest::Method::GET,
        format!("{base}/admin/revocations"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        all["revocations"].as_array().map(Vec::len),
        Some(2),
        "{all}"
    );
    assert!(server.terminate().success());
}
