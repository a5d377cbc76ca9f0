//! `OAuthClient` → credentials Secret + status (DESIGN.md §3).
//!
//! The client secret is 256 random bits, base64url. Only its SHA-256
//! verifier goes to `status`; the secret itself exists only in the Secret.
//! It is never regenerated unless rotation is due or the Secret lost it:
//! re-applying the manifest, changing scopes or restarting the operator
//! keep it.
//!
//! Write order: a new secret's verifier reaches `status` before the Secret
//! holds it when a previous secret exists (rotation, repair), so the issuer
//! accepts the new secret before any workload can read it; for a brand-new
//! client the Secret comes first and a crash in between is recovered by
//! adopting the secret found in the Secret.
//!
//! Reading: the Secret `spec.secretName` names is read by its metadata
//! first, and its data only when its controller reference is this
//! OAuthClient's uid (the operator made it). Any other Secret under that
//! name — the `managed-by` label included, which anyone can set — is
//! someone else's: `Ready=False`/`SecretConflict`, never read, never
//! written, never deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use sigil_crds::grant::denial_summary;
use sigil_crds::{
    CONDITION_GRANTED, EffectiveGrant, MANAGED_BY_LABEL, MANAGED_BY_VALUE, OAuthClient,
    OAuthClientStatus, Reason, SecretVerifier, secret_keys, secret_verifier,
};

use super::{
    Refusal, SecretFor, condition, floor_second, read_secret_for, ready_condition, refuse,
    secret_conflict, secret_owned_by, until, write_status,
};
use crate::FIELD_MANAGER;
use crate::context::{Context, Error, Result, jitter};

/// Rotation jitter is at most 5% of the interval, and at most 5 minutes.
const MAX_ROTATION_JITTER: Duration = Duration::from_secs(300);

pub async fn reconcile(oac: Arc<OAuthClient>, ctx: Arc<Context>) -> Result<Action> {
    super::instrumented(oac.clone(), ctx.clone(), reconcile_client(&oac, &ctx)).await
}

/// Secrets come from the one generator in the kube-free core.
fn generate_client_secret() -> Result<String> {
    Ok(sigil_core::secret::generate_client_secret()?)
}

/// Whether a value read from a Secret looks like a secret this operator
/// generated (so it may be adopted rather than replaced).
fn plausible_secret(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the cluster holds for the client's Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSeen {
    Missing,
    /// The Secret exists; its `client_secret`, if it holds a plausible one.
    Present(Option<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Created,
    Adopted,
    Rotated,
    /// The Secret was deleted (`deleted`) or its `client_secret` edited.
    Replaced {
        deleted: bool,
    },
}

/// The credentials to record: the secret to write, the verifiers to
/// publish, and when to look again.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialsPlan {
    pub secret: String,
    pub verifiers: Vec<SecretVerifier>,
    pub rotated_at: Timestamp,
    pub outcome: Outcome,
    /// When the previous secret stops working, if one still does.
    pub previous_expires_at: Option<Timestamp>,
    /// Next rotation or verifier expiry.
    pub next_due: Option<Timestamp>,
}

impl std::fmt::Debug for CredentialsPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsPlan")
            .field("secret", &"<redacted>")
            .field("verifiers", &self.verifiers)
            .field("rotated_at", &self.rotated_at)
            .field("outcome", &self.outcome)
            .field("next_due", &self.next_due)
            .finish()
    }
}

/// `interval` and `gracePeriod` of `spec.secretRotation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub interval: Duration,
    pub grace: Duration,
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn ceil_second(t: Timestamp) -> Timestamp {
    let floor = floor_second(t);
    if floor == t {
        t
    } else {
        floor + SignedDuration::from_secs(1)
    }
}

