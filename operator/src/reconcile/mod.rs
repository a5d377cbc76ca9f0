//! One module per custom resource; helpers they share.

pub mod oauth_client;
pub mod oauth_resource;
pub mod signing_key;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use sigil_crds::conditions::{HasConditions, ready_reason_is};
use sigil_crds::{CONDITION_READY, Reason};

use crate::context::{Context, Error};

/// The `Ready` condition, keeping `lastTransitionTime` when the status
/// did not change.
pub fn ready_condition(
    previous: &[Condition],
    ready: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    condition(
        CONDITION_READY,
        previous,
        ready,
        reason,
        message,
        generation,
        now,
    )
}

/// A condition of type `type_`, keeping `lastTransitionTime` when its
/// status did not change.
pub fn condition(
    type_: &str,
    previous: &[Condition],
    ok: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(floor_second(now)));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.as_str().to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Why a reconcile stops without credentials or keys: the `Ready=False`
/// reason, the Event's action and the message both carry.
pub struct Refusal {
    pub reason: Reason,
    /// What the operator was doing (`CheckClientId`, `WriteSecret`).
    pub action: &'static str,
    pub message: String,
}

/// Records a refusal: writes `new` with `Ready=False` and the refusal's
/// reason and message, then, when the reason is new, one Warning Event.
/// Status first, everywhere: it is the record the issuer and users read;
/// the Event is only a notification and may be lost.
pub async fn refuse<K, S>(
    ctx: &Context,
    obj: &K,
    api: &kube::Api<K>,
    (old, mut new): (&S, S),
    refusal: Refusal,
    now: Timestamp,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: PartialEq + serde::Serialize + HasConditions,
{
    let generation = obj.meta().generation;
    let ready = ready_condition(
        old.conditions(),
        false,
        refusal.reason,
        refusal.message.clone(),
        generation,
        now,
    );
    new.set_conditions(vec![ready], generation);
    let reason_is_new = !ready_reason_is(old.conditions(), refusal.reason);
    write_status(api, &obj.name_any(), old, new).await?;
    if reason_is_new {
        ctx.event(
            obj,
            EventType::Warning,
            refusal.reason.as_str(),
            refusal.action,
            refusal.message,
        )
        .await;
    }
    Ok(Action::await_change())
}

/// The refusal for a Secret that exists and is not `owner_kind`'s: never
/// read, written or deleted. `fix` says what the user can do.
pub fn secret_conflict(secret_name: &str, owner_kind: &str, fix: &str) -> Refusal {
    Refusal {
        reason: Reason::SecretConflict,
        action: "WriteSecret",
        message: format!(
            "Secret {secret_name} exists and is not managed by this {owner_kind}; {fix}"
        ),
    }
}

pub fn floor_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Whether the object's controller reference is exactly `owner` (same
/// uid): the only proof that the operator made this Secret for `owner`.
/// The `managed-by` label proves nothing (anyone who can create a Secret
/// can set it), nor does an owner of the same kind and name (another
/// object under a recycled name).
pub fn secret_owned_by<K: Resource<DynamicType = ()>>(secret: &ObjectMeta, owner: &K) -> bool {
    let Some(uid) = owner.meta().uid.as_deref() else {
        return false;
    };
    secret
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// What [`read_secret_for`] found under a name.
#[derive(Debug)]
pub enum SecretFor {
    Missing,
    /// Controlled by the owner: read in full, data included.
    Owned(Box<Secret>),
    /// Someone else's: only its metadata was read. Never written.
    Foreign,
}

/// Reads the Secret `name` that `owner` would write: its metadata first
/// (`Accept: ...;as=PartialObjectMetadata`, no data on the wire), and its
/// data only when its controller reference names `owner`'s uid. RBAC lets
/// the operator get any Secret (it cannot select by owner or label); this
/// is where that right is narrowed, and the system test's audit log checks
/// it.
pub async fn read_secret_for<K: Resource<DynamicType = ()>>(
    secrets: &Api<Secret>,
    name: &str,
    owner: &K,
) -> Result<SecretFor, Error> {
    let namespace = owner.meta().namespace.as_deref().unwrap_or_default();
    let Some(meta) = secrets
        .get_metadata_opt(name)
        .await
        .map_err(Error::kube(format!(
            "reading the metadata of Secret {namespace}/{name}"
        )))?
    else {
        return Ok(SecretFor::Missing);
    };
    if !secret_owned_by(&meta.metadata, owner) {
        return Ok(SecretFor::Foreign);
    }
    let full = secrets
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading Secret {namespace}/{name}")))?;
    Ok(match full {
        None => SecretFor::Missing,
        Some(secret) if secret_owned_by(&secret.metadata, owner) => {
            SecretFor::Owned(Box::new(secret))
        }
        // Replaced by someone else's between the two reads: not used.
        Some(_) => SecretFor::Foreign,
    })
}

/// A time until `at` from `now` as a requeue delay, at least 100 ms.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    let delay = at.duration_since(now);
    Duration::try_from(delay)
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100))
}

