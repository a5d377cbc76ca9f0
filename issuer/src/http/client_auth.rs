//! Client authentication (RFC 6749 §2.3, RFC 7523 §2.2/§3), shared by the
//! token and introspection endpoints: exactly one method per request,
//! secrets checked in constant time, assertions checked and their `jti`
//! remembered, failures rate-limited. Unknown clients, wrong secrets and bad
//! assertions all give the same answer.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use axum::http::HeaderValue;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use sigil_core::digest::{sha256, sha256_parts};
use sigil_crds::AuthMethod;
use subtle::{Choice, ConstantTimeEq};

use super::form::{FormRequest, TokenForm};
use crate::http::error::{ErrorCode, OAuthError};
use crate::index::{ClientEntry, ClientKey, Store};
use crate::logsafe::cap;
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

/// RFC 6749 §2.3.1: the id and secret in a Basic header are
/// form-urlencoded first. Generated ids and secrets have nothing encoded,
/// and are taken as they are without the decoder's copies.
fn form_decode(part: &str) -> String {
    if !part.bytes().any(|b| b == b'%' || b == b'+') {
        return part.to_owned();
    }
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
    let digest = sha256(secret.as_bytes());
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
    iat: Option<i64>,
    aud: Option<serde_json::Value>,
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

// ------------------------------------------------------------ replay cache

/// Longest `jti` accepted in a client assertion, in bytes. Longer ones are
/// refused with `invalid_client` (a 128-bit random id is 22–36 characters).
pub const MAX_JTI_BYTES: usize = 256;

/// Bounds of the replay cache (`--max-remembered-assertions`,
/// `--max-remembered-assertions-per-client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayLimits {
    /// All clients together.
    pub total: usize,
    /// One client's share; at most half the total, so one client filling
    /// its share never makes another client's assertions fail.
    pub per_client: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            total: 200_000,
            per_client: 10_000,
        }
    }
}

/// Why an assertion cannot be remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Not seen before; now remembered until it expires.
    Fresh,
    /// Seen before and not yet expired.
    Replayed,
    /// This client already has its share of unexpired assertions remembered.
    ClientFull,
    /// The whole cache is full.
    Full,
}

/// Remembers assertion `jti`s until they expire (RFC 7523 §3 item 7) in
/// bounded memory: each entry is a SHA-256 of (client id, jti), its expiry
/// and an 8-byte client tag (about 150 bytes with the map and index
/// overhead, whatever the jti's length); entries are kept in expiry order,
/// so expired ones are dropped from the front on every insert without a
/// scan; a per-client share and a total bound cap the count.
pub struct ReplayCache {
    inner: Mutex<ReplayEntries>,
    limits: ReplayLimits,
    refused_for_capacity: Counter,
}

#[derive(Default)]
struct ReplayEntries {
    /// Entry digest → (forget after, client tag).
    seen: HashMap<[u8; 32], (i64, u64)>,
    by_expiry: BTreeSet<(i64, [u8; 32])>,
    per_client: HashMap<u64, usize>,
}

impl ReplayEntries {
    fn expire(&mut self, now: i64) {
        while let Some(&(forget_after, digest)) = self.by_expiry.first() {
            if forget_after >= now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some((_, tag)) = self.seen.remove(&digest)
                && let Some(count) = self.per_client.get_mut(&tag)
            {
                *count -= 1;
                if *count == 0 {
                    self.per_client.remove(&tag);
                }
            }
        }
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(ReplayLimits::default(), Counter::default())
    }
}

impl ReplayCache {
    /// `refused_for_capacity` counts assertions refused because a share or
    /// the total is full.
    pub fn new(limits: ReplayLimits, refused_for_capacity: Counter) -> Self {
        let total = limits.total.max(2);
        let limits = ReplayLimits {
            total,
            per_client: limits.per_client.clamp(1, total / 2),
        };
        ReplayCache {
            inner: Mutex::new(ReplayEntries::default()),
            limits,
            refused_for_capacity,
        }
    }

    pub fn limits(&self) -> ReplayLimits {
        self.limits
    }

