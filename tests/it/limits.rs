//! Limits and backpressure (issue 5): every limit refuses with its code,
//! applies nothing and leaves the other clients alone; slow and stalled
//! consumers cost the server a bounded amount of memory and are resynced or
//! closed; pings find clients that stopped answering.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use folio::client::{new_doc, ClientError, Connection, Editor, Event};
use folio::protocol::{client_message, server_message::Kind, v1, ClientMessage, ErrorCode};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};
use yrs::{Text, Transact};

use crate::support::{eventually, json_request, ChildServer, TestServer, PATIENCE};
use crate::sync::presence;
use crate::yjs::{server_text, yjs_url, YClient};

/// A Yjs update from a fresh client (id `client`) inserting `text` at 0:
/// independent of every other such update.
fn lone_insert(client: u64, text: &str) -> Bytes {
    let doc = folio::client::new_doc_with_client_id(client);
    let t = doc.get_or_insert_text(folio::doc::TEXT_NAME);
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    Bytes::from(txn.encode_update_v1())
}

/// Sends `update` as `seq` on `editor`'s connection without tracking it.
async fn send_raw_update(editor: &mut Editor, seq: u64, update: Bytes) {
    let doc = editor.doc_id().to_owned();
    editor
        .conn_mut()
        .expect("online")
        .send(client_message::Kind::Update(v1::Update {
            doc,
            update,
            seq,
        }))
        .await
        .expect("send");
}

/// Pumps `editor` until the update `seq` is acknowledged (`Ok`) or refused
/// (`Err`). Outcomes of other updates are dropped: use [`outcomes`] for several.
async fn outcome_of(editor: &mut Editor, seq: u64) -> Result<(), v1::Error> {
    loop {
        match editor.pump().await.expect("pump") {
            Event::Acked { seq: s, .. } if s == seq => return Ok(()),
            Event::Error(e) if e.seq == seq => return Err(e),
            _ => {}
        }
    }
}

/// The outcomes of the updates `1..=n`, in whatever order they arrive
/// (refusals other than storage failures come before earlier acks).
async fn outcomes(editor: &mut Editor, n: u64) -> Vec<Result<(), v1::Error>> {
    let mut got: Vec<Option<Result<(), v1::Error>>> = vec![None; n as usize];
    while got.iter().any(Option::is_none) {
        let (seq, outcome) = match editor.pump().await.expect("pump") {
            Event::Acked { seq, .. } => (seq, Ok(())),
            Event::Error(e) => (e.seq, Err(e)),
            _ => continue,
        };
        if let Some(slot) = seq.checked_sub(1).and_then(|i| got.get_mut(i as usize)) {
            *slot = Some(outcome);
        }
    }
    got.into_iter().flatten().collect()
}

/// A counter or gauge from a server's `/metrics` (0 if absent).
pub(crate) async fn metric(metrics_url: &str, name: &str) -> f64 {
    let text = reqwest::get(metrics_url)
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// Resident memory of process `pid` in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number");
    kib * 1024
}

/// Opens a WebSocket to `path` from the local address `ip` (any of
/// 127.0.0.0/8); the HTTP status if the upgrade was refused.
async fn ws_from(
    ip: &str,
    addr: SocketAddr,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, (u16, Option<String>, Value)>
{
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{ip}:0").parse().expect("address"))
        .expect("bind a loopback address");
    let stream = socket.connect(addr).await.expect("connect");
    match tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), retry_after, body))
        }
        Err(e) => panic!("upgrade to {path} failed: {e}"),
    }
}

