//! Standalone mode (DESIGN.md §8): the same store fed from OAuthClient and
//! SigningKey manifests in a folder and a JSON secrets file, no cluster.
//! Signing keys are generated at start and rotated in memory per their
//! spec (or kept in `--state-dir`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use sigil_core::keys::{self, KeyError};
use sigil_core::secret::{RandomError, generate_client_secret};
use sigil_crds::ring::{self, RingPolicy};
use sigil_crds::{
    AuthMethod, KeyState, KeyStatus, OAuthClient, OAuthClientStatus, SecretVerifier,
    SigningAlgorithm, SigningKey, SigningKeySpec,
};

use crate::index::{Ring, RingKeySource, Store};

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("cannot read the manifests folder {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("{path}: document {index} ({kind}) does not match the {kind} schema: {reason}")]
    Manifest {
        path: PathBuf,
        index: usize,
        kind: String,
        reason: String,
    },
    #[error(
        "the secrets file {path} must be a JSON object {{\"<client_id>\": \"<secret>\"}}: {reason}"
    )]
    SecretsFormat { path: PathBuf, reason: String },
    #[error("cannot write the secrets file {path}: {source}")]
    WriteSecrets {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key {name}: {source}")]
    Key { name: String, source: KeyError },
    #[error("cannot use the state folder {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// What the manifests folder declares.
#[derive(Default)]
pub struct Manifests {
    pub clients: Vec<OAuthClient>,
    pub signing_keys: Vec<SigningKey>,
    /// Their token formats and scopes apply; their grants do not: the
    /// manifests are the standalone issuer's own, trusted configuration.
    pub resources: Vec<sigil_crds::OAuthResource>,
}

/// One Sigil resource of a manifest, checked as the API server would.
pub enum Document {
    Client(Box<OAuthClient>),
    SigningKey(Box<SigningKey>),
    Resource(Box<sigil_crds::OAuthResource>),
}

impl Manifests {
    pub fn add(&mut self, document: Document) {
        match document {
            Document::Client(client) => self.clients.push(*client),
            Document::SigningKey(key) => self.signing_keys.push(*key),
            Document::Resource(resource) => self.resources.push(*resource),
        }
    }
}

/// Reads every `*.yaml`/`*.yml` file of `dir` (several documents per file
/// allowed), handing each Sigil document to `sink` as it is parsed rather
/// than collecting them: a folder of 100,000 clients then never holds more
/// than one parsed document at a time. Other kinds are skipped with a note.
pub fn load_manifests_with(
    dir: &Path,
    sink: &mut dyn FnMut(Document) -> Result<(), StandaloneError>,
) -> Result<(), StandaloneError> {
    let entries = std::fs::read_dir(dir).map_err(|source| StandaloneError::ReadDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml")
        })
        .collect();
    paths.sort();
    for path in paths {
        let file = std::fs::File::open(&path).map_err(|source| StandaloneError::Read {
            path: path.clone(),
            source,
        })?;
        parse_documents_with(&path, std::io::BufReader::new(file), sink)?;
    }
    Ok(())
}

/// Parses a multi-document YAML text into `manifests`, refusing what the
/// CRD schema refuses (`sigil_crds::validate`).
pub fn parse_documents(
    path: &Path,
    text: &str,
    manifests: &mut Manifests,
) -> Result<(), StandaloneError> {
    parse_documents_with(path, text.as_bytes(), &mut |document| {
        manifests.add(document);
        Ok(())
    })
}

