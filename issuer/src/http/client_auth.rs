//! Client authentication (RFC 6749 §2.3, RFC 7523 §2.2/§3), shared by the
//! token and introspection endpoints: exactly one method per request,
//! secrets checked in constant time, assertions checked and their `jti`
//! remembered, failures rate-limited. Unknown clients, wrong secrets and bad
//! assertions all give the same answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::Digest;
use sigil_crds::AuthMethod;
use subtle::{Choice, ConstantTimeEq};

use super::form::{FormRequest, TokenForm};
use crate::http::error::{ErrorCode, OAuthError};
use crate::index::{ClientEntry, Store};
use crate::state::App;

/// RFC 7523 §2.2 `client_assertion_type`.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew tolerated on assertion `exp`/`nbf`/`iat`.
const ASSERTION_LEEWAY_SECS: u64 = 60;
/// Assertions valid for longer than this are refused: their `jti` would
/// have to be remembered that long.
const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;

// ------------------------------------------------------ client credentials

/// The client authentication the request carries (exactly one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `client_secret_basic` or `client_secret_post`.
    Secret {
        method: AuthMethod,
        client_id: String,
        secret: String,
    },
    /// `private_key_jwt` (RFC 7523 §2.2).
    Assertion {
        assertion: String,
        client_id: Option<String>,
    },
}

impl Credentials {
    /// The client id the caller claims, for rate limiting and lookups. For
    /// an assertion it is read from the unverified `sub` (or `client_id`).
    pub fn claimed_client_id(&self) -> Option<String> {
        match self {
            Credentials::Secret { client_id, .. } => Some(client_id.clone()),
            Credentials::Assertion {
                assertion,
                client_id,
            } => client_id
                .clone()
                .or_else(|| unverified_assertion_subject(assertion)),
        }
    }
}

/// RFC 6749 §2.3.1: Basic credentials are the form-urlencoded client id and
/// secret joined by `:`, then base64. Either encoding style decodes here,
/// because ids and secrets use only unreserved characters (DESIGN.md §6).
pub fn parse_basic(value: &[u8]) -> Result<(String, String), OAuthError> {
    let text = std::str::from_utf8(value).map_err(|_| OAuthError::authentication_failed())?;
    let (scheme, encoded) = text
        .trim()
        .split_once(' ')
        .ok_or_else(OAuthError::authentication_failed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_request(
            "the Authorization header must use the Basic scheme",
        ));
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| OAuthError::authentication_failed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| OAuthError::authentication_failed())?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(OAuthError::authentication_failed)?;
    let id = form_decode(id);
    let secret = form_decode(secret);
    if id.is_empty() || secret.is_empty() {
        return Err(OAuthError::authentication_failed());
    }
    Ok((id, secret))
}

