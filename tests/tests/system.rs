//! The whole system: the README's run command, and the operator and issuer
//! running with exactly the chart's RBAC (real ServiceAccount tokens), so a
//! missing permission fails here rather than in somebody's cluster, and an
//! excess one shows: what RBAC cannot narrow (Secrets by label or owner),
//! the API server's audit log proves the code narrows.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use sigil_crds::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OAuthClient, SIGNING_KEY_LABEL};
use sigil_tests::audit::{self, Returned, SecretRequest};
use sigil_tests::cluster::{TestCluster, client_from_kubeconfig, workspace_root};
use sigil_tests::create_foreign_secret;
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

/// Whether `client`'s own identity may `verb` `resource` (`secrets`,
/// `oauthclients.sigil.dev/status`, …), per the API server's authorizer
/// (a SelfSubjectAccessReview, what `kubectl auth can-i` asks).
async fn can(
    client: &kube::Client,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, sub)) => (r, Some(sub.to_owned())),
        None => (resource, None),
    };
    let (resource, group) = match resource.split_once('.') {
        Some((r, group)) => (r, group),
        None => (resource, ""),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview");
    answer.status.expect("review status").allowed
}

/// The Ready condition's (status, reason, message).
fn ready(oac: &OAuthClient) -> Option<(String, String, String)> {
    let ready = oac
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((
        ready.status.clone(),
        ready.reason.clone(),
        ready.message.clone(),
    ))
}

