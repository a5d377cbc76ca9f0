//! The foundation on the real API server: Sigil's CRDs install, good
//! manifests are accepted, bad ones are refused by the API server itself with
//! a message naming the field, printer columns work in kubectl, and
//! kube-controller-manager garbage-collects owned objects.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sigil_crds::{OAuthClient, SigningKey};
use sigil_tests::cluster::TestCluster;

fn oauth_client(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": { "name": name },
        "spec": spec,
    })
}

fn signing_key(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "SigningKey",
        "metadata": { "name": name },
        "spec": spec,
    })
}

/// Creates `manifest` through the API server; returns the refusal message.
async fn create(ns: &str, manifest: &Value) -> Result<(), String> {
    let client = TestCluster::shared().await.client().await;
    let kind = manifest["kind"].as_str().unwrap_or_default();
    let resource = match kind {
        "OAuthClient" => ApiResource::erase::<OAuthClient>(&()),
        "SigningKey" => ApiResource::erase::<SigningKey>(&()),
        other => panic!("unexpected kind {other}"),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &resource);
    let object: DynamicObject = serde_json::from_value(manifest.clone()).expect("valid object");
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message.clone()),
        Err(other) => panic!("unexpected error creating {kind}: {other}"),
    }
}

async fn refused(ns: &str, manifest: Value, expected: &[&str]) {
    let name = manifest["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let message = create(ns, &manifest)
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: the API server accepted an invalid manifest"));
    for part in expected {
        assert!(
            message.contains(part),
            "{name}: refusal message does not mention {part:?}:\n{message}"
        );
    }
}

#[tokio::test]
async fn crds_are_installed_and_established() {
    let client = TestCluster::shared().await.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in ["oauthclients.sigil.dev", "signingkeys.sigil.dev"] {
        let crd = crds.get(name).await.expect("CRD exists");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
        assert_eq!(crd.spec.names.categories, Some(vec!["sigil".to_owned()]));
    }
}

#[tokio::test]
async fn valid_manifests_are_accepted() {
    let cluster = TestCluster::shared().await;
    let ns = cluster.namespace("valid").await;
    create(
        &ns,
        &oauth_client(
            "task-service",
            json!({
                "displayName": "Task Service",
                "scopes": ["event.view", "event.create", "file.view"],
                "audiences": ["event", "file"],
                "tokenTTL": "10m",
                "secretRotation": { "interval": "720h", "gracePeriod": "1h" },
                "additionalClaims": { "stt": 1 },
            }),
        ),
    )
    .await
    .expect("the seed-001 client is accepted");
    create(
        &ns,
        &oauth_client(
            "jwt-client",
            json!({
                "scopes": ["a"],
                "authMethods": ["private_key_jwt"],
                "jwks": { "keys": [{ "kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRjGYtdQ8zDLt6fWjtJpPBjGqwmKSsO2hN8UFD0" }] },
            }),
        ),
    )
    .await
    .expect("a private_key_jwt client with public keys is accepted");
    create(&ns, &signing_key("default", json!({})))
        .await
        .expect("an empty SigningKey is accepted");
    create(
        &ns,
        &signing_key(
            "rsa",
            json!({ "algorithm": "PS256", "rsaBits": 3072, "rotationInterval": "2h", "prePublish": "30m", "retireAfter": "2h" }),
        ),
    )
    .await
    .expect("an RSA SigningKey is accepted");

    // The schema default makes the algorithm visible to kubectl.
    let client = cluster.client().await;
    let keys: Api<SigningKey> = Api::namespaced(client, &ns);
    let key = keys.get("default").await.expect("SigningKey exists");
    assert_eq!(key.spec.algorithm, sigil_crds::SigningAlgorithm::ES256);
}

#[tokio::test]
async fn invalid_manifests_are_refused_naming_the_field() {
    let cluster = TestCluster::shared().await;
    let ns = cluster.namespace("invalid").await;

    refused(
        &ns,
        oauth_client("bad-scope", json!({ "scopes": ["event view"] })),
        &["spec.scopes[0]", "should match"],
    )
    .await;
    refused(
        &ns,
        oauth_client("duplicate-scope", json!({ "scopes": ["a", "a"] })),
        &["spec.scopes[1]", "Duplicate value"],
    )
    .await;
    refused(
        &ns,
        oauth_client("short-ttl", json!({ "tokenTTL": "30s" })),
        &["spec.tokenTTL", "tokenTTL must be between 1m and 24h"],
    )
    .await;
    refused(
        &ns,
        oauth_client("long-ttl", json!({ "tokenTTL": "48h" })),
        &["spec.tokenTTL", "tokenTTL must be between 1m and 24h"],
    )
    .await;
    refused(
        &ns,
        oauth_client("garbled-ttl", json!({ "tokenTTL": "1 day" })),
        &["spec.tokenTTL", "should match"],
    )
    .await;
    refused(
        &ns,
        oauth_client(
            "bad-method",
            json!({ "authMethods": ["client_secret_jwt"] }),
        ),
        &[
            "spec.authMethods[0]",
            "Unsupported value",
            "private_key_jwt",
        ],
    )
    .await;
    refused(
        &ns,
        oauth_client(
            "jwt-without-keys",
            json!({ "authMethods": ["private_key_jwt"] }),
        ),
        &[
            "spec.jwks",
            "jwks is required when authMethods contains private_key_jwt",
        ],
    )
    .await;
    refused(
        &ns,
        oauth_client(
            "private-jwk",
            json!({
                "authMethods": ["private_key_jwt"],
                "jwks": { "keys": [{ "kty": "EC", "crv": "P-256", "x": "x", "y": "y", "d": "secret" }] },
            }),
        ),
        &["spec.jwks.keys[0]", "public keys only"],
    )
    .await;
    refused(
        &ns,
        oauth_client(
            "long-grace",
            json!({ "secretRotation": { "interval": "1h", "gracePeriod": "2h" } }),
        ),
        &[
            "spec.secretRotation.gracePeriod",
            "gracePeriod must be shorter than interval",
        ],
    )
    .await;
    refused(
        &ns,
        oauth_client(
            "reserved-claim",
            json!({ "additionalClaims": { "sub": "root" } }),
        ),
        &[
            "spec.additionalClaims",
            "may not set registered or Sigil-owned claims",
        ],
    )
    .await;
    refused(
        &ns,
        oauth_client("bad-client-id", json!({ "clientId": "tasks/service" })),
        &["spec.clientId", "should match"],
    )
    .await;
    refused(
        &ns,
        oauth_client("bad-secret-name", json!({ "secretName": "Not_A_Name" })),
        &["spec.secretName", "should match"],
    )
    .await;
    refused(
        &ns,
        signing_key("hmac", json!({ "algorithm": "HS256" })),
        &["spec.algorithm", "Unsupported value", "ES256"],
    )
    .await;
    refused(
        &ns,
        signing_key(
            "ec-with-bits",
            json!({ "algorithm": "ES256", "rsaBits": 2048 }),
        ),
        &["spec.rsaBits", "rsaBits applies only to the RSA algorithms"],
    )
    .await;
    refused(
        &ns,
        signing_key("weak-rsa", json!({ "algorithm": "RS256", "rsaBits": 1024 })),
        &["spec.rsaBits", "Unsupported value"],
    )
    .await;
    refused(
        &ns,
        signing_key(
            "late-publish",
            json!({ "rotationInterval": "1h", "prePublish": "2h" }),
        ),
        &[
            "spec.prePublish",
            "prePublish must be shorter than rotationInterval",
        ],
    )
    .await;
}

#[tokio::test]
async fn kubectl_shows_the_printer_columns() {
    let cluster = TestCluster::shared().await;
    let ns = cluster.namespace("columns").await;
    create(
        &ns,
        &oauth_client(
            "task-service",
            json!({ "scopes": ["event.view", "file.view"] }),
        ),
    )
    .await
    .expect("created");
    // No operator runs here: write the status it would write.
    let client = cluster.client().await;
    let api: Api<OAuthClient> = Api::namespaced(client, &ns);
    let status = json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "status": {
            "clientId": format!("task-service.{ns}"),
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "CredentialsIssued",
                "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        },
    });
    api.patch_status(
        "task-service",
        &PatchParams::apply("sigil-tests").force(),
        &Patch::Apply(&status),
    )
    .await
    .expect("status patched");

    let stdout = cluster
        .kubectl(&["get", "oac", "-n", &ns])
        .expect_success("kubectl get oac")
        .stdout;
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "CLIENT", "ID", "SCOPES", "READY", "AGE"],
        "{stdout}"
    );
    let row = lines.next().unwrap_or_default();
    assert!(row.starts_with("task-service "), "{stdout}");
    assert!(row.contains(&format!("task-service.{ns}")), "{stdout}");
    assert!(row.contains(r#"["event.view","file.view"]"#), "{stdout}");
    assert!(row.contains("True"), "{stdout}");

    // The category lists both kinds.
    let stdout = cluster
        .kubectl(&["get", "sigil", "-n", &ns, "-o", "name"])
        .expect_success("kubectl get sigil")
        .stdout;
    assert!(
        stdout.contains("oauthclient.sigil.dev/task-service"),
        "{stdout}"
    );
}

#[tokio::test]
async fn owned_objects_are_garbage_collected() {
    let cluster = TestCluster::shared().await;
    let ns = cluster.namespace("gc").await;
    create(&ns, &oauth_client("owner", json!({})))
        .await
        .expect("created");
    let client = cluster.client().await;
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &ns);
    let owner = clients.get("owner").await.expect("owner exists");
    let owner_ref = owner.controller_owner_ref(&()).expect("owner reference");

    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let mut secret = Secret::default();
    secret.metadata.name = Some("owned".into());
    secret.metadata.owner_references = Some(vec![owner_ref]);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("owned secret created");

    clients
        .delete("owner", &DeleteParams::background())
        .await
        .expect("owner deleted");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match secrets.get_opt("owned").await.expect("get secret") {
            None => break,
            Some(s) => assert!(
                Instant::now() < deadline,
                "secret {} still exists 60s after its owner was deleted",
                s.name_any()
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
