//! Every error the API answers with: one enum, one mapping to HTTP statuses,
//! one body shape (OpenKilda's MessageError).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wfm_protocol::northbound::{RequestError, RequestErrorKind};

use crate::validation::ValidationError;

tokio::task_local! {
    /// The correlation id of the HTTP request being served, set by the
    /// middleware so that any error, wherever it is built, carries it.
    pub static CORRELATION_ID: String;
}

/// The correlation id of the request being served, or `unknown` outside one.
pub fn current_correlation_id() -> String {
    CORRELATION_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "unknown".into())
}

/// OpenKilda's error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageError {
    pub correlation_id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    #[serde(rename = "error-type")]
    pub error_type: String,
    #[serde(rename = "error-message")]
    pub error_message: String,
    #[serde(rename = "error-description")]
    pub error_description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("a valid bearer token is required for this operation")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("the message broker is unreachable: {0}")]
    BrokerUnavailable(String),
    #[error("the hub did not answer within {0:?}; the request may still complete")]
    Timeout(Duration),
    #[error("{0}")]
    Internal(String),
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        match error.kind {
            RequestErrorKind::InvalidRequest => {
                ApiError::Invalid(ValidationError::Rejected(error.message))
            }
            RequestErrorKind::NotFound => ApiError::NotFound(error.message),
            RequestErrorKind::Conflict => ApiError::Conflict(error.message),
            RequestErrorKind::Overloaded => ApiError::Overloaded(error.message),
            RequestErrorKind::Internal => ApiError::Internal(error.message),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Overloaded(_) | ApiError::BrokerUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error-type` field: a stable word clients can switch on.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_request",
            ApiError::BodyTooLarge { .. } => "payload_too_large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) | ApiError::NoRoute(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::BrokerUnavailable(_) => "unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The `error-message` field: a short summary, the description has the details.
    fn summary(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "Invalid request",
            ApiError::BodyTooLarge { .. } => "Request body too large",
            ApiError::Unauthorized => "Not authorized",
            ApiError::NotFound(_) | ApiError::NoRoute(_) => "Object was not found",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Overloaded(_) => "Service overloaded",
            ApiError::BrokerUnavailable(_) => "Service unavailable",
            ApiError::Timeout(_) => "Operation timed out",
            ApiError::Internal(_) => "Internal service error",
        }
    }

    pub fn body(&self) -> MessageError {
        MessageError {
            correlation_id: current_correlation_id(),
            timestamp: wfm_protocol::now_ms(),
            error_type: self.error_type().into(),
            error_message: self.summary().into(),
            error_description: self.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        // `Retry-After` on a 503 is added by the middleware, which knows the configured delay.
        if let ApiError::Unauthorized = self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_error(kind: RequestErrorKind) -> ApiError {
        ApiError::from(RequestError {
            kind,
            message: "from the hub".into(),
        })
    }

    #[test]
    fn hub_error_kinds_map_to_statuses() {
        for (kind, status) in [
            (RequestErrorKind::InvalidRequest, 400),
            (RequestErrorKind::NotFound, 404),
            (RequestErrorKind::Conflict, 409),
            (RequestErrorKind::Overloaded, 503),
            (RequestErrorKind::Internal, 500),
        ] {
            let error = hub_error(kind);
            assert_eq!(error.status().as_u16(), status, "{kind:?}");
            assert!(error.to_string().contains("from the hub"));
        }
        assert_eq!(ApiError::Timeout(Duration::from_secs(1)).status(), 408);
        assert_eq!(ApiError::Unauthorized.status(), 401);
        assert_eq!(ApiError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(ApiError::BrokerUnavailable("x".into()).status(), 503);
    }

    #[test]
    fn body_has_the_message_error_shape_and_correlation_id() {
        let body = CORRELATION_ID.sync_scope("corr-7".into(), || {
            ApiError::Conflict("flow f1 exists".into()).body()
        });
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["correlation_id"], "corr-7");
        assert_eq!(json["error-type"], "conflict");
        assert_eq!(json["error-description"], "flow f1 exists");
        assert!(json["timestamp"].as_i64().unwrap() > 0);
        assert_eq!(
            ApiError::Internal("x".into()).body().correlation_id,
            "unknown"
        );
    }

    #[test]
    fn unauthorized_names_the_scheme() {
        let response = ApiError::Unauthorized.into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
