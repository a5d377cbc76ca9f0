//! The operator against the local control plane (issue 3): OAuthClient →
//! Secret (create, keep, repair, duplicates, rotation, deletion),
//! SigningKey rotation with real timings, forced rotation, SIGKILL at random
//! moments during rotation, and leader election between two replicas.
//!
//! Every test runs its own operator process(es) scoped to its own
//! namespace(s), so the tests of this binary share one control plane.
//!
//! The benchmark is `bench_oauth_clients_at_once` (ignored by default):
//! `SIGIL_BENCH_CLIENTS` OAuthClients (default 1,000) applied at once, with a
//! cluster-mode issuer beside the operator, measuring the time until all are
//! Ready with Secrets, how soon after Ready the issuer grants each a token,
//! and both processes' memory and CPU:
//! `cargo test -p sigil-tests --test operator -- --ignored --nocapture bench`
//! (set `SIGIL_OPERATOR_BIN=target/release/operator` and
//! `SIGIL_ISSUER_BIN=target/release/issuer` to measure release builds).

mod issuer_support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use serde_json::{Value, json};
use sigil_crds::{KeyState, OAuthClient, SigningKey, secret_verifier};
use sigil_tests::cluster::TestCluster;
use sigil_tests::{create_foreign_secret, eventually};
use tokio::process::{Child, Command};

const ISSUER_URL: &str = "https://sigil.test/auth";

