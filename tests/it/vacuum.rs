//! `folio vacuum`: after compaction the data dir shrinks and keeps every
//! document's text, version and log entry; it refuses a dir a server holds
//! and changes nothing then; an interrupted vacuum stops `folio serve` and
//! is sorted out by the next `folio vacuum`.

use std::path::{Path, PathBuf};
use std::process::Command;

use folio::client::Editor;
use folio::trace::{shared_trace, Trace};
use serde_json::Value;

use crate::support::{ChildServer, TestServer};

/// Runs `folio <args> --data-dir <dir>`: success, stdout, stderr.
fn folio(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_folio"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run folio");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn folio_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = folio(dir, args);
    assert!(ok, "folio {args:?} failed: {stderr}");
    stdout
}

/// Bytes of every file under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().expect("name").to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Everything the offline CLI shows of every document: the listing, and
/// per document its versions and sizes, every log entry (a replay), the
/// latest text and the text at every version.
fn everything(dir: &Path) -> Vec<String> {
    let listing = folio_ok(dir, &["docs", "--json"]);
    let docs: Value = serde_json::from_str(&listing).expect("json");
    let mut out = vec![listing];
    for doc in docs.as_array().expect("docs") {
        let id = doc["id"].as_str().expect("id");
        let history = folio_ok(dir, &["history", id, "--json"]);
        let versions: Value = serde_json::from_str(&history).expect("json");
        out.push(history);
        out.push(folio_ok(dir, &["replay", id, "--speed", "0"]));
        out.push(folio_ok(dir, &["export", id]));
        for v in versions["versions"].as_array().expect("versions") {
            let seq = v["id"].as_u64().expect("id").to_string();
            out.push(folio_ok(dir, &["export", id, "--version", &seq]));
        }
    }
    out
}

#[tokio::test]
async fn vacuum_shrinks_a_compacted_data_dir_and_keeps_all_history() {
    let trace = Trace::load(shared_trace("sequential/sveltecomponent.json.gz")).expect("trace");
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let server = TestServer::start_with(&data, |c| c.snapshot_every_updates = 50).await;
    let mut texts = Vec::new();
    for (doc, txns) in [("alpha", 1500), ("beta", 1000), ("gamma", 600)] {
        let mut typist = Editor::join(&server.ws_url(), doc, "typist")
            .await
            .expect("join");
        for txn in trace.txns.iter().take(txns) {
            typist
                .type_patches(&Trace::patches(txn))
                .await
                .expect("type");
            typist.wait_acked_below(64).await.expect("acks");
        }
        typist.wait_acked().await.expect("acked");
        texts.push((doc, typist.text()));
    }
    server.stop().await;
    // Everything counts as old: versions thinned, the log merged.
    let compacted = folio_ok(&data, &["compact", "--history-keep-all-secs", "0"]);
    assert!(compacted.contains("alpha: versions"), "{compacted}");
    let before = everything(&data);
    let bytes_before = dir_bytes(&data);

    let out = folio_ok(&data, &["vacuum"]);
    assert!(out.contains("vacuumed"), "{out}");
    let bytes_after = dir_bytes(&data);
    eprintln!("data dir after compaction: {bytes_before} bytes; after vacuum: {bytes_after}");
    assert!(
        bytes_after < bytes_before,
        "the data dir shrank: {bytes_before} -> {bytes_after} bytes ({out})"
    );
    assert!(!sibling(&data, ".vacuum-tmp").exists());
    assert!(!sibling(&data, ".vacuum-old").exists());
    assert_eq!(
        everything(&data),
        before,
        "every text, version and log entry"
    );

    // A server on the vacuumed dir serves it all.
    let server = ChildServer::spawn(&data, &[]);
    for (doc, text) in &texts {
        let got = reqwest::get(server.url(&format!("/docs/{doc}/text")))
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        assert_eq!(&got, text, "{doc}");
    }
    assert!(server.terminate().success());
    let check = folio_ok(&data, &["check"]);
    assert!(check.contains("3 documents, 0 failed"), "{check}");
}

#[tokio::test]
async fn vacuum_refuses_a_held_dir_and_an_interrupted_one_stops_serve_until_vacuumed() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let server = ChildServer::spawn(&data, &[]);
    let put = reqwest::Client::new()
        .put(server.url("/docs/kept"))
        .body(serde_json::json!({ "text": "still here" }).to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 201);

    // Refused while the server holds the dir, and nothing is changed.
    let files = |dir: &Path| -> Vec<PathBuf> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        names
    };
    let before = files(root.path());
    let (ok, _, stderr) = folio(&data, &["vacuum"]);
    assert!(!ok);
    assert!(
        stderr.contains("in use by a running folio server"),
        "{stderr}"
    );
    assert_eq!(files(root.path()), before, "no copy left beside it");
    let text = reqwest::get(server.url("/docs/kept/text"))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert_eq!(text, "still here");
    assert!(server.terminate().success());
    let export = folio_ok(&data, &["export", "kept"]);
    assert_eq!(export, "still here");

    // A vacuum cut short while copying leaves its copy: serve refuses to
    // start, saying what to do; the next vacuum removes it and vacuums.
    let tmp = sibling(&data, ".vacuum-tmp");
    std::fs::create_dir_all(tmp.join("sled")).expect("mkdir");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_folio"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run folio serve");
    let exited = crate::support::eventually("folio serve to give up", || {
        let status = serve.try_wait().expect("wait");
        async move { status }
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!exited.success());
    assert!(
        stderr.contains("was interrupted") && stderr.contains("folio vacuum --data-dir"),
        "{stderr}"
    );
    let out = folio_ok(&data, &["vacuum"]);
    assert!(
        out.contains("cut short while copying") && out.contains("vacuumed"),
        "{out}"
    );
    assert!(!tmp.exists());
    assert_eq!(folio_ok(&data, &["export", "kept"]), "still here");
    let check = folio_ok(&data, &["check"]);
    assert!(check.contains("1 documents, 0 failed"), "{check}");
}
