//! The reports from objects, without a cluster.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use sigil_crds::{OAuthClient, SigningKey};

use crate::check::{CheckInputs, Outcome, WebhookBackend, check_report, selector_matches};
use crate::status::{Named, StatusInputs, status_report};
use crate::tls::CertInfo;
use crate::token::{Credentials, TokenError, token_form, token_result};

fn now() -> Timestamp {
    "2030-01-01T12:00:00Z".parse().unwrap()
}

fn named<T>(name: &str, value: T) -> Named<T> {
    Named {
        name: name.into(),
        value,
    }
}

fn lease(holder: &str, renewed_ago_secs: i64) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": "sigil-operator"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": (now() - SignedDuration::from_secs(renewed_ago_secs)).to_string(),
        }
    }))
    .unwrap()
}

fn deployment(ready: i32) -> Deployment {
    serde_json::from_value(json!({
        "spec": {"replicas": 2, "selector": {}, "template": {}},
        "status": {"readyReplicas": ready},
    }))
    .unwrap()
}

fn client(
    ns: &str,
    name: &str,
    ready: Option<(&str, &str, &str)>,
    grant: serde_json::Value,
) -> OAuthClient {
    let conditions: Vec<serde_json::Value> = ready
        .into_iter()
        .map(|(status, reason, message)| {
            json!({"type": "Ready", "status": status, "reason": reason, "message": message,
                   "lastTransitionTime": "2030-01-01T00:00:00Z"})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"scopes": ["a"], "audiences": ["api"]},
        "status": {"conditions": conditions, "grant": grant},
    }))
    .unwrap()
}

fn signing_key(active: bool) -> SigningKey {
    let keys = json!([
        {"kid": "old", "state": "Retired", "createdAt": "2029-12-01T00:00:00Z", "activatesAt": "2029-12-01T00:00:00Z", "retiresAt": "2030-01-01T11:00:00Z"},
        {"kid": "cur", "state": "Active", "createdAt": "2030-01-01T10:00:00Z", "activatesAt": "2030-01-01T11:00:00Z", "retiresAt": "2030-01-01T12:30:00Z"},
        {"kid": "new", "state": "Pending", "createdAt": "2030-01-01T11:59:00Z", "activatesAt": "2030-01-01T12:30:00Z"},
    ]);
    let (status, reason) = if active {
        ("True", "KeysReady")
    } else {
        ("False", "NoActiveKey")
    };
    serde_json::from_value(json!({
        "apiVersion": "sigil.dev/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": "default", "namespace": "sigil-system"},
        "spec": {},
        "status": {
            "activeKid": if active { json!("cur") } else { json!(null) },
            "keys": keys,
            "conditions": [{"type": "Ready", "status": status, "reason": reason, "message": "",
                            "lastTransitionTime": "2030-01-01T00:00:00Z"}],
        },
    }))
    .unwrap()
}

fn cert(days_left: i64) -> CertInfo {
    CertInfo {
        source: "tls.crt".into(),
        subject: "CN=sigil-issuer".into(),
        not_after: now() + SignedDuration::from_hours(24 * days_left),
    }
}

fn healthy_inputs() -> StatusInputs {
    StatusInputs {
        now: now(),
        system_namespace: "sigil-system".into(),
        operator_deployment: named("sigil-operator", Some(deployment(1))),
        lease: named("sigil-operator", Some(lease("pod-a", 3))),
        issuer_deployment: named("sigil-issuer", Some(deployment(2))),
        issuer_service: named("sigil-issuer", None),
        signing_keys: vec![signing_key(true)],
        webhook_config: named("sigil", Some(vec![cert(60)])),
        tls_secret: named("sigil-system/sigil-issuer-tls", Some(vec![cert(80)])),
        clients: vec![client(
            "apps",
            "ok",
            Some(("True", "CredentialsReady", "")),
            json!({"audiences": ["api"]}),
        )],
    }
}

#[test]
fn a_healthy_install_has_no_problem_and_shows_every_key_phase() {
    let report = status_report(&healthy_inputs());
    assert!(report.ok, "{:?}", report.problems);
    let phases: Vec<(&str, &str)> = report.signing_keys[0]
        .keys
        .iter()
        .map(|k| (k.kid.as_str(), k.phase))
        .collect();
    assert_eq!(
        phases,
        [("old", "retired"), ("cur", "active"), ("new", "pending")]
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["signingKeys"][0]["keys"][2]["activatesAt"],
        "2030-01-01T12:30:00Z"
    );
    assert_eq!(json["operator"]["lease"]["holder"], "pod-a");
    assert_eq!(json["webhookTls"][0]["expiresInSeconds"], 60 * 86_400);
}

