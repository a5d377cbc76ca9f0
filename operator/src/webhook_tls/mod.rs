//! The issuer's serving TLS, with no cert-manager needed (DESIGN.md §2).
//!
//! The operator keeps a CA and a serving certificate for the issuer
//! Service's DNS names:
//! - Secret `--tls-secret` (type `kubernetes.io/tls`, mounted by the
//!   issuer): `tls.crt`, `tls.key`, and `ca.crt` = every CA trusted now;
//! - Secret `<tls-secret>-ca` (never mounted): the signing CA (`ca.crt`,
//!   `ca.key`), during a rotation the next CA (`next-ca.crt`,
//!   `next-ca.key`) or the retiring ones (`retiring-ca.crt`), and the
//!   rotation's phase starts as annotations, so a restart or a new leader
//!   continues where the last one stopped;
//! - the `caBundle` of every webhook in `--webhook-config`, as
//!   cert-manager's cainjector would.
//!
//! [`plan::plan`] decides; this module reads, generates and writes (both
//! Secrets with server-side apply), and watches the three objects so a
//! hand edit is repaired at once.

pub mod pki;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use sigil_crds::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

use crate::FIELD_MANAGER;
use crate::config::Args;
use crate::metrics::{CertificateLabels, Metrics};
use pki::{KeyedCert, StoredCert};
use plan::{Ca, CaChange, CaView, Observed, Plan, ServingView, Settings};

/// Data keys of the issuer's Secret.
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_BUNDLE: &str = "ca.crt";

/// Data keys of the CA Secret.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NEXT_CA_CERT: &str = "next-ca.crt";
pub const NEXT_CA_KEY: &str = "next-ca.key";
pub const RETIRING_CA_CERTS: &str = "retiring-ca.crt";
const CA_SECRET_KEYS: [&str; 5] = [
    CA_CERT,
    CA_KEY,
    NEXT_CA_CERT,
    NEXT_CA_KEY,
    RETIRING_CA_CERTS,
];
const TLS_SECRET_KEYS: [&str; 3] = [TLS_CERT, TLS_KEY, CA_BUNDLE];

/// Annotations of the CA Secret: when phase 1 and phase 2 of the running
/// CA rotation started (RFC 3339), and the phase, for people.
pub const NEXT_CA_SINCE: &str = "sigil.dev/next-ca-since";
pub const RETIRING_CA_SINCE: &str = "sigil.dev/retiring-ca-since";
pub const PHASE: &str = "sigil.dev/ca-rotation-phase";

/// The cluster DNS domain of the Service's fully qualified name.
const CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("Secret {0} exists and is not managed by Sigil; not touching it")]
    NotOurs(String),
    #[error("{0}")]
    Invalid(String),
}

impl TlsError {
    /// The error's kind for `sigil_operator_reconcile_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TlsError::Kube { .. } => "kube_api",
            TlsError::Pki(_) => "pki",
            TlsError::NotOurs(_) => "not_ours",
            TlsError::Invalid(_) => "invalid",
        }
    }
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> TlsError {
    let action = action.into();
    move |source| TlsError::Kube { action, source }
}

/// What to manage, from the command line.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub namespace: String,
    pub tls_secret: String,
    pub ca_secret: String,
    pub webhook_config: Option<String>,
    /// The serving certificate's SANs.
    pub names: Vec<String>,
    pub settings: Settings,
}

