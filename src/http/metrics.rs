//! `GET /metrics`: samples this server's gauges and renders every metric in
//! the Prometheus text format (names and meaning in [`crate::metrics`]).
//! With access control on, it needs an admin token over every document
//! (`docs: ["*"]`), since it tells about all of them; a Prometheus scrape job
//! sends it as `authorization: {credentials: ...}`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{ApiError, AppState};
use crate::auth::{Action, Principal};
use crate::metrics::{render, Sample};

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn scrape(
    principal: Principal,
    State(app): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    principal.require_all(Action::Admin)?;
    let registry = &app.registry;
    let sample = Sample {
        connections: app.connections.len(),
        subscriptions: registry.subscriptions(),
        watchers: registry.feeds().all().iter().map(|f| f.watchers()).sum(),
        documents_resident: registry.resident(),
    };
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], render(sample)))
}
