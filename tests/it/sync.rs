//! Editors converge, presence travels, reconnects exchange only what is missing.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use folio::client::{Editor, Event};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::ClientID;

use crate::support::{seed, TestServer, PATIENCE};

const QUIET: Duration = Duration::from_millis(30);

/// An awareness update setting `editor`'s presence to `json` at `clock`.
pub fn presence(editor: &Editor, clock: u32, json: &str) -> Bytes {
    let update = AwarenessUpdate {
        clients: HashMap::from([(
            editor.doc().client_id(),
            AwarenessUpdateEntry {
                clock,
                json: json.into(),
            },
        )]),
    };
    Bytes::from(update.encode_v1())
}

fn decode_presence(bytes: &[u8]) -> HashMap<ClientID, String> {
    AwarenessUpdate::decode_v1(bytes)
        .expect("valid awareness")
        .clients
        .into_iter()
        .map(|(id, e)| (id, e.json.to_string()))
        .collect()
}

/// Pumps `editor` until an awareness update arrives; returns its states.
async fn next_presence(editor: &mut Editor) -> HashMap<ClientID, String> {
    loop {
        if let Event::Awareness(bytes) = editor.pump().await.expect("pump") {
            return decode_presence(&bytes);
        }
    }
}

/// Pumps every online editor until all of them and the server agree.
pub async fn converge(server: &TestServer, doc: &str, editors: &mut [Editor]) -> String {
    for e in editors.iter_mut() {
        e.wait_acked().await.expect("every update acknowledged");
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        for e in editors.iter_mut() {
            e.drain(QUIET).await.expect("drain");
        }
        let server_text = server.text(doc).await;
        if editors.iter().all(|e| e.text() == server_text) {
            return server_text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "editors and server never agreed"
        );
    }
}