impl TlsConfig {
    /// `None` when `--manage-webhook-tls=false`.
    pub fn from_args(args: &Args) -> Result<Option<TlsConfig>, TlsError> {
        if !args.manage_webhook_tls {
            return Ok(None);
        }
        let settings = Settings {
            cert_validity: args.tls_cert_validity,
            ca_validity: args.tls_ca_validity,
            overlap: args.tls_overlap,
        };
        // The rotation's two overlaps must fit in the last third of the
        // CA's life, with room to spare.
        if settings.ca_validity < settings.overlap.saturating_mul(6) {
            return Err(TlsError::Invalid(format!(
                "--tls-ca-validity ({:?}) must be at least 6 × --tls-overlap ({:?})",
                settings.ca_validity, settings.overlap
            )));
        }
        if settings.cert_validity < Duration::from_secs(10) {
            return Err(TlsError::Invalid(
                "--tls-cert-validity must be at least 10s".to_owned(),
            ));
        }
        let ns = &args.namespace;
        let svc = &args.issuer_service;
        let mut names = vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.{CLUSTER_DOMAIN}"),
        ];
        for extra in &args.tls_extra_sans {
            let extra = extra.trim();
            if !extra.is_empty() && !names.iter().any(|n| n == extra) {
                names.push(extra.to_owned());
            }
        }
        let webhook_config = Some(args.webhook_config.trim())
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        Ok(Some(TlsConfig {
            namespace: ns.clone(),
            tls_secret: args.tls_secret.clone(),
            ca_secret: format!("{}-ca", args.tls_secret),
            webhook_config,
            names,
            settings,
        }))
    }
}

/// Runs until `shutdown` (or until dropped, when leadership is lost):
/// reconciles on every change of the watched objects and when something
/// falls due.
pub async fn run(
    client: Client,
    args: &Args,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TlsError> {
    let Some(config) = TlsConfig::from_args(args)? else {
        tracing::info!("webhook TLS is supplied (--manage-webhook-tls=false); not managing it");
        shutdown.await;
        return Ok(());
    };
    tracing::info!(
        secret = %config.tls_secret,
        ca_secret = %config.ca_secret,
        webhook_config = config.webhook_config.as_deref().unwrap_or(""),
        names = ?config.names,
        "managing the issuer's serving TLS"
    );
    let mut changes = triggers(&client, &config);
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    let mut failures: u32 = 0;
    let mut wake = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("webhook TLS stopped");
                return Ok(());
            }
            change = changes.next() => {
                if change.is_none() {
                    return Ok(());
                }
                // Our own writes come back as a burst of events: one pass.
                // The pause also bounds a fight with another writer of the
                // same caBundle to a few writes a second.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while let Some(Some(_)) = changes.next().now_or_never() {}
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        let started = std::time::Instant::now();
        let result = reconcile(&client, &config).await;
        let outcome = result.as_ref().map(|_| ()).map_err(TlsError::metric_label);
        metrics.observe_reconcile(METRICS_KIND, outcome, started.elapsed());
        wake = match result {
            Ok(pass) => {
                failures = 0;
                for (certificate, not_after) in [
                    ("serving", pass.serving_not_after),
                    ("ca", pass.ca_not_after),
                ] {
                    if let Some(at) = not_after {
                        metrics
                            .webhook_tls_expiry
                            .get_or_create(&CertificateLabels { certificate })
                            .set(at.as_second());
                    }
                }
                tokio::time::Instant::now() + pass.next
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = crate::context::backoff_delay(failures, &config.tls_secret)
                    .min(Duration::from_secs(60));
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "webhook TLS reconcile failed");
                tokio::time::Instant::now() + delay
            }
        };
    }
}

/// One item per change of the two Secrets or the webhook configuration
/// (each watched by name only).
fn triggers(
    client: &Client,
    config: &TlsConfig,
) -> futures::stream::SelectAll<futures::stream::BoxStream<'static, ()>> {
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    // Metadata only: every change shows, and no Secret data travels.
    let secrets: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(client.clone(), &config.namespace);
    let mut streams = vec![
        named_changes(watcher(secrets.clone(), by_name(&config.tls_secret))),
        named_changes(watcher(secrets, by_name(&config.ca_secret))),
    ];
    if let Some(name) = &config.webhook_config {
        let webhooks: Api<PartialObjectMeta<MutatingWebhookConfiguration>> =
            Api::all(client.clone());
        streams.push(named_changes(watcher(webhooks, by_name(name))));
    }
    futures::stream::select_all(streams)
}

