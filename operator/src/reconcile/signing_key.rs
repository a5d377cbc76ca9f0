//! `SigningKey` → private-key Secret `<name>-keys` + key ring in status
//! (DESIGN.md §4).
//!
//! `sigil_crds::ring::plan` decides what the ring looks like now; this
//! module only applies it, in an order that survives a crash anywhere:
//! 1. a new private key is written to the Secret (with every key status
//!    still names);
//! 2. status is written: it names only kids the Secret holds;
//! 3. the Secret is pruned to the kids status names.
//!
//! A crash between 1 and 2 leaves an unpublished key in the Secret, pruned
//! on the next pass; a crash between 2 and 3 leaves a dropped key a little
//! longer. Status never names a key the Secret lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use sigil_core::keys;
use sigil_crds::ring::{self, Change, NewKeyReason, RingPolicy};
use sigil_crds::{
    KeyState, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Reason, SIGNING_KEY_LABEL, SigningAlgorithm,
    SigningKey, SigningKeyStatus, annotations,
};

use super::{
    SecretFor, read_secret_for, ready_condition, refuse, secret_conflict, until, write_status,
};
use crate::FIELD_MANAGER;
use crate::context::{Context, Error, Result};

/// Every key type, to recognise a stored key after `spec.algorithm`
/// changed (RSA keys serve every RSA algorithm).
const KEY_TYPES: [SigningAlgorithm; 4] = [
    SigningAlgorithm::ES256,
    SigningAlgorithm::ES384,
    SigningAlgorithm::EdDSA,
    SigningAlgorithm::RS256,
];

pub async fn reconcile(sk: Arc<SigningKey>, ctx: Arc<Context>) -> Result<Action> {
    super::instrumented(sk.clone(), ctx.clone(), reconcile_ring(&sk, &ctx)).await
}

/// Whether `pem` is the private key of `kid` (any key type).
fn stored_key_matches(pem: &str, kid: &str, preferred: SigningAlgorithm) -> bool {
    std::iter::once(preferred)
        .chain(KEY_TYPES)
        .any(|alg| keys::kid(alg, pem).is_ok_and(|k| k == kid))
}

fn key_secret(
    sk: &SigningKey,
    namespace: &str,
    data: BTreeMap<String, ByteString>,
) -> Result<Secret> {
    let owner = sk
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("SigningKey without a uid".to_owned()))?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(sk.secret_name()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (SIGNING_KEY_LABEL.to_owned(), sk.name_any()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Default::default()
    })
}

async fn apply_secret(secrets: &Api<Secret>, secret: &Secret) -> Result<()> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    secrets
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(secret),
        )
        .await
        .map_err(Error::kube(format!("writing Secret {name}")))?;
    Ok(())
}

