//! `kubectl sigil check`: can the pods of a namespace get credentials? The
//! checks are pure functions of fetched objects; `fetch.rs` does the I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use sigil_crds::{DeniedKind, OAuthClient};

use crate::status::{Named, client_problem};

/// How the webhook's backend was found to be, by the I/O edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookBackend {
    /// `clientConfig.service`: its ready endpoints, `None` if the Service
    /// does not exist.
    Service {
        namespace: String,
        name: String,
        ready_endpoints: Option<usize>,
    },
    /// `clientConfig.url`: whether a TCP connection opened.
    Url {
        url: String,
        reachable: Result<(), String>,
    },
    /// No webhook selects the namespace, so there is nothing to reach.
    Unknown,
}

pub struct CheckInputs {
    pub namespace: String,
    /// The Namespace's labels; `None` if it does not exist.
    pub namespace_labels: Option<BTreeMap<String, String>>,
    pub webhook_config: Named<Option<MutatingWebhookConfiguration>>,
    pub backend: WebhookBackend,
    /// The clients asked about (`--client`), or all of the namespace's;
    /// a name with `None` was asked for and not found.
    pub clients: Vec<(String, Option<OAuthClient>)>,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Worth knowing, not a failure (e.g. part of a grant denied).
    Warn,
    Fail,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub check: String,
    pub outcome: Outcome,
    /// One line: what was found, or why it fails.
    pub message: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub namespace: String,
    /// No check failed (exit code 0).
    pub ok: bool,
    pub checks: Vec<Check>,
}

fn check(name: impl Into<String>, outcome: Outcome, message: impl Into<String>) -> Check {
    Check {
        check: name.into(),
        outcome,
        message: message.into(),
    }
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every
/// expression must hold; an empty selector matches everything.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator this version does not know: the API server would
            // refuse it, so it cannot match.
            _ => false,
        }
    });
    pairs && expressions
}

/// The webhooks of the configuration whose namespaceSelector takes this
/// namespace (an absent selector takes every namespace).
pub fn selecting_webhooks<'a>(
    config: &'a MutatingWebhookConfiguration,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a k8s_openapi::api::admissionregistration::v1::MutatingWebhook> {
    config
        .webhooks
        .iter()
        .flatten()
        .filter(|w| {
            w.namespace_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, labels))
        })
        .collect()
}

