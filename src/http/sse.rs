//! Server-Sent Events for read-only watchers:
//! - `GET /docs/{id}/events`: one document's presence, activity, saved and
//!   doc events, resumable with `Last-Event-ID` (or `?lastEventId=`);
//! - `GET /docs/{id}/text/stream`: the text, then coalesced deltas;
//! - `GET /events?docs=a,b`: several documents (or all) on one stream.
//!
//! Each stream needs a token that may read its documents (the all-documents
//! feed: admin over `*`), and ends when that token expires or is revoked; the browser's
//! `EventSource` then reconnects, with a fresh `?token=` if the page gave
//! it one.
//!
//! Every stream reads from a bounded broadcast channel; a watcher that falls
//! behind gets a `reset` (or a fresh `text`) instead of growing memory, and a
//! watcher that goes away is dropped as soon as its connection closes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::{ApiError, AppState};
use crate::auth::{Action, Principal};
use crate::doc::{DocId, RegistryError};
use crate::feed::delta::{self, Op};
use crate::feed::{DocFeed, FeedEvent, FeedHub, Start, WatchGuard};

/// Most documents one `/events?docs=` stream may name.
const MAX_DOCS_PER_STREAM: usize = 100;

#[derive(Debug, Default, Deserialize)]
pub struct ResumeQuery {
    /// For clients that cannot set the `Last-Event-ID` header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    /// `/events` only: comma-separated doc ids; absent means all documents.
    docs: Option<String>,
}

pub(super) fn last_event_id(headers: &HeaderMap, query: &ResumeQuery) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.last_event_id.clone())
}

/// The feed of an existing document. Watching never loads the document.
async fn open_feed(app: &AppState, doc: &DocId) -> Result<Arc<DocFeed>, ApiError> {
    let hub = app.registry.feeds();
    if let Some(shard) = app.registry.resident_shard(doc) {
        return Ok(shard.feed().clone());
    }
    match app.registry.meta(doc).await? {
        Some(meta) => Ok(hub.feed(doc, || meta.text_len)),
        None => Err(RegistryError::NotFound(doc.clone()).into()),
    }
}

fn sse_event(hub: &FeedHub, e: &FeedEvent, n: u64) -> Event {
    Event::default()
        .event(e.kind.as_str())
        .id(hub.id(n))
        .data(e.data.as_str())
}

/// Wraps a stream with keep-alives and the headers proxies need.
pub(super) fn respond<S>(app: &AppState, principal: &Principal, stream: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let keep_alive = KeepAlive::new()
        .interval(Duration::from_secs(app.config.sse_keepalive_secs.max(1)))
        .text("keep-alive");
    let headers = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ];
    // Streams end when the server shuts down, so the graceful shutdown is
    // not held up by watchers that would never leave by themselves.
    let shutdown = app.shutdown.clone().cancelled_owned();
    // And when the token expires: the client reconnects with a fresh one.
    let expiry = principal
        .remaining()
        .map_or_else(|| tokio::time::sleep(Duration::MAX), tokio::time::sleep);
    // And when the token is revoked: re-checked at every revocation, and
    // once at the start for one that landed since the request's check.
    let mut revocations = app.auth.revocations().watch();
    let (auth, principal) = (app.auth.clone(), principal.clone());
    let revoked = async move {
        while !auth.is_revoked(&principal) {
            if revocations.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        tracing::debug!("SSE stream ends: its token was revoked");
    };
    let end = async move {
        tokio::select! {
            () = shutdown => {},
            () = expiry => {},
            () = revoked => {},
        }
    };
    let stream = stream.take_until(end);
    (headers, Sse::new(stream).keep_alive(keep_alive)).into_response()
}

/// The reconnect hint, sent once as a comment-only event at the start.
pub(super) fn retry_hint(app: &AppState) -> Event {
    Event::default()
        .retry(Duration::from_millis(app.config.sse_retry_ms))
        .comment("folio")
}

