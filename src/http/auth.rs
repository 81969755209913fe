//! The HTTP side of access control: auth refusals as JSON errors, the
//! [`Principal`] extractor, and the `--allowed-origins` middleware. The
//! token rules themselves are in [`crate::auth`], which knows no HTTP.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::auth::{Auth, AuthError, Denied, Principal};

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        let code = match e {
            Denied::ReadOnly => "read_only",
            Denied::NotCovered(_) | Denied::NotAll | Denied::AdminOnly => "forbidden",
        };
        ApiError::new(StatusCode::FORBIDDEN, code, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Expired => "token_expired",
            AuthError::Revoked => "token_revoked",
            AuthError::Missing | AuthError::Invalid(_) => "unauthorized",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

/// Extracts the request's principal; 401 `unauthorized` (or
/// `token_expired`) with `WWW-Authenticate: Bearer` when there is none.
impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Auth>::from_ref(state);
        auth.from_http(&parts.headers, &parts.uri)
            .map_err(unauthorized)
    }
}

/// The 401 response for `e`, with the `WWW-Authenticate` challenge.
pub fn unauthorized(e: AuthError) -> Response {
    let mut response = ApiError::from(e).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `--allowed-origins`: the browser origins allowed to open WebSockets and
/// SSE streams or call the API. Empty allows every origin.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Arc<[String]>);

impl AllowedOrigins {
    /// From `scheme://host[:port]` entries (case and a trailing `/` ignored).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(origins: I) -> Self {
        let list: Vec<String> = origins
            .into_iter()
            .map(|o| normalize_origin(o.as_ref()))
            .filter(|o| !o.is_empty())
            .collect();
        Self(list.into())
    }

    /// Whether a request with this `Origin` header may go on. Requests
    /// without one (not from a browser page) always may: the check stops
    /// other sites' pages, it is not authentication.
    pub fn allows(&self, origin: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.0.is_empty() {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = normalize_origin(origin);
        self.0.contains(&origin)
    }
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Middleware refusing requests whose `Origin` is not allowed: 403
/// `origin_not_allowed`, before any WebSocket upgrade or stream starts.
pub async fn check_origin(
    State(origins): State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request.headers().get(header::ORIGIN);
    if origins.allows(origin) {
        return next.run(request).await;
    }
    let shown = origin
        .and_then(|o| o.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    tracing::debug!(origin = %shown, "origin refused");
    ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!("origin {shown} is not in --allowed-origins"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_normalized_and_allow_non_browser_requests() {
        let origins = AllowedOrigins::new(["https://app.example.com/", "http://localhost:5173"]);
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(origins.allows(None));
        assert!(origins.allows(Some(&h("https://APP.example.com"))));
        assert!(origins.allows(Some(&h("http://localhost:5173"))));
        assert!(!origins.allows(Some(&h("http://localhost:5174"))));
        assert!(!origins.allows(Some(&h("null"))));
        assert!(AllowedOrigins::default().allows(Some(&h("https://evil.example"))));
    }
}
