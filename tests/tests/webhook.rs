//! Workload injection (DESIGN.md §5) through the real API server: the
//! issuer's pod webhook registered by URL with failurePolicy Fail and the
//! chart's matchConditions, with the real operator making Ready OAuthClients
//! and their Secrets; then the token agent as a process against the issuer,
//! fed a credentials folder laid out and updated exactly like kubelet does,
//! through secret rotation and an issuer restart.
//!
//! Each test runs its own operator and issuer scoped to its own namespace,
//! and its webhook only sees that namespace, so the tests share one control
//! plane.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sigil_crds::OAuthClient;
use sigil_tests::cluster::TestCluster;
use sigil_tests::pki::{Pki, write_pair};
use sigil_tests::processes::{Process, free_addr};

const AGENT_IMAGE: &str = "sigil-issuer:e2e";
const AGENT_RESOURCES: &str =
    r#"{"requests":{"cpu":"5m","memory":"8Mi"},"limits":{"memory":"32Mi"}}"#;
/// The chart's match condition (charts/sigil/templates/webhook.yaml).
const MATCH_CONDITION: &str =
    "has(object.metadata.annotations) && 'sigil.dev/client' in object.metadata.annotations";

/// Operator + TLS issuer for one namespace (also the issuer's namespace,
/// holding the default SigningKey).
struct Sigil {
    namespace: String,
    dir: PathBuf,
    issuer: Process,
    issuer_args: Vec<String>,
    issuer_health: std::net::SocketAddr,
    operator: Process,
    /// `https://127.0.0.1:<port>`: the issuer URL and its listener.
    url: String,
    /// `https://127.0.0.1:<port>`: the webhook's own listener.
    webhook_url: String,
    ca_pem: String,
    ca_file: PathBuf,
    http: reqwest::Client,
}

impl Sigil {
    async fn start(cluster: &TestCluster, namespace: &str) -> Sigil {
        let dir = cluster
            .control_plane
            .dir()
            .join(format!("webhook-{namespace}"));
        std::fs::create_dir_all(&dir).expect("test folder");
        // A CA and a serving certificate for 127.0.0.1 (rcgen).
        let pki = Pki::new().expect("test CA");
        let serving = pki.serving_cert("sigil-issuer").expect("serving cert");
        write_pair(&dir, "issuer", &serving).expect("writing the serving cert");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).expect("writing the CA");

        let client = cluster.client().await;
        apply(
            &client,
            namespace,
            json!({
                "apiVersion": "sigil.dev/v1alpha1", "kind": "SigningKey",
                "metadata": {"name": "default"}, "spec": {"algorithm": "ES256"},
            }),
        )
        .await;