fn named_changes<K, S>(stream: S) -> futures::stream::BoxStream<'static, ()>
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    crate::watch::with_watch_backoff(stream)
        .filter_map(|event| async move {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(()),
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, "webhook TLS watch failed; retrying");
                    None
                }
            }
        })
        .boxed()
}

/// What the API server holds now.
struct Stored {
    ca_secret: Option<Secret>,
    tls_secret: Option<Secret>,
    webhooks: Option<MutatingWebhookConfiguration>,
}

fn is_ours(secret: &Secret) -> bool {
    secret
        .labels()
        .get(MANAGED_BY_LABEL)
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

fn text(secret: Option<&Secret>, key: &str) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn since(secret: Option<&Secret>, key: &str) -> Option<Timestamp> {
    secret?.annotations().get(key)?.parse().ok()
}

/// A CA with its key, if the key is really its key.
fn keyed(cert_pem: Option<String>, key_pem: Option<String>) -> Option<(StoredCert, KeyedCert)> {
    let cert = pki::read_certs(&cert_pem?).into_iter().next()?;
    let key_pem = key_pem?;
    pki::key_matches(&cert, &key_pem).then(|| {
        let keyed = KeyedCert {
            cert_pem: cert.pem.clone(),
            key_pem,
        };
        (cert, keyed)
    })
}

/// Everything read and parsed, and the [`Observed`] the plan reads.
struct Read {
    observed: Observed,
    /// CAs with their keys, by id.
    keyed: BTreeMap<String, KeyedCert>,
    /// Every CA certificate seen, by id.
    certs: BTreeMap<String, StoredCert>,
}

fn read(stored: &Stored, config: &TlsConfig) -> Read {
    let ca_secret = stored.ca_secret.as_ref();
    let tls_secret = stored.tls_secret.as_ref();
    let mut keyed_cas = BTreeMap::new();
    let mut certs = BTreeMap::new();
    let mut remember = |(cert, key): (StoredCert, KeyedCert)| {
        keyed_cas.insert(cert.view.id.clone(), key);
        certs.insert(cert.view.id.clone(), cert.clone());
        cert.view
    };
    let active = keyed(text(ca_secret, CA_CERT), text(ca_secret, CA_KEY)).map(&mut remember);
    let next = keyed(text(ca_secret, NEXT_CA_CERT), text(ca_secret, NEXT_CA_KEY))
        .map(&mut remember)
        .filter(|n| active.as_ref().is_none_or(|a| a.id != n.id));
    let mut retiring = Vec::new();
    for cert in pki::read_certs(&text(ca_secret, RETIRING_CA_CERTS).unwrap_or_default()) {
        if !certs.contains_key(&cert.view.id) {
            retiring.push(cert.view.clone());
            certs.insert(cert.view.id.clone(), cert);
        }
    }

    // CAs published but unknown to the CA Secret (it was lost or edited).
    let published_bundle = text(tls_secret, CA_BUNDLE).unwrap_or_default();
    let webhook_bundles: Vec<String> = webhook_bundles(stored.webhooks.as_ref());
    let mut orphans = Vec::new();
    for bundle in std::iter::once(&published_bundle).chain(&webhook_bundles) {
        for cert in pki::read_certs(bundle) {
            if !certs.contains_key(&cert.view.id) {
                orphans.push(cert.view.clone());
                certs.insert(cert.view.id.clone(), cert);
            }
        }
    }

    let serving = text(tls_secret, TLS_CERT)
        .and_then(|pem| pki::read_certs(&pem).into_iter().next())
        .map(|cert| {
            let wanted: BTreeSet<String> = config.names.iter().cloned().collect();
            ServingView {
                issuer: certs
                    .values()
                    .find(|ca| pki::signed_by(&cert, ca))
                    .map(|ca| ca.view.id.clone()),
                not_before: cert.view.not_before,
                not_after: cert.view.not_after,
                names_match: cert.names == wanted,
                key_matches: text(tls_secret, TLS_KEY)
                    .is_some_and(|key| pki::key_matches(&cert, &key)),
            }
        });

    let expected = bundle_of(
        active.iter().chain(next.iter()).chain(retiring.iter()),
        &certs,
    );
    let published = active.is_some()
        && published_bundle == expected
        && webhook_bundles.iter().all(|b| *b == expected);
    Read {
        observed: Observed {
            active,
            next,
            next_since: since(ca_secret, NEXT_CA_SINCE),
            retiring,
            retiring_since: since(ca_secret, RETIRING_CA_SINCE),
            orphans,
            serving,
            published,
        },
        keyed: keyed_cas,
        certs,
    }
}

fn webhook_bundles(config: Option<&MutatingWebhookConfiguration>) -> Vec<String> {
    config
        .and_then(|c| c.webhooks.as_ref())
        .into_iter()
        .flatten()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        })
        .collect()
}

