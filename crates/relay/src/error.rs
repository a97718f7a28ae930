//! The relay's errors, each answered with a status and the JSON body every semithin server
//! answers (`{"error": "..."}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("the request body is larger than the {0} bytes the relay accepts")]
    TooLarge(usize),
    /// No upstream could be reached (or every one failed with 5xx).
    #[error("the relay reaches no upstream: {0}")]
    Unreachable(String),
    /// An upstream refused with this status and reason (passed on to the child).
    #[error("{reason}")]
    Upstream { status: u16, reason: String },
    /// What an upstream sent is damaged (the relay verified it).
    #[error("the relay's upstream sent damaged data: {0}")]
    Damaged(String),
    #[error("the relay failed: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Bad(_) => StatusCode::BAD_REQUEST,
            Error::NotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unreachable(_) | Error::Damaged(_) => StatusCode::BAD_GATEWAY,
            Error::Upstream { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("{self}");
        }
        // What failed inside the relay (paths of its disk) goes to its log only.
        let text = match &self {
            Error::Internal(_) => "the relay failed to answer (its log has the reason)".to_owned(),
            e => e.to_string(),
        };
        let body = serde_json::json!({ "error": text });
        (status, axum::Json(body)).into_response()
    }
}
