//! The I/O edge: reads what the reports need from the API server, and
//! writes the rotation requests.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use sigil_crds::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OAuthClient, SigningKey, annotations};

use crate::Install;
use crate::check::{CheckInputs, WebhookBackend, selecting_webhooks};
use crate::status::{Named, StatusInputs, ready_endpoints};
use crate::tls::{CertInfo, certificates};
use crate::token::Credentials;

/// The field manager of this plugin's writes.
const FIELD_MANAGER: &str = "kubectl-sigil";

pub async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (KUBECONFIG or ~/.kube/config)")
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> anyhow::Result<Option<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    api.get_opt(name)
        .await
        .with_context(|| format!("reading {kind} {name}"))
}

async fn named<K>(api: &Api<K>, name: String) -> anyhow::Result<Named<Option<K>>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let value = get_opt(api, &name).await?;
    Ok(Named { name, value })
}

/// A Service's EndpointSlices, or `None` when the Service does not exist.
async fn service_endpoints(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Option<Vec<EndpointSlice>>> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    if get_opt(&services, name).await?.is_none() {
        return Ok(None);
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .with_context(|| format!("listing the EndpointSlices of Service {namespace}/{name}"))?;
    Ok(Some(list.items))
}

/// The certificates of every webhook's caBundle.
fn webhook_certs(config: &MutatingWebhookConfiguration) -> anyhow::Result<Vec<CertInfo>> {
    let mut out = Vec::new();
    for webhook in config.webhooks.iter().flatten() {
        if let Some(bundle) = &webhook.client_config.ca_bundle {
            out.extend(certificates(
                &format!("caBundle of {}", webhook.name),
                &bundle.0,
            )?);
        }
    }
    Ok(out)
}

fn secret_certs(secret: &Secret) -> anyhow::Result<Vec<CertInfo>> {
    let mut out = Vec::new();
    for key in ["tls.crt", "ca.crt"] {
        if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
            out.extend(certificates(key, &value.0)?);
        }
    }
    Ok(out)
}

pub async fn status_inputs(
    client: &kube::Client,
    install: &Install,
    clients_namespace: Option<&str>,
) -> anyhow::Result<StatusInputs> {
    let ns = &install.sigil_namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let keys: Api<SigningKey> = Api::namespaced(client.clone(), ns);
    let oauth_clients: Api<OAuthClient> = match clients_namespace {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    };

    let webhook = named(&configs, install.fullname()).await?;
    let tls = named(&secrets, install.tls_secret()).await?;
    Ok(StatusInputs {
        now: jiff::Timestamp::now(),
        system_namespace: ns.clone(),
        operator_deployment: named(&deployments, install.operator_name()).await?,
        lease: named(&leases, install.lease_name.clone()).await?,
        issuer_deployment: named(&deployments, install.issuer_name()).await?,
        issuer_service: Named {
            name: install.issuer_name(),
            value: service_endpoints(client, ns, &install.issuer_name()).await?,
        },
        signing_keys: keys
            .list(&ListParams::default())
            .await
            .context("listing SigningKeys")?
            .items,
        webhook_config: Named {
            name: webhook.name,
            value: webhook.value.as_ref().map(webhook_certs).transpose()?,
        },
        tls_secret: Named {
            name: format!("{ns}/{}", tls.name),
            value: tls.value.as_ref().map(secret_certs).transpose()?,
        },
        clients: oauth_clients
            .list(&ListParams::default())
            .await
            .context("listing OAuthClients")?
            .items,
    })
}

/// Whether a TCP connection to the URL's host and port opens: as far as
/// this machine can tell whether the API server could call the webhook.
async fn reachable(url: &str) -> Result<(), String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| "not an absolute URL".to_owned())?;
    let authority = rest.split('/').next().unwrap_or_default();
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    match tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&address),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out after 3 s".to_owned()),
    }
}

