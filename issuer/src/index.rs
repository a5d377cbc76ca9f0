//! In-memory indexes the request path reads: clients by client id, signing
//! key rings by name, published keys by kid, and the pre-serialized JWKS.
//! Cluster watchers and standalone mode both feed it; nothing here talks to
//! the API server.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use sigil_crds::{
    AuthMethod, KeyState, OAuthClient, SigningAlgorithm, SigningKeySpec, SigningKeyStatus,
};

use crate::audiences::AudienceIndex;
use crate::logsafe::cap;
use sigil_core::keys::{ParsedKey, PublicVerifier};

/// `typ` header of issued tokens (DESIGN.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenTyp {
    /// RFC 9068 `at+jwt` (the default).
    #[value(name = "at+jwt")]
    AtJwt,
    /// Plain `JWT`, for verifiers that reject `at+jwt` (Spring/Nimbus).
    #[value(name = "JWT")]
    Jwt,
}

impl TokenTyp {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenTyp::AtJwt => "at+jwt",
            TokenTyp::Jwt => "JWT",
        }
    }
}

/// Namespace and name of a Kubernetes object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ObjectKey {
    pub fn of(meta: &kube::api::ObjectMeta) -> Self {
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// One accepted secret, as its SHA-256 digest.
#[derive(Clone, Debug)]
pub struct Verifier {
    pub digest: [u8; 32],
    /// Unix seconds after which the secret stops working.
    pub expires_at: Option<i64>,
}

/// Which client authentication methods a client accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthMethods {
    pub basic: bool,
    pub post: bool,
    pub private_key_jwt: bool,
    pub federated_jwt: bool,
}

impl AuthMethods {
    pub fn from_list(methods: &[AuthMethod]) -> Self {
        let mut out = AuthMethods::default();
        for method in methods {
            match method {
                AuthMethod::ClientSecretBasic => out.basic = true,
                AuthMethod::ClientSecretPost => out.post = true,
                AuthMethod::PrivateKeyJwt => out.private_key_jwt = true,
                AuthMethod::FederatedJwt => out.federated_jwt = true,
            }
        }
        out
    }

    pub fn allows(&self, method: AuthMethod) -> bool {
        match method {
            AuthMethod::ClientSecretBasic => self.basic,
            AuthMethod::ClientSecretPost => self.post,
            AuthMethod::PrivateKeyJwt => self.private_key_jwt,
            AuthMethod::FederatedJwt => self.federated_jwt,
        }
    }
}

/// A public key of a client, for `private_key_jwt`.
pub struct ClientKey {
    pub kid: Option<String>,
    /// The JWK's `alg`, if it names one.
    pub algorithm: Option<jsonwebtoken::Algorithm>,
    pub key: jsonwebtoken::DecodingKey,
}

/// Everything the token endpoint needs about one client.
pub struct ClientEntry {
    pub client_id: String,
    pub object: ObjectKey,
    /// Creation time (Unix seconds), to pick the owner of a duplicate id.
    pub created_at: i64,
    pub verifiers: Vec<Verifier>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub ttl: Duration,
    pub auth_methods: AuthMethods,
    pub jwks: Vec<ClientKey>,
    /// ServiceAccounts (of the client's namespace) whose tokens
    /// authenticate it (`federated_jwt`); empty without that method.
    pub service_accounts: Vec<String>,
    pub disabled: bool,
    pub signing_key: Option<String>,
    /// `additionalClaims` as JSON members without the braces
    /// (`"stt":1,"tenant":"a"`), spliced into every token; empty if none.
    pub additional_claims_json: String,
}

impl std::fmt::Debug for ClientEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientEntry")
            .field("client_id", &self.client_id)
            .field("object", &self.object)
            .field("verifiers", &self.verifiers.len())
            .field("scopes", &self.scopes)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

/// Size limits on what one `OAuthClient` may make the issuer hold and put
/// into every token (`--max-additional-claims-bytes`,
/// `--max-client-jwks-bytes`, `--max-client-jwks-keys`). A client over any
/// of them is not loaded for token issuance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// `spec.additionalClaims` serialized as JSON.
    pub additional_claims_bytes: usize,
    /// `spec.jwks.keys` serialized as JSON.
    pub jwks_bytes: usize,
    /// Keys in `spec.jwks`.
    pub jwks_keys: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            additional_claims_bytes: 8 * 1024,
            jwks_bytes: 64 * 1024,
            jwks_keys: 10,
        }
    }
}

/// Why an `OAuthClient` is not loaded. The texts give sizes only, never
/// content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    #[error("spec.additionalClaims is {size} bytes as JSON, over the limit of {limit}")]
    AdditionalClaims { size: usize, limit: usize },
    #[error("spec.jwks is {size} bytes as JSON, over the limit of {limit}")]
    JwksBytes { size: usize, limit: usize },
    #[error("spec.jwks has {count} keys, over the limit of {limit}")]
    JwksKeys { count: usize, limit: usize },
}

