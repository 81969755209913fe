//! TLS for `folio serve --tls-cert --tls-key`: the PEM files are loaded once at
//! start (a bad file fails start-up, never a connection), and [`TlsListener`]
//! hands `axum::serve` finished rustls streams, so TLS connections get the same
//! HTTP/1.1 + upgrades / HTTP/2 serving and graceful shutdown as plain ones.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;

/// A client gets this long to finish its handshake; a silent one then costs
/// nothing more than a closed socket.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once. At the limit the server stops
/// accepting and lets the kernel's backlog hold new connections, so a flood
/// of half-open clients cannot grow memory.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Finished handshakes waiting for the HTTP server to pick them up. The
/// server takes them as fast as it can spawn a task, so this stays small;
/// when full, handshake tasks wait (and hold their permit).
const READY_QUEUE: usize = 64;

/// Why TLS could not be set up from the configured files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert and --tls-key go together: {0} is set without the other")]
    HalfConfigured(&'static str),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not valid PEM: {source}")]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{0} holds no CERTIFICATE block")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PRIVATE KEY block")]
    NoKey(PathBuf),
    #[error("the key or certificate was refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The acceptor for `config`'s TLS files, or `None` when TLS is off.
///
/// # Errors
/// Only one of the two files is set, a file cannot be read or is not PEM,
/// the certificate file has no certificate, or the key does not suit it.
pub fn acceptor(config: &ServeConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    match (&config.tls_cert, &config.tls_key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(TlsError::HalfConfigured("--tls-cert")),
        (None, Some(_)) => Err(TlsError::HalfConfigured("--tls-key")),
        (Some(cert), Some(key)) => load(cert, key).map(Some),
    }
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    match e {
        // Surface "no such file" as a read error, not as a PEM problem.
        pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem_error(cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    let key = match PrivateKeyDer::from_pem_file(key_path) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey(key_path.to_owned())),
        Err(e) => return Err(pem_error(key_path, e)),
    };
    // Name the provider rather than rely on the process default, which
    // panics if feature unification ever compiles in a second one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        // Checks that the key matches the leaf certificate.
        .with_single_cert(certs, key)?;
    // Preference order: h2 first, so one connection carries every stream.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// A listener yielding TLS streams whose handshake is done.
///
/// Handshakes run in their own tasks (bounded in number and time), so a slow
/// or silent client never holds up the accept loop. The acceptor task stops
/// accepting when `shutdown` is cancelled; it and the handshakes in flight
/// are tracked by `tasks`, so shutdown waits for them like for any socket.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`.
    ///
    /// # Errors
    /// The listener's local address cannot be read.
    pub fn start(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tasks.spawn(accept_loop(listener, acceptor, tx, shutdown, tasks.clone()));
        Ok(Self { ready, local_addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor stopped (shutdown): axum is about to stop
            // calling us, and must not spin meanwhile.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    accept_error(e, &shutdown).await;
                    continue;
                }
            },
        };
        // Latency matters more than packet count, as on the plain path.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            // Held until the server has the stream, bounding every stage.
            let _permit = permit;
            let handshake = tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
            };
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            // Err only once the server has stopped taking connections.
            let _ = ready.send((tls, addr)).await;
        });
    }
    tracing::debug!("TLS listener stopped accepting");
}

/// Per-connection errors are the client's business; anything else (out of
/// file descriptors, say) is logged and retried after a pause, as axum does.
async fn accept_error(e: io::Error, shutdown: &CancellationToken) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