/// Decides the client secret at `now` (pure; `generate` makes a new one).
pub fn plan_credentials(
    status: &OAuthClientStatus,
    rotation: Option<Rotation>,
    jitter: Duration,
    seen: &SecretSeen,
    now: Timestamp,
    generate: impl FnOnce() -> Result<String>,
) -> Result<CredentialsPlan> {
    let stamp = floor_second(now);
    let live: Vec<SecretVerifier> = status
        .secret_verifiers
        .iter()
        .filter(|v| v.expires_at.as_ref().is_none_or(|e| e.0 > now))
        .cloned()
        .collect();
    let current = live.iter().find(|v| v.expires_at.is_none()).cloned();
    let existing = match seen {
        SecretSeen::Present(Some(secret)) => Some(secret.clone()),
        _ => None,
    };
    let existing_verifier = existing.as_deref().map(secret_verifier);
    let others = |skip: &str| -> Vec<SecretVerifier> {
        live.iter()
            .filter(|v| v.expires_at.is_some() && v.sha256 != skip)
            .cloned()
            .collect()
    };
    // The previous secret keeps working for the grace period, if any.
    let retire = |mut v: SecretVerifier| -> Option<SecretVerifier> {
        let grace = rotation?.grace;
        if grace.is_zero() {
            return None;
        }
        v.expires_at = Some(Time(ceil_second(now) + signed(grace)));
        Some(v)
    };

    let (secret, mut verifiers, rotated_at, outcome) = match (current, existing) {
        (None, Some(secret)) => {
            // The Secret was written but status lost (crash, restore).
            let sha = existing_verifier.unwrap_or_default();
            let rotated_at = status
                .secret_rotated_at
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(stamp);
            let mut verifiers = vec![SecretVerifier {
                sha256: sha.clone(),
                created_at: Time(rotated_at),
                expires_at: None,
            }];
            verifiers.extend(others(&sha));
            (secret, verifiers, rotated_at, Outcome::Adopted)
        }
        (None, None) => {
            let secret = generate()?;
            let mut verifiers = vec![SecretVerifier {
                sha256: secret_verifier(&secret),
                created_at: Time(stamp),
                expires_at: None,
            }];
            verifiers.extend(others(""));
            (secret, verifiers, stamp, Outcome::Created)
        }
        (Some(current), Some(secret))
            if existing_verifier.as_deref() == Some(current.sha256.as_str()) =>
        {
            let rotated_at = status
                .secret_rotated_at
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(current.created_at.0);
            let due = rotation.map(|r| rotated_at + signed(r.interval) + signed(jitter));
            if due.is_some_and(|due| due <= now) {
                let new_secret = generate()?;
                let mut verifiers = vec![SecretVerifier {
                    sha256: secret_verifier(&new_secret),
                    created_at: Time(stamp),
                    expires_at: None,
                }];
                verifiers.extend(retire(current.clone()));
                verifiers.extend(others(&current.sha256));
                (new_secret, verifiers, stamp, Outcome::Rotated)
            } else {
                let mut verifiers = vec![current.clone()];
                verifiers.extend(others(&current.sha256));
                (secret, verifiers, rotated_at, Outcome::Unchanged)
            }
        }
        (Some(current), _) => {
            // Deleted, or client_secret edited: the old value is unknown
            // (only its digest is kept), so a new one replaces it.
            let new_secret = generate()?;
            let mut verifiers = vec![SecretVerifier {
                sha256: secret_verifier(&new_secret),
                created_at: Time(stamp),
                expires_at: None,
            }];
            verifiers.extend(retire(current.clone()));
            verifiers.extend(others(&current.sha256));
            let deleted = *seen == SecretSeen::Missing;
            (new_secret, verifiers, stamp, Outcome::Replaced { deleted })
        }
    };
    verifiers.dedup_by(|a, b| a.sha256 == b.sha256);

    let previous_expires_at = verifiers
        .iter()
        .filter_map(|v| v.expires_at.as_ref().map(|t| t.0))
        .max();
    let next_rotation = rotation.map(|r| rotated_at + signed(r.interval) + signed(jitter));
    let next_expiry = verifiers
        .iter()
        .filter_map(|v| v.expires_at.as_ref().map(|t| t.0))
        .min();
    let next_due = [next_rotation, next_expiry].into_iter().flatten().min();
    Ok(CredentialsPlan {
        secret,
        verifiers,
        rotated_at,
        outcome,
        previous_expires_at,
        next_due,
    })
}

/// Whether `client` claims `client_id`, without allocating (this runs for
/// every pair of clients when thousands are created together).
pub fn claims_client_id(client: &OAuthClient, client_id: &str) -> bool {
    match &client.spec.client_id {
        Some(id) => id == client_id,
        None => {
            let name = client.metadata.name.as_deref().unwrap_or_default();
            let namespace = client.metadata.namespace.as_deref().unwrap_or_default();
            client_id
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('.'))
                == Some(namespace)
        }
    }
}

/// The client registered first among those claiming `client_id`: earliest
/// `creationTimestamp`, then namespace, then name. Objects being deleted
/// do not count.
pub fn first_claimant<'a>(
    client_id: &str,
    this: &'a OAuthClient,
    all: &'a [Arc<OAuthClient>],
) -> &'a OAuthClient {
    let key = |c: &OAuthClient| {
        (
            c.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::MAX),
            c.metadata.namespace.clone().unwrap_or_default(),
            c.metadata.name.clone().unwrap_or_default(),
        )
    };
    all.iter()
        .map(|c| c.as_ref())
        .filter(|c| c.metadata.deletion_timestamp.is_none() && c.metadata.uid != this.metadata.uid)
        .filter(|c| claims_client_id(c, client_id))
        .chain(std::iter::once(this))
        .min_by_key(|c| key(c))
        .unwrap_or(this)
}

/// The `Granted` condition: True when the whole request is granted, else
/// False with every denial's reason.
fn granted_condition(
    previous: &[Condition],
    grant: &EffectiveGrant,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let (ok, reason, message) = if grant.denied.is_empty() {
        (
            true,
            Reason::Granted,
            "every requested audience, scope and claim is granted".to_owned(),
        )
    } else {
        (false, Reason::GrantDenied, denial_summary(&grant.denied))
    };
    condition(
        CONDITION_GRANTED,
        previous,
        ok,
        reason,
        message,
        generation,
        now,
    )
}

/// One Event when what is denied changes: a Warning naming the denials, or
/// a Normal one when the last of them is lifted.
async fn announce_grant_change(
    ctx: &Context,
    oac: &OAuthClient,
    before: Option<&EffectiveGrant>,
    after: &EffectiveGrant,
) {
    let denied_before = before.map(|g| g.denied.as_slice()).unwrap_or_default();
    if denied_before == after.denied.as_slice() {
        return;
    }
    if after.denied.is_empty() {
        ctx.event(
            oac,
            EventType::Normal,
            Reason::Granted.as_str(),
            "Grant",
            "Every requested audience, scope and claim is granted".to_owned(),
        )
        .await;
    } else {
        ctx.event(
            oac,
            EventType::Warning,
            Reason::GrantDenied.as_str(),
            "Grant",
            denial_summary(&after.denied),
        )
        .await;
    }
}