/// [`parse_documents`] from a reader, one document at a time into `sink`.
fn parse_documents_with(
    path: &Path,
    mut reader: impl std::io::Read,
    sink: &mut dyn FnMut(Document) -> Result<(), StandaloneError>,
) -> Result<(), StandaloneError> {
    // The default budget (1,024 documents) is for untrusted input; a
    // manifests folder may hold tens of thousands of clients in one file.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_nodes: 50_000_000,
            max_events: 100_000_000,
            max_reader_input_bytes: None,
        },
        // YAML 1.2 booleans only: an untyped parse must not turn a
        // namespace `n` or a scope `no` into `false`.
        strict_booleans: true,
    };
    let documents = serde_saphyr::read_with_options::<_, serde_json::Value>(&mut reader, options);
    for (index, document) in documents.enumerate() {
        let document = document.map_err(|e| StandaloneError::Yaml {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if document.is_null() {
            continue;
        }
        let kind = document
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let bad = |reason: String| StandaloneError::Manifest {
            path: path.to_owned(),
            index,
            kind: kind.clone(),
            reason,
        };
        let document = match kind.as_str() {
            "OAuthClient" => {
                let mut client: OAuthClient =
                    serde_json::from_value(document).map_err(|e| bad(e.to_string()))?;
                // What the API server's schema refuses is refused here too,
                // in its words: no API server sees these manifests.
                sigil_crds::validate::validate_oauth_client(&client)
                    .map_err(|errors| bad(field_errors(&errors)))?;
                client
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                Document::Client(Box::new(client))
            }
            "SigningKey" => {
                let key: SigningKey =
                    serde_json::from_value(document).map_err(|e| bad(e.to_string()))?;
                sigil_crds::validate::validate_signing_key(&key)
                    .map_err(|errors| bad(field_errors(&errors)))?;
                Document::SigningKey(Box::new(key))
            }
            "OAuthResource" => {
                let mut resource: sigil_crds::OAuthResource =
                    serde_json::from_value(document).map_err(|e| bad(e.to_string()))?;
                resource
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                Document::Resource(Box::new(resource))
            }
            other => {
                tracing::debug!(path = %path.display(), index, kind = other, "skipping a document that is not a Sigil resource");
                continue;
            }
        };
        sink(document)?;
    }
    Ok(())
}

/// The errors of `validate`, as one reason.
fn field_errors(errors: &[sigil_crds::validate::FieldError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

fn uses_secret(client: &OAuthClient) -> bool {
    client.spec.auth_methods().iter().any(|m| {
        matches!(
            m,
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
        )
    })
}

/// The secrets file while manifests are loaded (missing = empty): the
/// secrets it holds, and those generated for clients that lacked one,
/// written back (0600) by [`SecretBook::save`] once every manifest has
/// loaded. Says on stderr which client ids got one, never the secret.
pub struct SecretBook {
    path: PathBuf,
    secrets: BTreeMap<String, String>,
    generated: Vec<String>,
}

impl SecretBook {
    pub fn open(path: &Path) -> Result<Self, StandaloneError> {
        let secrets = match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => BTreeMap::new(),
            Ok(text) => {
                serde_json::from_str(&text).map_err(|e| StandaloneError::SecretsFormat {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(StandaloneError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(SecretBook {
            path: path.to_owned(),
            secrets,
            generated: Vec::new(),
        })
    }

    /// Generates a secret for `client` if it authenticates with one and
    /// the file has none for it.
    pub fn ensure(&mut self, client: &OAuthClient) -> Result<(), StandaloneError> {
        if uses_secret(client) {
            let id = client.client_id();
            if !self.secrets.contains_key(&id) {
                self.secrets.insert(id.clone(), generate_client_secret()?);
                self.generated.push(id);
            }
        }
        Ok(())
    }

    pub fn secrets(&self) -> &BTreeMap<String, String> {
        &self.secrets
    }

    /// Writes the file if a secret was generated, naming the ids (never
    /// the secrets; a long list is cut short).
    pub fn save(self) -> Result<BTreeMap<String, String>, StandaloneError> {
        if !self.generated.is_empty() {
            write_secrets(&self.path, &self.secrets)?;
            const NAMED: usize = 20;
            let generated = &self.generated;
            let mut named = generated[..generated.len().min(NAMED)].join(", ");
            if generated.len() > NAMED {
                named.push_str(&format!(" and {} more", generated.len() - NAMED));
            }
            eprintln!(
                "sigil issuer: generated client secrets for {named}; written to {}",
                self.path.display()
            );
        }
        Ok(self.secrets)
    }
}

fn write_secrets(path: &Path, secrets: &BTreeMap<String, String>) -> Result<(), StandaloneError> {
    let failed = |source| StandaloneError::WriteSecrets {
        path: path.to_owned(),
        source,
    };
    let mut text =
        serde_json::to_string_pretty(secrets).map_err(|e| failed(std::io::Error::other(e)))?;
    text.push('\n');
    write_private_file(path, text.as_bytes()).map_err(failed)
}

/// Replaces `path` atomically with `contents`, mode 0600 (the agent's
/// crash-safe write: temp file, fsync, rename, fsync of the folder).
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sigil_core::fs::write_atomically(dir, name, contents, 0o600)
}

/// The client with the status the operator would have written: the
/// verifier of its secret.
pub fn with_verifier(client: &OAuthClient, secrets: &BTreeMap<String, String>) -> OAuthClient {
    let mut client = client.clone();
    let verifiers = secrets
        .get(&client.client_id())
        .map(|secret| {
            vec![SecretVerifier {
                sha256: sigil_crds::secret_verifier(secret),
                created_at: Time(jiff::Timestamp::now()),
                expires_at: None,
            }]
        })
        .unwrap_or_default();
    // The manifests are the standalone issuer's own configuration: what
    // they request is granted (there are no OAuthResources to ask).
    let grant = sigil_crds::grant::as_requested(&client.spec);
    client.status = Some(OAuthClientStatus {
        client_id: Some(client.client_id()),
        secret_verifiers: verifiers,
        grant: Some(grant),
        ..Default::default()
    });
    client
}

/// Puts every client into the store.
pub fn load_clients(store: &Store, clients: &[OAuthClient], secrets: &BTreeMap<String, String>) {
    for client in clients {
        load_client(store, client, secrets);
    }
}

/// Puts one client into the store, unless an earlier manifest took its id.
pub fn load_client(store: &Store, client: &OAuthClient, secrets: &BTreeMap<String, String>) {
    let id = client.client_id();
    if let Some(first) = store.client(&id) {
        tracing::warn!(client_id = %id, first = %first.object, "duplicate client id in the manifests; the first one keeps it");
        return;
    }
    if client
        .spec
        .auth_methods()
        .contains(&AuthMethod::FederatedJwt)
    {
        tracing::warn!(client_id = %id, "federated_jwt needs a cluster's service-account issuer: in standalone mode this client cannot authenticate with it");
    }
    store.upsert_client(&with_verifier(client, secrets));
}

/// The whole standalone configuration: clients straight into `store` as
/// their documents are parsed (so loading 100,000 of them holds one parsed
/// document at a time, and the store's entries are not scattered among
/// freed parse trees), secrets generated for those lacking one and the
/// file written once everything has loaded. Returns the SigningKeys and
/// OAuthResources (`clients` stays empty) and every client secret.
pub fn load_into(
    store: &Store,
    manifests_dir: &Path,
    secrets_path: &Path,
) -> Result<(Manifests, BTreeMap<String, String>), StandaloneError> {
    let mut book = SecretBook::open(secrets_path)?;
    let mut rest = Manifests::default();
    load_manifests_with(manifests_dir, &mut |document| {
        match document {
            Document::Client(client) => {
                book.ensure(&client)?;
                load_client(store, &client, book.secrets());
            }
            other => rest.add(other),
        }
        Ok(())
    })?;
    Ok((rest, book.save()?))
}

// ------------------------------------------------------------ key rings

/// A SigningKey's ring kept in memory (and optionally on disk), rotated by
/// the operator's planner ([`ring::plan`]): the same schedule, the same
/// states, the same `KeyStatus` records the operator writes to status. The
/// private keys live next to it, by kid.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryRing {
    name: String,
    #[serde(skip)]
    spec: Option<SigningKeySpec>,
    keys: Vec<KeyStatus>,
    /// PKCS#8 PEM private keys by kid.
    private_keys: BTreeMap<String, String>,
    /// When the planner next has something to do.
    #[serde(skip)]
    requeue_at: Option<Timestamp>,
}

/// The state file of Sigil ≤ 0.1, before the ring used the operator's
/// planner: read once and converted, so an upgrade keeps its keys.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyRing {
    name: String,
    keys: Vec<LegacyKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyKey {
    kid: String,
    state: KeyState,
    /// Unix seconds.
    activates_at: i64,
    retires_at: Option<i64>,
    pkcs8_pem: String,
}

impl From<LegacyRing> for MemoryRing {
    fn from(legacy: LegacyRing) -> Self {
        let time = |secs: i64| Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH));
        MemoryRing {
            name: legacy.name,
            spec: None,
            keys: legacy
                .keys
                .iter()
                .map(|k| KeyStatus {
                    kid: k.kid.clone(),
                    state: k.state,
                    created_at: time(k.activates_at),
                    activates_at: time(k.activates_at),
                    retires_at: k.retires_at.map(time),
                })
                .collect(),
            private_keys: legacy
                .keys
                .into_iter()
                .map(|k| (k.kid, k.pkcs8_pem))
                .collect(),
            requeue_at: None,
        }
    }
}

impl MemoryRing {
    fn spec(&self) -> SigningKeySpec {
        self.spec.clone().unwrap_or(SigningKeySpec {
            algorithm: SigningAlgorithm::ES256,
            rsa_bits: None,
            rotation_interval: None,
            pre_publish: None,
            retire_after: None,
        })
    }

    /// Moves the ring to `now` (blocking: may generate a key). `force`
    /// rotates now, still pre-published. Returns whether anything changed.
    pub fn advance(&mut self, now: Timestamp, force: bool) -> Result<bool, StandaloneError> {
        let spec = self.spec();
        // A key whose private half is gone cannot sign or be published.
        let usable: Vec<KeyStatus> = self
            .keys
            .iter()
            .filter(|k| self.private_keys.contains_key(&k.kid))
            .cloned()
            .collect();
        let mut plan = ring::plan(&RingPolicy::from_spec(&spec), &usable, now, force);
        if plan.new_key.is_some() {
            let key = keys::generate(spec.algorithm, spec.rsa_bits()).map_err(|source| {
                StandaloneError::Key {
                    name: self.name.clone(),
                    source,
                }
            })?;
            self.private_keys.insert(key.kid.clone(), key.pkcs8_pem);
            plan = plan.with_new_key(key.kid);
        }
        let changed = plan.keys != self.keys;
        self.private_keys
            .retain(|kid, _| plan.keys.iter().any(|k| &k.kid == kid));
        self.keys = plan.keys;
        self.requeue_at = plan.requeue_at;
        Ok(changed)
    }

    /// When [`Self::advance`] next has something to do.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.requeue_at
    }

    pub fn to_ring(&self) -> Ring {
        let spec = self.spec();
        let sources: Vec<RingKeySource<'_>> = self
            .keys
            .iter()
            .filter_map(|k| {
                self.private_keys.get(&k.kid).map(|pem| RingKeySource {
                    kid: &k.kid,
                    state: k.state,
                    pkcs8_pem: pem,
                })
            })
            .collect();
        Ring::build(&self.name, spec.algorithm, spec.pre_publish(), &sources)
    }

    pub fn active_kid(&self) -> Option<&str> {
        self.keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .map(|k| k.kid.as_str())
    }

    pub fn kids(&self) -> Vec<(String, KeyState)> {
        self.keys.iter().map(|k| (k.kid.clone(), k.state)).collect()
    }
}

fn state_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("signing-key-{name}.json"))
}

