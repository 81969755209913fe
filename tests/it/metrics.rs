//! `GET /metrics`: real work through the server moves the counters it should;
//! and log lines name the connection and document they concern.
//!
//! Counters are process-wide and other tests run in parallel in this binary,
//! so assertions are lower bounds on how far a counter moved, never exact values.

use bytes::Bytes;
use folio::client::Editor;
use folio::protocol::{client_message, server_message, v1, ErrorCode};

use crate::support::{eventually, ChildServer, TestServer};

/// The scraped text of `/metrics`, checking status and content type.
async fn scrape(server: &TestServer) -> String {
    let resp = reqwest::get(server.url("/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    resp.text().await.expect("metrics body")
}

/// The value of the sample `series` (a name with its labels, exactly as
/// rendered), or 0 when it is absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, v) = line.rsplit_once(' ')?;
            (name == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn typing_moves_update_byte_and_latency_counters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let before = scrape(&server).await;
    assert!(
        before.contains("# TYPE folio_updates_applied_total counter"),
        "{before}"
    );
    let url = server.ws_url();
    let mut writer = Editor::join(&url, "metered", "writer")
        .await
        .expect("writer joins");
    let reader = Editor::join(&url, "metered", "reader")
        .await
        .expect("reader joins");
    const UPDATES: usize = 25;
    for i in 0..UPDATES {
        let at = u32::try_from(i).expect("small");
        writer.type_patches(&[(at, 0, "x")]).await.expect("type");
    }
    writer
        .wait_acked()
        .await
        .expect("every update acknowledged");

    let after = scrape(&server).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert!(
        moved("folio_updates_applied_total") >= UPDATES as f64,
        "{after}"
    );
    assert!(moved("folio_ws_received_bytes_total") > 0.0, "{after}");
    assert!(moved("folio_ws_sent_bytes_total") > 0.0, "{after}");
    // One group commit at least, and one fan-out per update.
    assert!(moved("folio_store_flush_seconds_count") >= 1.0, "{after}");
    assert!(
        moved("folio_fan_out_seconds_count") >= UPDATES as f64,
        "{after}"
    );
    // This server's own gauges: both editors are connected and subscribed.
    assert!(value(&after, "folio_connections") >= 2.0, "{after}");
    assert!(value(&after, "folio_subscriptions") >= 2.0, "{after}");
    assert!(value(&after, "folio_documents_resident") >= 1.0, "{after}");
    drop(reader);
    server.stop().await;
}

#[tokio::test]
async fn refused_update_is_counted_by_its_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let series = r#"folio_errors_total{code="invalid_update"}"#;
    let before = value(&scrape(&server).await, series);
    let mut editor = Editor::join(&server.ws_url(), "refusing", "e")
        .await
        .expect("joins");
    let conn = editor.conn_mut().expect("online");
    conn.send(client_message::Kind::Update(v1::Update {
        doc: "refusing".into(),
        update: Bytes::from_static(b"\xff\xff\xff"),
        seq: 1,
    }))
    .await
    .expect("send");
    match conn.recv().await {
        Ok(server_message::Kind::Error(e)) => assert_eq!(e.code(), ErrorCode::InvalidUpdate),
        other => panic!("expected an InvalidUpdate error, got {other:?}"),
    }
    let after = value(&scrape(&server).await, series);
    assert!(after >= before + 1.0, "{series}: {before} -> {after}");
    server.stop().await;
}

#[tokio::test]
async fn idle_documents_count_as_evictions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.evict_idle_secs = 1).await;
    let before = value(&scrape(&server).await, "folio_evictions_total");
    let editor = Editor::join(&server.ws_url(), "fleeting", "e")
        .await
        .expect("joins");
    drop(editor);
    eventually("an eviction", || async {
        let text = scrape(&server).await;
        (value(&text, "folio_evictions_total") > before
            && value(&text, "folio_documents_resident") == 0.0)
            .then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn log_lines_carry_the_connection_and_document_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, logs) = ChildServer::spawn_with_logs(dir.path(), &[], "warn,folio=debug");
    let has = |needles: &'static [&'static str]| {
        let logs = logs.clone();
        move || {
            let found = logs
                .lock()
                .expect("log lines")
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            std::future::ready(found)
        }
    };
    let _editor = Editor::join(&server.ws_url(), "traced", "alice")
        .await
        .expect("editor joins");
    // The load runs inside the connection's span and its own.
    let line = eventually(
        "the document load's log line",
        has(&[":doc_load{doc=traced}: document loaded"]),
    )
    .await;
    assert!(line.contains("ws{conn="), "{line}");
    let yjs_url = format!("ws://{}/yjs/traced-yjs", server.addr);
    let (_yjs, _) = tokio_tungstenite::connect_async(yjs_url.as_str())
        .await
        .expect("y-websocket connects");
    let line = eventually(
        "the y-websocket connection's log line",
        has(&[
            "doc=traced-yjs ip=127.0.0.1}",
            "y-websocket connection open",
        ]),
    )
    .await;
    assert!(line.contains("yws{conn="), "{line}");
    server.terminate();
}
