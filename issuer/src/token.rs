//! `POST /oauth2/token` (RFC 6749 §4.4 client credentials).
//!
//! Each RFC rule is a plain function from data to data (parse the form,
//! pick the one client authentication method, check a secret, check an
//! assertion, narrow scope and audience, build and sign the claims) so it
//! can be tested without HTTP; [`token_endpoint`] strings them together.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use sigil_crds::AuthMethod;
use subtle::{Choice, ConstantTimeEq};

use crate::app::App;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::store::{ActiveKey, ClientEntry, Store, TokenTyp};
use sigil_core::keys::KeyError;

/// RFC 7523 §2.2 `client_assertion_type`.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
/// Form bodies larger than this are refused.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// Clock skew tolerated on assertion `exp`/`nbf`/`iat`.
const ASSERTION_LEEWAY_SECS: u64 = 60;
/// Assertions valid for longer than this are refused: their `jti` would
/// have to be remembered that long.
const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;

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
    fn has_body_secret(&self) -> bool {
        self.client_secret.is_some()
    }

    fn has_assertion(&self) -> bool {
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

/// A `&'static str` for a parameter we matched, so error texts never copy
/// request bytes.
fn known_parameter_name(name: &str) -> &'static str {
    match name {
        "grant_type" => "grant_type",
        "scope" => "scope",
        "client_id" => "client_id",
        "client_secret" => "client_secret",
        "client_assertion_type" => "client_assertion_type",
        "client_assertion" => "client_assertion",
        "token" => "token",
        "token_type_hint" => "token_type_hint",
        _ => "parameter",
    }
}

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
    scope: &'a str,
    scp: &'a [&'a str],
}

/// RFC 9068 §2.2 claims as JSON: `aud` is a string for one audience and an
/// array for several; `additionalClaims` are appended.
pub fn access_token_claims(
    issuer: &str,
    client: &ClientEntry,
    scopes: &[&str],
    audiences: &[&str],
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
        exp: now + client.ttl.as_secs() as i64,
        iat: now,
        nbf: now,
        jti,
        scope: &scope,
        scp: scopes,
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

/// What the handlers need from the HTTP request.
pub struct FormRequest {
    pub source: Option<IpAddr>,
    pub authorization: Option<HeaderValue>,
    pub form: TokenForm,
}

/// Reads a form POST: content type, size, parameters, source address.
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
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let body = axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
        .await
        .map_err(|_| OAuthError::invalid_request("the request body is too large or unreadable"))?;
    Ok(FormRequest {
        source,
        authorization,
        form: parse_form(&body)?,
    })
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
    let ring = app.store.ring(client.signing_key.as_deref());
    let Some(active) = ring.as_ref().and_then(|r| r.active.clone()) else {
        tracing::error!(
            client_id = %client.client_id,
            signing_key = client.signing_key.as_deref().unwrap_or(app.store.default_signing_key()),
            "no active signing key for this client"
        );
        return Err(OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "no active signing key; try again shortly",
        ));
    };
    let jti = new_jti();
    let claims = access_token_claims(&app.issuer, client, &scopes, &audiences, now, &jti);
    let token = sign_jwt(&active, app.token_typ, &claims).map_err(|error| {
        tracing::error!(%error, kid = %active.kid, "signing failed");
        OAuthError::new(ErrorCode::ServerError, "signing failed")
    })?;
    Ok((token, client.ttl.as_secs(), scopes.join(" ")))
}

pub async fn token_endpoint(State(app): State<Arc<App>>, request: Request) -> Response {
    let started = Instant::now();
    let result = async {
        let request = read_form_request(request).await?;
        check_grant_type(&request.form)?;
        let now = unix_now();
        let client = authenticate_request(&app, &request, &app.token_endpoint, now)?;
        let (token, expires_in, scope) = issue(&app, &client, &request.form, now)?;
        Ok::<_, OAuthError>(token_response_body(&token, expires_in, &scope))
    }
    .await;
    let response = match result {
        Ok(body) => {
            app.metrics.count_token("success");
            let mut response = Response::new(Body::from(body));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(error) => {
            let result = if error.status() == StatusCode::TOO_MANY_REQUESTS {
                "rate_limited"
            } else {
                error.code.as_str()
            };
            app.metrics.count_token(result);
            error.into_response()
        }
    };
    app.metrics
        .token_latency
        .observe(started.elapsed().as_secs_f64());
    response
}
