//! The HTTP face of Folio: one axum router with the WebSocket endpoint and
//! the REST API. Handlers are thin; the work happens in [`crate::session`]
//! and [`crate::doc`].

mod admin;
mod api;
mod auth;
mod client_ip;
mod conn_io;
mod conns;
mod driver;
mod error;
mod history;
mod linger;
mod metrics;
mod sse;
mod web;
mod ws;
mod yws;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::{delete, get, post, put};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conn_io::{CarryMark, ConnInfo, ConnListener, ConnState};
pub use conns::{ConnectionLimiter, ConnectionPermit, Refused};
pub use error::ApiError;

pub use auth::{unauthorized, AllowedOrigins};

use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::doc::DocRegistry;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<DocRegistry>,
    pub config: Arc<ServeConfig>,
    /// Cancelled when the server starts shutting down: sockets close with 1001.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket connection tasks, so shutdown can wait for them.
    pub connections: TaskTracker,
    pub next_connection_id: Arc<AtomicU64>,
    /// Bounds the replay streams running at once (see `history::MAX_REPLAYS`).
    pub replays: Arc<tokio::sync::Semaphore>,
    /// Caps on open WebSockets and SSE streams (see [`conns`]).
    pub conns: Arc<ConnectionLimiter>,
    /// Verifies tokens (or lets everyone in, in open mode): see [`crate::auth`].
    pub auth: Arc<Auth>,
}

/// Lets handlers take a [`crate::auth::Principal`] argument.
impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl AppState {
    /// The state of a server over `registry` with `config`, checking access with `auth`.
    pub fn new(
        registry: Arc<DocRegistry>,
        config: ServeConfig,
        shutdown: CancellationToken,
        auth: Arc<Auth>,
    ) -> Self {
        let conns = ConnectionLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        );
        Self {
            registry,
            conns,
            config: Arc::new(config),
            shutdown,
            connections: TaskTracker::new(),
            next_connection_id: Arc::new(AtomicU64::new(1)),
            replays: Arc::new(tokio::sync::Semaphore::new(history::MAX_REPLAYS)),
            auth,
        }
    }
}

/// The router. Tests can drive it directly; `server::run` serves it.
pub fn app(state: AppState) -> Router {
    // Long-lived connections count against the connection caps.
    let streams = Router::new()
        // GET for HTTP/1.1 upgrades, CONNECT for HTTP/2 (RFC 8441 extended
        // CONNECT, which `axum::serve` enables on every connection).
        .route("/ws", get(ws::upgrade).connect(ws::upgrade))
        .route("/yjs/{*doc}", get(yws::upgrade).connect(yws::upgrade))
        .route("/docs/{id}/events", get(sse::doc_events))
        .route("/docs/{id}/text/stream", get(sse::text_stream))
        .route("/events", get(sse::all_events))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            conns::limit,
        ));
    Router::new()
        .merge(streams)
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(metrics::scrape))
        .route("/admin/revocations", get(admin::list).post(admin::revoke))
        .route("/admin/revocations/{kind}/{value}", delete(admin::remove))
        .route("/docs", get(api::list_docs))
        .route("/docs/{id}", put(api::create_doc).delete(api::delete_doc))
        .route("/docs/{id}/copy", post(api::copy_doc))
        .route(
            "/docs/{id}/versions",
            get(history::list_versions).post(history::create_version),
        )
        .route("/docs/{id}/versions/{v}/text", get(history::version_text))
        .route("/docs/{id}/versions/{v}/state", get(history::version_state))
        .route("/docs/{id}/at", get(history::at))
        .route("/docs/{id}/diff", get(history::diff))
        .route("/docs/{id}/replay", get(history::replay))
        .route("/docs/{id}/restore", post(history::restore))
        .route("/docs/{id}/text", get(api::text))
        .route("/docs/{id}/state", get(api::state))
        .route("/docs/{id}/update", post(api::update))
        // The browser pages (web/): demo editor, watcher, replay.
        .route("/", get(web::home))
        .route("/d/{*doc}", get(web::editor))
        .route("/watch/{*doc}", get(web::watch))
        .route("/replay/{*doc}", get(web::replay))
        .route("/assets/{file}", get(web::asset))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(
            state.config.max_message_bytes as usize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            AllowedOrigins::new(&state.config.allowed_origins),
            auth::check_origin,
        ))
        // Outermost: the client's address and the connection's state, from
        // the listener (see `conn_io`), for everything inside.
        .layer(axum::middleware::from_fn(conn_io::expose))
        .with_state(state)
}