        let listen = free_addr().expect("free port");
        let url = format!("https://{listen}");
        let issuer_health = free_addr().expect("free port");
        let webhook_listen = free_addr().expect("free port");
        let webhook_url = format!("https://{webhook_listen}");
        let issuer_args = vec![
            format!("--issuer-url={url}"),
            format!("--listen={listen}"),
            format!("--webhook-listen={webhook_listen}"),
            format!("--health-listen={issuer_health}"),
            format!("--namespace={namespace}"),
            format!("--tls-cert={}", dir.join("issuer.crt").display()),
            format!("--tls-key={}", dir.join("issuer.key").display()),
            format!("--agent-image={AGENT_IMAGE}"),
            "--agent-image-pull-policy=Never".to_owned(),
            format!("--agent-resources={AGENT_RESOURCES}"),
        ];
        let issuer = start_issuer(cluster, &dir, &issuer_args);
        let operator = Process::spawn(
            "operator",
            &sigil_tests::binary("operator"),
            &[
                format!("--issuer-url={url}"),
                format!("--namespace={namespace}"),
                format!("--watch-namespaces={namespace}"),
                format!("--lease-name=sigil-operator-{namespace}"),
                format!("--health-listen={}", free_addr().expect("free port")),
            ],
            &[
                ("KUBECONFIG", cluster.kubeconfig().display().to_string()),
                ("RUST_LOG", "info".to_owned()),
            ],
            &dir.join("operator.log"),
        )
        .expect("starting the operator");
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("CA")])
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTPS client");
        let mut sigil = Sigil {
            namespace: namespace.to_owned(),
            dir,
            issuer,
            issuer_args,
            issuer_health,
            operator,
            url,
            webhook_url,
            ca_pem: pki.ca_pem.clone(),
            ca_file,
            http,
        };
        sigil.wait_issuer_ready().await;
        sigil
    }

    async fn wait_issuer_ready(&mut self) {
        self.issuer
            .wait_http_ok(self.issuer_health, "/readyz", Duration::from_secs(60))
            .await
            .expect("issuer ready (watches synced, active key)");
    }

    /// Crashes the issuer (SIGKILL: a graceful stop keeps serving through
    /// its shutdown delay, which could hide the outage from the agent) and
    /// starts it again `down_for` later.
    async fn restart_issuer(&mut self, cluster: &TestCluster, down_for: Duration) {
        self.issuer.kill().await;
        tokio::time::sleep(down_for).await;
        self.issuer = start_issuer(cluster, &self.dir, &self.issuer_args);
        self.wait_issuer_ready().await;
    }

    /// The MutatingWebhookConfiguration the chart makes, by URL, for this
    /// namespace only.
    fn webhook_configuration(&self) -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": format!("sigil-e2e-{}", self.namespace)},
            "webhooks": [{
                "name": "pods.sigil.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": 5,
                "clientConfig": {
                    "url": format!("{}/webhooks/pods", self.webhook_url),
                    "caBundle": STANDARD.encode(&self.ca_pem),
                },
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                    "resources": ["pods"], "scope": "Namespaced",
                }],
                "namespaceSelector": {"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name", "operator": "In",
                    "values": [self.namespace],
                }]},
                "matchConditions": [{
                    "name": "asks-for-sigil-credentials",
                    "expression": MATCH_CONDITION,
                }],
            }],
        }))
        .expect("valid MutatingWebhookConfiguration")
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.issuer_health))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// RFC 7662 introspection of `token` with the client's credentials.
    async fn introspect(&self, client_id: &str, client_secret: &str, token: &str) -> Value {
        let response = self
            .http
            .post(format!("{}/oauth2/introspect", self.url))
            .basic_auth(client_id, Some(client_secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection request");
        let status = response.status();
        let body: Value = response.json().await.expect("introspection JSON");
        assert_eq!(status, 200, "introspection: {body}");
        body
    }
}

fn start_issuer(cluster: &TestCluster, dir: &Path, args: &[String]) -> Process {
    Process::spawn(
        "issuer",
        &sigil_tests::binary("issuer"),
        args,
        &[
            ("KUBECONFIG", cluster.kubeconfig().display().to_string()),
            ("RUST_LOG", "info".to_owned()),
        ],
        &dir.join("issuer.log"),
    )
    .expect("starting the issuer")
}

async fn apply(client: &kube::Client, namespace: &str, manifest: Value) {
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let params = PatchParams::apply("sigil-webhook-e2e").force();
    let result = match manifest["kind"].as_str() {
        Some("OAuthClient") => Api::<OAuthClient>::namespaced(client.clone(), namespace)
            .patch(&name, &params, &Patch::Apply(&manifest))
            .await
            .map(|_| ()),
        Some("SigningKey") => Api::<sigil_crds::SigningKey>::namespaced(client.clone(), namespace)
            .patch(&name, &params, &Patch::Apply(&manifest))
            .await
            .map(|_| ()),
        other => panic!("cannot apply {other:?}"),
    };
    result.unwrap_or_else(|e| panic!("applying {namespace}/{name}: {e}"));
}

/// Waits for the Ready condition of an OAuthClient to have `status`;
/// returns its reason.
async fn wait_ready_condition(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    status: &str,
) -> String {
    let api: Api<OAuthClient> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = api
            .get_opt(name)
            .await
            .expect("get OAuthClient")
            .and_then(|c| c.status)
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
        if let Some(condition) = found
            && condition.status == status
        {
            return condition.reason;
        }
        assert!(
            Instant::now() < deadline,
            "OAuthClient {namespace}/{name} not Ready={status} within 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pod(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .expect("valid Pod")
}

fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// Creates a pod, retrying for a few seconds while the issuer may not yet
/// have seen the client (its watch trails the API server by milliseconds).
async fn create_pod(pods: &Api<Pod>, params: &PostParams, pod: &Pod) -> Result<Pod, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match pods.create(params, pod).await {
            Ok(created) => return Ok(created),
            Err(error) => {
                let message = api_message(&error);
                let transient = message.contains("not loaded the OAuthClients")
                    || message.contains("has not reconciled");
                if !transient || Instant::now() > deadline {
                    return Err(message);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn sigil_volumes(pod: &Pod) -> Vec<Value> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| v.name.starts_with("sigil-"))
        .map(|v| serde_json::to_value(v).expect("volume JSON"))
        .collect()
}

/// Mounts other than the ServiceAccount token kube-apiserver adds.
fn own_mounts(container: &k8s_openapi::api::core::v1::Container) -> Vec<Value> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| !m.mount_path.starts_with("/var/run/secrets/kubernetes.io"))
        .map(|m| serde_json::to_value(m).expect("mount JSON"))
        .collect()
}

#[tokio::test]
async fn webhook_injects_credentials_through_the_api_server() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("webhook").await;
    let mut sigil = Sigil::start(cluster, &ns).await;

    let client_manifest = |name: &str, client_id: Option<&str>| {
        let mut spec = json!({
            "scopes": ["event.view", "event.create", "file.view"],
            "audiences": ["event", "file"],
        });
        if let Some(id) = client_id {
            spec["clientId"] = json!(id);
        }
        json!({
            "apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
            "metadata": {"name": name}, "spec": spec,
        })
    };
    apply(&client, &ns, client_manifest("task-service", None)).await;
    // Both in this namespace's id form, so only the duplicate rule decides.
    let shared_id = format!("shared-id.{ns}");
    apply(&client, &ns, client_manifest("first", Some(&shared_id))).await;
    wait_ready_condition(&client, &ns, "first", "True").await;
    apply(&client, &ns, client_manifest("second", Some(&shared_id))).await;
    wait_ready_condition(&client, &ns, "task-service", "True").await;
    let reason = wait_ready_condition(&client, &ns, "second", "False").await;
    assert_eq!(reason, "DuplicateClientId");

    // The webhook has its own port: the public API port serves no admission
    // path, and the webhook port serves no token API.
    let forged = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let on_api = sigil
        .http
        .post(format!("{}/webhooks/pods", sigil.url))
        .json(&forged)
        .send()
        .await
        .expect("POST /webhooks/pods on the API port");
    assert_eq!(on_api.status(), 404, "the API port serves the webhook");
    let on_webhook = sigil
        .http
        .get(format!("{}/.well-known/jwks.json", sigil.webhook_url))
        .send()
        .await
        .expect("GET the JWKS on the webhook port");
    assert_eq!(on_webhook.status(), 404, "the webhook port serves the API");

    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = sigil.webhook_configuration();
    let configuration_name = configuration.metadata.name.clone().expect("name");
    webhooks
        .create(&PostParams::default(), &configuration)
        .await
        .expect("registering the webhook");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let post = PostParams::default();

    // 1. A pod that asks for credentials and a token agent.
    let started = Instant::now();
    let injected = create_pod(
        &pods,
        &post,
        &pod(
            "with-agent",
            json!({
                "sigil.dev/client": "task-service",
                "sigil.dev/token": "true",
                "sigil.dev/token-audience": "event",
                "sigil.dev/token-scope": "event.view",
            }),
        ),
    )
    .await
    .expect("annotated pod admitted");
    eprintln!(
        "annotated pod created through the webhook in {} ms",
        started.elapsed().as_millis()
    );
    let stored = pods.get("with-agent").await.expect("stored pod");
    assert_eq!(
        stored.spec, injected.spec,
        "the stored pod is the injected one"
    );
    assert_eq!(
        stored
            .annotations()
            .get("sigil.dev/injected")
            .map(String::as_str),
        Some("task-service")
    );
    assert_eq!(
        sigil_volumes(&stored),
        [
            json!({"name": "sigil-task-service", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
            json!({"name": "sigil-task-service-secret", "secret": {"secretName": "task-service-oauth", "defaultMode": 420}}),
        ]
    );
    let spec = stored.spec.as_ref().expect("spec");
    let app = &spec.containers[0];
    assert_eq!(
        own_mounts(app),
        [
            json!({"name": "sigil-task-service", "mountPath": "/var/run/secrets/sigil.dev/task-service", "readOnly": true})
        ]
    );
    let env: Vec<(String, String)> = app
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let token_url = format!("{}/oauth2/token", sigil.url);
    assert_eq!(
        env,
        [
            (
                "SIGIL_CREDENTIALS_DIR".to_owned(),
                "/var/run/secrets/sigil.dev/task-service".to_owned()
            ),
            ("OAUTH_CLIENT_ID".to_owned(), format!("task-service.{ns}")),
            ("OAUTH_TOKEN_URL".to_owned(), token_url.clone()),
            ("OAUTH_ISSUER".to_owned(), sigil.url.clone()),
        ]
    );
    let init = spec.init_containers.as_ref().expect("init containers");
    assert_eq!(init.len(), 1, "exactly the agent");
    let agent = &init[0];
    assert_eq!(agent.name, "sigil-token-agent");
    assert_eq!(agent.image.as_deref(), Some(AGENT_IMAGE));
    assert_eq!(agent.image_pull_policy.as_deref(), Some("Never"));
    assert_eq!(
        agent.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    assert_eq!(
        agent.args.as_deref().unwrap_or_default(),
        [
            "agent",
            "--credentials-dir=/var/run/secrets/sigil.dev/.secret/task-service",
            "--output-dir=/var/run/secrets/sigil.dev/task-service",
            "--health-listen=0.0.0.0:8099",
            "--audience=event",
            "--scope=event.view",
        ]
    );
    assert_eq!(
        serde_json::to_value(&agent.resources).expect("resources"),
        serde_json::from_str::<Value>(AGENT_RESOURCES).expect("resources JSON")
    );
    let startup = agent.startup_probe.as_ref().expect("startup probe");
    let get = startup.http_get.as_ref().expect("HTTP probe");
    assert_eq!(
        (
            get.path.as_deref(),
            serde_json::to_value(&get.port).expect("port")
        ),
        (Some("/readyz"), json!(8099))
    );
    assert_eq!(
        own_mounts(agent),
        [
            json!({"name": "sigil-task-service-secret", "mountPath": "/var/run/secrets/sigil.dev/.secret/task-service", "readOnly": true}),
            json!({"name": "sigil-task-service", "mountPath": "/var/run/secrets/sigil.dev/task-service"}),
        ]
    );
    assert!(
        agent.env.is_none(),
        "the agent gets no app env: {:?}",
        agent.env
    );

    // 2. A pod naming a client that does not exist: refused, saying which,
    //    as kubectl shows it.
    let missing_path = sigil.dir.join("missing-pod.json");
    std::fs::write(
        &missing_path,
        serde_json::to_vec(&pod("missing", json!({"sigil.dev/client": "missing"}))).expect("JSON"),
    )
    .expect("writing the pod");
    let refused = cluster.kubectl(&[
        "create",
        "-n",
        &ns,
        "-f",
        &missing_path.display().to_string(),
    ]);
    assert!(
        !refused.success,
        "a pod naming a missing client was admitted"
    );
    let expected = format!("OAuthClient {ns}/missing does not exist");
    assert!(
        refused.stderr.contains(&expected) && refused.stderr.contains("pods.sigil.dev"),
        "kubectl shows: {}",
        refused.stderr
    );
    eprintln!("kubectl shows: {}", refused.stderr.trim());

    // 3. A client that is not Ready (duplicate client id): refused with the reason.
    let message = create_pod(
        &pods,
        &post,
        &pod("dup", json!({"sigil.dev/client": "second"})),
    )
    .await
    .expect_err("a pod naming a not-Ready client was admitted");
    assert!(
        message.contains(&format!(
            "OAuthClient {ns}/second is not Ready: DuplicateClientId"
        )),
        "{message}"
    );

    // 4. Dry run: the answer is the mutated pod, and nothing is stored.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let dry_pod = create_pod(
        &pods,
        &dry,
        &pod("dry", json!({"sigil.dev/client": "task-service"})),
    )
    .await
    .expect("dry-run create");
    assert_eq!(
        sigil_volumes(&dry_pod),
        [
            json!({"name": "sigil-task-service", "secret": {"secretName": "task-service-oauth", "defaultMode": 420}})
        ]
    );
    assert!(
        pods.get_opt("dry").await.expect("get").is_none(),
        "a dry run stored a pod"
    );

    // 5. A Deployment's pod, created by kube-controller-manager's
    //    ReplicaSet controller, is mutated too.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "task-service"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "task-service"}},
            "template": {
                "metadata": {
                    "labels": {"app": "task-service"},
                    "annotations": {"sigil.dev/client": "task-service"},
                },
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/task:1"}]},
            },
        },
    }))
    .expect("valid Deployment");
    deployments
        .create(&post, &deployment)
        .await
        .expect("creating the Deployment");
    let deadline = Instant::now() + Duration::from_secs(60);
    let replica = loop {
        let list = pods
            .list(&ListParams::default().labels("app=task-service"))
            .await
            .expect("list pods");
        if let Some(found) = list.items.into_iter().next() {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the ReplicaSet controller created no pod within 60s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        replica
            .annotations()
            .get("sigil.dev/injected")
            .map(String::as_str),
        Some("task-service")
    );
    assert_eq!(
        sigil_volumes(&replica),
        [
            json!({"name": "sigil-task-service", "secret": {"secretName": "task-service-oauth", "defaultMode": 420}})
        ]
    );

    // 6. A pod that does not ask is left alone …
    let plain = create_pod(&pods, &post, &pod("plain", json!({"team": "x"})))
        .await
        .expect("unannotated pod admitted");
    assert!(sigil_volumes(&plain).is_empty());
    assert!(plain.spec.as_ref().expect("spec").init_containers.is_none());
    assert!(!plain.annotations().contains_key("sigil.dev/injected"));

    let metrics = sigil.metrics().await;
    for line in [
        "sigil_issuer_admission_reviews_total{result=\"patched\"}",
        "sigil_issuer_admission_reviews_total{result=\"refused\"}",
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
    assert!(
        !metrics.contains("result=\"ignored\""),
        "the unannotated pod reached the webhook:\n{metrics}"
    );

    // … and is admitted while the issuer is down (matchConditions keep it
    // away from the webhook), while a pod that asks is refused (Fail).
    sigil.issuer.stop().await;
    let plain = create_pod(&pods, &post, &pod("plain-while-down", json!({})))
        .await
        .expect("an unannotated pod must not depend on the issuer");
    assert!(sigil_volumes(&plain).is_empty());
    let message = create_pod(
        &pods,
        &post,
        &pod(
            "asks-while-down",
            json!({"sigil.dev/client": "task-service"}),
        ),
    )
    .await
    .expect_err("a pod that asks was admitted without the webhook");
    assert!(message.contains("pods.sigil.dev"), "{message}");

    webhooks
        .delete(&configuration_name, &DeleteParams::default())
        .await
        .expect("removing the webhook");
    sigil.operator.stop().await;
}

/// Emulates kubelet's Secret volume: `..<timestamp>/` with the data, a
/// `..data` symlink swapped atomically, and per-key symlinks through it.
struct KubeletVolume {
    dir: PathBuf,
    current: Option<String>,
    serial: u32,
}

impl KubeletVolume {
    fn new(dir: PathBuf) -> KubeletVolume {
        std::fs::create_dir_all(&dir).expect("volume folder");
        KubeletVolume {
            dir,
            current: None,
            serial: 0,
        }
    }

    fn write(&mut self, data: &BTreeMap<String, Vec<u8>>) {
        use std::os::unix::fs::{PermissionsExt, symlink};
        self.serial += 1;
        let stamp = format!("..{}.{:09}", unix_seconds(), self.serial);
        let versioned = self.dir.join(&stamp);
        std::fs::create_dir(&versioned).expect("versioned folder");
        for (key, value) in data {
            let path = versioned.join(key);
            std::fs::write(&path, value).expect("key file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("mode");
        }
        let temp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&temp);
        symlink(&stamp, &temp).expect("..data_tmp");
        std::fs::rename(&temp, self.dir.join("..data")).expect("swapping ..data");
        for key in data.keys() {
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{key}"), &link).expect("key symlink");
            }
        }
        if let Some(old) = self.current.replace(stamp) {
            std::fs::remove_dir_all(self.dir.join(old)).expect("removing the old version");
        }
    }
}