fn bundle_of<'a>(
    cas: impl Iterator<Item = &'a CaView>,
    certs: &BTreeMap<String, StoredCert>,
) -> String {
    cas.filter_map(|ca| certs.get(&ca.id))
        .map(|c| c.pem.as_str())
        .collect()
}

/// What one pass leaves behind.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    /// When to look again.
    pub next: Duration,
    /// notAfter of the serving certificate and of its CA, as written.
    pub serving_not_after: Option<Timestamp>,
    pub ca_not_after: Option<Timestamp>,
}

/// The `kind` label of this loop's reconcile metrics.
const METRICS_KIND: &str = "WebhookTLS";

/// One pass: read, plan, write what differs.
pub async fn reconcile(client: &Client, config: &TlsConfig) -> Result<Pass, TlsError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let ca_secret = secrets
        .get_opt(&config.ca_secret)
        .await
        .map_err(kube_error(format!("reading Secret {}", config.ca_secret)))?;
    let tls_secret = secrets
        .get_opt(&config.tls_secret)
        .await
        .map_err(kube_error(format!("reading Secret {}", config.tls_secret)))?;
    for secret in [&ca_secret, &tls_secret].into_iter().flatten() {
        if !is_ours(secret) {
            return Err(TlsError::NotOurs(secret.name_any()));
        }
    }
    let webhooks = match &config.webhook_config {
        Some(name) => {
            let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
            let found = api.get_opt(name).await.map_err(kube_error(format!(
                "reading MutatingWebhookConfiguration {name}"
            )))?;
            if found.is_none() {
                tracing::debug!(%name, "no such MutatingWebhookConfiguration (yet)");
            }
            found
        }
        None => None,
    };
    let stored = Stored {
        ca_secret,
        tls_secret,
        webhooks,
    };

    let now = Timestamp::now();
    let read = read(&stored, config);
    let plan = plan::plan(&read.observed, now, &config.settings);
    let desired = realize(&plan, &read, &stored, config, now)?;
    let mut wrote = false;

    // The CA Secret first: it holds the keys and the phase, so a crash
    // after it leaves a state the next pass completes.
    if secret_differs(
        stored.ca_secret.as_ref(),
        &desired.ca_secret,
        &CA_SECRET_KEYS,
    ) {
        apply_secret(&secrets, &desired.ca_secret).await?;
        wrote = true;
    }
    if secret_differs(
        stored.tls_secret.as_ref(),
        &desired.tls_secret,
        &TLS_SECRET_KEYS,
    ) || stored.tls_secret.as_ref().and_then(|s| s.type_.as_deref()) != Some("kubernetes.io/tls")
    {
        apply_secret(&secrets, &desired.tls_secret).await?;
        wrote = true;
    }
    if let Some(webhooks) = &stored.webhooks {
        wrote |= apply_ca_bundle(client, webhooks, &desired.bundle).await?;
    }

    for change in &plan.changes {
        log_change(*change, config);
    }
    if let Some(reason) = plan.reissue {
        tracing::info!(
            secret = %config.tls_secret,
            reason = reason.as_str(),
            "issued the issuer's serving certificate"
        );
    }
    let not_after = |secret: &Secret, key: &str| {
        text(Some(secret), key)
            .and_then(|pem| pki::read_certs(&pem).into_iter().next())
            .map(|c| c.view.not_after)
    };
    Ok(Pass {
        // After a write, plan again against what was written (the watch
        // also fires).
        next: if wrote {
            Duration::from_secs(1)
        } else {
            crate::reconcile::until(now, plan.requeue_at)
        },
        serving_not_after: not_after(&desired.tls_secret, TLS_CERT),
        ca_not_after: not_after(&desired.ca_secret, CA_CERT),
    })
}