#[tokio::test]
async fn updates_past_the_document_size_limit_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.limits.max_doc_bytes = 64 * 1024).await;
    let mut alice = Editor::join(&server.ws_url(), "big", "alice")
        .await
        .expect("join");
    let mut bob = Editor::join(&server.ws_url(), "big", "bob")
        .await
        .expect("join");
    assert_eq!(
        alice.conn_mut().expect("online").limits.max_doc_bytes,
        64 * 1024
    );
    let chunk = "y".repeat(8 * 1024);
    let mut accepted = 0;
    let refused = loop {
        let len = alice.len();
        let update = alice.edit(&[(len, 0, &chunk)]);
        let seq = alice.send_update(update).await.expect("send");
        match outcome_of(&mut alice, seq).await {
            Ok(()) => accepted += 1,
            Err(e) => break (seq, e),
        }
        assert!(accepted < 16, "never refused");
    };
    let (seq, error) = refused;
    assert_eq!(error.code, ErrorCode::DocTooLarge as i32, "{error:?}");
    assert_eq!((error.doc.as_str(), error.seq), ("big", seq));
    let text = server.text("big").await;
    assert_eq!(
        text.len(),
        accepted * chunk.len(),
        "the refused update changed nothing"
    );
    // Bob never saw it, and still hears what fits.
    bob.drain(Duration::from_millis(200)).await.expect("drain");
    assert_eq!(bob.text(), text);
    bob.type_patches(&[(0, 0, "ok")]).await.expect("type");
    bob.wait_acked().await.expect("a small edit fits");

    // The same bound on the other ways in: REST (413) and /yjs (close 4413).
    let resp = reqwest::Client::new()
        .post(server.url("/docs/big/update"))
        .body(lone_insert(7, &"z".repeat(16 * 1024)).to_vec())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "doc_too_large");
    let mut y = YClient::join(&yjs_url(server.addr, "big")).await;
    y.settle().await;
    let len = y.text().encode_utf16().count() as u32;
    y.type_at(len, &"w".repeat(16 * 1024)).await;
    assert_eq!(y.closed().await.0, 4413);
    assert_eq!(server.text("big").await, format!("ok{text}"));
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_caps_get_503_while_open_ones_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.limits.max_connections = 4;
        c.limits.max_connections_per_ip = 3;
    })
    .await;
    // Three from 127.0.0.1: two editors and an SSE watcher.
    let mut alice = Editor::join(&server.ws_url(), "caps", "alice")
        .await
        .expect("join");
    let mut bob = Editor::join(&server.ws_url(), "caps", "bob")
        .await
        .expect("join");
    let watcher = reqwest::get(server.url("/docs/caps/events"))
        .await
        .expect("watch");
    assert_eq!(watcher.status().as_u16(), 200);

    // A fourth from the same address: refused on every long-lived route.
    for path in ["/ws", "/yjs/caps"] {
        let (status, retry_after, body) = ws_from("127.0.0.1", server.addr, path)
            .await
            .expect_err("over the per-IP cap");
        assert_eq!(status, 503, "{path}");
        assert_eq!(body["error"]["code"], "too_many_connections", "{path}");
        assert!(retry_after.is_some(), "{path}: no Retry-After");
    }
    let sse = reqwest::get(server.url("/docs/caps/events"))
        .await
        .expect("GET");
    assert_eq!(sse.status().as_u16(), 503);
    // Short requests are not counted.
    assert_eq!(server.get_text("/healthz").await.0, 200);
    // Another address still has room, until the total is reached.
    let other = ws_from("127.0.0.2", server.addr, "/ws")
        .await
        .expect("the fourth connection in all");
    let (status, _, _) = ws_from("127.0.0.3", server.addr, "/ws")
        .await
        .expect_err("over the total cap");
    assert_eq!(status, 503);

    // The open sessions never noticed.
    alice
        .type_patches(&[(0, 0, "still here")])
        .await
        .expect("type");
    alice.wait_acked().await.expect("acked");
    loop {
        if let Event::Remote { .. } = bob.pump().await.expect("pump") {
            break;
        }
    }
    assert_eq!(bob.text(), "still here");

    // A closed connection gives its slot back.
    drop(other);
    eventually("a slot freed by a close", || async {
        ws_from("127.0.0.3", server.addr, "/ws").await.ok()
    })
    .await;
    drop(watcher);
    server.stop().await;
}

