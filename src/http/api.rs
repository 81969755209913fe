//! The REST API: health, document listing, text and state reads, and raw
//! update writes for server-side writers. Doc ids go in one path segment:
//! encode `/` in an id as `%2F`. Every handler that touches documents takes
//! the request's [`Principal`] and checks it (see [`crate::auth`]).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::history::json_body;
use super::{ApiError, AppState};
use yrs::updates::decoder::Decode;

use crate::auth::{Action, Principal};
use crate::doc::{decode_guarded, DocId, IfDeleted, Initial, ShardError};
use crate::history;
use crate::store::VersionKind;

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

/// Documents listed per page by default, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    prefix: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A page of documents. With a token, only those it covers are shown, so a
/// page may hold fewer than `limit` while `next_cursor` goes on.
pub async fn list_docs(
    principal: Principal,
    State(app): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = match &query.limit {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    format!("limit must be a number from 1 to {MAX_PAGE}"),
                ))
            }
        },
    };
    let prefix = query.prefix.unwrap_or_default();
    let (mut docs, next_cursor) = app.registry.list_page(&prefix, query.cursor, limit).await?;
    docs.retain(|d| DocId::parse(&d.id).is_ok_and(|id| principal.can(Action::Read, &id)));
    Ok(Json(json!({ "docs": docs, "next_cursor": next_cursor })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDoc {
    text: Option<String>,
}

/// Creates a document, optionally with a first text (its first version).
/// Needs `write` (as the first update to a new document would).
pub async fn create_doc(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Write, &doc)?;
    let author = principal.sub().unwrap_or("http").to_owned();
    let NewDoc { text } = json_body(&body)?;
    let initial = match text {
        Some(text) if !text.is_empty() => Initial::Text(text),
        _ => Initial::Empty,
    };
    let shard = app
        .registry
        .create(
            &doc,
            initial,
            &author,
            VersionKind::Import,
            String::new(),
            IfDeleted::Revive,
        )
        .await?;
    let info = shard.info();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "doc": doc.as_str(), "doc_seq": info.last_seq, "text_len": info.text_len })),
    ))
}

/// Deletes a document and its history; its subscribers are told. Admin only.
pub async fn delete_doc(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Admin, &doc)?;
    let by = principal.sub().unwrap_or("anonymous");
    app.registry.delete(&doc, by).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyBody {
    to: Option<String>,
    version: Option<u64>,
}

/// Forks a document at a version (default: its latest state) into a new
/// one. Needs `read` on the source and `write` on the copy.
pub async fn copy_doc(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let source = DocId::parse(&id)?;
    principal.require(Action::Read, &source)?;
    let CopyBody { to, version } = json_body(&body)?;
    let target = DocId::parse(to.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "give {\"to\": <new doc id>, \"version\": <version id, optional>}",
        )
    })?)?;
    principal.require(Action::Write, &target)?;
    let key = source.clone();
    let (seq, state) = super::history::read(&app, move |store| {
        let seq = match version {
            Some(v) => history::version(store, &key, v)?.seq,
            None => u64::MAX,
        };
        let rebuilt = history::rebuild(store, &key, seq)?;
        Ok((rebuilt.seq, rebuilt.state()))
    })
    .await?;
    let label = format!("copy of {source} at {seq}");
    let shard = app
        .registry
        .create(
            &target,
            Initial::State(state.into()),
            "copy",
            VersionKind::Copy,
            label,
            IfDeleted::Refuse,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "doc": target.as_str(),
            "from": source.as_str(),
            "version": seq,
            "doc_seq": shard.info().last_seq,
        })),
    ))
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
