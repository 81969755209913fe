//! [`StoreWriter`]: the group-commit queue. One thread owns all writes: it
//! takes every op queued since its last flush, writes them in one batch and
//! makes them durable with one fsync, then completes each op's [`Durable`].
//! Throughput therefore grows with load instead of collapsing to one fsync per
//! update, and an op's completion means it survives `kill -9`.

use std::sync::Arc;
use std::thread;

use tokio::sync::{mpsc, oneshot};

use super::{DocStore, WriteOp};

/// Ops one flush takes at most. At the limit the rest wait for the next flush.
const MAX_OPS_PER_FLUSH: usize = 8192;

/// Why a write did not become durable. Cloneable, so one failure can complete
/// every op of its batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("write failed: {0}")]
pub struct WriteFailed(pub Arc<str>);

/// Completes when the op it was returned for is durable (or failed).
pub type Durable = oneshot::Receiver<Result<(), WriteFailed>>;

struct Queued {
    op: WriteOp,
    done: Option<oneshot::Sender<Result<(), WriteFailed>>>,
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Queued>,
}

/// A reserved place in the writer's queue. Reserve before taking a shard's
/// lock, so that the lock is never held while waiting for queue space.
pub struct WritePermit<'a> {
    permit: mpsc::Permit<'a, Queued>,
}

impl WritePermit<'_> {
    /// Queues `op`; the returned [`Durable`] completes once it is on disk.
    pub fn send(self, op: WriteOp) -> Durable {
        let (done, durable) = oneshot::channel();
        self.permit.send(Queued {
            op,
            done: Some(done),
        });
        durable
    }
}

/// The writer thread. It owns the store; joining it after every
/// [`StoreWriter`] is dropped means the store is closed and its lock released.
pub struct WriterThread(thread::JoinHandle<()>);

impl WriterThread {
    /// Waits for the thread to finish (blocking).
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("store writer thread panicked");
        }
    }
}

/// The writer thread has stopped (the server is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the store writer has stopped")]
pub struct WriterClosed;

impl StoreWriter {
    /// Starts the writer thread over `store`. `queue_ops` bounds the queue:
    /// when it is full, [`StoreWriter::reserve`] waits, which stops the
    /// writing connections from reading more updates (backpressure).
    ///
    /// # Errors
    /// The OS refused to start a thread.
    ///
    /// The thread stops once every clone of the returned writer is dropped,
    /// after writing everything queued; [`WriterThread::join`] waits for that.
    pub fn start(
        store: Arc<dyn DocStore>,
        queue_ops: usize,
    ) -> std::io::Result<(Self, WriterThread)> {
        let (tx, rx) = mpsc::channel(queue_ops.max(1));
        let handle = thread::Builder::new()
            .name("folio-store-writer".into())
            .spawn(move || run(store, rx))?;
        Ok((Self { tx }, WriterThread(handle)))
    }

    /// Waits for a place in the queue.
    ///
    /// # Errors
    /// [`WriterClosed`] when the writer has stopped.
    pub async fn reserve(&self) -> Result<WritePermit<'_>, WriterClosed> {
        let permit = self.tx.reserve().await.map_err(|_| WriterClosed)?;
        Ok(WritePermit { permit })
    }

    /// Takes a place in the queue if one is free now.
    pub fn try_reserve(&self) -> Option<WritePermit<'_>> {
        self.tx
            .try_reserve()
            .ok()
            .map(|permit| WritePermit { permit })
    }

    /// Waits until every op queued before this call is durable.
    ///
    /// # Errors
    /// [`WriteFailed`] if the flush failed or the writer stopped.
    pub async fn barrier(&self) -> Result<(), WriteFailed> {
        let permit = self
            .reserve()
            .await
            .map_err(|e| WriteFailed(e.to_string().into()))?;
        permit
            .send(WriteOp::Barrier)
            .await
            .map_err(|_| WriteFailed("the store writer has stopped".into()))?
    }
}

fn run(store: Arc<dyn DocStore>, mut rx: mpsc::Receiver<Queued>) {
    let mut batch: Vec<Queued> = Vec::with_capacity(256);
    let mut ops: Vec<WriteOp> = Vec::with_capacity(256);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_OPS_PER_FLUSH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut dones = Vec::with_capacity(batch.len());
        for queued in batch.drain(..) {
            if !matches!(queued.op, WriteOp::Barrier) {
                ops.push(queued.op);
            }
            dones.push(queued.done);
        }
        let result = if ops.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let written = store.write(&ops);
            crate::metrics::flushed(started.elapsed());
            written.map_err(|e| {
                tracing::error!(error = %e, ops = ops.len(), "store write failed");
                WriteFailed(e.to_string().into())
            })
        };
        tracing::trace!(ops = ops.len(), "group commit");
        ops.clear();
        for done in dones.into_iter().flatten() {
            // The receiver may be gone (its connection closed); the write stands.
            let _ = done.send(result.clone());
        }
    }
    tracing::debug!("store writer stopped");
}
