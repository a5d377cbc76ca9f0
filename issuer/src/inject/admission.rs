//! `POST /webhooks/pods`: the HTTP side of the mutating admission webhook
//! (DESIGN.md §5). It decodes the AdmissionReview, looks the named clients
//! up in [`ClientDirectory`] (fed by the OAuthClient watch, so no API call
//! on the request path), runs the pure [`mutate::inject`], and answers with
//! the JSON patch or a refusal that `kubectl` shows the user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use sigil_crds::{CONDITION_READY, OAuthClient};

use crate::index::ObjectKey;
use crate::inject::mutate::{self, ClientView, Credential, InjectionConfig};
use crate::metrics::{Metrics, ResultLabel};

/// Path of the webhook on the issuer's main listener (the chart's
/// MutatingWebhookConfiguration points here).
pub const WEBHOOK_PATH: &str = "/webhooks/pods";

/// What the webhook knows of every OAuthClient, by namespace and name.
#[derive(Default)]
pub struct ClientDirectory {
    clients: RwLock<HashMap<ObjectKey, ClientView>>,
    /// Set once the first list completed: before that, a missing client
    /// may merely not be loaded yet.
    synced: AtomicBool,
}

/// The webhook's view of one OAuthClient: Ready only when the operator
/// says so, with its reason and message otherwise.
pub fn client_view(client: &OAuthClient) -> ClientView {
    let ready = client.status.as_ref().and_then(|status| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
    });
    let ready = match ready {
        Some(condition) if condition.status == "True" => Ok(()),
        Some(condition) => Err(format!("{}: {}", condition.reason, condition.message)),
        None => Err("the operator has not reconciled it yet".to_owned()),
    };
    // Only a client with no other method: one that also has a secret
    // keeps getting its Secret mounted.
    let credential = if client.spec.is_secretless() {
        Credential::ServiceAccountToken {
            service_accounts: client.spec.federated_service_accounts().to_vec(),
        }
    } else {
        Credential::Secret
    };
    ClientView {
        client_id: client.client_id(),
        secret_name: client.secret_name(),
        credential,
        ready,
    }
}

impl ClientDirectory {
    pub fn upsert(&self, client: &OAuthClient) {
        let key = ObjectKey::of(&client.metadata);
        self.write().insert(key, client_view(client));
    }

    pub fn remove(&self, key: &ObjectKey) {
        self.write().remove(key);
    }

    /// Replaces everything (a watcher's re-list) and marks the directory
    /// synced.
    pub fn replace(&self, clients: &[OAuthClient]) {
        let fresh = clients
            .iter()
            .map(|c| (ObjectKey::of(&c.metadata), client_view(c)))
            .collect();
        *self.write() = fresh;
        self.synced.store(true, Ordering::Release);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn lookup(&self, namespace: &str, name: &str) -> Option<ClientView> {
        let key = ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ObjectKey, ClientView>> {
        self.clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct AdmissionState {
    pub directory: Arc<ClientDirectory>,
    pub config: InjectionConfig,
    pub metrics: Arc<Metrics>,
}

/// The webhook route, to merge into the main (TLS) router.
pub fn router(state: Arc<AdmissionState>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(admit_pod))
        .with_state(state)
}

/// How an admission ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Credentials injected.
    Patched,
    /// Already injected (re-admission): nothing to change.
    Unchanged,
    /// Refused: the pod names a missing or not-Ready client, or a bad annotation.
    Refused,
    /// Refused because the issuer has not loaded the OAuthClients yet.
    NotSynced,
    /// Not a pod CREATE: allowed untouched.
    Ignored,
    /// The review could not be read or answered.
    Invalid,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
            Outcome::NotSynced => "not_synced",
            Outcome::Ignored => "ignored",
            Outcome::Invalid => "invalid",
        }
    }
}

async fn admit_pod(State(state): State<Arc<AdmissionState>>, body: Bytes) -> Response {
    match admit(&state, &body) {
        Ok(review) => Json(review).into_response(),
        Err(reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
    }
}

/// The webhook's answer to one request body, without HTTP: the
/// AdmissionReview to send back (200), or why the body is not one (the text
/// of a 400). Counts the outcome. Public so the fuzz target can drive it.
pub fn admit(
    state: &AdmissionState,
    body: &[u8],
) -> Result<AdmissionReview<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(error) => {
            tracing::warn!(%error, "webhook: unreadable AdmissionReview");
            count(&state.metrics, Outcome::Invalid);
            return Err(format!("not an AdmissionReview: {error}\n"));
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(_) => {
            tracing::warn!("webhook: AdmissionReview without a request");
            count(&state.metrics, Outcome::Invalid);
            return Ok(
                AdmissionResponse::invalid("AdmissionReview without a request").into_review(),
            );
        }
    };
    let (response, outcome) = review_pod(state, &request);
    count(&state.metrics, outcome);
    Ok(response.into_review())
}

