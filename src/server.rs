//! Wires the parts together: opens the store, starts the writer, serves the
//! router until `shutdown` resolves, then closes every socket with 1001 and
//! makes everything durable before returning.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::revocation::Revocations;
use crate::config::ServeConfig;
use crate::doc::DocRegistry;
use crate::feed::FeedHub;
use crate::http::{app, AppState, ConnInfo, ConnListener};
use crate::store::{now_ms, DocStore, SledStore, StoreError, StoreWriter, WriterThread};

/// Longest wait for connections to finish closing at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("final flush failed: {0}")]
    Flush(#[from] crate::store::WriteFailed),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
}

/// The storage half of a server: store, writer thread, registry and the
/// revoked tokens.
pub struct Storage {
    pub registry: Arc<DocRegistry>,
    pub writer_thread: WriterThread,
    /// Loaded from the store's `revocations` tree; writes go back to it.
    pub revocations: Arc<Revocations>,
}

impl Storage {
    /// Opens the sled store in `data_dir` (failing at once if another
    /// process holds it) and starts the writer.
    ///
    /// # Errors
    /// The dir is locked or cannot be opened.
    pub fn open(data_dir: &Path, config: &ServeConfig) -> Result<Self, ServerError> {
        // The data may be in a sibling dir: never start on an empty one.
        crate::store::vacuum::refuse_leftovers(data_dir)?;
        let sled = Arc::new(SledStore::open(data_dir)?);
        let revocations = Arc::new(Revocations::load(sled.clone())?);
        let store: Arc<dyn DocStore> = sled;
        let (writer, writer_thread) = StoreWriter::start(store.clone(), config.write_queue_ops)?;
        // Feed ids start with the start time, so they never repeat across runs.
        let epoch = u64::try_from(now_ms()).unwrap_or(0);
        let feeds = FeedHub::new(epoch, config.feed_settings());
        let registry = Arc::new(
            DocRegistry::new(store, writer, config.shard_settings(), feeds)
                .with_max_resident(config.limits.max_resident_docs),
        );
        Ok(Self {
            registry,
            writer_thread,
            revocations,
        })
    }
}

