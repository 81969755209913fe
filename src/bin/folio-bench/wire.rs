//! The Folio protocol as the load tool speaks it: connect, Hello, Subscribe,
//! receive with a deadline, and small helpers shared by the scenarios.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use folio::client::new_doc_with_client_id;
use folio::doc::TEXT_NAME;
use folio::protocol::{
    client_message, server_message, v1, ClientMessage, ServerMessage, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::{GetString, Transact};

/// A client socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for any one expected message; a run never hangs longer.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(20);

fn ws_config(small: bool) -> WebSocketConfig {
    if small {
        // Thousands of idle clients: keep the tool's own memory small too.
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
    } else {
        WebSocketConfig::default()
    }
}

pub async fn connect(url: &str, small: bool) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        RECV_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config(small)), true),
    )
    .await
    .map_err(|_| anyhow!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// One `ClientMessage` as a binary frame.
pub fn frame(kind: client_message::Kind) -> Message {
    Message::Binary(ClientMessage { kind: Some(kind) }.encode_to_vec().into())
}

/// The next `ServerMessage`, waiting at most [`RECV_TIMEOUT`].
pub async fn recv(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> anyhow::Result<server_message::Kind> {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))?;
        match next {
            Some(Ok(Message::Binary(bytes))) => {
                return ServerMessage::decode(bytes)?
                    .kind
                    .ok_or_else(|| anyhow!("empty ServerMessage"))
            }
            Some(Ok(Message::Close(f))) => bail!("server closed the socket: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("server closed the socket"),
        }
    }
}

/// Connects, says Hello and subscribes to `doc`; returns the socket and the `Synced`.
pub async fn join(
    url: &str,
    doc: &str,
    small: bool,
) -> anyhow::Result<(Ws, v1::Synced, v1::Limits)> {
    let mut ws = connect(url, small).await?;
    let limits = hello(&mut ws).await?;
    let synced = subscribe(&mut ws, doc).await?;
    Ok((ws, synced, limits))
}

/// Says Hello; returns the limits the server announced.
pub async fn hello(ws: &mut Ws) -> anyhow::Result<v1::Limits> {
    ws.send(frame(client_message::Kind::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "folio-bench".into(),
        ..Default::default()
    })))
    .await?;
    match recv(ws).await? {
        server_message::Kind::Welcome(w) => Ok(w.limits.unwrap_or_default()),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

/// Subscribes with an empty state vector and waits for `Synced`.
pub async fn subscribe(ws: &mut Ws, doc: &str) -> anyhow::Result<v1::Synced> {
    ws.send(frame(client_message::Kind::Subscribe(v1::Subscribe {
        doc: doc.into(),
        state_vector: Bytes::new(),
        ..Default::default()
    })))
    .await?;
    loop {
        match recv(ws).await? {
            server_message::Kind::Synced(s) => return Ok(s),
            server_message::Kind::Error(e) => bail!("subscribe to {doc} refused: {e:?}"),
            _ => continue,
        }
    }
}

/// The text of a document's full state.
pub fn text_of(update: &[u8]) -> anyhow::Result<String> {
    let doc = new_doc_with_client_id(u64::MAX >> 12);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let update =
        yrs::Update::decode_v1(update).map_err(|e| anyhow!("state does not decode: {e}"))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| anyhow!("state does not apply: {e}"))?;
    let s = text.get_string(&doc.transact());
    Ok(s)
}

/// A fresh subscriber's view of `doc`'s text.
pub async fn server_text(url: &str, doc: &str) -> anyhow::Result<String> {
    let (ws, synced, _) = join(url, doc, true).await?;
    drop(ws);
    text_of(&synced.update)
}

/// FNV-1a: identifies an update's bytes between the writer and the readers.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64, for seeded choices without another dependency.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `GET path` on the HTTP side of the server behind `ws_url`, over plain
/// HTTP/1.0 (the server closes after the response, so no chunking or
/// keep-alive to handle); returns the body of a 200 response. Blocking:
/// call it off the async workers. Used to read `/metrics`.
pub fn http_get(ws_url: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let host = ws_url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| anyhow!("not a ws:// URL: {ws_url}"))?;
    let mut tcp =
        std::net::TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    tcp.set_read_timeout(Some(RECV_TIMEOUT))?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .with_context(|| format!("reading GET {path}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: no end of headers"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("GET {path}: status {status}");
    }
    Ok(body.to_owned())
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}