/// An operator child process, SIGKILLed when dropped.
struct Operator {
    child: Child,
    health_port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl Operator {
    /// Starts the operator for SigningKeys (and its Lease) in `namespace`
    /// and OAuthClients in `watch`.
    fn start(cluster: &TestCluster, namespace: &str, watch: &[&str], identity: &str) -> Operator {
        Operator::start_with(cluster, namespace, watch, identity, ISSUER_URL, &[])
    }

    /// [`Operator::start`] with another issuer URL and more flags.
    fn start_with(
        cluster: &TestCluster,
        namespace: &str,
        watch: &[&str],
        identity: &str,
        issuer_url: &str,
        flags: &[&str],
    ) -> Operator {
        let cluster_kubeconfig = cluster.kubeconfig().to_owned();
        let health_port = free_port();
        let log = std::env::temp_dir().join(format!("sigil-operator-{namespace}-{identity}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("operator log file");
        // SIGIL_OPERATOR_BIN picks another build (e.g. target/release/operator
        // for the benchmark).
        let binary = std::env::var_os("SIGIL_OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| sigil_tests::binary("operator"));
        let child = Command::new(binary)
            .args(["--issuer-url", issuer_url, "--namespace", namespace])
            .args(["--watch-namespaces", &watch.join(",")])
            .args(["--health-listen", &format!("127.0.0.1:{health_port}")])
            .args(["--lease-identity", identity, "--lease-duration", "6"])
            .args(flags)
            .env("KUBECONFIG", cluster_kubeconfig)
            .env("RUST_LOG", "info,kube_lease_manager=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("starting the operator");
        Operator {
            child,
            health_port,
            log,
        }
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The text of /metrics, if the operator serves it.
    async fn metrics(&self) -> Option<String> {
        http_get(self.health_port, "/metrics").await
    }

    /// CPU seconds (user + system) used so far.
    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id()?)
    }

    /// Peak resident memory in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.child.id()?)
    }
}

/// CPU seconds (user + system) process `pid` used so far, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Peak resident memory (VmHWM) of process `pid` in KiB, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A bare HTTP/1.0 GET on loopback (no client library needed).
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}

async fn apply_client(client: &kube::Client, namespace: &str, name: &str, spec: Value) {
    let api: Api<OAuthClient> = Api::namespaced(client.clone(), namespace);
    let manifest = json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": { "name": name },
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply("sigil-test").force(),
        &Patch::Apply(&manifest),
    )
    .await
    .unwrap_or_else(|e| panic!("applying OAuthClient {namespace}/{name}: {e}"));
}

fn ready_reason(oac: &OAuthClient) -> Option<(String, String)> {
    let condition = oac
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((condition.status.clone(), condition.reason.clone()))
}

/// Waits until the client is Ready=True for its current generation and
/// its Secret's secret matches the first verifier; returns both.
async fn wait_ready(client: &kube::Client, namespace: &str, name: &str) -> (OAuthClient, Secret) {
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    eventually(
        Duration::from_secs(30),
        &format!("OAuthClient {namespace}/{name} Ready with its Secret"),
        || {
            let clients = clients.clone();
            let secrets = secrets.clone();
            async move {
                let oac = clients.get_opt(name).await.ok()??;
                let status = oac.status.as_ref()?;
                let (ready, _) = ready_reason(&oac)?;
                if ready != "True" || status.observed_generation != oac.metadata.generation {
                    return None;
                }
                let secret = secrets.get_opt(&oac.secret_name()).await.ok()??;
                let value = data(&secret, "client_secret")?;
                (status.secret_verifiers.first()?.sha256 == secret_verifier(&value))
                    .then_some((oac, secret))
            }
        },
    )
    .await
}

fn data(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

async fn events_for(client: &kube::Client, namespace: &str, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_client_secret_is_created_and_kept() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-keep").await;
    let mut operator = Operator::start(cluster, &ns, &[&ns], "keep-a");

    apply_client(
        &client,
        &ns,
        "task-service",
        json!({
            "displayName": "Task Service",
            "scopes": ["event.view", "event.create", "file.view"],
            "audiences": ["event", "file"],
        }),
    )
    .await;
    let (oac, secret) = wait_ready(&client, &ns, "task-service").await;
    let status = oac.status.clone().expect("status");
    assert_eq!(
        status.client_id.as_deref(),
        Some(format!("task-service.{ns}").as_str())
    );
    assert_eq!(status.secret_name.as_deref(), Some("task-service-oauth"));
    assert_eq!(status.secret_verifiers.len(), 1);

    // Every key of DESIGN.md §3, Opaque, owned, labelled.
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        secret
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("sigil")
    );
    let owner = &secret.owner_references()[0];
    assert_eq!(owner.kind, "OAuthClient");
    assert_eq!(Some(owner.uid.as_str()), oac.metadata.uid.as_deref());
    assert_eq!(owner.controller, Some(true));
    let client_secret = data(&secret, "client_secret").expect("client_secret");
    assert_eq!(client_secret.len(), 43);
    assert!(
        client_secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(
        data(&secret, "client_id"),
        Some(format!("task-service.{ns}"))
    );
    assert_eq!(
        data(&secret, "token_url").as_deref(),
        Some("https://sigil.test/auth/oauth2/token")
    );
    assert_eq!(data(&secret, "issuer").as_deref(), Some(ISSUER_URL));
    assert_eq!(
        data(&secret, "scope").as_deref(),
        Some("event.view event.create file.view")
    );
    assert_eq!(data(&secret, "audience").as_deref(), Some("event file"));
    let credentials: Value =
        serde_json::from_str(&data(&secret, "credentials.json").expect("credentials.json"))
            .expect("json");
    assert_eq!(credentials["client_secret"], client_secret.as_str());
    assert_eq!(credentials["client_id"], format!("task-service.{ns}"));
    assert_eq!(
        credentials["token_url"],
        "https://sigil.test/auth/oauth2/token"
    );
    let events = events_for(&client, &ns, "task-service").await;
    assert!(
        events.iter().any(|(reason, _)| reason == "Created"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|(_, note)| !note.contains(&client_secret)),
        "events never show the secret"
    );

    // Re-applying the same manifest keeps the secret.
    apply_client(
        &client,
        &ns,
        "task-service",
        json!({
            "displayName": "Task Service",
            "scopes": ["event.view", "event.create", "file.view"],
            "audiences": ["event", "file"],
        }),
    )
    .await;
    // Changing scopes keeps it too, and updates the scope key.
    apply_client(
        &client,
        &ns,
        "task-service",
        json!({
            "displayName": "Task Service",
            "scopes": ["event.view"],
            "audiences": ["event", "file"],
        }),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let updated = eventually(
        Duration::from_secs(20),
        "the scope key to follow the spec",
        || {
            let secrets = secrets.clone();
            async move {
                let s = secrets.get("task-service-oauth").await.ok()?;
                (data(&s, "scope").as_deref() == Some("event.view")).then_some(s)
            }
        },
    )
    .await;
    assert_eq!(
        data(&updated, "client_secret").as_deref(),
        Some(client_secret.as_str())
    );

    // A restart keeps it.
    operator.kill().await;
    let operator = Operator::start(cluster, &ns, &[&ns], "keep-b");
    // The new process leads once the killed one's Lease lapses, then
    // reconciles the existing client.
    eventually(
        Duration::from_secs(30),
        "the restarted operator to reconcile",
        || async {
            operator.metrics().await.filter(|m| {
                m.contains("sigil_operator_leader 1")
                    && m.contains(
                        "sigil_operator_reconciles_total{kind=\"OAuthClient\",result=\"success\"}",
                    )
            })
        },
    )
    .await;
    let (oac, secret) = wait_ready(&client, &ns, "task-service").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (oac_after, secret_after) = wait_ready(&client, &ns, "task-service").await;
    assert_eq!(data(&secret, "client_secret"), Some(client_secret.clone()));
    assert_eq!(
        data(&secret_after, "client_secret"),
        Some(client_secret.clone())
    );
    assert_eq!(
        oac.status.map(|s| s.secret_verifiers),
        oac_after.status.map(|s| s.secret_verifiers)
    );
    // The operator made the issuer's TLS Secret by now, but its certificate
    // is for the Service's names, not for sigil.test: no CA bundle.
    assert_eq!(data(&secret_after, "ca.crt"), None);

    // Metrics after the restart's reconciles.
    let metrics = eventually(Duration::from_secs(10), "/metrics", || operator.metrics()).await;
    assert!(
        metrics
            .contains("sigil_operator_reconciles_total{kind=\"OAuthClient\",result=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sigil_operator_oauth_clients{ready=\"true\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sigil_operator_leader 1"), "{metrics}");
    assert_eq!(
        http_get(operator.health_port, "/healthz").await.as_deref(),
        Some("ok")
    );
    assert_eq!(
        http_get(operator.health_port, "/readyz").await.as_deref(),
        Some("ok")
    );
    assert!(
        !std::fs::read_to_string(&operator.log)
            .unwrap_or_default()
            .contains(&client_secret),
        "logs never show the secret"
    );
}

/// The issuer's TLS Secret (the operator's default `--tls-secret`).
const TLS_SECRET: &str = "sigil-issuer-tls";

fn pem_blocks(bundle: &str) -> usize {
    bundle.matches("-----BEGIN CERTIFICATE-----").count()
}

/// One `ca.crt` value of the issuer's TLS Secret: when the test first saw
/// it there, and when in the client Secret.
#[derive(Debug)]
struct BundleSeen {
    bundle: String,
    in_tls_secret: Duration,
    in_client_secret: Option<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secrets_carry_the_issuer_ca_bundle_through_a_ca_rotation() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-ca").await;
    // The in-cluster issuer URL: its host is a name of the serving
    // certificate the operator makes. A 30 s CA (+3 s backdating) starts
    // rotating ~19 s after it is made, its steps 5 s apart.
    let issuer_url = format!("https://sigil-issuer.{ns}.svc");
    let _operator = Operator::start_with(
        cluster,
        &ns,
        &[&ns],
        "ca",
        &issuer_url,
        &[
            "--webhook-config=",
            "--tls-ca-validity=30s",
            "--tls-overlap=5s",
            "--tls-cert-validity=1h",
        ],
    );
    apply_client(
        &client,
        &ns,
        "reader",
        json!({ "scopes": ["event.view"], "audiences": ["event"] }),
    )
    .await;
    let (_, secret) = wait_ready(&client, &ns, "reader").await;
    let client_secret = data(&secret, "client_secret").expect("client_secret");

    // Every bundle the TLS Secret holds reaches the client Secret, until a
    // rotation is through: old CA, old + new (phase 1), new alone (phase 3).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let mut seen: Vec<BundleSeen> = Vec::new();
    let mut in_client: BTreeSet<String> = BTreeSet::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no complete CA rotation reached the client Secret: {seen:#?}"
        );
        let now = started.elapsed();
        if let Some(bundle) = secrets
            .get_opt(TLS_SECRET)
            .await
            .ok()
            .flatten()
            .and_then(|s| data(&s, "ca.crt"))
            && seen.last().is_none_or(|last| last.bundle != bundle)
        {
            seen.push(BundleSeen {
                bundle,
                in_tls_secret: now,
                in_client_secret: None,
            });
        }
        let theirs = secrets.get("reader-oauth").await.expect("client Secret");
        assert_eq!(
            data(&theirs, "client_secret").as_deref(),
            Some(client_secret.as_str()),
            "a new bundle leaves the credentials alone"
        );
        if let Some(bundle) = data(&theirs, "ca.crt") {
            if let Some(entry) = seen
                .iter_mut()
                .find(|e| e.bundle == bundle && e.in_client_secret.is_none())
            {
                entry.in_client_secret = Some(started.elapsed());
            }
            in_client.insert(bundle);
        }
        let done = seen.len() >= 3
            && seen
                .first()
                .is_some_and(|first| pem_blocks(&first.bundle) == 1)
            && seen.last().is_some_and(|last| {
                pem_blocks(&last.bundle) == 1 && last.in_client_secret.is_some()
            });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary: Vec<String> = seen
        .iter()
        .map(|e| {
            format!(
                "{} CA(s) at {:.1?}, in the client Secret {:?} later",
                pem_blocks(&e.bundle),
                e.in_tls_secret,
                e.in_client_secret
                    .map(|at| at.saturating_sub(e.in_tls_secret))
            )
        })
        .collect();
    eprintln!("CA bundles of the TLS Secret: {summary:#?}");
    assert!(
        seen.iter().any(|e| pem_blocks(&e.bundle) == 2),
        "the next CA was trusted next to the old one first: {seen:#?}"
    );
    for entry in &seen[1..] {
        let lag = entry
            .in_client_secret
            .map(|at| at.saturating_sub(entry.in_tls_secret));
        assert!(
            lag.is_some_and(|lag| lag < Duration::from_secs(3)),
            "the client Secret followed a bundle after {lag:?}: {seen:#?}"
        );
    }
    // Only bundles the TLS Secret held, byte for byte.
    for bundle in &in_client {
        assert!(
            seen.iter().any(|e| e.bundle == *bundle),
            "a bundle the TLS Secret never held: {bundle}"
        );
    }
    // A CA bundle update is no edit of the Secret.
    let events = events_for(&client, &ns, "reader").await;
    assert!(
        events
            .iter()
            .all(|(reason, _)| reason != "SecretRestored" && reason != "Updated"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secrets_follow_a_supplied_tls_secret() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-ca-byo").await;
    // TLS supplied (e.g. by cert-manager): the operator only reads it. The
    // certificates below are for localhost.
    let _operator = Operator::start_with(
        cluster,
        &ns,
        &[&ns],
        "ca-byo",
        "https://localhost:8443",
        &["--manage-webhook-tls=false", "--webhook-config="],
    );
    apply_client(
        &client,
        &ns,
        "reader",
        json!({ "scopes": ["event.view"], "audiences": ["event"] }),
    )
    .await;
    let (_, secret) = wait_ready(&client, &ns, "reader").await;
    assert_eq!(
        data(&secret, "ca.crt"),
        None,
        "no TLS Secret yet: no bundle, and the client is Ready all the same"
    );
    let client_secret = data(&secret, "client_secret");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let follows = |want: Option<String>, what: &'static str| {
        let secrets = secrets.clone();
        let client_secret = client_secret.clone();
        async move {
            let asked = Instant::now();
            eventually(Duration::from_secs(10), what, || {
                let secrets = secrets.clone();
                let want = want.clone();
                async move {
                    let s = secrets.get("reader-oauth").await.ok()?;
                    (data(&s, "ca.crt") == want).then_some(s)
                }
            })
            .await;
            let took = asked.elapsed();
            let s = secrets.get("reader-oauth").await.expect("client Secret");
            assert_eq!(data(&s, "client_secret"), client_secret);
            assert!(took < Duration::from_secs(3), "{what} after {took:?}");
            took
        }
    };

    let first = sigil_tests::pki::Pki::new().expect("CA");
    let next = sigil_tests::pki::Pki::new().expect("CA");
    let serving = first.serving_cert("sigil-issuer").expect("certificate");
    let tls_secret = |bundle: &str| -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": TLS_SECRET },
            "type": "kubernetes.io/tls",
            "stringData": {
                "tls.crt": serving.cert_pem,
                "tls.key": serving.key_pem,
                "ca.crt": bundle,
            },
        }))
        .expect("Secret")
    };
    secrets
        .create(&PostParams::default(), &tls_secret(&first.ca_pem))
        .await
        .expect("creating the TLS Secret");
    let created = follows(Some(first.ca_pem.clone()), "ca.crt published").await;

