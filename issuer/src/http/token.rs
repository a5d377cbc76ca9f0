//! `POST /oauth2/token` (RFC 6749 §4.4 client credentials).
//!
//! Each RFC rule is a plain function from data to data (parse the form,
//! pick the one client authentication method, check a secret, check an
//! assertion, narrow scope and audience, build and sign the claims) so it
//! can be tested without HTTP; [`token_endpoint`] strings them together.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::client_auth::authenticate_form_request;
use super::form::{TokenForm, read_form_request};
use crate::audiences::TokenShape;
use crate::http::error::{ErrorCode, OAuthError, no_store_json};
use crate::index::{ActiveKey, ClientEntry, TokenTyp};
use crate::logsafe::cap;
use crate::state::App;
use sigil_core::keys::KeyError;

pub const CLIENT_CREDENTIALS: &str = "client_credentials";
/// RFC 6749 §4.4.2: `grant_type=client_credentials` is required.
pub fn check_grant_type(form: &TokenForm) -> Result<(), OAuthError> {
    match form.grant_type.as_deref() {
        None => Err(OAuthError::invalid_request("grant_type is required")),
        Some(CLIENT_CREDENTIALS) => Ok(()),
        Some(_) => Err(OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            "only grant_type=client_credentials is supported",
        )),
    }
}

// ------------------------------------------------------- what is granted

/// RFC 6749 §3.3: the requested scopes must all be allowed; no `scope`
/// means every allowed scope. Order follows the request, duplicates drop.
pub fn narrow_scopes<'a>(
    requested: Option<&str>,
    allowed: &'a [String],
) -> Result<Vec<&'a str>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(allowed.iter().map(String::as_str).collect());
    };
    let mut granted: Vec<&'a str> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        let Some(known) = allowed.iter().find(|a| a.as_str() == scope) else {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "a requested scope is not allowed for this client",
            ));
        };
        if !granted.contains(&known.as_str()) {
            granted.push(known);
        }
    }
    Ok(granted)
}

/// RFC 8707 / `audience`: every requested audience (from `audience` and
/// `resource`) must be allowed; none requested means all allowed.
pub fn narrow_audiences<'a>(
    audience: &[String],
    resource: &[String],
    allowed: &'a [String],
) -> Result<Vec<&'a str>, OAuthError> {
    if audience.is_empty() && resource.is_empty() {
        return Ok(allowed.iter().map(String::as_str).collect());
    }
    let mut granted: Vec<&'a str> = Vec::new();
    for wanted in audience.iter().chain(resource) {
        let Some(known) = allowed.iter().find(|a| *a == wanted) else {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "a requested audience or resource is not allowed for this client",
            ));
        };
        if !granted.contains(&known.as_str()) {
            granted.push(known);
        }
    }
    Ok(granted)
}

#[derive(Serialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(&'a str),
    Many(&'a [&'a str]),
}

#[derive(Serialize)]
struct AccessTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<Audience<'a>>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scp: Option<&'a [&'a str]>,
}

/// RFC 9068 §2.2 claims as JSON: `aud` is a string for one audience and an
/// array for several; `additionalClaims` are appended.
pub fn access_token_claims(
    issuer: &str,
    client: &ClientEntry,
    scopes: &[&str],
    audiences: &[&str],
    shape: &TokenShape,
    now: i64,
    jti: &str,
) -> String {
    let scope = scopes.join(" ");
    let claims = AccessTokenClaims {
        iss: issuer,
        sub: &client.client_id,
        client_id: &client.client_id,
        aud: match audiences {
            [] => None,
            [one] => Some(Audience::One(one)),
            many => Some(Audience::Many(many)),
        },
        exp: now + shape.lifetime.as_secs() as i64,
        iat: now,
        nbf: now,
        jti,
        scope: shape.scope_claim.then_some(scope.as_str()),
        scp: shape.scp_claim.then_some(scopes),
    };
    // Serializing borrowed strings and integers cannot fail.
    let mut json = serde_json::to_string(&claims).unwrap_or_else(|_| "{}".into());
    if !client.additional_claims_json.is_empty() {
        json.pop();
        json.push(',');
        json.push_str(&client.additional_claims_json);
        json.push('}');
    }
    json
}

/// 128 random bits, base64url.
pub fn new_jti() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// Compact JWS with the ring's pre-encoded header and pre-parsed key.
pub fn sign_jwt(active: &ActiveKey, typ: TokenTyp, claims_json: &str) -> Result<String, KeyError> {
    let header = active.encoded_header(typ);
    let mut token = String::with_capacity(header.len() + claims_json.len() * 4 / 3 + 400);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims_json.as_bytes(), &mut token);
    let signature = active.key.sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