fn log_change(change: CaChange, config: &TlsConfig) {
    let secret = &config.ca_secret;
    match change {
        CaChange::Bootstrap => {
            tracing::info!(%secret, "no usable CA: generated one, which signs at once")
        }
        CaChange::RotationStarted => tracing::info!(
            %secret,
            "CA rotation phase 1: a new CA is trusted; the serving certificate still comes from the old one"
        ),
        CaChange::Switched => tracing::info!(
            %secret,
            "CA rotation phase 2: the serving certificate now comes from the new CA; the old one is still trusted"
        ),
        CaChange::Retired => {
            tracing::info!(%secret, "CA rotation phase 3: the old CA is no longer trusted")
        }
        CaChange::Promoted => tracing::warn!(
            %secret,
            "the signing CA was unusable; the already-trusted next CA signs from now on"
        ),
        CaChange::ClockRestarted => tracing::info!(
            %secret,
            "CA rotation: the bundle was not (yet) published everywhere; waiting a full overlap from now"
        ),
    }
}

/// The objects a plan asks for.
struct Desired {
    ca_secret: Secret,
    tls_secret: Secret,
    bundle: String,
}

fn realize(
    plan: &Plan,
    read: &Read,
    stored: &Stored,
    config: &TlsConfig,
    now: Timestamp,
) -> Result<Desired, TlsError> {
    let settings = &config.settings;
    let mut generated: Option<KeyedCert> = None;
    let mut keyed_ca = |ca: &Ca| -> Result<KeyedCert, TlsError> {
        match ca {
            Ca::Existing(id) => read.keyed.get(id).cloned().ok_or_else(|| {
                TlsError::Invalid(format!("the plan names CA {id}, whose key is not stored"))
            }),
            Ca::New => {
                if let Some(ca) = &generated {
                    return Ok(ca.clone());
                }
                let ca = pki::generate_ca(now, settings.ca_validity)?;
                generated = Some(ca.clone());
                Ok(ca)
            }
        }
    };
    let active = keyed_ca(&plan.active)?;
    let next = plan.next.as_ref().map(&mut keyed_ca).transpose()?;
    let retiring: Vec<&StoredCert> = plan
        .retiring
        .iter()
        .filter_map(|id| read.certs.get(id))
        .collect();

    let mut bundle = active.cert_pem.clone();
    if let Some(next) = &next {
        bundle.push_str(&next.cert_pem);
    }
    let retiring_pems: String = retiring.iter().map(|c| c.pem.as_str()).collect();
    bundle.push_str(&retiring_pems);

    let serving = match plan.reissue {
        Some(_) => {
            let ca_not_after = pki::read_certs(&active.cert_pem)
                .first()
                .map(|c| c.view.not_after)
                .ok_or_else(|| TlsError::Invalid("the signing CA does not parse".to_owned()))?;
            let not_after = plan::serving_not_after(now, settings.cert_validity, ca_not_after);
            pki::issue_serving(&active, &config.names, now, not_after)?
        }
        None => {
            let tls = stored.tls_secret.as_ref();
            KeyedCert {
                cert_pem: text(tls, TLS_CERT).unwrap_or_default(),
                key_pem: text(tls, TLS_KEY).unwrap_or_default(),
            }
        }
    };

    let mut ca_data = BTreeMap::from([
        (CA_CERT, active.cert_pem.clone()),
        (CA_KEY, active.key_pem.clone()),
    ]);
    let mut annotations = BTreeMap::new();
    let phase = if let Some(next) = &next {
        ca_data.insert(NEXT_CA_CERT, next.cert_pem.clone());
        ca_data.insert(NEXT_CA_KEY, next.key_pem.clone());
        "trusting-next-ca"
    } else if !retiring.is_empty() {
        ca_data.insert(RETIRING_CA_CERTS, retiring_pems);
        "retiring-old-ca"
    } else {
        "steady"
    };
    annotations.insert(PHASE.to_owned(), phase.to_owned());
    if let (Some(_), Some(since)) = (&next, plan.next_since) {
        annotations.insert(NEXT_CA_SINCE.to_owned(), since.to_string());
    }
    if let (false, Some(since)) = (retiring.is_empty(), plan.retiring_since) {
        annotations.insert(RETIRING_CA_SINCE.to_owned(), since.to_string());
    }
    let ca_secret = secret(
        &config.ca_secret,
        &config.namespace,
        "Opaque",
        ca_data,
        annotations,
    );
    let tls_secret = secret(
        &config.tls_secret,
        &config.namespace,
        "kubernetes.io/tls",
        BTreeMap::from([
            (TLS_CERT, serving.cert_pem),
            (TLS_KEY, serving.key_pem),
            (CA_BUNDLE, bundle.clone()),
        ]),
        BTreeMap::new(),
    );
    Ok(Desired {
        ca_secret,
        tls_secret,
        bundle,
    })
}