/// The keys every workload of a client reads, secret or not (DESIGN.md
/// §3): the one place they are made.
fn public_fields(
    client_id: &str,
    token_url: &str,
    issuer: &str,
    scopes: &[String],
    audiences: &[String],
) -> [(&'static str, String); 5] {
    [
        (secret_keys::CLIENT_ID, client_id.to_owned()),
        (secret_keys::TOKEN_URL, token_url.to_owned()),
        (secret_keys::ISSUER, issuer.to_owned()),
        (secret_keys::SCOPE, scopes.join(" ")),
        (secret_keys::AUDIENCE, audiences.join(" ")),
    ]
}

/// The Secret's data keys (DESIGN.md §3). `credentials.json` holds the
/// credentials only; the CA bundle is trust material, not a credential,
/// and stays a PEM file of its own (`ca.crt`, as in a `kubernetes.io/tls`
/// Secret), absent when there is none.
pub fn secret_data(
    client_id: &str,
    client_secret: &str,
    token_url: &str,
    issuer: &str,
    scopes: &[String],
    audiences: &[String],
    ca_bundle: Option<&[u8]>,
) -> BTreeMap<String, ByteString> {
    let mut fields = serde_json::Map::new();
    let mut data = BTreeMap::new();
    let public = public_fields(client_id, token_url, issuer, scopes, audiences);
    let secret = (secret_keys::CLIENT_SECRET, client_secret.to_owned());
    for (key, value) in public.into_iter().chain([secret]) {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
        fields.insert(key.to_owned(), serde_json::Value::String(value));
    }
    data.insert(
        secret_keys::CREDENTIALS_JSON.to_owned(),
        ByteString(serde_json::Value::Object(fields).to_string().into_bytes()),
    );
    if let Some(bundle) = ca_bundle {
        data.insert(secret_keys::CA_CRT.to_owned(), ByteString(bundle.to_vec()));
    }
    data
}

/// The ConfigMap of a secretless client (same name as its Secret would
/// have): the Secret's keys without `client_secret` and `credentials.json`
/// (nothing in it is secret), plus `ca.crt`. The webhook projects it with
/// the pod's ServiceAccount token into one credentials folder, so the
/// token agent and apps read one layout either way.
pub fn config_map_data(
    client_id: &str,
    token_url: &str,
    issuer: &str,
    scopes: &[String],
    audiences: &[String],
    ca_bundle: Option<&[u8]>,
) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> =
        public_fields(client_id, token_url, issuer, scopes, audiences)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    if let Some(bundle) = ca_bundle {
        data.insert(
            secret_keys::CA_CRT.to_owned(),
            String::from_utf8_lossy(bundle).into_owned(),
        );
    }
    data
}

/// How an existing Secret differs from the desired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretDrift {
    None,
    /// Only `ca.crt`: the issuer's CA bundle changed (or appeared, or left).
    CaBundle,
    /// Anything else: credentials, type, label or owner.
    Other,
}

/// How `existing` differs from `desired`. `ca.crt` must be equal, also
/// when absent from `desired` (the bundle left: the apply removes it);
/// other keys someone added are left alone.
fn secret_drift(existing: &Secret, desired: &Secret, owner: &OAuthClient) -> SecretDrift {
    let (Some(have), Some(want)) = (&existing.data, &desired.data) else {
        return SecretDrift::Other;
    };
    let credentials_match = want
        .iter()
        .filter(|(k, _)| *k != secret_keys::CA_CRT)
        .all(|(k, v)| have.get(k) == Some(v));
    let rest_matches = existing.type_.as_deref() == Some("Opaque")
        && existing
            .labels()
            .get(MANAGED_BY_LABEL)
            .is_some_and(|v| v == MANAGED_BY_VALUE)
        && secret_owned_by(&existing.metadata, owner);
    if !(credentials_match && rest_matches) {
        SecretDrift::Other
    } else if have.get(secret_keys::CA_CRT) != want.get(secret_keys::CA_CRT) {
        SecretDrift::CaBundle
    } else {
        SecretDrift::None
    }
}

fn rotation_of(oac: &OAuthClient) -> Result<Option<Rotation>, String> {
    let Some(rotation) = &oac.spec.secret_rotation else {
        return Ok(None);
    };
    let interval = sigil_crds::parse_duration(&rotation.interval)
        .map_err(|e| format!("spec.secretRotation.interval: {e}"))?;
    let grace = sigil_crds::parse_duration(&rotation.grace_period)
        .map_err(|e| format!("spec.secretRotation.gracePeriod: {e}"))?;
    if interval.is_zero() {
        return Err("spec.secretRotation.interval must be positive".to_owned());
    }
    Ok(Some(Rotation { interval, grace }))
}

fn format_time(t: Timestamp) -> String {
    floor_second(t).to_string()
}

