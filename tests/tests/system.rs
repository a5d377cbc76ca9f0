//! The whole system: the README's run command, and the operator and issuer
//! running with exactly the chart's RBAC (real ServiceAccount tokens), so a
//! missing permission fails here rather than in somebody's cluster.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use sigil_crds::OAuthClient;
use sigil_tests::cluster::{TestCluster, workspace_root};
use sigil_tests::processes::{Process, free_addr};

/// Runs `sigil-dev` (what `hack/dev.sh` runs after building) with `extra`
/// arguments on free ports in a directory named after `name` and returns its stdout; fails the test when it
/// exits non-zero.
async fn run_sigil_dev(name: &str, extra: &[&str]) -> String {
    // One directory per test: the tests of this binary run concurrently.
    let dir = std::env::temp_dir().join(format!("sigil-dev-{name}-{}", std::process::id()));
    let port = || free_addr().expect("free port").port().to_string();
    let (api, issuer, calendar) = (port(), port(), port());
    let mut args = vec![
        "--exit",
        "--dir",
        dir.to_str().expect("temp dir is UTF-8"),
        "--api-port",
        &api,
        "--issuer-port",
        &issuer,
        "--calendar-port",
        &calendar,
    ];
    args.extend_from_slice(extra);
    let out = tokio::process::Command::new(sigil_tests::binary("sigil-dev"))
        .args(&args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("running sigil-dev");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "sigil-dev failed\n{stdout}\n{stderr}");
    stdout
}

fn assert_steps(stdout: &str, total: u32) {
    for step in 1..=total {
        assert!(
            stdout.contains(&format!("[{step}/{total}]")),
            "step {step} of {total} missing:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn the_run_command_ends_with_the_task_service_pod_getting_200() {
    // The README's run command: Sigil and the example as pods on a node.
    let stdout = run_sigil_dev("pods", &[]).await;
    assert_steps(&stdout, 6);
    assert!(
        stdout.contains("task-service: HTTP/1.1 200 OK"),
        "the Calendar Service pod did not answer the Task Service pod 200:\n{stdout}"
    );
    assert!(
        stdout.contains("got a token for sigil-helm-test.sigil-system"),
        "helm test printed no token:\n{stdout}"
    );
}

#[tokio::test]
async fn the_soak_command_runs_sigil_as_processes_and_loads_the_issuer() {
    // `--soak`: operator and issuer as local processes, then token load
    // that fails the command on any failed request or verification.
    let stdout = run_sigil_dev("soak", &["--soak", "5s", "--soak-rate", "50"]).await;
    assert_steps(&stdout, 8);
    assert!(
        stdout.contains("access_token: ey"),
        "no token printed:\n{stdout}"
    );
    assert!(
        stdout.contains("with the token -> 200 OK"),
        "the Calendar Service did not answer 200:\n{stdout}"
    );
    assert!(
        stdout.contains("\"caller\":\"task-service.tasks\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(" 0 failed requests, 0 failed verifications"),
        "the soak summary is missing or saw failures:\n{stdout}"
    );
}

#[tokio::test]
async fn operator_and_issuer_work_with_exactly_the_charts_rbac() {
    let cluster = TestCluster::shared().await;
    let ns = cluster.namespace("sigil-rbac").await;
    let app = cluster.namespace("app").await;
    let chart = workspace_root().join("charts/sigil").display().to_string();
    // The chart's ServiceAccounts, RBAC and default SigningKey; no pods run
    // here, so the Deployments stay unscheduled and the processes below
    // stand in for them.
    cluster
        .helm(&[
            "install",
            "sigil-rbac",
            &chart,
            "-n",
            &ns,
            "--set",
            "webhook.enabled=false",
        ])
        .expect_success("helm install");

    let logs = cluster.control_plane.dir().join("logs");
    let issuer_addr = free_addr().expect("free port");
    let issuer_url = format!("http://{issuer_addr}");

    let operator_health = free_addr().expect("free port");
    let operator_kubeconfig = cluster.service_account_kubeconfig(&ns, "sigil-rbac-operator");
    let mut operator = Process::spawn(
        "operator",
        &sigil_tests::binary("operator"),
        &[
            format!("--issuer-url={issuer_url}"),
            format!("--namespace={ns}"),
            format!("--health-listen={operator_health}"),
            // As the chart passes it with webhook.enabled=false (no
            // webhook configuration, so no RBAC for one).
            "--webhook-config=".to_owned(),
        ],
        &[("KUBECONFIG", operator_kubeconfig.display().to_string())],
        &logs.join(format!("{ns}-operator.log")),
    )
    .expect("starting the operator");

    let issuer_health = free_addr().expect("free port");
    let issuer_kubeconfig = cluster.service_account_kubeconfig(&ns, "sigil-rbac-issuer");
    let mut issuer = Process::spawn(
        "issuer",
        &sigil_tests::binary("issuer"),
        &[
            format!("--issuer-url={issuer_url}"),
            format!("--listen={issuer_addr}"),
            format!("--health-listen={issuer_health}"),
            format!("--namespace={ns}"),
        ],
        &[("KUBECONFIG", issuer_kubeconfig.display().to_string())],
        &logs.join(format!("{ns}-issuer.log")),
    )
    .expect("starting the issuer");
    // Ready means: watches synced under its RBAC, and the operator (under
    // its RBAC) generated the chart's default key and wrote it to a Secret.
    issuer
        .wait_http_ok(issuer_health, "/readyz", Duration::from_secs(60))
        .await
        .expect("issuer ready under least privilege");

    let client = cluster.client().await;
    let manifest = serde_json::json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": { "name": "orders" },
        "spec": { "scopes": ["orders.read"], "audiences": ["orders"] },
    });
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &app);
    clients
        .create(
            &Default::default(),
            &serde_json::from_value(manifest).expect("valid OAuthClient"),
        )
        .await
        .expect("OAuthClient created");
    let secrets: Api<Secret> = Api::namespaced(client, &app);
    let deadline = Instant::now() + Duration::from_secs(30);
    let secret = loop {
        operator.check_running().expect("operator running");
        if let Some(secret) = secrets.get_opt("orders-oauth").await.expect("get Secret") {
            break secret;
        }
        assert!(
            Instant::now() < deadline,
            "operator wrote no Secret within 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| String::from_utf8_lossy(&data[k].0).into_owned();

    // The issuer learns the client from status (it cannot read the Secret).
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let response = loop {
        let response = http
            .post(field("token_url"))
            .basic_auth(field("client_id"), Some(field("client_secret")))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request");
        if response.status().is_success() || Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(status, 200, "token request under least privilege: {body}");
    assert_eq!(body["scope"], "orders.read");
    assert_eq!(body["token_type"], "Bearer");

    // Neither log shows a permission error (a 403 the code retried past).
    for process in [&operator, &issuer] {
        let log = std::fs::read_to_string(process.log()).unwrap_or_default();
        assert!(
            !log.contains("forbidden"),
            "{} hit a permission error:\n{}",
            process.log().display(),
            process.log_tail()
        );
    }
    operator.stop().await;
    issuer.stop().await;
}