#[tokio::test]
async fn two_editors_converge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut a = Editor::join(&url, "pair", "alice")
        .await
        .expect("alice joins");
    let mut b = Editor::join(&url, "pair", "bob").await.expect("bob joins");
    a.type_patches(&[(0, 0, "hello")]).await.expect("type");
    b.type_patches(&[(0, 0, "world")]).await.expect("type");
    let mut editors = [a, b];
    let text = converge(&server, "pair", &mut editors).await;
    assert_eq!(text.len(), 10);
    assert!(text.contains("hello") && text.contains("world"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn sender_gets_an_ack_and_never_its_own_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut a = Editor::join(&url, "echo", "alice").await.expect("join");
    let mut b = Editor::join(&url, "echo", "bob").await.expect("join");
    a.type_patches(&[(0, 0, "x")]).await.expect("type");
    let acked = loop {
        match a.pump().await.expect("pump") {
            Event::Acked { seq, doc_seq } => break (seq, doc_seq),
            Event::Remote { .. } => panic!("the sender got its own update back"),
            _ => {}
        }
    };
    assert_eq!(acked, (1, 1));
    let got = loop {
        if let Event::Remote { doc_seq } = b.pump().await.expect("pump") {
            break doc_seq;
        }
    };
    assert_eq!(got, 1);
    assert_eq!(b.text(), "x");
    let later = a.drain(Duration::from_millis(200)).await.expect("drain");
    assert!(
        later.iter().all(|e| !matches!(e, Event::Remote { .. })),
        "{later:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn ten_editors_with_offline_periods_converge() {
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut editors = Vec::new();
    for i in 0..10 {
        editors.push(
            Editor::join(&url, "crowd", &format!("e{i}"))
                .await
                .expect("join"),
        );
    }
    for _round in 0..40 {
        for e in editors.iter_mut() {
            if e.is_online() && rng.random_bool(0.05) {
                e.go_offline().await;
            } else if !e.is_online() && rng.random_bool(0.2) {
                e.reconnect(&url).await.expect("reconnect");
            }
            let len = e.len();
            let patch = if len > 0 && rng.random_bool(0.3) {
                let pos = rng.random_range(0..len);
                let del = rng.random_range(1..=(len - pos).min(5));
                (pos, del, "")
            } else {
                let pos = rng.random_range(0..=len);
                (
                    pos,
                    0,
                    ["a", "bc", "def", " ", "\n"][rng.random_range(0..5)],
                )
            };
            e.type_patches(&[patch]).await.expect("type");
            if e.is_online() {
                e.drain(Duration::from_millis(1)).await.expect("drain");
            }
        }
    }
    for e in editors.iter_mut() {
        if !e.is_online() {
            e.reconnect(&url).await.expect("reconnect");
        }
    }
    let text = converge(&server, "crowd", &mut editors).await;
    assert!(!text.is_empty(), "seed {seed}");
    server.stop().await;
}

#[tokio::test]
async fn late_joiner_gets_state_and_presence_which_goes_on_disconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut a = Editor::join(&url, "room", "alice").await.expect("join");
    a.type_patches(&[(0, 0, "shared text")])
        .await
        .expect("type");
    a.wait_acked().await.expect("acked");
    let alice_presence = presence(&a, 1, r#"{"user":{"name":"alice"}}"#);
    a.send_awareness(alice_presence).await.expect("awareness");
    // A round trip, so the awareness is surely applied before bob joins.
    a.conn_mut()
        .expect("online")
        .send(folio::protocol::client_message::Kind::Ping(
            folio::protocol::v1::Ping { nonce: 9 },
        ))
        .await
        .expect("ping");
    loop {
        if let Event::Other(folio::protocol::server_message::Kind::Pong(p)) =
            a.pump().await.expect("pump")
        {
            assert_eq!(p.nonce, 9);
            break;
        }
    }

    let mut b = Editor::join(&url, "room", "bob").await.expect("join");
    assert_eq!(b.text(), "shared text");
    let seen = decode_presence(&b.synced_awareness);
    assert_eq!(
        seen.get(&a.doc().client_id()).map(String::as_str),
        Some(r#"{"user":{"name":"alice"}}"#)
    );

    a.go_offline().await;
    let removed = next_presence(&mut b).await;
    assert_eq!(
        removed.get(&a.doc().client_id()).map(String::as_str),
        Some("null")
    );
    server.stop().await;
}

#[tokio::test]
async fn awareness_is_relayed_and_removed_on_unsubscribe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut a = Editor::join(&url, "cursors", "alice").await.expect("join");
    let mut b = Editor::join(&url, "cursors", "bob").await.expect("join");
    a.send_awareness(presence(&a, 1, r#"{"cursor":3}"#))
        .await
        .expect("awareness");
    let relayed = next_presence(&mut b).await;
    assert_eq!(
        relayed.get(&a.doc().client_id()).map(String::as_str),
        Some(r#"{"cursor":3}"#)
    );
    a.conn_mut()
        .expect("online")
        .send(folio::protocol::client_message::Kind::Unsubscribe(
            folio::protocol::v1::Unsubscribe {
                doc: "cursors".into(),
            },
        ))
        .await
        .expect("unsubscribe");
    let removed = next_presence(&mut b).await;
    assert_eq!(
        removed.get(&a.doc().client_id()).map(String::as_str),
        Some("null")
    );
    server.stop().await;
}

#[tokio::test]
async fn reconnect_exchanges_only_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let url = server.ws_url();
    let mut a = Editor::join(&url, "big", "alice").await.expect("join");
    let b = Editor::join(&url, "big", "bob").await.expect("join");
    let para = "All work and no play makes a long document. ".repeat(200);
    for chunk in para.as_bytes().chunks(50) {
        let chunk = std::str::from_utf8(chunk).expect("ascii");
        let len = a.len();
        a.type_patches(&[(len, 0, chunk)]).await.expect("type");
    }
    let mut both = [a, b];
    converge(&server, "big", &mut both).await;
    let [mut a, mut b] = both;

    b.go_offline().await;
    a.type_patches(&[(0, 0, "NEW ")]).await.expect("type");
    a.wait_acked().await.expect("acked");
    b.type_patches(&[(5, 0, "mine ")])
        .await
        .expect("offline edit");
    b.reconnect(&url).await.expect("reconnect");
    let full_len = server.get_bytes("/docs/big/state").await.len();
    assert!(
        b.synced_update_bytes * 20 < full_len,
        "resync sent {} bytes for a {} byte document",
        b.synced_update_bytes,
        full_len
    );
    let mut both = [a, b];
    let text = converge(&server, "big", &mut both).await;
    assert!(
        text.starts_with("NEW ") && text.contains("mine "),
        "{}",
        &text[..40]
    );
    server.stop().await;
}