#[tracing::instrument(skip_all, fields(namespace = oac.namespace().unwrap_or_default(), name = %oac.name_any()))]
async fn reconcile_client(oac: &OAuthClient, ctx: &Context) -> Result<Action> {
    if oac.metadata.deletion_timestamp.is_some() {
        // The Secret goes with the OAuthClient through its owner reference.
        return Ok(Action::await_change());
    }
    let namespace = oac
        .namespace()
        .ok_or_else(|| Error::Invalid("OAuthClient without a namespace".to_owned()))?;
    let name = oac.name_any();
    let now = Timestamp::now();
    let generation = oac.metadata.generation;
    let clients: Api<OAuthClient> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let status = oac.status.clone().unwrap_or_default();
    let client_id = oac.client_id();
    let secret_name = oac.secret_name();

    // The Secret written under a previous spec.secretName, if it changed:
    // its secret moves to the new Secret, then it is deleted.
    let previous_secret_name = status.secret_name.clone().filter(|old| *old != secret_name);

    // A client id outside `*.<namespace>` needs its namespace's leave, so
    // nobody can squat another namespace's ids.
    if let Err(message) = ctx.grants.check_client_id(oac).await? {
        delete_owned_secret(&secrets, &secret_name, oac).await?;
        if let Some(old_name) = &previous_secret_name {
            delete_owned_secret(&secrets, old_name, oac).await?;
        }
        let refusal = Refusal {
            reason: Reason::ClientIdNotAllowed,
            action: "CheckClientId",
            message,
        };
        let new_status = OAuthClientStatus::default();
        return refuse(ctx, oac, &clients, (&status, new_status), refusal, now).await;
    }

    // clientId must be unique in the cluster: the later claimant gets no
    // credentials. Claimants whose namespace may not use the id never win.
    let claimants: Vec<Arc<OAuthClient>> = {
        let index = ctx.client_index.lock().unwrap_or_else(|p| p.into_inner());
        index.claimants(&client_id)
    }
    .iter()
    .filter_map(|r| ctx.oauth_clients.get(r))
    .filter(|c| ctx.grants.id_allowed(c).is_ok())
    .collect();
    let first = first_claimant(&client_id, oac, &claimants);
    if first.metadata.uid != oac.metadata.uid {
        let holder = format!(
            "{}/{}",
            first.namespace().unwrap_or_default(),
            first.name_any()
        );
        delete_owned_secret(&secrets, &secret_name, oac).await?;
        if let Some(old_name) = &previous_secret_name {
            delete_owned_secret(&secrets, old_name, oac).await?;
        }
        let refusal = Refusal {
            reason: Reason::DuplicateClientId,
            action: "CheckClientId",
            message: format!(
                "clientId {client_id:?} is already used by OAuthClient {holder}, which was created first; set a unique spec.clientId"
            ),
        };
        // A duplicate holds nothing: no verifiers, no Secret name.
        let new_status = OAuthClientStatus::default();
        return refuse(ctx, oac, &clients, (&status, new_status), refusal, now).await;
    }

    let rotation = match rotation_of(oac) {
        Ok(rotation) => rotation,
        Err(message) => {
            let mut new_status = status.clone();
            new_status.observed_generation = generation;
            new_status.conditions = vec![ready_condition(
                &status.conditions,
                false,
                Reason::InvalidSpec,
                message,
                generation,
                now,
            )];
            write_status(&clients, &name, &status, new_status).await?;
            return Ok(Action::await_change());
        }
    };

    if oac.spec.is_secretless() {
        return reconcile_secretless(oac, ctx, &clients, &secrets, &status, now).await;
    }

    // Metadata first; data only of a Secret this very client controls.
    let existing = match read_secret_for(&secrets, &secret_name, oac).await? {
        SecretFor::Missing => None,
        SecretFor::Owned(secret) => Some(*secret),
        SecretFor::Foreign => {
            let refusal = secret_conflict(
                &secret_name,
                "OAuthClient",
                "delete it or set spec.secretName",
            );
            return refuse(ctx, oac, &clients, (&status, status.clone()), refusal, now).await;
        }
    };

    let client_secret_of = |secret: &Secret| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(secret_keys::CLIENT_SECRET))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| plausible_secret(s))
    };
    let seen = match (&existing, &previous_secret_name) {
        (Some(secret), _) => SecretSeen::Present(client_secret_of(secret)),
        (None, Some(old_name)) => {
            // Renamed: carry the secret over from the old Secret if it is ours.
            match read_secret_for(&secrets, old_name, oac).await? {
                SecretFor::Owned(old) => match client_secret_of(&old) {
                    Some(value) => SecretSeen::Present(Some(value)),
                    None => SecretSeen::Missing,
                },
                SecretFor::Missing | SecretFor::Foreign => SecretSeen::Missing,
            }
        }
        (None, None) => SecretSeen::Missing,
    };
    let uid = oac.metadata.uid.clone().unwrap_or_default();
    let jitter = rotation
        .map(|r| jitter(&uid, (r.interval / 20).min(MAX_ROTATION_JITTER)))
        .unwrap_or_default();
    let plan = plan_credentials(
        &status,
        rotation,
        jitter,
        &seen,
        now,
        generate_client_secret,
    )?;

    let (ready, reason, message) = if oac.spec.disabled {
        (
            false,
            Reason::Disabled,
            format!(
                "spec.disabled is true: the issuer grants no tokens; credentials are kept in Secret {secret_name}"
            ),
        )
    } else {
        let mut message = format!("client secret in Secret {secret_name}");
        if let Some(r) = rotation {
            let next = plan.rotated_at + signed(r.interval) + signed(jitter);
            message.push_str(&format!("; next rotation at {}", format_time(next)));
        }
        (true, Reason::CredentialsReady, message)
    };
    let grant = ctx.grants.effective(oac).await?;
    let granted_condition = granted_condition(&status.conditions, &grant, generation, now);
    let new_status = OAuthClientStatus {
        client_id: Some(client_id.clone()),
        secret_name: Some(secret_name.clone()),
        secret_verifiers: plan.verifiers.clone(),
        secret_rotated_at: Some(Time(plan.rotated_at)),
        observed_generation: generation,
        conditions: vec![
            ready_condition(&status.conditions, ready, reason, message, generation, now),
            granted_condition,
        ],
        grant: Some(grant.clone()),
    };

    let owner = oac
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("OAuthClient without a uid".to_owned()))?;
    let ca_bundle = ctx.issuer_ca.bundle().await?;
    let desired = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(secret_data(
            &client_id,
            &plan.secret,
            &ctx.token_url,
            &ctx.issuer_url,
            &grant.scopes,
            &grant.audiences,
            ca_bundle.as_deref(),
        )),
        ..Default::default()
    };
    let drift = existing
        .as_ref()
        .map_or(SecretDrift::Other, |e| secret_drift(e, &desired, oac));
    let secret_current = drift == SecretDrift::None;

    // A secret replacing another is published in status first.
    let status_first = matches!(plan.outcome, Outcome::Rotated | Outcome::Replaced { .. });
    if status_first {
        write_status(&clients, &name, &status, new_status.clone()).await?;
    }
    if !secret_current {
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map_err(Error::kube(format!(
                "writing Secret {namespace}/{secret_name}"
            )))?;
    }
    if !status_first {
        write_status(&clients, &name, &status, new_status).await?;
    }
    announce_grant_change(ctx, oac, status.grant.as_ref(), &grant).await;
    if let Some(old_name) = &previous_secret_name {
        delete_owned_secret(&secrets, old_name, oac).await?;
    }

    let previous = match plan.previous_expires_at {
        Some(t) => format!("the previous secret works until {}", format_time(t)),
        None => "the previous secret no longer works".to_owned(),
    };
    match plan.outcome {
        Outcome::Created => {
            tracing::info!(%namespace, %name, %client_id, "generated a client secret");
            ctx.event(
                oac,
                EventType::Normal,
                "Created",
                "CreateSecret",
                format!(
                    "Generated a client secret for client id {client_id} in Secret {secret_name}"
                ),
            )
            .await;
        }
        Outcome::Adopted => {
            tracing::info!(%namespace, %name, "adopted the client secret found in the Secret");
            ctx.event(
                oac,
                EventType::Normal,
                "Adopted",
                "CreateSecret",
                format!("Recorded the client secret already in Secret {secret_name}"),
            )
            .await;
        }
        Outcome::Rotated => {
            tracing::info!(%namespace, %name, "rotated the client secret");
            ctx.event(
                oac,
                EventType::Normal,
                "Rotated",
                "RotateSecret",
                format!("Rotated the client secret in Secret {secret_name}; {previous}"),
            )
            .await;
        }
        Outcome::Replaced { deleted } => {
            let what = if deleted {
                "was deleted"
            } else {
                "was edited and its client_secret no longer matched"
            };
            tracing::warn!(%namespace, %name, deleted, "replaced the client secret");
            // Distinct reasons: the event recorder folds repeats of one reason
            // into a series that keeps the first note.
            let (reason, action) = if deleted {
                ("SecretRecreated", "RecreateSecret")
            } else {
                ("SecretReplaced", "ReplaceSecret")
            };
            ctx.event(oac, EventType::Warning, reason, action, format!("Secret {secret_name} {what}; wrote it again with a new client secret; {previous}")).await;
        }
        // A new CA bundle reaches every client at once: a log line, not an
        // Event per client.
        Outcome::Unchanged if drift == SecretDrift::CaBundle => {
            tracing::debug!(%namespace, %name, "updated the issuer's CA bundle in the Secret");
        }
        Outcome::Unchanged if !secret_current => {
            let spec_changed = status.observed_generation != generation;
            if existing.is_some() && !spec_changed {
                tracing::warn!(%namespace, %name, "restored an edited Secret");
                ctx.event(
                    oac,
                    EventType::Warning,
                    "SecretRestored",
                    "RestoreSecret",
                    format!(
                        "Secret {secret_name} was edited; restored it (client secret unchanged)"
                    ),
                )
                .await;
            } else {
                ctx.event(
                    oac,
                    EventType::Normal,
                    "Updated",
                    "UpdateSecret",
                    format!("Updated Secret {secret_name}"),
                )
                .await;
            }
        }
        Outcome::Unchanged => {}
    }

    Ok(match plan.next_due {
        Some(due) => Action::requeue(until(now, due)),
        None => Action::await_change(),
    })
}

