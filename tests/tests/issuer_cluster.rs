//! The issuer in cluster mode on the local control plane, with the real
//! operator: the seed example's token rules using the values of the
//! client's Secret, Go and Node verification against the JWKS URL, two
//! forced key rotations under continuous verification, and 30 s without an
//! API server.

mod issuer_support;

use std::path::Path;
use std::time::{Duration, Instant};

use issuer_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sigil_crds::SigningKey;
use sigil_tests::cluster::{Component, ControlPlane, Options, TestCluster};

fn start_operator(
    kubeconfig: &Path,
    namespace: &str,
    issuer_url: &str,
    log: &Path,
) -> OperatorProcess {
    OperatorProcess::start(kubeconfig, namespace, &[namespace], issuer_url, &[], log)
}

fn start_cluster_issuer(kubeconfig: &Path, namespace: &str, log: &Path) -> IssuerProcess {
    IssuerProcess::start(
        &["--namespace", namespace],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf8 path"))],
        log,
    )
}

async fn apply(client: &kube::Client, namespace: &str, manifest: serde_json::Value) {
    let kind = manifest["kind"].as_str().expect("kind").to_owned();
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let params = PatchParams::apply("sigil-e2e").force();
    let result = match kind.as_str() {
        "OAuthClient" => Api::<sigil_crds::OAuthClient>::namespaced(client.clone(), namespace)
            .patch(&name, &params, &Patch::Apply(&manifest))
            .await
            .map(|_| ()),
        "SigningKey" => Api::<SigningKey>::namespaced(client.clone(), namespace)
            .patch(&name, &params, &Patch::Apply(&manifest))
            .await
            .map(|_| ()),
        other => panic!("cannot apply {other}"),
    };
    result.unwrap_or_else(|e| panic!("applying {kind} {namespace}/{name}: {e}"));
}

fn seed_client(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Task Service",
            "scopes": ["event.view", "event.create", "file.view"],
            "audiences": ["event", "file"],
        },
    })
}

fn signing_key(spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "SigningKey",
        "metadata": {"name": "default"},
        "spec": spec,
    })
}

/// The values a pod would find in its mounted client Secret.
struct Mounted {
    client_id: String,
    client_secret: String,
    token_url: String,
    issuer: String,
}