/// Serves on `listener` until `shutdown` completes, then shuts down cleanly.
///
/// Plain TCP speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c); with
/// `tls_cert` and `tls_key` set, the listener speaks TLS only, offering h2 and
/// http/1.1 by ALPN. Either way hyper's auto builder serves the connection, so
/// WebSockets work over HTTP/1.1 upgrades and HTTP/2 extended CONNECT.
///
/// # Errors
/// The TLS files are missing or invalid, the store could not be opened, or
/// the final flush failed.
pub async fn run(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    crate::metrics::install();
    check_fd_limit(&config);
    // Before the store: a bad certificate or an unsafe auth setting must
    // not cost a data-dir lock.
    let tls = crate::tls::acceptor(&config)?;
    let auth = crate::auth::Auth::for_server(
        config.auth_secret.as_ref(),
        config.insecure_open,
        listener.local_addr()?,
    )?;
    let Storage {
        registry,
        writer_thread,
        revocations,
    } = Storage::open(&config.data_dir, &config)?;
    let auth = Arc::new(auth.with_revocations(revocations.clone()));
    let cancel = CancellationToken::new();
    let state = AppState::new(
        registry.clone(),
        config.clone(),
        cancel.clone(),
        auth.clone(),
    );
    let connections = state.connections.clone();
    let upkeep = tokio::spawn(upkeep_loop(
        registry.clone(),
        config.evict_idle(),
        cancel.clone(),
    ));
    let compaction = tokio::spawn(compaction_loop(
        registry.clone(),
        config.retention.policy(),
        Duration::from_secs(config.compact_interval_secs),
        cancel.clone(),
    ));
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        auth = if auth.is_open() { "open" } else { "tokens" },
        data_dir = %config.data_dir.display(),
        "folio serving"
    );

    let stop = cancel.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down");
        stop.cancel();
    };
    let router = app(state);
    // Every connection, plain or TLS, goes through the same socket wrapper:
    // stall close and lingering close (see `http::conn_io`).
    let stall = config.limits.stall_timeout();
    let tracker = connections.clone();
    let acceptor_stop = cancel.clone();
    let serve = async move {
        match tls {
            None => {
                // Latency matters more than packet count: no Nagle delay on any socket.
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(
                    ConnListener::new(listener, stall),
                    router.into_make_service_with_connect_info::<ConnInfo>(),
                )
                .with_graceful_shutdown(graceful)
                .await
            }
            Some(acceptor) => {
                // The acceptor task and its handshakes join the tracker that
                // shutdown already waits on.
                let listener =
                    crate::tls::TlsListener::start(listener, acceptor, acceptor_stop, &tracker)?;
                axum::serve(
                    ConnListener::new(listener, stall),
                    router.into_make_service_with_connect_info::<ConnInfo>(),
                )
                .with_graceful_shutdown(graceful)
                .await
            }
        }
    };
    // After the signal axum waits, without limit, for every HTTP connection
    // to finish its responses; one that never ends (an SSE stream) would
    // hold shutdown, and the final flush, forever. Wait the grace period,
    // then go on without them.
    let stopping = cancel.clone();
    let grace_over = async move {
        stopping.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = serve => served?,
        () = grace_over => tracing::warn!("HTTP connections still open after the grace period"),
    }
    cancel.cancel();

    // Upgraded sockets are not tracked by axum: wait for our own tracker.
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period");
    }
    let _ = upkeep.await;
    let _ = compaction.await;
    registry.flush_all().await?;
    // Connections that outlive the grace period may still hold the auth
    // state: let go of the store here, so the data dir is released with
    // the last document handle below.
    revocations.close();
    // Dropping the last registry handle drops every shard and with them the
    // writer's senders: the writer thread then ends and closes the store,
    // releasing the data dir's lock before we return.
    drop(registry);
    let joined = tokio::task::spawn_blocking(move || writer_thread.join());
    if tokio::time::timeout(SHUTDOWN_GRACE, joined).await.is_err() {
        tracing::warn!("store writer still running after the grace period");
    }
    tracing::info!("all documents flushed; bye");
    Ok(())
}

/// Descriptors kept aside for the store, the listener and short requests.
const SPARE_FDS: u64 = 256;

/// Raises the process's open-file soft limit to its hard limit (every
/// connection is a descriptor; the usual soft default of 1024 would refuse
/// connections long before `--max-connections`), and warns when that is
/// still too low for the connection cap.
fn check_fd_limit(config: &ServeConfig) {
    let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) else {
        return;
    };
    let wanted = match config.limits.max_connections {
        0 => return,
        n => n as u64 + SPARE_FDS,
    };
    if limit < wanted {
        tracing::warn!(
            open_files = limit,
            max_connections = config.limits.max_connections,
            "the open-file limit is below --max-connections plus {SPARE_FDS}: connections \
             will fail to be accepted first; raise `ulimit -n` (hard) or lower --max-connections"
        );
    }
}

/// Snapshots and evictions, a few times per eviction period.
async fn upkeep_loop(registry: Arc<DocRegistry>, evict_after: Duration, cancel: CancellationToken) {
    let period = (evict_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                let registry = registry.clone();
                // Snapshot encoding is CPU work on big docs: keep it off the
                // async workers.
                let _ = tokio::task::spawn_blocking(move || registry.maintain(evict_after)).await;
            }
        }
    }
}

/// Applies the retention policy to every document every `period` (never if
/// zero), one document at a time, skipping documents nothing can have
/// changed for since their last pass (see `doc/compaction.rs`). A pass cut
/// short by shutdown leaves every document either compacted or untouched:
/// each write is one batch.
async fn compaction_loop(
    registry: Arc<DocRegistry>,
    policy: crate::history::retention::RetentionPolicy,
    period: Duration,
    cancel: CancellationToken,
) {
    if period.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                let pass = registry.compact_all(policy);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    done = pass => match done {
                        Ok(counts) => tracing::debug!(
                            compacted = counts.compacted,
                            skipped = counts.skipped,
                            failed = counts.failed,
                            "compaction pass done"
                        ),
                        Err(e) => tracing::warn!(error = %e, "compaction pass failed"),
                    },
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