/// A client whose only method is `federated_jwt`: its workloads prove
/// themselves with ServiceAccount tokens, so there is no secret to generate
/// and no Secret to write (one this client wrote under an earlier spec is
/// deleted: its secret no longer works). Status and grant as for any client.
async fn reconcile_secretless(
    oac: &OAuthClient,
    ctx: &Context,
    clients: &Api<OAuthClient>,
    secrets: &Api<Secret>,
    status: &OAuthClientStatus,
    now: Timestamp,
) -> Result<Action> {
    let name = oac.name_any();
    let namespace = oac.namespace().unwrap_or_default();
    let generation = oac.metadata.generation;
    let secret_name = oac.secret_name();
    delete_owned_secret(secrets, &secret_name, oac).await?;
    if let Some(old_name) = status
        .secret_name
        .as_ref()
        .filter(|old| **old != secret_name)
    {
        delete_owned_secret(secrets, old_name, oac).await?;
    }
    let grant = ctx.grants.effective(oac).await?;
    // The ConfigMap first: a pod admitted once the client is Ready mounts it.
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(refusal) = write_config_map(ctx, oac, &config_maps, &secret_name, &grant).await? {
        return refuse(ctx, oac, clients, (status, status.clone()), refusal, now).await;
    }
    let accounts = oac.spec.federated_service_accounts().join(", ");
    let (ready, reason, message) = if oac.spec.disabled {
        (
            false,
            Reason::Disabled,
            "spec.disabled is true: the issuer grants no tokens".to_owned(),
        )
    } else {
        (
            true,
            Reason::CredentialsReady,
            format!(
                "no client secret: authenticates with tokens of ServiceAccount(s) {accounts} (federated_jwt); settings in ConfigMap {secret_name}"
            ),
        )
    };
    let granted_condition = granted_condition(&status.conditions, &grant, generation, now);
    let new_status = OAuthClientStatus {
        client_id: Some(oac.client_id()),
        observed_generation: generation,
        conditions: vec![
            ready_condition(&status.conditions, ready, reason, message, generation, now),
            granted_condition,
        ],
        grant: Some(grant.clone()),
        ..OAuthClientStatus::default()
    };
    write_status(clients, &name, status, new_status).await?;
    announce_grant_change(ctx, oac, status.grant.as_ref(), &grant).await;
    Ok(Action::await_change())
}