    // A rotation's first step: the next CA trusted next to the current one.
    let both = format!("{}{}", first.ca_pem, next.ca_pem);
    secrets
        .replace(TLS_SECRET, &PostParams::default(), &{
            let mut s = tls_secret(&both);
            s.metadata.resource_version = secrets
                .get(TLS_SECRET)
                .await
                .expect("TLS Secret")
                .metadata
                .resource_version;
            s
        })
        .await
        .expect("updating the TLS Secret");
    let rotated = follows(Some(both), "the next CA published").await;

    secrets
        .delete(TLS_SECRET, &DeleteParams::default())
        .await
        .expect("deleting the TLS Secret");
    let removed = follows(None, "ca.crt removed").await;
    eprintln!(
        "client Secret followed the supplied TLS Secret: created {created:?}, rotated {rotated:?}, deleted {removed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_id_gets_no_secret_until_the_first_is_gone() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let first_ns = cluster.namespace("op-dup-a").await;
    let later_ns = cluster.namespace("op-dup-b").await;
    let _operator = Operator::start(cluster, &first_ns, &[&first_ns, &later_ns], "dup");
    // An id outside `*.<namespace>` needs its namespace's leave; both have
    // it here, so only the duplicate rule decides.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in [&first_ns, &later_ns] {
        namespaces
            .patch(
                ns,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    json!({"metadata": {"annotations": {"sigil.dev/client-ids": "shared-id"}}}),
                ),
            )
            .await
            .expect("allowing the client id");
    }

    apply_client(
        &client,
        &first_ns,
        "svc",
        json!({ "clientId": "shared-id", "scopes": ["a"] }),
    )
    .await;
    wait_ready(&client, &first_ns, "svc").await;
    // Creation timestamps have second precision: make "later" unambiguous.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply_client(
        &client,
        &later_ns,
        "svc",
        json!({ "clientId": "shared-id", "scopes": ["a"] }),
    )
    .await;

    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &later_ns);
    let later = eventually(
        Duration::from_secs(20),
        "the later client to be refused",
        || {
            let clients = clients.clone();
            async move {
                let oac = clients.get("svc").await.ok()?;
                (ready_reason(&oac)? == ("False".into(), "DuplicateClientId".into())).then_some(oac)
            }
        },
    )
    .await;
    let condition = later.status.as_ref().expect("status").conditions[0].clone();
    assert!(
        condition.message.contains(&format!("{first_ns}/svc")),
        "{}",
        condition.message
    );
    assert!(
        later
            .status
            .as_ref()
            .expect("status")
            .secret_verifiers
            .is_empty()
    );
    let later_secrets: Api<Secret> = Api::namespaced(client.clone(), &later_ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        later_secrets
            .get_opt("svc-oauth")
            .await
            .expect("get")
            .is_none(),
        "no credentials for the duplicate"
    );
    let events = events_for(&client, &later_ns, "svc").await;
    assert!(
        events
            .iter()
            .any(|(reason, _)| reason == "DuplicateClientId"),
        "{events:?}"
    );
    // `kubectl get oac -o wide` says what is wrong.
    let out = cluster.kubectl(&["get", "oac", "-n", &later_ns, "-o", "wide"]);
    assert!(out.stdout.contains("DuplicateClientId"), "{}", out.stdout);

    // Once the first one is deleted, the later one gets the id.
    let first_api: Api<OAuthClient> = Api::namespaced(client.clone(), &first_ns);
    first_api
        .delete("svc", &DeleteParams::default())
        .await
        .expect("delete first");
    let (oac, _) = wait_ready(&client, &later_ns, "svc").await;
    assert_eq!(
        oac.status.and_then(|s| s.client_id).as_deref(),
        Some("shared-id")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_and_deleted_secrets_are_repaired() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-repair").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "repair");
    apply_client(
        &client,
        &ns,
        "svc",
        json!({ "scopes": ["a"], "audiences": ["x"] }),
    )
    .await;
    let (_, secret) = wait_ready(&client, &ns, "svc").await;
    let original = data(&secret, "client_secret").expect("secret");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // An edit of another key is put back, with the same secret.
    let edit = json!({ "data": { "token_url": base64_encode("https://evil.example/token") } });
    secrets
        .patch("svc-oauth", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit");
    let restored = eventually(Duration::from_secs(15), "token_url to be restored", || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get("svc-oauth").await.ok()?;
            (data(&s, "token_url").as_deref() == Some("https://sigil.test/auth/oauth2/token"))
                .then_some(s)
        }
    })
    .await;
    assert_eq!(
        data(&restored, "client_secret"),
        Some(original.clone()),
        "same secret when the verifier still matches"
    );

    // An edited client_secret is replaced by a new generated one.
    let edit = json!({ "data": { "client_secret": base64_encode("hunter2") } });
    secrets
        .patch("svc-oauth", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit");
    let (_, replaced) = eventually(
        Duration::from_secs(15),
        "a new client secret after the edit",
        || {
            let client = client.clone();
            let ns = ns.clone();
            let original = original.clone();
            async move {
                let (oac, s) = wait_ready(&client, &ns, "svc").await;
                let value = data(&s, "client_secret")?;
                (value != original && value != "hunter2").then_some((oac, s))
            }
        },
    )
    .await;
    let second = data(&replaced, "client_secret").expect("secret");

    // A deleted Secret comes back, with a new secret.
    secrets
        .delete("svc-oauth", &DeleteParams::default())
        .await
        .expect("delete");
    let back = eventually(Duration::from_secs(15), "the Secret to come back", || {
        let client = client.clone();
        let ns = ns.clone();
        let second = second.clone();
        async move {
            let (_, s) = wait_ready(&client, &ns, "svc").await;
            (data(&s, "client_secret")? != second).then_some(s)
        }
    })
    .await;
    assert_eq!(data(&back, "scope").as_deref(), Some("a"));
    // Events are recorded after the facts: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = events_for(&client, &ns, "svc").await;
        let reasons: BTreeSet<&str> = events.iter().map(|(reason, _)| reason.as_str()).collect();
        if ["SecretRestored", "SecretReplaced", "SecretRecreated"]
            .iter()
            .all(|r| reasons.contains(r))
        {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "an event for each repair: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        events.iter().any(|(_, note)| note.contains("was deleted")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(_, note)| note.contains("client secret unchanged")),
        "{events:?}"
    );
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_secret_moves_and_disabled_and_foreign_secrets_are_reported() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-misc").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "misc");
    apply_client(&client, &ns, "svc", json!({ "scopes": ["a"] })).await;
    let (_, secret) = wait_ready(&client, &ns, "svc").await;
    let value = data(&secret, "client_secret").expect("secret");

    // spec.secretName changes: the secret moves, the old Secret goes.
    apply_client(
        &client,
        &ns,
        "svc",
        json!({ "scopes": ["a"], "secretName": "svc-moved" }),
    )
    .await;
    let (_, moved) = wait_ready(&client, &ns, "svc").await;
    assert_eq!(moved.name_any(), "svc-moved");
    assert_eq!(
        data(&moved, "client_secret"),
        Some(value.clone()),
        "same secret"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(10), "the old Secret to go", || async {
        secrets
            .get_opt("svc-oauth")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // spec.disabled: Ready=False/Disabled, credentials kept.
    apply_client(
        &client,
        &ns,
        "svc",
        json!({ "scopes": ["a"], "secretName": "svc-moved", "disabled": true }),
    )
    .await;
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(10), "Ready=False/Disabled", || async {
        let oac = clients.get("svc").await.ok()?;
        (ready_reason(&oac)? == ("False".into(), "Disabled".into())).then_some(())
    })
    .await;
    let kept = secrets.get("svc-moved").await.expect("kept");
    assert_eq!(data(&kept, "client_secret"), Some(value));

    // A Secret that is not Sigil's is never overwritten.
    create_foreign_secret(&secrets, "taken", &[]).await;
    apply_client(
        &client,
        &ns,
        "other",
        json!({ "scopes": ["a"], "secretName": "taken" }),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "Ready=False/SecretConflict",
        || async {
            let oac = clients.get("other").await.ok()?;
            (ready_reason(&oac)? == ("False".into(), "SecretConflict".into())).then_some(())
        },
    )
    .await;
    let untouched = secrets.get("taken").await.expect("taken");
    assert_eq!(data(&untouched, "client_secret").as_deref(), Some("mine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_client_removes_its_secret() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-gc").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "gc");
    apply_client(
        &client,
        &ns,
        "svc",
        json!({ "scopes": ["a"], "secretName": "svc-creds" }),
    )
    .await;
    wait_ready(&client, &ns, "svc").await;
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &ns);
    clients
        .delete("svc", &DeleteParams::default())
        .await
        .expect("delete");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(30),
        "garbage collection of the Secret",
        || {
            let secrets = secrets.clone();
            async move {
                secrets
                    .get_opt("svc-creds")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_client_gets_a_secret_of_its_own() {
    // The old client's Secret is owned by the old uid: the new client of
    // the same name never takes it over (ownership is the uid, not the name
    // or the label); once garbage collection removes it, the new client
    // gets a Secret and a secret of its own.
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-recreate").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "recreate");
    apply_client(&client, &ns, "svc", json!({ "scopes": ["a"] })).await;
    let (first, secret) = wait_ready(&client, &ns, "svc").await;
    let old_value = data(&secret, "client_secret").expect("secret");
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &ns);
    clients
        .delete("svc", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(Duration::from_secs(10), "the client to go", || async {
        clients.get_opt("svc").await.ok()?.is_none().then_some(())
    })
    .await;
    apply_client(&client, &ns, "svc", json!({ "scopes": ["a"] })).await;
    let (second, secret) = wait_ready(&client, &ns, "svc").await;
    assert_ne!(second.metadata.uid, first.metadata.uid);
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(Some(&owners[0].uid), second.metadata.uid.as_ref());
    assert_ne!(
        data(&secret, "client_secret"),
        Some(old_value),
        "the old client's secret was carried over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_rotates_with_a_grace_period() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-rotate").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "rotate");
    apply_client(
        &client,
        &ns,
        "svc",
        json!({
            "scopes": ["a"],
            "secretRotation": { "interval": "12s", "gracePeriod": "5s" },
        }),
    )
    .await;
    let (oac, secret) = wait_ready(&client, &ns, "svc").await;
    let first = data(&secret, "client_secret").expect("secret");
    let rotated_at = oac
        .status
        .as_ref()
        .and_then(|s| s.secret_rotated_at.clone())
        .expect("rotated at")
        .0;

    let (oac, secret) = eventually(Duration::from_secs(30), "a rotation", || {
        let client = client.clone();
        let ns = ns.clone();
        let first = first.clone();
        async move {
            let (oac, s) = wait_ready(&client, &ns, "svc").await;
            (data(&s, "client_secret")? != first).then_some((oac, s))
        }
    })
    .await;
    let status = oac.status.expect("status");
    let new_rotated_at = status.secret_rotated_at.expect("rotated at").0;
    let elapsed = new_rotated_at.duration_since(rotated_at).as_secs_f64();
    // interval + at most 5% jitter + reconcile latency.
    assert!(
        (11.0..=16.0).contains(&elapsed),
        "rotated {elapsed}s after the previous one"
    );
    assert_eq!(
        status.secret_verifiers.len(),
        2,
        "the previous secret works during the grace period"
    );
    assert_eq!(
        status.secret_verifiers[0].sha256,
        secret_verifier(&data(&secret, "client_secret").expect("s"))
    );
    assert_eq!(status.secret_verifiers[1].sha256, secret_verifier(&first));
    let expires = status.secret_verifiers[1]
        .expires_at
        .clone()
        .expect("expiry")
        .0;
    let grace = expires.duration_since(new_rotated_at).as_secs_f64();
    assert!((4.0..=6.5).contains(&grace), "grace {grace}s");

    // After the grace period only the new verifier is left.
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(12),
        "the previous verifier to be dropped",
        || {
            let clients = clients.clone();
            async move {
                let oac = clients.get("svc").await.ok()?;
                (oac.status?.secret_verifiers.len() == 1).then_some(())
            }
        },
    )
    .await;
    let events = events_for(&client, &ns, "svc").await;
    assert!(
        events.iter().any(|(reason, _)| reason == "Rotated"),
        "{events:?}"
    );
}

async fn apply_signing_key(client: &kube::Client, namespace: &str, name: &str, spec: Value) {
    let api: Api<SigningKey> = Api::namespaced(client.clone(), namespace);
    let manifest = json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "SigningKey",
        "metadata": { "name": name },
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply("sigil-test").force(),
        &Patch::Apply(&manifest),
    )
    .await
    .unwrap_or_else(|e| panic!("applying SigningKey {namespace}/{name}: {e}"));
}

