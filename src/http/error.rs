//! The one error type of the HTTP API. Every error is JSON with a stable code and a message
//! a trader can act on; internals (SQL, stack traces) are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Seconds a client is told to wait before resending after a 503.
pub const RETRY_AFTER_S: u64 = 5;

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub code: &'static str,
    /// What is wrong and what to do.
    pub message: String,
    /// The field at fault, for 422.
    pub field: Option<&'static str>,
    /// Seconds the client is told to wait (`Retry-After`), for 503 and 429.
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with no field and no `Retry-After`.
    fn plain(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError {
            status,
            code,
            message,
            field: None,
            retry_after_s: None,
        }
    }

    /// 400: the body is not JSON.
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::plain(StatusCode::BAD_REQUEST, "malformed", message.into())
    }

    /// 413: the body is over [`super::MAX_BODY_BYTES`].
    pub fn too_large() -> ApiError {
        let message = format!(
            "the body is larger than {} bytes; an alert is a few hundred",
            super::MAX_BODY_BYTES
        );
        ApiError::plain(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 401: the passphrase is missing or wrong. The message never says which.
    pub fn unauthorized() -> ApiError {
        let message = "passphrase missing or wrong".to_string();
        ApiError::plain(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the kill switch over HTTP where no operator token is configured.
    pub fn forbidden_without_token() -> ApiError {
        ApiError::plain(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "POST /pause and /resume need an operator token: set {} or operator_token in \
                 the deployment file, or use `vigil pause` and `vigil resume`",
                crate::deployment::OPERATOR_TOKEN_ENV
            ),
        )
    }

    /// 401: an operator request without the configured bearer token.
    pub fn unauthorized_operator() -> ApiError {
        let message = format!(
            "bearer token missing or wrong; send `Authorization: Bearer <token>` with the token set in \
             {} or operator_token in the deployment file",
            crate::deployment::OPERATOR_TOKEN_ENV
        );
        ApiError::plain(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 401: a signed request whose signature does not hold.
    pub fn bad_signature(error: super::signature::SignatureError) -> ApiError {
        ApiError::plain(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string())
    }

    /// 403: the source may not send webhooks.
    pub fn forbidden() -> ApiError {
        let message =
            "this source may not send webhooks; the deployment's [webhook] allow list decides"
                .to_string();
        ApiError::plain(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429: this source failed authentication too often; it may try again after
    /// `retry_after`.
    pub fn locked_out(retry_after: std::time::Duration) -> ApiError {
        let seconds = retry_after.as_secs().max(1);
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "locked_out",
            message: format!(
                "too many failed authentications from this source; try again in {seconds} s"
            ),
            field: None,
            retry_after_s: Some(seconds),
        }
    }

    /// 422: well-formed but invalid.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid",
            message: message.into(),
            field: Some(field),
            retry_after_s: None,
        }
    }

    /// 503: not now; resend after [`RETRY_AFTER_S`].
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
            field: None,
            retry_after_s: Some(RETRY_AFTER_S),
        }
    }

    /// 500: something failed that the client cannot fix; details are in the log under the
    /// request id.
    pub fn internal() -> ApiError {
        let message =
            "internal error; the instance log has details under this request's x-request-id"
                .to_string();
        ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 404.
    pub fn not_found() -> ApiError {
        let message = "no such endpoint; see the README's HTTP API".to_string();
        ApiError::plain(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 404 from `GET /signals/{fingerprint}`.
    pub fn not_found_signal() -> ApiError {
        let message = "no alert with this fingerprint is queued here or recorded in the signal log"
            .to_string();
        ApiError::plain(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405.
    pub fn method_not_allowed() -> ApiError {
        let message = "method not allowed on this endpoint".to_string();
        ApiError::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