pub fn check_report(inputs: &CheckInputs) -> CheckReport {
    let ns = &inputs.namespace;
    let mut checks = Vec::new();

    match &inputs.namespace_labels {
        Some(_) => checks.push(check("namespace", Outcome::Ok, format!("{ns} exists"))),
        None => checks.push(check(
            "namespace",
            Outcome::Fail,
            format!("namespace {ns} does not exist"),
        )),
    }

    let config_name = &inputs.webhook_config.name;
    match &inputs.webhook_config.value {
        None => checks.push(check(
            "webhook",
            Outcome::Fail,
            format!(
                "no MutatingWebhookConfiguration {config_name}: pods get no credentials mounted (is the chart's webhook.enabled false?)"
            ),
        )),
        Some(config) => {
            checks.push(check(
                "webhook",
                Outcome::Ok,
                format!("MutatingWebhookConfiguration {config_name} exists"),
            ));
            if let Some(labels) = &inputs.namespace_labels {
                let selecting = selecting_webhooks(config, labels);
                if selecting.is_empty() {
                    checks.push(check(
                        "webhook-selects-namespace",
                        Outcome::Fail,
                        format!(
                            "no webhook of {config_name} selects namespace {ns} (its namespaceSelector excludes it; Sigil's own namespace is always excluded)"
                        ),
                    ));
                } else {
                    let names: Vec<&str> = selecting.iter().map(|w| w.name.as_str()).collect();
                    checks.push(check(
                        "webhook-selects-namespace",
                        Outcome::Ok,
                        format!("{} selects {ns}", names.join(", ")),
                    ));
                }
            }
        }
    }

    match &inputs.backend {
        WebhookBackend::Service {
            namespace,
            name,
            ready_endpoints,
        } => checks.push(match ready_endpoints {
            None => check(
                "webhook-endpoint",
                Outcome::Fail,
                format!("the webhook's Service {namespace}/{name} does not exist"),
            ),
            Some(0) => check(
                "webhook-endpoint",
                Outcome::Fail,
                format!(
                    "the webhook's Service {namespace}/{name} has no ready endpoint: pods that ask for credentials are refused (failurePolicy Fail)"
                ),
            ),
            Some(n) => check(
                "webhook-endpoint",
                Outcome::Ok,
                format!("Service {namespace}/{name} has {n} ready endpoint(s)"),
            ),
        }),
        WebhookBackend::Url { url, reachable } => checks.push(match reachable {
            Ok(()) => check("webhook-endpoint", Outcome::Ok, format!("{url} is reachable")),
            Err(e) => check(
                "webhook-endpoint",
                Outcome::Fail,
                format!("the webhook URL {url} is not reachable from here: {e}"),
            ),
        }),
        WebhookBackend::Unknown => {}
    }

    if inputs.clients.is_empty() {
        checks.push(check(
            "clients",
            Outcome::Fail,
            format!("no OAuthClient in namespace {ns}: a pod naming one is refused"),
        ));
    }
    for (name, client) in &inputs.clients {
        let label = format!("client {ns}/{name}");
        let Some(client) = client else {
            checks.push(check(
                label,
                Outcome::Fail,
                format!("OAuthClient {ns}/{name} does not exist: a pod naming it is refused"),
            ));
            continue;
        };
        if let Some(p) = client_problem(client) {
            checks.push(check(
                label,
                Outcome::Fail,
                format!(
                    "OAuthClient {ns}/{name} is not Ready ({}): {}",
                    p.reason, p.message
                ),
            ));
            continue;
        }
        checks.push(check(label, Outcome::Ok, "Ready"));
        checks.extend(grant_checks(ns, name, client));
    }

    CheckReport {
        namespace: ns.clone(),
        ok: checks.iter().all(|c| c.outcome != Outcome::Fail),
        checks,
    }
}

/// A Ready client with no granted audience gets no token (RFC 9068 tokens
/// name their audience); denied parts are listed but do not fail.
fn grant_checks(ns: &str, name: &str, client: &OAuthClient) -> Vec<Check> {
    let label = format!("grant {ns}/{name}");
    let Some(grant) = client.status.as_ref().and_then(|s| s.grant.as_ref()) else {
        return vec![check(
            label,
            Outcome::Fail,
            format!(
                "OAuthClient {ns}/{name} has no effective grant in its status yet: the issuer issues it nothing"
            ),
        )];
    };
    let mut out = Vec::new();
    if grant.audiences.is_empty() {
        out.push(check(
            label.clone(),
            Outcome::Fail,
            format!(
                "OAuthClient {ns}/{name} is granted no audience: token requests fail with invalid_target"
            ),
        ));
    } else {
        out.push(check(
            label.clone(),
            Outcome::Ok,
            format!(
                "audiences [{}], scopes [{}]",
                grant.audiences.join(" "),
                grant.scopes.join(" ")
            ),
        ));
    }
    for denial in &grant.denied {
        let kind = match denial.kind {
            DeniedKind::Audience => "audience",
            DeniedKind::Scope => "scope",
            DeniedKind::Claim => "claim",
        };
        out.push(check(
            label.clone(),
            Outcome::Warn,
            format!("{kind} {} denied: {}", denial.name, denial.reason),
        ));
    }
    out
}

pub fn render_text(report: &CheckReport) -> String {
    let mut out = String::new();
    for c in &report.checks {
        let mark = match c.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        out.push_str(&format!("{mark} {}: {}\n", c.check, c.message));
    }
    out
}