    fn digests(client_id: &str, jti: &str) -> ([u8; 32], u64) {
        let client = sha256(client_id.as_bytes());
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&client[..8]);
        (
            sha256_parts(&[&client, jti.as_bytes()]),
            u64::from_le_bytes(tag),
        )
    }

    /// Records `(client, jti)` until `expires_at` plus the leeway.
    pub fn first_use(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> ReplayVerdict {
        let (digest, tag) = Self::digests(client_id, jti);
        let forget_after = expires_at + ASSERTION_LEEWAY_SECS as i64;
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        entries.expire(now);
        if entries.seen.contains_key(&digest) {
            return ReplayVerdict::Replayed;
        }
        let verdict =
            if entries.per_client.get(&tag).copied().unwrap_or(0) >= self.limits.per_client {
                ReplayVerdict::ClientFull
            } else if entries.seen.len() >= self.limits.total {
                ReplayVerdict::Full
            } else {
                entries.seen.insert(digest, (forget_after, tag));
                entries.by_expiry.insert((forget_after, digest));
                *entries.per_client.entry(tag).or_default() += 1;
                return ReplayVerdict::Fresh;
            };
        self.refused_for_capacity.inc();
        verdict
    }

    /// Assertions remembered now (for the gauge).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired entries (also done on every insert; this keeps the
    /// gauge and memory honest when no assertions arrive).
    pub fn sweep(&self, now: i64) {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        entries.expire(now);
        if entries.seen.capacity() > 4 * entries.seen.len().max(1024) {
            entries.seen.shrink_to_fit();
            entries.per_client.shrink_to_fit();
        }
    }
}

// ------------------------------------------------------------ assertions

/// JWS algorithms accepted for `private_key_jwt` assertions, with their
/// `alg` names; discovery lists exactly these.
pub const ASSERTION_ALGORITHMS: [(jsonwebtoken::Algorithm, &str); 9] = {
    use jsonwebtoken::Algorithm as A;
    [
        (A::ES256, "ES256"),
        (A::ES384, "ES384"),
        (A::RS256, "RS256"),
        (A::RS384, "RS384"),
        (A::RS512, "RS512"),
        (A::PS256, "PS256"),
        (A::PS384, "PS384"),
        (A::PS512, "PS512"),
        (A::EdDSA, "EdDSA"),
    ]
};

/// Whether assertions may use `alg`.
pub fn accepts_assertion_algorithm(alg: jsonwebtoken::Algorithm) -> bool {
    ASSERTION_ALGORITHMS
        .iter()
        .any(|(accepted, _)| *accepted == alg)
}

/// Keys of no client, one per key type, that the signature of an assertion
/// is checked against when no key of a real client can check it (unknown
/// client, a client without `private_key_jwt`, or no key with that kid and
/// alg): the same work as a real check, so timing does not tell whether a
/// client id exists.
struct DummyKeys {
    p256: ClientKey,
    p384: ClientKey,
    rsa: ClientKey,
    ed25519: ClientKey,
}

static DUMMY_KEYS: LazyLock<Option<DummyKeys>> = LazyLock::new(|| {
    use sigil_core::keys::{ParsedKey, generate_pkcs8_der};
    use sigil_crds::SigningAlgorithm as S;
    let key = |alg: S| {
        let der = generate_pkcs8_der(alg, 2048).ok()?;
        let parsed = ParsedKey::from_pkcs8_der(alg, &der).ok()?;
        let serde_json::Value::Object(jwk) = parsed.public_jwk("dummy") else {
            return None;
        };
        crate::index::client_key(&jwk).ok()
    };
    Some(DummyKeys {
        p256: key(S::ES256)?,
        p384: key(S::ES384)?,
        rsa: key(S::RS256)?,
        ed25519: key(S::EdDSA)?,
    })
});

/// Generates the dummy keys now rather than on the first unknown client.
pub fn warm_up_dummy_keys() {
    if DUMMY_KEYS.is_none() {
        tracing::error!("cannot generate the dummy assertion keys; unknown clients answer faster");
    }
}

fn dummy_key(alg: jsonwebtoken::Algorithm) -> Option<&'static ClientKey> {
    use jsonwebtoken::Algorithm as A;
    let keys = DUMMY_KEYS.as_ref()?;
    Some(match alg {
        A::ES256 => &keys.p256,
        A::ES384 => &keys.p384,
        A::EdDSA => &keys.ed25519,
        _ => &keys.rsa,
    })
}