fn secret(
    name: &str,
    namespace: &str,
    type_: &str,
    data: BTreeMap<&str, String>,
    annotations: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Whether writing `desired` would change `stored`: any of our data keys,
/// our label or our annotations.
fn secret_differs(stored: Option<&Secret>, desired: &Secret, keys: &[&str]) -> bool {
    let Some(stored) = stored else {
        return true;
    };
    let empty = BTreeMap::new();
    let stored_data = stored.data.as_ref().unwrap_or(&empty);
    let desired_data = desired.data.as_ref().unwrap_or(&empty);
    let data_differs = keys
        .iter()
        .any(|k| stored_data.get(*k) != desired_data.get(*k));
    let annotations = stored.annotations();
    let desired_annotations = desired.annotations();
    let ours = [PHASE, NEXT_CA_SINCE, RETIRING_CA_SINCE];
    let annotations_differ = ours
        .iter()
        .any(|k| annotations.get(*k) != desired_annotations.get(*k));
    data_differs || annotations_differ || !is_ours(stored)
}

async fn apply_secret(api: &Api<Secret>, secret: &Secret) -> Result<(), TlsError> {
    let name = secret.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(secret),
    )
    .await
    .map_err(kube_error(format!("writing Secret {name}")))?;
    tracing::debug!(%name, "wrote Secret");
    Ok(())
}

/// Sets every webhook's `caBundle` to `bundle` if one differs. Returns
/// whether it wrote.
async fn apply_ca_bundle(
    client: &Client,
    config: &MutatingWebhookConfiguration,
    bundle: &str,
) -> Result<bool, TlsError> {
    let webhooks = config.webhooks.as_deref().unwrap_or_default();
    let current = webhooks.iter().all(|w| {
        w.client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| b.0 == bundle.as_bytes())
    });
    if current {
        return Ok(false);
    }
    let name = config.name_any();
    // Only the caBundle fields: a typed object would also claim (and
    // blank) every required field of each webhook.
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes())
    };
    let patch = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": webhooks.iter().map(|w| serde_json::json!({
            "name": w.name,
            "clientConfig": { "caBundle": encoded },
        })).collect::<Vec<_>>(),
    });
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_error(format!(
        "writing caBundle of MutatingWebhookConfiguration {name}"
    )))?;
    tracing::info!(%name, webhooks = webhooks.len(), "wrote caBundle");
    Ok(true)
}
