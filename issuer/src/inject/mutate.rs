//! Workload injection (DESIGN.md §5): the mutating admission webhook that
//! mounts an OAuthClient's credentials into the pods that ask for them with
//! the `sigil.dev/client` annotation, and with `sigil.dev/token: "true"` adds
//! the token agent as a native sidecar.
//!
//! [`inject`] is pure: pod + what the issuer knows of the named clients in,
//! mutated pod (or a refusal that names the client and says why) out. The
//! HTTP handler only decodes the AdmissionReview and diffs the two pods into
//! a JSON patch, so re-admitting an injected pod yields an empty patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Pod,
    PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sigil_crds::annotations;

/// Where credentials appear in every container.
pub const CREDENTIALS_ROOT: &str = "/var/run/secrets/sigil.dev";
/// Where the agent alone sees the Secret it mirrors (with a token agent the
/// client's directory is a shared emptyDir the agent writes).
pub const AGENT_SECRET_ROOT: &str = "/var/run/secrets/sigil.dev/.secret";
/// Name of the token agent sidecar.
pub const AGENT_CONTAINER: &str = "sigil-token-agent";
/// Lifetime asked for the projected ServiceAccount token of a secretless
/// client: 10 minutes, the API server's minimum; kubelet renews it at 80%.
pub const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 600;

/// What the webhook needs to know of one OAuthClient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientView {
    pub client_id: String,
    /// The Secret, or for a secretless client the ConfigMap, the operator
    /// writes the client's settings to.
    pub secret_name: String,
    pub credential: Credential,
    /// `Err(reason)` unless the client's Ready condition is True.
    pub ready: Result<(), String>,
}

/// How a client's workloads prove themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The client secret in the client's Secret.
    Secret,
    /// `federated_jwt` only: a projected token of one of these
    /// ServiceAccounts (audience the issuer URL) next to the client's
    /// ConfigMap; no Secret exists.
    ServiceAccountToken { service_accounts: Vec<String> },
}

/// Deployment-wide settings (chart values).
#[derive(Clone, Debug)]
pub struct InjectionConfig {
    /// `IssuerUrl::to_string()`, as the issuer's `App::issuer`: the `iss` of
    /// its tokens and the one `aud` a client assertion, a projected
    /// ServiceAccount token included, must carry.
    pub issuer_url: String,
    pub token_url: String,
    pub agent_image: String,
    pub agent_image_pull_policy: Option<String>,
    pub agent_resources: Option<ResourceRequirements>,
    /// Port of the agent's readiness endpoint inside the pod.
    pub agent_health_port: u16,
}

/// Why a pod is refused; the message is what `kubectl` shows the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("annotation sigil.dev/client names no client")]
    NoClients,
    #[error(
        "annotation sigil.dev/client: {0:?} is in another namespace; a pod can only mount the credentials of OAuthClients in its own namespace"
    )]
    OtherNamespace(String),
    #[error("annotation sigil.dev/client: {0:?} is not a valid OAuthClient name")]
    InvalidName(String),
    #[error("annotation sigil.dev/client: OAuthClient {namespace}/{name} does not exist")]
    UnknownClient { namespace: String, name: String },
    #[error("annotation sigil.dev/client: OAuthClient {namespace}/{name} is not Ready: {reason}")]
    NotReady {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("annotation sigil.dev/token: {0:?} is neither \"true\" nor \"false\"")]
    InvalidTokenFlag(String),
    #[error(
        "annotation sigil.dev/client: OAuthClient {namespace}/{name} authenticates with the tokens of ServiceAccount(s) {allowed} (spec.serviceAccounts), but the pod runs as ServiceAccount {service_account:?}; set the pod's serviceAccountName to one of them"
    )]
    WrongServiceAccount {
        namespace: String,
        name: String,
        service_account: String,
        allowed: String,
    },
}

/// The client names a pod asks for, in order, without duplicates.
pub fn requested_clients(pod: &Pod) -> Result<Vec<String>, Refusal> {
    let value = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::CLIENT))
        .map(String::as_str)
        .unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for raw in value.split(',') {
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        if name.contains('/') {
            return Err(Refusal::OtherNamespace(name.to_owned()));
        }
        let valid = name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(Refusal::InvalidName(name.to_owned()));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    if names.is_empty() {
        return Err(Refusal::NoClients);
    }
    Ok(names)
}