/// Opens a WebSocket to `/ws` from 127.0.0.1 carrying `headers` (as a
/// reverse proxy would add them); the HTTP status if the upgrade was refused.
async fn ws_with_headers(
    addr: SocketAddr,
    headers: &[(&'static str, &str)],
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, u16> {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .append(*name, value.parse().expect("header value"));
    }
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_per_ip_cap() {
    let xff = |v| [("x-forwarded-for", v)];
    // 127.0.0.1 is the proxy: every client it names gets its own cap of 1.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.limits.max_connections_per_ip = 1;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let first = ws_with_headers(server.addr, &xff("203.0.113.1"))
        .await
        .expect("the first client");
    let second = ws_with_headers(server.addr, &xff("203.0.113.2"))
        .await
        .expect("another client has its own cap");
    let third = ws_with_headers(
        server.addr,
        &[("forwarded", r#"for="[2001:db8::3]:4711";proto=http"#)],
    )
    .await
    .expect("a client named by Forwarded has its own cap too");
    // A client's cap still holds, even if it forges a hop left of the one
    // the proxy appended.
    for chain in ["203.0.113.1", "198.51.100.9, 203.0.113.1"] {
        let refused = ws_with_headers(server.addr, &xff(chain)).await.err();
        assert_eq!(refused, Some(503), "{chain}");
    }
    // A malformed header counts against the proxy's own address.
    let unreadable = ws_with_headers(server.addr, &xff("not-an-ip"))
        .await
        .expect("counted as 127.0.0.1");
    let refused = ws_with_headers(server.addr, &[("forwarded", "for=unknown")]).await;
    assert_eq!(refused.err(), Some(503), "127.0.0.1 is at its cap");
    drop((first, second, third, unreadable));
    server.stop().await;

    // No trusted proxies (the default): the headers are ignored and the
    // cap applies to the TCP peer.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.limits.max_connections_per_ip = 1).await;
    let first = ws_with_headers(server.addr, &xff("203.0.113.1"))
        .await
        .expect("the first connection");
    let refused = ws_with_headers(server.addr, &xff("203.0.113.2")).await;
    assert_eq!(refused.err(), Some(503), "a forged header does not help");
    drop(first);
    server.stop().await;
}

#[tokio::test]
async fn at_the_resident_bound_idle_documents_are_evicted_lru_and_busy_loads_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.limits.max_resident_docs = 3;
        c.evict_idle_secs = 3600;
    })
    .await;
    let resident = |server: &TestServer| {
        let url = server.url("/docs");
        async move {
            let (_, list) = json_request(Method::GET, url, None).await;
            list["docs"]
                .as_array()
                .expect("docs")
                .iter()
                .filter(|d| d["resident"] == true)
                .map(|d| d["id"].as_str().expect("id").to_owned())
                .collect::<BTreeSet<String>>()
        }
    };
    let set = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    let (status, _) = json_request(
        Method::PUT,
        server.url("/docs/r0"),
        Some(json!({"text": "zero"})),
    )
    .await;
    assert_eq!(status, 201);
    let mut conn = Connection::connect(&server.ws_url(), "many")
        .await
        .expect("connect");
    let subscribe = |doc: &str| {
        client_message::Kind::Subscribe(v1::Subscribe {
            doc: doc.to_owned(),
            ..Default::default()
        })
    };
    // r0 is idle: subscribing to a third and fourth document evicts it.
    for doc in ["r1", "r2", "r3"] {
        conn.send(subscribe(doc)).await.expect("send");
        match conn.recv().await.expect("answer") {
            Kind::Synced(s) => assert_eq!(s.doc, doc),
            other => panic!("{doc}: {other:?}"),
        }
    }
    assert_eq!(resident(&server).await, set(&["r1", "r2", "r3"]));

    // Every resident document is in use: a fifth is refused, everywhere.
    conn.send(subscribe("r4")).await.expect("send");
    match conn.recv().await.expect("answer") {
        Kind::Error(e) => {
            assert_eq!(e.code, ErrorCode::ServerBusy as i32, "{e:?}");
            assert_eq!(e.doc, "r4");
        }
        other => panic!("{other:?}"),
    }
    let resp = reqwest::get(server.url("/docs/r0/text"))
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "server_busy");
    let mut y = YClient::open(&yjs_url(server.addr, "r0"), new_doc()).await;
    y.send_step1().await;
    assert_eq!(y.closed().await.0, 1013);
    // Nothing was created or loaded for the refused ones; resident ones serve.
    assert_eq!(server.get_text("/docs/r4/text").await.0, 404);
    assert_eq!(server.get_text("/docs/r1/text").await.0, 200);
    assert_eq!(resident(&server).await, set(&["r1", "r2", "r3"]));

    // Least recently used first: r1 and r2 go idle, then r1 is read again.
    for doc in ["r1", "r2"] {
        conn.send(client_message::Kind::Unsubscribe(v1::Unsubscribe {
            doc: doc.to_owned(),
        }))
        .await
        .expect("send");
        assert!(matches!(
            conn.recv().await.expect("answer"),
            Kind::Unsubscribed(_)
        ));
        // Distinct milliseconds, so the order is unambiguous.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.get_text("/docs/r1/text").await.0, 200);
    conn.send(subscribe("r4")).await.expect("send");
    assert!(matches!(
        conn.recv().await.expect("answer"),
        Kind::Synced(_)
    ));
    assert_eq!(resident(&server).await, set(&["r1", "r3", "r4"]));
    // And an evicted document comes back whole.
    assert_eq!(server.text("r0").await, "zero");
    assert_eq!(resident(&server).await, set(&["r0", "r3", "r4"]));
    server.stop().await;
}

#[tokio::test]
async fn updates_and_awareness_past_the_rate_are_refused_and_can_be_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.limits.updates_per_sec = 2;
        c.limits.update_burst = 3;
        c.limits.awareness_per_sec = 2;
        c.limits.awareness_burst = 2;
    })
    .await;
    let mut alice = Editor::join(&server.ws_url(), "rated", "alice")
        .await
        .expect("join");
    let mut bob = Editor::join(&server.ws_url(), "rated", "bob")
        .await
        .expect("join");
    let limits = alice.conn_mut().expect("online").limits;
    assert_eq!((limits.updates_per_sec, limits.update_burst), (2, 3));
    assert_eq!((limits.awareness_per_sec, limits.awareness_burst), (2, 2));

    // Eight independent one-letter inserts at once: the burst goes in.
    let letters: Vec<char> = ('a'..='h').collect();
    let updates: Vec<Bytes> = letters
        .iter()
        .enumerate()
        .map(|(i, c)| lone_insert(100 + i as u64, &c.to_string()))
        .collect();
    for (i, update) in updates.iter().enumerate() {
        send_raw_update(&mut alice, i as u64 + 1, update.clone()).await;
    }
    let mut accepted = BTreeSet::new();
    let mut refused = Vec::new();
    for (i, outcome) in outcomes(&mut alice, updates.len() as u64)
        .await
        .into_iter()
        .enumerate()
    {
        let seq = i as u64 + 1;
        match outcome {
            Ok(()) => {
                accepted.insert(letters[i]);
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::RateLimited as i32, "{e:?}");
                assert_eq!(e.doc, "rated");
                assert!(e.retry_after_ms > 0, "{e:?}");
                refused.push((seq, e.retry_after_ms));
            }
        }
    }
    assert!(accepted.len() >= 3, "{accepted:?}");
    assert!(!refused.is_empty(), "nothing was refused");
    // Exactly the accepted ones reached the document and bob.
    let text: BTreeSet<char> = server.text("rated").await.chars().collect();
    assert_eq!(text, accepted);
    bob.drain(Duration::from_millis(200)).await.expect("drain");
    assert_eq!(bob.text().chars().collect::<BTreeSet<_>>(), accepted);

    // Sent again after the wait they asked for, they all go in.
    for (seq, mut wait_ms) in refused {
        for attempt in 0.. {
            assert!(attempt < 50, "update {seq} never accepted");
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            send_raw_update(&mut alice, seq, updates[seq as usize - 1].clone()).await;
            match outcome_of(&mut alice, seq).await {
                Ok(()) => break,
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited as i32);
                    wait_ms = e.retry_after_ms;
                }
            }
        }
    }
    let all: BTreeSet<char> = letters.iter().copied().collect();
    assert_eq!(
        server.text("rated").await.chars().collect::<BTreeSet<_>>(),
        all
    );

    // Awareness: the burst is relayed, the rest refused (seq 0) and dropped.
    bob.drain(Duration::from_millis(200)).await.expect("drain");
    for clock in 1..=5 {
        let json = format!(r#"{{"user":{{"name":"alice{clock}"}}}}"#);
        alice
            .send_awareness(presence(&alice, clock, &json))
            .await
            .expect("awareness");
    }
    alice
        .conn_mut()
        .expect("online")
        .send(client_message::Kind::Ping(v1::Ping { nonce: 9 }))
        .await
        .expect("ping");
    let mut limited = 0;
    loop {
        match alice.pump().await.expect("pump") {
            Event::Error(e) => {
                assert_eq!((e.code, e.seq), (ErrorCode::RateLimited as i32, 0), "{e:?}");
                assert!(e.retry_after_ms > 0);
                limited += 1;
            }
            Event::Other(Kind::Pong(p)) if p.nonce == 9 => break,
            _ => {}
        }
    }
    assert!(limited >= 1, "no awareness was refused");
    let heard = bob
        .drain(Duration::from_millis(300))
        .await
        .expect("drain")
        .into_iter()
        .filter(|e| matches!(e, Event::Awareness(_)))
        .count();
    assert_eq!(heard, 5 - limited);
    server.stop().await;
}

