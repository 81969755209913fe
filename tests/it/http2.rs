//! HTTP/2: h2c with prior knowledge on plain TCP and h2 over TLS (ALPN), each
//! carrying many SSE streams on one connection; HTTP/1.1 over TLS; WebSockets
//! over HTTP/2 extended CONNECT (RFC 8441); mis-configured TLS refusing to start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use folio::client::Editor;
use folio::protocol::ysync;
use folio::tls::TlsError;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::Version;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact, Update};

use crate::sse::Watcher;
use crate::support::{TestServer, PATIENCE};

/// Concurrent SSE streams each test puts on its one connection.
const STREAMS: usize = 20;

/// Server-side sockets of `server` in state ESTABLISHED, as their remote
/// addresses, from `/proc/net/tcp` (the server runs in this process, so its
/// sockets are ours). `None` where that file does not exist.
fn established_server_sockets(server: &TestServer) -> Option<BTreeSet<String>> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").ok()?;
    // Addresses are hex in host byte order: 127.0.0.1 is 0100007F here.
    let local = format!("0100007F:{:04X}", server.addr.port());
    // A set: the kernel may list a socket twice when the table changes
    // while it is being read.
    Some(
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut cols = line.split_whitespace().skip(1);
                let (here, there, state) = (cols.next()?, cols.next()?, cols.next()?);
                (here == local && state == "01").then(|| there.to_owned())
            })
            .collect(),
    )
}

/// Opens [`STREAMS`] watchers of `doc` through `client` at once and checks
/// they came over HTTP/2 and that the server holds `sockets` connections (the
/// watchers' one plus any editor's).
async fn open_streams(
    server: &TestServer,
    client: &reqwest::Client,
    base: &str,
    doc: &str,
    sockets: usize,
) -> Vec<Watcher> {
    let url = format!("{base}/docs/{doc}/events");
    let mut watchers = futures_util::future::join_all(
        (0..STREAMS).map(|_| Watcher::connect_with(client, &url, None)),
    )
    .await;
    for w in &mut watchers {
        assert_eq!(w.version, Version::HTTP_2);
        w.next_of("reset").await;
    }
    if let Some(open) = established_server_sockets(server) {
        assert_eq!(
            open.len(),
            sockets,
            "{STREAMS} streams over one connection: {open:#?}"
        );
    }
    watchers
}

/// Checks every watcher sees `author`'s activity leaving the text `text_len`
/// long (skipping earlier activity, which a short window may split off).
async fn all_see_activity(watchers: Vec<Watcher>, author: &'static str, text_len: usize) {
    let tasks: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                loop {
                    let (_, activity) = w.next_of("activity").await;
                    assert_eq!(activity["author"], author);
                    if activity["text_len"] == text_len {
                        return;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("watcher got the activity");
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_carries_twenty_streams_on_one_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.activity_window_ms = 20).await;
    let base = server.url("");
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.version(), Version::HTTP_2);
    assert_eq!(health.status().as_u16(), 200);
    // The document must exist before anyone can watch it.
    let mut editor = Editor::join(&server.ws_url(), "h2c", "editor")
        .await
        .expect("join");
    let watchers = open_streams(&server, &client, &base, "h2c", 2).await;
    editor
        .type_patches(&[(0, 0, "one connection")])
        .await
        .expect("type");
    editor.wait_acked().await.expect("acked");
    all_see_activity(watchers, "editor", 14).await;
    editor.go_offline().await;
    stop_with_a_stream_open(server, &client, &base).await;
}

/// Stops `server` while a watcher's stream is open on `client`'s HTTP/2
/// connection: shutdown must end the stream rather than wait for it.
async fn stop_with_a_stream_open(server: TestServer, client: &reqwest::Client, base: &str) {
    let resp = client
        .get(format!("{base}/events"))
        .send()
        .await
        .expect("GET /events");
    assert_eq!(resp.version(), Version::HTTP_2);
    let mut body = resp.bytes_stream();
    tokio::time::timeout(PATIENCE, server.stop())
        .await
        .expect("shutdown with a stream open");
    tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await
    .expect("the stream ended");
}