/// RFC 6749 §5.1 success body.
pub fn token_response_body(access_token: &str, expires_in: u64, scope: &str) -> String {
    serde_json::to_string(&TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        scope,
    })
    .unwrap_or_default()
}

// ------------------------------------------------------------ the handler

pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Issues a token for an authenticated client.
pub fn issue(
    app: &App,
    client: &ClientEntry,
    form: &TokenForm,
    now: i64,
) -> Result<(String, u64, String), OAuthError> {
    if client.disabled {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "this client is disabled",
        ));
    }
    let scopes = narrow_scopes(form.scope.as_deref(), &client.scopes)?;
    let audiences = narrow_audiences(&form.audience, &form.resource, &client.audiences)?;
    if audiences.is_empty() {
        // RFC 9068 §2.2: an access token names its audience.
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            "this client is granted no audience: add spec.audiences, and a grant from the audience's OAuthResource",
        ));
    }
    let ring = app.store.ring(client.signing_key.as_deref());
    let Some(active) = ring.as_ref().and_then(|r| r.active.clone()) else {
        tracing::error!(
            client_id = %cap(&client.client_id),
            signing_key = client.signing_key.as_deref().unwrap_or(app.store.default_signing_key()),
            "no active signing key for this client"
        );
        return Err(OAuthError::no_signing_key());
    };
    // Each audience's OAuthResource says how its tokens look.
    let shape = app
        .store
        .audiences()
        .shape(&audiences, app.token_typ, client.ttl)
        .map_err(|message| OAuthError::new(ErrorCode::InvalidTarget, message))?;
    let jti = new_jti();
    let claims = access_token_claims(&app.issuer, client, &scopes, &audiences, &shape, now, &jti);
    let token = sign_jwt(&active, shape.typ, &claims).map_err(|error| {
        tracing::error!(%error, kid = %active.kid, "signing failed");
        OAuthError::new(ErrorCode::ServerError, "signing failed")
    })?;
    Ok((token, shape.lifetime.as_secs(), scopes.join(" ")))
}

/// Target of the per-request log line (`client_id`, `result`, `status`,
/// `latency_ms`), at `debug`: enable it with
/// `RUST_LOG=info,sigil_issuer::request=debug`. Off by default, because at
/// thousands of tokens a second a line each is the cost of the request
/// itself; failed authentications are logged at `info` anyway, within
/// their own budget.
pub const REQUEST_LOG_TARGET: &str = "sigil_issuer::request";

/// The client-credentials grant (RFC 6749 §4.4).
#[utoipa::path(
    post,
    path = "/oauth2/token",
    request_body(content = super::openapi::TokenRequest, content_type = "application/x-www-form-urlencoded"),
    security((), ("client_secret_basic" = [])),
    responses(
        (status = 200, description = "An access token", body = super::openapi::TokenResponse),
        (status = 400, description = "A malformed request, or a grant this client does not hold", body = super::openapi::ErrorResponse),
        (status = 401, description = "Client authentication failed", body = super::openapi::ErrorResponse),
        (status = 408, description = "The body was not sent in time"),
        (status = 413, description = "The body is larger than 64 KiB", body = super::openapi::ErrorResponse),
        (status = 429, description = "Too many failed authentications from this address (Retry-After)", body = super::openapi::ErrorResponse),
        (status = 503, description = "Not ready (no active signing key) or over capacity", body = super::openapi::ErrorResponse),
    )
)]
pub async fn token_endpoint(State(app): State<Arc<App>>, request: Request) -> Response {
    let started = Instant::now();
    // Only an authenticated client's id goes into the request line: a
    // claimed one is request input, logged (capped and budgeted) by the
    // failed-authentication line.
    let mut authenticated: Option<Arc<ClientEntry>> = None;
    let result = async {
        let request = read_form_request(request).await?;
        check_grant_type(&request.form)?;
        let now = unix_now();
        let client = authenticate_form_request(&app, &request, now).await?;
        authenticated = Some(client.clone());
        let (token, expires_in, scope) = issue(&app, &client, &request.form, now)?;
        Ok::<_, OAuthError>(token_response_body(&token, expires_in, &scope))
    }
    .await;
    let (response, result) = match result {
        Ok(body) => (no_store_json(StatusCode::OK, body), "success"),
        Err(error) => {
            let result = if error.status() == StatusCode::TOO_MANY_REQUESTS {
                "rate_limited"
            } else {
                error.code.as_str()
            };
            (error.into_response(), result)
        }
    };
    app.metrics.count_token(result);
    let latency = started.elapsed();
    app.metrics.token_latency.observe(latency.as_secs_f64());
    tracing::debug!(
        target: REQUEST_LOG_TARGET,
        client_id = %cap(authenticated.as_ref().map_or("-", |c| c.client_id.as_str())),
        result,
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "token request"
    );
    response
}
