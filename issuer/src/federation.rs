//! `federated_jwt` client authentication: a workload's Kubernetes
//! ServiceAccount token is its client assertion (RFC 7523 §2.2 with a
//! federated issuer, as Keycloak's "federated-jwt" client authenticator).
//!
//! The token is verified offline against the cluster's own service-account
//! issuer: its OIDC discovery document and JWKS, read through the issuer's
//! kube client (`/.well-known/openid-configuration`, `/openid/v1/jwks`),
//! cached, refetched when a token names an unknown `kid` (at most once per
//! [`MIN_REFETCH_INTERVAL`], so garbage kids cannot hammer the API server)
//! and when older than [`KEYS_MAX_AGE`] (so an API-server key rotation is
//! followed both ways). Then its claims ([`check_claims`]) and the
//! OAuthClient that lists its ServiceAccount ([`select_client`]). With
//! `--service-account-token-review` a TokenReview also asks the API server
//! whether the token is still good (its ServiceAccount and pod still
//! exist), cached in bounded memory ([`ReviewCache`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;

use crate::http::client_auth::accepts_assertion_algorithm;
use crate::http::error::{ErrorCode, OAuthError};
use crate::index::{ClientEntry, ClientKey, Store};
use crate::metrics::ResultLabel;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 10;
/// Tokens valid for longer than this from now are refused: a projected
/// token lives 10 min to a few hours (the kubelet's default is 1 h), so a
/// longer one was minted by hand and is a long-lived bearer credential.
pub const MAX_REMAINING_LIFETIME_SECS: i64 = 24 * 3600;
/// Keys of the API server's JWKS kept at most (it publishes one or two).
pub const MAX_KEYS: usize = 32;
/// The JWKS is refetched at most this often, whatever tokens arrive.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Keys older than this are refetched on the next use (so a key the API
/// server stopped publishing stops working within this time, TokenReview
/// or not).
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(60);
/// One fetch of discovery + JWKS may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest token considered (a projected token is about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

// ------------------------------------------------------------ claims

/// `kubernetes.io` claims of a bound ServiceAccount token.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KubernetesClaims {
    pub namespace: Option<String>,
    pub serviceaccount: Option<ObjectRef>,
    #[serde(default)]
    pub pod: Option<ObjectRef>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub name: Option<String>,
    pub uid: Option<String>,
}

/// The claims of a ServiceAccount token that are checked.
#[derive(Deserialize, Clone, Debug, PartialEq)]
pub struct ServiceAccountClaims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Option<serde_json::Value>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Option<KubernetesClaims>,
}

/// Who a verified token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod the token is bound to (name, uid), if any.
    pub pod: Option<(String, String)>,
    pub exp: i64,
}

