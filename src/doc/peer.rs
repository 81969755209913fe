//! [`Peer`]: a connection as the shards see it: an outbound queue bounded in
//! bytes, and a way to tell the connection that a shard dropped it or that it
//! fell behind a document.
//!
//! The queue is an unbounded channel whose bytes are counted by a
//! [`QueueMeter`] shared with the connection's writer task: a frame is
//! counted when queued and released once written to the socket, so the
//! count covers everything the connection holds that the socket has not
//! taken. What happens at the bound depends on the frame:
//! - broadcasts ([`Peer::try_send`]) never wait: they fail with
//!   [`SendError::Full`], and the shard then skips that member until it
//!   resyncs it (see `DocShard::resync`);
//! - replies to the connection's own messages ([`Peer::send`]) wait for room,
//!   so a client that does not read stops being read;
//! - pings and closes always go in: they are a few bytes, and they are how a
//!   stuck connection ends.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use super::DocId;

/// What a connection's writer task sends on the socket.
#[derive(Debug)]
pub enum Outbound {
    /// One encoded `ServerMessage`, shared with every other recipient.
    Frame(Bytes),
    /// A WebSocket ping, to learn whether the client still reads.
    Ping,
    /// Close the socket with this code and reason, then stop.
    Close(u16, String),
}

/// What one queued frame costs on top of its bytes: the channel slot, the
/// `Bytes` handle and the enum. Counting it keeps a flood of tiny frames
/// (awareness, say) within the bound too.
pub const FRAME_OVERHEAD_BYTES: usize = 64;

