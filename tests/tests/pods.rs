//! Sigil as its users run it: installed by `helm install` from its images
//! onto a real node (containerd, kubelet, kube-proxy, CoreDNS), serving
//! real pods. One node and one installation for the whole binary; each test
//! works in its own namespace.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use sigil_tests::cluster::{ControlPlane, Options};
use sigil_tests::{eventually, install};
use tokio::sync::OnceCell;

/// The node, with Sigil installed and Ready.
struct Installed {
    cp: ControlPlane,
}

static INSTALLED: OnceCell<Installed> = OnceCell::const_new();

async fn sigil() -> &'static Installed {
    INSTALLED
        .get_or_init(|| async {
            let started = Instant::now();
            let images = install::image_archives().expect("building the image archives");
            let cp = ControlPlane::start(Options {
                node: true,
                images,
                ..Options::default()
            })
            .await
            .expect("starting the local node");
            register_exit_cleanup();
            eprintln!("node Ready in {:.1}s", started.elapsed().as_secs_f64());
            install::helm_install(&cp, &[]).expect("helm install");
            eprintln!(
                "Sigil installed and available after {:.1}s",
                started.elapsed().as_secs_f64()
            );
            Installed { cp }
        })
        .await
}

fn register_exit_cleanup() {
    extern "C" fn stop() {
        if let Some(installed) = INSTALLED.get() {
            installed.cp.stop();
        }
    }
    // SAFETY: registers a plain extern "C" function with no captured state.
    unsafe {
        libc::atexit(stop);
    }
}

impl Installed {
    async fn client(&self) -> kube::Client {
        self.cp.client().await.expect("admin client")
    }

    async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        self.kubectl(&["create", "namespace", &name]);
        // Pods need the namespace's default ServiceAccount.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client().await, &name);
        eventually(
            Duration::from_secs(30),
            "the default ServiceAccount",
            || {
                let accounts = accounts.clone();
                async move { accounts.get_opt("default").await.ok().flatten() }
            },
        )
        .await;
        name
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.cp.run_kubectl(args).expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies JSON manifests in `namespace`.
    fn apply(&self, namespace: &str, objects: &[Value]) {
        let path = self
            .cp
            .dir()
            .join(format!("apply-{:08x}.json", rand::random::<u32>()));
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        std::fs::write(&path, list.to_string()).expect("writing the manifest");
        self.kubectl(&["apply", "-n", namespace, "-f", &path.display().to_string()]);
    }

    /// `kubectl exec` in a container; stdout.
    fn exec(&self, namespace: &str, pod: &str, container: &str, command: &[&str]) -> String {
        let mut args = vec!["exec", "-n", namespace, pod, "-c", container, "--"];
        args.extend_from_slice(command);
        self.kubectl(&args)
    }

    async fn running_pod(&self, namespace: &str, selector: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client().await, namespace);
        eventually(
            Duration::from_secs(120),
            &format!("a running, ready pod {selector} in {namespace}"),
            || {
                let pods = pods.clone();
                async move {
                    let list = pods
                        .list(&ListParams::default().labels(selector))
                        .await
                        .ok()?;
                    list.items.into_iter().find_map(|p| {
                        let status = p.status.as_ref()?;
                        let ready = status
                            .conditions
                            .as_ref()?
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        (ready && p.metadata.deletion_timestamp.is_none())
                            .then(|| p.metadata.name.clone())
                            .flatten()
                    })
                }
            },
        )
        .await
    }
}

fn oauth_client(name: &str, spec: Value) -> Value {
    let mut spec_obj = json!({"scopes": ["demo.read"], "audiences": ["demo"]});
    if let (Some(base), Some(extra)) = (spec_obj.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": spec_obj,
    })
}

/// A restricted busybox container running `script`.
fn busybox(name: &str, script: &str, uid: u32) -> Value {
    json!({
        "name": name,
        "image": install::image("busybox"),
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": uid, "runAsGroup": uid,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

fn deployment(name: &str, annotations: Value, container: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 1}
            }
        }
    })
}

