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

/// Appends `value` as a JSON string. Almost every string a token carries
/// (issuer URL, client id, audiences, scopes, jti, the token itself) needs
/// no escaping, so those are copied as they are; anything else goes
/// through serde_json. This is the token path's one JSON string writer:
/// serde's escaper cost more per token than everything else outside the
/// signature and the socket.
pub fn push_json_str(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    push_json_str_contents(out, value);
    out.push('"');
}

/// [`push_json_str`] without the quotes.
fn push_json_str_contents(out: &mut String, value: &str) {
    if !needs_json_escape(value.as_bytes()) {
        out.push_str(value);
    } else {
        // Serializing a &str cannot fail; its output starts and ends with '"'.
        let quoted = serde_json::to_string(value).unwrap_or_default();
        out.push_str(
            quoted
                .get(1..quoted.len().saturating_sub(1))
                .unwrap_or_default(),
        );
    }
}

/// Whether any byte needs escaping in a JSON string. Branch-free within a
/// chunk so the compiler vectorises it: a token is ~600 bytes and a
/// byte-at-a-time check cost 8,000 instructions a token.
fn needs_json_escape(bytes: &[u8]) -> bool {
    bytes.chunks(32).any(|chunk| {
        chunk.iter().fold(false, |bad, &b| {
            bad | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    })
}

fn push_json_str_array(out: &mut String, values: &[&str]) {
    out.push('[');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, value);
    }
    out.push(']');
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
    let mut json = String::with_capacity(256 + client.additional_claims_json.len());
    json.push_str("{\"iss\":");
    push_json_str(&mut json, issuer);
    json.push_str(",\"sub\":");
    push_json_str(&mut json, &client.client_id);
    json.push_str(",\"client_id\":");
    push_json_str(&mut json, &client.client_id);
    match audiences {
        [] => {}
        [one] => {
            json.push_str(",\"aud\":");
            push_json_str(&mut json, one);
        }
        many => {
            json.push_str(",\"aud\":");
            push_json_str_array(&mut json, many);
        }
    }
    let exp = now + shape.lifetime.as_secs() as i64;
    let mut digits = itoa::Buffer::new();
    json.push_str(",\"exp\":");
    json.push_str(digits.format(exp));
    json.push_str(",\"iat\":");
    let now = digits.format(now);
    json.push_str(now);
    json.push_str(",\"nbf\":");
    json.push_str(now);
    json.push_str(",\"jti\":");
    push_json_str(&mut json, jti);
    if shape.scope_claim {
        // The scopes joined by spaces, as one string.
        json.push_str(",\"scope\":\"");
        for (i, scope) in scopes.iter().enumerate() {
            if i > 0 {
                json.push(' ');
            }
            push_json_str_contents(&mut json, scope);
        }
        json.push('"');
    }
    if shape.scp_claim {
        json.push_str(",\"scp\":");
        push_json_str_array(&mut json, scopes);
    }
    if !client.additional_claims_json.is_empty() {
        json.push(',');
        json.push_str(&client.additional_claims_json);
    }
    json.push('}');
    json
}

/// 128 random bits, base64url.
pub fn new_jti() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// A compact JWS as [`sign_jwt`] makes it: base64url segments joined by
/// dots, so it goes into JSON as it is, with nothing to escape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactJws(String);

impl CompactJws {
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Compact JWS with the ring's pre-encoded header and pre-parsed key.
pub fn sign_jwt(
    active: &ActiveKey,
    typ: TokenTyp,
    claims_json: &str,
) -> Result<CompactJws, KeyError> {
    let header = active.encoded_header(typ);
    let mut token = String::with_capacity(header.len() + claims_json.len() * 4 / 3 + 400);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims_json.as_bytes(), &mut token);
    let signature = active.key.sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(CompactJws(token))
}