pub async fn check_inputs(
    client: &kube::Client,
    install: &Install,
    namespace: &str,
    wanted: &[String],
) -> anyhow::Result<CheckInputs> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace_labels = get_opt(&namespaces, namespace)
        .await?
        .map(|n| n.metadata.labels.unwrap_or_default());
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let webhook_config = named(&configs, install.fullname()).await?;

    // The backend of the first webhook that takes this namespace.
    let selecting = match (&webhook_config.value, &namespace_labels) {
        (Some(config), Some(labels)) => {
            selecting_webhooks(config, labels).first().cloned().cloned()
        }
        _ => None,
    };
    let backend = match selecting.map(|w| w.client_config) {
        Some(cc) => match (cc.service, cc.url) {
            (Some(service), _) => WebhookBackend::Service {
                ready_endpoints: service_endpoints(client, &service.namespace, &service.name)
                    .await?
                    .map(|slices| ready_endpoints(&slices)),
                namespace: service.namespace,
                name: service.name,
            },
            (None, Some(url)) => WebhookBackend::Url {
                reachable: reachable(&url).await,
                url,
            },
            (None, None) => WebhookBackend::Unknown,
        },
        None => WebhookBackend::Unknown,
    };

    let oauth_clients: Api<OAuthClient> = Api::namespaced(client.clone(), namespace);
    let clients = if wanted.is_empty() {
        oauth_clients
            .list(&ListParams::default())
            .await
            .context("listing OAuthClients")?
            .items
            .into_iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), Some(c)))
            .collect()
    } else {
        let mut out = Vec::new();
        for name in wanted {
            out.push((name.clone(), get_opt(&oauth_clients, name).await?));
        }
        out
    };
    Ok(CheckInputs {
        namespace: namespace.to_owned(),
        namespace_labels,
        webhook_config,
        backend,
        clients,
    })
}

/// The name of the client's credentials Secret: as the operator reported
/// it, else as the spec asks (DESIGN.md §3 default `<name>-oauth`).
fn secret_name(client: &OAuthClient) -> String {
    client
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .or_else(|| client.spec.secret_name.clone())
        .unwrap_or_else(|| {
            format!(
                "{}-oauth",
                client.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

async fn client_and_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<(OAuthClient, Secret)> {
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), namespace);
    let oac = get_opt(&clients, name)
        .await?
        .with_context(|| format!("no OAuthClient {namespace}/{name}"))?;
    let secret_name = secret_name(&oac);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = get_opt(&secrets, &secret_name).await?.with_context(|| {
        format!("OAuthClient {namespace}/{name} has no Secret {secret_name} (yet): see `kubectl sigil status -n {namespace}`")
    })?;
    // Only the Secret Sigil wrote for this client: a foreign Secret of the
    // same name (SecretConflict) is neither used nor changed.
    let uid = oac.metadata.uid.as_deref();
    let owned = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "OAuthClient" && Some(o.uid.as_str()) == uid);
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE);
    anyhow::ensure!(
        owned && labelled,
        "Secret {namespace}/{secret_name} is not the one Sigil wrote for OAuthClient {name} (no owner reference to it or no {MANAGED_BY_LABEL}={MANAGED_BY_VALUE} label)"
    );
    Ok((oac, secret))
}

pub async fn client_credentials(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Credentials> {
    let (_, secret) = client_and_secret(client, namespace, name).await?;
    Ok(Credentials::from_secret(&secret)?)
}

/// Removes `client_secret` from the client's Secret: the operator's repair
/// path writes a new secret and keeps the previous one working for the
/// grace period (operator/README.md). The name of the Secret.
pub async fn rotate_client(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<String> {
    let (_, secret) = client_and_secret(client, namespace, name).await?;
    let secret_name = secret.metadata.name.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    // resourceVersion makes the patch apply only to the Secret just
    // checked (409 if it changed since); null removes the key.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": secret.metadata.resource_version},
        "data": {sigil_crds::secret_keys::CLIENT_SECRET: null},
    });
    secrets
        .patch(
            &secret_name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("removing client_secret from Secret {namespace}/{secret_name}"))?;
    Ok(secret_name)
}

/// Sets `sigil.dev/rotate-requested-at` to now; the time it set.
pub async fn rotate_key(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<String> {
    let keys: Api<SigningKey> = Api::namespaced(client.clone(), namespace);
    get_opt(&keys, name)
        .await?
        .with_context(|| format!("no SigningKey {namespace}/{name}"))?;
    let at = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "metadata": {"annotations": {annotations::ROTATE_REQUESTED_AT: at}}
    });
    keys.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("annotating SigningKey {namespace}/{name}"))?;
    Ok(at)
}
