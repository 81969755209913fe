//! Watchers over Server-Sent Events: event shapes, resume with
//! `Last-Event-ID`, keep-alives, the multi-document stream, text streams,
//! many watchers, and watchers that stop reading.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use folio::client::Editor;
use folio::feed::delta::{self, Op};
use folio::trace::{shared_trace, Trace};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::Value;

use crate::support::TestServer;
use crate::sync::presence;

/// How long a watcher waits for one event before the test fails.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// A real SSE client: reqwest plus eventsource-stream.
pub struct Watcher {
    events: BoxStream<'static, Result<Event, String>>,
    /// The HTTP version the stream came over.
    pub version: reqwest::Version,
}

impl Watcher {
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> Self {
        Self::connect_with(&reqwest::Client::new(), url, last_event_id).await
    }

    /// Connects through `client`, so many streams can share its connection.
    pub async fn connect_with(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let mut req = client.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.expect("connect");
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        assert_eq!(resp.headers()["x-accel-buffering"], "no");
        let version = resp.version();
        let events = resp
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed();
        Self { events, version }
    }

    /// The next event that has a type (skipping the comment-only retry hint).
    pub async fn next(&mut self) -> Event {
        loop {
            let event = tokio::time::timeout(EVENT_WAIT, self.events.next())
                .await
                .expect("an event in time")
                .expect("stream open")
                .expect("well-formed event");
            if !event.event.is_empty() && event.event != "message" {
                return event;
            }
        }
    }

    /// The next event of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> (Event, Value) {
        loop {
            let e = self.next().await;
            if e.event == kind {
                let data = serde_json::from_str(&e.data).expect("JSON data");
                return (e, data);
            }
        }
    }
}

fn n_of(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .expect("id is <epoch>-<n>")
}

#[tokio::test]
async fn watcher_sees_reset_presence_activity_and_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.snapshot_every_updates = 4;
        c.activity_window_ms = 100;
    })
    .await;
    let mut alice = Editor::join(&server.ws_url(), "shapes", "alice")
        .await
        .expect("join");
    let mut w = Watcher::connect(&server.url("/docs/shapes/events"), None).await;
    let (reset, data) = w.next_of("reset").await;
    assert_eq!(n_of(&reset.id), 1, "created is the first event");
    assert_eq!(data["doc"], "shapes");
    assert_eq!(data["watchers"], 1);
    assert_eq!(data["text_len"], 0);
    assert_eq!(data["presence"], Value::Array(vec![]));

    alice
        .send_awareness(presence(
            &alice,
            1,
            r##"{"user":{"name":"Alice","color":"#f00"},"cursor":2}"##,
        ))
        .await
        .expect("awareness");
    let (_, joined) = w.next_of("presence").await;
    assert_eq!(joined["action"], "joined");
    assert_eq!(joined["user"]["name"], "Alice");
    assert_eq!(joined["user"]["color"], "#f00");
    assert_eq!(joined["user"]["cursor"], 2);
    assert_eq!(joined["user"]["author"], "alice");

    for (i, word) in ["one ", "two ", "three ", "four"].iter().enumerate() {
        let len = alice.len();
        alice.type_patches(&[(len, 0, word)]).await.expect("type");
        let _ = i;
    }
    alice.wait_acked().await.expect("acked");
    // The snapshot lands within milliseconds, the activity after its
    // window: take both, in whichever order they come.
    let (mut activity, mut saved) = (Value::Null, Value::Null);
    while activity.is_null() || saved.is_null() {
        let e = w.next().await;
        let data: Value = serde_json::from_str(&e.data).expect("JSON data");
        match e.event.as_str() {
            "activity" => activity = data,
            "saved" => saved = data,
            other => panic!("unexpected {other} event"),
        }
    }
    assert_eq!(activity["author"], "alice");
    assert_eq!(activity["inserted"], 18);
    assert_eq!(activity["deleted"], 0);
    assert_eq!(activity["text_len"], 18);
    assert_eq!(activity["updates"], 4, "four keystrokes, one event");
    assert_eq!(activity["from"], 0);
    assert_eq!(activity["to"], 18);
    assert_eq!(saved["seq"], 4);

    alice.go_offline().await;
    let (_, left) = w.next_of("presence").await;
    assert_eq!(left["action"], "left");
    assert_eq!(left["user"]["name"], "Alice");

    let (_, body) = server.get_text("/docs").await;
    let docs: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(docs["docs"][0]["watchers"], 1);
    drop(w);
    server.stop().await;
}

