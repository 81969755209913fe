//! Acknowledged means on disk: restarts, `kill -9`, SIGTERM, eviction, and
//! one server per data dir.

use std::time::{Duration, Instant};

use folio::client::{ClientError, Editor, Event};

use crate::support::{eventually, ChildServer, TestServer};
use crate::sync::converge;

#[tokio::test]
async fn restart_restores_every_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small snapshot period: the reload goes through snapshot + log.
    let snapshots = |c: &mut folio::config::ServeConfig| c.snapshot_every_updates = 7;
    let server = TestServer::start_with(dir.path(), snapshots).await;
    let mut expected = Vec::new();
    for d in 0..3 {
        let doc = format!("notes/{d}");
        let mut e = Editor::join(&server.ws_url(), &doc, "writer")
            .await
            .expect("join");
        for i in 0..25 {
            let len = e.len();
            e.type_patches(&[(len, 0, &format!("{d}:{i} "))])
                .await
                .expect("type");
        }
        e.type_patches(&[(0, 2, "")]).await.expect("delete");
        e.wait_acked().await.expect("acked");
        expected.push((doc, e.text()));
    }
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    for (doc, text) in &expected {
        let path = format!("/docs/{}/text", doc.replace('/', "%2F"));
        let (status, body) = server.get_text(&path).await;
        assert_eq!(status, 200, "{doc}: {body}");
        assert_eq!(&body, text, "{doc}");
    }
    let (_, listing) = server.get_text("/docs").await;
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("json");
    let ids: Vec<&str> = listing["docs"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["notes/0", "notes/1", "notes/2"]);
    // And editing continues where it left off, on top of the restored state.
    let mut e = Editor::join(&server.ws_url(), "notes/1", "again")
        .await
        .expect("join");
    e.type_patches(&[(0, 0, ">")]).await.expect("type");
    let text = converge(&server, "notes%2F1", &mut [e]).await;
    assert_eq!(text, format!(">{}", expected[1].1));
    server.stop().await;
}

#[tokio::test]
async fn acknowledged_updates_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = ChildServer::spawn(dir.path(), &["--snapshot-every-updates", "50"]);
    let mut typist = Editor::join(&child.ws_url(), "crash", "typist")
        .await
        .expect("join");
    // Each update appends one numbered token; `texts[k]` is the text after k updates.
    let mut texts = vec![String::new()];
    let mut acked = 0u64;
    let mut sent = 0u64;
    // Stream until 300 are acknowledged, reading acks as they come.
    while acked < 300 {
        let token = format!("<{sent}>");
        let len = typist.len();
        typist
            .type_patches(&[(len, 0, &token)])
            .await
            .expect("type");
        sent += 1;
        texts.push(typist.text());
        acked = acked.max(read_acks(&mut typist).await);
    }
    // Then a burst made in advance and sent at once, so that the kill lands
    // with updates in flight; acks seen up to the kill count.
    let mut burst = Vec::new();
    for _ in 0..2000 {
        let token = format!("<{sent}>");
        let len = typist.len();
        burst.push(typist.edit(&[(len, 0, &token)]));
        sent += 1;
        texts.push(typist.text());
    }
    for update in burst {
        typist.send_update(update).await.expect("send");
    }
    acked = acked.max(read_acks(&mut typist).await);
    // Kill while updates are still in flight.
    child.kill9();
    let acked = acked as usize;
    assert!(acked < texts.len());

    let child = ChildServer::spawn(dir.path(), &[]);
    let resp = reqwest::get(child.url("/docs/crash/text"))
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    let recovered = resp.text().await.expect("body");
    assert!(
        recovered.starts_with(&texts[acked]),
        "an acknowledged update is missing: {acked} acked, recovered {} chars",
        recovered.len()
    );
    assert!(
        texts.contains(&recovered),
        "recovered text is not a state the typist ever had"
    );
    eprintln!(
        "sent {sent}, acked {acked}, recovered {} of them",
        texts.iter().position(|t| *t == recovered).unwrap_or(0)
    );
    child.kill9();
}

/// Handles whatever has arrived, returning the highest acknowledged seq.
async fn read_acks(typist: &mut Editor) -> u64 {
    let mut acked = 0;
    while let Some(msg) = typist
        .conn_mut()
        .expect("online")
        .recv_within(Duration::ZERO)
        .await
        .expect("recv")
    {
        if let Event::Acked { seq, .. } = typist.handle(msg).expect("handle") {
            acked = acked.max(seq);
        }
    }
    acked
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = ChildServer::spawn(dir.path(), &[]);
    let mut e = Editor::join(&child.ws_url(), "bye", "w")
        .await
        .expect("join");
    e.type_patches(&[(0, 0, "still here")]).await.expect("type");
    e.wait_acked().await.expect("acked");
    let status = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .expect("join");
    assert!(status.success(), "exit status {status:?}");
    let closed = loop {
        match e.pump().await {
            Ok(_) => continue,
            Err(ClientError::Closed { code, .. }) => break code,
            Err(other) => panic!("expected a close, got {other}"),
        }
    };
    assert_eq!(closed, 1001);

    let child = ChildServer::spawn(dir.path(), &[]);
    let text = reqwest::get(child.url("/docs/bye/text"))
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert_eq!(text, "still here");
    child.kill9();
}

#[tokio::test]
async fn a_second_server_on_the_same_dir_fails_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ChildServer::spawn(dir.path(), &[]);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_folio"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "second server hung");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(
        &mut second.stderr.take().expect("stderr piped"),
        &mut stderr,
    )
    .expect("read stderr");
    assert!(
        stderr.contains("in use by another folio process"),
        "{stderr}"
    );
    // The first one is unaffected.
    let health = reqwest::get(first.url("/healthz")).await.expect("get");
    assert_eq!(health.status().as_u16(), 200);
    first.kill9();
}

#[tokio::test]
async fn idle_documents_are_evicted_and_reload_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.evict_idle_secs = 1).await;
    let mut e = Editor::join(&server.ws_url(), "idle", "w")
        .await
        .expect("join");
    e.type_patches(&[(0, 0, "evict me")]).await.expect("type");
    e.wait_acked().await.expect("acked");
    e.go_offline().await;
    eventually("the idle document to be evicted", || async {
        let (_, body) = server.get_text("/docs").await;
        let docs: serde_json::Value = serde_json::from_str(&body).expect("json");
        (docs["docs"][0]["resident"] == false).then_some(())
    })
    .await;
    assert_eq!(server.text("idle").await, "evict me");
    let again = Editor::join(&server.ws_url(), "idle", "w2")
        .await
        .expect("join");
    assert_eq!(again.text(), "evict me");
    server.stop().await;
}
