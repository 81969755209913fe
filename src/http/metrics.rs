//! `GET /metrics`: samples this server's gauges and renders every metric in
//! the Prometheus text format (names and meaning in [`crate::metrics`]).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::metrics::{render, Sample};

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn scrape(State(app): State<AppState>) -> impl IntoResponse {
    let registry = &app.registry;
    let sample = Sample {
        connections: app.connections.len(),
        subscriptions: registry.subscriptions(),
        watchers: registry.feeds().all().iter().map(|f| f.watchers()).sum(),
        documents_resident: registry.resident(),
    };
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], render(sample))
}