impl ServiceAccountIdentity {
    /// The username the API server gives this ServiceAccount.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

fn present(value: Option<&String>) -> Option<&str> {
    value.map(String::as_str).filter(|v| !v.is_empty())
}

/// The claim checks of a signature-verified ServiceAccount token: `iss` the
/// cluster's service-account issuer, `aud` the Sigil issuer URL alone (a
/// token also meant for another audience could be replayed to Sigil by
/// that audience), `exp` present, not past and at most
/// [`MAX_REMAINING_LIFETIME_SECS`] away, `nbf`/`iat` not in the future
/// ([`LEEWAY_SECS`] leeway), the `kubernetes.io` namespace and
/// ServiceAccount name and uid present, `sub` their
/// `system:serviceaccount:<namespace>:<name>`, and a bound pod with both
/// name and uid. The error is the reason, for the caller and the log.
pub fn check_claims(
    claims: &ServiceAccountClaims,
    service_account_issuer: &str,
    audience: &str,
    now: i64,
) -> Result<ServiceAccountIdentity, &'static str> {
    if claims.iss.as_deref() != Some(service_account_issuer) {
        return Err("the ServiceAccount token's iss is not the cluster's service-account issuer");
    }
    let audience_ok = crate::http::client_auth::audience_is_only(claims.aud.as_ref(), audience);
    if !audience_ok {
        return Err("the ServiceAccount token's aud must be the issuer URL alone");
    }
    let exp = claims.exp.ok_or("the ServiceAccount token has no exp")?;
    if exp + LEEWAY_SECS <= now {
        return Err("the ServiceAccount token has expired");
    }
    if exp - now > MAX_REMAINING_LIFETIME_SECS {
        return Err("the ServiceAccount token is valid for too long (at most 24h)");
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err("the ServiceAccount token is not valid yet (nbf)");
    }
    if claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS) {
        return Err("the ServiceAccount token's iat is in the future");
    }
    let missing = "the ServiceAccount token lacks its kubernetes.io namespace or serviceaccount";
    let kubernetes = claims.kubernetes.as_ref().ok_or(missing)?;
    let namespace = present(kubernetes.namespace.as_ref()).ok_or(missing)?;
    let account = kubernetes.serviceaccount.as_ref().ok_or(missing)?;
    let name = present(account.name.as_ref()).ok_or(missing)?;
    let uid = present(account.uid.as_ref()).ok_or(missing)?;
    if claims.sub.as_deref() != Some(format!("system:serviceaccount:{namespace}:{name}").as_str()) {
        return Err("the ServiceAccount token's sub does not match its kubernetes.io claims");
    }
    let pod = match &kubernetes.pod {
        None => None,
        Some(pod) => match (present(pod.name.as_ref()), present(pod.uid.as_ref())) {
            (Some(name), Some(uid)) => Some((name.to_owned(), uid.to_owned())),
            _ => return Err("the ServiceAccount token's kubernetes.io pod lacks name or uid"),
        },
    };
    Ok(ServiceAccountIdentity {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        pod,
        exp,
    })
}

/// The client a verified ServiceAccount authenticates: of `candidates`
/// (the clients listing it), those that accept `federated_jwt`; with a
/// `client_id` it must be one of them, without one there must be exactly
/// one. `None` is the same failure as an unknown client.
pub fn select_client(
    candidates: Vec<Arc<ClientEntry>>,
    client_id: Option<&str>,
) -> Option<Arc<ClientEntry>> {
    let mut allowed = candidates
        .into_iter()
        .filter(|c| c.auth_methods.federated_jwt);
    match client_id {
        Some(id) => allowed.find(|c| c.client_id == id),
        None => {
            let first = allowed.next()?;
            allowed.next().is_none().then_some(first)
        }
    }
}

// ------------------------------------------------------------ keys

/// What the cluster's service-account issuer publishes.
pub struct Published {
    /// `issuer` of the discovery document.
    pub issuer: String,
    /// The JWKS document.
    pub jwks: serde_json::Value,
}

pub type FetchFuture = Pin<Box<dyn Future<Output = Result<Published, String>> + Send>>;

/// Where the discovery document and JWKS come from (the API server; a
/// fixed document in unit tests).
pub trait KeySource: Send + Sync {
    fn fetch(&self) -> FetchFuture;
}

/// The API server's `/.well-known/openid-configuration` and
/// `/openid/v1/jwks`, through the issuer's kube client (its credentials
/// and CA; RBAC: `get` on those two nonResourceURLs).
pub struct ApiServerKeys(pub kube::Client);

impl KeySource for ApiServerKeys {
    fn fetch(&self) -> FetchFuture {
        let client = self.0.clone();
        Box::pin(async move {
            let get = |path: &str| {
                axum::http::Request::get(path)
                    .body(Vec::new())
                    .map_err(|e| e.to_string())
            };
            let discovery = client
                .request_text(get("/.well-known/openid-configuration")?)
                .await
                .map_err(|e| format!("GET /.well-known/openid-configuration: {e}"))?;
            #[derive(Deserialize)]
            struct Discovery {
                issuer: String,
            }
            let discovery: Discovery = serde_json::from_str(&discovery)
                .map_err(|e| format!("the discovery document: {e}"))?;
            let jwks = client
                .request_text(get("/openid/v1/jwks")?)
                .await
                .map_err(|e| format!("GET /openid/v1/jwks: {e}"))?;
            let jwks =
                serde_json::from_str(&jwks).map_err(|e| format!("the JWKS document: {e}"))?;
            Ok(Published {
                issuer: discovery.issuer,
                jwks,
            })
        })
    }
}