/// Inserts `s` at `at` in `doc`; returns the update.
fn insert(doc: &yrs::Doc, text: &yrs::TextRef, at: u32, s: &str) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, at, s);
    txn.encode_update_v1()
}

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM.
struct SelfSigned {
    cert: PathBuf,
    key: PathBuf,
    pem: String,
    der: Vec<u8>,
}

impl SelfSigned {
    /// Makes a fresh key and certificate and writes them into `dir`.
    fn new(dir: &Path) -> Self {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("self-signed certificate");
        let this = Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            pem: cert.pem(),
            der: cert.der().to_vec(),
        };
        std::fs::write(&this.cert, &this.pem).expect("write cert");
        std::fs::write(&this.key, signing_key.serialize_pem()).expect("write key");
        this
    }
}

/// A client that trusts only `certs` and finds `localhost` at the server.
fn tls_client(server: &TestServer, certs: &SelfSigned) -> reqwest::ClientBuilder {
    let root = reqwest::Certificate::from_pem(certs.pem.as_bytes()).expect("certificate parses");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("localhost", server.addr)
}

#[tokio::test]
async fn tls_negotiates_h2_and_carries_twenty_streams_on_one_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = SelfSigned::new(dir.path());
    let server = TestServer::start_with(&dir.path().join("data"), |c| {
        c.activity_window_ms = 20;
        c.tls_cert = Some(certs.cert.clone());
        c.tls_key = Some(certs.key.clone());
    })
    .await;
    let base = format!("https://localhost:{}", server.addr.port());

    // HTTP/1.1 by ALPN still works.
    let h1 = tls_client(&server, &certs)
        .http1_only()
        .build()
        .expect("client");
    let health = h1
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz over TLS");
    assert_eq!(health.version(), Version::HTTP_11);
    assert_eq!(health.status().as_u16(), 200);
    drop(h1);

    // Plain HTTP on the TLS port gets nowhere.
    let plain = reqwest::get(server.url("/healthz")).await;
    assert!(plain.is_err(), "plain HTTP answered on the TLS port");

    // h2 by ALPN. One request first, so the pool knows the connection is
    // HTTP/2 before twenty requests race to open one each.
    let client = tls_client(&server, &certs).build().expect("client");
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz over h2");
    assert_eq!(health.version(), Version::HTTP_2);
    tokio::time::timeout(PATIENCE, async {
        // The two HTTP/1.1 connections above may take a moment to close.
        while established_server_sockets(&server).is_some_and(|open| open.len() > 1) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("earlier connections closed");
    // Folio's Rust editor speaks ws:// only, so the edits go through the
    // HTTP API, on the same connection: the first creates the document.
    let doc = folio::client::new_doc();
    let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
    let post = |update: Vec<u8>| {
        let req = client.post(format!("{base}/docs/tls/update")).body(update);
        async move {
            let resp = req.send().await.expect("POST update");
            assert_eq!(resp.version(), Version::HTTP_2);
            assert_eq!(resp.status().as_u16(), 200);
        }
    };
    post(insert(&doc, &text, 0, "made ")).await;
    let watchers = open_streams(&server, &client, &base, "tls", 1).await;
    post(insert(&doc, &text, 5, "over TLS")).await;
    all_see_activity(watchers, "http", 13).await;
    stop_with_a_stream_open(server, &client, &base).await;
}

/// Opens `/yjs/{doc}` at `uri` as a WebSocket over HTTP/2 extended CONNECT
/// (RFC 8441) on `io`, and returns the document's text from the server's
/// answer to a y-websocket step 1.
async fn yjs_text_over_h2<Io>(io: Io, uri: String) -> String
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(uri)
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(String::new())
        .expect("request");
    let resp = h2.send_request(req).await.expect("extended CONNECT");
    assert_eq!(resp.status().as_u16(), 200);
    let upgraded = hyper::upgrade::on(resp).await.expect("upgraded stream");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    // Our step 1 (an empty state vector) is answered with a step 2 carrying
    // the whole document.
    ws.send(Message::Binary(ysync::step1(&[0])))
        .await
        .expect("send step 1");
    let update = tokio::time::timeout(PATIENCE, async {
        while let Some(msg) = ws.next().await {
            if let Message::Binary(frame) = msg.expect("frame") {
                if let Ok(YMessage::Sync(SyncMessage::SyncStep2(update))) =
                    YMessage::decode_v1(&frame)
                {
                    return update;
                }
            }
        }
        panic!("the socket closed before step 2");
    })
    .await
    .expect("step 2 in time");
    let doc = folio::client::new_doc();
    let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
    doc.transact_mut()
        .apply_update(Update::decode_v1(&update).expect("update decodes"))
        .expect("update applies");
    let text = text.get_string(&doc.transact());
    text
}

