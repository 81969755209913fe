//! [`ApiError`]: the one place errors become HTTP responses. The JSON shape is
//! stable: `{"error": {"code": "doc_not_found", "message": "..."}}`. Internal
//! causes are logged, not returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::doc::{DocId, DocIdError, RegistryError, ShardError};
use crate::history::HistoryError;

/// An HTTP error: status, a stable machine code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds), for refusals that pass with time.
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// 410 Gone: `doc` was deleted and stays so until re-created by `PUT`.
    pub fn deleted(doc: &DocId) -> Self {
        Self::new(
            StatusCode::GONE,
            "doc_deleted",
            format!("document {doc} was deleted; PUT /docs/{doc} creates it anew"),
        )
    }

    /// The same error, telling the client to retry after `secs` seconds.
    #[must_use]
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<DocIdError> for ApiError {
    fn from(e: DocIdError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_doc_id", e.to_string())
    }
}

impl From<ShardError> for ApiError {
    fn from(e: ShardError) -> Self {
        let (status, code) = match &e {
            ShardError::InvalidUpdate(_) | ShardError::MissingDependencies => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_update")
            }
            ShardError::InvalidAwareness(_) | ShardError::InvalidStateVector(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input")
            }
            ShardError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ShardError::Closed | ShardError::SlowConsumer => {
                (StatusCode::SERVICE_UNAVAILABLE, "retry")
            }
            ShardError::NotSubscribed | ShardError::AlreadySubscribed => {
                (StatusCode::CONFLICT, "conflict")
            }
            ShardError::NotEmpty => (StatusCode::CONFLICT, "doc_exists"),
            ShardError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "doc_too_large"),
            ShardError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "retry"),
            ShardError::Corrupt(_) => {
                tracing::error!(error = %e, "corrupt document");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                );
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(doc) => Self::new(
                StatusCode::NOT_FOUND,
                "doc_not_found",
                format!("document {doc} does not exist"),
            ),
            RegistryError::Deleted(doc) => Self::deleted(&doc),
            RegistryError::Shard(shard) => shard.into(),
            RegistryError::History(e) => e.into(),
            RegistryError::AlreadyExists(doc) => Self::new(
                StatusCode::CONFLICT,
                "doc_exists",
                format!("document {doc} already exists"),
            ),
            RegistryError::Deleting(doc) => Self::new(
                StatusCode::CONFLICT,
                "doc_deleting",
                format!("document {doc} is being deleted; try again"),
            ),
            RegistryError::Busy(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                e.to_string(),
            )
            .retry_after(1),
            RegistryError::Write(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_failure",
                "the change was not made durable; retry",
            ),
            RegistryError::Store(_) | RegistryError::Join(_) => {
                tracing::error!(error = %e, "storage failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_failure",
                    "storage failure",
                )
            }
        }
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::DocNotFound(doc) => Self::new(
                StatusCode::NOT_FOUND,
                "doc_not_found",
                format!("document {doc} does not exist"),
            ),
            HistoryError::VersionNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "version_not_found", e.to_string())
            }
            HistoryError::Store(_) | HistoryError::Corrupt { .. } => {
                tracing::error!(error = %e, "history read failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_failure",
                    "storage failure",
                )
            }
        }
    }
}