/// The service-account issuer's keys, parsed.
pub struct KeySet {
    pub issuer: String,
    pub keys: Vec<ClientKey>,
    pub fetched: Instant,
}

impl KeySet {
    /// Parses a JWKS, keeping at most [`MAX_KEYS`] usable keys (unusable
    /// ones are skipped).
    pub fn parse(published: Published) -> KeySet {
        let keys = published.jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|key| crate::index::client_key(key.as_object()?).ok())
            .take(MAX_KEYS)
            .collect();
        KeySet {
            issuer: published.issuer,
            keys,
            fetched: Instant::now(),
        }
    }

    fn has_kid(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => !self.keys.is_empty(),
        }
    }
}

// ------------------------------------------------------------ TokenReview

/// TokenReview results remembered at most (about 100 bytes each).
pub const REVIEW_CACHE_MAX_ENTRIES: usize = 10_000;
/// How long a TokenReview result is reused (so a deleted ServiceAccount or
/// pod stops authenticating within this time).
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(10);

/// Recent TokenReview results by SHA-256 of the token, in insertion order
/// (so also expiry order); the oldest leaves when full.
pub struct ReviewCache {
    entries: HashMap<[u8; 32], (Instant, bool)>,
    order: VecDeque<([u8; 32], Instant)>,
    max_entries: usize,
}

