//! Secretless clients (`federated_jwt`) on the real API server, with the
//! real operator and issuer: a ServiceAccount token minted by the
//! TokenRequest API (as the kubelet projects one) is the client credential.
//! The right audience gets a token for the client that lists the
//! ServiceAccount; a wrong audience, another namespace, an unlisted
//! ServiceAccount, an altered token and one signed by a key the API server
//! does not publish get `invalid_client`; with TokenReview on, so does a
//! still-unexpired token of a deleted ServiceAccount or pod. The operator writes
//! no Secret for a client whose only method is `federated_jwt`.

mod issuer_support;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use issuer_support::*;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sigil_crds::{OAuthClient, SigningKey};
use sigil_tests::cluster::{Component, ControlPlane, Options, TestCluster};

const JWT_BEARER: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";

async fn service_account(client: &kube::Client, namespace: &str, name: &str) {
    apply::<ServiceAccount>(
        client,
        namespace,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    )
    .await;
}

fn secretless_client(name: &str, accounts: &[&str], audience: &str) -> serde_json::Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "authMethods": ["federated_jwt"],
            "serviceAccounts": accounts,
            "audiences": [audience],
            "scopes": [format!("{audience}.view")],
        },
    })
}

/// A token of `namespace/name` from the TokenRequest API (what `kubectl
/// create token --audience` does), valid for 10 minutes (the shortest).
async fn mint(client: &kube::Client, namespace: &str, name: &str, audience: &str) -> String {
    mint_bound(client, namespace, name, audience, None).await
}

/// Like [`mint`], bound to a pod (name, uid) as the kubelet's projected
/// tokens are.
async fn mint_bound(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audience: &str,
    pod: Option<(&str, &str)>,
) -> String {
    use k8s_openapi::api::authentication::v1::BoundObjectReference;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            expiration_seconds: Some(600),
            bound_object_ref: pod.map(|(pod, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: Some(uid.into()),
            }),
        }),
        ..Default::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .and_then(|status| status.token)
        .expect("TokenRequest status.token")
}

