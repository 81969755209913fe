//! History over HTTP: versions, points, restore, replay, document
//! management, bad requests, and compaction surviving SIGKILL.

use folio::client::{Editor, Event};
use folio::feed::delta::{self, Op};
use folio::protocol::ErrorCode;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::sse::Watcher;
use crate::support::{json_request, seed, ChildServer, TestServer};
use crate::sync::converge;

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    json_request(Method::GET, server.url(path), None).await
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    json_request(Method::POST, server.url(path), Some(body)).await
}

/// Takes a labelled version; returns its seq.
async fn label(server: &TestServer, doc: &str, label: &str) -> u64 {
    let (status, v) = post(
        server,
        &format!("/docs/{doc}/versions"),
        json!({ "label": label }),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["label"], label);
    v["seq"].as_u64().expect("seq")
}

/// Pumps `editor` until its text is `want`.
async fn wait_text(editor: &mut Editor, want: &str) {
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while editor.text() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "editor text never became {want:?}: {:?}",
            editor.text()
        );
        editor
            .drain(std::time::Duration::from_millis(20))
            .await
            .expect("drain");
    }
}

#[tokio::test]
async fn restore_reaches_every_editor_and_can_be_undone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut alice = Editor::join(&url, "essay", "alice").await.expect("join");
    alice
        .type_patches(&[(0, 0, "The quick brown fox")])
        .await
        .expect("type");
    alice.wait_acked().await.expect("acked");
    let draft = label(&server, "essay", "draft 1").await;
    let mut bob = Editor::join(&url, "essay", "bob").await.expect("join");
    alice
        .type_patches(&[(19, 0, " jumps")])
        .await
        .expect("type");
    bob.type_patches(&[(4, 6, "")]).await.expect("type");
    let mut editors = [alice, bob];
    let edited = converge(&server, "essay", &mut editors).await;
    assert_eq!(edited, "The brown fox jumps");
    let before = label(&server, "essay", "before restore").await;

    let (status, restored) =
        post(&server, "/docs/essay/restore", json!({ "version": draft })).await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["changed"], true);
    assert_eq!(restored["version"]["kind"], "restore");
    assert_eq!(restored["version"]["authors"], json!(["restore"]));
    for e in editors.iter_mut() {
        wait_text(e, "The quick brown fox").await;
    }
    assert_eq!(server.text("essay").await, "The quick brown fox");
    // The restore is one update in the log, authored "restore".
    let restore_seq = restored["doc_seq"].as_u64().expect("doc_seq");
    let mut replay = Watcher::connect(
        &server.url(&format!("/docs/essay/replay?from={before}&speed=0")),
        None,
    )
    .await;
    let (_, step) = replay.next_of("delta").await;
    assert_eq!(step["seq"], restore_seq);
    assert_eq!(step["author"], "restore");
    drop(replay);

    // Nothing was lost: restoring the version before the restore undoes it.
    let (status, undone) = post(&server, "/docs/essay/restore", json!({ "version": before })).await;
    assert_eq!(status, 200, "{undone}");
    for e in editors.iter_mut() {
        wait_text(e, "The brown fox jumps").await;
    }
    let (_, listing) = get(&server, "/docs/essay/versions").await;
    let versions = listing["versions"].as_array().expect("versions");
    let labels: Vec<&str> = versions
        .iter()
        .filter_map(|v| v["label"].as_str())
        .collect();
    assert_eq!(
        labels,
        vec![
            "draft 1",
            "before restore",
            &format!("restore of version {draft}"),
            &format!("restore of version {before}"),
        ]
    );
    // Restoring what is already there changes nothing and adds no version.
    let (status, again) = post(&server, "/docs/essay/restore", json!({ "version": before })).await;
    assert_eq!((status, &again["changed"]), (200, &json!(false)));
    let (_, listing) = get(&server, "/docs/essay/versions").await;
    assert_eq!(listing["versions"].as_array().map(Vec::len), Some(4));
    server.stop().await;
}