#[test]
fn each_unhealthy_part_is_one_problem_line() {
    let mut inputs = healthy_inputs();
    inputs.lease = named("sigil-operator", Some(lease("pod-a", 60)));
    inputs.issuer_deployment = named("sigil-issuer", Some(deployment(0)));
    inputs.signing_keys = vec![signing_key(false)];
    inputs.webhook_config = named("sigil", Some(vec![cert(2)]));
    inputs.clients.push(client(
        "apps",
        "broken",
        Some((
            "False",
            "SecretConflict",
            "Secret taken belongs to someone else",
        )),
        json!(null),
    ));
    inputs
        .clients
        .push(client("apps", "new", None, json!(null)));
    let report = status_report(&inputs);
    assert!(!report.ok);
    assert_eq!(
        report.problems,
        [
            "operator: Lease sigil-system/sigil-operator is not held or was not renewed in time: no operator leads",
            "issuer: Deployment sigil-system/sigil-issuer has no ready pod (0/2)",
            "signing key sigil-system/default: no active key (NoActiveKey)",
            "webhook TLS: MutatingWebhookConfiguration sigil: tls.crt (CN=sigil-issuer) expires in 48h, at 2030-01-03T12:00:00Z",
            "client apps/broken: not Ready: SecretConflict: Secret taken belongs to someone else",
            "client apps/new: not Ready: NotReconciled: no Ready condition yet: is the operator running and watching this namespace?",
        ]
    );
    assert_eq!(report.clients.not_ready.len(), 2);
    assert_eq!(report.clients.total, 3);
}

#[test]
fn process_mode_is_judged_by_the_lease_and_the_service() {
    let mut inputs = healthy_inputs();
    inputs.operator_deployment = named("sigil-operator", None);
    inputs.issuer_deployment = named("sigil-issuer", None);
    assert!(status_report(&inputs).problems[0].starts_with("issuer: neither Deployment"));
    assert!(status_report(&inputs).operator.healthy);
    inputs.lease = named("sigil-operator", None);
    assert_eq!(
        status_report(&inputs).problems[0],
        "operator: no Lease sigil-system/sigil-operator: no operator has ever led"
    );
}

fn webhook(selector: serde_json::Value) -> MutatingWebhookConfiguration {
    serde_json::from_value(json!({
        "metadata": {"name": "sigil"},
        "webhooks": [{
            "name": "pods.sigil.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "sigil-issuer", "namespace": "sigil-system"}},
            "namespaceSelector": selector,
        }],
    }))
    .unwrap()
}

fn labels(name: &str) -> BTreeMap<String, String> {
    [("kubernetes.io/metadata.name".to_owned(), name.to_owned())].into()
}

fn chart_selector() -> serde_json::Value {
    json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["sigil-system"]}]})
}

#[test]
fn label_selectors_follow_kubernetes() {
    let s = |v: serde_json::Value| serde_json::from_value(v).unwrap();
    assert!(selector_matches(&s(chart_selector()), &labels("apps")));
    assert!(!selector_matches(
        &s(chart_selector()),
        &labels("sigil-system")
    ));
    assert!(selector_matches(&s(json!({})), &labels("apps")));
    assert!(!selector_matches(
        &s(json!({"matchLabels": {"team": "a"}})),
        &labels("apps")
    ));
    let exists =
        json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "Exists"}]});
    assert!(selector_matches(&s(exists), &labels("apps")));
    let absent = json!({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]});
    assert!(selector_matches(&s(absent), &labels("apps")));
}

fn check_inputs() -> CheckInputs {
    CheckInputs {
        namespace: "apps".into(),
        namespace_labels: Some(labels("apps")),
        webhook_config: named("sigil", Some(webhook(chart_selector()))),
        backend: WebhookBackend::Service {
            namespace: "sigil-system".into(),
            name: "sigil-issuer".into(),
            ready_endpoints: Some(2),
        },
        clients: vec![(
            "ok".into(),
            Some(client(
                "apps",
                "ok",
                Some(("True", "CredentialsReady", "")),
                json!({"audiences": ["api"], "scopes": ["a"],
                       "denied": [{"kind": "scope", "name": "b", "reason": "not granted to namespace apps"}]}),
            )),
        )],
    }
}

fn failures(inputs: &CheckInputs) -> Vec<String> {
    check_report(inputs)
        .checks
        .into_iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| format!("{}: {}", c.check, c.message))
        .collect()
}

#[test]
fn a_namespace_that_can_get_credentials_passes_with_denials_as_warnings() {
    let report = check_report(&check_inputs());
    assert!(report.ok, "{report:?}");
    let warn: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Warn)
        .collect();
    assert_eq!(warn.len(), 1);
    assert_eq!(
        warn[0].message,
        "scope b denied: not granted to namespace apps"
    );
}