#[cfg(test)]
thread_local! {
    /// Signature checks done on this thread (tests of the timing rule).
    pub(crate) static SIGNATURE_CHECKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// RFC 7523 §3 as draft-ietf-oauth-rfc7523bis tightens it: no `crit`
/// header, an accepted alg, a signature by one of `keys` (with no usable
/// key, a dummy key is checked instead and the result discarded), `iss` =
/// `sub` = `client_id`, `aud` the issuer identifier alone, `exp` within an
/// hour, `nbf` and `iat` not in the future (60 s leeway), and a `jti` of
/// at most [`MAX_JTI_BYTES`]. Returns `(exp, jti)`.
fn check_assertion(
    client_id: &str,
    keys: &[ClientKey],
    assertion: &str,
    issuer: &str,
    now: i64,
) -> Result<(i64, String), OAuthError> {
    let failed = OAuthError::authentication_failed;
    if has_crit_header(assertion) {
        return Err(failed());
    }
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| failed())?;
    if !accepts_assertion_algorithm(header.alg) {
        return Err(failed());
    }
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.leeway = ASSERTION_LEEWAY_SECS;
    validation.validate_nbf = true;
    // `aud` is checked below: only the issuer identifier, alone.
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_owned());
    let mut candidates = keys_for(keys, &header).peekable();
    let mut verified = None;
    if candidates.peek().is_none() {
        if let Some(dummy) = dummy_key(header.alg) {
            #[cfg(test)]
            SIGNATURE_CHECKS.with(|c| c.set(c.get() + 1));
            let _ = jsonwebtoken::decode::<AssertionClaims>(assertion, &dummy.key, &validation);
        }
        return Err(failed());
    }
    for key in candidates {
        #[cfg(test)]
        SIGNATURE_CHECKS.with(|c| c.set(c.get() + 1));
        if let Ok(data) = jsonwebtoken::decode::<AssertionClaims>(assertion, &key.key, &validation)
        {
            verified = Some(data.claims);
            break;
        }
    }
    let claims = verified.ok_or_else(failed)?;
    if claims.sub.as_deref() != Some(client_id) {
        return Err(failed());
    }
    let audience_ok = audience_is_only(claims.aud.as_ref(), issuer);
    if !audience_ok {
        return Err(OAuthError::new(
            ErrorCode::InvalidClient,
            "client assertion aud must be the issuer identifier alone",
        ));
    }
    if claims
        .iat
        .is_some_and(|iat| iat > now + ASSERTION_LEEWAY_SECS as i64)
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidClient,
            "client assertion iat is in the future",
        ));
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
    if jti.len() > MAX_JTI_BYTES {
        return Err(OAuthError::new(
            ErrorCode::InvalidClient,
            "client assertion jti is too long (at most 256 bytes)",
        ));
    }
    Ok((exp, jti))
}

/// RFC 7515 §4.1.11: a `crit` header names extensions the recipient must
/// understand; Sigil understands none, so any `crit` is refused.
pub(crate) fn has_crit_header(assertion: &str) -> bool {
    let Some(encoded) = assertion.split('.').next() else {
        return true;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
        return true;
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json) {
        Ok(header) => header.contains_key("crit"),
        Err(_) => true,
    }
}

/// RFC 7523 §3: checks a `private_key_jwt` assertion for `client` (see
/// [`check_assertion`]) and remembers its `jti`.
pub fn verify_assertion(
    client: &ClientEntry,
    assertion: &str,
    issuer: &str,
    replay: &ReplayCache,
    now: i64,
) -> Result<(), OAuthError> {
    let (exp, jti) = check_assertion(&client.client_id, &client.jwks, assertion, issuer, now)?;
    match replay.first_use(&client.client_id, &jti, exp, now) {
        ReplayVerdict::Fresh => Ok(()),
        ReplayVerdict::Replayed => Err(OAuthError::new(
            ErrorCode::InvalidClient,
            "client assertion was already used",
        )),
        // Logged (within the failure log budget) by authenticate_request.
        ReplayVerdict::ClientFull | ReplayVerdict::Full => {
            Err(OAuthError::new(ErrorCode::InvalidClient, REPLAY_FULL))
        }
    }
}

/// The description of an assertion refused because the replay cache (the
/// client's share or the total) is full.
pub const REPLAY_FULL: &str = "too many unexpired client assertions are remembered for this client; use shorter-lived assertions";