#[tokio::test]
async fn yjs_updates_past_the_rate_are_dropped_then_recovered_by_a_resync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.limits.updates_per_sec = 2;
        c.limits.update_burst = 2;
    })
    .await;
    let url = yjs_url(server.addr, "yrated");
    let mut y = YClient::join(&url).await;
    y.settle().await;
    let step1s = y.step1s;
    for word in ["one ", "two ", "three ", "four ", "five ", "six "] {
        let len = y.text().encode_utf16().count() as u32;
        y.type_at(len, word).await;
    }
    let want = y.text();
    // The server asks for what it dropped (a step 1) once the bucket
    // refills; the client's step 2 brings it all.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server_text(&server, "yrated").await != want {
        assert!(tokio::time::Instant::now() < deadline, "never resynced");
        let _ = y.next(Duration::from_millis(100)).await.expect("open");
    }
    assert!(y.step1s > step1s, "the server never asked for a resync");
    server.stop().await;
}

#[tokio::test]
async fn yjs_a_client_typing_over_the_rate_still_gets_the_dropped_updates_in() {
    use yrs::sync::{Message as YMessage, SyncMessage};
    use yrs::updates::decoder::Decode;
    use yrs::ReadTxn;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.limits.updates_per_sec = 1;
        c.limits.update_burst = 2;
    })
    .await;
    let url = yjs_url(server.addr, "ystarved");
    let mut y = YClient::join(&url).await;
    y.settle().await;
    for word in ["one ", "two ", "three ", "four "] {
        let len = y.text().encode_utf16().count() as u32;
        y.type_at(len, word).await;
    }
    // Each time the server asks (step 1) for what it dropped, the client
    // first types once more, taking the token the bucket has just refilled,
    // and only then answers: the answer must get in all the same, or a
    // client that keeps typing never catches up.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut asked = 0;
    while server_text(&server, "ystarved").await != y.text() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped updates never got in ({asked} step 1s answered)"
        );
        let frame = match tokio::time::timeout(Duration::from_millis(100), y.ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Binary(frame)))) => frame,
            Ok(other) => panic!("connection ended: {other:?}"),
        };
        if let Ok(YMessage::Sync(SyncMessage::SyncStep1(sv))) = YMessage::decode_v1(&frame) {
            asked += 1;
            let len = y.text().encode_utf16().count() as u32;
            y.type_at(len, "x").await;
            let diff = y.doc.transact().encode_diff_v1(&sv);
            y.send(folio::protocol::ysync::step2(&diff)).await;
        }
    }
    assert!(asked >= 1, "the server never asked for what it dropped");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_resynced_and_the_others_are_unaffected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| {
        c.limits.outbound_queue_bytes = 64 * 1024;
        c.limits.max_doc_bytes = 0;
        c.limits.stall_timeout_secs = 3600;
        c.limits.ping_interval_secs = 0;
    })
    .await;
    let url = server.ws_url();
    let mut slow = Editor::join(&url, "slowws", "slow").await.expect("join");
    let mut writer = Editor::join(&url, "slowws", "writer").await.expect("join");
    // A reader that keeps up, in its own task, reporting how far it got.
    let mut fast = Editor::join(&url, "slowws", "fast").await.expect("join");
    let (seen_tx, mut seen) = tokio::sync::watch::channel((0usize, 0usize));
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
    let fast_task = tokio::spawn(async move {
        let (mut remote, mut resynced) = (0, 0);
        loop {
            tokio::select! {
                _ = &mut done => return (fast, remote, resynced),
                event = fast.pump() => match event.expect("pump") {
                    Event::Remote { .. } => remote += 1,
                    Event::Resynced { .. } => resynced += 1,
                    _ => {}
                },
            }
            let _ = seen_tx.send((remote, resynced));
        }
    });
    // 16 MiB while `slow` reads nothing; each chunk waits until `fast` has it.
    const CHUNKS: usize = 256;
    let chunk = "x".repeat(64 * 1024);
    for i in 1..=CHUNKS {
        let len = writer.len();
        writer
            .type_patches(&[(len, 0, &chunk)])
            .await
            .expect("type");
        writer.wait_acked().await.expect("acked");
        seen.wait_for(|(remote, _)| *remote >= i)
            .await
            .expect("fast reader alive");
    }
    let _ = done_tx.send(());
    let (fast, fast_remote, fast_resynced) = fast_task.await.expect("fast task");
    let want = server.text("slowws").await;
    assert_eq!(fast.text(), want);
    assert_eq!(
        (fast_remote, fast_resynced),
        (CHUNKS, 0),
        "the fast reader was affected"
    );

    // Reading again, the slow one gets a Resynced in place of what it missed.
    let (mut remote, mut resynced) = (0, 0);
    while slow.text().len() < want.len() {
        match slow.pump().await.expect("still connected") {
            Event::Remote { .. } => remote += 1,
            Event::Resynced { doc_seq, .. } => {
                resynced += 1;
                assert!(doc_seq >= remote as u64);
            }
            _ => {}
        }
    }
    assert_eq!(slow.text(), want);
    assert!(
        resynced >= 1 && remote < CHUNKS,
        "{remote} relayed, {resynced} resyncs"
    );
    // Still subscribed: the next edit arrives as usual.
    writer.type_patches(&[(0, 0, "end")]).await.expect("type");
    loop {
        if let Event::Remote { .. } = slow.pump().await.expect("pump") {
            break;
        }
    }
    assert!(slow.text().starts_with("end"));
    server.stop().await;
}

