//! `kubectl sigil status`: a report from objects already fetched (pure, so
//! each rule is unit-tested without a cluster; `fetch.rs` does the I/O).

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use sigil_crds::{CONDITION_READY, KeyState, OAuthClient, SigningKey};

use crate::tls::CertInfo;

/// A certificate expiring sooner than this is a problem: long enough to
/// renew by hand if the operator's own renewal (at 2/3 of the lifetime)
/// did not happen.
pub const TLS_EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(7 * 24);

/// What `status` looks at, as fetched. `None` means "not found".
pub struct StatusInputs {
    pub now: Timestamp,
    pub system_namespace: String,
    pub operator_deployment: Named<Option<Deployment>>,
    pub lease: Named<Option<Lease>>,
    pub issuer_deployment: Named<Option<Deployment>>,
    /// The issuer Service's EndpointSlices (`None`: no such Service).
    pub issuer_service: Named<Option<Vec<EndpointSlice>>>,
    pub signing_keys: Vec<SigningKey>,
    pub webhook_config: Named<Option<Vec<CertInfo>>>,
    pub tls_secret: Named<Option<Vec<CertInfo>>>,
    pub clients: Vec<OAuthClient>,
}

/// A looked-up object and the name it was looked up by.
pub struct Named<T> {
    pub name: String,
    pub value: T,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// No problem found (exit code 0).
    pub ok: bool,
    /// One line per problem, in the order of the sections.
    pub problems: Vec<String>,
    pub operator: OperatorHealth,
    pub issuer: IssuerHealth,
    pub signing_keys: Vec<KeyRing>,
    pub webhook_tls: Vec<CertReport>,
    pub clients: ClientSummary,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct OperatorHealth {
    pub healthy: bool,
    pub deployment: Option<Replicas>,
    pub lease: Option<LeaseView>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct IssuerHealth {
    pub healthy: bool,
    pub deployment: Option<Replicas>,
    /// Ready endpoints of the issuer's Service, when the Service exists.
    pub ready_endpoints: Option<usize>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Replicas {
    pub name: String,
    pub ready: i32,
    pub desired: i32,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    pub name: String,
    pub holder: Option<String>,
    pub renew_time: Option<Timestamp>,
    /// Held and renewed within its duration.
    pub current: bool,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct KeyRing {
    pub namespace: String,
    pub name: String,
    pub ready: bool,
    pub reason: Option<String>,
    pub active_kid: Option<String>,
    pub keys: Vec<KeyView>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub kid: String,
    /// `pending`, `active` or `retired`.
    pub phase: &'static str,
    pub created_at: Timestamp,
    pub activates_at: Timestamp,
    pub retires_at: Option<Timestamp>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CertReport {
    /// Where the certificate was found, e.g. `Secret sigil-system/sigil-issuer-tls tls.crt`.
    pub source: String,
    pub subject: String,
    pub not_after: Timestamp,
    pub expires_in_seconds: i64,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ClientSummary {
    pub total: usize,
    pub not_ready: Vec<ClientProblem>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientProblem {
    pub namespace: String,
    pub name: String,
    pub reason: String,
    pub message: String,
}

pub fn phase(state: KeyState) -> &'static str {
    match state {
        KeyState::Pending => "pending",
        KeyState::Active => "active",
        KeyState::Retired => "retired",
    }
}

/// Why a client is not Ready, or `None` when it is. A client the operator
/// has not looked at yet has no Ready condition: that is a reason too.
pub fn client_problem(client: &OAuthClient) -> Option<ClientProblem> {
    let ready = client
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_READY));
    let (reason, message) = match ready {
        Some(c) if c.status == "True" => return None,
        Some(c) => (c.reason.clone(), c.message.clone()),
        None => (
            "NotReconciled".to_owned(),
            "no Ready condition yet: is the operator running and watching this namespace?"
                .to_owned(),
        ),
    };
    Some(ClientProblem {
        namespace: client.metadata.namespace.clone().unwrap_or_default(),
        name: client.metadata.name.clone().unwrap_or_default(),
        reason,
        message,
    })
}

fn replicas(named: &Named<Option<Deployment>>) -> Option<Replicas> {
    let deployment = named.value.as_ref()?;
    Some(Replicas {
        name: named.name.clone(),
        ready: deployment
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        desired: deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1),
    })
}

fn lease_view(named: &Named<Option<Lease>>, now: Timestamp) -> Option<LeaseView> {
    let spec = named.value.as_ref()?.spec.clone().unwrap_or_default();
    let renew_time = spec.renew_time.map(|t| t.0);
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
    let current = spec
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty())
        && renew_time.is_some_and(|t| t + duration >= now);
    Some(LeaseView {
        name: named.name.clone(),
        holder: spec.holder_identity,
        renew_time,
        current,
    })
}

/// Ready addresses of a Service's EndpointSlices.
pub fn ready_endpoints(slices: &[EndpointSlice]) -> usize {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        // An unset `ready` means ready (discovery/v1 semantics).
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .map(|e| e.addresses.len())
        .sum()
}

fn key_ring(key: &SigningKey) -> KeyRing {
    let status = key.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY);
    KeyRing {
        namespace: key.metadata.namespace.clone().unwrap_or_default(),
        name: key.metadata.name.clone().unwrap_or_default(),
        ready: ready.is_some_and(|c| c.status == "True") && status.active_kid.is_some(),
        reason: ready.map(|c| c.reason.clone()),
        active_kid: status.active_kid.clone(),
        keys: status
            .keys
            .iter()
            .map(|k| KeyView {
                kid: k.kid.clone(),
                phase: phase(k.state),
                created_at: k.created_at.0,
                activates_at: k.activates_at.0,
                retires_at: k.retires_at.as_ref().map(|t| t.0),
            })
            .collect(),
    }
}

pub fn status_report(inputs: &StatusInputs) -> StatusReport {
    let ns = &inputs.system_namespace;
    let mut problems = Vec::new();

    // The operator: its Deployment's pods when installed by the chart; the
    // Lease tells whether a replica (a pod or a process) leads right now.
    let operator_deployment = replicas(&inputs.operator_deployment);
    let lease = lease_view(&inputs.lease, inputs.now);
    let operator_healthy = lease.as_ref().is_some_and(|l| l.current)
        && operator_deployment.as_ref().is_none_or(|d| d.ready > 0);
    if !operator_healthy {
        problems.push(match (&operator_deployment, &lease) {
            (Some(d), _) if d.ready == 0 => format!(
                "operator: Deployment {ns}/{} has no ready pod (0/{})",
                d.name, d.desired
            ),
            (_, None) => format!(
                "operator: no Lease {ns}/{}: no operator has ever led",
                inputs.lease.name
            ),
            (_, Some(_)) => format!(
                "operator: Lease {ns}/{} is not held or was not renewed in time: no operator leads",
                inputs.lease.name
            ),
        });
    }

    // The issuer: ready pods of its Deployment, else ready endpoints of its
    // Service (what the API server and clients reach).
    let issuer_deployment = replicas(&inputs.issuer_deployment);
    let endpoints = inputs.issuer_service.value.as_deref().map(ready_endpoints);
    let issuer_healthy = match (&issuer_deployment, endpoints) {
        (Some(d), _) if d.ready == 0 => false,
        (_, Some(0)) => false,
        (None, None) => false,
        _ => true,
    };
    if !issuer_healthy {
        problems.push(match (&issuer_deployment, endpoints) {
            (Some(d), _) if d.ready == 0 => format!(
                "issuer: Deployment {ns}/{} has no ready pod (0/{})",
                d.name, d.desired
            ),
            (_, Some(_)) => format!(
                "issuer: Service {ns}/{} has no ready endpoint",
                inputs.issuer_service.name
            ),
            _ => format!(
                "issuer: neither Deployment {ns}/{} nor Service {ns}/{} found",
                inputs.issuer_deployment.name, inputs.issuer_service.name
            ),
        });
    }

    let signing_keys: Vec<KeyRing> = inputs.signing_keys.iter().map(key_ring).collect();
    if signing_keys.is_empty() {
        problems.push(format!("signing keys: no SigningKey in {ns}"));
    }
    for ring in signing_keys.iter().filter(|r| !r.ready) {
        problems.push(format!(
            "signing key {}/{}: no active key ({})",
            ring.namespace,
            ring.name,
            ring.reason.as_deref().unwrap_or("not reconciled yet")
        ));
    }

    let mut webhook_tls = Vec::new();
    for (named, what) in [
        (&inputs.webhook_config, "MutatingWebhookConfiguration"),
        (&inputs.tls_secret, "Secret"),
    ] {
        if let Some(certs) = &named.value {
            for cert in certs {
                webhook_tls.push(CertReport {
                    source: format!("{what} {}: {}", named.name, cert.source),
                    subject: cert.subject.clone(),
                    not_after: cert.not_after,
                    expires_in_seconds: inputs.now.duration_until(cert.not_after).as_secs(),
                });
            }
        }
    }
    for cert in &webhook_tls {
        if cert.not_after <= inputs.now + TLS_EXPIRY_WARNING {
            let when = if cert.not_after <= inputs.now {
                "expired".to_owned()
            } else {
                format!("expires in {}h", cert.expires_in_seconds / 3600)
            };
            problems.push(format!(
                "webhook TLS: {} ({}) {when}, at {}",
                cert.source, cert.subject, cert.not_after
            ));
        }
    }
    if inputs.webhook_config.value.is_none() {
        problems.push(format!(
            "webhook: no MutatingWebhookConfiguration {}",
            inputs.webhook_config.name
        ));
    }

    let not_ready: Vec<ClientProblem> = inputs.clients.iter().filter_map(client_problem).collect();
    for c in &not_ready {
        problems.push(format!(
            "client {}/{}: not Ready: {}: {}",
            c.namespace, c.name, c.reason, c.message
        ));
    }

    StatusReport {
        ok: problems.is_empty(),
        problems,
        operator: OperatorHealth {
            healthy: operator_healthy,
            deployment: operator_deployment,
            lease,
        },
        issuer: IssuerHealth {
            healthy: issuer_healthy,
            deployment: issuer_deployment,
            ready_endpoints: endpoints,
        },
        signing_keys,
        webhook_tls,
        clients: ClientSummary {
            total: inputs.clients.len(),
            not_ready,
        },
    }
}

/// The text form of `status`, for people.
pub fn render_text(report: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let _ = writeln!(out, "{} operator", mark(report.operator.healthy));
    if let Some(d) = &report.operator.deployment {
        let _ = writeln!(
            out,
            "       deployment {}: {}/{} ready",
            d.name, d.ready, d.desired
        );
    }
    if let Some(l) = &report.operator.lease {
        let _ = writeln!(
            out,
            "       lease {}: holder {}, renewed {}",
            l.name,
            l.holder.as_deref().unwrap_or("-"),
            l.renew_time
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(out, "{} issuer", mark(report.issuer.healthy));
    if let Some(d) = &report.issuer.deployment {
        let _ = writeln!(
            out,
            "       deployment {}: {}/{} ready",
            d.name, d.ready, d.desired
        );
    }
    if let Some(n) = report.issuer.ready_endpoints {
        let _ = writeln!(out, "       service: {n} ready endpoint(s)");
    }
    for ring in &report.signing_keys {
        let _ = writeln!(
            out,
            "{} signing key {}/{} (active {})",
            mark(ring.ready),
            ring.namespace,
            ring.name,
            ring.active_kid.as_deref().unwrap_or("-")
        );
        for k in &ring.keys {
            let _ = writeln!(
                out,
                "       {:<8} {}  created {}  activates {}  retires {}",
                k.phase,
                k.kid,
                k.created_at,
                k.activates_at,
                k.retires_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    for cert in &report.webhook_tls {
        let _ = writeln!(
            out,
            "     webhook TLS {}: {} expires {} ({}d)",
            cert.source,
            cert.subject,
            cert.not_after,
            cert.expires_in_seconds / 86_400
        );
    }
    let _ = writeln!(
        out,
        "{} clients: {} total, {} not Ready",
        mark(report.clients.not_ready.is_empty()),
        report.clients.total,
        report.clients.not_ready.len()
    );
    for c in &report.clients.not_ready {
        let _ = writeln!(
            out,
            "       {}/{}: {}: {}",
            c.namespace, c.name, c.reason, c.message
        );
    }
    if !report.problems.is_empty() {
        let _ = writeln!(out, "\nproblems:");
        for p in &report.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}