async fn wait_client_ready(installed: &Installed, namespace: &str, name: &str) {
    let clients: Api<sigil_crds::OAuthClient> =
        Api::namespaced(installed.client().await, namespace);
    eventually(
        Duration::from_secs(60),
        &format!("OAuthClient {namespace}/{name} Ready"),
        || {
            let clients = clients.clone();
            async move {
                let client = clients.get_opt(name).await.ok().flatten()?;
                client
                    .status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == sigil_crds::CONDITION_READY && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;
}

/// An HTTP client for the issuer's Service as a client in the cluster sees
/// it: the chart's issuer URL, TLS verified against the chart's CA (the
/// Service's name resolved to its ClusterIP, which the host reaches through
/// kube-proxy).
async fn issuer_http(installed: &Installed) -> reqwest::Client {
    issuer_http_builder(installed)
        .await
        .build()
        .expect("HTTP client")
}

async fn issuer_http_builder(installed: &Installed) -> reqwest::ClientBuilder {
    let client = installed.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), install::SIGIL_NAMESPACE);
    let tls = secrets.get("sigil-issuer-tls").await.expect("TLS Secret");
    let ca = tls.data.expect("TLS data")["ca.crt"].0.clone();
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client, install::SIGIL_NAMESPACE);
    let service = services.get("sigil-issuer").await.expect("issuer Service");
    let cluster_ip: std::net::IpAddr = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP")
        .parse()
        .expect("ClusterIP address");
    let certs = reqwest::Certificate::from_pem_bundle(&ca).expect("CA bundle");
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .resolve(
            "sigil-issuer.sigil-system.svc",
            std::net::SocketAddr::new(cluster_ip, 443),
        )
        .timeout(Duration::from_secs(10))
}

/// The issuer's JWKS, fetched from the issuer's Service the way a resource
/// server in the cluster would.
async fn issuer_jwks(installed: &Installed) -> jsonwebtoken::jwk::JwkSet {
    issuer_http(installed)
        .await
        .get(format!("{}/.well-known/jwks.json", install::ISSUER_URL))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("fetching the JWKS through the issuer's Service")
        .json()
        .await
        .expect("JWKS JSON")
}