/// `folio-bench hold` holding one connection to `doc`, and its stdout lines.
fn spawn_holder(ws_url: &str, doc: &str) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_folio-bench"))
        .args(["hold", "--url", ws_url, "--doc", doc, "--conns", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn folio-bench hold");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// The next line starting with `prefix`, failing after [`PATIENCE`].
fn line_starting(rx: &std::sync::mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
        if line.starts_with(prefix) {
            return line;
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig}");
}

#[tokio::test]
async fn a_sigstopped_client_leaves_server_memory_bounded_and_is_closed_as_stalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::spawn(
        dir.path(),
        &[
            "--outbound-queue-bytes",
            "262144",
            "--stall-timeout-secs",
            "5",
            "--awareness-per-sec",
            "0",
        ],
    );
    let metrics_url = server.url("/metrics");
    let (mut holder, lines) = spawn_holder(&server.ws_url(), "stopped");
    line_starting(&lines, "holding 1");
    let mut writer = Editor::join(&server.ws_url(), "stopped", "writer")
        .await
        .expect("join");
    let mut reader = Editor::join(&server.ws_url(), "stopped", "reader")
        .await
        .expect("join");
    let before = rss_bytes(server.child.id());
    signal(&holder, "-STOP");

    // 32 MiB of presence (not stored, so only queues could hold it), and
    // some edits, each waited for by the reader.
    const MESSAGES: u32 = 1000;
    let pad = "p".repeat(32 * 1024);
    for clock in 1..=MESSAGES {
        let json = format!(r#"{{"user":{{"name":"w"}},"pad":"{pad}{clock}"}}"#);
        writer
            .send_awareness(presence(&writer, clock, &json))
            .await
            .expect("awareness");
        loop {
            if let Event::Awareness(_) = reader.pump().await.expect("reader pump") {
                break;
            }
        }
        if clock % 100 == 0 {
            writer.type_patches(&[(0, 0, "e")]).await.expect("type");
            loop {
                if let Event::Remote { .. } = reader.pump().await.expect("reader pump") {
                    break;
                }
            }
        }
    }
    let after = rss_bytes(server.child.id());
    let grew = after.saturating_sub(before);
    eprintln!(
        "server RSS {} KiB before, {} KiB after {} MiB sent to a stopped client",
        before / 1024,
        after / 1024,
        (u64::from(MESSAGES) * pad.len() as u64) >> 20
    );
    assert!(grew < 16 << 20, "server RSS grew by {} KiB", grew / 1024);
    assert!(metric(&metrics_url, "folio_fell_behind_total").await >= 1.0);
    assert_eq!(reader.text(), "e".repeat(10));

    // Its socket takes nothing: after the stall timeout it is closed.
    eventually("the stalled connection closed", || async {
        (metric(
            &metrics_url,
            r#"folio_connections_closed_total{reason="stalled"}"#,
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    signal(&holder, "-CONT");
    line_starting(&lines, "closed");
    // The others never noticed.
    writer.type_patches(&[(0, 0, "f")]).await.expect("type");
    loop {
        if let Event::Remote { .. } = reader.pump().await.expect("reader pump") {
            break;
        }
    }
    assert_eq!(reader.text(), format!("f{}", "e".repeat(10)));
    let _ = holder.kill();
    let _ = holder.wait();
    server.kill9();
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_and_one_that_reads_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::spawn(
        dir.path(),
        &["--ping-interval-secs", "1", "--ping-timeout-secs", "5"],
    );
    let metrics_url = server.url("/metrics");
    // Reads nothing after its Welcome, so it never sends a pong.
    let mut silent = Connection::connect(&server.ws_url(), "silent")
        .await
        .expect("connect");
    // Reads all the time: tungstenite answers each ping as it reads.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("connect");
    let hello = ClientMessage {
        kind: Some(client_message::Kind::Hello(v1::Hello {
            protocol_version: 1,
            client_name: "reader".into(),
            ..Default::default()
        })),
    };
    ws.send(Message::Binary(hello.encode_to_vec().into()))
        .await
        .expect("hello");
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let reading = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            tokio::select! {
                _ = &mut stop => return (ws, pings),
                msg = ws.next() => match msg {
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    Some(Ok(Message::Close(frame))) => panic!("reader closed: {frame:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("reader socket ended: {other:?}"),
                },
            }
        }
    });

    eventually("the silent client closed", || async {
        (metric(
            &metrics_url,
            r#"folio_connections_closed_total{reason="ping_timeout"}"#,
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    let code = loop {
        match silent.recv().await {
            Err(ClientError::Closed { code, .. }) => break code,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, 4031);

    let _ = stop_tx.send(());
    let (mut ws, pings) = reading.await.expect("reader task");
    assert!(pings >= 1, "the reader was never pinged");
    let ping = ClientMessage {
        kind: Some(client_message::Kind::Ping(v1::Ping { nonce: 5 })),
    };
    ws.send(Message::Binary(ping.encode_to_vec().into()))
        .await
        .expect("ping");
    loop {
        match ws.next().await.expect("open").expect("frame") {
            Message::Binary(frame) => {
                let msg = folio::protocol::ServerMessage::decode(frame).expect("decodes");
                if let Some(Kind::Pong(p)) = msg.kind {
                    assert_eq!(p.nonce, 5);
                    break;
                }
            }
            Message::Close(frame) => panic!("reader closed: {frame:?}"),
            _ => {}
        }
    }
    assert_eq!(
        metric(
            &metrics_url,
            r#"folio_connections_closed_total{reason="ping_timeout"}"#
        )
        .await,
        1.0
    );
    server.kill9();
}