#[tracing::instrument(name = "sse", skip_all, fields(doc = %id))]
pub async fn doc_events(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ResumeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    let feed = open_feed(&app, &doc).await?;
    let guard = feed.watch();
    let (start, mut rx) = feed.subscribe(last_event_id(&headers, &query).as_deref());
    let hub = app.registry.feeds().clone();
    let retry = retry_hint(&app);
    let stream = async_stream::stream! {
        let _guard: WatchGuard = guard;
        yield Ok(retry);
        match start {
            Start::Replay(events) => {
                for e in events {
                    yield Ok(sse_event(&hub, &e, e.n));
                }
            }
            Start::Reset(e) => yield Ok(sse_event(&hub, &e, e.n)),
        }
        loop {
            match rx.recv().await {
                Ok(e) => yield Ok(sse_event(&hub, &e, e.n)),
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the channel: a reset replaces what it missed.
                    let e = feed.reset_event();
                    yield Ok(sse_event(&hub, &e, e.n));
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(respond(&app, &principal, stream))
}

#[tracing::instrument(name = "sse_all", skip_all, fields(docs = query.docs.as_deref()))]
pub async fn all_events(
    principal: Principal,
    State(app): State<AppState>,
    Query(query): Query<ResumeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wanted: Option<Vec<DocId>> = match query.docs.as_deref() {
        None => {
            // Every document, including ones created later: admin over `*`.
            principal.require_all(Action::Admin)?;
            None
        }
        Some(list) => {
            let ids = list
                .split(',')
                .filter(|s| !s.is_empty())
                .map(DocId::parse)
                .collect::<Result<Vec<_>, _>>()?;
            if ids.len() > MAX_DOCS_PER_STREAM {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "too_many_docs",
                    format!("at most {MAX_DOCS_PER_STREAM} documents per stream"),
                ));
            }
            Some(ids)
        }
    };
    let mut feeds = Vec::new();
    if let Some(ids) = &wanted {
        for doc in ids {
            principal.require(Action::Read, doc)?;
        }
        for doc in ids {
            feeds.push(open_feed(&app, doc).await?);
        }
    }
    let guards: Vec<WatchGuard> = feeds.iter().map(|f| f.watch()).collect();
    let hub = app.registry.feeds().clone();
    let start = hub.subscribe_global(last_event_id(&headers, &query).as_deref());
    let mut rx = start.rx;
    let retry = retry_hint(&app);
    let reset = move |hub: &FeedHub, last: u64| {
        let states: Vec<_> = match &wanted {
            Some(_) => feeds.iter().map(|f| f.state()).collect(),
            None => hub.all().iter().map(|f| f.state()).collect(),
        };
        Event::default()
            .event("reset")
            .id(hub.id(last))
            .data(json!({ "docs": states }).to_string())
    };
    let filter: Option<std::collections::HashSet<DocId>> = query
        .docs
        .as_ref()
        .map(|_| guards.iter().map(|g| g.doc().clone()).collect());
    let stream = async_stream::stream! {
        let _guards = guards;
        yield Ok(retry);
        let wants = |e: &FeedEvent| filter.as_ref().is_none_or(|f| f.contains(&e.doc));
        match start.replay {
            Some(events) => {
                for e in events.iter().filter(|e| wants(e)) {
                    yield Ok(sse_event(&hub, e, e.global));
                }
            }
            None => yield Ok(reset(&hub, start.last)),
        }
        loop {
            match rx.recv().await {
                Ok(e) if wants(&e) => yield Ok(sse_event(&hub, &e, e.global)),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    let last = hub.global_last();
                    yield Ok(reset(&hub, last));
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(respond(&app, &principal, stream))
}

#[tracing::instrument(name = "sse_text", skip_all, fields(doc = %id))]
pub async fn text_stream(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    // The text needs the document in memory; the stream itself does not
    // keep it there (it follows the feed, which outlives evictions).
    let shard = app.registry.get(&doc, false).await?;
    let feed = shard.feed().clone();
    let guard = feed.watch();
    let (text, mut rx) = shard.watch_text();
    drop(shard);
    let interval = Duration::from_millis(app.config.text_stream_interval_ms);
    let registry = app.registry.clone();
    let retry = retry_hint(&app);
    let stream = async_stream::stream! {
        let _guard = guard;
        yield Ok(retry);
        yield Ok(text_event(&text));
        let mut next_at = Instant::now();
        'live: loop {
            // Wait for an edit, then gather everything until the interval is up.
            let mut pending: Option<Vec<Op>> = None;
            let first = rx.recv().await;
            let mut outcome = first;
            let deadline = next_at.max(Instant::now());
            loop {
                match outcome {
                    Ok(edit) => {
                        pending = Some(match pending.take() {
                            None => edit.delta.clone(),
                            Some(before) => delta::compose(before, edit.delta.clone()),
                        });
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Missed edits: start over from the current text.
                        match registry.get(&doc, false).await {
                            Ok(shard) => {
                                let (text, fresh) = shard.watch_text();
                                rx = fresh;
                                yield Ok(text_event(&text));
                                continue 'live;
                            }
                            Err(_) => break 'live,
                        }
                    }
                    Err(RecvError::Closed) => break 'live,
                }
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(next) => outcome = next,
                    Err(_) => break,
                }
            }
            if let Some(ops) = pending {
                let data = serde_json::to_string(&ops).unwrap_or_else(|_| "[]".into());
                yield Ok(Event::default().event("delta").data(data));
                next_at = Instant::now() + interval;
            }
        }
    };
    Ok(respond(&app, &principal, stream))
}

fn text_event(text: &str) -> Event {
    Event::default()
        .event("text")
        .data(json!({ "text": text }).to_string())
}