/// Writes a secretless client's ConfigMap ([`config_map_data`]) when it
/// is missing or differs; `Ok(Err(refusal))` when the name is taken by a
/// ConfigMap this client does not control (never overwritten).
async fn write_config_map(
    ctx: &Context,
    oac: &OAuthClient,
    config_maps: &Api<ConfigMap>,
    name: &str,
    grant: &EffectiveGrant,
) -> Result<std::result::Result<(), Refusal>> {
    let existing = config_maps
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading ConfigMap {name}")))?;
    if existing
        .as_ref()
        .is_some_and(|map| !secret_owned_by(&map.metadata, oac))
    {
        return Ok(Err(Refusal {
            reason: Reason::SecretConflict,
            action: "WriteConfigMap",
            message: format!(
                "ConfigMap {name} exists and is not managed by this OAuthClient; delete it or set spec.secretName"
            ),
        }));
    }
    let owner = oac
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("OAuthClient without a uid".to_owned()))?;
    let ca_bundle = ctx.issuer_ca.bundle().await?;
    let data = config_map_data(
        &oac.client_id(),
        &ctx.token_url,
        &ctx.issuer_url,
        &grant.scopes,
        &grant.audiences,
        ca_bundle.as_deref(),
    );
    let labels = BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned())]);
    let current = existing.is_some_and(|map| {
        map.data.as_ref() == Some(&data)
            && map.binary_data.is_none()
            && map
                .labels()
                .get(MANAGED_BY_LABEL)
                .is_some_and(|v| v == MANAGED_BY_VALUE)
    });
    if current {
        return Ok(Ok(()));
    }
    let desired = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    config_maps
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(Error::kube(format!("writing ConfigMap {name}")))?;
    tracing::info!(configmap = %name, client = %oac.name_any(), "wrote a secretless client's ConfigMap");
    Ok(Ok(()))
}

