//! The REST API: health, document listing, text and state reads, and raw
//! update writes for server-side writers. Doc ids go in one path segment:
//! encode `/` in an id as `%2F`. Every handler that touches documents takes
//! the request's [`Principal`] and checks it (see [`crate::auth`]).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{ApiError, AppState};
use yrs::updates::decoder::Decode;

use crate::auth::{Action, Principal};
use crate::doc::{decode_guarded, DocId, DocInfo, ShardError};

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Every document the principal may read (with a token, only those it covers).
pub async fn list_docs(
    principal: Principal,
    State(app): State<AppState>,
) -> Result<Json<Vec<DocInfo>>, ApiError> {
    let mut docs = app.registry.list().await?;
    docs.retain(|d| DocId::parse(&d.id).is_ok_and(|id| principal.can(Action::Read, &id)));
    Ok(Json(docs))
}

pub async fn text(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    let shard = app.registry.get(&doc, false).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        shard.text(),
    ))
}

pub async fn state(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    let shard = app.registry.get(&doc, false).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        shard.full_state(),
    ))
}

/// Applies a raw Yjs v1 update (the body). Answers once it is durable, with
/// the document's sequence number for it. Creates the document if needed.
/// The author is the token's `sub`, else `http`.
pub async fn update(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Write, &doc)?;
    let author = principal.sub().unwrap_or("http");
    // The router's body limit is max_message_bytes; over it, reading fails.
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            "body_rejected",
            format!("{e} (limit {} bytes)", app.config.max_message_bytes),
        )
    })?;
    // Refuse undecodable bytes before looking the document up, so a bad
    // update never creates a document. (The shard decodes again to apply.)
    decode_guarded(|| yrs::Update::decode_v1(&body))
        .map_err(|e| ApiError::from(ShardError::InvalidUpdate(e)))?;
    // A shard may close between lookup and apply (eviction); retry once.
    let mut attempt = 0;
    let applied = loop {
        let shard = app.registry.get(&doc, true).await?;
        match shard.apply_update(body.clone(), author, None).await {
            Err(ShardError::Closed) if attempt < 2 => attempt += 1,
            other => break other?,
        }
    };
    match applied.durable.await {
        Ok(Ok(())) => Ok(Json(json!({ "doc_seq": applied.doc_seq }))),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_failure",
            "the update was not made durable; retry",
        )),
    }
}
