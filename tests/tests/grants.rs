//! The tenant boundary on the real API server, with the real operator and
//! issuer: the team that owns an API grants its scopes to client
//! namespaces, a grant and its revocation take effect on the issuer within
//! a second without touching the client, a second claimant of an audience
//! is told who holds it, and a client id squatting another namespace's is
//! refused naming the rule.

mod issuer_support;

use std::time::{Duration, Instant};

use issuer_support::*;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sigil_crds::{OAuthClient, OAuthResource, SigningKey};
use sigil_tests::cluster::TestCluster;

fn resource(name: &str, audience: &str, grants: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthResource",
        "metadata": {"name": name},
        "spec": {
            "audience": audience,
            "scopes": [
                {"name": format!("{audience}.read"), "description": "read events"},
                {"name": format!("{audience}.create"), "description": "create events"},
            ],
            "grants": grants,
        },
    })
}

/// Polls until `accept` holds for a token reply; returns how long it took.
async fn until_reply(
    token_url: &str,
    id: &str,
    secret: &str,
    form: &str,
    timeout: Duration,
    accept: impl Fn(&Reply) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let reply = token_basic(token_url, id, secret, form).await;
        if accept(&reply) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{form}: still {} {} after {timeout:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn condition(client: &OAuthClient, type_: &str) -> Option<(String, String, String)> {
    client
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_for<K, T>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    check: impl Fn(&K) -> Option<T>,
) -> T
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(obj)) = api.get_opt(name).await
            && let Some(found) = check(&obj)
        {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn grants_decide_scopes_take_effect_within_a_second_and_squatters_are_refused() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let sigil = cluster.namespace("grant-sigil").await;
    let calendar = cluster.namespace("grant-calendar").await;
    let tasks = cluster.namespace("grant-tasks").await;
    let sandbox = cluster.namespace("grant-sandbox").await;
    // Audiences are cluster-wide: one of this test's own.
    let audience = format!("event-{tasks}");
    let (read, create) = (format!("{audience}.read"), format!("{audience}.create"));

    let scratch = Scratch::new("sigil-grants");
    apply::<SigningKey>(
        &client,
        &sigil,
        json!({"apiVersion": "sigil.dev/v1alpha1", "kind": "SigningKey",
               "metadata": {"name": "default"}, "spec": {"algorithm": "ES256"}}),
    )
    .await;
    let mut issuer = IssuerProcess::start(
        &["--namespace", &sigil],
        &[(
            "KUBECONFIG",
            cluster.kubeconfig().to_str().expect("utf8 path"),
        )],
        &scratch.0.join("issuer.log"),
    );
    let _operator = OperatorProcess::start(
        cluster.kubeconfig(),
        &sigil,
        &[&tasks, &sandbox],
        &issuer.base_url,
        &["--unclaimed-audiences", "closed"],
        &scratch.0.join("operator.log"),
    );
    issuer.wait_ready(Duration::from_secs(60)).await;

    // The Calendar team grants `tasks` the read scope only.
    let resources: Api<OAuthResource> = Api::namespaced(client.clone(), &calendar);
    let read_only = json!([{"namespaces": [tasks], "scopes": [read]}]);
    apply::<OAuthResource>(
        &client,
        &calendar,
        resource("calendar-api", &audience, read_only.clone()),
    )
    .await;
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &tasks);
    apply::<OAuthClient>(
        &client,
        &tasks,
        json!({"apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
               "metadata": {"name": "task-service"},
               "spec": {"audiences": [audience], "scopes": [read, create]}}),
    )
    .await;
    let (status, reason, message) = wait_for(
        &clients,
        "task-service",
        Duration::from_secs(30),
        |c: &OAuthClient| condition(c, "Granted"),
    )
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "GrantDenied"));
    assert!(
        message.contains(&format!(
            "scope {create} is defined by OAuthResource {calendar}/calendar-api which does not grant it to namespace {tasks}"
        )),
        "{message}"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &tasks);
    let secret = secrets.get("task-service-oauth").await.expect("Secret");
    let data = secret.data.unwrap_or_default();
    let value = |k: &str| String::from_utf8_lossy(&data[k].0).into_owned();
    let (id, secret, token_url) = (
        value("client_id"),
        value("client_secret"),
        value("token_url"),
    );
    assert_eq!(value("scope"), read, "the Secret lists what is granted");

    let form = |scope: &str| format!("grant_type=client_credentials&scope={scope}");
    until_reply(
        &token_url,
        &id,
        &secret,
        &form(&read),
        Duration::from_secs(10),
        |r| r.status == 200,
    )
    .await;
    let refused = token_basic(&token_url, &id, &secret, &form(&create)).await;
    assert_eq!(
        (refused.status, refused.json()["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // Granting `create` works within a second, without touching the client.
    let generation = clients
        .get("task-service")
        .await
        .expect("client")
        .metadata
        .generation;
    apply::<OAuthResource>(
        &client,
        &calendar,
        resource(
            "calendar-api",
            &audience,
            json!([{"namespaces": [tasks], "scopes": [read, create]}]),
        ),
    )
    .await;
    let granted_in = until_reply(
        &token_url,
        &id,
        &secret,
        &form(&create),
        Duration::from_secs(10),
        |r| r.status == 200,
    )
    .await;
    assert!(
        granted_in <= Duration::from_secs(1),
        "granting took {granted_in:?}"
    );
    let now = clients.get("task-service").await.expect("client");
    assert_eq!(
        now.metadata.generation, generation,
        "the client was touched"
    );
    assert_eq!(
        condition(&now, "Granted").map(|c| c.1),
        Some("Granted".to_owned())
    );

    // Revoking every grant stops tokens within a second.
    apply::<OAuthResource>(
        &client,
        &calendar,
        resource("calendar-api", &audience, json!([])),
    )
    .await;
    let revoked_in = until_reply(
        &token_url,
        &id,
        &secret,
        "grant_type=client_credentials",
        Duration::from_secs(10),
        |r| r.status == 400 && r.json()["error"] == "invalid_target",
    )
    .await;
    assert!(
        revoked_in <= Duration::from_secs(1),
        "revoking took {revoked_in:?}"
    );
    eprintln!("grant took {granted_in:?}, revocation {revoked_in:?}");

    // A second claimant of the audience is told who holds it.
    apply::<OAuthResource>(
        &client,
        &sandbox,
        resource(
            "fake-calendar",
            &audience,
            json!([{"namespaces": [sandbox], "scopes": [read, create]}]),
        ),
    )
    .await;
    let fakes: Api<OAuthResource> = Api::namespaced(client.clone(), &sandbox);
    let claimed = wait_for(
        &fakes,
        "fake-calendar",
        Duration::from_secs(30),
        |r: &OAuthResource| {
            let c = r.status.as_ref()?.conditions.first()?.clone();
            Some((c.status, c.reason, c.message))
        },
    )
    .await;
    assert_eq!(
        (claimed.0.as_str(), claimed.1.as_str()),
        ("False", "AudienceConflict")
    );
    assert!(
        claimed
            .2
            .contains(&format!("held by OAuthResource {calendar}/calendar-api")),
        "{}",
        claimed.2
    );
    let holder = resources.get("calendar-api").await.expect("holder");
    let held = holder.status.expect("status").conditions;
    assert_eq!(held[0].reason, "AudienceClaimed");

    // A sandbox client squatting the tasks namespace's id is refused, gets
    // no Secret, and is admitted once a cluster admin allows the id.
    let squatted = format!("task-service.{tasks}");
    let sandbox_clients: Api<OAuthClient> = Api::namespaced(client.clone(), &sandbox);
    apply::<OAuthClient>(
        &client,
        &sandbox,
        json!({"apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
               "metadata": {"name": "squatter"},
               "spec": {"clientId": squatted, "audiences": [audience]}}),
    )
    .await;
    let (status, reason, message) = wait_for(
        &sandbox_clients,
        "squatter",
        Duration::from_secs(30),
        |c: &OAuthClient| condition(c, "Ready"),
    )
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ClientIdNotAllowed")
    );
    assert!(
        message.contains(&format!("not of the form <name>.{sandbox}"))
            && message.contains("sigil.dev/client-ids"),
        "{message}"
    );
    let sandbox_secrets: Api<Secret> = Api::namespaced(client.clone(), &sandbox);
    assert!(
        sandbox_secrets
            .get_opt("squatter-oauth")
            .await
            .expect("get")
            .is_none()
    );
    // The real owner keeps its credentials.
    assert_eq!(
        condition(&clients.get("task-service").await.expect("client"), "Ready").map(|c| c.1),
        Some("CredentialsReady".to_owned())
    );
    // Allowed by an annotation on the namespace, a fresh id is admitted.
    apply::<OAuthClient>(
        &client,
        &sandbox,
        json!({"apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
               "metadata": {"name": "legacy"},
               "spec": {"clientId": "legacy-app", "audiences": [audience]}}),
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &sandbox,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"sigil.dev/client-ids": "legacy-*"}}}),
            ),
        )
        .await
        .expect("annotating the namespace");
    let (status, reason, _) = wait_for(
        &sandbox_clients,
        "legacy",
        Duration::from_secs(30),
        |c: &OAuthClient| condition(c, "Ready").filter(|r| r.0 == "True"),
    )
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "CredentialsReady")
    );
    // The fake calendar holds nothing, so the sandbox gets no audience.
    let legacy = sandbox_clients.get("legacy").await.expect("legacy");
    assert_eq!(
        legacy.status.and_then(|s| s.grant).map(|g| g.audiences),
        Some(Vec::new())
    );
}