#[tokio::test]
async fn documents_are_created_copied_deleted_and_listed_in_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let put = |path: &str, body: Option<Value>| json_request(Method::PUT, server.url(path), body);
    let (status, made) = put("/docs/notes", Some(json!({ "text": "hello" }))).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["doc_seq"], 1);
    let (status, err) = put("/docs/notes", Some(json!({ "text": "other" }))).await;
    assert_eq!((status, &err["error"]["code"]), (409, &json!("doc_exists")));
    assert_eq!(server.text("notes").await, "hello");
    let (status, _) = put("/docs/empty", None).await;
    assert_eq!(status, 201);
    assert_eq!(server.text("empty").await, "");

    let mut editor = Editor::join(&server.ws_url(), "notes", "ed")
        .await
        .expect("join");
    editor
        .type_patches(&[(5, 0, " world")])
        .await
        .expect("type");
    editor.wait_acked().await.expect("acked");

    // Copies: at a version, at the latest state; never onto a document.
    let (status, copy) = post(
        &server,
        "/docs/notes/copy",
        json!({ "to": "notes-v1", "version": 1 }),
    )
    .await;
    assert_eq!(status, 201, "{copy}");
    assert_eq!(copy["version"], 1);
    assert_eq!(server.text("notes-v1").await, "hello");
    let (status, _) = post(&server, "/docs/notes/copy", json!({ "to": "notes-now" })).await;
    assert_eq!(status, 201);
    assert_eq!(server.text("notes-now").await, "hello world");
    let (_, versions) = get(&server, "/docs/notes-now/versions").await;
    assert_eq!(versions["versions"][0]["kind"], "copy");
    for (body, want_status, want_code) in [
        (json!({ "to": "notes-v1" }), 409, "doc_exists"),
        (
            json!({ "to": "x", "version": 99 }),
            404,
            "version_not_found",
        ),
        (json!({ "version": 1 }), 400, "invalid_json"),
        (json!({ "to": "../bad" }), 400, "invalid_doc_id"),
    ] {
        let (status, err) = post(&server, "/docs/notes/copy", body.clone()).await;
        assert_eq!(
            (status, &err["error"]["code"]),
            (want_status, &json!(want_code)),
            "{body}"
        );
    }
    assert_eq!(
        server.text("notes-v1").await,
        "hello",
        "the refused copy changed nothing"
    );

    // Delete: the subscriber is told, the data is gone.
    let (status, _) = json_request(Method::DELETE, server.url("/docs/notes"), None).await;
    assert_eq!(status, 204);
    let refused = loop {
        if let Event::Error(e) = editor.pump().await.expect("the deleted document's error") {
            break e;
        }
    };
    assert_eq!(refused.code, ErrorCode::DocDeleted as i32);
    assert_eq!(refused.doc, "notes");
    for path in ["/docs/notes/text", "/docs/notes/versions"] {
        let (status, err) = get(&server, path).await;
        assert_eq!(
            (status, &err["error"]["code"]),
            (410, &json!("doc_deleted")),
            "{path}"
        );
    }
    let (status, _) = json_request(Method::DELETE, server.url("/docs/notes"), None).await;
    assert_eq!(status, 410);
    assert_eq!(
        server.text("notes-now").await,
        "hello world",
        "copies live on"
    );

    // Pages of a prefix, in id order.
    for id in [
        "team-a/3", "team-a/1", "team-b/1", "team-a/2", "team-a/5", "team-a/4",
    ] {
        let (status, _) = put(&format!("/docs/{}", id.replace('/', "%2F")), None).await;
        assert_eq!(status, 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/docs?prefix=team-a/&limit=2".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", c.replace('/', "%2F")));
        }
        let (status, page) = get(&server, &path).await;
        assert_eq!(status, 200, "{page}");
        let docs = page["docs"].as_array().expect("docs");
        assert!(docs.len() <= 2);
        seen.extend(
            docs.iter()
                .map(|d| d["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["team-a/1", "team-a/2", "team-a/3", "team-a/4", "team-a/5"]
    );
    for limit in ["0", "abc", "100000"] {
        let (status, err) = get(&server, &format!("/docs?limit={limit}")).await;
        assert_eq!(
            (status, &err["error"]["code"]),
            (400, &json!("invalid_limit"))
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_history_requests_are_clear_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let (status, _) = json_request(
        Method::PUT,
        server.url("/docs/d"),
        Some(json!({ "text": "abc" })),
    )
    .await;
    assert_eq!(status, 201);
    let (_, versions_before) = get(&server, "/docs/d/versions").await;

    for (method, path, body, want_status, want_code) in [
        (
            Method::GET,
            "/docs/ghost/versions",
            None,
            404,
            "doc_not_found",
        ),
        (
            Method::GET,
            "/docs/ghost/at?seq=1",
            None,
            404,
            "doc_not_found",
        ),
        (Method::GET, "/docs/ghost/diff", None, 404, "doc_not_found"),
        (
            Method::GET,
            "/docs/ghost/replay",
            None,
            404,
            "doc_not_found",
        ),
        (
            Method::POST,
            "/docs/ghost/versions",
            Some(json!({})),
            404,
            "doc_not_found",
        ),
        (
            Method::POST,
            "/docs/ghost/restore",
            Some(json!({ "version": 1 })),
            404,
            "doc_not_found",
        ),
        (
            Method::GET,
            "/docs/d/versions/abc/text",
            None,
            400,
            "invalid_version",
        ),
        (
            Method::GET,
            "/docs/d/versions/99/text",
            None,
            404,
            "version_not_found",
        ),
        (
            Method::GET,
            "/docs/d/versions/99/state",
            None,
            404,
            "version_not_found",
        ),
        (
            Method::GET,
            "/docs/d/at?time=yesterday",
            None,
            400,
            "invalid_time",
        ),
        (
            Method::GET,
            "/docs/d/at?time=2026-13-45T99:00:00Z",
            None,
            400,
            "invalid_time",
        ),
        (Method::GET, "/docs/d/at", None, 400, "invalid_query"),
        (
            Method::GET,
            "/docs/d/at?seq=1&time=1",
            None,
            400,
            "invalid_query",
        ),
        (Method::GET, "/docs/d/at?seq=-1", None, 400, "invalid_seq"),
        (
            Method::GET,
            "/docs/d/diff?from=1&to=0",
            None,
            400,
            "invalid_range",
        ),
        (
            Method::GET,
            "/docs/d/diff?to=999",
            None,
            400,
            "invalid_range",
        ),
        (
            Method::GET,
            "/docs/d/replay?speed=-1",
            None,
            400,
            "invalid_speed",
        ),
        (
            Method::GET,
            "/docs/d/replay?speed=fast",
            None,
            400,
            "invalid_speed",
        ),
        (
            Method::POST,
            "/docs/d/versions",
            Some(json!({ "label": "x".repeat(201) })),
            400,
            "invalid_label",
        ),
        (
            Method::POST,
            "/docs/d/versions",
            Some(json!({ "labl": "typo" })),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/docs/d/restore",
            Some(json!({})),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/docs/d/restore",
            Some(json!({ "version": "one" })),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/docs/d/restore",
            Some(json!({ "version": 99 })),
            404,
            "version_not_found",
        ),
    ] {
        let (status, err) = json_request(method.clone(), server.url(path), body).await;
        assert_eq!(
            (status, &err["error"]["code"]),
            (want_status, &json!(want_code)),
            "{method} {path}: {err}"
        );
    }
    // A time before the document existed is the empty document, not an error.
    let (status, at) = get(&server, "/docs/d/at?time=2001-01-01T00:00:00Z").await;
    assert_eq!(
        (status, &at["seq"], &at["text"]),
        (200, &json!(0), &json!(""))
    );
    assert_eq!(server.text("d").await, "abc");
    assert_eq!(get(&server, "/docs/d/versions").await.1, versions_before);
    assert_eq!(
        get(&server, "/docs/ghost/text").await.0,
        404,
        "nothing was created"
    );
    server.stop().await;
}

#[tokio::test]
async fn replay_resumes_after_its_last_event_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut editor = Editor::join(&server.ws_url(), "story", "teller")
        .await
        .expect("join");
    for word in [
        "once ", "upon ", "a ", "time ", "there ", "was ", "a ", "server",
    ] {
        let end = editor.len();
        editor.type_patches(&[(end, 0, word)]).await.expect("type");
    }
    editor.wait_acked().await.expect("acked");
    let url = server.url("/docs/story/replay?speed=0");
    let mut first = Watcher::connect(&url, None).await;
    let (_, start) = first.next_of("start").await;
    assert_eq!((&start["seq"], &start["text"]), (&json!(0), &json!("")));
    let mut text = String::new();
    let mut last_id = String::new();
    for _ in 0..3 {
        let (e, step) = first.next_of("delta").await;
        let ops: Vec<Op> = serde_json::from_value(step["delta"].clone()).expect("delta");
        text = delta::apply(&text, &ops).expect("applies");
        last_id = e.id;
    }
    assert_eq!(text, "once upon a ");
    drop(first);
    // As an EventSource reconnects: the rest, no `start`.
    let mut resumed = Watcher::connect(&url, Some(&last_id)).await;
    let e = resumed.next().await;
    assert_eq!((e.event.as_str(), e.id.as_str()), ("delta", "4"));
    let step: Value = serde_json::from_str(&e.data).expect("json");
    let ops: Vec<Op> = serde_json::from_value(step["delta"].clone()).expect("delta");
    text = delta::apply(&text, &ops).expect("applies");
    loop {
        let e = resumed.next().await;
        if e.event == "end" {
            break;
        }
        assert_eq!(e.event, "delta");
        let step: Value = serde_json::from_str(&e.data).expect("json");
        assert_eq!(step["author"], "teller");
        let ops: Vec<Op> = serde_json::from_value(step["delta"].clone()).expect("delta");
        text = delta::apply(&text, &ops).expect("applies");
    }
    assert_eq!(text, "once upon a time there was a server");
    server.stop().await;
}

/// Compaction merges the log and thins versions while a typist works and
/// labels versions; the server is SIGKILLed at random moments and
/// restarted. After every restart the latest acknowledged text and every
/// labelled version are intact, and `folio check` passes at the end.
#[tokio::test]
async fn sigkill_during_compaction_loses_no_acknowledged_state_or_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = folio::trace::Trace::load(folio::trace::shared_trace(
        "sequential/sveltecomponent.json.gz",
    ))
    .expect("trace");
    // Everything is old at once (keep_all 0), compaction runs every second,
    // and versions come every 40 updates: plenty for it to merge and thin.
    let args = [
        "--compact-interval-secs",
        "1",
        "--history-keep-all-secs",
        "0",
        "--snapshot-every-updates",
        "40",
        "--version-idle-secs",
        "1",
    ];
    let mut rng = SmallRng::seed_from_u64(seed());
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut txns = trace.txns.iter();
    let mut expected = String::new();
    let mut editor_doc = folio::client::new_doc();
    for round in 0..5 {
        let server = ChildServer::spawn(dir.path(), &args);
        // Checked before the typist reconnects: its sync would restore
        // whatever the server lost.
        if round > 0 {
            let (status, body) =
                json_request(Method::GET, server.url("/docs/svelte/text"), None).await;
            assert_eq!(
                (status, body),
                (200, Value::String(expected.clone())),
                "round {round}: the acknowledged text survived"
            );
        }
        for (name, text) in &labels {
            let (_, listing) =
                json_request(Method::GET, server.url("/docs/svelte/versions"), None).await;
            let seq = listing["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .find(|v| v["label"] == name.as_str())
                .and_then(|v| v["seq"].as_u64())
                .unwrap_or_else(|| panic!("round {round}: label {name} survived: {listing}"));
            let resp = reqwest::get(server.url(&format!("/docs/svelte/versions/{seq}/text")))
                .await
                .expect("get");
            assert_eq!(&resp.text().await.expect("text"), text, "label {name}");
        }
        let mut typist = Editor::join_with(&server.ws_url(), "svelte", "typist", editor_doc)
            .await
            .expect("join");
        for txn in txns.by_ref().take(600) {
            typist
                .type_patches(&folio::trace::Trace::patches(txn))
                .await
                .expect("type");
            typist.wait_acked_below(64).await.expect("acks");
        }
        typist.wait_acked().await.expect("acked");
        expected = typist.text();
        let name = format!("round {round}");
        let (status, v) = json_request(
            Method::POST,
            server.url("/docs/svelte/versions"),
            Some(json!({ "label": name })),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        labels.push((name, expected.clone()));
        // Let a compaction pass start (they run every second), then kill.
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..1500))).await;
        editor_doc = typist.doc().clone();
        drop(typist);
        server.kill9();
    }
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_folio"))
        .args(["check", "--data-dir"])
        .arg(dir.path())
        .status()
        .expect("run folio check");
    assert!(status.success(), "folio check after the crashes");
}