async fn token_with(token_url: &str, assertion: &str, client_id: Option<&str>) -> Reply {
    let mut form = format!(
        "grant_type=client_credentials&client_assertion_type={JWT_BEARER}&client_assertion={assertion}"
    );
    if let Some(id) = client_id {
        form.push_str(&format!("&client_id={id}"));
    }
    request(
        "POST",
        token_url,
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await
    .expect("token request")
}

fn assert_invalid_client(reply: &Reply, what: &str) {
    assert_eq!(
        (reply.status, reply.json()["error"].as_str()),
        (401, Some("invalid_client")),
        "{what}: {}",
        reply.body
    );
}

/// Waits until the operator has admitted `name` (status.grant written).
async fn admitted(clients: &Api<OAuthClient>, name: &str) -> OAuthClient {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(client)) = clients.get_opt(name).await
            && client.is_admitted()
        {
            return client;
        }
        assert!(Instant::now() < deadline, "{name} not admitted within 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until the issuer hands `assertion` a token (its index follows the
/// operator's status write within moments).
async fn until_token(token_url: &str, assertion: &str, client_id: Option<&str>) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = token_with(token_url, assertion, client_id).await;
        if reply.status == 200 {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "no token within 15s: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `token` with its payload replaced by `edit(payload)`, signature kept.
fn altered(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = decode_jwt_claims(token);
    edit(&mut payload);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    )
}

/// `claims` signed by a fresh key the API server never published, under
/// `kid`.
fn forged(claims: &serde_json::Value, kid: &str) -> String {
    use sigil_core::keys::{ParsedKey, generate_pkcs8_der};
    use sigil_crds::SigningAlgorithm;
    let der = generate_pkcs8_der(SigningAlgorithm::RS256, 2048).expect("RSA key");
    let key = ParsedKey::from_pkcs8_der(SigningAlgorithm::RS256, &der).expect("parsed");
    let mut token = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": kid}).to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(token.as_bytes()).expect("signing");
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

fn kid_of(token: &str) -> String {
    let header = URL_SAFE_NO_PAD
        .decode(token.split('.').next().expect("header"))
        .expect("base64url");
    let header: serde_json::Value = serde_json::from_slice(&header).expect("JSON header");
    header["kid"].as_str().expect("kid").to_owned()
}

#[tokio::test]
async fn service_account_tokens_authenticate_the_client_that_lists_them_and_nothing_else() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let sigil = cluster.namespace("sa-sigil").await;
    let tasks = cluster.namespace("sa-tasks").await;
    let other = cluster.namespace("sa-other").await;
    let audience = format!("event-{tasks}");

    let scratch = Scratch::new("sigil-secretless");
    apply::<SigningKey>(
        &client,
        &sigil,
        json!({"apiVersion": "sigil.dev/v1alpha1", "kind": "SigningKey",
               "metadata": {"name": "default"}, "spec": {"algorithm": "ES256"}}),
    )
    .await;
    let mut issuer = IssuerProcess::start(
        &["--namespace", &sigil, "--service-account-token-review"],
        &[(
            "KUBECONFIG",
            cluster.kubeconfig().to_str().expect("utf8 path"),
        )],
        &scratch.0.join("issuer.log"),
    );
    let _operator = OperatorProcess::start(
        cluster.kubeconfig(),
        &sigil,
        &[&tasks, &other],
        &issuer.base_url,
        &["--unclaimed-audiences", "open"],
        &scratch.0.join("operator.log"),
    );
    issuer.wait_ready(Duration::from_secs(60)).await;
    let token_url = issuer.token_url();
    let issuer_url = issuer.base_url.clone();

    // Discovery names the method.
    let discovery = get(&format!("{issuer_url}/.well-known/openid-configuration"))
        .await
        .expect("discovery");
    assert!(
        discovery.json()["token_endpoint_auth_methods_supported"]
            .as_array()
            .expect("methods")
            .contains(&json!("federated_jwt")),
        "{}",
        discovery.body
    );

    for name in ["task-service", "unlisted", "batch", "doomed"] {
        service_account(&client, &tasks, name).await;
    }
    service_account(&client, &other, "task-service").await;
    apply::<OAuthClient>(
        &client,
        &tasks,
        secretless_client("task-service", &["task-service"], &audience),
    )
    .await;
    apply::<OAuthClient>(
        &client,
        &tasks,
        secretless_client("doomed", &["doomed"], &audience),
    )
    .await;
    // Two clients share the `batch` ServiceAccount; one also keeps a secret.
    apply::<OAuthClient>(
        &client,
        &tasks,
        secretless_client("batch-a", &["batch"], &audience),
    )
    .await;
    let mut with_secret = secretless_client("batch-b", &["batch"], &audience);
    with_secret["spec"]["authMethods"] = json!(["federated_jwt", "client_secret_basic"]);
    apply::<OAuthClient>(&client, &tasks, with_secret).await;

    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &tasks);
    for name in ["task-service", "doomed", "batch-a", "batch-b"] {
        admitted(&clients, name).await;
    }
    let secretless = admitted(&clients, "task-service").await;
    let status = secretless.status.expect("status");
    assert!(status.secret_verifiers.is_empty() && status.secret_name.is_none());
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True", "{}", ready.message);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &tasks);
    assert!(
        secrets
            .get_opt("task-service-oauth")
            .await
            .expect("get")
            .is_none(),
        "a federated_jwt-only client gets no Secret"
    );
    assert!(
        secrets
            .get_opt("batch-b-oauth")
            .await
            .expect("get")
            .is_some(),
        "a client that also has a secret method keeps its Secret"
    );
    // Its settings, nothing secret, in a ConfigMap its pods mount with
    // their ServiceAccount token.
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &tasks);
    let map = maps
        .get("task-service-oauth")
        .await
        .expect("the secretless client's ConfigMap");
    let data = map.data.expect("ConfigMap data");
    assert_eq!(data["client_id"], format!("task-service.{tasks}"));
    assert!(data["token_url"].ends_with("/oauth2/token"), "{data:?}");
    assert!(!data.contains_key("client_secret"), "{data:?}");
    assert!(
        map.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.kind == "OAuthClient"
                && r.name == "task-service"
                && r.controller == Some(true))
    );

    // The right audience: a token for the client, no client_id needed.
    let good = mint(&client, &tasks, "task-service", &issuer_url).await;
    let reply = until_token(&token_url, &good, None).await;
    let access = decode_jwt_claims(reply.json()["access_token"].as_str().expect("token"));
    let id = format!("task-service.{tasks}");
    assert_eq!(
        (access["sub"].as_str(), access["client_id"].as_str()),
        (Some(id.as_str()), Some(id.as_str()))
    );
    assert_eq!(access["aud"], json!(audience));
    // With the client_id named, the same; with another one, refused.
    assert_eq!(token_with(&token_url, &good, Some(&id)).await.status, 200);
    assert_invalid_client(
        &token_with(&token_url, &good, Some(&format!("doomed.{tasks}"))).await,
        "the token's ServiceAccount is not the named client's",
    );

    // Wrong audience (the API server's own, and another service's).
    for wrong in [
        "https://kubernetes.default.svc.cluster.local",
        "https://vault.example",
    ] {
        let token = mint(&client, &tasks, "task-service", wrong).await;
        assert_invalid_client(&token_with(&token_url, &token, None).await, wrong);
    }
    // Same ServiceAccount name, another namespace.
    let elsewhere = mint(&client, &other, "task-service", &issuer_url).await;
    assert_invalid_client(
        &token_with(&token_url, &elsewhere, None).await,
        "other namespace",
    );
    assert_invalid_client(
        &token_with(&token_url, &elsewhere, Some(&id)).await,
        "other namespace, naming the client",
    );
    // A ServiceAccount no client lists.
    let unlisted = mint(&client, &tasks, "unlisted", &issuer_url).await;
    assert_invalid_client(&token_with(&token_url, &unlisted, None).await, "unlisted");

    // Expired: the shortest TokenRequest lives 10 minutes, so the claims of
    // a real token are set back an hour, once keeping the API server's
    // signature, once signed by a key the API server does not publish
    // (under its real kid and under an unknown one).
    let expired = |claims: &mut serde_json::Value| {
        let exp = claims["exp"].as_i64().expect("exp");
        claims["exp"] = json!(exp - 3600);
        claims["iat"] = json!(exp - 4200);
        claims["nbf"] = json!(exp - 4200);
    };
    assert_invalid_client(
        &token_with(&token_url, &altered(&good, expired), None).await,
        "expired, altered",
    );
    let mut expired_claims = decode_jwt_claims(&good);
    expired(&mut expired_claims);
    assert_invalid_client(
        &token_with(&token_url, &forged(&expired_claims, &kid_of(&good)), None).await,
        "expired, forged",
    );
    // Unexpired but signed by an unpublished key, or moved to another
    // ServiceAccount.
    let claims = decode_jwt_claims(&good);
    assert_invalid_client(
        &token_with(&token_url, &forged(&claims, &kid_of(&good)), None).await,
        "unpublished key, real kid",
    );
    assert_invalid_client(
        &token_with(&token_url, &forged(&claims, "rotated-out"), None).await,
        "unpublished key, unknown kid",
    );
    let moved = altered(&unlisted, |c| {
        c["sub"] = json!(format!("system:serviceaccount:{tasks}:task-service"));
        c["kubernetes.io"]["serviceaccount"]["name"] = json!("task-service");
    });
    assert_invalid_client(
        &token_with(&token_url, &moved, None).await,
        "altered account",
    );

    // Two clients list `batch`: client_id required, and picks.
    let batch = mint(&client, &tasks, "batch", &issuer_url).await;
    assert_invalid_client(&token_with(&token_url, &batch, None).await, "ambiguous");
    let reply = token_with(&token_url, &batch, Some(&format!("batch-b.{tasks}"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let access = decode_jwt_claims(reply.json()["access_token"].as_str().expect("token"));
    assert_eq!(access["sub"], json!(format!("batch-b.{tasks}")));

    // TokenReview: a deleted ServiceAccount's unexpired token stops working
    // (offline it would still verify). The first token was used, and its
    // review is cached for up to 10 s; the second was never seen.
    let used = mint(&client, &tasks, "doomed", &issuer_url).await;
    let unused = mint(&client, &tasks, "doomed", &issuer_url).await;
    until_token(&token_url, &used, None).await;
    Api::<ServiceAccount>::namespaced(client.clone(), &tasks)
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("deleting the ServiceAccount");
    assert_invalid_client(
        &token_with(&token_url, &unused, None).await,
        "deleted account",
    );
    let deleted_at = Instant::now();
    let deadline = deleted_at + Duration::from_secs(15);
    loop {
        let reply = token_with(&token_url, &used, None).await;
        if reply.status == 401 {
            assert_invalid_client(&reply, "deleted account, cached review");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the used token still works 15s after deletion"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "a deleted ServiceAccount's cached token stopped working after {:?}",
        deleted_at.elapsed()
    );

    // A token bound to a pod (as the kubelet projects them) names the pod;
    // once the pod is deleted, TokenReview refuses it. No kubelet runs, so
    // the pod stays Pending and is deleted at once.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &tasks);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "task-7d9"},
        "spec": {
            "serviceAccountName": "task-service",
            "containers": [{"name": "app", "image": "busybox:dev"}],
        },
    }))
    .expect("pod");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("creating the pod");
    let pod_uid = pod.metadata.uid.clone().expect("uid");
    let bound = mint_bound(
        &client,
        &tasks,
        "task-service",
        &issuer_url,
        Some(("task-7d9", &pod_uid)),
    )
    .await;
    assert_eq!(
        decode_jwt_claims(&bound)["kubernetes.io"]["pod"]["uid"],
        json!(pod_uid)
    );
    let reply = token_with(&token_url, &bound, None).await;
    assert_eq!(reply.status, 200, "pod-bound token: {}", reply.body);
    let unused_bound = mint_bound(
        &client,
        &tasks,
        "task-service",
        &issuer_url,
        Some(("task-7d9", &pod_uid)),
    )
    .await;
    pods.delete("task-7d9", &DeleteParams::default().grace_period(0))
        .await
        .expect("deleting the pod");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pods.get_opt("task-7d9").await.expect("get pod").is_some() {
        assert!(Instant::now() < deadline, "the pod was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_invalid_client(
        &token_with(&token_url, &unused_bound, None).await,
        "deleted pod",
    );

    // The metrics say what happened.
    let metrics = get(&format!("{}/metrics", issuer.health_url))
        .await
        .expect("metrics")
        .body;
    for line in [
        "sigil_issuer_token_reviews_total{result=\"authenticated\"}",
        "sigil_issuer_token_reviews_total{result=\"rejected\"}",
        "sigil_issuer_service_account_key_fetches_total{result=\"success\"}",
        "sigil_issuer_token_review_cache_entries",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

/// Restarts kube-apiserver with `signing_key` signing new tokens and the
/// public keys in `published` verifying (and published in its JWKS).
async fn rotate_api_server_keys(
    control_plane: &ControlPlane,
    signing_key: &str,
    published: &[&str],
) {
    let pki = control_plane.dir().join("pki");
    sigil_tests::pki::write_private(&pki.join("sa.key"), signing_key).expect("sa.key");
    std::fs::write(pki.join("sa.pub"), published.concat()).expect("sa.pub");
    control_plane
        .stop_component(Component::ApiServer)
        .expect("stopping kube-apiserver");
    control_plane
        .start_component(Component::ApiServer)
        .expect("starting kube-apiserver");
    control_plane
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("kube-apiserver ready again");
}

#[tokio::test]
async fn an_api_server_key_rotation_is_followed_and_a_rotated_out_key_is_refused() {
    // A control plane of its own: its API server restarts with new keys.
    let control_plane = ControlPlane::start(Options::default())
        .await
        .expect("control plane");
    control_plane.install_crds().await.expect("CRDs");
    let client = control_plane.client().await.expect("client");
    let ns = "sigil-rotation";
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply("sigil-e2e"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await
        .expect("namespace");
    let scratch = Scratch::new("sigil-sa-rotation");
    apply::<SigningKey>(
        &client,
        ns,
        json!({"apiVersion": "sigil.dev/v1alpha1", "kind": "SigningKey",
               "metadata": {"name": "default"}, "spec": {"algorithm": "ES256"}}),
    )
    .await;
    let kubeconfig = control_plane.kubeconfig().to_owned();
    let mut issuer = IssuerProcess::start(
        &["--namespace", ns, "--service-account-token-review"],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf8 path"))],
        &scratch.0.join("issuer.log"),
    );
    let _operator = OperatorProcess::start(
        &kubeconfig,
        ns,
        &[ns],
        &issuer.base_url,
        &["--unclaimed-audiences", "open"],
        &scratch.0.join("operator.log"),
    );
    issuer.wait_ready(Duration::from_secs(60)).await;
    let (token_url, issuer_url) = (issuer.token_url(), issuer.base_url.clone());
    service_account(&client, ns, "task-service").await;
    apply::<OAuthClient>(
        &client,
        ns,
        secretless_client("task-service", &["task-service"], "event-rotation"),
    )
    .await;
    admitted(&Api::namespaced(client.clone(), ns), "task-service").await;
    let old = mint(&client, ns, "task-service", &issuer_url).await;
    until_token(&token_url, &old, None).await;

    // A new signing key; the old one still verifies.
    let pki = control_plane.dir().join("pki");
    let old_public = std::fs::read_to_string(pki.join("sa.pub")).expect("sa.pub");
    let (new_key, new_public) = sigil_tests::pki::service_account_key().expect("new key");
    rotate_api_server_keys(&control_plane, &new_key, &[&old_public, &new_public]).await;
    let client = control_plane.client().await.expect("client");
    let new = mint(&client, ns, "task-service", &issuer_url).await;
    assert_ne!(
        kid_of(&new),
        kid_of(&old),
        "the API server signs with the new key"
    );
    let started = Instant::now();
    until_token(&token_url, &new, None).await;
    eprintln!(
        "a token signed by the new API-server key worked after {:?} (its unknown kid made the issuer refetch the JWKS)",
        started.elapsed()
    );
    assert_eq!(token_with(&token_url, &old, None).await.status, 200);

    // The old key rotated out: its still-unexpired token is refused (by
    // TokenReview at once, once the cached review of its last use ends;
    // offline, once the cached keys are 5 minutes old).
    rotate_api_server_keys(&control_plane, &new_key, &[&new_public]).await;
    let started = Instant::now();
    loop {
        let reply = token_with(&token_url, &old, None).await;
        if reply.status == 401 {
            assert_invalid_client(&reply, "a rotated-out key");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a token of a rotated-out key still works: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "a token of the rotated-out API-server key was refused after {:?}",
        started.elapsed()
    );
    assert_eq!(token_with(&token_url, &new, None).await.status, 200);
}