#[tracing::instrument(skip_all, fields(namespace = sk.namespace().unwrap_or_default(), name = %sk.name_any()))]
async fn reconcile_ring(sk: &SigningKey, ctx: &Context) -> Result<Action> {
    if sk.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = sk
        .namespace()
        .ok_or_else(|| Error::Invalid("SigningKey without a namespace".to_owned()))?;
    let name = sk.name_any();
    let now = Timestamp::now();
    let api: Api<SigningKey> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    // Plan from the SigningKey as the API server has it now, not as the
    // watch cache does: the cache may not hold this operator's own last
    // status write yet, and a reconcile triggered by its own Secret write
    // then saw an empty ring and made another first key, dropping the one
    // just stored (a cold CI run made four in 60 ms).
    let Some(fresh) = api.get_opt(&name).await.map_err(Error::kube(format!(
        "reading SigningKey {namespace}/{name}"
    )))?
    else {
        return Ok(Action::await_change());
    };
    if fresh.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let sk = &fresh;
    let generation = sk.metadata.generation;
    let secret_name = sk.secret_name();
    let status = sk.status.clone().unwrap_or_default();
    let algorithm = sk.spec.algorithm;

    // Metadata first; data only of a Secret this very SigningKey controls.
    let existing = match read_secret_for(&secrets, &secret_name, sk).await? {
        SecretFor::Missing => None,
        SecretFor::Owned(secret) => Some(*secret),
        SecretFor::Foreign => {
            let refusal = secret_conflict(&secret_name, "SigningKey", "delete it");
            return refuse(ctx, sk, &api, (&status, status.clone()), refusal, now).await;
        }
    };

    // Private keys on hand, as PEM text.
    let stored: BTreeMap<String, String> = existing
        .as_ref()
        .and_then(|s| s.data.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(kid, pem)| String::from_utf8(pem.0).ok().map(|pem| (kid, pem)))
        .collect();

    // A key status names but the Secret lost (deleted or edited by hand)
    // cannot sign or be published: it leaves the ring.
    let mut ring_now = Vec::new();
    let mut lost = Vec::new();
    for key in &status.keys {
        match stored.get(&key.kid) {
            Some(pem) if stored_key_matches(pem, &key.kid, algorithm) => ring_now.push(key.clone()),
            _ => lost.push(key.kid.clone()),
        }
    }

    // An active key of another type than spec.algorithm is rotated out.
    let algorithm_changed = ring_now
        .iter()
        .find(|k| k.state == KeyState::Active)
        .and_then(|k| stored.get(&k.kid).map(|pem| (k, pem)))
        .is_some_and(|(k, pem)| !keys::kid(algorithm, pem).is_ok_and(|kid| kid == k.kid));
    let annotation = sk
        .annotations()
        .get(annotations::ROTATE_REQUESTED_AT)
        .cloned();
    let requested = match ring::rotation_requested(
        annotation.as_deref(),
        status.last_rotate_request.as_deref(),
    ) {
        Ok(requested) => requested,
        Err(error) => {
            if status.last_rotate_request.as_deref() != annotation.as_deref() {
                ctx.event(
                    sk,
                    EventType::Warning,
                    "InvalidRotateRequest",
                    "Rotate",
                    format!(
                        "{} must be an RFC 3339 time: {error}",
                        annotations::ROTATE_REQUESTED_AT
                    ),
                )
                .await;
            }
            false
        }
    };

    let policy = RingPolicy::from_spec(&sk.spec);
    let mut plan = ring::plan(&policy, &ring_now, now, requested || algorithm_changed);

    let mut generated = None;
    if let Some(new_key) = plan.new_key.clone() {
        let rsa_bits = sk.spec.rsa_bits();
        let key = tokio::task::spawn_blocking(move || keys::generate(algorithm, rsa_bits))
            .await
            .map_err(|e| Error::KeyTask(e.to_string()))??;
        // 1. Persist the new key next to every key status still names.
        let mut data: BTreeMap<String, ByteString> = status
            .keys
            .iter()
            .filter_map(|k| {
                stored
                    .get(&k.kid)
                    .map(|pem| (k.kid.clone(), ByteString(pem.clone().into_bytes())))
            })
            .collect();
        data.insert(
            key.kid.clone(),
            ByteString(key.pkcs8_pem.clone().into_bytes()),
        );
        apply_secret(&secrets, &key_secret(sk, &namespace, data)?).await?;
        tracing::info!(%namespace, %name, kid = %key.kid, reason = ?new_key.reason, "generated a signing key");
        plan = plan.with_new_key(key.kid.clone());
        generated = Some((key, new_key));
    }

    // 2. Status names only stored keys.
    let mut conditions_message = match &plan.active_kid {
        Some(kid) => format!("active key {kid}; {} key(s) published", plan.keys.len()),
        None => "no active key".to_owned(),
    };
    if algorithm_changed {
        conditions_message.push_str(&format!("; rotating to {}", algorithm.as_str()));
    }
    let ready = plan.active_kid.is_some();
    let new_status = SigningKeyStatus {
        active_kid: plan.active_kid.clone(),
        keys: plan.keys.clone(),
        secret_name: Some(secret_name.clone()),
        last_rotate_request: if requested {
            annotation.clone()
        } else {
            status.last_rotate_request.clone()
        },
        observed_generation: generation,
        conditions: vec![ready_condition(
            &status.conditions,
            ready,
            if ready {
                Reason::KeysReady
            } else {
                Reason::NoActiveKey
            },
            conditions_message,
            generation,
            now,
        )],
    };
    write_status(&api, &name, &status, new_status).await?;

    // 3. Prune the Secret to the ring.
    let wanted: BTreeSet<&str> = plan.keys.iter().map(|k| k.kid.as_str()).collect();
    let have: BTreeSet<&str> = stored.keys().map(String::as_str).collect();
    let mut pem_by_kid: BTreeMap<&str, &str> = stored
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some((key, _)) = &generated {
        pem_by_kid.insert(key.kid.as_str(), key.pkcs8_pem.as_str());
    }
    let written: BTreeSet<&str> = match &generated {
        Some((key, _)) => status
            .keys
            .iter()
            .map(|k| k.kid.as_str())
            .filter(|k| have.contains(k))
            .chain(std::iter::once(key.kid.as_str()))
            .collect(),
        None => have.clone(),
    };
    // Owned already (else refused above); the labels matter too: the
    // issuer finds key Secrets by SIGNING_KEY_LABEL (one written before it
    // existed gets it here).
    let secret_ok = existing.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("Opaque")
            && s.labels().get(SIGNING_KEY_LABEL) == Some(&name)
            && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
    }) || generated.is_some();
    if written != wanted || !secret_ok {
        let data: BTreeMap<String, ByteString> = wanted
            .iter()
            .filter_map(|kid| {
                pem_by_kid
                    .get(kid)
                    .map(|pem| (kid.to_string(), ByteString(pem.as_bytes().to_vec())))
            })
            .collect();
        apply_secret(&secrets, &key_secret(sk, &namespace, data)?).await?;
    }

    // Events, after the facts are recorded.
    for kid in &lost {
        tracing::warn!(%namespace, %name, %kid, "a key named in status is missing from the Secret");
        ctx.event(
            sk,
            EventType::Warning,
            "KeyLost",
            "CheckKeys",
            format!("Key {kid} is missing from Secret {secret_name} (deleted or edited by hand); it left the ring"),
        )
        .await;
    }
    if let Some((key, new_key)) = &generated {
        let note = match new_key.reason {
            NewKeyReason::FirstKey => format!(
                "Generated the first {} key {}, active now",
                algorithm.as_str(),
                key.kid
            ),
            NewKeyReason::NoActiveKey => format!(
                "No usable active key; generated {} key {}, active now",
                algorithm.as_str(),
                key.kid
            ),
            NewKeyReason::Scheduled => format!(
                "Generated {} key {}: published now, signs from {}",
                algorithm.as_str(),
                key.kid,
                new_key.activates_at
            ),
            NewKeyReason::Forced => format!(
                "Rotation requested: generated {} key {}: published now, signs from {}",
                algorithm.as_str(),
                key.kid,
                new_key.activates_at
            ),
        };
        ctx.event(sk, EventType::Normal, "KeyGenerated", "GenerateKey", note)
            .await;
    }
    for change in &plan.changes {
        let (reason, note) = match change {
            Change::Activated { kid } => ("KeyActivated", format!("Key {kid} signs new tokens")),
            Change::Retired { kid } => (
                "KeyRetired",
                format!(
                    "Key {kid} no longer signs; it stays published for {}",
                    humantime(policy.retire_after)
                ),
            ),
            Change::Dropped { kid } => {
                ("KeyRemoved", format!("Key {kid} was removed from the ring"))
            }
        };
        // The first key's activation is already said by KeyGenerated.
        if generated.as_ref().is_some_and(|(k, n)| {
            n.state == KeyState::Active
                && matches!(change, Change::Activated { kid } if *kid == k.kid)
        }) {
            continue;
        }
        tracing::info!(%namespace, %name, reason, "{note}");
        ctx.event(sk, EventType::Normal, reason, "Rotate", note)
            .await;
    }

    Ok(match plan.requeue_at {
        Some(at) => Action::requeue(until(now, at)),
        None => Action::await_change(),
    })
}

fn humantime(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) && secs >= 3600 {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) && secs >= 60 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_keys_are_recognised_across_algorithm_changes() {
        let ec = keys::generate(SigningAlgorithm::ES256, 2048).expect("key");
        assert!(stored_key_matches(
            &ec.pkcs8_pem,
            &ec.kid,
            SigningAlgorithm::ES256
        ));
        assert!(stored_key_matches(
            &ec.pkcs8_pem,
            &ec.kid,
            SigningAlgorithm::EdDSA
        ));
        assert!(!stored_key_matches(
            &ec.pkcs8_pem,
            "other",
            SigningAlgorithm::ES256
        ));
        assert!(!stored_key_matches(
            "garbage",
            &ec.kid,
            SigningAlgorithm::ES256
        ));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(humantime(std::time::Duration::from_secs(86400)), "24h");
        assert_eq!(humantime(std::time::Duration::from_secs(120)), "2m");
        assert_eq!(humantime(std::time::Duration::from_secs(8)), "8s");
    }
}