/// Authenticates the caller. Unknown client ids, wrong or expired secrets
/// and bad assertions all give the same error, after the same work.
pub fn authenticate(
    store: &Store,
    credentials: &Credentials,
    issuer: &str,
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
            let client_id = credentials.claimed_client_id().unwrap_or_default();
            let client = store
                .client(&client_id)
                .filter(|c| c.auth_methods.private_key_jwt);
            match client {
                Some(client) => {
                    verify_assertion(&client, assertion, issuer, replay, now)?;
                    Ok(client)
                }
                None => {
                    // The same checks against a dummy key, result discarded.
                    let _ = check_assertion(&client_id, &[], assertion, issuer, now);
                    Err(OAuthError::authentication_failed())
                }
            }
        }
    }
}

/// Authenticates a form request. Credentials are always checked; correct
/// ones always pass. A failure is counted against the source address and,
/// once the source is over its budget, answered 429 instead of 401.
///
/// Failures are logged while their source is within budget, plus the
/// first one over it, within the global lines-per-second budget; the
/// others are only counted (see [`crate::http::ratelimit`]).
pub fn authenticate_request(
    app: &App,
    request: &FormRequest,
    now: i64,
) -> Result<Arc<ClientEntry>, OAuthError> {
    let credentials = select_credentials(
        request.authorization.as_ref().map(HeaderValue::as_bytes),
        &request.form,
    );
    let (error, claimed) = match credentials {
        Ok(credentials) => {
            match authenticate(&app.store, &credentials, &app.issuer, &app.replay, now) {
                Ok(client) => return Ok(client),
                Err(error) => (error, credentials.claimed_client_id()),
            }
        }
        Err(error) if error.code == ErrorCode::InvalidClient => (error, None),
        Err(error) => return Err(error),
    };
    Err(failed_authentication(app, request, error, claimed))
}

/// [`authenticate_request`], plus `federated_jwt` in cluster mode: an
/// assertion whose `iss` is the cluster's service-account issuer is a
/// ServiceAccount token, checked by [`crate::federation`] under the same
/// one-method rule, failure budget and logging.
pub async fn authenticate_form_request(
    app: &App,
    request: &FormRequest,
    now: i64,
) -> Result<Arc<ClientEntry>, OAuthError> {
    if let Some(federation) = &app.federation
        && let Some(assertion) = request.form.client_assertion.as_deref()
        && federation.claims_our_issuer(assertion).await
    {
        let credentials = select_credentials(
            request.authorization.as_ref().map(HeaderValue::as_bytes),
            &request.form,
        );
        let (error, claimed) = match credentials {
            Ok(credentials @ Credentials::Assertion { .. }) => {
                let Credentials::Assertion {
                    assertion,
                    client_id,
                } = &credentials
                else {
                    unreachable!("matched above")
                };
                match federation
                    .authenticate(
                        &app.store,
                        assertion,
                        client_id.as_deref(),
                        &app.issuer,
                        now,
                    )
                    .await
                {
                    Ok(client) => return Ok(client),
                    Err(error) => (error, credentials.claimed_client_id()),
                }
            }
            // Another method as well: select_credentials refused it.
            Ok(_) => (OAuthError::authentication_failed(), None),
            Err(error) if error.code == ErrorCode::InvalidClient => (error, None),
            Err(error) => return Err(error),
        };
        return Err(failed_authentication(app, request, error, claimed));
    }
    authenticate_request(app, request, now)
}

/// Counts a failed authentication against its source and logs it within
/// the budgets; the error to answer (429 once the source is over budget).
fn failed_authentication(
    app: &App,
    request: &FormRequest,
    error: OAuthError,
    claimed: Option<String>,
) -> OAuthError {
    let limited = app.limiter.record_failure(request.source);
    if limited.is_some_and(|over| !over.first) {
        app.suppress_failure_log("source_over_budget");
    } else if !app.failure_log.allow() {
        app.suppress_failure_log("lines_per_second");
    } else {
        let client_id = cap(claimed.as_deref().unwrap_or("-"));
        let rate_limited = limited.is_some();
        if error.description == REPLAY_FULL {
            tracing::warn!(
                %client_id,
                source = ?request.source,
                rate_limited,
                "refusing a client assertion: too many unexpired assertions remembered (the client's share or the total)"
            );
        } else if rate_limited {
            tracing::info!(
                %client_id,
                source = ?request.source,
                reason = %error.description,
                rate_limited,
                "client authentication failed; the source is over its failure budget, its next failures get 429 and are not logged"
            );
        } else {
            tracing::info!(
                %client_id,
                source = ?request.source,
                reason = %error.description,
                rate_limited,
                "client authentication failed"
            );
        }
    }
    match limited {
        Some(over) => OAuthError::rate_limited(over.retry_after),
        None => error,
    }
}

