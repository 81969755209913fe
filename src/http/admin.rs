//! `/admin/revocations`: revoke tokens by id (`jti`) or user (`sub`), list
//! the revocations in force, and remove one. Admin over `*` only, like the
//! all-documents feed. The work (durable write, waking open sockets) is in
//! [`crate::auth::revocation`]; these handlers parse, check and map errors.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::history::json_body;
use super::{ApiError, AppState};
use crate::auth::revocation::{Revocation, RevokeError, Target, MAX_REVOCATIONS};
use crate::auth::{Action, Principal};

/// The body of `POST /admin/revocations`: exactly one of `jti` and `sub`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRevocation {
    jti: Option<String>,
    sub: Option<String>,
    /// When the revocation may be forgotten (ms since the epoch), e.g. the
    /// token's expiry; absent: kept until removed.
    forget_after_ms: Option<u64>,
}

fn revocation_json(r: &Revocation) -> Value {
    let mut v = json!({
        "revoked_at_ms": r.revoked_at_ms,
        "forget_after_ms": r.forget_after_ms,
    });
    v[r.target.kind()] = Value::from(r.target.value());
    v
}

impl From<RevokeError> for ApiError {
    fn from(e: RevokeError) -> Self {
        let (status, code) = match &e {
            RevokeError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_revocation"),
            RevokeError::Full(_) => (StatusCode::INSUFFICIENT_STORAGE, "too_many_revocations"),
            RevokeError::NotFound(..) => (StatusCode::NOT_FOUND, "revocation_not_found"),
            RevokeError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            RevokeError::Store(_) => {
                tracing::error!(error = %e, "revocation not stored");
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_failure",
                    "the revocation was not made durable; retry",
                );
            }
        };
        Self::new(status, code, e.to_string())
    }
}

/// Admin over `*`, and a server that checks tokens at all.
fn require_admin(app: &AppState, principal: &Principal) -> Result<(), ApiError> {
    principal.require_all(Action::Admin)?;
    if app.auth.is_open() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "auth_disabled",
            "the server runs without --auth-secret: there are no tokens to revoke",
        ));
    }
    Ok(())
}

/// Runs a blocking registry write off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RevokeError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "revocation task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        })?
        .map_err(ApiError::from)
}

/// `POST /admin/revocations`: `{"jti": "..."}` or `{"sub": "..."}`, and
/// optionally `forget_after_ms`. 201 with the revocation, once durable;
/// open sockets using a revoked token are told at once.
pub async fn revoke(
    principal: Principal,
    State(app): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&app, &principal)?;
    let new: NewRevocation = json_body(&body)?;
    let target = match (new.jti, new.sub) {
        (Some(jti), None) => Target::jti(&jti)?,
        (None, Some(sub)) => Target::sub(&sub)?,
        _ => {
            return Err(
                RevokeError::Invalid("give exactly one of \"jti\" and \"sub\"".into()).into(),
            )
        }
    };
    let revocations = app.auth.revocations().clone();
    let forget_after_ms = new.forget_after_ms;
    let r = blocking(move || revocations.revoke_blocking(target, forget_after_ms)).await?;
    Ok((StatusCode::CREATED, Json(revocation_json(&r))))
}

/// `GET /admin/revocations`: every revocation in force.
pub async fn list(
    principal: Principal,
    State(app): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&app, &principal)?;
    let all: Vec<Value> = app
        .auth
        .revocations()
        .list()
        .iter()
        .map(revocation_json)
        .collect();
    Ok(Json(json!({ "revocations": all, "max": MAX_REVOCATIONS })))
}

/// `DELETE /admin/revocations/{jti|sub}/{value}`: the tokens work again
/// (until they expire) on new requests; sockets already told stay told.
pub async fn remove(
    principal: Principal,
    State(app): State<AppState>,
    Path((kind, value)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&app, &principal)?;
    let target = match kind.as_str() {
        "jti" => Target::jti(&value)?,
        "sub" => Target::sub(&value)?,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such route: /admin/revocations/{other}/…; use jti or sub"),
            ))
        }
    };
    let revocations = app.auth.revocations().clone();
    let r = blocking(move || revocations.remove_blocking(&target)).await?;
    Ok(Json(revocation_json(&r)))
}