/// The bytes a frame of `len` bytes counts for.
fn cost(len: usize) -> usize {
    len + FRAME_OVERHEAD_BYTES
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

/// The byte count of one connection's queue, shared by its [`Peer`] and the
/// writer task that drains it.
#[derive(Debug)]
pub struct QueueMeter {
    /// Bytes queued or being written, frame overhead included.
    queued: AtomicUsize,
    /// The bound on `queued` (see [`QueueMeter::try_reserve`]).
    max: usize,
    /// Frames written to the socket so far: progress, for liveness checks.
    written: AtomicU64,
    /// Set when the writer has stopped: nothing will ever be released.
    closed: AtomicBool,
    /// Woken whenever bytes are released or the writer stops.
    room: Notify,
}

impl QueueMeter {
    fn new(max: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            max: max.max(1),
            written: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            room: Notify::new(),
        }
    }

    /// Below this many queued bytes the queue counts as drained: a peer that
    /// fell behind is resynced, and one frame larger than the whole bound
    /// (a big document's `Synced` or resync) may go in.
    pub fn low_water(&self) -> usize {
        self.max / 4
    }

    /// Counts `cost` bytes in if they fit under the bound, or if the queue is
    /// drained (so a frame larger than the bound is not refused forever).
    /// Memory per connection is thus at most the bound plus one frame.
    fn try_reserve(&self, cost: usize) -> bool {
        let mut now = self.queued.load(Ordering::Acquire);
        loop {
            if now + cost > self.max && now > self.low_water() {
                return false;
            }
            match self.queued.compare_exchange_weak(
                now,
                now + cost,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    fn release(&self, cost: usize) {
        self.queued.fetch_sub(cost, Ordering::AcqRel);
        self.room.notify_waiters();
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Frames written to the socket so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.room.notify_waiters();
    }
}

/// The receiving end of a peer's queue, owned by the connection's writer.
/// Dropping it closes the queue: waiting senders fail with
/// [`SendError::Closed`].
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Outbound>,
    meter: Arc<QueueMeter>,
}

impl OutboundRx {
    /// Takes up to `limit` queued items into `buf`, waiting for at least
    /// one; 0 once every sender is gone. Their bytes stay counted until
    /// [`OutboundRx::written`].
    pub async fn recv_many(&mut self, buf: &mut Vec<Outbound>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    /// Takes one queued item without waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }

    /// A frame of `len` bytes has been written to the socket: its bytes no
    /// longer count.
    pub fn written(&self, len: usize) {
        self.meter.written.fetch_add(1, Ordering::AcqRel);
        self.meter.release(cost(len));
    }

    /// The queue's meter.
    pub fn meter(&self) -> &Arc<QueueMeter> {
        &self.meter
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.meter.close();
    }
}

/// A connection's handle, shared by the connection and every shard it follows.
#[derive(Debug)]
pub struct Peer {
    id: u64,
    wire: Wire,
    tx: mpsc::UnboundedSender<Outbound>,
    meter: Arc<QueueMeter>,
    /// Docs whose shard dropped this peer. Bounded by the number of docs the
    /// connection may follow.
    dropped: Mutex<Vec<(DocId, DropReason)>>,
    /// Docs whose relayed updates this peer missed for lack of room: each
    /// wants a resync once the queue drains. Bounded likewise.
    behind: Mutex<Vec<DocId>>,
    notify: Notify,
}

impl Peer {
    /// A peer speaking `wire` whose queue holds about `max_queue_bytes`
    /// (see [`QueueMeter::try_reserve`]), and the queue's receiving end.
    pub fn channel(id: u64, wire: Wire, max_queue_bytes: usize) -> (Arc<Self>, OutboundRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let meter = Arc::new(QueueMeter::new(max_queue_bytes));
        let peer = Arc::new(Self {
            id,
            wire,
            tx,
            meter: meter.clone(),
            dropped: Mutex::new(Vec::new()),
            behind: Mutex::new(Vec::new()),
            notify: Notify::new(),
        });
        (peer, OutboundRx { rx, meter })
    }

    /// The connection id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The framing this peer speaks.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// The queue's byte count.
    pub fn meter(&self) -> &Arc<QueueMeter> {
        &self.meter
    }

    /// Queues a close without waiting or counting (used when the peer's wire
    /// has no way to carry an error for one document).
    pub fn try_close(&self, code: u16, reason: &str) {
        let _ = self.tx.send(Outbound::Close(code, reason.to_owned()));
    }

    /// Queues a ping without waiting or counting.
    pub fn ping(&self) {
        let _ = self.tx.send(Outbound::Ping);
    }

    /// Queues a frame without waiting: for broadcasts, which must never wait
    /// on one slow socket.
    ///
    /// # Errors
    /// [`SendError::Full`] when the queue is at its bound, [`SendError::Closed`]
    /// when the connection is gone.
    pub fn try_send(&self, frame: Bytes) -> Result<(), SendError> {
        if self.meter.is_closed() {
            return Err(SendError::Closed);
        }
        let cost = cost(frame.len());
        if !self.meter.try_reserve(cost) {
            return Err(SendError::Full);
        }
        self.tx.send(Outbound::Frame(frame)).map_err(|_| {
            self.meter.release(cost);
            SendError::Closed
        })
    }

    /// Queues a frame without waiting, counted but never refused for lack of
    /// room: for what a shard must queue under its lock in answer to this
    /// connection's own request (a `Synced`, a resync). The connection then
    /// waits for room ([`Peer::room`]) before reading more, so this exceeds
    /// the bound by at most one answer.
    ///
    /// # Errors
    /// [`SendError::Closed`] when the connection is gone.
    pub fn force_send(&self, frame: Bytes) -> Result<(), SendError> {
        if self.meter.is_closed() {
            return Err(SendError::Closed);
        }
        let cost = cost(frame.len());
        self.meter.queued.fetch_add(cost, Ordering::AcqRel);
        self.tx.send(Outbound::Frame(frame)).map_err(|_| {
            self.meter.release(cost);
            SendError::Closed
        })
    }

    /// Waits until the queue is under its bound, or the connection is gone.
    pub async fn room(&self) {
        self.wait_until(|m| m.queued() < m.max).await;
    }

    /// Queues a frame or close, waiting for room: for replies to this
    /// connection's own requests, so a client that does not read stops being read.
    ///
    /// # Errors
    /// [`SendError::Closed`] when the connection is gone.
    pub async fn send(&self, out: Outbound) -> Result<(), SendError> {
        let Outbound::Frame(frame) = out else {
            return self.tx.send(out).map_err(|_| SendError::Closed);
        };
        let cost = cost(frame.len());
        loop {
            let room = self.meter.room.notified();
            tokio::pin!(room);
            // Registered before checking, so a release in between still wakes us.
            room.as_mut().enable();
            if self.meter.is_closed() {
                return Err(SendError::Closed);
            }
            if self.meter.try_reserve(cost) {
                return self.tx.send(Outbound::Frame(frame)).map_err(|_| {
                    self.meter.release(cost);
                    SendError::Closed
                });
            }
            room.await;
        }
    }

    /// Waits until the queue is drained (at or below its low-water mark) or
    /// the connection is gone.
    pub async fn drained(&self) {
        self.wait_until(|m| m.queued() <= m.low_water()).await;
    }

    async fn wait_until(&self, ready: impl Fn(&QueueMeter) -> bool) {
        loop {
            let room = self.meter.room.notified();
            tokio::pin!(room);
            // Registered before checking, so a release in between still wakes us.
            room.as_mut().enable();
            if self.meter.is_closed() || ready(&self.meter) {
                return;
            }
            room.await;
        }
    }

    /// Whether the queue is drained (see [`Peer::drained`]).
    pub fn is_drained(&self) -> bool {
        self.meter.queued() <= self.meter.low_water()
    }

    /// Called by a shard that dropped this peer from `doc`. The connection
    /// learns of it through [`Peer::notified`] and tells its client once its
    /// queue has room.
    pub fn mark_dropped(&self, doc: DocId, reason: DropReason) {
        self.dropped.lock().push((doc, reason));
        self.notify.notify_one();
    }

    /// Called by a shard that could not queue a relayed frame of `doc` for
    /// this peer: the connection resyncs the document once it drains.
    pub fn mark_behind(&self, doc: DocId) {
        self.behind.lock().push(doc);
        self.notify.notify_one();
    }

    /// Waits until some shard has dropped this peer or left it behind.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The docs that dropped this peer since the last call, and why.
    pub fn take_dropped(&self) -> Vec<(DocId, DropReason)> {
        std::mem::take(&mut *self.dropped.lock())
    }

    /// The docs this peer fell behind since the last call.
    pub fn take_behind(&self) -> Vec<DocId> {
        std::mem::take(&mut *self.behind.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn broadcasts_fail_at_the_byte_bound_and_replies_wait_for_room() {
        let (peer, mut rx) = Peer::channel(1, Wire::Folio, 1000);
        let frame = Bytes::from(vec![0u8; 300 - FRAME_OVERHEAD_BYTES]);
        for _ in 0..3 {
            peer.try_send(frame.clone()).expect("fits");
        }
        assert_eq!(peer.meter().queued(), 900);
        assert_eq!(peer.try_send(frame.clone()), Err(SendError::Full));
        // A reply waits until the writer has written something.
        let waiting = {
            let peer = peer.clone();
            let frame = frame.clone();
            tokio::spawn(async move { peer.send(Outbound::Frame(frame)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 1).await, 1);
        rx.written(frame.len());
        assert_eq!(waiting.await.expect("task"), Ok(()));
        assert_eq!(peer.meter().queued(), 900);
        // Pings and closes are never refused.
        peer.ping();
        peer.try_close(4000, "bye");
        drop(rx);
        assert_eq!(peer.try_send(frame), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_bound_goes_into_a_drained_queue() {
        let (peer, mut rx) = Peer::channel(1, Wire::Folio, 1000);
        let big = Bytes::from(vec![0u8; 5000]);
        peer.try_send(big.clone()).expect("empty queue takes it");
        assert_eq!(
            peer.try_send(Bytes::from_static(b"x")),
            Err(SendError::Full)
        );
        let mut batch = Vec::new();
        rx.recv_many(&mut batch, 8).await;
        rx.written(big.len());
        peer.drained().await;
        assert_eq!(peer.meter().queued(), 0);
    }
}
