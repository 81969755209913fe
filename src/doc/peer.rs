//! [`Peer`]: a connection as the shards see it: a bounded outbound queue and a
//! way to tell the connection that a shard dropped it.

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use super::DocId;

/// What a connection's writer task sends on the socket.
#[derive(Debug)]
pub enum Outbound {
    /// One encoded `ServerMessage`, shared with every other recipient.
    Frame(Bytes),
    /// Close the socket with this code and reason, then stop.
    Close(u16, String),
}

/// The framing a peer speaks: shards encode each broadcast once per wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Folio's protobuf protocol on `/ws`.
    Folio,
    /// The y-protocols sync protocol of the `y-websocket` provider on `/yjs/{doc}`.
    YSync,
}

/// Why a shard dropped a peer from a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its queue was full: it fell behind.
    SlowConsumer,
    /// The shard was poisoned and will be reloaded from disk.
    Reloaded,
    /// The document was deleted.
    Deleted,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("outbound queue full")]
    Full,
    #[error("connection closed")]
    Closed,
}

/// A connection's handle, shared by the connection and every shard it follows.
#[derive(Debug)]
pub struct Peer {
    id: u64,
    wire: Wire,
    tx: mpsc::Sender<Outbound>,
    /// Docs whose shard dropped this peer because its queue was full. Bounded
    /// by the number of docs the connection may follow.
    lagged: Mutex<Vec<(DocId, DropReason)>>,
    lag_notify: Notify,
}

impl Peer {
    /// A peer speaking `wire` whose frames go to `tx`.
    pub fn new(id: u64, wire: Wire, tx: mpsc::Sender<Outbound>) -> Self {
        Self {
            id,
            wire,
            tx,
            lagged: Mutex::new(Vec::new()),
            lag_notify: Notify::new(),
        }
    }

    /// The connection id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The framing this peer speaks.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// Queues a close without waiting (used when the peer's wire has no way
    /// to carry an error for one document).
    pub fn try_close(&self, code: u16, reason: &str) {
        let _ = self.tx.try_send(Outbound::Close(code, reason.to_owned()));
    }

    /// Queues a frame without waiting: for broadcasts, which must never wait
    /// on one slow socket.
    ///
    /// # Errors
    /// [`SendError::Full`] when the queue is at its limit, [`SendError::Closed`]
    /// when the connection is gone.
    pub fn try_send(&self, frame: Bytes) -> Result<(), SendError> {
        self.tx
            .try_send(Outbound::Frame(frame))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            })
    }

    /// Queues a frame or close, waiting for room: for replies to this
    /// connection's own requests, so a client that does not read stops being read.
    ///
    /// # Errors
    /// [`SendError::Closed`] when the connection is gone.
    pub async fn send(&self, out: Outbound) -> Result<(), SendError> {
        self.tx.send(out).await.map_err(|_| SendError::Closed)
    }

    /// Called by a shard that dropped this peer for falling behind.
    pub fn mark_lagged(&self, doc: DocId) {
        self.mark_dropped(doc, DropReason::SlowConsumer);
    }

    /// Called by a shard that dropped this peer from `doc`. The connection
    /// learns of it through [`Peer::lagged`] and tells its client once its
    /// queue has room.
    pub fn mark_dropped(&self, doc: DocId, reason: DropReason) {
        self.lagged.lock().push((doc, reason));
        self.lag_notify.notify_one();
    }

    /// Waits until some shard has dropped this peer.
    pub async fn lagged(&self) {
        self.lag_notify.notified().await;
    }

    /// The docs that dropped this peer since the last call.
    pub fn take_lagged(&self) -> Vec<DocId> {
        self.take_dropped()
            .into_iter()
            .map(|(doc, _)| doc)
            .collect()
    }

    /// The docs that dropped this peer since the last call, and why.
    pub fn take_dropped(&self) -> Vec<(DocId, DropReason)> {
        std::mem::take(&mut *self.lagged.lock())
    }
}
