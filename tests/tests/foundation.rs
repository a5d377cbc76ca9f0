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
use sigil_crds::validate::cases::{self, Kind, RefusedBy};
use sigil_crds::validate::{FieldError, validate_oauth_client, validate_signing_key};
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

/// Parses and checks a manifest of the case table as the standalone issuer
/// does; `Err` when serde refuses it.
fn validate(manifest: &Value, kind: Kind) -> Result<Result<(), Vec<FieldError>>, String> {
    let result = match kind {
        Kind::OAuthClient => serde_json::from_value::<OAuthClient>(manifest.clone())
            .map(|client| validate_oauth_client(&client)),
        Kind::SigningKey => serde_json::from_value::<SigningKey>(manifest.clone())
            .map(|key| validate_signing_key(&key)),
    };
    result.map_err(|e| e.to_string())
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
    let table = cases::table().expect("the case table parses");
    for case in &table.accepted {
        let manifest = case.to_json();
        assert_eq!(
            validate(&manifest, case.kind),
            Ok(Ok(())),
            "{}: validate() refuses it",
            case.name
        );
        create(&ns, &manifest)
            .await
            .unwrap_or_else(|e| panic!("{}: the API server refuses it: {e}", case.name));
    }

    // The schema default makes the algorithm visible to kubectl.
    let client = cluster.client().await;
    let keys: Api<SigningKey> = Api::namespaced(client, &ns);
    let key = keys.get("default").await.expect("SigningKey exists");
    assert_eq!(key.spec.algorithm, sigil_crds::SigningAlgorithm::ES256);
}

/// Every refused case of the table shared with `sigil_crds::validate`'s
/// unit tests: the API server refuses it naming the same field with the
/// same message, and its refusal contains each error `validate` gives, word
/// for word (but for the cases marked `apiServerAccepts`, gaps of the
/// schema that only `validate` closes).
#[tokio::test]
async fn invalid_manifests_are_refused_naming_the_field() {
    let cluster = TestCluster::shared().await;
    let ns = cluster.namespace("invalid").await;
    let table = cases::table().expect("the case table parses");
    let mut failures = Vec::new();
    for case in &table.refused {
        let name = &case.manifest.name;
        let manifest = case.manifest.to_json();
        let created = create(&ns, &manifest).await;
        if case.api_server_accepts {
            // A known gap of the schema that only validate() closes; if the
            // API server now refuses it, drop `apiServerAccepts` from the case.
            if let Err(refusal) = created {
                failures.push(format!(
                    "{name}: the API server now refuses it, update cases.yaml: {refusal}"
                ));
            }
            continue;
        }
        let Err(refusal) = created else {
            failures.push(format!("{name}: the API server accepted it"));
            continue;
        };
        let field = format!("{}: ", case.field);
        if !refusal.contains(&field) || !refusal.contains(&case.message) {
            failures.push(format!(
                "{name}: the refusal does not name {field:?} with {:?}:\n  {refusal}",
                case.message
            ));
        }
        match (case.refused_by, validate(&manifest, case.manifest.kind)) {
            (RefusedBy::Validation, Ok(Err(errors))) => {
                for error in errors {
                    let error = error.to_string();
                    if !refusal.contains(&error) {
                        failures.push(format!(
                            "{name}: validate() says what the API server does not:\n  validate():  {error}\n  API server:  {refusal}"
                        ));
                    }
                }
            }
            (RefusedBy::Deserialization, Err(_)) => {}
            (_, other) => failures.push(format!(
                "{name}: expected refusal by {:?}, got {other:?}",
                case.refused_by
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