/// Checks an `OAuthClient` against the limits.
pub fn check_client_limits(client: &OAuthClient, limits: &ClientLimits) -> Result<(), OverLimit> {
    if let Some(claims) = &client.spec.additional_claims {
        let size = serde_json::to_vec(claims)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > limits.additional_claims_bytes {
            return Err(OverLimit::AdditionalClaims {
                size,
                limit: limits.additional_claims_bytes,
            });
        }
    }
    if let Some(set) = &client.spec.jwks {
        if set.keys.len() > limits.jwks_keys {
            return Err(OverLimit::JwksKeys {
                count: set.keys.len(),
                limit: limits.jwks_keys,
            });
        }
        let size = serde_json::to_vec(&set.keys)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > limits.jwks_bytes {
            return Err(OverLimit::JwksBytes {
                size,
                limit: limits.jwks_bytes,
            });
        }
    }
    Ok(())
}

impl ClientEntry {
    /// Builds the entry from an `OAuthClient` as the API server (or a
    /// manifest plus the standalone secrets file) describes it, refusing
    /// one over `limits`. Bad client JWKs are skipped with a warning rather
    /// than dropping the client.
    pub fn from_oauth_client(
        client: &OAuthClient,
        limits: &ClientLimits,
    ) -> Result<Self, OverLimit> {
        check_client_limits(client, limits)?;
        Ok(Self::from_checked_oauth_client(client))
    }

