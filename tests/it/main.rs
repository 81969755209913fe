//! Integration tests: the real server on an ephemeral port, real sled in a
//! temp dir, real WebSocket clients built on yrs. One test binary, one module
//! per area; helpers live in `support`.

mod auth;
mod bad_input;
mod cli;
mod durability;
mod fuzz;
mod history;
mod http2;
mod http_api;
mod limits;
mod metrics;
mod revocation;
mod sse;
mod support;
mod sync;
mod traces;
mod transport;
mod vacuum;
mod web;
mod yjs;