/// draft-ietf-oauth-rfc7523bis §4: the audience is `expected` as a string,
/// or an array with that one element. A token meant for several audiences
/// could be replayed to Sigil by any of them.
pub(crate) fn audience_is_only(aud: Option<&serde_json::Value>, expected: &str) -> bool {
    match aud {
        Some(serde_json::Value::String(aud)) => aud == expected,
        Some(serde_json::Value::Array(auds)) => {
            matches!(auds.as_slice(), [serde_json::Value::String(aud)] if aud == expected)
        }
        _ => false,
    }
}

/// The keys that may have signed a JWS with `header`: its `kid` when it
/// names one, and only keys whose own `alg` (when they name one) is the
/// header's. One rule for client assertions and ServiceAccount tokens.
pub(crate) fn keys_for<'a>(
    keys: &'a [ClientKey],
    header: &'a jsonwebtoken::Header,
) -> impl Iterator<Item = &'a ClientKey> {
    keys.iter().filter(|key| {
        header
            .kid
            .as_ref()
            .is_none_or(|kid| key.kid.as_ref() == Some(kid))
            && key.algorithm.is_none_or(|alg| alg == header.alg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(total: usize, per_client: usize) -> ReplayCache {
        ReplayCache::new(ReplayLimits { total, per_client }, Counter::default())
    }

    #[test]
    fn an_entry_has_a_fixed_size_whatever_the_jti() {
        // What is stored per assertion: a digest, an expiry and a tag.
        assert_eq!(
            std::mem::size_of::<([u8; 32], (i64, u64))>(),
            48,
            "entry layout changed: update the README's per-entry estimate"
        );
        let replay = cache(100, 50);
        let long = "j".repeat(MAX_JTI_BYTES);
        assert_eq!(replay.first_use("c", &long, 100, 0), ReplayVerdict::Fresh);
        assert_eq!(
            replay.first_use("c", &long, 100, 0),
            ReplayVerdict::Replayed
        );
        // The same jti from another client is another assertion.
        assert_eq!(replay.first_use("d", &long, 100, 0), ReplayVerdict::Fresh);
    }

    #[test]
    fn a_client_filling_its_share_does_not_refuse_other_clients() {
        let refused = Counter::default();
        let replay = ReplayCache::new(
            ReplayLimits {
                total: 100,
                per_client: 1_000,
            },
            refused.clone(),
        );
        // The share is clamped to half the total.
        assert_eq!(replay.limits().per_client, 50);
        for i in 0..50 {
            assert_eq!(
                replay.first_use("noisy", &format!("j{i}"), 3_000, 0),
                ReplayVerdict::Fresh
            );
        }
        assert_eq!(
            replay.first_use("noisy", "one-more", 3_000, 0),
            ReplayVerdict::ClientFull
        );
        assert_eq!(refused.get(), 1);
        for i in 0..50 {
            assert_eq!(
                replay.first_use(&format!("quiet{}", i % 5), &format!("j{i}"), 3_000, 0),
                ReplayVerdict::Fresh
            );
        }
        assert_eq!(
            replay.first_use("quiet0", "x", 3_000, 0),
            ReplayVerdict::Full
        );
        assert_eq!(replay.len(), 100);
    }

    #[test]
    fn expired_entries_leave_in_expiry_order_on_insert_and_sweep() {
        let replay = cache(10, 5);
        for i in 0..5 {
            assert_eq!(
                replay.first_use("c", &format!("j{i}"), 100 + i, 0),
                ReplayVerdict::Fresh
            );
        }
        assert_eq!(
            replay.first_use("c", "late", 500, 0),
            ReplayVerdict::ClientFull
        );
        // At t = 100 + leeway + 2, j0..j2 have expired (exp + leeway < now).
        let now = 100 + ASSERTION_LEEWAY_SECS as i64 + 3;
        assert_eq!(
            replay.first_use("c", "late", 500, now),
            ReplayVerdict::Fresh
        );
        assert_eq!(replay.len(), 3);
        // A jti is remembered through exp + leeway, then forgotten.
        assert_eq!(
            replay.first_use("c", "j4", 104, now),
            ReplayVerdict::Replayed
        );
        replay.sweep(1_000);
        assert!(replay.is_empty());
    }
}