/// Writes `new` as the object's status with server-side apply, unless it
/// equals `old` (no write, no watch event for nothing).
pub async fn write_status<K, S>(
    api: &kube::Api<K>,
    name: &str,
    old: &S,
    new: S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: PartialEq + serde::Serialize,
{
    if *old == new {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(crate::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube(format!(
        "writing the status of {} {name}",
        K::kind(&())
    )))?;
    Ok(())
}

fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Runs a reconcile with metrics, and clears the object's failure count
/// when it succeeds.
pub async fn instrumented<K, F>(obj: Arc<K>, ctx: Arc<Context>, run: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Action, Error>>,
{
    let started = std::time::Instant::now();
    let result = run.await;
    let kind: &'static str = match K::kind(&()).as_ref() {
        "OAuthClient" => "OAuthClient",
        "OAuthResource" => "OAuthResource",
        _ => "SigningKey",
    };
    let outcome = result.as_ref().map(|_| ()).map_err(Error::metric_label);
    ctx.metrics
        .observe_reconcile(kind, outcome, started.elapsed());
    if result.is_ok() {
        ctx.reset_failures(&object_key(obj.as_ref()));
    }
    result
}

/// Per-object exponential backoff: one failing object retries on its own
/// schedule and never holds up the others.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = object_key(obj.as_ref());
    let delay = ctx.failure_backoff(&key);
    tracing::warn!(object = %key, %error, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use sigil_crds::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OAuthClient};

    fn owner() -> OAuthClient {
        let mut c = OAuthClient::new(
            "svc",
            serde_json::from_value(serde_json::json!({})).expect("spec"),
        );
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    fn secret(labelled: bool, controller: Option<(&str, &str, &str)>) -> Secret {
        let mut s = Secret::default();
        if labelled {
            s.metadata.labels =
                Some([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned())].into());
        }
        if let Some((kind, name, uid)) = controller {
            s.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "sigil.dev/v1alpha1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]);
        }
        s
    }

    #[test]
    fn only_secrets_controlled_by_this_uid_are_ours() {
        let oac = owner();
        let ours = |s: Secret| secret_owned_by(&s.metadata, &oac);
        assert!(ours(secret(true, Some(("OAuthClient", "svc", "uid-1")))));
        assert!(
            ours(secret(false, Some(("OAuthClient", "svc", "uid-1")))),
            "label removed by hand: still ours, the apply puts it back"
        );
        assert!(
            !ours(secret(true, Some(("OAuthClient", "svc", "old-uid")))),
            "an earlier object of the same name: not this one's"
        );
        assert!(
            !ours(secret(true, None)),
            "the label alone proves nothing: anyone can set it"
        );
        assert!(!ours(secret(false, None)), "a user's Secret");
        assert!(
            !ours(secret(true, Some(("OAuthClient", "other", "uid-2")))),
            "another client's"
        );
        let mut not_controller = secret(true, Some(("OAuthClient", "svc", "uid-1")));
        if let Some(refs) = not_controller.metadata.owner_references.as_mut() {
            refs[0].controller = None;
        }
        assert!(!ours(not_controller), "an owner, not the controller");
        let mut no_uid = oac.clone();
        no_uid.metadata.uid = None;
        assert!(!secret_owned_by(
            &secret(true, Some(("OAuthClient", "svc", ""))).metadata,
            &no_uid
        ));
    }
}