fn count(metrics: &Metrics, outcome: Outcome) {
    metrics
        .admission_reviews
        .get_or_create(&ResultLabel {
            result: outcome.label(),
        })
        .inc();
}

/// The answer to one admission request. Pure apart from logging: dry-run
/// requests are answered the same way, as nothing here has side effects.
pub fn review_pod(
    state: &AdmissionState,
    request: &AdmissionRequest<DynamicObject>,
) -> (AdmissionResponse, Outcome) {
    let allow = AdmissionResponse::from(request);
    let namespace = request.namespace.clone().unwrap_or_default();
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != Operation::Create {
        tracing::info!(
            kind = %request.kind.kind,
            operation = ?request.operation,
            %namespace,
            name = %request.name,
            "webhook: not a pod creation; allowed unchanged (check the webhook's rules)"
        );
        return (allow, Outcome::Ignored);
    }
    let pod: Pod = match request
        .object
        .as_ref()
        .map(|object| serde_json::to_value(object).and_then(serde_json::from_value))
    {
        Some(Ok(pod)) => pod,
        Some(Err(error)) => {
            tracing::warn!(%namespace, %error, "webhook: the request's object is not a Pod");
            return (
                allow.deny(format!("sigil: cannot read the pod: {error}")),
                Outcome::Invalid,
            );
        }
        None => {
            tracing::warn!(%namespace, "webhook: pod creation without an object");
            return (
                allow.deny("sigil: the admission request carries no pod"),
                Outcome::Invalid,
            );
        }
    };
    // Pods of a ReplicaSet have only generateName at admission time.
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
        .unwrap_or_default();
    if !state.directory.is_synced() {
        tracing::warn!(%namespace, pod = %pod_name, "webhook: OAuthClients not loaded yet; refusing for now");
        return (
            allow.deny(
                "sigil: the issuer has not loaded the OAuthClients yet; the pod will be retried",
            ),
            Outcome::NotSynced,
        );
    }
    let lookup = |name: &str| state.directory.lookup(&namespace, name);
    let mutated = match mutate::inject(&pod, &namespace, lookup, &state.config) {
        Ok(mutated) => mutated,
        Err(refusal) => {
            tracing::info!(%namespace, pod = %pod_name, dry_run = request.dry_run, %refusal, "webhook: refused a pod");
            return (allow.deny(refusal), Outcome::Refused);
        }
    };
    let patch = match mutate::patch(&pod, &mutated) {
        Ok(patch) => patch,
        Err(error) => {
            tracing::error!(%namespace, pod = %pod_name, %error, "webhook: cannot diff the pod");
            return (
                allow.deny(format!("sigil: cannot build the patch: {error}")),
                Outcome::Invalid,
            );
        }
    };
    let outcome = if patch.0.is_empty() {
        Outcome::Unchanged
    } else {
        Outcome::Patched
    };
    let operations = patch.0.len();
    match allow.clone().with_patch(patch) {
        Ok(response) => {
            tracing::info!(%namespace, pod = %pod_name, dry_run = request.dry_run, operations, "webhook: injected credentials");
            (response, outcome)
        }
        Err(error) => {
            tracing::error!(%namespace, pod = %pod_name, %error, "webhook: cannot serialize the patch");
            (
                allow.deny(format!("sigil: cannot serialize the patch: {error}")),
                Outcome::Invalid,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> AdmissionState {
        AdmissionState {
            directory: Arc::new(ClientDirectory::default()),
            config: crate::inject::mutate::tests::config(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn oauth_client(name: &str, ready: serde_json::Value) -> OAuthClient {
        serde_json::from_value(json!({
            "apiVersion": "sigil.dev/v1alpha1",
            "kind": "OAuthClient",
            "metadata": { "name": name, "namespace": "tasks" },
            "spec": { "scopes": ["a"], "audiences": ["b"] },
            "status": { "conditions": [ready] },
        }))
        .unwrap()
    }

    fn condition(status: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({
            "type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-22T00:00:00Z",
        })
    }

    fn request(
        kind: &str,
        operation: &str,
        object: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
                "kind": { "group": "", "version": "v1", "kind": kind },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "tasks",
                "operation": operation,
                "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
                "object": object,
                "dryRun": false,
            },
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn pod(client: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "generateName": "web-", "annotations": { "sigil.dev/client": client } },
            "spec": { "containers": [{ "name": "app", "image": "app" }] },
        })
    }

    #[tokio::test]
    async fn http_answers_a_review_with_its_uid_and_rejects_garbage() {
        use tower::ServiceExt;
        let state = Arc::new(state());
        state
            .directory
            .replace(&[oauth_client("web", condition("True", "Ready", "ok"))]);
        let call = |body: Vec<u8>| {
            let router = router(state.clone());
            async move {
                let response = router
                    .oneshot(
                        axum::http::Request::post(WEBHOOK_PATH)
                            .header("content-type", "application/json")
                            .body(axum::body::Body::from(body))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = response.status();
                let bytes = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (status, bytes)
            }
        };
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "7c9c1a4e-0000-4000-8000-000000000001",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "tasks",
                "operation": "CREATE",
                "userInfo": {},
                "object": pod("web"),
                "dryRun": true,
            },
        });
        let (status, body) = call(serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"],
            "7c9c1a4e-0000-4000-8000-000000000001"
        );
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");

        let (status, _) = call(b"{not json".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let metrics = state.metrics.encode();
        assert!(
            metrics.contains("admission_reviews_total{result=\"patched\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("admission_reviews_total{result=\"invalid\"} 1"),
            "{metrics}"
        );
    }

    #[test]
    fn directory_keeps_client_id_secret_name_and_ready_reason() {
        let directory = ClientDirectory::default();
        assert!(!directory.is_synced());
        directory.replace(&[oauth_client("web", condition("True", "Ready", "ok"))]);
        assert!(directory.is_synced());
        directory.upsert(&oauth_client(
            "dup",
            condition(
                "False",
                "DuplicateClientId",
                "client id x is used by tasks/y",
            ),
        ));
        let web = directory.lookup("tasks", "web").unwrap();
        assert_eq!(web.client_id, "web.tasks");
        assert_eq!(web.secret_name, "web-oauth");
        assert_eq!(web.ready, Ok(()));
        assert_eq!(
            directory.lookup("tasks", "dup").unwrap().ready,
            Err("DuplicateClientId: client id x is used by tasks/y".to_owned())
        );
        assert!(directory.lookup("other", "web").is_none());
        directory.remove(&ObjectKey {
            namespace: "tasks".into(),
            name: "web".into(),
        });
        assert!(directory.lookup("tasks", "web").is_none());
        assert_eq!(web.credential, Credential::Secret);
        // A secretless client: its pods get a ServiceAccount token of one of
        // its ServiceAccounts; one that also has a secret keeps its Secret.
        let mut secretless = oauth_client("sa", condition("True", "CredentialsReady", "ok"));
        secretless.spec.auth_methods = Some(vec![sigil_crds::AuthMethod::FederatedJwt]);
        secretless.spec.service_accounts = Some(vec!["sa".into()]);
        directory.upsert(&secretless);
        let view = directory.lookup("tasks", "sa").unwrap();
        assert_eq!(view.ready, Ok(()));
        assert_eq!(
            view.credential,
            Credential::ServiceAccountToken {
                service_accounts: vec!["sa".into()]
            }
        );
        secretless.spec.auth_methods = Some(vec![
            sigil_crds::AuthMethod::FederatedJwt,
            sigil_crds::AuthMethod::ClientSecretBasic,
        ]);
        directory.upsert(&secretless);
        assert_eq!(
            directory.lookup("tasks", "sa").unwrap().credential,
            Credential::Secret
        );
    }

    #[test]
    fn patches_a_known_pod_and_refuses_a_missing_client_by_name() {
        let state = state();
        state
            .directory
            .replace(&[oauth_client("web", condition("True", "Ready", "ok"))]);
        let (response, outcome) = review_pod(&state, &request("Pod", "CREATE", pod("web")));
        assert_eq!(outcome, Outcome::Patched);
        assert!(response.allowed);
        let patch: serde_json::Value =
            serde_json::from_slice(response.patch.as_ref().unwrap()).unwrap();
        assert!(patch.to_string().contains("web-oauth"), "{patch}");

        let (response, outcome) = review_pod(&state, &request("Pod", "CREATE", pod("missing")));
        assert_eq!(outcome, Outcome::Refused);
        assert!(!response.allowed);
        assert_eq!(
            response.result.message,
            "annotation sigil.dev/client: OAuthClient tasks/missing does not exist"
        );
    }

    #[test]
    fn refuses_until_synced_and_ignores_what_is_not_a_pod_creation() {
        let state = state();
        let (response, outcome) = review_pod(&state, &request("Pod", "CREATE", pod("web")));
        assert_eq!(outcome, Outcome::NotSynced);
        assert!(!response.allowed);

        state.directory.replace(&[]);
        let deployment =
            json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "d" } });
        let (response, outcome) = review_pod(&state, &request("Deployment", "CREATE", deployment));
        assert_eq!(outcome, Outcome::Ignored);
        assert!(response.allowed && response.patch.is_none());
        let (response, outcome) = review_pod(&state, &request("Pod", "UPDATE", pod("web")));
        assert_eq!(outcome, Outcome::Ignored);
        assert!(response.allowed && response.patch.is_none());
    }
}