#[test]
fn each_failed_check_says_why_in_one_line() {
    let mut inputs = check_inputs();
    inputs.namespace = "sigil-system".into();
    inputs.namespace_labels = Some(labels("sigil-system"));
    inputs.backend = WebhookBackend::Service {
        namespace: "sigil-system".into(),
        name: "sigil-issuer".into(),
        ready_endpoints: Some(0),
    };
    inputs.clients = vec![
        ("gone".into(), None),
        (
            "broken".into(),
            Some(client(
                "sigil-system",
                "broken",
                Some(("False", "SecretConflict", "Secret x is not Sigil's")),
                json!(null),
            )),
        ),
        (
            "nothing".into(),
            Some(client(
                "sigil-system",
                "nothing",
                Some(("True", "CredentialsReady", "")),
                json!({}),
            )),
        ),
    ];
    let report = check_report(&inputs);
    assert!(!report.ok);
    assert_eq!(
        failures(&inputs),
        [
            "webhook-selects-namespace: no webhook of sigil selects namespace sigil-system (its namespaceSelector excludes it; Sigil's own namespace is always excluded)",
            "webhook-endpoint: the webhook's Service sigil-system/sigil-issuer has no ready endpoint: pods that ask for credentials are refused (failurePolicy Fail)",
            "client sigil-system/gone: OAuthClient sigil-system/gone does not exist: a pod naming it is refused",
            "client sigil-system/broken: OAuthClient sigil-system/broken is not Ready (SecretConflict): Secret x is not Sigil's",
            "grant sigil-system/nothing: OAuthClient sigil-system/nothing is granted no audience: token requests fail with invalid_target",
        ]
    );

    let mut inputs = check_inputs();
    inputs.webhook_config = named("sigil", None);
    inputs.namespace_labels = None;
    inputs.backend = WebhookBackend::Unknown;
    inputs.clients.clear();
    assert_eq!(
        failures(&inputs),
        [
            "namespace: namespace apps does not exist",
            "webhook: no MutatingWebhookConfiguration sigil: pods get no credentials mounted (is the chart's webhook.enabled false?)",
            "clients: no OAuthClient in namespace apps: a pod naming one is refused",
        ]
    );
}

#[test]
fn credentials_come_from_the_secret_and_never_show_the_secret() {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "svc-oauth"},
        "stringData": {},
        "data": {
            "client_id": "c3ZjLmFwcHM=",        // svc.apps
            "client_secret": "czNjcjN0LXZhbHVl", // s3cr3t-value
            "token_url": "aHR0cHM6Ly9pc3N1ZXIvb2F1dGgyL3Rva2Vu", // https://issuer/oauth2/token
        },
    }))
    .unwrap();
    let credentials = Credentials::from_secret(&secret).unwrap();
    assert_eq!(credentials.client_id, "svc.apps");
    assert_eq!(credentials.token_url, "https://issuer/oauth2/token");
    assert!(credentials.ca_pem.is_none());
    assert!(!format!("{credentials:?}").contains("s3cr3t"));

    let mut partial = secret.clone();
    partial.data.as_mut().unwrap().remove("client_secret");
    let error = Credentials::from_secret(&partial).unwrap_err().to_string();
    assert_eq!(
        error,
        "Secret svc-oauth has no client_secret key (is it the client's credentials Secret?)"
    );
}

#[test]
fn the_token_form_and_the_issuer_errors() {
    assert_eq!(
        token_form(&["a".into(), "b".into()], Some("x y")),
        [
            ("grant_type", "client_credentials".to_owned()),
            ("audience", "a".to_owned()),
            ("audience", "b".to_owned()),
            ("scope", "x y".to_owned()),
        ]
    );
    let ok = token_result(200, json!({"access_token": "t", "token_type": "Bearer"})).unwrap();
    assert_eq!(ok["access_token"], "t");
    let refused = token_result(
        400,
        json!({"error": "invalid_target", "error_description": "no"}),
    );
    assert_eq!(
        refused.unwrap_err().to_string(),
        "the issuer refused the request (HTTP 400): invalid_target: no"
    );
    assert!(matches!(
        token_result(502, json!("gateway")),
        Err(TokenError::BadResponse { status: 502 })
    ));
}

#[test]
fn chart_names_derive_from_the_release() {
    use clap::Parser;
    let cli = crate::Cli::try_parse_from(["kubectl-sigil", "status"]).unwrap();
    assert_eq!(cli.install.fullname(), "sigil");
    assert_eq!(cli.install.issuer_name(), "sigil-issuer");
    assert_eq!(cli.install.tls_secret(), "sigil-issuer-tls");
    let cli = crate::Cli::try_parse_from(["kubectl-sigil", "--release", "auth", "status"]).unwrap();
    assert_eq!(cli.install.operator_name(), "auth-sigil-operator");
}

#[test]
fn certificates_are_read_from_pem() {
    let key = rcgen_free_cert();
    let certs = crate::tls::certificates("tls.crt", key.as_bytes()).unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].subject, "CN=sigil-test");
    assert_eq!(
        certs[0].not_after,
        "2048-11-01T15:00:10Z".parse::<Timestamp>().unwrap()
    );
    assert!(crate::tls::certificates("ca.crt", b"nothing").is_err());
}

/// A self-signed certificate (CN=sigil-test) valid until 2048-11-01T15:00:10Z.
fn rcgen_free_cert() -> String {
    include_str!("testdata/cert.pem").to_owned()
}