fn form_decode(part: &str) -> String {
    form_urlencoded::parse(format!("x={part}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// RFC 6749 §2.3: the client must use exactly one authentication method.
pub fn select_credentials(
    authorization: Option<&[u8]>,
    form: &TokenForm,
) -> Result<Credentials, OAuthError> {
    let basic = authorization.map(parse_basic).transpose()?;
    let methods = usize::from(basic.is_some())
        + usize::from(form.has_body_secret())
        + usize::from(form.has_assertion());
    if methods > 1 {
        return Err(OAuthError::invalid_request(
            "use exactly one client authentication method",
        ));
    }
    if let Some((client_id, secret)) = basic {
        // Some clients repeat client_id in the body; it must agree.
        if form.client_id.as_ref().is_some_and(|id| *id != client_id) {
            return Err(OAuthError::invalid_request(
                "client_id in the body differs from the Basic credentials",
            ));
        }
        return Ok(Credentials::Secret {
            method: AuthMethod::ClientSecretBasic,
            client_id,
            secret,
        });
    }
    if let Some(secret) = &form.client_secret {
        let Some(client_id) = &form.client_id else {
            return Err(OAuthError::authentication_failed());
        };
        return Ok(Credentials::Secret {
            method: AuthMethod::ClientSecretPost,
            client_id: client_id.clone(),
            secret: secret.clone(),
        });
    }
    if form.has_assertion() {
        if form.client_assertion_type.as_deref() != Some(JWT_BEARER_ASSERTION) {
            return Err(OAuthError::invalid_request(
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let Some(assertion) = &form.client_assertion else {
            return Err(OAuthError::invalid_request("client_assertion is required"));
        };
        return Ok(Credentials::Assertion {
            assertion: assertion.clone(),
            client_id: form.client_id.clone(),
        });
    }
    Err(OAuthError::new(
        ErrorCode::InvalidClient,
        "client authentication is required",
    ))
}

/// Compares the secret's SHA-256 with every live verifier in constant time.
/// For an unknown client it compares against a dummy so the work, and so
/// the timing, is the same.
pub fn verify_secret(client: Option<&ClientEntry>, secret: &str, now: i64) -> bool {
    const DUMMY: [u8; 32] = [0x5a; 32];
    let digest: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
    let mut matched = Choice::from(0);
    match client {
        Some(client) if !client.verifiers.is_empty() => {
            for verifier in &client.verifiers {
                let live = Choice::from(u8::from(verifier.expires_at.is_none_or(|t| now < t)));
                matched |= digest.ct_eq(&verifier.digest) & live;
            }
        }
        _ => {
            // Same work, result discarded.
            let _ = digest.ct_eq(&DUMMY);
        }
    }
    bool::from(matched)
}

/// Claims of a client assertion (RFC 7523 §3).
#[derive(Deserialize)]
struct AssertionClaims {
    sub: Option<String>,
    exp: Option<i64>,
    jti: Option<String>,
}

fn unverified_assertion_subject(assertion: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Subject {
        sub: Option<String>,
        iss: Option<String>,
    }
    let subject: Subject = jsonwebtoken::dangerous::insecure_decode_claims(assertion).ok()?;
    subject.sub.or(subject.iss)
}

/// Remembers assertion `jti`s until they expire (RFC 7523 §3 item 7).
#[derive(Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<(String, String), i64>>,
}

/// More remembered assertions than this means abuse; refuse new ones.
const MAX_REMEMBERED_ASSERTIONS: usize = 200_000;

impl ReplayCache {
    /// Records `(client, jti)` until `expires_at`; false if it was seen.
    pub fn first_use(&self, client_id: &str, jti: &str, expires_at: i64, now: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED_ASSERTIONS / 2 {
            seen.retain(|_, exp| *exp + ASSERTION_LEEWAY_SECS as i64 >= now);
            if seen.len() >= MAX_REMEMBERED_ASSERTIONS {
                return false;
            }
        }
        let key = (client_id.to_owned(), jti.to_owned());
        match seen.get(&key) {
            Some(exp) if *exp + ASSERTION_LEEWAY_SECS as i64 >= now => false,
            _ => {
                seen.insert(key, expires_at);
                true
            }
        }
    }
}

/// Where assertions must be addressed: the token endpoint URL or the issuer
/// identifier (RFC 7523 §3 item 3).
pub struct AssertionAudience<'a> {
    pub token_endpoint: &'a str,
    pub issuer: &'a str,
    /// The endpoint the assertion is presented to (the introspection URL
    /// is accepted there too).
    pub this_endpoint: &'a str,
}

/// RFC 7523 §3: checks a `private_key_jwt` assertion for `client`:
/// signature by one of its keys, `iss` = `sub` = client id, `aud` names
/// this server, unexpired, `jti` present and not seen before.
pub fn verify_assertion(
    client: &ClientEntry,
    assertion: &str,
    audience: &AssertionAudience<'_>,
    replay: &ReplayCache,
    now: i64,
) -> Result<(), OAuthError> {
    let failed = OAuthError::authentication_failed;
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| failed())?;
    use jsonwebtoken::Algorithm as A;
    if matches!(header.alg, A::HS256 | A::HS384 | A::HS512) {
        return Err(failed());
    }
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.leeway = ASSERTION_LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[client.client_id.as_str()]);
    validation.sub = Some(client.client_id.clone());
    validation.set_audience(&[
        audience.token_endpoint,
        audience.issuer,
        audience.this_endpoint,
    ]);
    let candidates = client.jwks.iter().filter(|key| {
        header
            .kid
            .as_ref()
            .is_none_or(|kid| key.kid.as_ref() == Some(kid))
            && key.algorithm.is_none_or(|alg| alg == header.alg)
    });
    let mut verified = None;
    for key in candidates {
        if let Ok(data) = jsonwebtoken::decode::<AssertionClaims>(assertion, &key.key, &validation)
        {
            verified = Some(data.claims);
            break;
        }
    }
    let claims = verified.ok_or_else(failed)?;
    if claims.sub.as_deref() != Some(client.client_id.as_str()) {
        return Err(failed());
    }
    let exp = claims.exp.ok_or_else(failed)?;
    if exp - now > MAX_ASSERTION_LIFETIME_SECS {
        return Err(OAuthError::new(
            ErrorCode::InvalidClient,
            "client assertion lifetime is too long (at most 1h)",
        ));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty())
        .ok_or_else(|| OAuthError::new(ErrorCode::InvalidClient, "client assertion has no jti"))?;
    if !replay.first_use(&client.client_id, &jti, exp, now) {
        return Err(OAuthError::new(
            ErrorCode::InvalidClient,
            "client assertion was already used",
        ));
    }
    Ok(())
}

/// Authenticates the caller. Unknown client ids, wrong or expired secrets
/// and bad assertions all give the same error.
pub fn authenticate(
    store: &Store,
    credentials: &Credentials,
    audience: &AssertionAudience<'_>,
    replay: &ReplayCache,
    now: i64,
) -> Result<Arc<ClientEntry>, OAuthError> {
    match credentials {
        Credentials::Secret {
            method,
            client_id,
            secret,
        } => {
            let client = store.client(client_id);
            if !verify_secret(client.as_deref(), secret, now) {
                return Err(OAuthError::authentication_failed());
            }
            let client = client.ok_or_else(OAuthError::authentication_failed)?;
            if !client.auth_methods.allows(*method) {
                // Only the holder of the right secret gets here, so the
                // precise reason leaks nothing.
                return Err(OAuthError::new(
                    ErrorCode::InvalidClient,
                    format!("this client does not accept {}", method.as_str()),
                ));
            }
            Ok(client)
        }
        Credentials::Assertion { assertion, .. } => {
            let client_id = credentials
                .claimed_client_id()
                .ok_or_else(OAuthError::authentication_failed)?;
            let client = store
                .client(&client_id)
                .filter(|c| c.auth_methods.private_key_jwt)
                .ok_or_else(OAuthError::authentication_failed)?;
            verify_assertion(&client, assertion, audience, replay, now)?;
            Ok(client)
        }
    }
}

/// Authenticates a form request with rate limiting: refuses blocked
/// sources/clients before looking at credentials, counts failures.
pub fn authenticate_request(
    app: &App,
    request: &FormRequest,
    this_endpoint: &str,
    now: i64,
) -> Result<Arc<ClientEntry>, OAuthError> {
    if let Err(retry) = app.limiter.check(request.source, None) {
        return Err(OAuthError::rate_limited(retry));
    }
    let credentials = select_credentials(
        request.authorization.as_ref().map(HeaderValue::as_bytes),
        &request.form,
    );
    let credentials = match credentials {
        Ok(credentials) => credentials,
        Err(error) => {
            if error.code == ErrorCode::InvalidClient
                && let Some(retry) = app.limiter.record_failure(request.source, None)
            {
                return Err(OAuthError::rate_limited(retry));
            }
            return Err(error);
        }
    };
    let claimed = credentials.claimed_client_id();
    if let Err(retry) = app.limiter.check(request.source, claimed.as_deref()) {
        return Err(OAuthError::rate_limited(retry));
    }
    let audience = AssertionAudience {
        token_endpoint: &app.token_endpoint,
        issuer: &app.issuer,
        this_endpoint,
    };
    authenticate(&app.store, &credentials, &audience, &app.replay, now).map_err(|error| {
        tracing::info!(
            client_id = claimed.as_deref().unwrap_or("-"),
            source = ?request.source,
            reason = %error.description,
            "client authentication failed"
        );
        match app
            .limiter
            .record_failure(request.source, claimed.as_deref())
        {
            Some(retry) => OAuthError::rate_limited(retry),
            None => error,
        }
    })
}