impl ReviewCache {
    pub fn new(max_entries: usize) -> Self {
        ReviewCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            max_entries: max_entries.max(1),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(digest, until)) = self.order.front() {
            if until > now && self.order.len() <= self.max_entries {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&digest).is_some_and(|(u, _)| *u == until) {
                self.entries.remove(&digest);
            }
        }
    }

    pub fn get(&mut self, digest: &[u8; 32], now: Instant) -> Option<bool> {
        self.expire(now);
        self.entries
            .get(digest)
            .filter(|(until, _)| *until > now)
            .map(|(_, ok)| *ok)
    }

    pub fn insert(&mut self, digest: [u8; 32], ok: bool, until: Instant, now: Instant) {
        if self.order.len() >= self.max_entries
            && let Some((oldest, until)) = self.order.pop_front()
            && self.entries.get(&oldest).is_some_and(|(u, _)| *u == until)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(digest, (until, ok));
        self.order.push_back((digest, until));
        self.expire(now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The TokenReview round trip, behind a trait for unit tests.
pub trait Reviewer: Send + Sync {
    /// Whether the API server still authenticates `token` for `audience`
    /// as `identity` (username and uid).
    fn review(
        &self,
        token: String,
        audience: String,
        identity: ServiceAccountIdentity,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>;
}

/// TokenReview through the issuer's kube client (RBAC: `create` on
/// `tokenreviews`).
pub struct ApiServerReviewer(pub kube::Client);

impl Reviewer for ApiServerReviewer {
    fn review(
        &self,
        token: String,
        audience: String,
        identity: ServiceAccountIdentity,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let client = self.0.clone();
        Box::pin(async move {
            let api: kube::Api<TokenReview> = kube::Api::all(client);
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token,
                    audiences: Some(vec![audience.clone()]),
                },
                ..Default::default()
            };
            let reviewed = api
                .create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            let Some(status) = reviewed.status else {
                return Ok(false);
            };
            let user = status.user.unwrap_or_default();
            Ok(status.authenticated == Some(true)
                && user.username.as_deref() == Some(identity.username().as_str())
                && user.uid.as_deref() == Some(identity.uid.as_str())
                && status.audiences.is_none_or(|auds| auds.contains(&audience)))
        })
    }
}

// ------------------------------------------------------------ the verifier

/// Metrics of federated authentication.
#[derive(Clone, Default)]
pub struct FederationMetrics {
    /// Fetches of the service-account issuer's discovery + JWKS, by result.
    pub key_fetches: Family<ResultLabel, Counter>,
    /// TokenReviews sent, by result (authenticated, rejected, error).
    pub token_reviews: Family<ResultLabel, Counter>,
}

/// Verifies ServiceAccount tokens for the token endpoint.
pub struct Federation {
    source: Box<dyn KeySource>,
    keys: ArcSwapOption<KeySet>,
    /// When the last fetch started; held while fetching (single flight).
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    reviewer: Option<Box<dyn Reviewer>>,
    reviews: Mutex<ReviewCache>,
    metrics: FederationMetrics,
}

impl Federation {
    pub fn new(
        source: Box<dyn KeySource>,
        reviewer: Option<Box<dyn Reviewer>>,
        metrics: FederationMetrics,
    ) -> Self {
        Federation {
            source,
            keys: ArcSwapOption::empty(),
            last_fetch: tokio::sync::Mutex::new(None),
            reviewer,
            reviews: Mutex::new(ReviewCache::new(REVIEW_CACHE_MAX_ENTRIES)),
            metrics,
        }
    }

    /// TokenReview results cached now (for the gauge).
    pub fn cached_reviews(&self) -> usize {
        self.reviews.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The current keys, refetched when `kid` is unknown or the keys are
    /// older than [`KEYS_MAX_AGE`], at most once per
    /// [`MIN_REFETCH_INTERVAL`] and one fetch at a time. While one request
    /// refreshes stale keys, the others go on with the keys there are
    /// (only a request whose `kid` is unknown waits for the fetch). A
    /// failed fetch keeps the keys there are.
    pub async fn keys(&self, kid: Option<&str>) -> Option<Arc<KeySet>> {
        let usable = |keys: &Option<Arc<KeySet>>| {
            keys.as_ref()
                .is_some_and(|k| k.fetched.elapsed() < KEYS_MAX_AGE && k.has_kid(kid))
        };
        let current = self.keys.load_full();
        if usable(&current) {
            return current;
        }
        let known = current.as_ref().is_some_and(|k| k.has_kid(kid));
        let mut last = if known {
            match self.last_fetch.try_lock() {
                Ok(guard) => guard,
                Err(_) => return current,
            }
        } else {
            self.last_fetch.lock().await
        };
        let current = self.keys.load_full();
        if usable(&current) || last.is_some_and(|t| t.elapsed() < MIN_REFETCH_INTERVAL) {
            return current;
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch()).await {
            Ok(Ok(published)) => {
                let set = Arc::new(KeySet::parse(published));
                self.count_fetch("success");
                tracing::debug!(
                    issuer = %set.issuer,
                    keys = set.keys.len(),
                    "fetched the service-account issuer's keys"
                );
                self.keys.store(Some(set.clone()));
                Some(set)
            }
            Ok(Err(error)) => {
                self.count_fetch("error");
                tracing::warn!(%error, "cannot fetch the cluster's service-account issuer keys (federated_jwt)");
                current
            }
            Err(_) => {
                self.count_fetch("error");
                tracing::warn!("fetching the cluster's service-account issuer keys timed out");
                current
            }
        }
    }

    fn count_fetch(&self, result: &'static str) {
        self.metrics
            .key_fetches
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Whether `assertion` claims to come from the cluster's
    /// service-account issuer (its unverified `iss`), so it is a
    /// `federated_jwt` assertion rather than a `private_key_jwt` one (whose
    /// `iss` is a client id, which never holds ':' or '/').
    pub async fn claims_our_issuer(&self, assertion: &str) -> bool {
        #[derive(Deserialize)]
        struct Issuer {
            iss: Option<String>,
        }
        let Some(iss) = jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(assertion)
            .ok()
            .and_then(|c| c.iss)
        else {
            return false;
        };
        if !iss.contains(['/', ':']) {
            return false;
        }
        self.keys(None).await.is_some_and(|keys| keys.issuer == iss)
    }

    /// Authenticates a `federated_jwt` request: the token's signature by a
    /// key the API server publishes, its claims ([`check_claims`]), the
    /// client listing its ServiceAccount ([`select_client`]) and, with
    /// TokenReview on, the API server's word that it is still good.
    pub async fn authenticate(
        &self,
        store: &Store,
        assertion: &str,
        client_id: Option<&str>,
        audience: &str,
        now: i64,
    ) -> Result<Arc<ClientEntry>, OAuthError> {
        let failed = OAuthError::authentication_failed;
        if assertion.len() > MAX_TOKEN_BYTES || crate::http::client_auth::has_crit_header(assertion)
        {
            return Err(failed());
        }
        let header = jsonwebtoken::decode_header(assertion).map_err(|_| failed())?;
        if !accepts_assertion_algorithm(header.alg) {
            return Err(failed());
        }
        let keys = self.keys(header.kid.as_deref()).await.ok_or_else(failed)?;
        let claims = verify_signature(&keys.keys, assertion, &header).ok_or_else(failed)?;
        let identity = check_claims(&claims, &keys.issuer, audience, now)
            .map_err(|reason| OAuthError::new(ErrorCode::InvalidClient, reason))?;
        let candidates = store.clients_for_service_account(&identity.namespace, &identity.name);
        let client = select_client(candidates, client_id).ok_or_else(failed)?;
        if let Some(reviewer) = &self.reviewer {
            self.review(reviewer.as_ref(), assertion, audience, &identity, now)
                .await?;
        }
        Ok(client)
    }

    async fn review(
        &self,
        reviewer: &dyn Reviewer,
        token: &str,
        audience: &str,
        identity: &ServiceAccountIdentity,
        now: i64,
    ) -> Result<(), OAuthError> {
        let digest = sigil_core::digest::sha256(token.as_bytes());
        let cached = self
            .reviews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest, Instant::now());
        let ok = match cached {
            Some(ok) => ok,
            None => {
                let result = reviewer
                    .review(token.to_owned(), audience.to_owned(), identity.clone())
                    .await;
                let label = match &result {
                    Ok(true) => "authenticated",
                    Ok(false) => "rejected",
                    Err(_) => "error",
                };
                self.metrics
                    .token_reviews
                    .get_or_create(&ResultLabel { result: label })
                    .inc();
                match result {
                    Ok(ok) => {
                        let left =
                            Duration::from_secs(u64::try_from(identity.exp - now).unwrap_or(0));
                        let started = Instant::now();
                        self.reviews
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(digest, ok, started + REVIEW_CACHE_TTL.min(left), started);
                        ok
                    }
                    Err(error) => {
                        tracing::warn!(%error, "TokenReview failed; refusing the ServiceAccount token");
                        false
                    }
                }
            }
        };
        if ok {
            Ok(())
        } else {
            Err(OAuthError::new(
                ErrorCode::InvalidClient,
                "the API server no longer accepts this ServiceAccount token (TokenReview)",
            ))
        }
    }
}

/// The claims of `assertion` if one of `keys` (matching its `kid`, and
/// `alg` when the key names one) verifies its signature. Time and audience
/// are checked by [`check_claims`].
fn verify_signature(
    keys: &[ClientKey],
    assertion: &str,
    header: &jsonwebtoken::Header,
) -> Option<ServiceAccountClaims> {
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims::<&str>(&[]);
    crate::http::client_auth::keys_for(keys, header).find_map(|key| {
        jsonwebtoken::decode::<ServiceAccountClaims>(assertion, &key.key, &validation)
            .ok()
            .map(|data| data.claims)
    })
}

#[cfg(test)]
mod tests;
