//! The offline CLI (`folio docs`, `export`, `import`, `history`, `replay`,
//! `compact`, `check`) run as the real binary against a data dir a server
//! wrote, and its refusal while a server holds the dir.

use std::path::Path;
use std::process::Command;

use folio::client::Editor;
use folio::trace::{shared_trace, Trace};
use serde_json::Value;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Transact};

use crate::support::{ChildServer, TestServer};

/// Runs `folio <args> --data-dir <dir>`: success, stdout, stderr.
fn folio(dir: &Path, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_folio"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run folio");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// As [`folio`], asserting success; stdout as text.
#[track_caller]
fn folio_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = folio(dir, args);
    assert!(ok, "folio {args:?} failed: {stderr}");
    String::from_utf8(stdout).expect("utf-8 output")
}

/// As [`folio`], asserting failure; stderr.
#[track_caller]
fn folio_err(dir: &Path, args: &[&str]) -> String {
    let (ok, _, stderr) = folio(dir, args);
    assert!(!ok, "folio {args:?} should fail");
    stderr
}

#[tokio::test]
async fn every_offline_command_works_on_a_data_dir_and_refuses_a_held_one() {
    let trace = Trace::load(shared_trace("sequential/sveltecomponent.json.gz")).expect("trace");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = TestServer::start_with(&data, |c| c.snapshot_every_updates = 100).await;
    let mut typist = Editor::join(&server.ws_url(), "svelte", "typist")
        .await
        .expect("join");
    let txns = 500;
    for txn in trace.txns.iter().take(txns) {
        typist
            .type_patches(&Trace::patches(txn))
            .await
            .expect("type");
        typist.wait_acked_below(64).await.expect("acks");
    }
    typist.wait_acked().await.expect("acked");
    let (status, body) = crate::support::json_request(
        reqwest::Method::POST,
        server.url("/docs/svelte/versions"),
        Some(serde_json::json!({ "label": "mid" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let last_seq = body["seq"].as_u64().expect("seq");
    let final_text = typist.text();
    drop(typist);
    server.stop().await;

    // docs
    let listing = folio_ok(&data, &["docs"]);
    assert!(listing.contains("svelte"), "{listing}");
    let rows: Value = serde_json::from_str(&folio_ok(&data, &["docs", "--json"])).expect("json");
    assert_eq!(rows[0]["id"], "svelte");
    assert_eq!(rows[0]["last_seq"], last_seq);

    // export: latest, a version, a time, each format
    assert_eq!(folio_ok(&data, &["export", "svelte"]), final_text);
    let at_200 = folio_ok(&data, &["export", "svelte", "--version", "200"]);
    assert_eq!(
        at_200,
        trace.text_after(200),
        "every early txn is one update"
    );
    assert_eq!(folio_ok(&data, &["export", "svelte", "--at", "0"]), "");
    assert_eq!(
        folio_ok(&data, &["export", "svelte", "--at", "2999-01-01T00:00:00Z"]),
        final_text
    );
    let json: Value =
        serde_json::from_str(&folio_ok(&data, &["export", "svelte", "--format", "json"]))
            .expect("json");
    assert_eq!(
        (&json["seq"], &json["text"]),
        (&Value::from(last_seq), &Value::from(final_text.clone()))
    );
    let state_file = dir.path().join("svelte.yjs");
    let state_path = state_file.to_str().expect("utf-8 path");
    folio_ok(
        &data,
        &["export", "svelte", "--format", "yjs", "--out", state_path],
    );
    let bytes = std::fs::read(&state_file).expect("read export");
    let doc = folio::client::new_doc();
    let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&bytes).expect("a Yjs update"))
        .expect("applies");
    assert_eq!(text.get_string(&doc.transact()), final_text);

    // import: a Yjs state and a text file, never over a document
    folio_ok(&data, &["import", "fork", state_path, "--format", "yjs"]);
    assert_eq!(folio_ok(&data, &["export", "fork"]), final_text);
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "plain notes\n").expect("write");
    let notes = notes.to_str().expect("utf-8 path");
    folio_ok(&data, &["import", "notes", notes]);
    assert_eq!(folio_ok(&data, &["export", "notes"]), "plain notes\n");
    assert!(folio_err(&data, &["import", "notes", notes]).contains("already exists"));
    assert!(
        folio_err(&data, &["import", "junk", notes, "--format", "yjs"])
            .contains("not a Yjs v1 update")
    );

    // history and replay
    let history = folio_ok(&data, &["history", "svelte"]);
    assert!(
        history.contains("mid") && history.contains("auto"),
        "{history}"
    );
    let history: Value =
        serde_json::from_str(&folio_ok(&data, &["history", "svelte", "--json"])).expect("json");
    let versions = history["versions"].as_array().expect("versions");
    assert_eq!(
        versions.len(),
        5,
        "4 automatic versions and the labelled one"
    );
    let replay = folio_ok(
        &data,
        &["replay", "svelte", "--speed", "0", "--from", "450"],
    );
    let lines: Vec<&str> = replay.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.contains(" typist +")).count() as u64,
        last_seq - 450
    );
    let (_, tail) = replay.split_once("--- text at ").expect("final text");
    assert_eq!(
        tail.split_once('\n').map(|(_, t)| t),
        Some(final_text.as_str())
    );

    // compact (everything counts as old) and check
    let compacted = folio_ok(
        &data,
        &["compact", "svelte", "--history-keep-all-secs", "0"],
    );
    assert!(compacted.contains("svelte: versions"), "{compacted}");
    assert_eq!(folio_ok(&data, &["export", "svelte"]), final_text);
    assert_eq!(
        folio_ok(
            &data,
            &["export", "svelte", "--version", &last_seq.to_string()]
        ),
        final_text
    );
    let check = folio_ok(&data, &["check"]);
    assert!(check.contains("3 documents, 0 failed"), "{check}");

    // bad input
    assert!(folio_err(&data, &["export", "ghost"]).contains("does not exist"));
    assert!(folio_err(&data, &["export", "svelte", "--version", "7"]).contains("no version 7"));
    assert!(folio_err(&data, &["export", "svelte", "--at", "yesterday"]).contains("RFC 3339"));
    assert!(folio_err(&dir.path().join("nothing"), &["docs"]).contains("holds no folio data"));

    // refused while a server holds the dir, and the server is unharmed
    let server = ChildServer::spawn(&data, &[]);
    for args in [
        &["docs"][..],
        &["check"],
        &["compact"],
        &["export", "svelte"],
    ] {
        let err = folio_err(&data, args);
        assert!(
            err.contains("in use by a running folio server"),
            "{args:?}: {err}"
        );
    }
    let text = reqwest::get(server.url("/docs/svelte/text"))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert_eq!(text, final_text);
    assert!(server.terminate().success());
}