/// RFC 6749 §5.1 success body.
pub fn token_response_body(access_token: &CompactJws, expires_in: u64, scope: &str) -> String {
    let mut body = String::with_capacity(access_token.0.len() + scope.len() + 80);
    body.push_str("{\"access_token\":\"");
    body.push_str(&access_token.0);
    body.push_str("\",\"token_type\":\"Bearer\",\"expires_in\":");
    body.push_str(itoa::Buffer::new().format(expires_in));
    body.push_str(",\"scope\":");
    push_json_str(&mut body, scope);
    body.push('}');
    body
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
) -> Result<(CompactJws, u64, String), OAuthError> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::index::ClientLimits;

    /// Strings that need escaping, and ones that do not.
    const AWKWARD: &[&str] = &[
        "plain",
        "",
        "say \"hi\"",
        "back\\slash",
        "tab\there",
        "nul\u{0}byte",
        "\u{1f}",
        "ünïcode ✓ 🔑",
        "</script>",
    ];

    #[test]
    fn json_strings_parse_back_to_what_was_written() {
        for value in AWKWARD {
            let mut out = String::new();
            push_json_str(&mut out, value);
            let parsed: String = serde_json::from_str(&out).expect(&out);
            assert_eq!(parsed, *value);
        }
    }

    fn client(client_id: &str, additional_claims_json: &str) -> ClientEntry {
        let oac: sigil_crds::OAuthClient = serde_json::from_value(json!({
            "apiVersion": "sigil.dev/v1alpha1",
            "kind": "OAuthClient",
            "metadata": {"name": "task", "namespace": "team"},
            "spec": {"scopes": ["event.view"], "audiences": ["event"]},
        }))
        .expect("manifest");
        let mut entry =
            ClientEntry::from_oauth_client(&oac, &ClientLimits::default()).expect("entry");
        entry.client_id = client_id.to_owned();
        entry.additional_claims_json = additional_claims_json.to_owned();
        entry
    }

    fn shape(scope_claim: bool, scp_claim: bool) -> TokenShape {
        TokenShape {
            typ: TokenTyp::AtJwt,
            lifetime: Duration::from_secs(300),
            scope_claim,
            scp_claim,
        }
    }

    #[test]
    fn claims_are_the_rfc_9068_members_whatever_the_strings_hold() {
        for awkward in AWKWARD {
            let entry = client(awkward, "");
            let json = access_token_claims(
                awkward,
                &entry,
                &[awkward, "b"],
                &[awkward],
                &shape(true, true),
                1_000,
                awkward,
            );
            let claims: Value = serde_json::from_str(&json).expect(&json);
            assert_eq!(
                claims,
                json!({
                    "iss": awkward, "sub": awkward, "client_id": awkward, "aud": awkward,
                    "exp": 1_300, "iat": 1_000, "nbf": 1_000, "jti": awkward,
                    "scope": format!("{awkward} b"), "scp": [awkward, "b"],
                })
            );
        }
    }

    #[test]
    fn aud_is_a_string_for_one_an_array_for_several_and_absent_for_none() {
        let entry = client("team.task", "");
        let claims = |audiences: &[&str]| -> Value {
            let json = access_token_claims(
                "https://issuer",
                &entry,
                &["a"],
                audiences,
                &shape(true, false),
                0,
                "j",
            );
            serde_json::from_str(&json).expect("json")
        };
        assert_eq!(claims(&["x"])["aud"], json!("x"));
        assert_eq!(claims(&["x", "y"])["aud"], json!(["x", "y"]));
        assert!(claims(&[]).get("aud").is_none());
    }

    #[test]
    fn scope_claims_follow_the_shape_and_additional_claims_are_appended() {
        let entry = client("team.task", r#""stt":1,"tenant":"a""#);
        let claims = |shape: TokenShape, scopes: &[&str]| -> Value {
            let json =
                access_token_claims("https://issuer", &entry, scopes, &["x"], &shape, 0, "j");
            serde_json::from_str(&json).expect("json")
        };
        let neither = claims(shape(false, false), &["a", "b"]);
        assert!(neither.get("scope").is_none() && neither.get("scp").is_none());
        assert_eq!(neither["stt"], 1);
        assert_eq!(neither["tenant"], "a");
        let both = claims(shape(true, true), &[]);
        assert_eq!(both["scope"], "");
        assert_eq!(both["scp"], json!([]));
    }

    #[test]
    fn the_token_response_is_rfc_6749_json() {
        for awkward in AWKWARD {
            let body = token_response_body(&CompactJws("h.p.s".to_owned()), 300, awkward);
            let parsed: Value = serde_json::from_str(&body).expect(&body);
            assert_eq!(
                parsed,
                json!({"access_token": "h.p.s", "token_type": "Bearer", "expires_in": 300, "scope": awkward})
            );
        }
    }
}