/// Loads a ring from the state folder, or starts an empty one.
fn open_ring(
    name: &str,
    spec: SigningKeySpec,
    state_dir: Option<&Path>,
) -> Result<MemoryRing, StandaloneError> {
    if let Some(dir) = state_dir {
        let path = state_file(dir, name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut ring: MemoryRing = serde_json::from_str(&text)
                    .or_else(|e| {
                        serde_json::from_str::<LegacyRing>(&text)
                            .map(MemoryRing::from)
                            .map_err(|_| e)
                    })
                    .map_err(|e| StandaloneError::State {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                let algorithm_matches = ring
                    .private_keys
                    .values()
                    .all(|pem| keys::kid(spec.algorithm, pem).is_ok());
                if algorithm_matches {
                    ring.spec = Some(spec);
                    return Ok(ring);
                }
                tracing::warn!(
                    ring = name,
                    "the stored keys do not match the spec's algorithm; starting a new ring"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StandaloneError::State {
                    path,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(MemoryRing {
        name: name.to_owned(),
        spec: Some(spec),
        keys: Vec::new(),
        private_keys: BTreeMap::new(),
        requeue_at: None,
    })
}

fn save_ring(ring: &MemoryRing, state_dir: Option<&Path>) -> Result<(), StandaloneError> {
    let Some(dir) = state_dir else { return Ok(()) };
    let path = state_file(dir, &ring.name);
    let failed = |reason: String| StandaloneError::State {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    let text = serde_json::to_string(ring).map_err(|e| failed(e.to_string()))?;
    write_private_file(&path, text.as_bytes()).map_err(|e| failed(e.to_string()))
}

/// Creates the rings of `signing_keys` (plus a default ES256 ring named
/// `default_name` if none has that name), installs them in the store, and
/// returns them for [`rotate_forever`].
pub async fn start_rings(
    store: &Store,
    signing_keys: &[SigningKey],
    default_name: &str,
    state_dir: Option<&Path>,
) -> Result<Vec<MemoryRing>, StandaloneError> {
    let mut specs: Vec<(String, SigningKeySpec)> = signing_keys
        .iter()
        .map(|k| (k.metadata.name.clone().unwrap_or_default(), k.spec.clone()))
        .collect();
    if !specs.iter().any(|(name, _)| name == default_name) {
        specs.push((
            default_name.to_owned(),
            serde_json::from_value(serde_json::json!({})).map_err(|e| StandaloneError::State {
                path: PathBuf::new(),
                reason: e.to_string(),
            })?,
        ));
    }
    let mut rings = Vec::new();
    for (name, spec) in specs {
        let ring = open_ring(&name, spec, state_dir)?;
        let state_dir = state_dir.map(Path::to_owned);
        let ring = tokio::task::spawn_blocking(move || -> Result<MemoryRing, StandaloneError> {
            let mut ring = ring;
            ring.advance(Timestamp::now(), false)?;
            save_ring(&ring, state_dir.as_deref())?;
            Ok(ring)
        })
        .await
        .map_err(|e| StandaloneError::State {
            path: PathBuf::new(),
            reason: e.to_string(),
        })??;
        tracing::info!(ring = %ring.name, active_kid = ring.active_kid().unwrap_or("none"), "signing key ring ready");
        store.set_ring(ring.to_ring());
        rings.push(ring);
    }
    Ok(rings)
}

/// Rotates one ring on schedule, forever.
pub async fn rotate_forever(store: Arc<Store>, mut ring: MemoryRing, state_dir: Option<PathBuf>) {
    loop {
        // Look again at the planned time, and at least hourly; a failure
        // leaves no plan behind, so it is retried within a second.
        let wait = ring
            .next_wake()
            .map(|at| at.duration_since(Timestamp::now()).as_secs())
            .unwrap_or(1)
            .clamp(1, 3600);
        tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())).await;
        let state = state_dir.clone();
        let result = tokio::task::spawn_blocking(move || {
            let changed = ring.advance(Timestamp::now(), false);
            (ring, changed, state)
        })
        .await;
        let Ok((advanced, changed, state)) = result else {
            tracing::error!("the key rotation task panicked; rotation stops");
            return;
        };
        ring = advanced;
        match changed {
            Ok(true) => {
                if let Err(error) = save_ring(&ring, state.as_deref()) {
                    tracing::warn!(%error, "could not save the key ring");
                }
                tracing::info!(ring = %ring.name, active_kid = ring.active_kid().unwrap_or("none"), "rotated signing keys");
                store.set_ring(ring.to_ring());
            }
            Ok(false) => {}
            Err(error) => tracing::error!(%error, "key rotation failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: serde_json::Value) -> MemoryRing {
        open_ring("r", serde_json::from_value(spec).unwrap(), None).unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn ring_pre_publishes_then_activates_then_retires() {
        let mut r = ring(
            serde_json::json!({"rotationInterval": "100s", "prePublish": "20s", "retireAfter": "30s"}),
        );
        r.advance(at(1000), false).unwrap();
        let first = r.active_kid().unwrap().to_owned();
        assert_eq!(r.next_wake(), Some(at(1080)));
        // At 1080 a successor is published but does not sign yet.
        assert!(r.advance(at(1080), false).unwrap());
        assert_eq!(r.active_kid(), Some(first.as_str()));
        let states: Vec<KeyState> = r.kids().iter().map(|k| k.1).collect();
        assert_eq!(states, vec![KeyState::Active, KeyState::Pending]);
        assert_eq!(r.next_wake(), Some(at(1100)));
        assert_eq!(r.to_ring().published.len(), 2, "the successor is published");
        // At 1100 it signs; the old key stays published until 1130.
        r.advance(at(1100), false).unwrap();
        assert_ne!(r.active_kid(), Some(first.as_str()));
        assert_eq!(r.kids()[0], (first.clone(), KeyState::Retired));
        r.advance(at(1129), false).unwrap();
        assert!(r.kids().iter().any(|k| k.0 == first));
        r.advance(at(1130), false).unwrap();
        assert!(!r.kids().iter().any(|k| k.0 == first));
        assert_eq!(
            r.private_keys.len(),
            1,
            "a dropped key's private half goes too"
        );
    }

    #[test]
    fn forced_rotation_still_pre_publishes() {
        let mut r = ring(serde_json::json!({"prePublish": "5s"}));
        r.advance(at(0), false).unwrap();
        let first = r.active_kid().unwrap().to_owned();
        r.advance(at(10), true).unwrap();
        assert_eq!(r.active_kid(), Some(first.as_str()));
        assert_eq!(r.next_wake(), Some(at(15)));
        r.advance(at(15), false).unwrap();
        assert_ne!(r.active_kid(), Some(first.as_str()));
    }

    #[test]
    fn state_dir_keeps_the_ring_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let spec: SigningKeySpec =
            serde_json::from_value(serde_json::json!({"algorithm": "EdDSA"})).unwrap();
        let mut first = open_ring("default", spec.clone(), Some(dir.path())).unwrap();
        first.advance(at(1000), false).unwrap();
        save_ring(&first, Some(dir.path())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state_file(dir.path(), "default"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are private");
        let again = open_ring("default", spec, Some(dir.path())).unwrap();
        assert_eq!(again.active_kid(), first.active_kid());
        // A different algorithm starts a new ring instead of misusing the keys.
        let es256: SigningKeySpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let other = open_ring("default", es256, Some(dir.path())).unwrap();
        assert!(other.active_kid().is_none());
    }

    #[test]
    fn one_file_may_hold_thousands_of_clients() {
        let mut text = String::new();
        for i in 0..3000 {
            text.push_str(&format!(
                "---\napiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: c{i}, namespace: n}}\nspec: {{scopes: [a], audiences: [b]}}\n"
            ));
        }
        let mut manifests = Manifests::default();
        parse_documents(Path::new("many.yaml"), &text, &mut manifests).unwrap();
        assert_eq!(manifests.clients.len(), 3000);
    }

    #[test]
    fn multi_document_manifests_and_secret_generation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("clients.yaml"),
            "apiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: task-service, namespace: tasks}\nspec:\n  scopes: [event.view]\n  audiences: [event]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: sigil.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: default}\nspec: {algorithm: EdDSA}\n",
        )
        .unwrap();
        let secrets_path = dir.path().join("secrets.json");
        let store = Store::new("default");
        let (manifests, secrets) = load_into(&store, dir.path(), &secrets_path).unwrap();
        assert!(store.client("task-service.tasks").is_some());
        assert_eq!(manifests.signing_keys.len(), 1);
        let secret = secrets.get("task-service.tasks").unwrap().clone();
        assert_eq!(secret.len(), 43);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secrets_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second start keeps the secret.
        let (_, again) = load_into(&Store::new("default"), dir.path(), &secrets_path).unwrap();
        assert_eq!(again.get("task-service.tasks"), Some(&secret));
    }

    /// What `issuer --manifests` does: clients into the store as they are
    /// parsed, the first of two claiming an id keeps it, secrets generated
    /// and written once, the other kinds returned.
    #[test]
    fn load_into_streams_clients_into_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(
            manifests.join("a.yaml"),
            "apiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: task, namespace: tasks}\nspec: {scopes: [a], audiences: [b]}\n---\napiVersion: sigil.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: default}\nspec: {algorithm: ES256}\n",
        )
        .unwrap();
        std::fs::write(
            manifests.join("b.yaml"),
            "apiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: other, namespace: tasks}\nspec: {clientId: task.tasks, scopes: [z], audiences: [b]}\n",
        )
        .unwrap();
        let secrets_path = dir.path().join("secrets.json");
        let store = Store::new("default");
        let (rest, secrets) = load_into(&store, &manifests, &secrets_path).unwrap();
        assert!(rest.clients.is_empty());
        assert_eq!(rest.signing_keys.len(), 1);
        let client = store.client("task.tasks").expect("loaded");
        assert_eq!(
            client.object.name, "task",
            "the first manifest keeps the id"
        );
        assert_eq!(client.scopes, ["a"]);
        let written: BTreeMap<String, String> =
            serde_json::from_str(&std::fs::read_to_string(&secrets_path).unwrap()).unwrap();
        assert_eq!(
            secrets, written,
            "the secrets returned are the ones written"
        );
        let secret = written.get("task.tasks").expect("a generated secret");
        assert!(crate::http::client_auth::verify_secret(
            Some(&client),
            secret,
            0
        ));
        // A second start keeps the secret.
        let again = Store::new("default");
        load_into(&again, &manifests, &secrets_path).unwrap();
        let reread: BTreeMap<String, String> =
            serde_json::from_str(&std::fs::read_to_string(&secrets_path).unwrap()).unwrap();
        assert_eq!(reread, written);
    }

    /// Two manifests the API server refuses that standalone mode used to
    /// accept: one gave tokens a second `iss`, the other a key that signs
    /// before verifiers could have fetched it.
    #[test]
    fn standalone_refuses_reserved_claims_and_a_pre_publish_past_rotation() {
        let refused = [
            (
                "apiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: evil}\nspec:\n  additionalClaims: {iss: https://attacker.example, sub: admin}\n",
                "spec.additionalClaims: Invalid value: additionalClaims may not set registered or Sigil-owned claims (iss, sub, aud, exp, nbf, iat, jti, client_id, scope, scp, cnf, azp, act, may_act, acr, amr, auth_time)",
            ),
            (
                "apiVersion: sigil.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: default}\nspec: {prePublish: 48h, rotationInterval: 1h}\n",
                "spec.prePublish: Invalid value: prePublish must be shorter than rotationInterval (defaults: 24h and 720h)",
            ),
        ];
        for (text, expected) in refused {
            let mut manifests = Manifests::default();
            match parse_documents(Path::new("bad.yaml"), text, &mut manifests) {
                Err(StandaloneError::Manifest { reason, .. }) => {
                    assert_eq!(reason, expected);
                }
                other => panic!("expected a refusal saying {expected:?}, got {other:?}"),
            }
            assert!(manifests.clients.is_empty() && manifests.signing_keys.is_empty());
        }
    }

    /// The table `sigil_crds::validate::cases`, which the e2e tests send to
    /// a real API server, through the standalone loader.
    #[test]
    fn standalone_accepts_and_refuses_what_the_api_server_does() {
        use sigil_crds::validate::cases::{self, RefusedBy};
        let table = cases::table().expect("the case table parses");
        for case in &table.accepted {
            // JSON is YAML.
            let text = case.to_json().to_string();
            let mut manifests = Manifests::default();
            if let Err(e) = parse_documents(Path::new("good.yaml"), &text, &mut manifests) {
                panic!("{}: refused: {e}", case.name);
            }
        }
        for case in &table.refused {
            let text = case.manifest.to_json().to_string();
            let mut manifests = Manifests::default();
            let name = &case.manifest.name;
            let Err(StandaloneError::Manifest { reason, .. }) =
                parse_documents(Path::new("bad.yaml"), &text, &mut manifests)
            else {
                panic!("{name}: not refused as a bad manifest");
            };
            if case.refused_by == RefusedBy::Validation {
                assert!(
                    reason.contains(&format!("{}: ", case.field)) && reason.contains(&case.message),
                    "{name}: {reason}"
                );
            }
        }
    }
}