async fn wait_for_secret_opt(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Option<Mounted> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(secret)) = secrets.get_opt(name).await
            && secret
                .data
                .as_ref()
                .is_some_and(|d| d.get("client_secret").is_some_and(|v| !v.0.is_empty()))
        {
            return Some(wait_for_secret(client, namespace, name, Duration::from_secs(1)).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn wait_for_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Mounted {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(secret)) = secrets.get_opt(name).await {
            let data = secret.data.unwrap_or_default();
            let value = |key: &str| {
                data.get(key)
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .unwrap_or_default()
            };
            if !value("client_secret").is_empty() {
                return Mounted {
                    client_id: value("client_id"),
                    client_secret: value("client_secret"),
                    token_url: value("token_url"),
                    issuer: value("issuer"),
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "Secret {namespace}/{name} not written within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the issuer grants `mounted` a token (its watch has caught up).
async fn wait_for_token(mounted: &Mounted, timeout: Duration) -> Reply {
    let deadline = Instant::now() + timeout;
    loop {
        let reply = token_basic(
            &mounted.token_url,
            &mounted.client_id,
            &mounted.client_secret,
            "grant_type=client_credentials",
        )
        .await;
        if reply.status == 200 {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "no token for {} within {timeout:?}: {} {}",
            mounted.client_id,
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Deployment {
    /// Kept to stop it on drop.
    _operator: OperatorProcess,
    issuer: IssuerProcess,
    scratch: Scratch,
}

/// Operator + issuer for `namespace` (also the issuer's namespace, holding
/// the SigningKey), with the given default SigningKey spec.
async fn deploy(
    client: &kube::Client,
    kubeconfig: &Path,
    namespace: &str,
    key_spec: serde_json::Value,
) -> Deployment {
    let scratch = Scratch::new("sigil-cluster");
    apply(client, namespace, signing_key(key_spec)).await;
    let mut issuer = start_cluster_issuer(kubeconfig, namespace, &scratch.0.join("issuer.log"));
    let operator = start_operator(
        kubeconfig,
        namespace,
        &issuer.base_url,
        &scratch.0.join("operator.log"),
    );
    issuer.wait_ready(Duration::from_secs(60)).await;
    Deployment {
        _operator: operator,
        issuer,
        scratch,
    }
}

#[tokio::test]
async fn seed_example_with_the_real_operator_and_go_and_node_verifiers() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("issuer-seed").await;
    let deployment = deploy(
        &client,
        cluster.kubeconfig(),
        &ns,
        json!({"algorithm": "ES256"}),
    )
    .await;
    apply(&client, &ns, seed_client("task-service")).await;
    let mounted =
        wait_for_secret(&client, &ns, "task-service-oauth", Duration::from_secs(30)).await;
    assert_eq!(mounted.client_id, format!("task-service.{ns}"));
    assert_eq!(mounted.token_url, deployment.issuer.token_url());
    assert_eq!(mounted.issuer, deployment.issuer.base_url);

    let basic = wait_for_token(&mounted, Duration::from_secs(10)).await;
    assert_eq!(basic.header("cache-control"), Some("no-store"));
    assert_eq!(basic.json()["scope"], "event.view event.create file.view");
    let post = token_post(
        &mounted.token_url,
        &mounted.client_id,
        &mounted.client_secret,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(post.status, 200, "{}", post.body);

    let narrowed = token_basic(
        &mounted.token_url,
        &mounted.client_id,
        &mounted.client_secret,
        "grant_type=client_credentials&scope=event.create&audience=event",
    )
    .await;
    assert_eq!(narrowed.status, 200);
    assert_eq!(narrowed.json()["scope"], "event.create");
    let claims = decode_jwt_claims(narrowed.json()["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], "event");
    assert_eq!(claims["scp"], json!(["event.create"]));

    let bad_scope = token_basic(
        &mounted.token_url,
        &mounted.client_id,
        &mounted.client_secret,
        "grant_type=client_credentials&scope=file.delete",
    )
    .await;
    assert_eq!(
        (bad_scope.status, bad_scope.json()["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let bad_target = token_basic(
        &mounted.token_url,
        &mounted.client_id,
        &mounted.client_secret,
        "grant_type=client_credentials&audience=payments",
    )
    .await;
    assert_eq!(
        (bad_target.status, bad_target.json()["error"].as_str()),
        (400, Some("invalid_target"))
    );
    let wrong = token_basic(
        &mounted.token_url,
        &mounted.client_id,
        "wrong-secret",
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert!(wrong.header("www-authenticate").is_some());

    let secret_file = deployment.scratch.0.join("secret");
    std::fs::write(&secret_file, &mounted.client_secret).expect("secret file");
    let (token_url, jwks_url) = (deployment.issuer.token_url(), deployment.issuer.jwks_url());
    let run = |auth: &'static str| VerifyRun {
        token_url: &token_url,
        jwks_url: &jwks_url,
        issuer: &deployment.issuer.base_url,
        client_id: &mounted.client_id,
        secret_file: &secret_file,
        audience: "event",
        scope: "event.create",
        auth,
        duration: Duration::ZERO,
        interval: Duration::from_millis(50),
        jwks_refresh: Duration::ZERO,
    };
    let go = run_go(&run("auto")).await;
    assert_eq!(
        (go["verified"].as_u64(), go["failures"].as_u64()),
        (Some(1), Some(0)),
        "Go: {go}"
    );
    let node = run_node(&run("post")).await;
    assert_eq!(
        (node["verified"].as_u64(), node["failures"].as_u64()),
        (Some(1), Some(0)),
        "Node: {node}"
    );
    let log = deployment.issuer.log_text();
    assert!(
        !log.contains(&mounted.client_secret),
        "the secret leaked into the issuer log"
    );
}

#[tokio::test]
async fn two_forced_rotations_under_continuous_verification() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("issuer-rotation").await;
    let deployment = deploy(
        &client,
        cluster.kubeconfig(),
        &ns,
        json!({"algorithm": "ES256", "rotationInterval": "720h", "prePublish": "3s", "retireAfter": "1m"}),
    )
    .await;
    apply(&client, &ns, seed_client("task-service")).await;
    let mounted =
        wait_for_secret(&client, &ns, "task-service-oauth", Duration::from_secs(30)).await;
    wait_for_token(&mounted, Duration::from_secs(10)).await;
    let secret_file = deployment.scratch.0.join("secret");
    std::fs::write(&secret_file, &mounted.client_secret).expect("secret file");
    let (token_url, jwks_url) = (deployment.issuer.token_url(), deployment.issuer.jwks_url());
    let run = |auth: &'static str| VerifyRun {
        token_url: &token_url,
        jwks_url: &jwks_url,
        issuer: &deployment.issuer.base_url,
        client_id: &mounted.client_id,
        secret_file: &secret_file,
        audience: "event",
        scope: "",
        auth,
        duration: Duration::from_secs(16),
        interval: Duration::from_millis(50),
        // At most every prePublish (with margin for the operator's latency).
        jwks_refresh: Duration::from_millis(2_000),
    };
    // Build/install the verifiers before the clock starts.
    go_verifier().await;
    node_ready().await;
    let keys: Api<SigningKey> = Api::namespaced(client.clone(), &ns);
    let rotate = async {
        for delay in [2, 6] {
            tokio::time::sleep(Duration::from_secs(delay)).await;
            let at = k8s_openapi::jiff::Timestamp::now().to_string();
            let patch = json!({"metadata": {"annotations": {sigil_crds::annotations::ROTATE_REQUESTED_AT: at}}});
            keys.patch("default", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("requesting a rotation");
        }
    };
    let (go_run, node_run) = (run("header"), run("basic"));
    let (go, node, ()) = tokio::join!(run_go(&go_run), run_node(&node_run), rotate);
    let status = keys
        .get("default")
        .await
        .expect("SigningKey")
        .status
        .unwrap_or_default();
    for (name, report) in [("Go", &go), ("Node", &node)] {
        assert_eq!(
            report["failures"], 0,
            "{name}: {report}\nstatus: {status:?}"
        );
        assert!(
            report["verified"].as_u64().unwrap_or(0) > 50,
            "{name}: {report}"
        );
        let kids = report["kids"].as_array().map(Vec::len).unwrap_or(0);
        assert!(
            kids >= 3,
            "{name} saw {kids} keys, expected 3 after two rotations: {report}\nstatus: {status:?}"
        );
    }
    eprintln!("forced rotations: Go {go}\nNode {node}");
}

#[tokio::test]
async fn issuer_serves_through_30_seconds_without_an_api_server() {
    // A control plane of its own: stopping the shared one would break the
    // other tests of this binary.
    let control_plane = ControlPlane::start(Options::default())
        .await
        .expect("control plane");
    control_plane.install_crds().await.expect("CRDs");
    let client = control_plane.client().await.expect("client");
    let ns = "sigil-outage";
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &PatchParams::apply("sigil-e2e"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await
        .expect("namespace");
    let kubeconfig = control_plane.kubeconfig().to_owned();
    let deployment = deploy(&client, &kubeconfig, ns, json!({"algorithm": "ES256"})).await;
    apply(&client, ns, seed_client("task-service")).await;
    let mounted = wait_for_secret(&client, ns, "task-service-oauth", Duration::from_secs(30)).await;
    wait_for_token(&mounted, Duration::from_secs(10)).await;

    control_plane
        .stop_component(Component::ApiServer)
        .expect("stopping kube-apiserver");
    let outage = Instant::now();
    let (mut granted, mut refused) = (0, 0);
    while outage.elapsed() < Duration::from_secs(30) {
        let reply = token_basic(
            &mounted.token_url,
            &mounted.client_id,
            &mounted.client_secret,
            "grant_type=client_credentials",
        )
        .await;
        if reply.status == 200 {
            granted += 1;
        } else {
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = get(&format!("{}/metrics", deployment.issuer.health_url))
        .await
        .expect("metrics");
    assert_eq!(
        refused, 0,
        "token requests failed during the outage ({granted} granted)"
    );
    assert!(granted > 100);
    assert!(
        metrics.body.contains("sigil_issuer_apiserver_connected 0"),
        "{}",
        metrics.body
    );
    assert!(deployment.issuer.log_text().contains("lost the API server"));

    control_plane
        .start_component(Component::ApiServer)
        .expect("restarting kube-apiserver");
    control_plane
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("API server back");
    let back = Instant::now();
    // The issuer's watches reconnect within seconds (its backoff stops at 4 s).
    loop {
        let metrics = get(&format!("{}/metrics", deployment.issuer.health_url))
            .await
            .expect("metrics");
        if metrics.body.contains("sigil_issuer_apiserver_connected 1") {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the issuer did not reconnect within 15 s:\n{}",
            deployment.issuer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reconnected = back.elapsed();
    let client = control_plane.client().await.expect("client");
    apply(&client, ns, seed_client("calendar-service")).await;
    // The operator writes the new client's Secret and verifier (its own
    // recovery): its watches and its controllers' trigger backoff retry at
    // most every 4 s (+25% jitter), so within seconds of the API server's
    // return. (With kube's default trigger backoff it took 40-55 s.)
    let mounted = wait_for_secret_opt(
        &client,
        ns,
        "calendar-service-oauth",
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "the operator did not write calendar-service-oauth within 30 s of the API server's return:\n{}",
            std::fs::read_to_string(deployment.scratch.0.join("operator.log")).unwrap_or_default()
        )
    });
    let written = back.elapsed();
    assert!(
        written < Duration::from_secs(7),
        "the operator wrote the new client's Secret {written:?} after the API server returned:\n{}",
        std::fs::read_to_string(deployment.scratch.0.join("operator.log")).unwrap_or_default()
    );
    wait_for_token(&mounted, Duration::from_secs(5)).await;
    eprintln!(
        "after the API server returned: issuer reconnected in {:.1}s; operator wrote the new client's Secret at {:.1}s; token granted at {:.1}s",
        reconnected.as_secs_f64(),
        written.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
}