fn secs(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Checks that every kid the status names (before and after reading the
/// Secret) is in the Secret and is the thumbprint of the key stored there.
async fn check_keys_stored(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Option<SigningKey> {
    let keys: Api<SigningKey> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let before = keys.get(name).await.ok()?;
    let secret = secrets.get_opt(&format!("{name}-keys")).await.ok()?;
    let after = keys.get(name).await.ok()?;
    let kids = |sk: &SigningKey| -> BTreeSet<String> {
        sk.status
            .as_ref()
            .map(|s| s.keys.iter().map(|k| k.kid.clone()).collect())
            .unwrap_or_default()
    };
    let named: BTreeSet<String> = kids(&before).intersection(&kids(&after)).cloned().collect();
    let stored: BTreeMap<String, String> = secret
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap_or_default()))
        .collect();
    let algorithm = after.spec.algorithm;
    for kid in &named {
        let pem = stored
            .get(kid)
            .unwrap_or_else(|| panic!("status names {kid} but the Secret lacks it"));
        assert_eq!(
            &sigil_core::keys::kid(algorithm, pem).expect("stored key parses"),
            kid,
            "kid is the thumbprint"
        );
    }
    Some(after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_goes_through_pending_active_retired_removed() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-ring").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "ring");
    let (interval, pre_publish, retire_after) = (14i64, 5i64, 6i64);
    apply_signing_key(
        &client,
        &ns,
        "ring",
        json!({
            "algorithm": "ES256",
            "rotationInterval": format!("{interval}s"),
            "prePublish": format!("{pre_publish}s"),
            "retireAfter": format!("{retire_after}s"),
        }),
    )
    .await;
    let created = now_secs();

    // The first key is Active at once.
    let sk = eventually(Duration::from_secs(15), "the first key", || async {
        let sk = check_keys_stored(&client, &ns, "ring").await?;
        let status = sk.status.clone()?;
        (status.keys.len() == 1 && status.keys[0].state == KeyState::Active).then_some(sk)
    })
    .await;
    let status = sk.status.expect("status");
    let first = status.keys[0].clone();
    assert_eq!(status.active_kid.as_deref(), Some(first.kid.as_str()));
    assert!(((secs(&first.activates_at) as f64) - created).abs() <= 3.0);
    assert_eq!(status.secret_name.as_deref(), Some("ring-keys"));

    // Observe the ring every 200 ms for two rotations, checking the Secret.
    let mut seen_pending: BTreeMap<String, f64> = BTreeMap::new();
    let mut seen_active: BTreeMap<String, f64> = BTreeMap::new();
    let mut seen_retired: BTreeMap<String, f64> = BTreeMap::new();
    let mut seen_gone: BTreeMap<String, f64> = BTreeMap::new();
    let mut last: Vec<sigil_crds::KeyStatus> = Vec::new();
    let mut schedule: BTreeMap<String, sigil_crds::KeyStatus> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs((2 * interval + retire_after + 6) as u64);
    while Instant::now() < deadline {
        let Some(sk) = check_keys_stored(&client, &ns, "ring").await else {
            continue;
        };
        let now = now_secs();
        let status = sk.status.expect("status");
        assert!(
            status.active_kid.is_some(),
            "never a moment without an active key"
        );
        assert_eq!(
            status
                .keys
                .iter()
                .filter(|k| k.state == KeyState::Active)
                .count(),
            1
        );
        for key in &status.keys {
            let seen = match key.state {
                KeyState::Pending => &mut seen_pending,
                KeyState::Active => &mut seen_active,
                KeyState::Retired => &mut seen_retired,
            };
            seen.entry(key.kid.clone()).or_insert(now);
            schedule.insert(key.kid.clone(), key.clone());
        }
        for key in &last {
            if !status.keys.iter().any(|k| k.kid == key.kid) {
                assert_eq!(
                    key.state,
                    KeyState::Retired,
                    "only retired keys leave the ring"
                );
                seen_gone.entry(key.kid.clone()).or_insert(now);
            }
        }
        last = status.keys;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let tolerance = 3.0;
    // Key 2: created interval - prePublish after key 1 activated, pending
    // for prePublish, then active; key 1 retired then and removed later.
    let second = schedule
        .values()
        .find(|k| {
            k.kid != first.kid && secs(&k.created_at) < secs(&first.activates_at) + interval + 2
        })
        .expect("a second key")
        .clone();
    let expect_created = (secs(&first.activates_at) + interval - pre_publish) as f64;
    assert!(
        (secs(&second.created_at) as f64 - expect_created).abs() <= tolerance,
        "{second:?}"
    );
    assert!(
        (seen_pending[&second.kid] - expect_created).abs() <= tolerance,
        "published on time"
    );
    let activation = secs(&second.activates_at);
    assert!(
        activation - secs(&second.created_at) >= pre_publish,
        "pending for at least prePublish"
    );
    assert!((activation as f64 - (secs(&first.activates_at) + interval) as f64).abs() <= tolerance);
    assert!(
        (seen_active[&second.kid] - activation as f64).abs() <= tolerance,
        "activated on time"
    );
    let retired = seen_retired[&first.kid];
    assert!(
        (retired - activation as f64).abs() <= tolerance,
        "the first key retired when the second activated"
    );
    let first_retires = schedule[&first.kid].retires_at.clone().expect("retiresAt");
    let removed = seen_gone[&first.kid];
    let expected_removal = (secs(&first_retires) + retire_after) as f64;
    assert!(
        (removed - expected_removal).abs() <= tolerance,
        "removed {removed} vs {expected_removal}"
    );
    assert!(
        seen_active.len() >= 3,
        "a third key took over too: {seen_active:?}"
    );

    let events = events_for(&client, &ns, "ring").await;
    for reason in ["KeyGenerated", "KeyActivated", "KeyRetired", "KeyRemoved"] {
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "{reason} in {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_rotation_pre_publishes_a_new_key() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-force").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "force");
    apply_signing_key(
        &client,
        &ns,
        "forced",
        json!({
            "algorithm": "EdDSA",
            "rotationInterval": "1h",
            "prePublish": "4s",
            "retireAfter": "1h",
        }),
    )
    .await;
    let sk = eventually(Duration::from_secs(15), "the first key", || async {
        let sk = check_keys_stored(&client, &ns, "forced").await?;
        sk.status.as_ref()?.active_kid.is_some().then_some(sk)
    })
    .await;
    let first = sk.status.and_then(|s| s.active_kid).expect("active");

    let requested = "2030-01-01T00:00:00Z";
    let api: Api<SigningKey> = Api::namespaced(client.clone(), &ns);
    let patch =
        json!({ "metadata": { "annotations": { "sigil.dev/rotate-requested-at": requested } } });
    api.patch("forced", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    let requested_at = now_secs();
    let pending = eventually(Duration::from_secs(10), "a pending key", || async {
        let sk = check_keys_stored(&client, &ns, "forced").await?;
        let status = sk.status?;
        status
            .keys
            .iter()
            .find(|k| k.state == KeyState::Pending)
            .cloned()
    })
    .await;
    assert!((secs(&pending.created_at) as f64 - requested_at).abs() <= 3.0);
    assert!(secs(&pending.activates_at) - secs(&pending.created_at) >= 4);
    let sk = eventually(
        Duration::from_secs(15),
        "the forced key to activate",
        || async {
            let sk = check_keys_stored(&client, &ns, "forced").await?;
            (sk.status.as_ref()?.active_kid.as_deref() == Some(pending.kid.as_str())).then_some(sk)
        },
    )
    .await;
    let status = sk.status.expect("status");
    assert_eq!(status.last_rotate_request.as_deref(), Some(requested));
    let old = status
        .keys
        .iter()
        .find(|k| k.kid == first)
        .expect("old key still published");
    assert_eq!(old.state, KeyState::Retired);
    // The same request does not rotate again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = api
        .get("forced")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(again.keys.len(), 2);
    assert_eq!(again.active_kid.as_deref(), Some(pending.kid.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_algorithm_rotates_to_a_key_of_the_new_type() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-alg").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "alg");
    let spec = |algorithm: &str| {
        json!({
            "algorithm": algorithm,
            "rotationInterval": "1h",
            "prePublish": "3s",
            "retireAfter": "1h",
        })
    };
    apply_signing_key(&client, &ns, "alg", spec("ES256")).await;
    let first = eventually(Duration::from_secs(15), "the first key", || async {
        check_keys_stored(&client, &ns, "alg")
            .await?
            .status?
            .active_kid
    })
    .await;
    apply_signing_key(&client, &ns, "alg", spec("EdDSA")).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let sk = eventually(
        Duration::from_secs(20),
        "an EdDSA key to take over",
        || async {
            let keys: Api<SigningKey> = Api::namespaced(client.clone(), &ns);
            let sk = keys.get("alg").await.ok()?;
            let active = sk.status.as_ref()?.active_kid.clone()?;
            (active != first).then_some(sk)
        },
    )
    .await;
    let status = sk.status.expect("status");
    let active = status.active_kid.clone().expect("active");
    let new_key = status
        .keys
        .iter()
        .find(|k| k.kid == active)
        .expect("in ring");
    assert!(
        secs(&new_key.activates_at) - secs(&new_key.created_at) >= 3,
        "pre-published"
    );
    let old = status
        .keys
        .iter()
        .find(|k| k.kid == first)
        .expect("old key still published");
    assert_eq!(old.state, KeyState::Retired);
    let secret = secrets.get("alg-keys").await.expect("keys secret");
    let pem = data(&secret, &active).expect("new key stored");
    assert_eq!(
        sigil_core::keys::kid(sigil_crds::SigningAlgorithm::EdDSA, &pem).expect("an Ed25519 key"),
        active
    );
    let old_pem = data(&secret, &first).expect("old key stored");
    assert!(sigil_core::keys::kid(sigil_crds::SigningAlgorithm::ES256, &old_pem).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_secret_is_noticed_and_signing_goes_on() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-lost").await;
    let _operator = Operator::start(cluster, &ns, &[&ns], "lost");
    apply_signing_key(
        &client,
        &ns,
        "lost",
        json!({ "rotationInterval": "1h", "prePublish": "10m" }),
    )
    .await;
    let first = eventually(Duration::from_secs(15), "the first key", || async {
        check_keys_stored(&client, &ns, "lost")
            .await?
            .status?
            .active_kid
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .delete("lost-keys", &DeleteParams::default())
        .await
        .expect("delete");
    // Until the operator notices, status names a key a human deleted; then
    // the lost key leaves the ring and a new key signs at once.
    let keys: Api<SigningKey> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(15), "a replacement key", || async {
        let status = keys.get("lost").await.ok()?.status?;
        let active = status.active_kid?;
        let stored = secrets.get_opt("lost-keys").await.ok()??;
        (active != first
            && status.keys.iter().all(|k| k.kid != first)
            && data(&stored, &active).is_some())
        .then_some(())
    })
    .await;
    check_keys_stored(&client, &ns, "lost")
        .await
        .expect("consistent again");
    let events = eventually(Duration::from_secs(10), "a KeyLost event", || async {
        let events = events_for(&client, &ns, "lost").await;
        events
            .iter()
            .any(|(reason, _)| reason == "KeyLost")
            .then_some(events)
    })
    .await;
    assert!(
        events.iter().any(|(_, note)| note.contains(&first)),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_operator_during_rotation_never_loses_a_key() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-kill").await;
    apply_signing_key(
        &client,
        &ns,
        "crashy",
        json!({
            "algorithm": "ES256",
            "rotationInterval": "4s",
            "prePublish": "2s",
            "retireAfter": "3s",
        }),
    )
    .await;

    // A checker watches the ring the whole time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let client = client.clone();
        let ns = ns.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last: Vec<sigil_crds::KeyStatus> = Vec::new();
            let mut actives = BTreeSet::new();
            let mut checks = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(sk) = check_keys_stored(&client, &ns, "crashy").await {
                    checks += 1;
                    if let Some(status) = sk.status {
                        if !last.is_empty() {
                            assert!(status.active_kid.is_some(), "an active key at all times");
                        }
                        for key in &last {
                            if !status.keys.iter().any(|k| k.kid == key.kid) {
                                assert_eq!(
                                    key.state,
                                    KeyState::Retired,
                                    "{} left the ring before retiring",
                                    key.kid
                                );
                            }
                        }
                        actives.extend(status.active_kid.clone());
                        last = status.keys;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (checks, actives.len())
        })
    };

    // SIGKILL the operator at pseudo-random moments.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(30) {
        // The same identity, like a restarted pod: it leads again at once.
        let mut operator = Operator::start(cluster, &ns, &[&ns], "kill");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let alive = Duration::from_millis(300 + seed % 2500);
        tokio::time::sleep(alive).await;
        operator.kill().await;
        kills += 1;
    }
    // Then let it run to show the ring is healthy.
    let _operator = Operator::start(cluster, &ns, &[&ns], "kill");
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (checks, actives) = checker.await.expect("the checker found no lost key");
    assert!(checks > 50, "the checker ran ({checks} checks)");
    assert!(
        actives >= 4,
        "rotations went on despite {kills} kills: {actives} active keys seen"
    );
    check_keys_stored(&client, &ns, "crashy")
        .await
        .expect("final check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_only_the_leader_writes_and_a_standby_takes_over() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-leader").await;
    let mut first = Operator::start(cluster, &ns, &[&ns], "replica-1");
    // Let the first one take the Lease before the second starts.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = || {
        let leases = leases.clone();
        async move {
            leases
                .get_opt("sigil-operator")
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.holder_identity)
        }
    };
    eventually(Duration::from_secs(20), "replica-1 to lead", || async {
        (holder().await.as_deref() == Some("replica-1")).then_some(())
    })
    .await;
    let second = Operator::start(cluster, &ns, &[&ns], "replica-2");
    apply_client(&client, &ns, "before", json!({ "scopes": ["a"] })).await;
    wait_ready(&client, &ns, "before").await;

    let standby_metrics = eventually(Duration::from_secs(10), "replica-2 metrics", || {
        second.metrics()
    })
    .await;
    assert!(
        standby_metrics.contains("sigil_operator_leader 0"),
        "{standby_metrics}"
    );
    assert!(
        !standby_metrics.contains("sigil_operator_reconciles_total{"),
        "the standby never reconciles: {standby_metrics}"
    );
    let leader_metrics = eventually(Duration::from_secs(10), "replica-1 metrics", || {
        first.metrics()
    })
    .await;
    assert!(
        leader_metrics.contains("sigil_operator_leader 1"),
        "{leader_metrics}"
    );
    // Only the leader's field manager wrote the Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets.get("before-oauth").await.expect("secret");
    let managers: BTreeSet<String> = secret
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert_eq!(managers, BTreeSet::from(["sigil-operator".to_owned()]));

    // Kill the leader: the standby takes over within about 15 s.
    first.kill().await;
    let killed = Instant::now();
    apply_client(&client, &ns, "after", json!({ "scopes": ["a"] })).await;
    eventually(
        Duration::from_secs(20),
        "replica-2 to take over",
        || async { (holder().await.as_deref() == Some("replica-2")).then_some(()) },
    )
    .await;
    wait_ready(&client, &ns, "after").await;
    let takeover = killed.elapsed();
    eprintln!(
        "standby took over and reconciled in {:.1}s",
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(15),
        "takeover took {takeover:?}"
    );
    let metrics = eventually(Duration::from_secs(10), "replica-2 metrics", || {
        second.metrics()
    })
    .await;
    assert!(metrics.contains("sigil_operator_leader 1"), "{metrics}");

    // A graceful stop (SIGTERM) exits 0 and releases the Lease; the standby
    // (kube-lease-manager sleeps until the recorded expiry) takes over
    // within one Lease duration (6 s here).
    let _third = Operator::start(cluster, &ns, &[&ns], "replica-3");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut second = second;
    let pid = second.child.id().expect("replica-2 runs") as libc::pid_t;
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopped = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), second.child.wait())
        .await
        .expect("replica-2 exits on SIGTERM")
        .expect("wait");
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    eventually(
        Duration::from_secs(10),
        "replica-3 to take over",
        || async { (holder().await.as_deref() == Some("replica-3")).then_some(()) },
    )
    .await;
    let handover = stopped.elapsed();
    eprintln!("graceful handover in {:.1}s", handover.as_secs_f64());
    assert!(
        handover < Duration::from_secs(5),
        "handover took {handover:?}"
    );
}

/// What the benchmark's watch saw.
enum Seen {
    /// An OAuthClient's name and whether it is Ready=True.
    Client(String, bool),
    /// A client Secret's name and the credentials it holds.
    Secret(String, Option<Credentials>),
}

/// The values a workload reads from its client Secret.
#[derive(Clone)]
struct Credentials {
    client_id: String,
    client_secret: String,
    token_url: String,
}

fn either_client(oac: OAuthClient) -> Seen {
    let is_ready = ready_reason(&oac).is_some_and(|(status, _)| status == "True");
    Seen::Client(oac.name_any(), is_ready)
}

fn either_secret(secret: Secret) -> Seen {
    let credentials = (|| {
        Some(Credentials {
            client_id: data(&secret, "client_id")?,
            client_secret: data(&secret, "client_secret")?,
            token_url: data(&secret, "token_url")?,
        })
    })();
    Seen::Secret(secret.name_any(), credentials)
}

/// Asks for a client_credentials token every 20 ms until the issuer grants
/// one; returns when that answer came, or why none came within 30 s. At
/// most `permits` requests are in flight over all clients: a permit is held
/// only for a request, not for the pause, so a client's polling is not
/// delayed by the other clients' waiting.
async fn first_token(
    credentials: Credentials,
    permits: Arc<tokio::sync::Semaphore>,
) -> Result<Instant, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let authorization = issuer_support::basic(&credentials.client_id, &credentials.client_secret);
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("authorization", authorization.as_str()),
    ];
    loop {
        let reply = {
            let _permit = permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            issuer_support::request(
                "POST",
                &credentials.token_url,
                &headers,
                "grant_type=client_credentials",
            )
            .await
        };
        let answered = Instant::now();
        // Until the issuer's watch has the client's status it answers 401
        // (then 429, as every request comes from one address); a refused
        // connection is retried as well.
        let last = match reply {
            Ok(reply) if reply.status == 200 && reply.json()["access_token"].is_string() => {
                return Ok(answered);
            }
            Ok(reply) => format!("{} {}", reply.status, reply.body),
            Err(error) => error.to_string(),
        };
        if answered >= deadline {
            return Err(format!(
                "{}: no token within 30 s; last answer: {last}",
                credentials.client_id
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nearest-rank percentile `p` (0 < p ≤ 1) of `sorted`, in ms.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Benchmark (not a test): N OAuthClients (`SIGIL_BENCH_CLIENTS`, default
/// 1,000) applied at once, with the operator and a cluster-mode issuer
/// running. Reports the time until all are Ready with Secrets; how long
/// after the watch saw each client Ready the issuer first granted it a token
/// (p50/p99/max); and peak memory and CPU seconds of both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_oauth_clients_at_once() {
    let count: usize = std::env::var("SIGIL_BENCH_CLIENTS")
        .ok()
        .map(|v| v.parse().expect("SIGIL_BENCH_CLIENTS: a number of clients"))
        .unwrap_or(1000);
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("op-bench").await;
    // Wired as tests/tests/issuer_cluster.rs deploys them: one namespace is
    // the issuer's (its default SigningKey) and the clients'; the operator
    // gets the issuer's URL, so each Secret's token_url is this issuer's.
    apply_signing_key(&client, &ns, "default", json!({"algorithm": "ES256"})).await;
    let scratch = issuer_support::Scratch::new("sigil-op-bench");
    let kubeconfig = cluster.kubeconfig().to_str().expect("utf8 kubeconfig path");
    let mut issuer = issuer_support::IssuerProcess::start(
        &["--namespace", &ns],
        &[("KUBECONFIG", kubeconfig)],
        &scratch.0.join("issuer.log"),
    );
    let operator = Operator::start_with(cluster, &ns, &[&ns], "bench", &issuer.base_url, &[]);
    eprintln!(
        "logs: operator {}, issuer {} (SIGIL_KEEP_SCRATCH=1 keeps it)",
        operator.log.display(),
        issuer.log.display()
    );
    // Wait for the operator to lead and the issuer to be ready (it needs
    // the SigningKey's key) before starting the clock.
    eventually(Duration::from_secs(20), "the operator to lead", || async {
        operator
            .metrics()
            .await
            .filter(|m| m.contains("sigil_operator_leader 1"))
    })
    .await;
    issuer.wait_ready(Duration::from_secs(60)).await;
    let issuer_pid = issuer.child.id();
    let api: Api<OAuthClient> = Api::namespaced(client.clone(), &ns);
    let operator_cpu_before = operator.cpu_seconds().unwrap_or(0.0);
    let issuer_cpu_before = cpu_seconds(issuer_pid).unwrap_or(0.0);
    let started = Instant::now();
    let creates = (0..count).map(|i| {
        let api = api.clone();
        async move {
            let oac: OAuthClient = serde_json::from_value(json!({
                "apiVersion": "sigil.dev/v1alpha1",
                "kind": "OAuthClient",
                "metadata": { "name": format!("client-{i:05}") },
                "spec": { "scopes": ["read", "write"], "audiences": ["api"] },
            }))
            .expect("manifest");
            api.create(&PostParams::default(), &oac)
                .await
                .expect("create");
        }
    });
    futures::stream::iter(creates)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let applied = started.elapsed();
    // Watched, not listed in a loop: polling N objects would load the API
    // server the operator is being measured against. Full Secrets, so the
    // credentials come with the event and need no GET per client.
    let mut ready: BTreeSet<String> = BTreeSet::new();
    let mut ready_at: HashMap<String, Instant> = HashMap::new();
    let mut credentials: HashMap<String, Credentials> = HashMap::new();
    let mut polling: HashSet<String> = HashSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut acceptance = tokio::task::JoinSet::new();
    let client_events = kube::runtime::watcher(api.clone(), Default::default())
        .applied_objects()
        .map(|r| r.map(either_client));
    let secret_events = kube::runtime::watcher(
        Api::<Secret>::namespaced(client.clone(), &ns),
        kube::runtime::watcher::Config::default().labels("app.kubernetes.io/managed-by=sigil"),
    )
    .applied_objects()
    .map(|r| r.map(either_secret));
    let mut events = futures::stream::select(client_events, secret_events).boxed();
    // The operator's rate is bounded by the API server's writes (three per
    // client), so the allowance grows with N.
    let allowance = Duration::from_secs(120).max(Duration::from_millis(30) * count as u32);
    let deadline = tokio::time::Instant::now() + allowance;
    while ready.len() < count || credentials.len() < count {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "after {allowance:?} only {} ready, {} secrets",
                    ready.len(),
                    credentials.len()
                )
            });
        let name = match next {
            Some(Ok(Seen::Client(name, is_ready))) => {
                if is_ready {
                    ready.insert(name.clone());
                    ready_at.entry(name.clone()).or_insert_with(Instant::now);
                } else {
                    ready.remove(&name);
                }
                name
            }
            Some(Ok(Seen::Secret(name, found))) => {
                let (Some(client), Some(found)) = (name.strip_suffix("-oauth"), found) else {
                    continue;
                };
                credentials.insert(client.to_owned(), found);
                client.to_owned()
            }
            Some(Err(error)) => {
                eprintln!("watch error (retried): {error}");
                continue;
            }
            None => panic!("watch ended"),
        };
        // Poll the issuer once both the Ready condition and the Secret
        // are known, as a workload mounting the Secret would.
        if let (Some(&since), Some(found)) = (ready_at.get(&name), credentials.get(&name))
            && polling.insert(name)
        {
            let found = found.clone();
            let permits = permits.clone();
            acceptance.spawn(async move {
                first_token(found, permits)
                    .await
                    .map(|answered| answered.duration_since(since))
            });
        }
    }
    let all_ready = started.elapsed();
    assert_eq!(polling.len(), count, "a client was never polled");
    let mut latencies = Vec::with_capacity(count);
    let mut failures = Vec::new();
    while let Some(result) = acceptance.join_next().await {
        match result.expect("a polling task panicked") {
            Ok(latency) => latencies.push(latency),
            Err(failure) => failures.push(failure),
        }
    }
    latencies.sort();
    let operator_peak = operator.peak_rss_kib().unwrap_or(0);
    let operator_cpu = operator.cpu_seconds().unwrap_or(0.0) - operator_cpu_before;
    let issuer_peak = peak_rss_kib(issuer_pid).unwrap_or(0);
    let issuer_cpu = cpu_seconds(issuer_pid).unwrap_or(0.0) - issuer_cpu_before;
    eprintln!(
        "BENCH operator+issuer: {count} OAuthClients created in {:.1}s; all Ready with Secrets after {:.1}s; \
         first token after Ready p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} of {count} granted); \
         operator peak RSS {:.1} MiB, {operator_cpu:.1} CPU s; issuer peak RSS {:.1} MiB, {issuer_cpu:.1} CPU s",
        applied.as_secs_f64(),
        all_ready.as_secs_f64(),
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
        percentile_ms(&latencies, 1.0),
        latencies.len(),
        operator_peak as f64 / 1024.0,
        issuer_peak as f64 / 1024.0,
    );
    assert!(
        failures.is_empty(),
        "{} of {count} clients got no token within 30 s of polling, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}
