//! `POST /oauth2/introspect` (RFC 7662), authenticated like the token
//! endpoint. A token is active only if a currently published key signed
//! it, it is unexpired, and its client still exists and is not disabled;
//! and it is shown only to the client it was issued to or to a client of
//! the namespace whose OAuthResource holds one of its audiences (RFC 7662
//! §4: the server decides who may learn about a token). Anyone else gets
//! `active: false`, as for a token that does not exist.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::http::client_auth::authenticate_form_request;
use crate::http::error::{ErrorCode, OAuthError, no_store_json};
use crate::http::form::read_form_request;
use crate::http::token::unix_now;
use crate::index::Store;
use crate::metrics::ResultLabel;
use crate::state::App;

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    client_id: Option<String>,
    #[serde(default)]
    aud: Option<Audiences>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audiences {
    One(String),
    Many(Vec<String>),
}

impl Audiences {
    fn list(&self) -> Vec<&str> {
        match self {
            Audiences::One(a) => vec![a.as_str()],
            Audiences::Many(list) => list.iter().map(String::as_str).collect(),
        }
    }
}

/// Who asks: the introspecting client.
pub struct Caller<'a> {
    pub client_id: &'a str,
    pub namespace: &'a str,
}

/// The RFC 7662 §2.2 answer for `token`: `{"active": false}` unless every
/// check passes, then the token's claims plus `active` and `token_type`.
pub fn introspect_token(
    store: &Store,
    issuer: &str,
    caller: &Caller<'_>,
    token: &str,
    now: i64,
) -> serde_json::Value {
    inspect(store, issuer, caller, token, now)
        .unwrap_or_else(|| serde_json::json!({ "active": false }))
}

fn inspect(
    store: &Store,
    issuer: &str,
    caller: &Caller<'_>,
    token: &str,
    now: i64,
) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (header_b64, claims_b64, signature_b64) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).ok()?).ok()?;
    let key = store.published_key(header.kid.as_deref()?)?;
    if key.verifier.jws_alg() != header.alg {
        return None;
    }
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).ok()?;
    let signed_len = header_b64.len() + 1 + claims_b64.len();
    if !key
        .verifier
        .verify(&token.as_bytes()[..signed_len], &signature)
    {
        return None;
    }
    let claims_json = URL_SAFE_NO_PAD.decode(claims_b64).ok()?;
    let claims: Claims = serde_json::from_slice(&claims_json).ok()?;
    if claims.iss.as_deref() != Some(issuer)
        || claims.exp? <= now
        || claims.nbf.is_some_and(|nbf| nbf > now + 60)
    {
        return None;
    }
    let client = store.client(claims.client_id.as_deref()?)?;
    if client.disabled {
        return None;
    }
    let audiences = claims.aud.as_ref().map(Audiences::list).unwrap_or_default();
    if caller.client_id != client.client_id
        && !store.audiences().owns_any(caller.namespace, &audiences)
    {
        return None;
    }
    let serde_json::Value::Object(mut members) = serde_json::from_slice(&claims_json).ok()? else {
        return None;
    };
    members.insert("active".into(), true.into());
    members.insert("token_type".into(), "Bearer".into());
    Some(serde_json::Value::Object(members))
}

/// Token introspection (RFC 7662).
#[utoipa::path(
    post,
    path = "/oauth2/introspect",
    request_body(content = super::openapi::IntrospectionRequest, content_type = "application/x-www-form-urlencoded"),
    security((), ("client_secret_basic" = [])),
    responses(
        (status = 200, description = "Whether the token is active, and its claims if the caller may see them", body = super::openapi::IntrospectionResponse),
        (status = 400, description = "A malformed request", body = super::openapi::ErrorResponse),
        (status = 401, description = "Client authentication failed", body = super::openapi::ErrorResponse),
        (status = 408, description = "The body was not sent in time"),
        (status = 413, description = "The body is larger than 64 KiB", body = super::openapi::ErrorResponse),
        (status = 429, description = "Too many failed authentications from this address (Retry-After)", body = super::openapi::ErrorResponse),
        (status = 503, description = "Over capacity", body = super::openapi::ErrorResponse),
    )
)]
pub async fn introspect_endpoint(State(app): State<Arc<App>>, request: Request) -> Response {
    let result = async {
        let request = read_form_request(request).await?;
        let now = unix_now();
        let caller = authenticate_form_request(&app, &request, now).await?;
        if caller.disabled {
            // As the token endpoint: a disabled client may do nothing.
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "this client is disabled",
            ));
        }
        let token = request
            .form
            .token
            .as_deref()
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let caller = Caller {
            client_id: &caller.client_id,
            namespace: &caller.object.namespace,
        };
        Ok::<_, OAuthError>(introspect_token(
            &app.store,
            &app.issuer,
            &caller,
            token,
            now,
        ))
    }
    .await;
    match result {
        Ok(answer) => {
            let active = answer["active"] == true;
            app.metrics
                .introspection_requests
                .get_or_create(&ResultLabel {
                    result: if active { "active" } else { "inactive" },
                })
                .inc();
            no_store_json(StatusCode::OK, answer.to_string())
        }
        Err(error) => {
            app.metrics
                .introspection_requests
                .get_or_create(&ResultLabel {
                    result: error.code.as_str(),
                })
                .inc();
            error.into_response()
        }
    }
}
