//! `--protocol yjs`: the fan-out scenarios over plain y-websocket, so the
//! same measurement can be made against any Yjs server (issue 7, item 3).
//!
//! A client connects to `<base>/<doc>`, sends sync step 1 with an empty state
//! vector and reads until sync step 2. Writers send each keystroke as a sync
//! Update message; readers decode the Update messages they receive. There are
//! no seqs or acks, so a delivery is matched to its send by the FNV
//! fingerprint of the update's bytes (each trace update is unique). A server
//! that re-encodes or merges updates shows up as missing deliveries.

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, MessageReader, SyncMessage};
use yrs::updates::decoder::DecoderV1;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use super::wire::{connect, fingerprint, text_of, Ws, RECV_TIMEOUT};

/// The y-websocket URL of `doc` under the base URL (`ws://host:port/yjs`).
pub(crate) fn doc_url(base: &str, doc: &str) -> String {
    format!("{}/{doc}", base.trim_end_matches('/'))
}

/// A keystroke as a y-websocket frame: `[0, 2, varbytes update]`.
pub(crate) fn update_frame(update: &[u8]) -> Message {
    let msg = YMessage::Sync(SyncMessage::Update(update.to_vec()));
    Message::Binary(msg.encode_v1().into())
}

/// Calls `each` with the fingerprint of every sync Update in `frame`.
/// Anything else (step 1, awareness, keepalives) is ignored; a frame that
/// does not decode ends the scan.
pub(crate) fn for_each_update(frame: &[u8], mut each: impl FnMut(u64)) {
    let mut decoder = DecoderV1::from(frame);
    for msg in MessageReader::new(&mut decoder) {
        match msg {
            Ok(YMessage::Sync(SyncMessage::Update(u))) => each(fingerprint(&u)),
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

/// Connects to `doc` and syncs from nothing: returns the socket and the
/// server's sync step 2 (the document's state).
pub(crate) async fn join(base: &str, doc: &str) -> anyhow::Result<(Ws, Vec<u8>)> {
    let url = doc_url(base, doc);
    let mut ws = connect(&url, false).await?;
    let step1 = YMessage::Sync(SyncMessage::SyncStep1(StateVector::default()));
    ws.send(Message::Binary(step1.encode_v1().into())).await?;
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("{url}: timed out waiting for sync step 2"))?;
        let bytes = match next {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(f))) => bail!("{url}: server closed the socket: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("{url}: server closed the socket"),
        };
        let mut decoder = DecoderV1::from(bytes.as_ref());
        for msg in MessageReader::new(&mut decoder) {
            match msg {
                Ok(YMessage::Sync(SyncMessage::SyncStep2(state))) => return Ok((ws, state)),
                Ok(_) => continue,
                Err(e) => bail!("{url}: undecodable y-websocket frame: {e}"),
            }
        }
    }
}

/// A fresh client's view of `doc`'s text.
pub(crate) async fn server_text(base: &str, doc: &str) -> anyhow::Result<String> {
    let (ws, state) = join(base, doc).await?;
    drop(ws);
    text_of(&state)
}
