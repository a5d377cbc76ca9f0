//! Reading a form POST (RFC 6749 §3.1/§3.2): content type, size, the
//! parameters Sigil reads, the source address. Shared by the token and
//! introspection endpoints.

use std::net::IpAddr;

use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};

use crate::http::error::OAuthError;

/// Form bodies larger than this are refused.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
// ---------------------------------------------------------------- the form

/// The parameters of a token (or introspection) request that Sigil reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub scope: Option<String>,
    /// `audience` values, each split on spaces.
    pub audience: Vec<String>,
    /// RFC 8707 `resource` values.
    pub resource: Vec<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    /// RFC 7662 `token`.
    pub token: Option<String>,
    pub token_type_hint: Option<String>,
}

impl TokenForm {
    /// Whether `client_secret` was sent (even empty values are omitted per
    /// RFC 6749 §3.1, so this means a non-empty one).
    pub fn has_body_secret(&self) -> bool {
        self.client_secret.is_some()
    }

    pub fn has_assertion(&self) -> bool {
        self.client_assertion.is_some() || self.client_assertion_type.is_some()
    }
}

/// True for `application/x-www-form-urlencoded` (parameters allowed).
pub fn is_form_content_type(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Parses the form. RFC 6749 §3.1: empty parameters count as omitted and
/// none may appear twice (except `audience`/`resource`, RFC 8707 §2);
/// unknown parameters are ignored.
pub fn parse_form(body: &[u8]) -> Result<TokenForm, OAuthError> {
    let mut form = TokenForm::default();
    for (name, value) in form_urlencoded::parse(body) {
        if value.is_empty() {
            continue;
        }
        let single = match name.as_ref() {
            "grant_type" => &mut form.grant_type,
            "scope" => &mut form.scope,
            "client_id" => &mut form.client_id,
            "client_secret" => &mut form.client_secret,
            "client_assertion_type" => &mut form.client_assertion_type,
            "client_assertion" => &mut form.client_assertion,
            "token" => &mut form.token,
            "token_type_hint" => &mut form.token_type_hint,
            "audience" => {
                form.audience.extend(
                    value
                        .split(' ')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned),
                );
                continue;
            }
            "resource" => {
                form.resource.push(value.into_owned());
                continue;
            }
            _ => continue,
        };
        if single.is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter {} is repeated",
                known_parameter_name(&name)
            )));
        }
        *single = Some(value.into_owned());
    }
    Ok(form)
}

/// Every parameter [`parse_form`] reads (the OpenAPI document lists each).
pub const PARAMETERS: [&str; 10] = [
    "grant_type",
    "scope",
    "audience",
    "resource",
    "client_id",
    "client_secret",
    "client_assertion_type",
    "client_assertion",
    "token",
    "token_type_hint",
];

/// A `&'static str` for a parameter we matched, so error texts never copy
/// request bytes.
fn known_parameter_name(name: &str) -> &'static str {
    PARAMETERS
        .iter()
        .find(|known| **known == name)
        .copied()
        .unwrap_or("parameter")
}

/// What the handlers need from the HTTP request.
pub struct FormRequest {
    pub source: Option<IpAddr>,
    pub authorization: Option<HeaderValue>,
    pub form: TokenForm,
}

/// 413 for a body over [`MAX_FORM_BYTES`].
fn body_too_large() -> OAuthError {
    OAuthError {
        status_override: Some(StatusCode::PAYLOAD_TOO_LARGE),
        ..OAuthError::invalid_request("the request body is larger than 64 KiB")
    }
}

/// Reads a form POST: content type, size, parameters, source address. A
/// declared `Content-Length` over the limit gets 413 at once, without
/// waiting for a body that may never come (the body reader alone counts
/// bytes as they arrive, so it would wait for the request timeout); a
/// chunked body gets 413 when it passes the limit.
pub async fn read_form_request(request: Request) -> Result<FormRequest, OAuthError> {
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    if !is_form_content_type(request.headers().get(header::CONTENT_TYPE)) {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    // hyper sets the exact size hint from Content-Length.
    if request.body().size_hint().lower() > MAX_FORM_BYTES as u64 {
        return Err(body_too_large());
    }
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let body = axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
        .await
        .map_err(|error| {
            let over = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            if over {
                body_too_large()
            } else {
                OAuthError::invalid_request("the request body is unreadable")
            }
        })?;
    Ok(FormRequest {
        source,
        authorization,
        form: parse_form(&body)?,
    })
}