fn wants_token(pod: &Pod) -> Result<bool, Refusal> {
    match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::TOKEN))
        .map(|v| v.trim())
    {
        None | Some("false") | Some("") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Refusal::InvalidTokenFlag(other.to_owned())),
    }
}

/// The pod's ServiceAccount as the API server runs it: `serviceAccountName`,
/// else the deprecated `serviceAccount`, else `default`.
pub fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or("default")
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// A volume name (DNS label, ≤ 63) for a client name (DNS subdomain, ≤ 253).
pub fn volume_name(client: &str, suffix: &str) -> String {
    let plain = format!("sigil-{client}{suffix}");
    if plain.len() <= 63 && !client.contains('.') {
        return plain;
    }
    let hash = hex::encode(&sigil_core::digest::sha256(client.as_bytes())[..4]);
    let stem: String = client
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .take(63 - "sigil-".len() - suffix.len() - 9)
        .collect();
    format!("sigil-{}-{hash}{suffix}", stem.trim_end_matches('-'))
}

/// Returns the pod with the credentials (and agent) of every named client
/// injected. Idempotent: `inject(inject(p)) == inject(p)`.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    lookup: impl Fn(&str) -> Option<ClientView>,
    config: &InjectionConfig,
) -> Result<Pod, Refusal> {
    let names = requested_clients(pod)?;
    let token = wants_token(pod)?;
    let mut clients = Vec::with_capacity(names.len());
    for name in &names {
        let view = lookup(name).ok_or_else(|| Refusal::UnknownClient {
            namespace: namespace.to_owned(),
            name: name.clone(),
        })?;
        if let Err(reason) = &view.ready {
            return Err(Refusal::NotReady {
                namespace: namespace.to_owned(),
                name: name.clone(),
                reason: reason.clone(),
            });
        }
        if let Credential::ServiceAccountToken { service_accounts } = &view.credential {
            let account = service_account(pod);
            if !service_accounts.iter().any(|a| a == account) {
                return Err(Refusal::WrongServiceAccount {
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                    service_account: account.to_owned(),
                    allowed: service_accounts.join(", "),
                });
            }
        }
        clients.push((name.clone(), view));
    }

    let agent_args = pod_annotation_args(pod);
    let mut pod = pod.clone();
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    let (first_name, first) = &clients[0];

    // Volumes: the credentials of each client; with an agent, the first
    // client's directory is an emptyDir the agent fills and the credentials
    // are the agent's.
    for (i, (name, view)) in clients.iter().enumerate() {
        let secret = credentials_volume(view, config);
        if token && i == 0 {
            ensure_volume(
                spec,
                Volume {
                    name: volume_name(name, ""),
                    empty_dir: Some(EmptyDirVolumeSource {
                        medium: Some("Memory".into()),
                        size_limit: Some(Quantity("1Mi".into())),
                    }),
                    ..Default::default()
                },
            );
            ensure_volume(
                spec,
                Volume {
                    name: agent_volume_name(name, view),
                    ..secret
                },
            );
        } else {
            ensure_volume(
                spec,
                Volume {
                    name: volume_name(name, ""),
                    ..secret
                },
            );
        }
    }

    let env = [
        (
            "SIGIL_CREDENTIALS_DIR",
            format!("{CREDENTIALS_ROOT}/{first_name}"),
        ),
        ("OAUTH_CLIENT_ID", first.client_id.clone()),
        ("OAUTH_TOKEN_URL", config.token_url.clone()),
        ("OAUTH_ISSUER", config.issuer_url.clone()),
    ];
    let app_mounts: Vec<VolumeMount> = clients
        .iter()
        .map(|(name, _)| VolumeMount {
            name: volume_name(name, ""),
            mount_path: format!("{CREDENTIALS_ROOT}/{name}"),
            read_only: Some(true),
            ..Default::default()
        })
        .collect();
    let all_containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
        .filter(|c| c.name != AGENT_CONTAINER);
    for container in all_containers {
        for mount in &app_mounts {
            ensure_mount(container, mount.clone());
        }
        for (key, value) in &env {
            ensure_env(container, key, value);
        }
    }

    if token {
        let agent = agent_container(first_name, first, &agent_args, config);
        let init = spec.init_containers.get_or_insert_with(Vec::new);
        if !init.iter().any(|c| c.name == AGENT_CONTAINER) {
            // First, so it runs (and has a token) before any other init container.
            init.insert(0, agent);
        }
    }

    let injected = names.join(",");
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(annotations::INJECTED.to_owned(), injected);
    Ok(pod)
}