/// Makes `count` presence events on `doc` through one editor.
async fn make_events(editor: &mut Editor, from_clock: u32, count: u32) {
    for i in 0..count {
        let clock = from_clock + i;
        let json = format!(r#"{{"user":{{"name":"n{clock}"}}}}"#);
        editor
            .send_awareness(presence(editor, clock, &json))
            .await
            .expect("awareness");
    }
}

#[tokio::test]
async fn resume_with_last_event_id_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut e = Editor::join(&server.ws_url(), "resume", "e")
        .await
        .expect("join");
    let url = server.url("/docs/resume/events");
    let mut w = Watcher::connect(&url, None).await;
    w.next_of("reset").await;
    make_events(&mut e, 1, 5).await;
    let mut last = String::new();
    for _ in 0..5 {
        last = w.next_of("presence").await.0.id;
    }
    drop(w);
    make_events(&mut e, 6, 7).await;
    // Make sure all seven are published before resuming.
    let mut probe = Watcher::connect(&format!("{url}?lastEventId={last}"), None).await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        let (event, data) = probe.next_of("presence").await;
        seen.push((n_of(&event.id), data["user"]["name"].clone()));
    }
    let first = n_of(&last) + 1;
    let expected: Vec<u64> = (first..first + 7).collect();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), expected);
    assert_eq!(seen[0].1, "n6");
    assert_eq!(seen[6].1, "n12");
    // The header works the same way, and the stream then goes live.
    let mut w = Watcher::connect(&url, Some(&last)).await;
    for n in expected {
        assert_eq!(n_of(&w.next_of("presence").await.0.id), n);
    }
    make_events(&mut e, 13, 1).await;
    let (event, data) = w.next_of("presence").await;
    assert_eq!(n_of(&event.id), first + 7);
    assert_eq!(data["user"]["name"], "n13");
    server.stop().await;
}

#[tokio::test]
async fn too_old_or_foreign_ids_get_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.feed_history_events = 3).await;
    let mut e = Editor::join(&server.ws_url(), "old", "e")
        .await
        .expect("join");
    let url = server.url("/docs/old/events");
    let mut w = Watcher::connect(&url, None).await;
    let (reset, _) = w.next_of("reset").await;
    make_events(&mut e, 1, 10).await;
    for _ in 0..10 {
        w.next_of("presence").await;
    }
    // History keeps 3 events: resuming from the start is too old.
    let mut old = Watcher::connect(&url, Some(&reset.id)).await;
    let first = old.next().await;
    assert_eq!(first.event, "reset");
    let state: Value = serde_json::from_str(&first.data).expect("json");
    assert_eq!(state["presence"][0]["name"], "n10");
    assert_eq!(n_of(&first.id), n_of(&reset.id) + 10);
    // An id from another run, and garbage, get a reset too.
    for id in ["1-1", "garbage"] {
        let mut w = Watcher::connect(&url, Some(id)).await;
        assert_eq!(w.next().await.event, "reset", "{id}");
    }
    e.go_offline().await;
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let mut again = Watcher::connect(&server.url("/docs/old/events"), Some(&reset.id)).await;
    let first = again.next().await;
    assert_eq!(first.event, "reset", "an id from before the restart");
    assert_ne!(
        first.id.split('-').next(),
        reset.id.split('-').next(),
        "a new epoch after a restart"
    );
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_comments_flow_on_an_idle_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.sse_keepalive_secs = 1).await;
    let _e = Editor::join(&server.ws_url(), "quiet", "e")
        .await
        .expect("join");
    let resp = reqwest::get(server.url("/docs/quiet/events"))
        .await
        .expect("connect");
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains(": keep-alive") {
        let chunk: Bytes = tokio::time::timeout(EVENT_WAIT, body.next())
            .await
            .expect("bytes in time")
            .expect("open")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("retry: 2000"), "{seen}");
    server.stop().await;
}

#[tokio::test]
async fn one_stream_carries_the_named_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut a = Editor::join(&url, "team/a", "a").await.expect("join");
    let mut b = Editor::join(&url, "team/b", "b").await.expect("join");
    let mut c = Editor::join(&url, "team/c", "c").await.expect("join");
    let mut w = Watcher::connect(&server.url("/events?docs=team%2Fa,team%2Fb"), None).await;
    let (_, reset) = w.next_of("reset").await;
    let docs: Vec<&str> = reset["docs"]
        .as_array()
        .expect("docs")
        .iter()
        .filter_map(|d| d["doc"].as_str())
        .collect();
    assert_eq!(docs, ["team/a", "team/b"]);
    make_events(&mut c, 1, 1).await;
    make_events(&mut a, 1, 1).await;
    make_events(&mut b, 1, 1).await;
    let (_, first) = w.next_of("presence").await;
    let (_, second) = w.next_of("presence").await;
    assert_eq!(first["doc"], "team/a");
    assert_eq!(second["doc"], "team/b");

    // Without `docs`, everything, including a new document's creation.
    let mut all = Watcher::connect(&server.url("/events"), None).await;
    all.next_of("reset").await;
    let _d = Editor::join(&url, "team/d", "d").await.expect("join");
    let (_, created) = all.next_of("doc").await;
    assert_eq!(created["doc"], "team/d");
    assert_eq!(created["action"], "created");
    server.stop().await;
}