#[tokio::test]
async fn websocket_over_h2c_extended_connect_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut editor = Editor::join(&server.ws_url(), "h2ws", "editor")
        .await
        .expect("join");
    editor
        .type_patches(&[(0, 0, "over h2c")])
        .await
        .expect("type");
    editor.wait_acked().await.expect("acked");
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let uri = format!("http://{}/yjs/h2ws", server.addr);
    assert_eq!(yjs_text_over_h2(tcp, uri).await, "over h2c");
    editor.go_offline().await;
    server.stop().await;
}

#[tokio::test]
async fn websocket_over_tls_h2_extended_connect_syncs() {
    use tokio_rustls::rustls::{self, pki_types};
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = SelfSigned::new(dir.path());
    let server = TestServer::start_with(&dir.path().join("data"), |c| {
        c.tls_cert = Some(certs.cert.clone());
        c.tls_key = Some(certs.key.clone());
    })
    .await;
    let base = format!("https://localhost:{}", server.addr.port());
    let doc = folio::client::new_doc();
    let text = doc.get_or_insert_text(folio::doc::TEXT_NAME);
    let resp = tls_client(&server, &certs)
        .build()
        .expect("client")
        .post(format!("{base}/docs/h2ws/update"))
        .body(insert(&doc, &text, 0, "over TLS h2"))
        .send()
        .await
        .expect("POST update");
    assert_eq!(resp.status().as_u16(), 200);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki_types::CertificateDer::from(certs.der.clone()))
        .expect("trust the certificate");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let name = pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        yjs_text_over_h2(tls, format!("{base}/yjs/h2ws")).await,
        "over TLS h2"
    );
    server.stop().await;
}

#[tokio::test]
async fn misconfigured_tls_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let SelfSigned { cert, key, .. } = SelfSigned::new(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let missing = dir.path().join("missing.pem");
    let cases: [(Option<&PathBuf>, Option<&PathBuf>, &str); 6] = [
        (Some(&cert), None, "--tls-cert is set without the other"),
        (None, Some(&key), "--tls-key is set without the other"),
        (Some(&missing), Some(&key), "missing.pem"),
        (Some(&garbage), Some(&key), "holds no CERTIFICATE"),
        (Some(&cert), Some(&garbage), "garbage.pem"),
        // The certificate's own file holds no private key.
        (Some(&cert), Some(&cert), "cert.pem"),
    ];
    for (i, (c, k, expected)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("data{i}"));
        let server = TestServer::start_with(&data, |config| {
            config.tls_cert = c.cloned();
            config.tls_key = k.cloned();
        })
        .await;
        let err = server.outcome().await.expect_err("start refused");
        assert!(
            matches!(err, folio::server::ServerError::Tls(_)),
            "case {i}: {err}"
        );
        let message = err.to_string();
        assert!(message.contains(expected), "case {i}: {message}");
        // Refused before the store was touched.
        assert!(!data.exists(), "case {i}: data dir created");
    }
    // A key that does not belong to the certificate.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let other_key = SelfSigned::new(&other).key;
    let server = TestServer::start_with(&dir.path().join("data-x"), |config| {
        config.tls_cert = Some(cert.clone());
        config.tls_key = Some(other_key);
    })
    .await;
    let err = server.outcome().await.expect_err("start refused");
    assert!(
        matches!(err, folio::server::ServerError::Tls(TlsError::Rustls(_))),
        "{err}"
    );
}