    fn from_checked_oauth_client(client: &OAuthClient) -> Self {
        let object = ObjectKey::of(&client.metadata);
        let verifiers = client
            .status
            .as_ref()
            .map(|status| {
                status
                    .secret_verifiers
                    .iter()
                    .filter_map(|v| {
                        let mut digest = [0u8; 32];
                        hex::decode_to_slice(&v.sha256, &mut digest).ok()?;
                        Some(Verifier {
                            digest,
                            expires_at: v.expires_at.as_ref().map(|t| t.0.as_second()),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut jwks = Vec::new();
        if let Some(set) = &client.spec.jwks {
            for (index, public) in set.keys.iter().enumerate() {
                match client_key(&public.0) {
                    Ok(key) => jwks.push(key),
                    Err(reason) => tracing::warn!(
                        client = %object,
                        client_id = %cap(&client.client_id()),
                        index,
                        %reason,
                        "skipping an unusable key in spec.jwks"
                    ),
                }
            }
        }
        // What the operator granted (`sigil_crds::grant`), narrowed to the
        // current spec; callers load only admitted clients.
        let grant = client.recorded_grant().unwrap_or_default();
        let additional_claims_json = client
            .spec
            .additional_claims
            .as_ref()
            .map(|claims| {
                let granted: BTreeMap<String, serde_json::Value> = claims
                    .iter()
                    .filter(|(name, _)| grant.claims.contains(name))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                additional_claims_fragment(&object, &granted)
            })
            .unwrap_or_default();
        ClientEntry {
            client_id: client.client_id(),
            created_at: client
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
            object,
            verifiers,
            scopes: grant.scopes,
            audiences: grant.audiences,
            ttl: client.spec.token_ttl(),
            auth_methods: AuthMethods::from_list(&client.spec.auth_methods()),
            jwks,
            service_accounts: client.spec.federated_service_accounts().to_vec(),
            disabled: client.spec.disabled,
            signing_key: client.spec.signing_key.clone(),
            additional_claims_json,
        }
    }
}

/// The JWK members Sigil reads to verify an assertion; any other member
/// (`x5c`, private extensions, …) is dropped before parsing, so nothing a
/// client adds to its JWKs is kept in memory.
const NEEDED_JWK_MEMBERS: [&str; 10] = [
    "kty", "kid", "alg", "use", "key_ops", "crv", "x", "y", "n", "e",
];

fn needed_jwk_members(
    jwk: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    jwk.iter()
        .filter(|(name, _)| NEEDED_JWK_MEMBERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

pub(crate) fn client_key(
    jwk: &serde_json::Map<String, serde_json::Value>,
) -> Result<ClientKey, String> {
    let jwk = needed_jwk_members(jwk);
    let parsed: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(serde_json::Value::Object(jwk.clone()))
            .map_err(|e| e.to_string())?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&parsed).map_err(|e| e.to_string())?;
    let algorithm = jwk
        .get("alg")
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse::<jsonwebtoken::Algorithm>().ok());
    Ok(ClientKey {
        kid: parsed.common.key_id.clone(),
        algorithm,
        key,
    })
}

/// `additionalClaims` as JSON members without braces, ready to splice after
/// Sigil's own claims. Reserved claims are dropped here whatever let them
/// through (the CRD refuses them, but not as `null`, nor an older CRD or a
/// path around the API server): a token must never carry two `iss`.
fn additional_claims_fragment(
    object: &ObjectKey,
    claims: &BTreeMap<String, serde_json::Value>,
) -> String {
    let (reserved, allowed): (Vec<_>, Vec<_>) = claims
        .iter()
        .partition(|(name, _)| sigil_crds::RESERVED_CLAIMS.contains(&name.as_str()));
    if !reserved.is_empty() {
        let names: Vec<&str> = reserved.iter().map(|(n, _)| n.as_str()).collect();
        let names: Vec<String> = names.iter().map(|n| cap(n).to_string()).collect();
        tracing::warn!(client = %object, claims = ?names, "ignoring reserved claims in spec.additionalClaims");
    }
    let allowed: serde_json::Map<String, serde_json::Value> = allowed
        .into_iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if allowed.is_empty() {
        return String::new();
    }
    let object = serde_json::Value::Object(allowed).to_string();
    object[1..object.len() - 1].to_owned()
}

/// The key that signs new tokens of a ring, with its JWS header already
/// encoded for both `typ` settings.
pub struct ActiveKey {
    pub kid: String,
    pub key: ParsedKey,
    header_at_jwt: String,
    header_jwt: String,
}

impl ActiveKey {
    pub fn new(kid: String, key: ParsedKey) -> Self {
        let header = |typ: &str| {
            URL_SAFE_NO_PAD.encode(
                serde_json::json!({"alg": key.algorithm().as_str(), "kid": kid, "typ": typ})
                    .to_string(),
            )
        };
        ActiveKey {
            header_at_jwt: header(TokenTyp::AtJwt.as_str()),
            header_jwt: header(TokenTyp::Jwt.as_str()),
            kid,
            key,
        }
    }

    /// base64url(JWS header).
    pub fn encoded_header(&self, typ: TokenTyp) -> &str {
        match typ {
            TokenTyp::AtJwt => &self.header_at_jwt,
            TokenTyp::Jwt => &self.header_jwt,
        }
    }
}

/// A published (Pending, Active or Retired) key.
pub struct PublishedKey {
    pub kid: String,
    pub state: KeyState,
    pub ring: String,
    pub jwk: serde_json::Value,
    pub verifier: PublicVerifier,
}

/// One `SigningKey`'s ring, ready for the request path.
pub struct Ring {
    pub name: String,
    pub algorithm: SigningAlgorithm,
    pub pre_publish: Duration,
    pub active: Option<Arc<ActiveKey>>,
    pub published: Vec<Arc<PublishedKey>>,
}

/// A key of a ring as its source (status + Secret, or standalone memory)
/// describes it: state and private key PEM.
pub struct RingKeySource<'a> {
    pub kid: &'a str,
    pub state: KeyState,
    pub pkcs8_pem: &'a str,
}

impl Ring {
    /// Parses every key once. Keys whose PEM does not parse are left out
    /// (and logged); the active key is the one in state `Active` (the last
    /// one, should the source briefly list two).
    pub fn build(
        name: &str,
        algorithm: SigningAlgorithm,
        pre_publish: Duration,
        keys: &[RingKeySource<'_>],
    ) -> Ring {
        let mut active = None;
        let mut published = Vec::new();
        for source in keys {
            let parsed = match ParsedKey::from_pkcs8_pem(algorithm, source.pkcs8_pem) {
                Ok(parsed) => parsed,
                Err(error) => {
                    tracing::error!(ring = name, kid = source.kid, %error, "cannot use signing key");
                    continue;
                }
            };
            published.push(Arc::new(PublishedKey {
                kid: source.kid.to_owned(),
                state: source.state,
                ring: name.to_owned(),
                jwk: parsed.public_jwk(source.kid),
                verifier: parsed.verifier(),
            }));
            if source.state == KeyState::Active {
                active = Some(Arc::new(ActiveKey::new(source.kid.to_owned(), parsed)));
            }
        }
        Ring {
            name: name.to_owned(),
            algorithm,
            pre_publish,
            active,
            published,
        }
    }

    /// From a `SigningKey`'s spec and status plus its Secret's data
    /// (kid → PKCS#8 PEM). The status says which kid is active.
    pub fn from_status(
        name: &str,
        spec: &SigningKeySpec,
        status: &SigningKeyStatus,
        pems: &BTreeMap<String, String>,
    ) -> Ring {
        let mut sources = Vec::new();
        for key in &status.keys {
            let Some(pem) = pems.get(&key.kid) else {
                tracing::warn!(ring = name, kid = %key.kid, "the key Secret has no private key for this kid yet");
                continue;
            };
            let state = if status.active_kid.as_deref() == Some(key.kid.as_str()) {
                KeyState::Active
            } else if key.state == KeyState::Active {
                // activeKid is authoritative; a second Active entry only publishes.
                KeyState::Retired
            } else {
                key.state
            };
            sources.push(RingKeySource {
                kid: &key.kid,
                state,
                pkcs8_pem: pem,
            });
        }
        Ring::build(name, spec.algorithm, spec.pre_publish(), &sources)
    }
}

/// The JWKS response, serialized once per change.
pub struct JwksDocument {
    pub body: Bytes,
    /// Quoted strong ETag.
    pub etag: String,
    pub max_age: u64,
}

/// The longest JWKS cache lifetime we advertise.
const JWKS_MAX_AGE_CEILING: Duration = Duration::from_secs(300);

impl JwksDocument {
    fn build(rings: &HashMap<String, Arc<Ring>>) -> JwksDocument {
        let mut names: Vec<&String> = rings.keys().collect();
        names.sort();
        let mut keys = Vec::new();
        let mut shortest_pre_publish = JWKS_MAX_AGE_CEILING * 4;
        for name in names {
            let ring = &rings[name];
            shortest_pre_publish = shortest_pre_publish.min(ring.pre_publish);
            keys.extend(ring.published.iter().map(|k| k.jwk.clone()));
        }
        let body = serde_json::json!({ "keys": keys }).to_string();
        let digest = sigil_core::digest::sha256(body.as_bytes());
        // A cache that refreshes every max-age sees a pending key well
        // before it signs: a quarter of the shortest prePublish, at most 5 min.
        let max_age = (shortest_pre_publish / 4)
            .min(JWKS_MAX_AGE_CEILING)
            .as_secs();
        JwksDocument {
            etag: format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest[..16])),
            body: Bytes::from(body),
            max_age,
        }
    }
}

#[derive(Default)]
struct ClientIndex {
    /// Every object claiming a client id, oldest first; the first one owns it.
    by_id: HashMap<String, Vec<Arc<ClientEntry>>>,
    by_object: HashMap<ObjectKey, String>,
    /// Objects not loaded because they exceed the client limits.
    over_limits: HashSet<ObjectKey>,
    /// `federated_jwt`: ServiceAccount (namespace and name) → the client
    /// objects that list it. At most `SERVICE_ACCOUNTS_MAX_ITEMS` entries
    /// per loaded client.
    by_service_account: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
}

impl ClientIndex {
    fn remove_object(&mut self, object: &ObjectKey) {
        self.over_limits.remove(object);
        if let Some(client_id) = self.by_object.remove(object)
            && let Some(claims) = self.by_id.get_mut(&client_id)
        {
            if let Some(entry) = claims.iter().find(|entry| &entry.object == object) {
                for account in &entry.service_accounts {
                    let key = ObjectKey {
                        namespace: object.namespace.clone(),
                        name: account.clone(),
                    };
                    if let Some(objects) = self.by_service_account.get_mut(&key) {
                        objects.remove(object);
                        if objects.is_empty() {
                            self.by_service_account.remove(&key);
                        }
                    }
                }
            }
            claims.retain(|entry| &entry.object != object);
            if claims.is_empty() {
                self.by_id.remove(&client_id);
            }
        }
    }

    /// The clients that list a ServiceAccount and own their client id (a
    /// duplicate id's younger claimant gets nothing, as for every method).
    fn for_service_account(&self, account: &ObjectKey) -> Vec<Arc<ClientEntry>> {
        let Some(objects) = self.by_service_account.get(account) else {
            return Vec::new();
        };
        objects
            .iter()
            .filter_map(|object| {
                let owner = self.by_id.get(self.by_object.get(object)?)?.first()?;
                (&owner.object == object).then(|| owner.clone())
            })
            .collect()
    }

    /// Loads a client, or drops it (and any older version of it) when it
    /// exceeds the limits.
    fn load(&mut self, client: &OAuthClient, limits: &ClientLimits) {
        match ClientEntry::from_oauth_client(client, limits) {
            Ok(entry) => self.insert(Arc::new(entry)),
            Err(reason) => {
                let object = ObjectKey::of(&client.metadata);
                tracing::warn!(
                    client_id = %cap(&client.client_id()),
                    %reason,
                    "OAuthClient not loaded for token issuance: over the issuer's limits"
                );
                self.remove_object(&object);
                self.over_limits.insert(object);
            }
        }
    }

    fn insert(&mut self, entry: Arc<ClientEntry>) {
        self.over_limits.remove(&entry.object);
        self.remove_object(&entry.object);
        self.by_object
            .insert(entry.object.clone(), entry.client_id.clone());
        for account in &entry.service_accounts {
            self.by_service_account
                .entry(ObjectKey {
                    namespace: entry.object.namespace.clone(),
                    name: account.clone(),
                })
                .or_default()
                .insert(entry.object.clone());
        }
        let claims = self.by_id.entry(entry.client_id.clone()).or_default();
        claims.push(entry);
        claims.sort_by(|a, b| (a.created_at, &a.object).cmp(&(b.created_at, &b.object)));
    }
}

/// Key Secret data by Secret name: kid → PKCS#8 PEM.
type KeySecrets = HashMap<String, BTreeMap<String, String>>;

/// What the store knows about one `SigningKey` before it becomes a ring.
#[derive(Clone, Default)]
struct RingInputs {
    spec: Option<SigningKeySpec>,
    status: Option<SigningKeyStatus>,
    secret_name: Option<String>,
}

/// The issuer's whole view of the world.
pub struct Store {
    clients: RwLock<ClientIndex>,
    rings: ArcSwap<HashMap<String, Arc<Ring>>>,
    published_by_kid: ArcSwap<HashMap<String, Arc<PublishedKey>>>,
    jwks: ArcSwap<JwksDocument>,
    /// Cluster mode: SigningKey specs/status and key Secret data by name,
    /// combined into rings when either changes.
    ring_inputs: std::sync::Mutex<(HashMap<String, RingInputs>, KeySecrets)>,
    default_signing_key: String,
    synced: AtomicBool,
    client_limits: ClientLimits,
    /// OAuthResources by object, and what they say about audiences.
    resources: std::sync::Mutex<BTreeMap<ObjectKey, sigil_crds::OAuthResource>>,
    audiences: ArcSwap<AudienceIndex>,
}

impl Store {
    pub fn new(default_signing_key: &str) -> Self {
        Self::with_client_limits(default_signing_key, ClientLimits::default())
    }

    pub fn with_client_limits(default_signing_key: &str, client_limits: ClientLimits) -> Self {
        let rings = HashMap::new();
        Store {
            client_limits,
            clients: RwLock::new(ClientIndex::default()),
            jwks: ArcSwap::from_pointee(JwksDocument::build(&rings)),
            rings: ArcSwap::from_pointee(rings),
            published_by_kid: ArcSwap::from_pointee(HashMap::new()),
            ring_inputs: std::sync::Mutex::new((HashMap::new(), HashMap::new())),
            default_signing_key: default_signing_key.to_owned(),
            synced: AtomicBool::new(false),
            resources: std::sync::Mutex::new(BTreeMap::new()),
            audiences: ArcSwap::from_pointee(AudienceIndex::default()),
        }
    }

    pub fn default_signing_key(&self) -> &str {
        &self.default_signing_key
    }

    // ---- clients ----

    /// The client that owns `client_id`, if any.
    pub fn client(&self, client_id: &str) -> Option<Arc<ClientEntry>> {
        let index = self
            .clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        index
            .by_id
            .get(client_id)
            .and_then(|claims| claims.first().cloned())
    }

    /// `federated_jwt`: the clients in `namespace` that list ServiceAccount
    /// `name` and accept the method (each owning its client id), in object
    /// order.
    pub fn clients_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<Arc<ClientEntry>> {
        let index = self
            .clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        index.for_service_account(&ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn client_count(&self) -> usize {
        self.clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .by_id
            .len()
    }

    /// OAuthClient objects not loaded because they exceed the limits.
    pub fn clients_over_limits(&self) -> usize {
        self.clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .over_limits
            .len()
    }

    pub fn upsert_client(&self, client: &OAuthClient) {
        let object = ObjectKey::of(&client.metadata);
        let mut index = self
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !client.is_admitted() {
            index.remove_object(&object);
            return;
        }
        index.load(client, &self.client_limits);
    }

    pub fn insert_client_entry(&self, entry: ClientEntry) {
        let mut index = self
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        index.insert(Arc::new(entry));
    }

    pub fn remove_client(&self, object: &ObjectKey) {
        let mut index = self
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        index.remove_object(object);
    }

    /// Replaces every client (a watcher's re-list).
    pub fn replace_clients(&self, clients: &[OAuthClient]) {
        let mut fresh = ClientIndex::default();
        for client in clients.iter().filter(|c| c.is_admitted()) {
            fresh.load(client, &self.client_limits);
        }
        *self
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
    }

    // ---- audiences (OAuthResources) ----

    /// What the OAuthResources say about audiences now.
    pub fn audiences(&self) -> Arc<AudienceIndex> {
        self.audiences.load_full()
    }

    pub fn upsert_resource(&self, resource: &sigil_crds::OAuthResource) {
        self.edit_resources(|all| {
            all.insert(ObjectKey::of(&resource.metadata), resource.clone());
        });
    }

    pub fn remove_resource(&self, object: &ObjectKey) {
        self.edit_resources(|all| {
            all.remove(object);
        });
    }

    /// Replaces every OAuthResource (a watcher's re-list).
    pub fn replace_resources(&self, resources: &[sigil_crds::OAuthResource]) {
        self.edit_resources(|all| {
            *all = resources
                .iter()
                .map(|r| (ObjectKey::of(&r.metadata), r.clone()))
                .collect();
        });
    }

    fn edit_resources(
        &self,
        edit: impl FnOnce(&mut BTreeMap<ObjectKey, sigil_crds::OAuthResource>),
    ) {
        let mut all = self
            .resources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        edit(&mut all);
        self.audiences
            .store(Arc::new(AudienceIndex::build(all.values())));
    }

    // ---- signing keys ----

    /// The ring that signs tokens for a client's `spec.signingKey`.
    pub fn ring(&self, name: Option<&str>) -> Option<Arc<Ring>> {
        let name = name.unwrap_or(&self.default_signing_key);
        self.rings.load().get(name).cloned()
    }

    /// A published key by kid, from any ring.
    pub fn published_key(&self, kid: &str) -> Option<Arc<PublishedKey>> {
        self.published_by_kid.load().get(kid).cloned()
    }

    pub fn published_key_count(&self) -> usize {
        self.published_by_kid.load().len()
    }

    pub fn jwks(&self) -> Arc<JwksDocument> {
        self.jwks.load_full()
    }

    /// Installs (or replaces) a ring and republishes the JWKS.
    pub fn set_ring(&self, ring: Ring) {
        let mut rings = HashMap::clone(&self.rings.load());
        rings.insert(ring.name.clone(), Arc::new(ring));
        self.publish_rings(rings);
    }

    pub fn remove_ring(&self, name: &str) {
        let mut rings = HashMap::clone(&self.rings.load());
        if rings.remove(name).is_some() {
            self.publish_rings(rings);
        }
    }

    fn publish_rings(&self, rings: HashMap<String, Arc<Ring>>) {
        let by_kid = rings
            .values()
            .flat_map(|ring| ring.published.iter())
            .map(|key| (key.kid.clone(), key.clone()))
            .collect();
        let jwks = JwksDocument::build(&rings);
        if jwks.etag != self.jwks.load().etag {
            tracing::info!(
                keys = rings.values().map(|r| r.published.len()).sum::<usize>(),
                "JWKS changed"
            );
        }
        self.published_by_kid.store(Arc::new(by_kid));
        self.jwks.store(Arc::new(jwks));
        self.rings.store(Arc::new(rings));
    }

    /// Cluster mode: a `SigningKey` was added or changed.
    pub fn upsert_signing_key(&self, key: &sigil_crds::SigningKey) {
        let name = key.metadata.name.clone().unwrap_or_default();
        let mut inputs = self.ring_inputs.lock().unwrap_or_else(|p| p.into_inner());
        let entry = inputs.0.entry(name.clone()).or_default();
        entry.spec = Some(key.spec.clone());
        entry.status = key.status.clone();
        entry.secret_name = Some(
            key.status
                .as_ref()
                .and_then(|s| s.secret_name.clone())
                .unwrap_or_else(|| key.secret_name()),
        );
        self.rebuild_ring(&name, &inputs.0, &inputs.1);
    }

    pub fn remove_signing_key(&self, name: &str) {
        let mut inputs = self.ring_inputs.lock().unwrap_or_else(|p| p.into_inner());
        inputs.0.remove(name);
        self.remove_ring(name);
    }

    /// Cluster mode: a key Secret was added or changed (data: kid → PEM).
    pub fn upsert_key_secret(&self, secret_name: &str, pems: BTreeMap<String, String>) {
        let mut inputs = self.ring_inputs.lock().unwrap_or_else(|p| p.into_inner());
        let (rings, secrets) = &mut *inputs;
        if secrets.get(secret_name) == Some(&pems) {
            return;
        }
        secrets.insert(secret_name.to_owned(), pems);
        self.rebuild_rings_of_secret(secret_name, rings, secrets);
    }

    pub fn remove_key_secret(&self, secret_name: &str) {
        let mut inputs = self.ring_inputs.lock().unwrap_or_else(|p| p.into_inner());
        let (rings, secrets) = &mut *inputs;
        if secrets.remove(secret_name).is_none() {
            return;
        }
        self.rebuild_rings_of_secret(secret_name, rings, secrets);
    }

    /// Rebuilds every ring whose private keys live in `secret_name`.
    fn rebuild_rings_of_secret(
        &self,
        secret_name: &str,
        rings: &HashMap<String, RingInputs>,
        secrets: &HashMap<String, BTreeMap<String, String>>,
    ) {
        let affected: Vec<&String> = rings
            .iter()
            .filter(|(_, i)| i.secret_name.as_deref() == Some(secret_name))
            .map(|(name, _)| name)
            .collect();
        for name in affected {
            self.rebuild_ring(name, rings, secrets);
        }
    }

    fn rebuild_ring(
        &self,
        name: &str,
        rings: &HashMap<String, RingInputs>,
        secrets: &HashMap<String, BTreeMap<String, String>>,
    ) {
        let Some(inputs) = rings.get(name) else {
            return;
        };
        let (Some(spec), status) = (&inputs.spec, inputs.status.clone().unwrap_or_default()) else {
            return;
        };
        let empty = BTreeMap::new();
        let pems = inputs
            .secret_name
            .as_ref()
            .and_then(|s| secrets.get(s))
            .unwrap_or(&empty);
        let mut ring = Ring::from_status(name, spec, &status, pems);
        // The status may name a new active kid before the Secret event with
        // its private key arrives (two watches, no ordering between them):
        // keep signing with the previous key while it is still published.
        if ring.active.is_none()
            && let Some(previous) = self.rings.load().get(name).and_then(|r| r.active.clone())
            && ring.published.iter().any(|k| k.kid == previous.kid)
        {
            tracing::warn!(
                ring = name,
                kid = %previous.kid,
                "the active key's private key is not in the Secret yet; still signing with the previous key"
            );
            ring.active = Some(previous);
        }
        tracing::info!(
            ring = name,
            active_kid = ring
                .active
                .as_ref()
                .map(|a| a.kid.as_str())
                .unwrap_or("none"),
            published = ring.published.len(),
            "signing key ring updated"
        );
        self.set_ring(ring);
    }

    // ---- readiness ----

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Ready: caches synced and the default ring has an active key.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
            && self.ring(None).is_some_and(|ring| ring.active.is_some())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use sigil_core::keys::{generate_pkcs8_der, pkcs8_der_to_pem};

    /// A ring with one active key of `algorithm` plus, optionally, a pending
    /// one; returns the ring and the PEMs by kid.
    pub fn ring_with_keys(name: &str, algorithm: SigningAlgorithm, states: &[KeyState]) -> Ring {
        let pems: Vec<(String, String)> = states
            .iter()
            .map(|_| {
                let pem = pkcs8_der_to_pem(&generate_pkcs8_der(algorithm, 2048).unwrap());
                let kid = ParsedKey::from_pkcs8_pem(algorithm, &pem)
                    .unwrap()
                    .thumbprint();
                (kid, pem)
            })
            .collect();
        let sources: Vec<RingKeySource<'_>> = pems
            .iter()
            .zip(states)
            .map(|((kid, pem), state)| RingKeySource {
                kid,
                state: *state,
                pkcs8_pem: pem,
            })
            .collect();
        Ring::build(name, algorithm, Duration::from_secs(3600), &sources)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::ring_with_keys;
    use super::*;

    /// A client the operator admitted with everything it requests.
    fn oauth_client(name: &str, spec: serde_json::Value, created: &str) -> OAuthClient {
        let mut client = OAuthClient::new(name, serde_json::from_value(spec).unwrap());
        client.metadata.namespace = Some("ns".into());
        client.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().unwrap()),
        );
        client.status = Some(sigil_crds::OAuthClientStatus {
            client_id: Some(client.client_id()),
            grant: Some(sigil_crds::grant::as_requested(&client.spec)),
            ..Default::default()
        });
        client
    }

    #[test]
    fn only_admitted_clients_are_served_and_only_with_their_grant() {
        let store = Store::new("default");
        let mut client = oauth_client(
            "a",
            serde_json::json!({
                "audiences": ["event", "file"], "scopes": ["event.read", "event.create"],
                "additionalClaims": {"stt": 1, "roles": ["admin"]},
            }),
            "2026-01-01T00:00:00Z",
        );
        let admitted = client.status.clone();
        // No grant in status yet (or a refused client): not served.
        client.status = None;
        store.upsert_client(&client);
        assert!(store.client("a.ns").is_none());
        // A grant recorded for another client id: not served either.
        client.status = admitted.clone().map(|mut s| {
            s.client_id = Some("old.ns".into());
            s
        });
        store.upsert_client(&client);
        assert!(store.client("a.ns").is_none());
        // Served with requested ∩ granted.
        client.status = admitted.map(|mut s| {
            s.grant = Some(sigil_crds::EffectiveGrant {
                audiences: vec!["event".into()],
                scopes: vec!["event.read".into()],
                claims: vec!["stt".into()],
                denied: Vec::new(),
            });
            s
        });
        store.upsert_client(&client);
        let entry = store.client("a.ns").expect("served");
        assert_eq!(entry.audiences, ["event"]);
        assert_eq!(entry.scopes, ["event.read"]);
        assert_eq!(entry.additional_claims_json, r#""stt":1"#);
        // Revoked: the operator writes an empty grant.
        client.status.as_mut().expect("status").grant = Some(Default::default());
        store.upsert_client(&client);
        let entry = store.client("a.ns").expect("still known");
        assert!(entry.audiences.is_empty() && entry.scopes.is_empty());
    }

    #[test]
    fn duplicate_client_id_belongs_to_the_oldest_object() {
        let store = Store::new("default");
        let newer = oauth_client(
            "b",
            serde_json::json!({"clientId": "same", "scopes": ["b"]}),
            "2026-01-02T00:00:00Z",
        );
        let older = oauth_client(
            "a",
            serde_json::json!({"clientId": "same", "scopes": ["a"]}),
            "2026-01-01T00:00:00Z",
        );
        store.upsert_client(&newer);
        store.upsert_client(&older);
        assert_eq!(store.client("same").unwrap().scopes, vec!["a"]);
        store.remove_client(&ObjectKey {
            namespace: "ns".into(),
            name: "a".into(),
        });
        assert_eq!(store.client("same").unwrap().scopes, vec!["b"]);
        assert_eq!(store.client_count(), 1);
    }

    #[test]
    fn changing_client_id_drops_the_old_one() {
        let store = Store::new("default");
        store.upsert_client(&oauth_client(
            "a",
            serde_json::json!({"clientId": "one"}),
            "2026-01-01T00:00:00Z",
        ));
        store.upsert_client(&oauth_client(
            "a",
            serde_json::json!({"clientId": "two"}),
            "2026-01-01T00:00:00Z",
        ));
        assert!(store.client("one").is_none());
        assert!(store.client("two").is_some());
    }

    #[test]
    fn additional_claims_become_a_json_fragment() {
        let client = oauth_client(
            "a",
            serde_json::json!({"additionalClaims": {"stt": 1, "tenant": "x"}}),
            "2026-01-01T00:00:00Z",
        );
        let entry = ClientEntry::from_oauth_client(&client, &ClientLimits::default()).unwrap();
        assert_eq!(entry.additional_claims_json, r#""stt":1,"tenant":"x""#);
    }

    #[test]
    fn reserved_additional_claims_never_reach_a_token() {
        // What the API server lets through (`null`) or a path around it.
        let entry = ClientEntry::from_oauth_client(
            &oauth_client(
                "a",
                serde_json::json!({"additionalClaims": {"iss": "https://attacker.example", "sub": "admin", "exp": null, "tenant": "x"}}),
                "2026-01-01T00:00:00Z",
            ),
            &ClientLimits::default(),
        )
        .unwrap();
        assert_eq!(entry.additional_claims_json, r#""tenant":"x""#);
    }

    #[test]
    fn a_new_active_kid_without_its_private_key_keeps_the_previous_signer() {
        use sigil_core::keys::{generate_pkcs8_der, pkcs8_der_to_pem};
        let pem = || pkcs8_der_to_pem(&generate_pkcs8_der(SigningAlgorithm::ES256, 0).unwrap());
        let (pem1, pem2) = (pem(), pem());
        let kid = |p: &str| {
            ParsedKey::from_pkcs8_pem(SigningAlgorithm::ES256, p)
                .unwrap()
                .thumbprint()
        };
        let (kid1, kid2) = (kid(&pem1), kid(&pem2));
        let key = |keys: serde_json::Value, active: &str| -> sigil_crds::SigningKey {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "sigil.dev/v1alpha1", "kind": "SigningKey",
                "metadata": {"name": "default", "namespace": "sigil-system"},
                "spec": {},
                "status": {"activeKid": active, "keys": keys, "secretName": "default-keys"},
            }))
            .unwrap()
        };
        let at = "2026-01-01T00:00:00Z";
        let store = Store::new("default");
        store.upsert_key_secret(
            "default-keys",
            BTreeMap::from([(kid1.clone(), pem1.clone())]),
        );
        store.upsert_signing_key(&key(
            serde_json::json!([{"kid": kid1, "state": "Active", "createdAt": at, "activatesAt": at}]),
            &kid1,
        ));
        assert_eq!(store.ring(None).unwrap().active.as_ref().unwrap().kid, kid1);
        // Status moves to kid2 before the Secret has it.
        store.upsert_signing_key(&key(
            serde_json::json!([
                {"kid": kid1, "state": "Retired", "createdAt": at, "activatesAt": at, "retiresAt": at},
                {"kid": kid2, "state": "Active", "createdAt": at, "activatesAt": at},
            ]),
            &kid2,
        ));
        assert_eq!(store.ring(None).unwrap().active.as_ref().unwrap().kid, kid1);
        store.upsert_key_secret(
            "default-keys",
            BTreeMap::from([(kid1, pem1), (kid2.clone(), pem2)]),
        );
        assert_eq!(store.ring(None).unwrap().active.as_ref().unwrap().kid, kid2);
        assert_eq!(store.published_key_count(), 2);
    }

    #[test]
    fn jwks_changes_etag_only_when_keys_change() {
        let store = Store::new("default");
        let empty_etag = store.jwks().etag.clone();
        store.set_ring(ring_with_keys(
            "default",
            SigningAlgorithm::ES256,
            &[KeyState::Active],
        ));
        let first = store.jwks();
        assert_ne!(first.etag, empty_etag);
        // 3600 s prePublish → max-age = min(900, 300).
        assert_eq!(first.max_age, 300);
        assert!(!store.is_ready(), "not synced yet");
        store.mark_synced();
        assert!(store.is_ready());
    }
}