/// A deleted document stays deleted: a y-websocket client that reconnects
/// and pushes its copy is closed with 4004, a /ws client that resubscribes
/// with its state is refused, REST answers 410, across a restart; only a
/// `PUT` re-creates it, and then editing works.
#[tokio::test]
async fn deleted_documents_stay_deleted_until_put() {
    use crate::yjs::{yjs_url, YClient};
    use folio::client::ClientError;
    use folio::protocol::ysync;
    use yrs::{ReadTxn, StateVector, Transact};

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let put = |server: &TestServer, body: Value| {
        json_request(Method::PUT, server.url("/docs/gone"), Some(body))
    };
    let (status, made) = put(&server, json!({ "text": "hello" })).await;
    assert_eq!(status, 201, "{made}");
    let mut y = YClient::join(&yjs_url(server.addr, "gone")).await;
    y.pump_until("the text", |c| c.text() == "hello").await;
    let mut editor = Editor::join(&server.ws_url(), "gone", "ed")
        .await
        .expect("join");

    let (status, _) = json_request(Method::DELETE, server.url("/docs/gone"), None).await;
    assert_eq!(status, 204);
    assert_eq!(y.closed().await.0, 4004);
    let told = loop {
        if let Event::Error(e) = editor.pump().await.expect("the deleted document's error") {
            break e;
        }
    };
    assert_eq!(told.code, ErrorCode::DocDeleted as i32);

    // The /ws client resubscribes with its state: refused.
    match editor.resubscribe().await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::DocDeleted as i32),
        other => panic!("resubscribe to a deleted document: {other:?}"),
    }
    // The provider reconnects and pushes its copy, as y-websocket does.
    let doc = y.doc;
    let mut again = YClient::open(&yjs_url(server.addr, "gone"), doc.clone()).await;
    again.send_step1().await;
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    again.send(ysync::update(&state)).await;
    assert_eq!(again.closed().await.0, 4004);

    let gone = |server: &TestServer| {
        let server_url = server.url("/");
        async move {
            for path in ["docs/gone/text", "docs/gone/state", "docs/gone/versions"] {
                let (status, err) =
                    json_request(Method::GET, format!("{server_url}{path}"), None).await;
                assert_eq!(
                    (status, &err["error"]["code"]),
                    (410, &json!("doc_deleted")),
                    "{path}"
                );
            }
            let (_, listing) = json_request(Method::GET, format!("{server_url}docs"), None).await;
            let listed = listing["docs"].as_array().expect("docs");
            assert!(
                listed.iter().all(|d| d["id"] != "gone"),
                "a deleted document is not listed: {listing}"
            );
        }
    };
    gone(&server).await;
    // Pushing an update over REST: refused, nothing created.
    let resp = reqwest::Client::new()
        .post(server.url("/docs/gone/update"))
        .body(state.clone())
        .send()
        .await
        .expect("post update");
    assert_eq!(resp.status().as_u16(), 410);
    let (status, _) = json_request(
        Method::PUT,
        server.url("/docs/src"),
        Some(json!({ "text": "src" })),
    )
    .await;
    assert_eq!(status, 201);
    let (status, err) = post(&server, "/docs/src/copy", json!({ "to": "gone" })).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (410, &json!("doc_deleted"))
    );
    server.stop().await;

    // A restart keeps the tombstone.
    let server = TestServer::start(dir.path()).await;
    gone(&server).await;
    let mut late = YClient::open(&yjs_url(server.addr, "gone"), doc.clone()).await;
    late.send_step1().await;
    late.send(ysync::update(&state)).await;
    assert_eq!(late.closed().await.0, 4004);
    let (status, err) = json_request(Method::DELETE, server.url("/docs/gone"), None).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (410, &json!("doc_deleted"))
    );

    // Only PUT re-creates it, fresh; then editing works.
    let (status, made) = put(&server, json!({ "text": "fresh" })).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(server.text("gone").await, "fresh");
    let mut y = YClient::join(&yjs_url(server.addr, "gone")).await;
    y.pump_until("the new text", |c| c.text() == "fresh").await;
    y.type_at(5, "!").await;
    crate::support::eventually("the edit", || async {
        (server.text("gone").await == "fresh!").then_some(())
    })
    .await;
    server.stop().await;
}
