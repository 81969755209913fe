//! Folio: a collaborative text-editing server.
//!
//! Data flows one way: socket → [`session`] → [`doc`] shard → [`store`] and subscribers.
//!
//! - [`protocol`]: the generated protobuf types (wire and on-disk) and small helpers; no I/O.
//! - [`doc`]: [`doc::DocId`], [`doc::DocShard`] (one Yrs doc, its awareness and its
//!   subscribers) and [`doc::DocRegistry`] (every resident shard, loaded once, evicted when idle).
//! - [`feed`]: watcher feeds (presence, activity, saved, doc events) with resumable history.
//! - [`session`]: one WebSocket client's protocol state machine, free of socket I/O.
//! - [`ysession`]: the same for a `y-websocket` client on `/yjs/{doc}` (y-protocols sync).
//! - [`store`]: the storage seam ([`store::DocStore`]), its sled implementation and the
//!   group-commit writer that makes updates durable before they are acknowledged.
//! - [`http`]: the axum router: `/ws`, `/yjs/{doc}`, the REST API and its JSON errors; and
//!   the socket wrapper every connection goes through (stall close, lingering close).
//! - [`metrics`]: Prometheus metric names and the facade the hot paths call (`GET /metrics`).
//! - [`auth`]: access tokens (HS256 JWTs), roles and doc patterns, `folio token`, and
//!   [`auth::revocation`]: revoked tokens (by `jti` or `sub`), durable, with the epoch that
//!   wakes open connections to re-check their tokens. No HTTP: its extractor and the
//!   `--allowed-origins` check are in [`http`].
//! - [`server`]: wires the parts together and runs until shutdown.
//! - [`tls`]: `--tls-cert`/`--tls-key`: rustls with ALPN h2 and http/1.1, feeding `axum::serve`.
//! - [`history`]: past states rebuilt from snapshots and the log: versions, points, diffs,
//!   replay, retention and `folio check`.
//! - [`cli`]: the offline subcommands (`folio docs`, `export`, `import`, `history`, `replay`,
//!   `compact`, `check`) over a data dir no server holds.
//! - [`remote`]: the subcommands that reach a running server over HTTP (`folio revoke`).
//! - [`rate`]: per-connection token buckets for updates and awareness.
//! - [`config`]: every setting, from flags or `FOLIO_*` environment variables.
//! - [`client`]: a Rust client of the protocol (tests, benchmarks, load tool).
//! - [`trace`]: the editing traces in `../shared/traces`, for tests and benchmarks.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod doc;
pub mod feed;
pub mod history;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod rate;
pub mod remote;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod ysession;
