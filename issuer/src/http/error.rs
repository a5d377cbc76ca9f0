//! RFC 6749 §5.2 error responses, shared by the token and introspection
//! endpoints.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    /// RFC 8707 §2.
    InvalidTarget,
    /// Internal failures only (RFC 6749 §4.1.2.1; 500).
    ServerError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::ServerError => "server_error",
        }
    }
}

/// An OAuth error response. Descriptions are fixed texts or name request
/// parameters; they never echo a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: Cow<'static, str>,
    /// Seconds to put in `Retry-After`.
    pub retry_after: Option<u64>,
    /// A status other than the code's usual one (429, 503).
    pub status_override: Option<StatusCode>,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<Cow<'static, str>>) -> Self {
        OAuthError {
            code,
            description: description.into(),
            retry_after: None,
            status_override: None,
        }
    }

    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }

    /// The one answer for an unknown client, a wrong secret, an expired
    /// secret or a bad assertion, so they cannot be told apart.
    pub fn authentication_failed() -> Self {
        Self::new(ErrorCode::InvalidClient, "client authentication failed")
    }

    /// A failed authentication from a source address that has used up its
    /// failure budget: 429 with `Retry-After`. The code is RFC 6749 §5.2's
    /// `invalid_client` (the authentication did fail; `temporarily_unavailable`
    /// is an authorization-endpoint code that token clients need not know),
    /// and the description says why and when to retry. Only failed
    /// authentications get this: correct credentials are never refused.
    pub fn rate_limited(retry_after: u64) -> Self {
        let retry_after = retry_after.max(1);
        OAuthError {
            code: ErrorCode::InvalidClient,
            description: format!(
                "client authentication failed, and too many failed client authentications came from this address; retry after {retry_after} s"
            )
            .into(),
            retry_after: Some(retry_after),
            status_override: Some(StatusCode::TOO_MANY_REQUESTS),
        }
    }

    /// The client authenticated but its signing key has no active key yet
    /// (a new `SigningKey`, or a key Secret not synced): 503 with
    /// `Retry-After`, code `unauthorized_client` (RFC 6749 §5.2: this
    /// client cannot be issued a token now; no §5.2 code means "server
    /// busy", and the 503 status tells generic HTTP clients to retry).
    pub fn no_signing_key() -> Self {
        OAuthError {
            code: ErrorCode::UnauthorizedClient,
            description: "this client's signing key has no active key yet; retry after 10 s".into(),
            retry_after: Some(10),
            status_override: Some(StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    pub fn status(&self) -> StatusCode {
        if let Some(status) = self.status_override {
            return status;
        }
        match self.code {
            ErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON body `{error, error_description}`.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        })
        .to_string()
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.description)
    }
}

impl std::error::Error for OAuthError {}

/// A JSON answer that no cache may keep (RFC 6749 §5.1, RFC 7662 §2.2):
/// every token, introspection and error response of the API.
pub fn no_store_json(status: StatusCode, body: String) -> Response {
    // Built directly: `(status, body).into_response()` would first set a
    // text/plain content type for this to overwrite.
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = no_store_json(self.status(), self.body());
        let headers = response.headers_mut();
        if self.status() == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2 requires the challenge when Basic was used, and
            // RFC 9110 §15.5.2 requires one on every 401; Basic is the
            // scheme this endpoint understands.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sigil\", charset=\"UTF-8\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