/// Deletes `name` if it is a Secret this OAuthClient controls, deciding
/// by its metadata only; the uid precondition makes sure the Secret
/// deleted is the one looked at, not one re-created under its name.
async fn delete_owned_secret(secrets: &Api<Secret>, name: &str, oac: &OAuthClient) -> Result<()> {
    let Some(meta) = secrets
        .get_metadata_opt(name)
        .await
        .map_err(Error::kube(format!(
            "reading the metadata of Secret {name}"
        )))?
    else {
        return Ok(());
    };
    if secret_owned_by(&meta.metadata, oac) {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: meta.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match secrets.delete(name, &params).await {
            Ok(_) => {}
            // Gone, or replaced (uid precondition failed): not ours to delete.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("deleting Secret {name}"))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn fixed(secret: &'static str) -> impl FnOnce() -> Result<String> {
        move || Ok(secret.to_owned())
    }

    fn never() -> Result<String> {
        panic!("no new secret expected")
    }

    const A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    fn status_with(verifiers: Vec<SecretVerifier>, rotated_at: i64) -> OAuthClientStatus {
        OAuthClientStatus {
            secret_verifiers: verifiers,
            secret_rotated_at: Some(Time(t(rotated_at))),
            ..Default::default()
        }
    }

    fn verifier(secret: &str, created: i64, expires: Option<i64>) -> SecretVerifier {
        SecretVerifier {
            sha256: secret_verifier(secret),
            created_at: Time(t(created)),
            expires_at: expires.map(|e| Time(t(e))),
        }
    }

    const ROTATION: Rotation = Rotation {
        interval: Duration::from_secs(100),
        grace: Duration::from_secs(30),
    };

    #[test]
    fn generated_secrets_are_256_bits_base64url() {
        let a = generate_client_secret().expect("random");
        let b = generate_client_secret().expect("random");
        assert_ne!(a, b);
        assert!(plausible_secret(&a), "{}", a.len());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a)
            .expect("base64url");
        assert_eq!(bytes.len(), 32);
    }

    #[test]
    fn a_new_client_gets_a_new_secret() {
        let plan = plan_credentials(
            &OAuthClientStatus::default(),
            None,
            Duration::ZERO,
            &SecretSeen::Missing,
            t(0),
            fixed(A),
        )
        .expect("plan");
        assert_eq!(plan.outcome, Outcome::Created);
        assert_eq!(plan.secret, A);
        assert_eq!(plan.verifiers, vec![verifier(A, 0, None)]);
        assert_eq!(plan.next_due, None, "no rotation: nothing to wake up for");
        assert!(
            !format!("{plan:?}").contains(A),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn the_same_secret_is_kept_across_reapply_and_restart() {
        let status = status_with(vec![verifier(A, 0, None)], 0);
        let plan = plan_credentials(
            &status,
            None,
            Duration::ZERO,
            &SecretSeen::Present(Some(A.into())),
            t(5000),
            never,
        )
        .expect("plan");
        assert_eq!(plan.outcome, Outcome::Unchanged);
        assert_eq!(plan.secret, A);
        assert_eq!(plan.verifiers, status.secret_verifiers);
    }

    #[test]
    fn a_secret_written_before_a_crash_is_adopted() {
        let plan = plan_credentials(
            &OAuthClientStatus::default(),
            None,
            Duration::ZERO,
            &SecretSeen::Present(Some(A.into())),
            t(3),
            never,
        )
        .expect("plan");
        assert_eq!(plan.outcome, Outcome::Adopted);
        assert_eq!(plan.secret, A);
        assert_eq!(plan.verifiers[0].sha256, secret_verifier(A));
    }

    #[test]
    fn rotation_keeps_the_previous_secret_for_the_grace_period() {
        let status = status_with(vec![verifier(A, 0, None)], 0);
        let seen = SecretSeen::Present(Some(A.into()));
        let jitter = Duration::from_secs(2);
        // Not yet due (interval + jitter).
        let early =
            plan_credentials(&status, Some(ROTATION), jitter, &seen, t(101), never).expect("plan");
        assert_eq!(early.outcome, Outcome::Unchanged);
        assert_eq!(early.next_due, Some(t(102)));
        let rotated = plan_credentials(&status, Some(ROTATION), jitter, &seen, t(102), fixed(B))
            .expect("plan");
        assert_eq!(rotated.outcome, Outcome::Rotated);
        assert_eq!(rotated.secret, B);
        assert_eq!(
            rotated.verifiers,
            vec![verifier(B, 102, None), verifier(A, 0, Some(132))]
        );
        assert_eq!(
            rotated.next_due,
            Some(t(132)),
            "wake up to drop the old verifier"
        );

        // After the grace period the old verifier is gone.
        let status = OAuthClientStatus {
            secret_verifiers: rotated.verifiers.clone(),
            secret_rotated_at: Some(Time(t(102))),
            ..Default::default()
        };
        let seen = SecretSeen::Present(Some(B.into()));
        let later =
            plan_credentials(&status, Some(ROTATION), jitter, &seen, t(132), never).expect("plan");
        assert_eq!(later.verifiers, vec![verifier(B, 102, None)]);
        assert_eq!(later.next_due, Some(t(204)));
    }

    #[test]
    fn a_deleted_secret_is_replaced_with_a_new_one() {
        let status = status_with(vec![verifier(A, 0, None)], 0);
        let plan = plan_credentials(
            &status,
            None,
            Duration::ZERO,
            &SecretSeen::Missing,
            t(10),
            fixed(B),
        )
        .expect("plan");
        assert_eq!(plan.outcome, Outcome::Replaced { deleted: true });
        assert_eq!(
            plan.verifiers,
            vec![verifier(B, 10, None)],
            "without rotation, no grace"
        );
        let plan = plan_credentials(
            &status,
            Some(ROTATION),
            Duration::ZERO,
            &SecretSeen::Missing,
            t(10),
            fixed(B),
        )
        .expect("plan");
        assert_eq!(
            plan.verifiers,
            vec![verifier(B, 10, None), verifier(A, 0, Some(40))]
        );
    }

    #[test]
    fn an_edited_secret_is_replaced_and_an_unreadable_one_too() {
        let status = status_with(vec![verifier(A, 0, None)], 0);
        let edited = SecretSeen::Present(Some(B.into()));
        let plan = plan_credentials(
            &status,
            None,
            Duration::ZERO,
            &edited,
            t(10),
            fixed("C".repeat(43).leak()),
        )
        .expect("plan");
        assert_eq!(plan.outcome, Outcome::Replaced { deleted: false });
        assert_ne!(plan.secret, B, "a value typed in by hand is never adopted");
        let garbled = SecretSeen::Present(None);
        let plan = plan_credentials(&status, None, Duration::ZERO, &garbled, t(10), fixed(B))
            .expect("plan");
        assert_eq!(plan.outcome, Outcome::Replaced { deleted: false });
    }

    #[test]
    fn expired_verifiers_are_dropped_even_without_rotation() {
        let status = status_with(vec![verifier(B, 50, None), verifier(A, 0, Some(60))], 50);
        let seen = SecretSeen::Present(Some(B.into()));
        let plan =
            plan_credentials(&status, None, Duration::ZERO, &seen, t(59), never).expect("plan");
        assert_eq!(plan.verifiers.len(), 2);
        assert_eq!(plan.next_due, Some(t(60)));
        let plan =
            plan_credentials(&status, None, Duration::ZERO, &seen, t(60), never).expect("plan");
        assert_eq!(plan.verifiers, vec![verifier(B, 50, None)]);
    }

    fn client(
        ns: &str,
        name: &str,
        uid: &str,
        created: i64,
        client_id: Option<&str>,
    ) -> Arc<OAuthClient> {
        let spec =
            serde_json::from_value(serde_json::json!({ "clientId": client_id })).expect("spec");
        let mut c = OAuthClient::new(name, spec);
        c.metadata.namespace = Some(ns.into());
        c.metadata.uid = Some(uid.into());
        c.metadata.creation_timestamp = Some(Time(t(created)));
        Arc::new(c)
    }

    #[test]
    fn the_earlier_client_keeps_a_duplicate_client_id() {
        let first = client("a", "x", "1", 10, Some("shared"));
        let later = client("b", "y", "2", 20, Some("shared"));
        let other = client("c", "z", "3", 0, Some("other"));
        let all = vec![first.clone(), later.clone(), other.clone()];
        assert_eq!(
            first_claimant("shared", &later, &all)
                .metadata
                .uid
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            first_claimant("shared", &first, &all)
                .metadata
                .uid
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            first_claimant("other", &other, &all)
                .metadata
                .uid
                .as_deref(),
            Some("3")
        );
        // Same second: namespace, then name decide, the same way for both.
        let a = client("a", "m", "4", 30, Some("tie"));
        let b = client("b", "m", "5", 30, Some("tie"));
        let all = vec![a.clone(), b.clone()];
        assert_eq!(
            first_claimant("tie", &a, &all).metadata.uid.as_deref(),
            Some("4")
        );
        assert_eq!(
            first_claimant("tie", &b, &all).metadata.uid.as_deref(),
            Some("4")
        );
        // Not yet in the store: still compared.
        assert_eq!(
            first_claimant("tie", &b, &[]).metadata.uid.as_deref(),
            Some("5")
        );
        // The default id is <name>.<namespace>.
        let c = client("ns", "svc", "6", 1, None);
        let d = client("other", "dup", "7", 2, Some("svc.ns"));
        let all = vec![c.clone(), d.clone()];
        assert_eq!(
            first_claimant("svc.ns", &d, &all).metadata.uid.as_deref(),
            Some("6")
        );
    }

    #[test]
    fn client_id_claims_match_the_effective_id() {
        let c = client("ns", "svc", "1", 0, None);
        assert!(claims_client_id(&c, "svc.ns"));
        assert!(!claims_client_id(&c, "svc.ns2"));
        assert!(!claims_client_id(&c, "svcx.ns"));
        assert!(!claims_client_id(&c, "svc"));
        let d = client("ns", "svc", "2", 0, Some("custom"));
        assert!(claims_client_id(&d, "custom"));
        assert!(!claims_client_id(&d, "svc.ns"));
    }

    #[test]
    fn secret_has_every_contract_key() {
        let data = secret_data(
            "task-service.tasks",
            A,
            "https://sigil.example.com/oauth2/token",
            "https://sigil.example.com",
            &["event.view".into(), "file.view".into()],
            &["event".into(), "file".into()],
            None,
        );
        let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf8");
        assert_eq!(text("client_id"), "task-service.tasks");
        assert_eq!(text("client_secret"), A);
        assert_eq!(text("scope"), "event.view file.view");
        assert_eq!(text("audience"), "event file");
        assert_eq!(text("issuer"), "https://sigil.example.com");
        let json: serde_json::Value =
            serde_json::from_str(&text("credentials.json")).expect("json");
        assert_eq!(json["client_secret"], A);
        assert_eq!(json["token_url"], "https://sigil.example.com/oauth2/token");
        assert_eq!(json["scope"], "event.view file.view");
        assert_eq!(data.len(), 7, "no ca.crt without a bundle");
    }

    const BUNDLE: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn client_data(ca_bundle: Option<&[u8]>) -> BTreeMap<String, ByteString> {
        secret_data(
            "svc.tasks",
            A,
            "https://sigil-issuer.sigil-system.svc/oauth2/token",
            "https://sigil-issuer.sigil-system.svc",
            &["event.view".into()],
            &["event".into()],
            ca_bundle,
        )
    }

    #[test]
    fn the_ca_bundle_is_its_own_key_and_not_a_credential() {
        let with = client_data(Some(BUNDLE));
        assert_eq!(with[secret_keys::CA_CRT].0, BUNDLE, "the same bytes");
        assert_eq!(with.len(), 8);
        let without = client_data(None);
        assert!(!without.contains_key(secret_keys::CA_CRT));
        // Everything else is the same, credentials.json included: it holds
        // the credentials only.
        for (key, value) in &without {
            assert_eq!(with.get(key), Some(value), "{key}");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&with[secret_keys::CREDENTIALS_JSON].0).expect("json");
        assert_eq!(json.as_object().map(|o| o.len()), Some(6), "{json}");
        assert!(json.get(secret_keys::CA_CRT).is_none());
    }

    #[test]
    fn a_secretless_clients_config_map_is_the_secret_without_the_secret() {
        let map = config_map_data(
            "svc.tasks",
            "https://sigil-issuer.sigil-system.svc/oauth2/token",
            "https://sigil-issuer.sigil-system.svc",
            &["event.view".into()],
            &["event".into()],
            Some(BUNDLE),
        );
        let secret = client_data(Some(BUNDLE));
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "audience",
                "ca.crt",
                "client_id",
                "issuer",
                "scope",
                "token_url"
            ]
        );
        for (key, value) in &map {
            assert_eq!(secret[key].0, value.as_bytes(), "{key}");
        }
        let without = config_map_data("a", "b", "c", &[], &[], None);
        assert!(!without.contains_key(secret_keys::CA_CRT));
    }

    fn owned_secret(oac: &OAuthClient, data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    MANAGED_BY_VALUE.to_owned(),
                )])),
                owner_references: Some(vec![oac.controller_owner_ref(&()).expect("uid")]),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn a_changed_or_departed_bundle_is_drift_of_its_own() {
        let oac = client("tasks", "svc", "uid-svc", 0, None);
        let secret = |bundle: Option<&[u8]>| owned_secret(&oac, client_data(bundle));
        let other: &[u8] = b"another bundle";
        assert_eq!(
            secret_drift(&secret(Some(BUNDLE)), &secret(Some(BUNDLE)), &oac),
            SecretDrift::None
        );
        assert_eq!(
            secret_drift(&secret(None), &secret(None), &oac),
            SecretDrift::None
        );
        // Published, rotated, gone: each is a change to write.
        for (have, want) in [
            (None, Some(BUNDLE)),
            (Some(BUNDLE), Some(other)),
            (Some(BUNDLE), None),
        ] {
            assert_eq!(
                secret_drift(&secret(have), &secret(want), &oac),
                SecretDrift::CaBundle,
                "{have:?} -> {want:?}"
            );
        }
        // A credential edited as well is more than a new bundle.
        let mut edited = secret(None);
        if let Some(data) = edited.data.as_mut() {
            data.insert(
                secret_keys::SCOPE.to_owned(),
                ByteString(b"edited".to_vec()),
            );
        }
        assert_eq!(
            secret_drift(&edited, &secret(Some(BUNDLE)), &oac),
            SecretDrift::Other
        );
        // A key someone else added is left alone.
        let mut extra = secret(Some(BUNDLE));
        if let Some(data) = extra.data.as_mut() {
            data.insert("note".to_owned(), ByteString(b"mine".to_vec()));
        }
        assert_eq!(
            secret_drift(&extra, &secret(Some(BUNDLE)), &oac),
            SecretDrift::None
        );
    }
}