/// The time part of a version folder's name (kubelet writes a date).
fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// The unverified claims of a JWT (the introspection call verifies).
fn claims(token: &str) -> Option<Value> {
    let part = token.trim().split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn agent_keeps_a_valid_token_through_secret_rotation_and_an_issuer_restart() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("agent").await;
    let mut sigil = Sigil::start(cluster, &ns).await;

    // One-minute tokens (renewed every ~45 s) and a secret rotated every
    // 20 s whose predecessor stops working 10 s later: within the test the
    // agent must follow several rotations.
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
            "metadata": {"name": "worker"},
            "spec": {
                "scopes": ["jobs.run", "jobs.read"], "audiences": ["jobs"], "tokenTTL": "1m",
                "secretRotation": {"interval": "20s", "gracePeriod": "10s"},
            },
        }),
    )
    .await;
    wait_ready_condition(&client, &ns, "worker", "True").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets.get("worker-oauth").await.expect("client Secret");

    // Kubelet's part: copy every new version of the Secret into the volume.
    let volume_dir = sigil.dir.join("volume");
    let mut volume = KubeletVolume::new(volume_dir.clone());
    let mut data = secret_data(&secret);
    volume.write(&data);
    let first_id = String::from_utf8_lossy(&data["client_id"]).into_owned();
    let first_secret = String::from_utf8_lossy(&data["client_secret"]).into_owned();
    let kubelet_secrets = secrets.clone();
    let (stop_kubelet, mut stopping) = tokio::sync::oneshot::channel::<()>();
    let kubelet = tokio::spawn(async move {
        let mut swaps = 0u32;
        loop {
            tokio::select! {
                _ = &mut stopping => return (volume, swaps),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if let Ok(secret) = kubelet_secrets.get("worker-oauth").await {
                let fresh = secret_data(&secret);
                if fresh != data {
                    volume.write(&fresh);
                    data = fresh;
                    swaps += 1;
                }
            }
        }
    });

    // `issuer token`: one token on stdout.
    let output = tokio::process::Command::new(sigil_tests::binary("issuer"))
        .args(["token", "--credentials-dir"])
        .arg(&volume_dir)
        .arg("--ca-file")
        .arg(&sigil.ca_file)
        .args(["--audience", "jobs", "--scope", "jobs.read"])
        .output()
        .await
        .expect("running issuer token");
    assert!(
        output.status.success(),
        "issuer token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let printed_claims = claims(&printed).expect("issuer token printed a JWT");
    assert_eq!(printed_claims["scope"], "jobs.read");
    assert_eq!(printed_claims["aud"], "jobs");
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains(&printed),
        "the token reached the log"
    );
    let verdict = sigil.introspect(&first_id, &first_secret, &printed).await;
    assert_eq!(verdict["active"], true, "{verdict}");

    let output_dir = sigil.dir.join("out");
    let agent_health = free_addr().expect("free port");
    let mut agent = Process::spawn(
        "agent",
        &sigil_tests::binary("issuer"),
        &[
            "agent".to_owned(),
            format!("--credentials-dir={}", volume_dir.display()),
            format!("--output-dir={}", output_dir.display()),
            format!("--ca-file={}", sigil.ca_file.display()),
            "--audience=jobs".to_owned(),
            "--scope=jobs.run".to_owned(),
            format!("--health-listen={agent_health}"),
        ],
        &[("RUST_LOG", "info".to_owned())],
        &sigil.dir.join("agent.log"),
    )
    .expect("starting the agent");
    let started = Instant::now();
    agent
        .wait_http_ok(agent_health, "/readyz", Duration::from_secs(30))
        .await
        .expect("agent ready");
    eprintln!(
        "agent ready (token on disk) {} ms after start",
        started.elapsed().as_millis()
    );

    // Watch the token file for 150 s. The issuer is down from 40 s to ~51 s,
    // across the first renewal (due at 70-80% of the first token's minute):
    // the agent must retry while its token is still valid.
    let token_path = output_dir.join("token");
    let mut seen: Vec<(String, f64, Value)> = Vec::new(); // token, first seen, claims
    let mut worst_margin = f64::INFINITY;
    let mut restarted = false;
    let watch_for = Duration::from_secs(150);
    while started.elapsed() < watch_for {
        agent.check_running().expect("agent running");
        let token = std::fs::read_to_string(&token_path).expect("token file always present");
        let token_claims = claims(&token).expect("the token file always holds a JWT");
        let now = unix_now();
        let exp = token_claims["exp"].as_f64().expect("exp");
        assert!(
            exp > now,
            "the token on disk expired {:.1}s ago (gap in renewal)",
            now - exp
        );
        worst_margin = worst_margin.min(exp - now);
        if seen.last().map(|(t, _, _)| t != &token).unwrap_or(true) {
            // Accepted by the issuer, with the credentials of the moment.
            let id =
                String::from_utf8_lossy(&std::fs::read(volume_dir.join("client_id")).expect("id"))
                    .into_owned();
            let secret = String::from_utf8_lossy(
                &std::fs::read(volume_dir.join("client_secret")).expect("secret"),
            )
            .into_owned();
            let mut verdict = Value::Null;
            for _ in 0..50 {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    sigil
                        .http
                        .post(format!("{}/oauth2/introspect", sigil.url))
                        .basic_auth(&id, Some(&secret))
                        .form(&[("token", token.trim())])
                        .send(),
                )
                .await
                {
                    Ok(Ok(response)) if response.status() == 200 => {
                        verdict = response.json().await.expect("introspection JSON");
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            assert_eq!(
                verdict["active"], true,
                "introspection of the agent's token: {verdict}"
            );
            assert_eq!(verdict["scope"], "jobs.run");
            seen.push((token.clone(), now, token_claims));
        }
        if !restarted && started.elapsed() > Duration::from_secs(40) {
            let down = Instant::now();
            sigil.restart_issuer(cluster, Duration::from_secs(10)).await;
            eprintln!(
                "issuer restarted: down and back to ready in {} ms",
                down.elapsed().as_millis()
            );
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let _ = stop_kubelet.send(());
    let (_volume, swaps) = kubelet.await.expect("kubelet emulation");
    // Renewal timing: each token replaced at 70-80% of its life (plus the
    // test's sampling), except the one renewed across the outage, which
    // must still have been replaced before it expired.
    let mut lateness: Vec<f64> = Vec::new();
    for pair in seen.windows(2) {
        let (_, _, c) = &pair[0];
        let (_, replaced_at, _) = &pair[1];
        let (iat, exp) = (
            c["iat"].as_f64().expect("iat"),
            c["exp"].as_f64().expect("exp"),
        );
        lateness.push((replaced_at - iat) / (exp - iat));
    }
    eprintln!(
        "agent: {} tokens in {}s, {} secret versions swapped in, replaced at {:?} of their lifetime, smallest remaining validity seen {:.1}s",
        seen.len(),
        watch_for.as_secs(),
        swaps,
        lateness
            .iter()
            .map(|f| format!("{:.0}%", f * 100.0))
            .collect::<Vec<_>>(),
        worst_margin
    );
    assert!(swaps >= 4, "the secret rotated only {swaps} times");
    assert!(
        seen.len() >= 3,
        "only {} tokens in {}s",
        seen.len(),
        watch_for.as_secs()
    );
    for fraction in &lateness {
        assert!(
            (0.65..1.0).contains(fraction),
            "a token was replaced at {:.0}% of its lifetime",
            fraction * 100.0
        );
    }
    let late = lateness.iter().filter(|f| **f > 0.85).count();
    assert!(
        late <= 1,
        "{late} renewals late, but only one fell in the outage"
    );
    let log = std::fs::read_to_string(agent.log()).unwrap_or_default();
    assert!(
        log.contains("could not renew the access token") && log.contains("old_token_still_valid"),
        "the outage did not make the agent retry:\n{}",
        agent.log_tail()
    );
    // The mirrored credentials are the current ones.
    let mirrored = std::fs::read(output_dir.join("client_secret")).expect("mirrored secret");
    let current = std::fs::read(volume_dir.join("client_secret")).expect("current secret");
    assert_eq!(
        mirrored, current,
        "the agent did not mirror the rotated secret"
    );
    let current = String::from_utf8_lossy(&current).into_owned();
    for (token, _, _) in &seen {
        assert!(
            !log.contains(token.trim()),
            "a token reached the agent's log"
        );
    }
    assert!(
        !log.contains(&current),
        "the client secret reached the agent's log"
    );
    // A last check that the last token is still accepted.
    let (last, _, _) = seen.last().expect("a token");
    let id = String::from_utf8_lossy(&std::fs::read(volume_dir.join("client_id")).expect("id"))
        .into_owned();
    let verdict = sigil.introspect(&id, &current, last.trim()).await;
    assert_eq!(verdict["active"], true);

    agent.stop().await;
    sigil.issuer.stop().await;
    sigil.operator.stop().await;
}