/// Verifies a token's signature and claims against the issuer's JWKS.
fn verify(jwks: &jsonwebtoken::jwk::JwkSet, token: &str, client_id: &str, audience: &str) {
    let header = jsonwebtoken::decode_header(token).expect("JWT header");
    let kid = header.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("the token's kid is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("JWK");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[install::ISSUER_URL]);
    validation.set_audience(&[audience]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("a valid token");
    assert_eq!(data.claims["client_id"], client_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_task_service_calls_the_calendar_service_with_its_sidecars_token() {
    let sigil = sigil().await;
    let ns = sigil.namespace("example").await;
    install::publish_ca(&sigil.cp, &ns)
        .await
        .expect("CA ConfigMap");
    let manifests = install::example_manifests(&ns, &sigil.cp.dir().join("example"))
        .expect("the example's manifests");
    install::kubectl_apply(&sigil.cp, &ns, &manifests).expect("applying the example");
    let log = install::wait_for_log(
        &sigil.cp,
        &ns,
        "app=task-service",
        "app",
        Duration::from_secs(180),
        |log| log.contains(" 200 "),
    )
    .await
    .expect("the Task Service got a 200");
    assert!(!log.contains(" 401 ") && !log.contains(" 403 "), "{log}");
    // The secretless Calendar Reader too, with no Secret anywhere.
    let log = install::wait_for_log(
        &sigil.cp,
        &ns,
        "app=calendar-reader",
        "app",
        Duration::from_secs(180),
        |log| log.contains(" 200 "),
    )
    .await
    .expect("the Calendar Reader got a 200");
    assert!(!log.contains(" 401 ") && !log.contains(" 403 "), "{log}");
    let reader = sigil.running_pod(&ns, "app=calendar-reader").await;
    assert_no_secret_volume(sigil, &ns, &reader).await;
    let secrets: Api<Secret> = Api::namespaced(sigil.client().await, &ns);
    assert!(
        secrets
            .get_opt("calendar-reader-oauth")
            .await
            .unwrap()
            .is_none()
    );
    // The Calendar and File services granted everything it asks for.
    let clients: Api<sigil_crds::OAuthClient> = Api::namespaced(sigil.client().await, &ns);
    let task = clients.get("task-service").await.expect("the OAuthClient");
    let grant = task.status.and_then(|s| s.grant).expect("a recorded grant");
    assert_eq!(grant.audiences, ["event", "file"]);
    assert_eq!(grant.scopes, ["event.view", "event.create", "file.view"]);
    assert!(grant.denied.is_empty(), "{grant:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_test_gets_a_token_in_a_pod() {
    let sigil = sigil().await;
    let out = install::helm_test(&sigil.cp).expect("helm test");
    assert!(out.contains("got a token for"), "{out}");
    // The test pod prints that it got a token, never the token.
    assert!(!out.contains("eyJ"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_root_app_reads_its_credentials_and_the_sidecar_keeps_the_token_fresh() {
    let sigil = sigil().await;
    let ns = sigil.namespace("fresh").await;
    sigil.apply(
        &ns,
        &[
            oauth_client("reader", json!({"tokenTTL": "1m"})),
            deployment(
                "reader",
                json!({"sigil.dev/client": "reader", "sigil.dev/token": "true"}),
                busybox(
                    "app",
                    "id -u; cat \"$SIGIL_CREDENTIALS_DIR/client_id\"; echo; sleep 100000",
                    4242,
                ),
            ),
        ],
    );
    wait_client_ready(sigil, &ns, "reader").await;
    let pod = sigil.running_pod(&ns, "app=reader").await;
    let client_id = format!("reader.{ns}");
    let log = install::pod_log(&sigil.cp, &ns, "app=reader", "app")
        .await
        .expect("app log");
    assert!(log.starts_with("4242\n"), "not running as uid 4242: {log}");
    assert!(log.contains(&client_id), "client_id not readable: {log}");

    // kubelet-style renewal at 80% of the 60 s lifetime: watch three
    // distinct tokens appear in the file, and verify each.
    let dir = "/var/run/secrets/sigil.dev/reader";
    watch_distinct_tokens(sigil, &ns, &pod, dir, &client_id, 3, 150).await;
}

/// Asserts that no volume of the pod is a Secret (nor projects one), and
/// returns its volumes.
async fn assert_no_secret_volume(sigil: &Installed, namespace: &str, pod: &str) -> Vec<Value> {
    let pods: Api<Pod> = Api::namespaced(sigil.client().await, namespace);
    let pod = pods.get(pod).await.expect("the pod");
    let spec = serde_json::to_value(pod.spec.expect("pod spec")).expect("JSON");
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for volume in &volumes {
        assert!(volume.get("secret").is_none(), "a Secret volume: {volume}");
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert!(
                source.get("secret").is_none(),
                "a projected Secret: {volume}"
            );
        }
    }
    volumes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secretless_deployment_gets_fresh_tokens_through_the_agent_with_no_secret_mounted() {
    let sigil = sigil().await;
    let ns = sigil.namespace("secretless").await;
    let mut worker = deployment(
        "worker",
        json!({"sigil.dev/client": "worker", "sigil.dev/token": "true"}),
        busybox(
            "app",
            "cat \"$SIGIL_CREDENTIALS_DIR/client_id\"; echo; ls \"$SIGIL_CREDENTIALS_DIR\"; sleep 100000",
            4242,
        ),
    );
    worker["spec"]["template"]["spec"]["serviceAccountName"] = json!("worker");
    sigil.apply(
        &ns,
        &[
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "worker"}}),
            oauth_client(
                "worker",
                json!({
                    "tokenTTL": "1m",
                    "authMethods": ["federated_jwt"],
                    "serviceAccounts": ["worker"],
                }),
            ),
            worker,
        ],
    );
    wait_client_ready(sigil, &ns, "worker").await;
    let pod = sigil.running_pod(&ns, "app=worker").await;
    let client_id = format!("worker.{ns}");

    // No Secret: not written, not mounted. The client's folder is the
    // agent's, from the ConfigMap and a projected ServiceAccount token with
    // the issuer URL as audience.
    let volumes = assert_no_secret_volume(sigil, &ns, &pod).await;
    let secrets: Api<Secret> = Api::namespaced(sigil.client().await, &ns);
    assert!(secrets.get_opt("worker-oauth").await.unwrap().is_none());
    let projected = volumes
        .iter()
        .find(|v| v["name"] == "sigil-worker-sa")
        .unwrap_or_else(|| panic!("no sigil-worker-sa volume: {volumes:?}"));
    let sources = projected["projected"]["sources"]
        .as_array()
        .expect("sources");
    assert_eq!(
        sources[0]["configMap"]["name"], "worker-oauth",
        "{projected}"
    );
    let token_source = &sources[1]["serviceAccountToken"];
    assert_eq!(token_source["audience"], install::ISSUER_URL, "{projected}");
    assert_eq!(token_source["expirationSeconds"], 600, "{projected}");
    let log = install::pod_log(&sigil.cp, &ns, "app=worker", "app")
        .await
        .expect("app log");
    assert!(log.starts_with(&format!("{client_id}\n")), "{log}");
    assert!(
        log.contains("service_account_token") && !log.contains("client_secret"),
        "{log}"
    );

    // Two distinct access tokens (renewed at 80% of the 60 s lifetime),
    // each obtained with the ServiceAccount token the agent re-reads for
    // every request, each valid.
    let dir = "/var/run/secrets/sigil.dev/worker";
    watch_distinct_tokens(sigil, &ns, &pod, dir, &client_id, 2, 120).await;
}

/// Reads the app container's `{dir}/token` every 2 s until `count`
/// distinct tokens appeared (within `within_s` seconds), verifying each
/// against the issuer's JWKS for `client_id` and audience `demo`.
async fn watch_distinct_tokens(
    sigil: &Installed,
    ns: &str,
    pod: &str,
    dir: &str,
    client_id: &str,
    count: usize,
    within_s: u64,
) {
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(within_s);
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "saw only {} distinct tokens in {within_s} s",
            seen.len()
        );
        let token = sigil.exec(ns, pod, "app", &["cat", &format!("{dir}/token")]);
        let token = token.trim().to_owned();
        if !token.is_empty() && !seen.contains(&token) {
            let jwks = issuer_jwks(sigil).await;
            verify(&jwks, &token, client_id, "demo");
            seen.insert(token);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_of_another_service_account_is_refused_for_a_secretless_client() {
    let sigil = sigil().await;
    let ns = sigil.namespace("intruder").await;
    sigil.apply(
        &ns,
        &[oauth_client(
            "worker",
            json!({"authMethods": ["federated_jwt"], "serviceAccounts": ["worker"]}),
        )],
    );
    // Ready first, so the refusal is about the ServiceAccount.
    wait_client_ready(sigil, &ns, "worker").await;
    sigil.apply(
        &ns,
        &[
            // Runs as the namespace's default ServiceAccount.
            deployment(
                "intruder",
                json!({"sigil.dev/client": "worker"}),
                busybox("app", "sleep 100000", 4242),
            ),
        ],
    );
    let message = refused_pod_creation(
        sigil,
        &ns,
        Duration::from_secs(90),
        "a FailedCreate event saying the ServiceAccount is wrong",
        |e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("ServiceAccount"))
        },
    )
    .await;
    assert!(
        message.contains(&format!("OAuthClient {ns}/worker"))
            && message.contains("runs as ServiceAccount \"default\"")
            && message.contains("ServiceAccount(s) worker"),
        "{message}"
    );
}

/// Waits up to `within` for a `FailedCreate` event in `ns` that `matches`
/// (the webhook refused a pod), asserts that no pod exists, and returns the
/// event's message.
async fn refused_pod_creation(
    sigil: &Installed,
    ns: &str,
    within: Duration,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> String {
    let events: Api<Event> = Api::namespaced(sigil.client().await, ns);
    let matches = &matches;
    let message = eventually(within, what, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                (e.reason.as_deref() == Some("FailedCreate") && matches(&e))
                    .then(|| e.message.unwrap_or_default())
            })
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(sigil.client().await, ns);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_the_token_sidecar_completes() {
    let sigil = sigil().await;
    let ns = sigil.namespace("job").await;
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"sigil.dev/client": "once", "sigil.dev/token": "true"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [busybox("work", "test -s \"$SIGIL_CREDENTIALS_DIR/token\" && echo done", 4242)]
                }
            }
        }
    });
    sigil.apply(&ns, &[oauth_client("once", json!({})), job]);
    let jobs: Api<Job> = Api::namespaced(sigil.client().await, &ns);
    eventually(Duration::from_secs(120), "the Job to complete", || {
        let jobs = jobs.clone();
        async move {
            let status = jobs.get("once").await.ok()?.status?;
            assert_eq!(status.failed.unwrap_or(0), 0, "the Job failed: {status:?}");
            (status.succeeded.unwrap_or(0) == 1).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_naming_a_missing_client_is_refused_and_its_replicaset_says_which() {
    let sigil = sigil().await;
    let ns = sigil.namespace("missing").await;
    sigil.apply(
        &ns,
        &[deployment(
            "lost",
            json!({"sigil.dev/client": "no-such-client"}),
            busybox("app", "sleep 100000", 4242),
        )],
    );
    let message = refused_pod_creation(
        sigil,
        &ns,
        Duration::from_secs(60),
        "a FailedCreate event on the ReplicaSet",
        |e| e.involved_object.kind.as_deref() == Some("ReplicaSet"),
    )
    .await;
    assert!(message.contains("no-such-client"), "{message}");
}

/// Every Sigil container, as the kernel sees it: not root, no capabilities,
/// no privilege escalation, a read-only root filesystem.
#[tokio::test(flavor = "multi_thread")]
async fn every_sigil_process_runs_restricted() {
    let sigil = sigil().await;
    // A token agent sidecar is a Sigil container too: start one.
    let ns = sigil.namespace("restricted").await;
    sigil.apply(
        &ns,
        &[
            oauth_client("agent", json!({})),
            deployment(
                "agent",
                json!({"sigil.dev/client": "agent", "sigil.dev/token": "true"}),
                busybox("app", "sleep 100000", 4242),
            ),
        ],
    );
    sigil.running_pod(&ns, "app=agent").await;
    let (mut checked, mut agents) = (0, 0);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let program =
            String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default())
                .into_owned();
        if program != "/usr/local/bin/issuer" && program != "/usr/local/bin/operator" {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert!(
            field("Uid").iter().all(|u| *u == "65532"),
            "{program} {pid}: {:?}",
            field("Uid")
        );
        assert!(
            field("Gid").iter().all(|g| *g == "65532"),
            "{program} {pid}: {:?}",
            field("Gid")
        );
        for caps in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                field(caps),
                vec!["0000000000000000"],
                "{program} {pid} {caps}"
            );
        }
        assert_eq!(field("NoNewPrivs"), vec!["1"], "{program} {pid}");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/"))
            .expect("a root mount");
        let options = root.split(' ').nth(5).unwrap_or_default();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{program} {pid}: root mounted {options}"
        );
        checked += 1;
        if cmdline.split(|b| *b == 0).nth(1) == Some(b"agent") {
            agents += 1;
        }
    }
    // Two operators, two issuers and the agent at least.
    assert!(checked >= 5, "found only {checked} Sigil processes");
    assert!(agents >= 1, "no token agent process among them");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_operator_takes_over_when_the_leader_is_killed() {
    let sigil = sigil().await;
    let client = sigil.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), install::SIGIL_NAMESPACE);
    let leader = eventually(Duration::from_secs(60), "an operator leader", || {
        let leases = leases.clone();
        async move {
            leases
                .get_opt("sigil-operator")
                .await
                .ok()
                .flatten()?
                .spec?
                .holder_identity
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client, install::SIGIL_NAMESPACE);
    let operators = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .unwrap();
    let leading = operators
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .find(|name| leader.contains(name.as_str()))
        .unwrap_or_else(|| panic!("no operator pod named in the Lease holder {leader}"));
    pods.delete(&leading, &DeleteParams::default().grace_period(0))
        .await
        .expect("killing the leading operator");
    let killed_at = Instant::now();

    // A new client gets its Secret from the standby.
    let ns = sigil.namespace("handover").await;
    sigil.apply(&ns, &[oauth_client("after", json!({}))]);
    wait_client_ready(sigil, &ns, "after").await;
    let taken_over = killed_at.elapsed();
    let holder = leases
        .get("sigil-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert_ne!(holder, leader, "the Lease still names the killed leader");
    eprintln!("standby took over and reconciled in {taken_over:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_client_secret_reaches_the_running_pod_with_no_failed_call() {
    let sigil = sigil().await;
    let ns = sigil.namespace("rotate").await;
    sigil.apply(
        &ns,
        &[
            oauth_client(
                "rotating",
                json!({"tokenTTL": "1m", "secretRotation": {"interval": "30s", "gracePeriod": "20s"}}),
            ),
            deployment(
                "rotating",
                json!({"sigil.dev/client": "rotating", "sigil.dev/token": "true"}),
                busybox("app", "sleep 100000", 4242),
            ),
        ],
    );
    wait_client_ready(sigil, &ns, "rotating").await;
    let pod = sigil.running_pod(&ns, "app=rotating").await;
    let client_id = format!("rotating.{ns}");
    let dir = "/var/run/secrets/sigil.dev/rotating";
    let read = |file: &str| {
        sigil
            .exec(&ns, &pod, "app", &["cat", &format!("{dir}/{file}")])
            .trim()
            .to_owned()
    };
    // Until the pod has seen two rotations and holds a token fetched after
    // the first: every secret and token the app sees, each token verified.
    let mut secrets: Vec<String> = Vec::new();
    let mut tokens: Vec<String> = Vec::new();
    let mut token_after_rotation = false;
    let deadline = Instant::now() + Duration::from_secs(150);
    while secrets.len() < 3 || !token_after_rotation {
        assert!(
            Instant::now() < deadline,
            "in 150 s the pod saw {} client secrets and {} tokens (token after a rotation: {token_after_rotation})",
            secrets.len(),
            tokens.len()
        );
        let secret = read("client_secret");
        if secrets.last() != Some(&secret) {
            secrets.push(secret);
        }
        let token = read("token");
        if !tokens.contains(&token) {
            verify(&issuer_jwks(sigil).await, &token, &client_id, "demo");
            tokens.push(token);
            token_after_rotation |= secrets.len() >= 2;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let agent_log = sigil.kubectl(&["logs", "-n", &ns, &pod, "-c", "sigil-token-agent"]);
    for bad in ["WARN", "ERROR"] {
        assert!(
            !agent_log.contains(bad),
            "the agent failed a call:\n{agent_log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_serving_issuer_pod_loses_no_token_request() {
    let sigil = sigil().await;
    let ns = sigil.namespace("failover").await;
    sigil.apply(&ns, &[oauth_client("load", json!({}))]);
    wait_client_ready(sigil, &ns, "load").await;
    let client = sigil.client().await;
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("load-oauth")
        .await
        .expect("client Secret");
    let data = secret.data.expect("Secret data");
    let text = |key: &str| String::from_utf8_lossy(&data[key].0).into_owned();
    let (client_id, client_secret, token_url) =
        (text("client_id"), text("client_secret"), text("token_url"));
    // A new connection per request, so kube-proxy spreads them over both
    // issuers, the terminating one included.
    let http = issuer_http_builder(sigil)
        .await
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client");

    let pods: Api<Pod> = Api::namespaced(client, install::SIGIL_NAMESPACE);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (http, id, secret, url, stop) = (
            http.clone(),
            client_id.clone(),
            client_secret.clone(),
            token_url.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let result = http
                    .post(&url)
                    .basic_auth(&id, Some(&secret))
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => failed.push(format!("HTTP {}", r.status())),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=issuer"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .expect("an issuer pod");
    pods.delete(&victim, &DeleteParams::default())
        .await
        .expect("deleting an issuer pod");
    let deleted_at = Instant::now();
    // Load goes on until the pod is gone (its process exited) and a little
    // after; the issuer exits on SIGTERM after its 5 s drain delay, well
    // inside the 30 s grace period.
    eventually(
        Duration::from_secs(60),
        "the deleted issuer pod to be gone",
        || {
            let pods = pods.clone();
            let victim = victim.clone();
            async move { pods.get_opt(&victim).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
    let gone_after = deleted_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for worker in workers {
        let (o, f) = worker.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        gone_after < Duration::from_secs(20),
        "the issuer took {gone_after:?} to stop: is SIGTERM handled?"
    );
    eprintln!(
        "{ok} tokens while {victim} was deleted (gone after {gone_after:?}); failed: {failed:?}"
    );
    assert!(ok > 100, "only {ok} tokens");
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    // Leave two issuers for the other tests.
    let issuers: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(sigil.client().await, install::SIGIL_NAMESPACE);
    eventually(
        Duration::from_secs(120),
        "two available issuers again",
        || {
            let issuers = issuers.clone();
            async move {
                let status = issuers.get("sigil-issuer").await.ok()?.status?;
                (status.available_replicas == Some(2) && status.replicas == Some(2)).then_some(())
            }
        },
    )
    .await;
}
