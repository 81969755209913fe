//! The history API: versions, the text at any point, attributed diffs,
//! replay as SSE, and restore. Reads run on blocking threads over the
//! store, after a writer barrier, so everything acknowledged is visible.
//! See [`crate::history`] for what points and versions are. Reading history
//! needs `read` on the document, labelling a version `write`, and restore
//! `admin`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::sse::{respond, retry_hint};
use super::{ApiError, AppState};
use crate::auth::{Action, Principal};
use crate::doc::{DocId, ShardError};
use crate::history::{self, HistoryError, Replayer, Step, VersionInfo};
use crate::store::{DocStore, VersionKind};

/// Longest version label, in bytes.
pub const MAX_LABEL_BYTES: usize = 200;
/// Replay streams running at once; past it, new ones get 503. Each holds a
/// blocking thread while its consumer keeps up.
pub const MAX_REPLAYS: usize = 32;
/// Replay steps computed ahead of the client; the producer waits at the limit.
const REPLAY_AHEAD: usize = 256;
/// Longest pause a replay makes between two updates, whatever the speed:
/// hours of nobody typing play as this.
const MAX_REPLAY_GAP: Duration = Duration::from_secs(5);
/// Fastest replay speed (times real time); 0 means no pauses at all.
const MAX_REPLAY_SPEED: f64 = 10_000.0;

/// Runs `f` over the store on a blocking thread, once everything queued
/// before is durable (so a read sees every acknowledged update).
pub(super) async fn read<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce(&dyn DocStore) -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, ApiError> {
    app.registry
        .writer()
        .barrier()
        .await
        .map_err(|_| ApiError::from(ShardError::ShuttingDown))?;
    let store = app.registry.store().clone();
    tokio::task::spawn_blocking(move || match f(store.as_ref()) {
        // A deleted document's history is gone, and says so (410).
        Err(HistoryError::DocNotFound(doc)) if matches!(store.tombstone(&doc), Ok(Some(_))) => {
            Err(ApiError::deleted(&doc))
        }
        other => other.map_err(ApiError::from),
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "history task failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?
}

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn parse_version(v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| bad_request("invalid_version", format!("version {v:?} is not a number")))
}

/// Parses a JSON body that may be empty (then `T::default()`).
pub(super) fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad_request("invalid_json", e.to_string()))
}

