//! `kubectl sigil` against the real kube-apiserver, with the real operator
//! and a cluster-mode issuer as processes: `status` follows a forced key
//! rotation through its phases and shows a broken client's reason;
//! `check` fails with one clear line per failed check; `token` fetches a
//! token without ever printing the client secret; `rotate client` gets the
//! client a new secret. The issuer's JSON log lines are checked on the way.
//!
//! Names follow the chart with `--release <namespace>`: the webhook
//! configuration is `<ns>`, the issuer Service `<ns>-issuer`, the TLS
//! Secret `<ns>-issuer-tls`, so nothing here touches another test's
//! cluster-scoped objects.

mod issuer_support;

use std::path::Path;
use std::time::Duration;

use issuer_support::*;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use sigil_crds::{OAuthClient, SigningKey};
use sigil_tests::cluster::TestCluster;
use sigil_tests::{create_foreign_secret, eventually};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `kubectl-sigil` with the chart names of release `ns` in `ns`.
async fn sigil(kubeconfig: &Path, ns: &str, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(sigil_tests::binary("kubectl-sigil"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("SIGIL_NAMESPACE", ns)
        .env("SIGIL_RELEASE", ns)
        .env("SIGIL_LEASE_NAME", format!("sigil-operator-{ns}"))
        .env_remove("SIGIL_OUTPUT")
        .env_remove("SIGIL_TOKEN_URL")
        .output()
        .await
        .expect("running kubectl-sigil");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The operator with the chart's names for release `ns`.
fn start_operator(kubeconfig: &Path, ns: &str, issuer_url: &str, log: &Path) -> OperatorProcess {
    OperatorProcess::start(
        kubeconfig,
        ns,
        &[ns],
        issuer_url,
        &[
            &format!("--webhook-config={ns}"),
            &format!("--issuer-service={ns}-issuer"),
            &format!("--tls-secret={ns}-issuer-tls"),
        ],
        log,
    )
}

fn signing_key() -> Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "SigningKey",
        "metadata": {"name": "default"},
        "spec": {"algorithm": "ES256", "rotationInterval": "1h", "prePublish": "4s", "retireAfter": "1h"},
    })
}