#[tokio::test]
async fn text_stream_deltas_reproduce_the_typed_trace() {
    let trace = Trace::load(shared_trace("sequential/sveltecomponent.json.gz")).expect("trace");
    let dir = tempfile::tempdir().expect("tempdir");
    // The trace is typed as fast as acks allow: past the default rate limit.
    let server = TestServer::start_with(dir.path(), |c| c.limits.updates_per_sec = 0).await;
    let mut typist = Editor::join(&server.ws_url(), "svelte", "typist")
        .await
        .expect("join");
    let half = trace.txns.len() / 2;
    for txn in &trace.txns[..half] {
        typist
            .type_patches(&Trace::patches(txn))
            .await
            .expect("type");
        typist.wait_acked_below(256).await.expect("acks");
    }
    typist.wait_acked().await.expect("acked");
    // Join mid-way: the first event is the text so far.
    let mut w = Watcher::connect(&server.url("/docs/svelte/text/stream"), None).await;
    let first = w.next().await;
    assert_eq!(first.event, "text");
    let mut text = serde_json::from_str::<Value>(&first.data).expect("json")["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert_eq!(text, trace.text_after(half));
    let watcher = tokio::spawn(async move {
        let mut deltas = 0;
        while text != trace.end_content {
            let e = w.next().await;
            assert_eq!(e.event, "delta");
            let ops: Vec<Op> = serde_json::from_str(&e.data).expect("delta JSON");
            text = delta::apply(&text, &ops).expect("delta applies");
            deltas += 1;
        }
        deltas
    });
    let trace = Trace::load(shared_trace("sequential/sveltecomponent.json.gz")).expect("trace");
    for txn in &trace.txns[half..] {
        typist
            .type_patches(&Trace::patches(txn))
            .await
            .expect("type");
        typist.wait_acked_below(256).await.expect("acks");
    }
    typist.wait_acked().await.expect("acked");
    let deltas = watcher.await.expect("watcher reproduced the text");
    assert!(
        deltas > 0 && deltas < trace.txns.len() - half,
        "coalesced: {deltas}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_watchers_all_receive_an_edit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.activity_window_ms = 20;
        // A thousand streams from one address: past the default per-IP cap.
        c.limits.max_connections_per_ip = 0;
    })
    .await;
    let mut e = Editor::join(&server.ws_url(), "crowd", "editor")
        .await
        .expect("join");
    let url = server.url("/docs/crowd/events");
    let mut watchers = Vec::new();
    for _ in 0..1000 {
        let mut w = Watcher::connect(&url, None).await;
        w.next_of("reset").await;
        watchers.push(w);
    }
    let (_, body) = server.get_text("/docs").await;
    let docs: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(docs["docs"][0]["watchers"], 1000);
    e.type_patches(&[(0, 0, "hello, everyone")])
        .await
        .expect("type");
    e.wait_acked().await.expect("acked");
    let tasks: Vec<_> = watchers
        .into_iter()
        .map(|mut w| tokio::spawn(async move { w.next_of("activity").await.1 }))
        .collect();
    let mut authors = HashSet::new();
    for t in tasks {
        let data = t.await.expect("watcher got the activity");
        assert_eq!(data["inserted"], 15);
        authors.insert(data["author"].as_str().map(str::to_owned));
    }
    assert_eq!(authors.len(), 1);
    // Watchers that went away are no longer counted.
    crate::support::eventually("the watchers to be gone", || async {
        let (_, body) = server.get_text("/docs").await;
        let docs: Value = serde_json::from_str(&body).expect("json");
        (docs["docs"][0]["watchers"] == 0).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_stops_reading_gets_a_reset_not_a_backlog() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    // The editor floods presence: past the default awareness rate.
    let server = TestServer::start_with(dir.path(), |c| c.limits.awareness_per_sec = 0).await;
    let mut e = Editor::join(&server.ws_url(), "flood", "e")
        .await
        .expect("join");
    // A raw socket with a tiny receive window, which then stops reading.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /docs/flood/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !line.starts_with("event: reset") {
        line.clear();
        reader.read_line(&mut line).await.expect("read");
    }
    // Far more events than the channel (1024) and the socket buffers hold,
    // each carrying 4 KiB, while the watcher reads nothing.
    let name = "x".repeat(4096);
    for clock in 1..=8000u32 {
        let json = format!(r#"{{"user":{{"name":"{name}{clock}"}}}}"#);
        e.send_awareness(presence(&e, clock, &json))
            .await
            .expect("awareness");
    }
    e.send_awareness(presence(&e, 8001, r#"{"user":{"name":"last"}}"#))
        .await
        .expect("awareness");
    // Reading again: the watcher must meet a reset before the last event,
    // having been skipped past what it could not hold.
    let mut presences = 0;
    let mut reset_seen = false;
    loop {
        line.clear();
        tokio::time::timeout(EVENT_WAIT, reader.read_line(&mut line))
            .await
            .expect("data in time")
            .expect("read");
        if line.starts_with("event: reset") {
            reset_seen = true;
        }
        if line.starts_with("event: presence") {
            presences += 1;
        }
        if line.contains("\"last\"") {
            break;
        }
    }
    assert!(reset_seen, "no reset after falling behind");
    assert!(presences < 8000, "got the whole backlog ({presences})");
    server.stop().await;
}