pub async fn list_versions(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    let key = doc.clone();
    let (versions, latest_seq) = read(&app, move |store| {
        let versions = history::versions(store, &key)?;
        Ok((versions, history::meta(store, &key)?.last_seq))
    })
    .await?;
    Ok(Json(json!({
        "doc": doc.as_str(),
        "latest_seq": latest_seq,
        "versions": versions,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    label: Option<String>,
}

pub async fn create_version(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Write, &doc)?;
    let NewVersion { label } = json_body(&body)?;
    let label = label.unwrap_or_default();
    if label.len() > MAX_LABEL_BYTES {
        return Err(bad_request(
            "invalid_label",
            format!("labels are at most {MAX_LABEL_BYTES} bytes"),
        ));
    }
    let (seq, version) = app.registry.save_version(&doc, label).await?;
    Ok((StatusCode::CREATED, Json(VersionInfo::new(seq, &version))))
}

/// Checks that `version` is a version of `doc` and rebuilds it.
async fn version_point(
    app: &AppState,
    doc: &DocId,
    version: &str,
) -> Result<history::Rebuilt, ApiError> {
    let seq = parse_version(version)?;
    let key = doc.clone();
    read(app, move |store| {
        history::version(store, &key, seq)?;
        history::rebuild(store, &key, seq)
    })
    .await
}

pub async fn version_text(
    principal: Principal,
    State(app): State<AppState>,
    Path((id, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    let rebuilt = version_point(&app, &doc, &version).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        rebuilt.text(),
    ))
}

pub async fn version_state(
    principal: Principal,
    State(app): State<AppState>,
    Path((id, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    let rebuilt = version_point(&app, &doc, &version).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        rebuilt.state(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct AtQuery {
    seq: Option<String>,
    time: Option<String>,
}

pub async fn at(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<AtQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    enum Point {
        Seq(u64),
        Time(i64),
    }
    let point = match (&query.seq, &query.time) {
        (Some(seq), None) => Point::Seq(
            seq.parse()
                .map_err(|_| bad_request("invalid_seq", format!("seq {seq:?} is not a number")))?,
        ),
        (None, Some(t)) => Point::Time(history::parse_time(t).ok_or_else(|| {
            bad_request(
                "invalid_time",
                format!("time {t:?} is neither milliseconds since the epoch nor RFC 3339"),
            )
        })?),
        _ => {
            return Err(bad_request(
                "invalid_query",
                "give exactly one of ?seq= and ?time=",
            ))
        }
    };
    let rebuilt = read(&app, move |store| {
        let seq = match point {
            Point::Seq(seq) => seq,
            Point::Time(t) => history::seq_at_time(store, &doc, t)?,
        };
        history::rebuild(store, &doc, seq)
    })
    .await?;
    Ok(Json(json!({
        "seq": rebuilt.seq,
        "time_ms": rebuilt.time_ms,
        "text": rebuilt.text(),
    })))
}

#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    speed: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// `from` and `to` of a range query, checked against the document's last seq.
async fn range(app: &AppState, doc: &DocId, q: &RangeQuery) -> Result<(u64, u64), ApiError> {
    let key = doc.clone();
    let last = read(app, move |store| Ok(history::meta(store, &key)?.last_seq)).await?;
    let from = match &q.from {
        Some(v) => parse_version(v)?,
        None => 0,
    };
    let to = match &q.to {
        Some(v) => parse_version(v)?,
        None => last,
    };
    if from > to || to > last {
        return Err(bad_request(
            "invalid_range",
            format!("need from <= to <= {last} (the latest seq); got {from}..{to}"),
        ));
    }
    Ok((from, to))
}

pub async fn diff(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<RangeQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    let (from, to) = range(&app, &doc, &query).await?;
    let changes = read(&app, move |store| history::diff(store, &doc, from, to)).await?;
    Ok(Json(changes))
}

/// What the replay producer hands the stream.
enum ReplayItem {
    Start {
        seq: u64,
        time_ms: i64,
        text: String,
    },
    Step(Step),
    Failed(String),
}

pub async fn replay(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<RangeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Read, &doc)?;
    let (mut from, to) = range(&app, &doc, &query).await?;
    let speed = match &query.speed {
        None => 1.0,
        Some(s) => match s.parse::<f64>() {
            Ok(x) if (0.0..=MAX_REPLAY_SPEED).contains(&x) => x,
            _ => {
                return Err(bad_request(
                    "invalid_speed",
                    format!("speed must be a number from 0 to {MAX_REPLAY_SPEED}"),
                ))
            }
        },
    };
    // A reconnecting EventSource resumes after the last seq it got; an id
    // that is not one of ours starts over.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id.clone())
        .and_then(|id| id.parse::<u64>().ok())
        .filter(|seq| (from..=to).contains(seq));
    if let Some(seq) = resume {
        from = seq;
    }
    let permit = app.replays.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_replays",
            format!("{MAX_REPLAYS} replays are running; try again later"),
        )
    })?;
    let (tx, mut rx) = mpsc::channel(REPLAY_AHEAD);
    let store = app.registry.store().clone();
    app.registry
        .writer()
        .barrier()
        .await
        .map_err(|_| ApiError::from(ShardError::ShuttingDown))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        produce_replay(store.as_ref(), &doc, from, to, resume.is_none(), &tx);
    });
    let retry = retry_hint(&app);
    let stream = async_stream::stream! {
        yield Ok::<_, Infallible>(retry);
        let mut last_time: Option<i64> = None;
        while let Some(item) = rx.recv().await {
            match item {
                ReplayItem::Start { seq, time_ms, text } => {
                    last_time = Some(time_ms);
                    let data = json!({ "seq": seq, "time_ms": time_ms, "text": text });
                    yield Ok(Event::default().event("start").id(seq.to_string()).data(data.to_string()));
                }
                ReplayItem::Step(step) => {
                    if speed > 0.0 {
                        if let Some(prev) = last_time {
                            let gap_ms = (step.time_ms.saturating_sub(prev)).max(0) as f64 / speed;
                            let gap = Duration::from_secs_f64(gap_ms / 1000.0).min(MAX_REPLAY_GAP);
                            if !gap.is_zero() {
                                tokio::time::sleep(gap).await;
                            }
                        }
                    }
                    last_time = Some(step.time_ms);
                    let id = step.seq.to_string();
                    let data = serde_json::to_string(&step).unwrap_or_default();
                    yield Ok(Event::default().event("delta").id(id).data(data));
                }
                ReplayItem::Failed(message) => {
                    let data = json!({ "error": message });
                    yield Ok(Event::default().event("error").data(data.to_string()));
                    return;
                }
            }
        }
        yield Ok(Event::default().event("end").id(to.to_string()).data(json!({ "seq": to }).to_string()));
    };
    Ok(respond(&app, &principal, stream))
}

/// Runs on a blocking thread: computes the replay and feeds it to `tx`,
/// waiting while the client is [`REPLAY_AHEAD`] steps behind; stops when the
/// stream is dropped.
fn produce_replay(
    store: &dyn DocStore,
    doc: &DocId,
    from: u64,
    to: u64,
    with_start: bool,
    tx: &mpsc::Sender<ReplayItem>,
) {
    let fail = |e: HistoryError| {
        tracing::warn!(%doc, error = %e, "replay failed");
        let _ = tx.blocking_send(ReplayItem::Failed("history could not be read".to_owned()));
    };
    let mut replayer = match Replayer::start(store, doc, from, to) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if with_start {
        let at = replayer.current();
        let start = ReplayItem::Start {
            seq: at.seq,
            time_ms: at.time_ms,
            text: at.text(),
        };
        if tx.blocking_send(start).is_err() {
            return;
        }
    }
    loop {
        match replayer.next_step(store) {
            Ok(Some(step)) => {
                if tx.blocking_send(ReplayItem::Step(step)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => return fail(e),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    version: Option<u64>,
}

pub async fn restore(
    principal: Principal,
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let doc = DocId::parse(&id)?;
    principal.require(Action::Admin, &doc)?;
    let RestoreBody { version } = json_body(&body)?;
    let version =
        version.ok_or_else(|| bad_request("invalid_json", "give {\"version\": <version id>}"))?;
    let key = doc.clone();
    let target = read(&app, move |store| {
        history::version(store, &key, version)?;
        Ok(history::rebuild(store, &key, version)?.text())
    })
    .await?;
    let shard = app.registry.get(&doc, false).await?;
    let label = format!("restore of version {version}");
    let restored = shard
        .set_text(
            &target,
            "restore",
            Some((VersionKind::Restore, label.clone())),
            false,
        )
        .await?;
    let version_durable = match restored {
        Some((applied, saved)) => {
            applied
                .durable
                .await
                .map_err(|_| ApiError::from(ShardError::ShuttingDown))?
                .map_err(|_| storage_failure())?;
            saved
        }
        // Already that text: nothing to restore, and no new version.
        None => None,
    };
    let changed = version_durable.is_some();
    if let Some(durable) = version_durable {
        durable
            .await
            .map_err(|_| ApiError::from(ShardError::ShuttingDown))?
            .map_err(|_| storage_failure())?;
    }
    let key = doc.clone();
    let versions = read(&app, move |store| history::versions(store, &key)).await?;
    let newest = versions.last().cloned();
    Ok(Json(json!({
        "doc_seq": newest.as_ref().map_or(0, |v| v.seq),
        "restored": version,
        "changed": changed,
        "version": newest,
    })))
}

fn storage_failure() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_failure",
        "the change was not made durable; retry",
    )
}