fn phases(status: &Value) -> Vec<(String, String)> {
    status["signingKeys"][0]["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            (
                k["kid"].as_str().unwrap_or_default().to_owned(),
                k["phase"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn status_follows_a_forced_key_rotation_through_its_phases() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let kubeconfig = cluster.kubeconfig();
    let ns = cluster.namespace("sigil-kubectl-keys").await;
    let scratch = Scratch::new("sigil-kubectl-keys");
    apply::<SigningKey>(&client, &ns, signing_key()).await;
    let _operator = start_operator(
        kubeconfig,
        &ns,
        "https://issuer.example",
        &scratch.0.join("operator.log"),
    );

    let status = |args: &'static [&'static str]| {
        let ns = ns.clone();
        async move {
            let mut all = vec!["status", "-o", "json", "-n"];
            all.push(&ns);
            all.extend(args);
            sigil(kubeconfig, &ns, &all).await
        }
    };
    let first = eventually(
        Duration::from_secs(30),
        "an active key, a leading operator and the serving certificate",
        || async {
            let run = status(&[]).await;
            let report = run.json();
            let active = report["signingKeys"][0]["activeKid"].as_str()?.to_owned();
            let tls = report["webhookTls"].as_array()?;
            (report["operator"]["healthy"] == true
                && tls.iter().any(|c| {
                    c["source"].as_str().is_some_and(|s| s.ends_with("tls.crt"))
                        && c["expiresInSeconds"].as_i64().unwrap_or(0) > 86_400
                }))
            .then_some(active)
        },
    )
    .await;
    let run = status(&[]).await;
    let report = run.json();
    assert_eq!(
        report["operator"]["lease"]["name"],
        format!("sigil-operator-{ns}")
    );
    assert!(report["operator"]["lease"]["holder"].is_string(), "{run}");
    assert_eq!(phases(&report), [(first.clone(), "active".to_owned())]);
    // No issuer Deployment and no Service in process mode: not ready.
    assert_eq!(run.code, 1, "{run}");
    assert!(
        report["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p
                .as_str()
                .is_some_and(|p| p.starts_with("issuer: neither Deployment"))),
        "{run}"
    );
    let text = sigil(kubeconfig, &ns, &["status", "-n", &ns]).await;
    assert!(text.stdout.contains(&format!("active   {first}")), "{text}");

    let rotated = sigil(kubeconfig, &ns, &["rotate", "key", "default"]).await;
    assert_eq!(rotated.code, 0, "{rotated}");
    assert!(rotated.stdout.contains("rotation requested"), "{rotated}");

    // Pending first (published, not signing), for about prePublish (4 s)...
    let pending = eventually(Duration::from_secs(10), "a pending key", || async {
        let report = status(&[]).await.json();
        let phases = phases(&report);
        let pending = phases.iter().find(|(_, p)| p == "pending")?.0.clone();
        assert!(
            phases.contains(&(first.clone(), "active".to_owned())),
            "the old key signs while the new one is pending: {phases:?}"
        );
        Some(pending)
    })
    .await;
    // ...then active, and the previous key retired but still published.
    eventually(
        Duration::from_secs(15),
        "the new key active, the old one retired",
        || async {
            let report = status(&[]).await.json();
            let mut phases = phases(&report);
            phases.sort();
            let mut expected = vec![
                (first.clone(), "retired".to_owned()),
                (pending.clone(), "active".to_owned()),
            ];
            expected.sort();
            (phases == expected && report["signingKeys"][0]["activeKid"] == pending.as_str())
                .then_some(())
        },
    )
    .await;

    let missing = sigil(kubeconfig, &ns, &["rotate", "key", "nope"]).await;
    assert_eq!(missing.code, 2, "{missing}");
    assert!(
        missing.stderr.contains(&format!("no SigningKey {ns}/nope")),
        "{missing}"
    );
}

fn oauth_client(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn data(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

#[tokio::test]
async fn check_token_and_rotate_client_with_a_broken_and_a_good_client() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let kubeconfig = cluster.kubeconfig();
    let ns = cluster.namespace("sigil-kubectl-clients").await;
    let scratch = Scratch::new("sigil-kubectl-clients");
    apply::<SigningKey>(&client, &ns, signing_key()).await;
    let mut issuer = IssuerProcess::start(
        &["--namespace", &ns, "--log-format", "json"],
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("utf8 path")),
            ("RUST_LOG", "info,sigil_issuer::request=debug"),
        ],
        &scratch.0.join("issuer.log"),
    );
    let _operator = start_operator(
        kubeconfig,
        &ns,
        &issuer.base_url,
        &scratch.0.join("operator.log"),
    );
    issuer.wait_ready(Duration::from_secs(60)).await;

    // A client whose Secret name is taken by a foreign Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    create_foreign_secret(&secrets, "taken", &[]).await;
    apply::<OAuthClient>(
        &client,
        &ns,
        oauth_client(
            "broken",
            json!({"scopes": ["a"], "audiences": ["api"], "secretName": "taken"}),
        ),
    )
    .await;
    apply::<OAuthClient>(
        &client,
        &ns,
        oauth_client("good", json!({"scopes": ["a"], "audiences": ["api"]})),
    )
    .await;

    let run = eventually(
        Duration::from_secs(30),
        "status to show the broken client",
        || async {
            let run = sigil(kubeconfig, &ns, &["status", "-o", "json", "-n", &ns]).await;
            let report = run.json();
            let not_ready = report["clients"]["notReady"].as_array()?;
            (not_ready.len() == 1 && not_ready[0]["reason"] == "SecretConflict").then_some(run)
        },
    )
    .await;
    let report = run.json();
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(report["clients"]["total"], 2);
    assert_eq!(report["clients"]["notReady"][0]["name"], "broken");
    let line = format!("client {ns}/broken: not Ready: SecretConflict: ");
    assert!(
        report["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.starts_with(&line))),
        "{run}"
    );

    // `check` before the webhook exists, then with a webhook whose Service
    // has no endpoint, then with a ready endpoint.
    let check = sigil(kubeconfig, &ns, &["check", "-n", &ns, "--client", "broken"]).await;
    assert_eq!(check.code, 1, "{check}");
    assert!(
        check.stdout.contains(&format!(
            "FAIL webhook: no MutatingWebhookConfiguration {ns}: pods get no credentials mounted"
        )),
        "{check}"
    );
    assert!(
        check.stdout.contains(&format!(
            "FAIL client {ns}/broken: OAuthClient {ns}/broken is not Ready (SecretConflict): "
        )),
        "{check}"
    );
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": ns},
        "webhooks": [{
            "name": "pods.sigil.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "clientConfig": {"service": {"name": format!("{ns}-issuer"), "namespace": ns, "path": "/webhooks/pods", "port": 8443}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            // This namespace only: no other test's pod is sent here.
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "matchConditions": [{"name": "asks", "expression": "has(object.metadata.annotations) && 'sigil.dev/client' in object.metadata.annotations"}],
        }],
    }))
    .expect("webhook configuration");
    webhooks
        .create(&PostParams::default(), &config)
        .await
        .expect("webhook configuration");
    let check = sigil(
        kubeconfig,
        &ns,
        &["check", "-n", &ns, "--client", "good", "-o", "json"],
    )
    .await;
    assert_eq!(check.code, 1, "{check}");
    assert_eq!(
        check.stderr.trim(),
        format!("FAIL webhook-endpoint: the webhook's Service {ns}/{ns}-issuer does not exist"),
        "{check}"
    );
    let report = check.json();
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["outcome"] == "fail")
        .filter_map(|c| c["check"].as_str())
        .collect();
    assert_eq!(failed, ["webhook-endpoint"], "{check}");
    // Another namespace is not selected by this webhook.
    let other = sigil(
        kubeconfig,
        &ns,
        &["check", "-n", "default", "--client", "x"],
    )
    .await;
    assert!(
        other.stdout.contains(&format!(
            "FAIL webhook-selects-namespace: no webhook of {ns} selects namespace default"
        )),
        "{other}"
    );

    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service: Service = serde_json::from_value(
        json!({"metadata": {"name": format!("{ns}-issuer")}, "spec": {"ports": [{"name": "webhook", "port": 8443}]}}),
    )
    .expect("service");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("Service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{ns}-issuer-1"), "labels": {"kubernetes.io/service-name": format!("{ns}-issuer")}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.10"], "conditions": {"ready": true}}],
        "ports": [{"name": "webhook", "port": 8443}],
    }))
    .expect("slice");
    slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("EndpointSlice");
    let check = eventually(Duration::from_secs(10), "check to pass", || async {
        let run = sigil(kubeconfig, &ns, &["check", "-n", &ns, "--client", "good"]).await;
        (run.code == 0).then_some(run)
    })
    .await;
    assert!(
        check.stdout.contains(&format!(
            "ok   grant {ns}/good: audiences [api], scopes [a]"
        )),
        "{check}"
    );

    // `token`: the access token only, never the client secret.
    let secret = eventually(
        Duration::from_secs(10),
        "the good client's Secret",
        || async { secrets.get_opt("good-oauth").await.ok()? },
    )
    .await;
    let client_secret = data(&secret, "client_secret").expect("client_secret");
    let token = sigil(kubeconfig, &ns, &["token", "good", "-n", &ns]).await;
    assert_eq!(token.code, 0, "{token}");
    let access_token = token.stdout.trim();
    assert_eq!(access_token.split('.').count(), 3, "{token}");
    let claims = decode_jwt_claims(access_token);
    assert_eq!(claims["client_id"], format!("good.{ns}"));
    assert_eq!(claims["aud"], "api");
    let json_run = sigil(
        kubeconfig,
        &ns,
        &[
            "token",
            "good",
            "-n",
            &ns,
            "-o",
            "json",
            "--scope",
            "a",
            "--audience",
            "api",
        ],
    )
    .await;
    assert_eq!(json_run.code, 0, "{json_run}");
    let response = json_run.json();
    assert_eq!(response["token_type"], "Bearer");
    assert_eq!(response["scope"], "a");
    let refused = sigil(
        kubeconfig,
        &ns,
        &["token", "good", "-n", &ns, "--audience", "elsewhere"],
    )
    .await;
    assert_eq!(refused.code, 2, "{refused}");
    assert!(refused.stderr.contains("invalid_target"), "{refused}");
    // --token-url overrides the Secret's (here: the same issuer).
    let overridden = sigil(
        kubeconfig,
        &ns,
        &[
            "token",
            "good",
            "-n",
            &ns,
            "--token-url",
            &issuer.token_url(),
        ],
    )
    .await;
    assert_eq!(overridden.code, 0, "{overridden}");
    // The foreign Secret of the broken client is never used.
    let foreign_token = sigil(kubeconfig, &ns, &["token", "broken", "-n", &ns]).await;
    assert_eq!(foreign_token.code, 2, "{foreign_token}");
    assert!(
        foreign_token.stderr.contains("is not the one Sigil wrote"),
        "{foreign_token}"
    );
    for run in [&token, &json_run, &refused, &overridden, &foreign_token] {
        assert!(
            !run.stdout.contains(&client_secret) && !run.stderr.contains(&client_secret),
            "the client secret was printed: {run}"
        );
        assert!(!run.stderr.contains("mine"), "{run}");
    }
    assert!(
        refused.stdout.is_empty() && token.stderr.is_empty(),
        "{refused}\n{token}"
    );

    // `rotate client`: a new client_secret, and tokens with it.
    let rotate = sigil(kubeconfig, &ns, &["rotate", "client", "good", "-n", &ns]).await;
    assert_eq!(rotate.code, 0, "{rotate}");
    eventually(Duration::from_secs(15), "a new client_secret", || async {
        let secret = secrets.get("good-oauth").await.ok()?;
        data(&secret, "client_secret").filter(|s| *s != client_secret)
    })
    .await;
    let after = sigil(kubeconfig, &ns, &["token", "good", "-n", &ns]).await;
    assert_eq!(after.code, 0, "{after}");

    // The issuer's JSON log: every line an object with the same top-level
    // fields; one request line per token request, without credentials.
    let log = issuer.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "no {field}: {line}");
        }
    }
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "sigil_issuer::request")
        .collect();
    let success = requests
        .iter()
        .find(|l| l["result"] == "success")
        .unwrap_or_else(|| panic!("no successful request line:\n{log}"));
    assert_eq!(success["client_id"], format!("good.{ns}"));
    assert_eq!(success["status"], 200);
    assert!(success["latency_ms"].as_f64().is_some(), "{success}");
    assert!(
        requests
            .iter()
            .any(|l| l["result"] == "invalid_target" && l["client_id"] == format!("good.{ns}")),
        "{log}"
    );
    assert!(
        !log.contains(&client_secret),
        "the client secret was logged"
    );
    assert!(!log.contains(access_token), "a token was logged");

    // Left behind on failure, harmless: it selects this namespace only.
    webhooks
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("deleting the webhook configuration");
}