/// The requests of `user` in `requests`, for failure messages.
fn of<'a>(requests: &'a [SecretRequest], user: &str) -> Vec<&'a SecretRequest> {
    requests.iter().filter(|r| r.user == user).collect()
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

    // (a) What the ServiceAccounts may do, asked as themselves.
    let as_issuer = client_from_kubeconfig(&issuer_kubeconfig)
        .await
        .expect("issuer client");
    let as_operator = client_from_kubeconfig(&operator_kubeconfig)
        .await
        .expect("operator client");
    // The operator's CA Secret (--tls-secret's default, plus -ca).
    let (tls_secret, ca_secret) = ("sigil-issuer-tls", "sigil-issuer-tls-ca");
    let home = Some(ns.as_str());
    let away = Some(app.as_str());
    // The issuer: a (label-selected) watch of its namespace's Secrets, no
    // get at all, so not the CA Secret by name; nothing elsewhere; no write.
    assert!(can(&as_issuer, "list", "secrets", home, None).await);
    assert!(can(&as_issuer, "watch", "secrets", home, None).await);
    assert!(
        !can(&as_issuer, "get", "secrets", home, Some(ca_secret)).await,
        "the issuer can get the CA key's Secret"
    );
    assert!(!can(&as_issuer, "get", "secrets", home, Some(tls_secret)).await);
    for verb in ["get", "list", "watch"] {
        assert!(
            !can(&as_issuer, verb, "secrets", away, None).await,
            "the issuer can {verb} Secrets in another namespace"
        );
        assert!(
            !can(&as_issuer, verb, "secrets", None, None).await,
            "the issuer can {verb} Secrets cluster-wide"
        );
    }
    for (verb, resource, namespace) in [
        ("create", "secrets", home),
        ("patch", "secrets", home),
        ("update", "secrets", home),
        ("delete", "secrets", home),
        ("patch", "oauthclients.sigil.dev/status", away),
        ("update", "oauthclients.sigil.dev", away),
        ("patch", "signingkeys.sigil.dev/status", home),
        ("create", "configmaps", home),
        ("create", "events.events.k8s.io", home),
        ("update", "leases.coordination.k8s.io", home),
    ] {
        assert!(
            !can(&as_issuer, verb, resource, namespace, None).await,
            "the issuer can {verb} {resource} in {namespace:?}"
        );
    }
    // The operator: Secrets everywhere (RBAC cannot select by label or
    // owner: the audit below shows what it does with that), by apply and
    // delete, never update; no other kind's objects but ConfigMaps.
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        assert!(
            can(&as_operator, verb, "secrets", away, None).await,
            "{verb}"
        );
    }
    assert!(!can(&as_operator, "update", "secrets", away, None).await);
    assert!(!can(&as_operator, "update", "oauthclients.sigil.dev", away, None).await);
    assert!(!can(&as_operator, "create", "pods", away, None).await);
    // ConfigMaps: a secretless client's, by get and apply only (owned by
    // the client, so garbage-collected with it); no list, watch or delete.
    for verb in ["get", "create", "patch"] {
        assert!(
            can(&as_operator, verb, "configmaps", away, None).await,
            "{verb}"
        );
    }
    for verb in ["list", "watch", "update", "delete"] {
        assert!(
            !can(&as_operator, verb, "configmaps", away, None).await,
            "{verb}"
        );
    }

    let client = cluster.client().await;
    // Someone else's Secret, with Sigil's label but no owner, and a client
    // whose spec.secretName names it: a conflict, its data never read.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &app);
    let foreign =
        create_foreign_secret(&secrets, "taken", &[(MANAGED_BY_LABEL, MANAGED_BY_VALUE)]).await;
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &app);
    let squatter = serde_json::json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": { "name": "squatter" },
        "spec": { "scopes": ["orders.read"], "secretName": "taken" },
    });
    clients
        .create(
            &PostParams::default(),
            &serde_json::from_value(squatter).expect("valid OAuthClient"),
        )
        .await
        .expect("OAuthClient created");
    let deadline = Instant::now() + Duration::from_secs(30);
    let conflict = loop {
        operator.check_running().expect("operator running");
        let oac = clients.get("squatter").await.expect("get OAuthClient");
        if let Some((status, reason, message)) = ready(&oac)
            && reason == "SecretConflict"
        {
            assert_eq!(status, "False");
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "no SecretConflict within 30s: {oac:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(conflict.contains("Secret taken"), "{conflict}");
    let after = secrets.get("taken").await.expect("the foreign Secret");
    assert_eq!(
        after.metadata.resource_version, foreign.metadata.resource_version,
        "the foreign Secret was written"
    );
    assert_eq!(after.data, foreign.data);
    assert_eq!(after.metadata.owner_references, None);

    let manifest = serde_json::json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": { "name": "orders" },
        "spec": { "scopes": ["orders.read"], "audiences": ["orders"] },
    });
    clients
        .create(
            &Default::default(),
            &serde_json::from_value(manifest).expect("valid OAuthClient"),
        )
        .await
        .expect("OAuthClient created");
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

    // (b) What they asked for, from the API server's audit log.
    let log = std::fs::read_to_string(cluster.control_plane.audit_log()).expect("audit log");
    let requests = audit::secret_requests(&log).expect("parsing the audit log");
    let issuer_user = format!("system:serviceaccount:{ns}:sigil-rbac-issuer");
    let operator_user = format!("system:serviceaccount:{ns}:sigil-rbac-operator");
    let key_secret = "default-keys";

    // The issuer: only its label-selected watch of its own namespace, which
    // returned the signing-key Secret and nothing else; never the CA's.
    let by_issuer = of(&requests, &issuer_user);
    assert!(
        by_issuer
            .iter()
            .any(|r| r.verb == "list" && r.data_of().iter().any(|n| n == key_secret)),
        "the audit log shows no list of the key Secret by the issuer: {by_issuer:#?}"
    );
    for r in &by_issuer {
        assert!(
            (r.verb == "list" || r.verb == "watch")
                && r.namespace.as_deref() == Some(ns.as_str())
                && r.name.is_none()
                && r.label_selector.as_deref() == Some(SIGNING_KEY_LABEL)
                && r.data_of().iter().all(|n| n == key_secret),
            "the issuer asked for more than its signing-key Secrets: {r:#?}"
        );
    }

    // The operator: data only of Secrets it owns (here: orders-oauth, the
    // key Secret) and, by name, the issuer's TLS and CA Secrets at home;
    // lists and watches by label (metadata only) or by those names.
    let by_operator = of(&requests, &operator_user);
    let owned_in = |namespace: Option<&str>| -> BTreeSet<&str> {
        if namespace == Some(app.as_str()) {
            BTreeSet::from(["orders-oauth"])
        } else if namespace == Some(ns.as_str()) {
            BTreeSet::from([key_secret, tls_secret, ca_secret])
        } else {
            BTreeSet::new()
        }
    };
    let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    for r in &by_operator {
        let allowed = owned_in(r.namespace.as_deref());
        assert!(
            r.data_of().iter().all(|n| allowed.contains(n.as_str())),
            "the operator read the data of a Secret it does not own: {r:#?}"
        );
        if r.verb == "list" || r.verb == "watch" {
            let by_label = r.label_selector.as_deref() == Some(managed.as_str());
            let by_name = r.namespace.as_deref() == Some(ns.as_str())
                && r.field_selector.as_deref().is_some_and(|f| {
                    [tls_secret, ca_secret]
                        .iter()
                        .any(|n| f == format!("metadata.name={n}"))
                });
            assert!(by_label || by_name, "an unselected list or watch: {r:#?}");
            assert!(
                !by_label || r.data_of().is_empty(),
                "a label-selected list returned data: {r:#?}"
            );
        }
    }
    let on_foreign: Vec<&&SecretRequest> = by_operator
        .iter()
        .filter(|r| {
            r.namespace.as_deref() == Some(app.as_str()) && r.name.as_deref() == Some("taken")
        })
        .collect();
    assert!(
        !on_foreign.is_empty(),
        "the audit log shows no request for the foreign Secret: {by_operator:#?}"
    );
    for r in &on_foreign {
        assert!(
            r.verb == "get" && matches!(r.returned, Returned::Metadata(_)),
            "the operator did more than read the foreign Secret's metadata: {r:#?}"
        );
    }
}