/// The volume (unnamed) holding a client's credentials folder: its Secret,
/// or for a secretless client its ConfigMap and the pod's ServiceAccount
/// token projected together, so both are the same layout of files
/// (`client_id`, `token_url`, `ca.crt`, … and `client_secret` or
/// `service_account_token`).
fn credentials_volume(view: &ClientView, config: &InjectionConfig) -> Volume {
    match &view.credential {
        Credential::Secret => Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some(view.secret_name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Credential::ServiceAccountToken { .. } => Volume {
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: view.secret_name.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            // The `aud` the issuer's federated_jwt check
                            // requires: the issuer URL alone.
                            audience: Some(config.issuer_url.clone()),
                            expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                            path: sigil_crds::secret_keys::SERVICE_ACCOUNT_TOKEN.to_owned(),
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// The agent-only volume of the credentials it reads (with an agent, the
/// client's own directory is the emptyDir it writes).
fn agent_volume_name(client: &str, view: &ClientView) -> String {
    match view.credential {
        Credential::Secret => volume_name(client, "-secret"),
        Credential::ServiceAccountToken { .. } => volume_name(client, "-sa"),
    }
}

/// `--audience` / `--scope` for the agent from the pod's annotations.
fn pod_annotation_args(pod: &Pod) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(audience) = annotation(pod, annotations::TOKEN_AUDIENCE) {
        args.push(format!("--audience={audience}"));
    }
    if let Some(scope) = annotation(pod, annotations::TOKEN_SCOPE) {
        args.push(format!("--scope={scope}"));
    }
    args
}

fn agent_container(
    client: &str,
    view: &ClientView,
    extra_args: &[String],
    config: &InjectionConfig,
) -> Container {
    let port = config.agent_health_port;
    let probe = |failure_threshold: i32, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/readyz".into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    };
    let mut args = vec![
        "agent".to_owned(),
        format!("--credentials-dir={AGENT_SECRET_ROOT}/{client}"),
        format!("--output-dir={CREDENTIALS_ROOT}/{client}"),
        format!("--health-listen=0.0.0.0:{port}"),
    ];
    args.extend(extra_args.iter().cloned());
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(config.agent_image.clone()),
        image_pull_policy: config.agent_image_pull_policy.clone(),
        args: Some(args),
        // A native sidecar: starts before the app containers, keeps running,
        // and does not keep a Job from completing.
        restart_policy: Some("Always".into()),
        // The app containers start only once a token is on disk.
        startup_probe: Some(probe(120, 1)),
        readiness_probe: Some(probe(3, 10)),
        resources: config.agent_resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: agent_volume_name(client, view),
                mount_path: format!("{AGENT_SECRET_ROOT}/{client}"),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: volume_name(client, ""),
                mount_path: format!("{CREDENTIALS_ROOT}/{client}"),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

fn ensure_volume(spec: &mut PodSpec, volume: Volume) {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|v| v.name == volume.name) {
        volumes.push(volume);
    }
}

fn ensure_mount(container: &mut Container, mount: VolumeMount) {
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    if !mounts
        .iter()
        .any(|m| m.name == mount.name || m.mount_path == mount.mount_path)
    {
        mounts.push(mount);
    }
}

/// Adds `key=value` unless the container already sets `key` (the user's
/// value wins).
fn ensure_env(container: &mut Container, key: &str, value: &str) {
    let env = container.env.get_or_insert_with(Vec::new);
    if !env.iter().any(|e| e.name == key) {
        env.push(EnvVar {
            name: key.into(),
            value: Some(value.into()),
            ..Default::default()
        });
    }
}

/// The JSON patch turning `original` into `mutated` (empty when equal).
pub fn patch(original: &Pod, mutated: &Pod) -> Result<json_patch::Patch, serde_json::Error> {
    let before = serde_json::to_value(original)?;
    let after = serde_json::to_value(mutated)?;
    Ok(json_patch::diff(&before, &after))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The injection settings every webhook test uses.
    pub(crate) fn config() -> InjectionConfig {
        InjectionConfig {
            issuer_url: "https://sigil.example".into(),
            token_url: "https://sigil.example/oauth2/token".into(),
            agent_image: "sigil-issuer:test".into(),
            agent_image_pull_policy: None,
            agent_resources: None,
            agent_health_port: 8099,
        }
    }

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p", "annotations": annotations },
            "spec": {
                "containers": [{
                    "name": "app", "image": "app",
                    "env": [{ "name": "OAUTH_ISSUER", "value": "mine" }],
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                }],
                "volumes": [{ "name": "data", "emptyDir": {} }],
            },
        }))
        .unwrap()
    }

    fn ready(name: &str) -> Option<ClientView> {
        match name {
            "task-service" | "reports" => Some(ClientView {
                client_id: format!("{name}.tasks"),
                secret_name: format!("{name}-oauth"),
                credential: Credential::Secret,
                ready: Ok(()),
            }),
            "worker" => Some(ClientView {
                client_id: "worker.tasks".into(),
                secret_name: "worker-oauth".into(),
                credential: Credential::ServiceAccountToken {
                    service_accounts: vec!["worker".into(), "batch".into()],
                },
                ready: Ok(()),
            }),
            "pending" => Some(ClientView {
                client_id: "pending.tasks".into(),
                secret_name: "pending-oauth".into(),
                credential: Credential::Secret,
                ready: Err("DuplicateClientId: client id x is already used by tasks/y".into()),
            }),
            _ => None,
        }
    }

    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn mounts_each_clients_secret_read_only_and_sets_env() {
        let p = pod(json!({ "sigil.dev/client": "task-service, reports" }));
        let out = inject(&p, "tasks", ready, &config()).unwrap();
        let spec = out.spec.as_ref().unwrap();
        let volumes: Vec<(&str, Option<&str>)> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
                )
            })
            .collect();
        assert_eq!(
            volumes,
            [
                ("data", None),
                ("sigil-task-service", Some("task-service-oauth")),
                ("sigil-reports", Some("reports-oauth"))
            ]
        );
        let app = &spec.containers[0];
        let mounts: Vec<(&str, bool)> = app
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.as_str(), m.read_only.unwrap_or(false)))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/data", false),
                ("/var/run/secrets/sigil.dev/task-service", true),
                ("/var/run/secrets/sigil.dev/reports", true)
            ]
        );
        let env = env_of(app);
        assert_eq!(
            env["SIGIL_CREDENTIALS_DIR"],
            "/var/run/secrets/sigil.dev/task-service"
        );
        assert_eq!(env["OAUTH_CLIENT_ID"], "task-service.tasks");
        assert_eq!(env["OAUTH_TOKEN_URL"], "https://sigil.example/oauth2/token");
        // The container's own value wins.
        assert_eq!(env["OAUTH_ISSUER"], "mine");
        assert!(
            spec.init_containers.is_none(),
            "no agent without sigil.dev/token"
        );
        assert_eq!(
            out.metadata.annotations.as_ref().unwrap()["sigil.dev/injected"],
            "task-service,reports"
        );
    }

    #[test]
    fn re_admitting_an_injected_pod_changes_nothing() {
        for annotations in [
            json!({ "sigil.dev/client": "task-service" }),
            json!({ "sigil.dev/client": "task-service", "sigil.dev/token": "true" }),
        ] {
            let once = inject(&pod(annotations), "tasks", ready, &config()).unwrap();
            let twice = inject(&once, "tasks", ready, &config()).unwrap();
            assert_eq!(once, twice);
            assert!(patch(&once, &twice).unwrap().0.is_empty());
        }
    }

    #[test]
    fn token_agent_is_a_native_sidecar_owning_the_clients_directory() {
        let p = pod(json!({
            "sigil.dev/client": "task-service",
            "sigil.dev/token": "true",
            "sigil.dev/token-audience": "event",
            "sigil.dev/token-scope": "event.view event.create",
        }));
        let out = inject(&p, "tasks", ready, &config()).unwrap();
        let spec = out.spec.as_ref().unwrap();
        let init = spec.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        let agent = &init[0];
        assert_eq!(agent.name, AGENT_CONTAINER);
        assert_eq!(agent.restart_policy.as_deref(), Some("Always"));
        assert_eq!(agent.image.as_deref(), Some("sigil-issuer:test"));
        assert!(agent.startup_probe.is_some() && agent.readiness_probe.is_some());
        let args = agent.args.as_ref().unwrap();
        assert!(args.contains(&"--audience=event".to_owned()), "{args:?}");
        assert!(
            args.contains(&"--scope=event.view event.create".to_owned()),
            "{args:?}"
        );
        let sc = agent.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));

        // The client's directory is a memory emptyDir (agent writes, app
        // reads); the Secret is mounted into the agent only.
        let dir = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "sigil-task-service")
            .unwrap();
        assert!(dir.empty_dir.is_some() && dir.secret.is_none());
        let secret = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "sigil-task-service-secret")
            .unwrap();
        assert_eq!(
            secret.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("task-service-oauth")
        );
        let app_mounts: Vec<&str> = spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert!(
            !app_mounts.contains(&"sigil-task-service-secret"),
            "{app_mounts:?}"
        );
        let agent_writes = agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "sigil-task-service")
            .unwrap();
        assert_ne!(agent_writes.read_only, Some(true));
    }

    /// `pod` running as ServiceAccount `account` (None: unset).
    fn pod_as(annotations: serde_json::Value, account: Option<&str>) -> Pod {
        let mut p = pod(annotations);
        p.spec.as_mut().unwrap().service_account_name = account.map(str::to_owned);
        p
    }

    /// (volume name, kind) of every volume, kind one of secret, projected,
    /// emptyDir, other.
    fn volume_kinds(spec: &PodSpec) -> Vec<(String, &'static str)> {
        spec.volumes
            .iter()
            .flatten()
            .map(|v| {
                let kind = if v.secret.is_some() {
                    "secret"
                } else if v.projected.is_some() {
                    "projected"
                } else if v.empty_dir.is_some() {
                    "emptyDir"
                } else {
                    "other"
                };
                (v.name.clone(), kind)
            })
            .collect()
    }

    #[test]
    fn a_secretless_client_gets_its_config_map_and_a_projected_token_and_no_secret() {
        for (token, account) in [(false, "worker"), (true, "batch")] {
            let mut annotations = json!({ "sigil.dev/client": "worker" });
            if token {
                annotations["sigil.dev/token"] = json!("true");
            }
            let out = inject(
                &pod_as(annotations, Some(account)),
                "tasks",
                ready,
                &config(),
            )
            .unwrap();
            let spec = out.spec.as_ref().unwrap();
            let want: Vec<(String, &str)> = if token {
                vec![
                    ("data".into(), "emptyDir"),
                    ("sigil-worker".into(), "emptyDir"),
                    ("sigil-worker-sa".into(), "projected"),
                ]
            } else {
                vec![
                    ("data".into(), "emptyDir"),
                    ("sigil-worker".into(), "projected"),
                ]
            };
            assert_eq!(volume_kinds(spec), want, "token: {token}");
            let projected = spec
                .volumes
                .iter()
                .flatten()
                .find_map(|v| v.projected.as_ref())
                .unwrap();
            let sources = projected.sources.as_ref().unwrap();
            assert_eq!(sources.len(), 2);
            assert_eq!(sources[0].config_map.as_ref().unwrap().name, "worker-oauth");
            let sa = sources[1].service_account_token.as_ref().unwrap();
            assert_eq!(sa.audience.as_deref(), Some("https://sigil.example"));
            assert_eq!(sa.expiration_seconds, Some(600));
            assert_eq!(sa.path, "service_account_token");
            let env = env_of(&spec.containers[0]);
            assert_eq!(env["OAUTH_CLIENT_ID"], "worker.tasks");
            assert_eq!(
                env["SIGIL_CREDENTIALS_DIR"],
                "/var/run/secrets/sigil.dev/worker"
            );
            if token {
                let agent = &spec.init_containers.as_ref().unwrap()[0];
                let mounts: Vec<(&str, &str)> = agent
                    .volume_mounts
                    .iter()
                    .flatten()
                    .map(|m| (m.name.as_str(), m.mount_path.as_str()))
                    .collect();
                assert_eq!(
                    mounts,
                    [
                        (
                            "sigil-worker-sa",
                            "/var/run/secrets/sigil.dev/.secret/worker"
                        ),
                        ("sigil-worker", "/var/run/secrets/sigil.dev/worker"),
                    ]
                );
            }
            let twice = inject(&out, "tasks", ready, &config()).unwrap();
            assert_eq!(out, twice);
        }
    }

    #[test]
    fn a_secretless_client_refuses_a_pod_of_another_service_account() {
        for (account, shown) in [
            (None, "default"),
            (Some(""), "default"),
            (Some("web"), "web"),
        ] {
            let annotations = json!({ "sigil.dev/client": "task-service,worker" });
            let refusal =
                inject(&pod_as(annotations, account), "tasks", ready, &config()).unwrap_err();
            assert_eq!(
                refusal,
                Refusal::WrongServiceAccount {
                    namespace: "tasks".into(),
                    name: "worker".into(),
                    service_account: shown.into(),
                    allowed: "worker, batch".into(),
                }
            );
            let message = refusal.to_string();
            assert!(
                message.contains(&format!("runs as ServiceAccount \"{shown}\""))
                    && message.contains("tasks/worker")
                    && message.contains("worker, batch"),
                "{message}"
            );
        }
        // The deprecated serviceAccount field counts when the name is unset.
        let mut p = pod(json!({ "sigil.dev/client": "worker" }));
        p.spec.as_mut().unwrap().service_account = Some("batch".into());
        assert!(inject(&p, "tasks", ready, &config()).is_ok());
        // A client with a secret does not look at the ServiceAccount.
        let p = pod_as(json!({ "sigil.dev/client": "task-service" }), Some("web"));
        assert!(inject(&p, "tasks", ready, &config()).is_ok());
    }

    #[test]
    fn refusals_name_the_client_and_say_why() {
        let refuse =
            |annotations| inject(&pod(annotations), "tasks", ready, &config()).unwrap_err();
        assert_eq!(
            refuse(json!({ "sigil.dev/client": "task-service,missing" })).to_string(),
            "annotation sigil.dev/client: OAuthClient tasks/missing does not exist"
        );
        let msg = refuse(json!({ "sigil.dev/client": "pending" })).to_string();
        assert!(
            msg.contains("tasks/pending is not Ready: DuplicateClientId"),
            "{msg}"
        );
        let msg = refuse(json!({ "sigil.dev/client": "other/task-service" })).to_string();
        assert!(
            msg.contains("\"other/task-service\" is in another namespace"),
            "{msg}"
        );
        assert_eq!(
            refuse(json!({ "sigil.dev/client": " , " })),
            Refusal::NoClients
        );
        assert_eq!(
            refuse(json!({ "sigil.dev/client": "task-service", "sigil.dev/token": "yes" })),
            Refusal::InvalidTokenFlag("yes".into())
        );
        assert_eq!(
            refuse(json!({ "sigil.dev/client": "Task_Service" })),
            Refusal::InvalidName("Task_Service".into())
        );
    }

    #[test]
    fn volume_names_are_dns_labels_for_any_client_name() {
        assert_eq!(volume_name("task-service", ""), "sigil-task-service");
        for name in ["a.b", &"x".repeat(253), &format!("{}.y", "z".repeat(100))] {
            for suffix in ["", "-secret", "-sa"] {
                let v = volume_name(name, suffix);
                assert!(v.len() <= 63, "{v}");
                assert!(
                    v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{v}"
                );
                assert!(v.ends_with(suffix));
            }
        }
        assert_ne!(volume_name("a.b", ""), volume_name("a-b", ""));
    }
}
